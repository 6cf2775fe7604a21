use std::time::Duration;

use super::*;

fn spec(lb: LbAlgorithm, n: u16) -> ServiceSpec {
    ServiceSpec {
        name: "s".into(),
        targets: (0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 5000 + i))).collect(),
        lb,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        max_fails: 2,
        fail_timeout: Duration::from_millis(50),
        retries: 1,
        max_idle_per_target: 4,
        idle_timeout: Duration::from_secs(1),
        tls: None,
    }
}

#[test]
fn round_robin_cycles() {
    let s = Service::new(spec(LbAlgorithm::RoundRobin, 3), None);
    let picks: Vec<usize> = (0..6).map(|_| s.pick(0).unwrap()).collect();
    assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn least_conn_prefers_idle_targets() {
    let s = Service::new(spec(LbAlgorithm::LeastConn, 3), None);
    let _a = s.targets[0].state.begin();
    let _b = s.targets[1].state.begin();
    assert_eq!(s.pick(0).unwrap(), 2);
    let _c = s.targets[2].state.begin();
    let _d = s.targets[2].state.begin();
    assert_ne!(s.pick(0).unwrap(), 2);
}

#[test]
fn tried_targets_are_skipped() {
    let s = Service::new(spec(LbAlgorithm::RoundRobin, 2), None);
    assert_eq!(s.pick(0b01).unwrap(), 1);
    assert_eq!(s.pick(0b11), Err(PickError::Exhausted));
}

/// The health clock is driven by hand: a cool-down elapses exactly when the test says so, never
/// because the machine was slow between two lines.
#[test]
fn ejection_cool_down_and_single_probe() {
    let s = Service::new(spec(LbAlgorithm::RoundRobin, 1), None);
    let t = &s.targets[0].state;
    let cool_down = Duration::from_millis(50);
    assert!(!t.record_failure_at(1_000, 2, cool_down));
    assert!(t.record_failure_at(1_000, 2, cool_down));
    assert!(!t.is_up());
    assert_eq!(s.pick_at(0, 1_000), Err(PickError::NoHealthyTarget));
    assert_eq!(s.pick_at(0, 1_049), Err(PickError::NoHealthyTarget), "still cooling down");
    assert_eq!(s.pick_at(0, 1_050), Ok(0), "one probe after the cool-down");
    assert_eq!(s.pick_at(0, 1_051), Err(PickError::NoHealthyTarget), "only one probe at a time");
    t.record_success();
    assert!(t.is_up());
    assert_eq!(s.pick_at(0, 1_052), Ok(0));
}

#[test]
fn failed_probe_ejects_again() {
    let s = Service::new(spec(LbAlgorithm::RoundRobin, 1), None);
    let t = &s.targets[0].state;
    let cool_down = Duration::from_millis(20);
    t.record_failure_at(1_000, 1, cool_down);
    assert_eq!(s.pick_at(0, 1_020), Ok(0), "the probe");
    // The probe fails: ejected again (below max_fails, because it was the probe), for a fresh
    // cool-down from the failure.
    assert!(t.record_failure_at(1_021, 5, cool_down));
    assert_eq!(s.pick_at(0, 1_021), Err(PickError::NoHealthyTarget));
    assert_eq!(s.pick_at(0, 1_040), Err(PickError::NoHealthyTarget));
    assert_eq!(s.pick_at(0, 1_041), Ok(0));
}

#[test]
fn state_survives_rebuild() {
    let old = Service::new(spec(LbAlgorithm::RoundRobin, 2), None);
    old.targets[1].state.record_failure(1, Duration::from_secs(60));
    let new = Service::new(spec(LbAlgorithm::RoundRobin, 3), Some(&old));
    assert!(!new.targets[1].state.is_up());
    assert!(new.targets[2].state.is_up());
}

#[test]
fn drained_targets_get_no_new_requests_until_returned() {
    let s = Service::new(spec(LbAlgorithm::RoundRobin, 2), None);
    assert!(!s.targets[0].state.set_drained(true));
    let picks: Vec<usize> = (0..4).map(|_| s.pick(0).unwrap()).collect();
    assert_eq!(picks, vec![1, 1, 1, 1]);
    s.targets[1].state.set_drained(true);
    assert_eq!(s.pick(0), Err(PickError::NoHealthyTarget));
    assert!(s.targets[0].state.set_drained(false));
    assert_eq!(s.pick(0), Ok(0));
}
