//! `gateway_worker_loop_lag_seconds`: how long a task that just became ready waits before its
//! worker's event loop runs it. A request's latency includes that wait, so the histogram's tail
//! is where stalls (long tasks, heap collection, sweeps, scrapes) show up, per worker.
//!
//! The probe wakes at randomised intervals and yields once: the time until it is polled again is
//! what the tasks already ready, plus the I/O poll and whatever that made ready, took. A random
//! period keeps the probe from running in lockstep with other periodic tasks (a fixed 100 ms
//! probe and a 1 s sweep started together would always wake in the same timer tick, and which
//! of them runs first would decide whether the sweep is ever seen).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::metrics::HistogramShard;

/// The probe wakes every `MIN_PERIOD` to `MIN_PERIOD + PERIOD_SPREAD` (uniform): about 20
/// samples a second, each one timer wake and one extra poll (well under a microsecond of work).
const MIN_PERIOD: Duration = Duration::from_millis(25);
const PERIOD_SPREAD_MS: u64 = 50;

/// Runs on the worker's own runtime until it stops; records into `shard`.
pub async fn probe(shard: Arc<HistogramShard>, seed: u64) {
    let mut rng = XorShift(seed | 1);
    loop {
        tokio::time::sleep(MIN_PERIOD + Duration::from_millis(rng.next() % PERIOD_SPREAD_MS)).await;
        sample(&shard).await;
    }
}

/// One measurement: yield, and record how long the loop took to come back.
async fn sample(shard: &HistogramShard) {
    let ready = Instant::now();
    tokio::task::yield_now().await;
    shard.observe(ready.elapsed().as_secs_f64());
}

/// Enough randomness to decorrelate sampling from other periodic work; not for anything else.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;
    use crate::metrics::{LOOP_LAG_BUCKETS, LabelValue, Labels, OneLabel, ShardedFamily};

    /// A task that holds the loop while the probe waits to be polled again is measured.
    #[tokio::test(flavor = "current_thread")]
    async fn a_task_holding_the_loop_is_seen_as_lag() {
        let family: ShardedFamily<OneLabel, HistogramShard> = ShardedFamily::new(&LOOP_LAG_BUCKETS);
        let mut registry = Registry::default();
        registry.register("lag_seconds", "", family.clone());
        let shard = family.new_shard(&Labels([("worker", LabelValue::Static("0"))]));
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                // Ready before the probe yields: it runs (and blocks, as a long synchronous step
                // would) before the probe is polled again.
                tokio::task::spawn_local(async { std::thread::sleep(Duration::from_millis(20)) });
                sample(&shard).await;
            })
            .await;
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        assert!(text.contains("lag_seconds_count{worker=\"0\"} 1"), "{text}");
        assert!(
            text.contains("lag_seconds_bucket{le=\"0.01\",worker=\"0\"} 0"),
            "the 20 ms stall was not seen:\n{text}"
        );
        // No upper bound: on a loaded machine the stall can be seen as longer than it was.
    }
}
