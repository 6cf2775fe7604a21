//! Worker liveness for the systemd watchdog: each worker's runtime stamps a heartbeat a few times
//! a second, and the control thread pings the watchdog only while every stamp is recent. A worker
//! thread that died, or that is wedged (a blocking call, a busy loop, a stopped thread), stops
//! the pings, so systemd restarts a daemon that would otherwise look alive while part of it
//! serves nothing.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How often a worker stamps its heartbeat. Cheap (one relaxed store), and far below any
/// sensible watchdog interval.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct WorkerLiveness {
    origin: Instant,
    /// Per worker: milliseconds since `origin` at its last heartbeat (starting at creation, so a
    /// worker whose runtime is still starting is not taken for a stalled one).
    beats: Box<[AtomicU64]>,
}

impl WorkerLiveness {
    pub fn new(workers: usize) -> Self {
        WorkerLiveness { origin: Instant::now(), beats: (0..workers).map(|_| AtomicU64::new(0)).collect() }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Called by worker `id`'s own runtime.
    pub fn beat(&self, id: usize) {
        if let Some(b) = self.beats.get(id) {
            b.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The first worker whose last heartbeat (or, before its first, the start) is older than
    /// `max_age` (never less than three heartbeats), with how long it has been silent.
    pub fn stalled(&self, max_age: Duration) -> Option<(usize, Duration)> {
        let max_age = max_age.max(HEARTBEAT_EVERY * 3);
        let now = self.now_ms();
        self.beats.iter().enumerate().find_map(|(id, b)| {
            let last = b.load(Ordering::Relaxed);
            let silent = Duration::from_millis(now.saturating_sub(last));
            (silent > max_age).then_some((id, silent))
        })
    }
}

/// A worker's heartbeat task: runs on its runtime, so it stops when the runtime does.
pub async fn heartbeat(liveness: std::sync::Arc<WorkerLiveness>, id: usize) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tick.tick().await;
        liveness.beat(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_silent_for_longer_than_the_allowance_is_stalled() {
        let l = WorkerLiveness::new(2);
        assert_eq!(l.stalled(Duration::from_secs(3600)), None, "a worker still starting is not stalled");
        // Worker 0 beats, worker 1 stays silent past the (minimum) allowance.
        std::thread::sleep(HEARTBEAT_EVERY * 3 + Duration::from_millis(50));
        l.beat(0);
        assert_eq!(l.stalled(Duration::ZERO).map(|s| s.0), Some(1));
        l.beat(1);
        // The allowance is never below three heartbeats: a short watchdog interval must not
        // make a worker that beats on time look stalled.
        assert_eq!(l.stalled(Duration::ZERO), None);
    }
}
