//! Benchmark probes: each XDP program does one of the operations the guard's pass path is made
//! of, and nothing else, so `gatewayd xdp bench` can put a price on each (its time minus the
//! empty program's). Never attached, never loaded outside the benchmark. The maps have the
//! guard's shapes (`gateway_common::xdp`) but are this object's own.
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

use core::{
    arch::asm,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use gateway_common::xdp::{DEFAULT_MAX_SOURCES, DenyEntry, MAX_LIST_ENTRIES, PROBE_SOURCE, SourceKey, SourceState};

#[map(name = "PROBE_SOURCES")]
static SOURCES: LruHashMap<SourceKey, SourceState> = LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);

/// The same with a 4-byte key (an IPv4-only table): what the key's size costs in the lookup.
#[map(name = "PROBE_SOURCES4")]
static SOURCES4: LruHashMap<u32, SourceState> = LruHashMap::with_max_entries(DEFAULT_MAX_SOURCES, 0);

#[map(name = "PROBE_LPM_A")]
static LPM_A: LpmTrie<[u32; 4], DenyEntry> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

#[map(name = "PROBE_LPM_B")]
static LPM_B: LpmTrie<[u32; 4], DenyEntry> = LpmTrie::with_max_entries(MAX_LIST_ENTRIES, 0);

#[map(name = "PROBE_ARRAY")]
static ARRAY: Array<u64> = Array::with_max_entries(1, 0);

#[map(name = "PROBE_PERCPU")]
static PERCPU: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn pass_unless(zero: bool) -> u32 {
    if zero { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[xdp]
pub fn probe_ktime(_ctx: XdpContext) -> u32 {
    pass_unless(unsafe { bpf_ktime_get_ns() } == 0)
}

#[xdp]
pub fn probe_jiffies(_ctx: XdpContext) -> u32 {
    pass_unless(unsafe { bpf_jiffies64() } == 0)
}

/// The bucket lookup of a known source (the benchmark inserts [`PROBE_SOURCE`] first).
#[xdp]
pub fn probe_lru(_ctx: XdpContext) -> u32 {
    let key = SourceKey { addr: PROBE_SOURCE };
    pass_unless(SOURCES.get_ptr_mut(&key).is_none())
}

/// The bucket lookup with a 4-byte key (the benchmark inserts the IPv4 source first).
#[xdp]
pub fn probe_lru4(_ctx: XdpContext) -> u32 {
    pass_unless(SOURCES4.get_ptr_mut(&PROBE_SOURCE[3]).is_none())
}

/// One LPM lookup of a full address.
#[xdp]
pub fn probe_lpm(_ctx: XdpContext) -> u32 {
    let key = Key::new(128, PROBE_SOURCE);
    pass_unless(LPM_A.get(&key).is_some())
}

/// Two LPM lookups in two tries (the guard before the lists were merged).
#[xdp]
pub fn probe_lpm2(_ctx: XdpContext) -> u32 {
    let key = Key::new(128, PROBE_SOURCE);
    pass_unless(LPM_A.get(&key).is_some() || LPM_B.get(&key).is_some())
}

/// An array lookup and a fire-and-forget atomic add to the value (the GCRA's charge).
#[xdp]
pub fn probe_atomic(_ctx: XdpContext) -> u32 {
    let Some(p) = ARRAY.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    unsafe { asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) p, in(reg) 1u64, options(nostack)) };
    xdp_action::XDP_PASS
}

/// An array lookup and a plain read-modify-write of the value (the GCRA's idle-bucket reset).
#[xdp]
pub fn probe_store(_ctx: XdpContext) -> u32 {
    let Some(p) = ARRAY.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    unsafe { write_volatile(p, read_volatile(p) + 1) };
    xdp_action::XDP_PASS
}

/// A per-CPU array lookup and increment (the verdict counter).
#[xdp]
pub fn probe_percpu(_ctx: XdpContext) -> u32 {
    let Some(p) = PERCPU.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    unsafe { *p += 1 };
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
