//! `gateway_worker_loop_lag_seconds`: every worker's event loop is probed, and keeps being probed.

use std::time::Duration;

use super::support::*;

#[test]
fn every_worker_reports_its_loop_lag_and_it_keeps_moving() {
    let gw = Gateway::start(|p| ConfigBuilder::new(p).workers(2).build());
    let count = |worker: &str| gw.series("gateway_worker_loop_lag_seconds_count", &[("worker", worker)]);
    for worker in ["0", "1"] {
        let first = count(worker);
        // About 20 samples a second: a few more arrive within moments, unless the probe stopped.
        let moved = eventually(Duration::from_secs(10), || (count(worker) >= first + 3.0).then_some(()));
        assert!(moved.is_some(), "worker {worker}'s loop lag count stayed at {first}:\n{}", gw.metrics());
        let inf = gw.series("gateway_worker_loop_lag_seconds_bucket", &[("worker", worker), ("le", "+Inf")]);
        assert!(inf >= first + 3.0, "the +Inf bucket does not hold every sample ({inf})");
    }
}
