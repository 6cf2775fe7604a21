//! The per-source bucket table in the program: a set-associative array the verifier inlines
//! (no helper call on the pass path). Hashing, eviction order and their bounds are in
//! `gateway_common::sources` (tested on the host); this file only reads and writes the ways.

use core::ptr::write_volatile;

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use gateway_common::{
    gcra,
    sources::{Placement, SourceSet, SourceWay, WAYS, array_entries, busy_until, place, set_count, set_index},
    xdp::{DEFAULT_MAX_SOURCES, GuardConfig, NewSourceWindow, SourceKey, SourceState},
};

#[map(name = "GW_SOURCES")]
static SOURCES: Array<SourceSet> = Array::with_max_entries(array_entries(set_count(DEFAULT_MAX_SOURCES)), 0);

#[map(name = "GW_NEWSRC")]
static NEW_SOURCES: PerCpuArray<NewSourceWindow> = PerCpuArray::with_max_entries(1, 0);

/// Where a packet's source stands in the table.
pub enum Lookup {
    /// A way holds the source: its buckets.
    Known(*mut SourceState),
    /// The source just got a way with fresh buckets, this packet already paid (it passes).
    Inserted,
    /// Every way of its set was busy and this CPU's budget spent: the shared overflow bucket.
    Overflow(*mut SourceState),
    /// The table is not there (cannot happen once the daemon configured it): no bucket.
    Missing,
}

#[inline(always)]
pub fn lookup(key: &SourceKey, cfg: &GuardConfig, now: u64, syn: bool) -> Lookup {
    let Some(set) = SOURCES.get_ptr_mut(set_index(key, cfg.hash_seed, cfg.set_mask)) else { return Lookup::Missing };
    let ways = unsafe { (&raw mut (*set).ways).cast::<SourceWay>() };
    let mut busy = [0u64; WAYS];
    // A constant bound: unrolled by the compiler, and fine for the 5.10 verifier either way.
    for (i, b) in busy.iter_mut().enumerate() {
        let way = unsafe { ways.add(i) };
        if unsafe { same_key(&(*way).key, key) } {
            return Lookup::Known(unsafe { &raw mut (*way).state });
        }
        *b = busy_until(unsafe { &(*way).state });
    }
    let way = match place(busy, now, budget_left(cfg, now)) {
        Placement::Idle(way) => way,
        Placement::Busy(way) => {
            spend_budget();
            way
        }
        Placement::Overflow => {
            return match SOURCES.get_ptr_mut(cfg.set_mask as u32 + 1) {
                Some(o) => Lookup::Overflow(unsafe { &raw mut (*o).ways[0].state }),
                None => Lookup::Missing,
            };
        }
    };
    // `& (WAYS - 1)`: the verifier sees the offset bounded within the set.
    write_fresh(unsafe { ways.add(way & (WAYS - 1)) }, key, cfg, now, syn);
    Lookup::Inserted
}

/// The source's buckets if a way holds it; never inserts (a SYN answered with a cookie proves
/// nothing about its source until the ACK, so it must not take a way).
#[inline(always)]
pub fn find(key: &SourceKey, cfg: &GuardConfig) -> Option<*mut SourceState> {
    let set = SOURCES.get_ptr_mut(set_index(key, cfg.hash_seed, cfg.set_mask))?;
    let ways = unsafe { (&raw mut (*set).ways).cast::<SourceWay>() };
    for i in 0..WAYS {
        let way = unsafe { ways.add(i) };
        if unsafe { same_key(&(*way).key, key) } {
            return Some(unsafe { &raw mut (*way).state });
        }
    }
    None
}

#[inline(always)]
fn same_key(a: &SourceKey, b: &SourceKey) -> bool {
    a.addr[0] == b.addr[0] && a.addr[1] == b.addr[1] && a.addr[2] == b.addr[2] && a.addr[3] == b.addr[3]
}

/// Whether this CPU may make another busy eviction this second (a per-CPU window: its only writer).
#[inline(always)]
fn budget_left(cfg: &GuardConfig, now: u64) -> bool {
    let Some(window) = NEW_SOURCES.get_ptr_mut(0) else { return false };
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= gcra::NS_PER_SEC {
        window.start_ns = now;
        window.inserted = 0;
    }
    window.inserted < cfg.new_sources_per_sec
}

#[inline(always)]
fn spend_budget() {
    if let Some(window) = NEW_SOURCES.get_ptr_mut(0) {
        unsafe { (*window).inserted += 1 };
    }
}

/// A fresh bucket pair with this first packet (burst ≥ 1, so it always passes) already paid.
/// Field by field and volatile: a struct literal with zero fields becomes a call to memset.
#[inline(always)]
fn write_fresh(way: *mut SourceWay, key: &SourceKey, cfg: &GuardConfig, now: u64, syn: bool) {
    unsafe {
        let k = &raw mut (*way).key.addr;
        write_volatile(&raw mut (*k)[0], key.addr[0]);
        write_volatile(&raw mut (*k)[1], key.addr[1]);
        write_volatile(&raw mut (*k)[2], key.addr[2]);
        write_volatile(&raw mut (*k)[3], key.addr[3]);
        let s = &raw mut (*way).state;
        write_volatile(&raw mut (*s).tat_ns, now + cfg.pkt_interval_ns);
        write_volatile(&raw mut (*s).syn_tat_ns, if syn { now + cfg.syn_interval_ns } else { 0 });
        write_volatile(&raw mut (*s).dropped, 0);
        write_volatile(&raw mut (*s).syn_dropped, 0);
    }
}
