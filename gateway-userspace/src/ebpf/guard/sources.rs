//! Reading the per-source table (`gateway_common::sources`) from userspace: `xdp top`, the
//! tracked-sources gauge, tests. A full walk reads the table in batches of [`BATCH_SETS`] sets
//! per `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+; `batch.rs`), 65 syscalls for the default 65,536 sets
//! where one lookup per set made 65,537; kernels without batch lookups get the per-set walk.

use std::hash::{BuildHasher, RandomState};

use gateway_common::{
    sources::{SourceSet, is_used, set_index},
    xdp::{GuardConfig, OVERFLOW_KEY, SOURCES_MAP, SourceKey, SourceState},
};

use super::{XdpGuard, batch};
use crate::ebpf::EbpfError;

/// Sets per batch: 1,024 sets of 4 ways are 256 KiB of values, a buffer allocated once per walk.
pub(super) const BATCH_SETS: u32 = 1024;

/// The seed for a table of `sets` sets: the pinned config's when it describes a table of this
/// size (the table itself was kept, or its sources would be in the wrong sets: harmless, they
/// would just be found no more), else a random one (std's per-process random SipHash keys).
pub(super) fn seed_for(pinned: &GuardConfig, sets: u32) -> u64 {
    if pinned.hash_seed != 0 && pinned.set_mask == u64::from(sets - 1) {
        return pinned.hash_seed;
    }
    match RandomState::new().hash_one(std::time::SystemTime::now()) {
        0 => 1,
        seed => seed,
    }
}

/// See [`XdpGuard::walk_cost`].
#[derive(Debug, Clone)]
pub struct WalkCost {
    pub sets: u32,
    /// `None` where the kernel has no batch lookup.
    pub batched: Option<std::time::Duration>,
    pub batched_syscalls: u32,
    pub one_by_one: std::time::Duration,
}

impl XdpGuard {
    fn set(&self, index: u32) -> Result<SourceSet, EbpfError> {
        self.sources.get(&index, 0).map_err(|e| EbpfError::Map { map: SOURCES_MAP, source: e })
    }

    /// Calls `f` for every tracked source, then for the overflow bucket (as [`OVERFLOW_KEY`])
    /// if it was ever used.
    pub fn for_each_source(&self, mut f: impl FnMut(&SourceKey, &SourceState)) -> Result<(), EbpfError> {
        let mut visit = |set: &SourceSet| {
            for way in set.ways.iter().filter(|w| is_used(w)) {
                f(&way.key, &way.state);
            }
        };
        match batch::read_array(&self.sources, self.sets, BATCH_SETS, &mut visit) {
            Ok(()) => {}
            // Linux before 5.6, or a kernel built without batch support for arrays.
            Err(batch::BatchError::Unsupported) => self.for_each_set_one_by_one(&mut visit)?,
            Err(e) => return Err(EbpfError::Map { map: SOURCES_MAP, source: e.into() }),
        }
        let overflow = self.set(self.sets)?.ways[0].state;
        if overflow != SourceState::default() {
            f(&OVERFLOW_KEY, &overflow);
        }
        Ok(())
    }

    /// The walk for kernels without batch lookups: one syscall per set.
    pub(crate) fn for_each_set_one_by_one(&self, mut f: impl FnMut(&SourceSet)) -> Result<(), EbpfError> {
        for index in 0..self.sets {
            f(&self.set(index)?);
        }
        Ok(())
    }

    /// What one full walk of the table costs, batched and one set at a time (the benchmark's
    /// figures for `xdp top` and the tracked-sources gauge).
    pub fn walk_cost(&self) -> Result<WalkCost, EbpfError> {
        let mut sets = 0u64;
        let start = std::time::Instant::now();
        let batched = match batch::read_array(&self.sources, self.sets, BATCH_SETS, |_| sets += 1) {
            Ok(()) => Some(start.elapsed()),
            Err(batch::BatchError::Unsupported) => None,
            Err(e) => return Err(EbpfError::Map { map: SOURCES_MAP, source: e.into() }),
        };
        let start = std::time::Instant::now();
        self.for_each_set_one_by_one(|_| {})?;
        let one_by_one = start.elapsed();
        Ok(WalkCost {
            sets: self.sets,
            batched: batched.filter(|_| sets == u64::from(self.sets)),
            batched_syscalls: self.sets.div_ceil(BATCH_SETS),
            one_by_one,
        })
    }

    /// How many sources have a bucket (the overflow bucket counts once it was used).
    pub fn tracked_sources(&self) -> Result<u64, EbpfError> {
        let mut n = 0;
        self.for_each_source(|_, _| n += 1)?;
        Ok(n)
    }

    /// The bucket of one source key, if it has one.
    pub fn source(&self, key: &SourceKey) -> Result<Option<SourceState>, EbpfError> {
        let set = self.set(set_index(key, self.hash_seed, u64::from(self.sets - 1)))?;
        Ok(set.ways.iter().find(|w| w.key == *key && is_used(w)).map(|w| w.state))
    }

    /// Forgets every bucket (tests and benchmarks start from a clean table).
    pub fn clear_sources(&mut self) -> Result<(), EbpfError> {
        for index in 0..=self.sets {
            self.sources
                .set(index, SourceSet::default(), 0)
                .map_err(|e| EbpfError::Map { map: SOURCES_MAP, source: e })?;
        }
        Ok(())
    }
}
