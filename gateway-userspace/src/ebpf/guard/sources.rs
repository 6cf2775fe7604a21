//! Reading the per-source table (`gateway_common::sources`) from userspace: `xdp top`, the
//! tracked-sources gauge, tests. One syscall per set: a full walk of the default table (65,536
//! sets) takes tens of milliseconds, fine for an admin command.

use std::hash::{BuildHasher, RandomState};

use gateway_common::{
    sources::{SourceSet, is_used, set_index},
    xdp::{GuardConfig, OVERFLOW_KEY, SOURCES_MAP, SourceKey, SourceState},
};

use super::XdpGuard;
use crate::ebpf::EbpfError;

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

impl XdpGuard {
    fn set(&self, index: u32) -> Result<SourceSet, EbpfError> {
        self.sources.get(&index, 0).map_err(|e| EbpfError::Map { map: SOURCES_MAP, source: e })
    }

    /// Calls `f` for every tracked source, then for the overflow bucket (as [`OVERFLOW_KEY`])
    /// if it was ever used.
    pub fn for_each_source(&self, mut f: impl FnMut(&SourceKey, &SourceState)) -> Result<(), EbpfError> {
        for index in 0..self.sets {
            for way in self.set(index)?.ways.iter().filter(|w| is_used(w)) {
                f(&way.key, &way.state);
            }
        }
        let overflow = self.set(self.sets)?.ways[0].state;
        if overflow != SourceState::default() {
            f(&OVERFLOW_KEY, &overflow);
        }
        Ok(())
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
