//! The limiter against both backends, with a hand-driven clock: exact counts, roll-over, no
//! double burst at window edges, overrides, one global limit for several nodes, Redis Cluster.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use super::*;
use crate::kv::{
    Kv, KvMetrics,
    testing::{RedisCluster, RedisServer, SpecOf as _, raw_command},
};
use crate::limits::{LimitMetrics, ManualClock, key::Value};

/// 2026-01-01T00:00:00Z: a minute, hour and day boundary.
const T0: u64 = 1_767_225_600_000;

fn layer(limit: u64, window: Window, backend: Backend) -> LayerSpec {
    LayerSpec {
        name: "ip".into(),
        routes: None,
        key: vec![KeySource::Ip],
        ipv6_prefix: 64,
        limit,
        window,
        backend,
        overrides: HashMap::new(),
    }
}

fn state() -> LimitState {
    LimitState::new(Arc::new(ManualClock::new(T0)), Arc::new(LimitMetrics::default()), KvMetrics::default())
}

fn ip_key(ip: &str) -> (KeySource, IpAddr) {
    (KeySource::Ip, ip.parse().unwrap())
}

/// One limiter backend, driven with explicit times.
enum Limiter<'a> {
    Memory(&'a LimitState),
    Redis(&'a Kv),
}

impl Limiter<'_> {
    async fn decide(&self, layer: &LayerSpec, ip: &str, at_ms: u64) -> Outcome {
        let (source, addr) = ip_key(ip);
        let key = Key { source: &source, value: Value::Ip(addr), consumer: None };
        let limit = layer.limit_for(&key);
        match self {
            Limiter::Memory(s) => decide_memory(s, layer, &key, limit, at_ms),
            Limiter::Redis(kv) => remote::decide(kv, layer, &key, limit, at_ms).await.expect("redis answers"),
        }
    }

    /// Sends `n` requests at `at_ms`; returns how many were admitted.
    async fn burst(&self, layer: &LayerSpec, ip: &str, at_ms: u64, n: u64) -> u64 {
        let mut admitted = 0;
        for _ in 0..n {
            admitted += u64::from(self.decide(layer, ip, at_ms).await.allowed);
        }
        admitted
    }
}

/// The seed's curl loop: requests 1-100 pass, 101-105 are refused, with exact headers' numbers.
async fn exact_counts(b: Limiter<'_>, l: &LayerSpec) {
    let at = T0 + 20_000;
    for i in 1..=100u64 {
        let o = b.decide(l, "192.0.2.1", at).await;
        assert!(o.allowed, "request {i} refused");
        assert_eq!(o.remaining, 100 - i);
        assert_eq!(o.reset_ms, 40_000, "the minute ends in 40 s");
    }
    for i in 101..=105 {
        let o = b.decide(l, "192.0.2.1", at).await;
        assert!(!o.allowed, "request {i} admitted");
        assert_eq!(o.remaining, 0);
        // Nothing fades before the window turns (the previous one is empty), and right after
        // it the 100 requests of this window still weigh fully: admitted once 1 % has faded.
        assert_eq!(o.reset_ms, 40_000 + 600, "retry after");
    }
    // Another client is not affected.
    assert!(b.decide(l, "192.0.2.2", at).await.allowed);
}

/// After a full burst the next window opens gradually; two windows later it is empty again.
async fn roll_over(b: Limiter<'_>, l: &LayerSpec) {
    let ip = "198.51.100.7";
    assert_eq!(b.burst(l, ip, T0 + 1_000, 100).await, 100);
    assert_eq!(b.burst(l, ip, T0 + 59_999, 1).await, 0, "still the same window");
    // 15 s into the next window, 75 % of the previous 100 still count: 25 fit.
    assert_eq!(b.burst(l, ip, T0 + 75_000, 30).await, 25);
    // Two windows later nothing remains.
    assert_eq!(b.burst(l, ip, T0 + 180_000, 105).await, 100);
}

/// A fixed window would admit 200 around the edge (100 before, 100 after); this one does not.
async fn no_double_burst(b: Limiter<'_>, l: &LayerSpec) {
    let ip = "203.0.113.9";
    assert_eq!(b.burst(l, ip, T0 + 59_900, 100).await, 100, "a full burst at the end of a window");
    let after_edge = b.burst(l, ip, T0 + 60_100, 100).await;
    assert_eq!(after_edge, 0, "100 more right after the edge would be a double burst");
    // Over the following minute the total stays at the limit's rate.
    let mut admitted = 0;
    for s in 0..60 {
        admitted += b.burst(l, ip, T0 + 60_100 + s * 1000, 10).await;
    }
    assert!(admitted <= 100, "{admitted} admitted in the minute after a full burst");
}

#[tokio::test]
async fn memory_exact_counts() {
    let s = state();
    exact_counts(Limiter::Memory(&s), &layer(100, Window::Minute, Backend::Memory)).await;
}

#[tokio::test]
async fn memory_roll_over() {
    let s = state();
    roll_over(Limiter::Memory(&s), &layer(100, Window::Minute, Backend::Memory)).await;
}

#[tokio::test]
async fn memory_no_double_burst() {
    let s = state();
    no_double_burst(Limiter::Memory(&s), &layer(100, Window::Minute, Backend::Memory)).await;
}

fn redis_layer() -> LayerSpec {
    layer(100, Window::Minute, Backend::Redis(crate::kv::FailMode::Closed))
}

async fn connected(spec: crate::kv::KvSpec) -> Kv {
    let kv = Kv::start(spec, KvMetrics::default());
    assert!(kv.settled(Duration::from_secs(5)).await, "redis reachable");
    kv
}

#[tokio::test]
async fn redis_exact_counts_roll_over_and_no_double_burst() {
    let server = RedisServer::start();
    let kv = connected(server.spec()).await;
    let l = redis_layer();
    exact_counts(Limiter::Redis(&kv), &l).await;
    roll_over(Limiter::Redis(&kv), &l).await;
    no_double_burst(Limiter::Redis(&kv), &l).await;
}

#[tokio::test]
async fn both_backends_agree_step_by_step() {
    let server = RedisServer::start();
    let kv = connected(server.spec()).await;
    let s = state();
    let l = layer(7, Window::Second, Backend::Memory);
    let (mem, red) = (Limiter::Memory(&s), Limiter::Redis(&kv));
    // A pseudo-random walk over 5 seconds and three clients.
    let mut t = T0;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..600 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        t += x % 23;
        let ip = ["192.0.2.1", "192.0.2.2", "192.0.2.3"][(x % 3) as usize];
        assert_eq!(mem.decide(&l, ip, t).await, red.decide(&l, ip, t).await, "at {t} for {ip}");
    }
}

#[tokio::test]
async fn nodes_sharing_redis_enforce_one_limit() {
    let server = RedisServer::start();
    let (a, b) = (connected(server.spec()).await, connected(server.spec()).await);
    let l = layer(10, Window::Minute, Backend::Redis(crate::kv::FailMode::Closed));
    let mut admitted = 0;
    for i in 0..20 {
        let node = if i % 2 == 0 { Limiter::Redis(&a) } else { Limiter::Redis(&b) };
        admitted += u64::from(node.decide(&l, "192.0.2.50", T0 + 1000).await.allowed);
    }
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn overrides_give_a_partner_its_own_limit() {
    let s = state();
    let mut l = layer(2, Window::Minute, Backend::Memory);
    l.overrides.insert("192.0.2.99".into(), 5);
    let b = Limiter::Memory(&s);
    assert_eq!(b.burst(&l, "192.0.2.99", T0, 10).await, 5);
    assert_eq!(b.burst(&l, "192.0.2.98", T0, 10).await, 2);
}

#[tokio::test]
async fn redis_cluster_decisions_touch_one_slot() {
    let cluster = RedisCluster::start();
    let kv = connected(cluster.spec()).await;
    let l = redis_layer();
    // Keys of many clients spread over the three masters; each decision's two keys share a slot.
    for i in 0..30 {
        let ip = format!("10.0.{i}.1");
        let (source, addr) = ip_key(&ip);
        let key = Key { source: &source, value: Value::Ip(addr), consumer: None };
        let (cur, prev) = remote::keys(&kv, &l, &key, window::Position::of(T0, 60_000));
        let slot = |k: &str| raw_command(cluster.ports[0], &format!("CLUSTER KEYSLOT {k}")).unwrap();
        assert_eq!(slot(&cur), slot(&prev), "{cur} / {prev}");
        let b = Limiter::Redis(&kv);
        assert_eq!(b.burst(&l, &ip, T0 + 500, 103).await, 100, "{ip}");
    }
}
