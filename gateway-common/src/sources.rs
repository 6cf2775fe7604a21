//! The guard's per-source bucket table: a set-associative table in a BPF array, looked up and
//! evicted by the program itself.
//!
//! Why not the LRU hash it replaces: an LRU lookup is a helper call (25 ns on the bench VM, half
//! the pass path), while an array lookup is inlined by the verifier (1-2 ns). The program hashes
//! the source key with a per-table random seed ([`set_index`]), reads one array element (a
//! [`SourceSet`] of [`WAYS`] ways) and compares the keys of its ways.
//!
//! Eviction: a new source takes the way whose buckets are fullest ([`victim`] by [`busy_until`],
//! the later of the two GCRA arrival times). A way with `busy_until ≤ now` holds two full buckets,
//! which is exactly the state a fresh way starts in: evicting it loses nothing (but its drop
//! counts). Such "idle" evictions are free and uncapped, so spoofed sources, which send a packet
//! or a few each, evict each other and never stand between a legitimate new source and a way of
//! its own (the new-source gap of the LRU's insert cap, see bench/results/flood.md).
//!
//! Only a "busy" eviction (every way of the set has a bucket that is not full) resets a
//! bucket that was limiting someone. Those are budgeted per CPU
//! (`GuardConfig::new_sources_per_sec`); beyond the budget the new source shares the
//! overflow bucket (the last array element) rather than evict. A source that is being limited
//! has `busy_until` within one interval of `now + tolerance` of that bucket, the highest a way
//! can reach; with the defaults (packet tolerance 2 s, SYN tolerance 2 s, a spoofed source busy
//! for one SYN interval, 5 ms) it is the *last* way of its set to go: evicting it takes
//! [`WAYS`] − 1 other sources limited as hard in the same set (the set is secret: the seed is
//! random per table). A source is easiest to evict in the first moments after it got its way,
//! before its buckets ran ahead (the host tests show both cases).
//!
//! Error bound (on top of the GCRA bounds in [`crate::gcra`]): a source passes at most one
//! burst more than its bucket allows per busy eviction of its way, and busy evictions happen at
//! most `new_sources_per_sec` times per second per CPU across the whole table.
//!
//! Races (no locks, 5.10 has no usable compare-and-swap): two CPUs missing the same set at once
//! may pick the same way; the later write wins, and the other source gets a way on its next
//! packet (one extra first packet: fresh buckets pass it). A CPU charging a way while another
//! CPU overwrites it charges the newcomer one interval (conservative: one token less). A torn key
//! (words from two writers) names no real source and is the first way evicted once its fresh
//! buckets refill. None of these lets a source pass more than one packet beyond its bucket per race.

use crate::xdp::{SourceKey, SourceState};

/// Ways per set.
pub const WAYS: usize = 4;
/// Most sets a table may have (2^22: 16 Mi sources).
pub const MAX_SETS: u32 = 1 << 22;

/// One way: a source key and its buckets. An all-zero way is empty (and, as full buckets, the
/// same as a fresh one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceWay {
    pub key: SourceKey,
    pub state: SourceState,
}

/// Value of [`crate::xdp::SOURCES_MAP`]: one set. The element after the last set holds the
/// overflow bucket in way 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSet {
    pub ways: [SourceWay; WAYS],
}

/// Sets for a capacity of `max_sources`: a power of two (the index is a mask), at least one.
pub const fn set_count(max_sources: u32) -> u32 {
    let sets = max_sources.div_ceil(WAYS as u32);
    let sets = if sets == 0 { 1 } else { sets };
    let sets = sets.next_power_of_two();
    if sets > MAX_SETS { MAX_SETS } else { sets }
}

/// Array elements for `sets` sets: the sets plus the overflow element.
pub const fn array_entries(sets: u32) -> u32 {
    sets + 1
}

/// The set of `key`: a multiply-xorshift hash of the key with the table's `seed`, masked.
/// Not cryptographic: the seed is random and the table never tells an outsider which sources
/// collide, so aiming many sources at one set means guessing a 64-bit seed.
#[inline(always)]
pub const fn set_index(key: &SourceKey, seed: u64, set_mask: u64) -> u32 {
    let a = key.addr;
    let hi = ((a[0] as u64) << 32) | a[1] as u64;
    let lo = ((a[2] as u64) << 32) | a[3] as u64;
    let h = mix(mix(seed ^ hi) ^ lo);
    ((h >> 32) & set_mask) as u32
}

#[inline(always)]
const fn mix(x: u64) -> u64 {
    let x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let x = x ^ (x >> 29);
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// Until when a way's buckets are not full: the later arrival time.
#[inline(always)]
pub const fn busy_until(state: &SourceState) -> u64 {
    if state.tat_ns > state.syn_tat_ns { state.tat_ns } else { state.syn_tat_ns }
}

/// The way a new source takes: the one with the smallest `busy_until` (the first on a tie), and
/// that value. Written without indexing by a variable (the verifier of 5.10 is strict about it).
#[inline(always)]
pub const fn victim(busy: [u64; WAYS]) -> (usize, u64) {
    let (mut way, mut least) = (0, busy[0]);
    if busy[1] < least {
        (way, least) = (1, busy[1]);
    }
    if busy[2] < least {
        (way, least) = (2, busy[2]);
    }
    if busy[3] < least {
        (way, least) = (3, busy[3]);
    }
    (way, least)
}

/// Where a source that no way of its set holds goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into this way, whose buckets are full (or empty): nothing is lost.
    Idle(usize),
    /// Into this way, resetting buckets that were not full: spends one unit of the budget.
    Busy(usize),
    /// Busy eviction needed but the budget is spent: the shared overflow bucket.
    Overflow,
}

/// Decides where a new source goes, from its set's `busy_until` values, the clock, and
/// whether this CPU's busy-eviction budget has room.
#[inline(always)]
pub const fn place(busy: [u64; WAYS], now: u64, budget_left: bool) -> Placement {
    let (way, least) = victim(busy);
    if least <= now {
        Placement::Idle(way)
    } else if budget_left {
        Placement::Busy(way)
    } else {
        Placement::Overflow
    }
}

/// Whether a way holds anything (userspace listing: an all-zero way is empty).
pub fn is_used(way: &SourceWay) -> bool {
    way.key != SourceKey::default() || way.state != SourceState::default()
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: plain `#[repr(C)]` integers without padding (checked by the size test below).
    unsafe impl aya::Pod for SourceSet {}
}

#[cfg(test)]
mod tests;
