//! Transparent huge pages off for the daemon.
//!
//! mimalloc asks for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`, its `allow_thp`
//! default), so on a host with THP in `madvise` or `always` mode the heap becomes resident in
//! 2 MiB steps: 8–14 MiB more RSS at rest, and a burst of 1,000 idle connections read 2 KiB more
//! per connection whenever it happened to touch a new huge page (`bench proxy`: 5.3 KB instead
//! of 2.8 KB, the same run with THP off). A gateway's heap is tens of MiB of small objects, where
//! huge pages save little; its memory per connection should be what the connections use.

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`: the kernel then
/// backs every mapping, mimalloc's arenas included, with normal pages from now on).
pub fn disable() {
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "could not turn transparent huge pages off");
    }
}
