//! The source table read in batches (`BPF_MAP_LOOKUP_BATCH`, what `xdp top` and the
//! tracked-sources gauge use) must see exactly what one lookup per set sees.

use std::collections::BTreeSet;

use gateway_common::sources::is_used;

use super::{GENEROUS, Suite, tcp};
use crate::ebpf::EbpfError;

const SOURCES: u8 = 40;

impl Suite<'_> {
    pub(super) fn source_walk(&mut self) -> Result<(), EbpfError> {
        self.reset(GENEROUS)?;
        let mut failure = None;
        for i in 0..SOURCES {
            if let Err(why) = self.verdict(&tcp(&format!("198.51.100.{}", 100 + i)).bytes)? {
                failure = Some(why);
            }
        }
        let mut batched = BTreeSet::new();
        self.guard.for_each_source(|key, _| {
            batched.insert(key.addr);
        })?;
        let mut one_by_one = BTreeSet::new();
        self.guard.for_each_set_one_by_one(|set| {
            one_by_one.extend(set.ways.iter().filter(|w| is_used(w)).map(|w| w.key.addr));
        })?;
        if failure.is_none() && (batched != one_by_one || batched.len() != usize::from(SOURCES)) {
            failure = Some(format!(
                "batched walk saw {} sources, one lookup per set {}, {SOURCES} were sent",
                batched.len(),
                one_by_one.len()
            ));
        }
        self.record(
            format!("source table: the batched walk sees the {SOURCES} sources one lookup per set sees"),
            failure,
        );
        Ok(())
    }
}
