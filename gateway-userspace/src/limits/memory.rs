//! The embedded backend: counters in this process, shared by all workers.
//!
//! Keys are 64-bit SipHash digests (random per process) of the layer, window and key value, so
//! an entry is a few dozen bytes whatever the key. The map is split into shards by hash, each
//! behind its own short mutex (held for one lookup and a few additions), so workers rarely meet.
//! Memory is bounded: each shard holds at most `capacity / SHARDS` entries. A full shard first
//! drops entries that no longer matter (their windows are over); if it is still full it evicts
//! the eighth of its entries used longest ago. A background sweep drops dead entries every few
//! seconds so idle keys do not wait for pressure to go.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

/// Shards per store: enough that 64 workers rarely share one.
const SHARDS: usize = 256;

/// What a store keeps per key.
pub trait Slot {
    /// Unix seconds from which the entry no longer affects any decision.
    fn dead_at(&self) -> u32;
    /// Unix seconds of the last use (eviction order under pressure).
    fn touched(&self) -> u32;
}

/// A bounded concurrent map from key digests to slots.
pub struct ShardedStore<V> {
    shards: Box<[Padded<Mutex<Shard<V>>>]>,
    per_shard: usize,
    evicted: AtomicU64,
}

type Shard<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

/// Keeps each shard's lock on its own cache line.
#[repr(align(128))]
struct Padded<T>(T);

impl<V: Slot> ShardedStore<V> {
    /// A store holding at most `capacity` keys (rounded up to a multiple of the shard count).
    pub fn new(capacity: usize) -> Self {
        ShardedStore {
            shards: (0..SHARDS).map(|_| Padded(Mutex::new(HashMap::default()))).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            evicted: AtomicU64::new(0),
        }
    }

    /// Runs `f` on the slot of `key` (created with `fresh` when absent) under its shard's lock.
    pub fn with<R>(&self, key: u64, now_s: u32, fresh: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key);
        if !shard.contains_key(&key) && shard.len() >= self.per_shard {
            let evicted = make_room(&mut shard, now_s, self.per_shard);
            self.evicted.fetch_add(evicted, Ordering::Relaxed);
        }
        f(shard.entry(key).or_insert_with(fresh))
    }

    /// Reads the slot of `key`, if any.
    pub fn peek<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(key).get(&key).map(f)
    }

    /// Drops entries dead at `now_s`; returns how many entries are left.
    pub fn sweep(&self, now_s: u32) -> usize {
        let mut left = 0;
        for shard in &self.shards {
            let mut map = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, v| v.dead_at() > now_s);
            left += map.len();
        }
        left
    }

    /// Keys held (locks every shard in turn: for scrapes, not the request path).
    pub fn key_count(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    /// Live keys evicted under memory pressure so far.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard<V>> {
        // Bits 40..48: hashbrown indexes buckets with the low bits and tags with the top seven.
        let i = (key >> 40) as usize % SHARDS;
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frees at least one place in a full shard: dead entries first, else the least recently used
/// eighth. Returns the number of live entries evicted.
fn make_room<V: Slot>(map: &mut Shard<V>, now_s: u32, cap: usize) -> u64 {
    map.retain(|_, v| v.dead_at() > now_s);
    if map.len() < cap {
        return 0;
    }
    let mut ages: Vec<(u32, u64)> = map.iter().map(|(k, v)| (v.touched(), *k)).collect();
    let n = (ages.len() / 8).max(1);
    ages.select_nth_unstable(n - 1);
    for (_, k) in &ages[..n] {
        map.remove(k);
    }
    n as u64
}

/// The keys are already uniform digests: hashing them again would only cost time.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Digests of key material: SipHash with a per-process random key, so clients cannot aim
/// collisions at each other.
#[derive(Debug, Clone, Default)]
pub struct KeyHasher(std::collections::hash_map::RandomState);

impl KeyHasher {
    pub fn digest(&self, parts: impl FnOnce(&mut dyn Hasher)) -> u64 {
        let mut h = self.0.build_hasher();
        parts(&mut h);
        h.finish()
    }
}

/// The rate-limit slot: the sliding window's two counters.
#[derive(Debug, Clone, Copy)]
pub struct WindowSlot {
    pub index: u64,
    pub cur: u32,
    pub prev: u32,
    pub dead_at: u32,
    pub touched: u32,
}

impl Slot for WindowSlot {
    fn dead_at(&self) -> u32 {
        self.dead_at
    }

    fn touched(&self) -> u32 {
        self.touched
    }
}

impl WindowSlot {
    pub fn empty() -> Self {
        WindowSlot { index: 0, cur: 0, prev: 0, dead_at: 0, touched: 0 }
    }

    /// Moves the counters to window `index`: the current becomes the previous when the window
    /// just turned, both reset when more than one window passed.
    pub fn roll(&mut self, index: u64) {
        if self.index == index {
            return;
        }
        self.prev = if index == self.index + 1 { self.cur } else { 0 };
        self.cur = 0;
        self.index = index;
    }
}

/// A token budget's memory entry: tokens used on one day. Kept beside the window slots: the
/// limit state owns both stores (and sweeps them), the budget phase reads and charges this one.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSlot {
    pub(crate) day: u32,
    pub(crate) used: u64,
    pub(crate) dead_at: u32,
    pub(crate) touched: u32,
}

impl BudgetSlot {
    pub(crate) fn empty() -> Self {
        BudgetSlot { day: 0, used: 0, dead_at: 0, touched: 0 }
    }
}

impl Slot for BudgetSlot {
    fn dead_at(&self) -> u32 {
        self.dead_at
    }

    fn touched(&self) -> u32 {
        self.touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct S(u32, u32);
    impl Slot for S {
        fn dead_at(&self) -> u32 {
            self.0
        }
        fn touched(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn full_shards_drop_dead_entries_then_the_oldest() {
        let store: ShardedStore<S> = ShardedStore::new(SHARDS * 16);
        // All keys in shard 0.
        let key = |i: u64| i;
        for i in 0..16 {
            store.with(key(i), 100, || S(if i < 4 { 50 } else { 1000 }, i as u32), |_| ());
        }
        // 4 dead entries make room without evicting anything alive.
        store.with(key(100), 100, || S(1000, 100), |_| ());
        assert_eq!(store.evicted(), 0);
        for i in 101..104 {
            store.with(key(i), 100, || S(1000, i as u32), |_| ());
        }
        // Full of live entries: the least recently used go.
        store.with(key(200), 100, || S(1000, 200), |_| ());
        assert_eq!(store.evicted(), 2);
        assert!(store.peek(key(4), |_| ()).is_none(), "oldest live entry evicted");
        assert!(store.peek(key(200), |_| ()).is_some());
        assert_eq!(store.sweep(2000), 0);
    }

    #[test]
    fn slots_roll_forward() {
        let mut s = WindowSlot { index: 7, cur: 5, prev: 2, dead_at: 0, touched: 0 };
        s.roll(7);
        assert_eq!((s.prev, s.cur), (2, 5));
        s.roll(8);
        assert_eq!((s.prev, s.cur), (5, 0));
        s.cur = 3;
        s.roll(10);
        assert_eq!((s.prev, s.cur), (0, 0));
    }
}
