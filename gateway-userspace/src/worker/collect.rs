//! When a worker hands free memory back to the system (`mi_collect`), decided once per
//! `COLLECT_EVERY` tick by `sweep_pool`.
//!
//! A forced collection walks every page of the worker's heap, full ones included, and purges
//! mimalloc's arenas: with 3,000 idle connections it held the worker's loop for 0.2–0.7 ms
//! (busy machine, uprobes on `mi_collect`), every request waiting behind it. Forcing once a
//! second whenever a connection was parked or closed did that every second under steady load
//! with connection churn. A busy worker reuses the pages it frees within moments anyway, so it is
//! forced only when the worker served no request during the last tick (what an idle worker needs
//! so that the memory parked and closed connections freed goes back: the idle-memory goal), or at
//! most once every `FORCED_EVERY_BUSY` ticks while it stays busy.

/// A forced collection: mimalloc's (this thread's heap, and the arenas' purges) and glibc
/// malloc's. Rust allocates from mimalloc, but aws-lc (rustls' crypto) is C and allocates from
/// glibc's malloc, whose per-thread arenas keep the pages freed inside them: after 2,000 rustls
/// connections closed, each worker's arena stayed at 1.2 MiB (`bench ktls-idle`'s smaps lines).
/// `malloc_trim(0)` hands back the whole free pages of every glibc arena.
pub fn force() {
    // SAFETY: mi_collect only walks this thread's heap (and the OS memory it owns).
    unsafe { libmimalloc_sys::mi_collect(true) };
    // SAFETY: malloc_trim takes glibc's arena locks itself and frees only free pages.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// While requests keep arriving, a forced collection runs at most once in this many ticks.
pub const FORCED_EVERY_BUSY: u32 = 10;
/// Every this many ticks a normal (cheap: non-full pages only, expired purges) collection runs
/// anyway, with the upstream pool's sweep.
pub const SWEEP_TICKS: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collect {
    None,
    Normal,
    Forced,
}

/// The state the decision needs across ticks.
#[derive(Debug, Default)]
pub struct CollectPolicy {
    ticks: u32,
    requests_seen: u64,
    /// Connections released since the last forced collection.
    pending_release: bool,
    ticks_since_forced: u32,
}

impl CollectPolicy {
    /// One tick: `released` connections parked or closed and `requests` (the worker's running
    /// count of requests started) since the worker began.
    pub fn tick(&mut self, released: u64, requests: u64) -> Collect {
        let sweep = self.ticks.is_multiple_of(SWEEP_TICKS);
        self.ticks = self.ticks.wrapping_add(1);
        self.ticks_since_forced = self.ticks_since_forced.saturating_add(1);
        self.pending_release |= released > 0;
        let idle = requests == self.requests_seen;
        self.requests_seen = requests;
        if self.pending_release && (idle || self.ticks_since_forced >= FORCED_EVERY_BUSY) {
            self.pending_release = false;
            self.ticks_since_forced = 0;
            Collect::Forced
        } else if sweep {
            Collect::Normal
        } else {
            Collect::None
        }
    }

    /// Whether this tick also sweeps the upstream pool.
    pub fn sweeps_pool(&self) -> bool {
        // `tick` has already advanced: the tick just decided was number `ticks - 1`.
        self.ticks.wrapping_sub(1).is_multiple_of(SWEEP_TICKS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_returns_released_memory_at_the_next_tick() {
        let mut p = CollectPolicy::default();
        assert_eq!(p.tick(0, 0), Collect::Normal, "the first tick sweeps");
        assert_eq!(p.tick(0, 0), Collect::None);
        // Connections parked after their last request: no request during the tick.
        assert_eq!(p.tick(3, 0), Collect::Forced);
        assert_eq!(p.tick(0, 0), Collect::None, "nothing new released");
    }

    #[test]
    fn a_busy_worker_with_connection_churn_is_forced_once_per_allowance() {
        let mut p = CollectPolicy::default();
        let mut requests = 0;
        let mut forced = 0;
        // 95 busy ticks, each closing connections: forced at ticks 10, 20, ... 90.
        for _ in 0..95 {
            requests += 1000;
            if p.tick(5, requests) == Collect::Forced {
                forced += 1;
            }
        }
        assert_eq!(forced, 95 / FORCED_EVERY_BUSY, "forced every tick, as before, or never");
        // Load stops: what was released since the last forced collection goes back at once.
        assert_eq!(p.tick(0, requests), Collect::Forced);
    }

    #[test]
    fn the_pool_is_swept_every_sweep_ticks() {
        let mut p = CollectPolicy::default();
        let swept: Vec<bool> = (0..SWEEP_TICKS * 2)
            .map(|_| {
                p.tick(0, 0);
                p.sweeps_pool()
            })
            .collect();
        assert_eq!(swept.iter().filter(|s| **s).count(), 2);
        assert!(swept[0] && swept[SWEEP_TICKS as usize]);
    }
}
