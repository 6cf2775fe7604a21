//! Host-side tests of the table's hashing and eviction, and a model of the program's miss path
//! built from the same functions ([`place`], [`busy_until`], [`set_index`], `gcra::step`).
extern crate std;
use std::{vec, vec::Vec};

use super::*;
use crate::{
    gcra::{self, NS_PER_SEC},
    xdp::{mapped_v4, words_v6},
};

fn key4(n: u32) -> SourceKey {
    SourceKey { addr: mapped_v4(n.to_be_bytes()) }
}

fn key6(n: u64) -> SourceKey {
    let mut o = [0u8; 16];
    o[0] = 0xfd;
    o[8..].copy_from_slice(&n.to_be_bytes());
    SourceKey { addr: words_v6(o) }
}

#[test]
fn layout_has_no_padding() {
    assert_eq!(core::mem::size_of::<SourceWay>(), 48);
    assert_eq!(core::mem::size_of::<SourceSet>(), 48 * WAYS);
}

#[test]
fn set_counts_are_powers_of_two_covering_the_capacity() {
    assert_eq!(set_count(0), 1);
    assert_eq!(set_count(1024), 256);
    assert_eq!(set_count(1025), 512);
    assert_eq!(set_count(262_144), 65_536);
    assert_eq!(set_count(u32::MAX), MAX_SETS);
    for n in [1, 5, 4096, 100_000, 1 << 24] {
        let s = set_count(n);
        assert!(s.is_power_of_two() && s as u64 * WAYS as u64 >= n as u64, "{n} → {s}");
        assert_eq!(array_entries(s), s + 1);
    }
}

#[test]
fn set_index_stays_in_range_and_spreads_evenly() {
    let sets = 256u64;
    let mut hits = vec![0u32; sets as usize];
    // Sequential addresses, v4 and v6 (what a spoofer or a subnet sends): 64 per set expected.
    for n in 0..(sets as u32 * 32) {
        hits[set_index(&key4(0x0a80_0000 + n), 0x1234_5678_9abc_def0, sets - 1) as usize] += 1;
        hits[set_index(&key6(n as u64), 0x1234_5678_9abc_def0, sets - 1) as usize] += 1;
    }
    let (min, max) = (*hits.iter().min().unwrap(), *hits.iter().max().unwrap());
    assert!(min >= 32 && max <= 100, "uneven spread: min {min}, max {max}");
}

#[test]
fn the_seed_decides_which_sources_share_a_set() {
    let mask = 65_535;
    let moved = (0..1000).filter(|&n| set_index(&key4(n), 1, mask) != set_index(&key4(n), 2, mask)).count();
    assert!(moved > 990, "only {moved} of 1000 keys changed set with the seed");
}

#[test]
fn victim_is_the_least_busy_way_first_on_a_tie() {
    assert_eq!(victim([5, 3, 9, 3]), (1, 3));
    assert_eq!(victim([7, 7, 7, 7]), (0, 7));
    assert_eq!(victim([9, 8, 7, 0]), (3, 0));
    let s = SourceState { tat_ns: 10, syn_tat_ns: 40, dropped: 0, syn_dropped: 0 };
    assert_eq!(busy_until(&s), 40);
}

#[test]
fn placement_is_free_for_idle_ways_and_budgeted_for_busy_ones() {
    assert_eq!(place([200, 50, 300, 400], 100, false), Placement::Idle(1));
    assert_eq!(place([200, 150, 300, 400], 100, true), Placement::Busy(1));
    assert_eq!(place([200, 150, 300, 400], 100, false), Placement::Overflow);
    assert_eq!(place([0; WAYS], 0, false), Placement::Idle(0));
}

#[test]
fn empty_ways_are_not_listed() {
    assert!(!is_used(&SourceWay::default()));
    assert!(is_used(&SourceWay { key: key4(1), ..SourceWay::default() }));
}

/// Bucket parameters like the daemon's defaults (20000/s burst 40000, SYN 200/s burst 400).
struct Limits {
    pkt: (u64, u64),
    syn: (u64, u64),
    budget_per_sec: u64,
}

/// The program's table on one CPU: the same lookup, placement and bucket steps.
struct Model {
    sets: Vec<SourceSet>,
    overflow: SourceState,
    seed: u64,
    mask: u64,
    window: (u64, u64),
    limits: Limits,
    placed: Vec<Placement>,
}

impl Model {
    fn new(max_sources: u32, limits: Limits) -> Self {
        let sets = set_count(max_sources);
        Model {
            sets: vec![SourceSet::default(); sets as usize],
            overflow: SourceState::default(),
            seed: 0x5eed_0f7a_b1e5,
            mask: sets as u64 - 1,
            window: (0, 0),
            limits,
            placed: Vec::new(),
        }
    }

    fn charge(state: &mut SourceState, now: u64, syn: bool, l: &Limits) -> bool {
        if syn {
            match gcra::step(state.syn_tat_ns, now, l.syn.0, l.syn.1) {
                Some(t) => state.syn_tat_ns = t,
                None => return false,
            }
        }
        match gcra::step(state.tat_ns, now, l.pkt.0, l.pkt.1) {
            Some(t) => state.tat_ns = t,
            None => return false,
        }
        true
    }

    fn packet(&mut self, key: SourceKey, now: u64, syn: bool) -> bool {
        let set = &mut self.sets[set_index(&key, self.seed, self.mask) as usize];
        if let Some(way) = set.ways.iter_mut().find(|w| w.key == key) {
            return Self::charge(&mut way.state, now, syn, &self.limits);
        }
        if now.wrapping_sub(self.window.0) >= NS_PER_SEC {
            self.window = (now, 0);
        }
        let busy = [0, 1, 2, 3].map(|i| busy_until(&set.ways[i].state));
        let placement = place(busy, now, self.window.1 < self.limits.budget_per_sec);
        self.placed.push(placement);
        let way = match placement {
            Placement::Idle(w) => w,
            Placement::Busy(w) => {
                self.window.1 += 1;
                w
            }
            Placement::Overflow => return Self::charge(&mut self.overflow, now, syn, &self.limits),
        };
        set.ways[way] = SourceWay { key, state: SourceState::default() };
        Self::charge(&mut set.ways[way].state, now, syn, &self.limits)
    }
}

fn defaults() -> Limits {
    Limits { pkt: gcra::params(20_000, 40_000, 0), syn: gcra::params(200, 400, 0), budget_per_sec: 10_000 }
}

/// The flood bench's `syn-spoofed` and `rotating` cells on the default table: 150,000 SYNs per
/// second from sources that (almost) never repeat, with a legitimate client opening 50 new
/// connections per second from new addresses. Every legitimate SYN passes, and none needed the
/// overflow bucket or a busy eviction.
#[test]
fn spoofed_new_sources_never_push_a_legitimate_new_source_out() {
    let mut m = Model::new(262_144, defaults());
    let step = NS_PER_SEC / 150_000;
    let mut legit_dropped = 0;
    for i in 0..450_000u64 {
        let now = 1_000 * NS_PER_SEC + i * step;
        let spoofed = if i % 2 == 0 { key4(0x0a80_0000 | ((i as u32 >> 1) % 65_536)) } else { key6(i) };
        m.packet(spoofed, now, true);
        if i % 3_000 == 0 {
            // A new client address each time, its SYN and two more packets.
            let client = key4(0xc633_6400 + (i / 3_000) as u32);
            for (k, syn) in [(0, true), (1, false), (2, false)] {
                legit_dropped += !m.packet(client, now + k, syn) as u32;
            }
        }
    }
    assert_eq!(legit_dropped, 0);
    let overflow = m.placed.iter().filter(|p| **p == Placement::Overflow).count();
    let busy = m.placed.iter().filter(|p| matches!(p, Placement::Busy(_))).count();
    assert_eq!((overflow, busy), (0, 0), "spoofed sources should only ever evict idle ways");
}

/// A flooder being limited keeps its bucket while spoofed sources churn its set: at its limit it
/// is the busiest way, so the last to be evicted, and it passes no more than its rate allows.
#[test]
fn a_limited_flooder_is_not_evicted_by_churn_in_its_set() {
    // The default shape: the packet bucket's tolerance (2 s) far above the SYN interval (100 ms).
    let limits = Limits { pkt: gcra::params(1_000, 2_000, 0), syn: gcra::params(10, 5, 0), budget_per_sec: 10_000 };
    let mut m = Model::new(1024, limits);
    let flooder = key4(0xcb00_7101);
    let target = set_index(&flooder, m.seed, m.mask);
    // Spoofed sources that land in the flooder's own set: the worst case for it.
    let same_set: Vec<SourceKey> =
        (0..2_000_000u32).map(|n| key4(0x0a00_0000 + n)).filter(|k| set_index(k, m.seed, m.mask) == target).collect();
    assert!(same_set.len() > 1000);
    let per_sec = 100_000u64;
    let (mut passed, total) = (0u64, 2 * per_sec);
    // The churn starts once the flooder has spent its burst (0.1 s in).
    let churn_from = per_sec / 10;
    for i in 0..total {
        let now = 50 * NS_PER_SEC + i * (NS_PER_SEC / per_sec);
        passed += m.packet(flooder, now, false) as u64;
        if i >= churn_from {
            m.packet(same_set[i as usize % same_set.len()], now, true);
        }
    }
    // Burst 2000 plus 1000/s for two seconds (+1 for the exact boundary).
    assert!(passed <= 2_000 + 2 * 1_000 + 1, "flooder passed {passed}: its bucket was reset");
    assert!(passed >= 2 * 1_000, "flooder passed {passed}");
    assert!(m.placed.contains(&Placement::Overflow), "the churn should have exhausted the budget");
}

/// Busy evictions are budgeted: past the budget, new sources of a fully busy set share the
/// overflow bucket instead of resetting a tracked source's bucket.
#[test]
fn busy_evictions_past_the_budget_go_to_the_overflow_bucket() {
    let limits = Limits { pkt: gcra::params(1, 2, 0), syn: gcra::params(1, 2, 0), budget_per_sec: 1 };
    let mut m = Model::new(4, limits);
    assert_eq!(m.sets.len(), 1);
    let now = 10 * NS_PER_SEC;
    for n in 0..6 {
        assert!(m.packet(key4(n), now, false));
    }
    assert_eq!(
        m.placed,
        [
            Placement::Idle(0),
            Placement::Idle(1),
            Placement::Idle(2),
            Placement::Idle(3),
            Placement::Busy(0),
            Placement::Overflow
        ]
    );
    // The overflow bucket (burst 2) is shared: the next newcomer finds it spent.
    assert!(m.packet(key4(6), now, false));
    assert!(!m.packet(key4(7), now, false));
    // A second later the budget is back and the buckets are idle again: free evictions.
    assert!(m.packet(key4(8), now + 3 * NS_PER_SEC, false));
    assert!(matches!(m.placed.last(), Some(Placement::Idle(_))));
}
