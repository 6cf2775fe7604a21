//! Redis faults end to end, for the rate limiter (the Redis user on every request): a single
//! Redis killed, paused and restarted; a Cluster master killed and restarted, paused, and killed
//! with a replica taking over. Faults are injected on real redis-server processes. Redis's
//! `timeout` is long (5 s) where the point is that no request waits for it: a request that did
//! would take seconds, far from the milliseconds a fail-fast answer takes.
//!
//! With `GATEWAYD_FAULT_REPORT=<file>` each test appends one Markdown table row per fault phase
//! (requests, p50/p99/max latency while the fault is in force) to that file: the source of
//! `bench/results/faults-redis.md`.

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::support::*;

const LONG_TIMEOUT: &str = "5s";

/// One route (`/v1`) limited per `x-user` header in Redis, with `on_redis_error = mode`.
fn config(p: &Ports, up: &Upstream, servers: &str, timeout: &str, mode: &str) -> String {
    let redis = format!(
        "{servers}\ntimeout = \"{timeout}\"\nconnect_timeout = \"1s\"\nreconnect_min = \"50ms\"\nreconnect_max = \"30s\""
    );
    ConfigBuilder::new(p)
        .workers(2)
        .table("[redis]", &redis)
        .service("api", &[up.addr])
        .route("chat", "api", r#"paths = ["/v1"]"#)
        .rate_limit(&format!(
            "name = \"faults\"\nkey = \"header:x-user\"\nlimit = 1000000\nwindow = \"hour\"\nbackend = \"redis\"\non_redis_error = \"{mode}\""
        ))
        .build()
}

/// Status and latency of one request for `user` on a fresh connection.
fn hit(addr: SocketAddr, user: &str) -> (u16, Duration) {
    let head = format!("GET /v1/x HTTP/1.1\r\nHost: api.test\r\nx-user: {user}\r\nConnection: close\r\n\r\n");
    let started = Instant::now();
    let raw = raw_request(addr, head.as_bytes()).expect("request");
    let took = started.elapsed();
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{raw}"));
    (status, took)
}

/// Latencies of one fault phase.
#[derive(Default)]
struct Phase {
    samples: Vec<Duration>,
    statuses: HashMap<u16, usize>,
}

impl Phase {
    fn add(&mut self, (status, took): (u16, Duration)) -> u16 {
        self.samples.push(took);
        *self.statuses.entry(status).or_default() += 1;
        status
    }

    fn max(&self) -> Duration {
        self.samples.iter().copied().max().unwrap_or_default()
    }

    /// Appends a row to `$GATEWAYD_FAULT_REPORT`, if set.
    fn report(&mut self, setup: &str, fault: &str, mode: &str) {
        let Some(path) = std::env::var_os("GATEWAYD_FAULT_REPORT") else { return };
        self.samples.sort();
        let q = |p: f64| self.samples[((self.samples.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        let ms = |d: Duration| format!("{:.2}", d.as_secs_f64() * 1000.0);
        let mut statuses: Vec<String> = self.statuses.iter().map(|(s, n)| format!("{n}×{s}")).collect();
        statuses.sort();
        let row = format!(
            "| {setup} | {fault} | {mode} | {} | {} | {} | {} | {} |\n",
            self.samples.len(),
            statuses.join(", "),
            ms(q(0.5)),
            ms(q(0.99)),
            ms(self.max()),
        );
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("report file");
        f.write_all(row.as_bytes()).expect("write report");
    }
}

/// Lines of `text` at WARN level that mention Redis.
fn redis_warnings(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("redis")).collect()
}

/// Keys held by each node (`DBSIZE`; 0 for a node that does not answer).
fn sizes(cluster: &RedisCluster) -> Vec<u64> {
    let size = |p: u16| redis_command(p, "DBSIZE").ok().and_then(|r| r.trim().trim_start_matches(':').parse().ok());
    cluster.ports.iter().map(|&p| size(p).unwrap_or(0)).collect()
}

/// The master holding the only rate-limit key of a test (replicas hold copies).
fn key_holder(cluster: &RedisCluster) -> usize {
    let masters: Vec<bool> =
        cluster.ports.iter().map(|&p| redis_command(p, "ROLE").is_ok_and(|r| r.contains("master"))).collect();
    let holders: Vec<usize> =
        sizes(cluster).iter().enumerate().filter(|(i, n)| masters[*i] && **n > 0).map(|(i, _)| i).collect();
    assert_eq!(holders.len(), 1, "one master holds the key: {holders:?}");
    holders[0]
}

#[test]
fn a_killed_single_redis_fails_fast_logs_once_and_recovers_promptly() {
    let up = Upstream::start("u");
    let mut redis = RedisServer::start();
    let servers = format!("url = \"{}\"", redis.url());
    let gw = Gateway::start(|p| config(p, &up, &servers, LONG_TIMEOUT, "fail_closed"));
    assert_eq!(hit(gw.ports.listen, "alice").0, 200);

    let logged = gw.stderr().len();
    redis.kill();
    let mut down = Phase::default();
    // Long enough for the reconnect backoff to grow to seconds (100 ms · 2ⁿ, up to 30 s).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(down.add(hit(gw.ports.listen, "alice")), 503, "fail_closed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No request waited for the (5 s) timeout: no command timed out (the counter moves in the
    // paused-server tests). The latencies only feed the report.
    assert_eq!(gw.metric("gateway_redis_errors_total", &[("kind", "timeout")]), 0.0);
    down.report("single", "kill", "fail_closed");

    redis.restart();
    // Requests find it again at once: recovery follows traffic, not the backoff (which by now
    // waits seconds between attempts).
    let mut after = Phase::default();
    let back =
        eventually(Duration::from_millis(1500), || (after.add(hit(gw.ports.listen, "alice")) == 200).then_some(()));
    assert!(back.is_some(), "still refused after redis came back:\n{}", gw.stderr());
    after.report("single", "restart (until the first 200)", "fail_closed");
    let log = gw.stderr()[logged..].to_owned();
    assert_eq!(redis_warnings(&log).len(), 1, "one warning per outage, none per request:\n{log}");
    assert_eq!(log.matches("redis reachable again").count(), 1, "{log}");
}

#[test]
fn a_paused_single_redis_costs_at_most_three_timeouts() {
    let up = Upstream::start("u");
    let redis = RedisServer::start();
    let servers = format!("url = \"{}\"", redis.url());
    let gw = Gateway::start(|p| config(p, &up, &servers, "200ms", "fail_open"));
    assert_eq!(hit(gw.ports.listen, "alice").0, 200);
    redis.pause(true);
    let mut paused = Phase::default();
    for _ in 0..60 {
        assert_eq!(paused.add(hit(gw.ports.listen, "alice")), 200, "fail_open");
    }
    // Three timeouts in a row mark it down; every later request fails open at once.
    assert_eq!(gw.metric("gateway_redis_errors_total", &[("kind", "timeout")]), 3.0);
    assert_eq!(gw.series("gateway_redis_up", &[]), 0.0);
    paused.report("single", "SIGSTOP", "fail_open");
    redis.pause(false);
    let back = eventually(Duration::from_secs(3), || (gw.metric("gateway_redis_up", &[]) == 1.0).then_some(()));
    assert!(back.is_some(), "{}", gw.stderr());
}

/// Users whose rate-limit keys land on every master of `cluster`, by master index (header
/// values are hashed into keys: a user's master is the one whose key count grew).
fn users_per_master(gw: &Gateway, cluster: &RedisCluster, masters: usize) -> HashMap<usize, Vec<String>> {
    let mut users: HashMap<usize, Vec<String>> = HashMap::new();
    for i in 0..64 {
        let user = format!("u{i}");
        let before = sizes(cluster);
        assert_eq!(hit(gw.ports.listen, &user).0, 200);
        let after = sizes(cluster);
        let owner = (0..masters).find(|m| after[*m] > before[*m]).expect("a master took the key");
        users.entry(owner).or_default().push(user);
        if i >= 12 && users.len() == masters {
            break;
        }
    }
    assert_eq!(users.len(), masters, "keys on every master");
    users
}

#[test]
fn a_dead_cluster_master_costs_its_slots_nothing_but_the_fail_mode_and_the_rest_keep_working() {
    let up = Upstream::start("u");
    let mut cluster = RedisCluster::start_with(ClusterOptions { full_coverage: false, ..ClusterOptions::default() });
    let servers = format!("cluster = {}", toml_nodes(&cluster));
    let gw = Gateway::start(|p| config(p, &up, &servers, LONG_TIMEOUT, "fail_closed"));
    let users = users_per_master(&gw, &cluster, 3);
    let logged = gw.stderr().len();

    cluster.kill(0);
    let (mut dead, mut alive) = (Phase::default(), Phase::default());
    for _ in 0..10 {
        for (master, names) in &users {
            for user in names {
                let status = if *master == 0 {
                    dead.add(hit(gw.ports.listen, user))
                } else {
                    alive.add(hit(gw.ports.listen, user))
                };
                assert_eq!(status, if *master == 0 { 503 } else { 200 }, "{user} on master {master}");
            }
        }
    }
    // No request waited for the timeout: no command timed out.
    assert_eq!(gw.metric("gateway_redis_errors_total", &[("kind", "timeout")]), 0.0);
    assert_eq!(gw.metric("gateway_redis_up", &[]), 1.0, "one master down is not the cluster down");
    let node = format!("127.0.0.1:{}", cluster.ports[0]);
    assert_eq!(gw.series("gateway_redis_node_up", &[("node", &node)]), 0.0);
    dead.report("cluster (3 masters)", "master killed: its slots", "fail_closed");
    alive.report("cluster (3 masters)", "master killed: other slots", "fail_closed");

    cluster.restart(0);
    let user = &users[&0][0];
    let back = eventually(Duration::from_secs(10), || (hit(gw.ports.listen, user).0 == 200).then_some(()));
    assert!(back.is_some(), "the master's slots are served again:\n{}", gw.stderr());
    assert_eq!(gw.metric("gateway_redis_node_up", &[("node", &node)]), 1.0);
    let log = gw.stderr()[logged..].to_owned();
    assert_eq!(log.matches("redis cluster node unreachable").count(), 1, "one line per outage:\n{log}");
    assert_eq!(log.matches("redis cluster node reachable again").count(), 1, "one per recovery:\n{log}");
    assert_eq!(redis_warnings(&log).len(), 1, "no per-request or per-reconnect warnings:\n{log}");
    assert!(!log.contains("Failed to connect to node"), "{log}");
}

#[test]
fn a_paused_cluster_master_costs_three_timeouts_then_fails_fast() {
    let up = Upstream::start("u");
    let cluster = RedisCluster::start_with(ClusterOptions { full_coverage: false, ..ClusterOptions::default() });
    let servers = format!("cluster = {}", toml_nodes(&cluster));
    let gw = Gateway::start(|p| config(p, &up, &servers, "200ms", "fail_open"));
    let users = users_per_master(&gw, &cluster, 3);
    cluster.pause(0, true);
    let (mut paused, mut alive) = (Phase::default(), Phase::default());
    for _ in 0..10 {
        for (master, names) in &users {
            for user in names {
                let phase = if *master == 0 { &mut paused } else { &mut alive };
                assert_eq!(phase.add(hit(gw.ports.listen, user)), 200, "fail_open");
            }
        }
    }
    let node = format!("127.0.0.1:{}", cluster.ports[0]);
    assert_eq!(gw.series("gateway_redis_node_up", &[("node", &node)]), 0.0);
    // redis-rs's own response timeout (the same `timeout`) or three of ours in a row mark it down.
    let timeouts = gw.metric("gateway_redis_errors_total", &[("kind", "timeout")]);
    assert!(timeouts <= 3.0, "{timeouts} requests waited for the timeout");
    paused.report("cluster (3 masters)", "master SIGSTOP: its slots", "fail_open");
    alive.report("cluster (3 masters)", "master SIGSTOP: other slots", "fail_open");
    cluster.pause(0, false);
    let back = eventually(Duration::from_secs(10), || {
        (gw.metric("gateway_redis_node_up", &[("node", &node)]) == 1.0).then_some(())
    });
    assert!(back.is_some(), "{}", gw.stderr());
}

#[test]
fn a_failover_keeps_the_fail_mode_meanwhile_and_uses_the_promoted_replica_after() {
    let up = Upstream::start("u");
    let mut cluster =
        RedisCluster::start_with(ClusterOptions { replicas: 1, node_timeout_ms: 1000, ..ClusterOptions::default() });
    let servers = format!("cluster = {}", toml_nodes(&cluster));
    let gw = Gateway::start(|p| config(p, &up, &servers, LONG_TIMEOUT, "fail_closed"));
    assert_eq!(hit(gw.ports.listen, "alice").0, 200);
    let victim = key_holder(&cluster);
    let old = format!("127.0.0.1:{}", cluster.ports[victim]);
    let logged = gw.stderr().len();

    cluster.kill(victim);
    let mut failover = Phase::default();
    let back = eventually(Duration::from_secs(30), || {
        let status = failover.add(hit(gw.ports.listen, "alice"));
        assert!(status == 503 || status == 200, "{status}");
        std::thread::sleep(Duration::from_millis(20));
        (status == 200).then_some(())
    });
    assert!(back.is_some(), "the promoted replica is used without a restart:\n{}", gw.stderr());
    assert!(failover.statuses.get(&503).is_some_and(|n| *n > 0), "the fail mode applied during the failover");
    // No request waited for the timeout: no command timed out.
    assert_eq!(gw.metric("gateway_redis_errors_total", &[("kind", "timeout")]), 0.0);
    failover.report("cluster (3 masters + 3 replicas)", "master killed until failover", "fail_closed");

    // The key now lives on the promoted replica, and the gateway counts there.
    let promoted = key_holder(&cluster);
    assert_ne!(promoted, victim);
    let new = format!("127.0.0.1:{}", cluster.ports[promoted]);
    // The node gauges follow the slot map, which is re-read about once a second: wait for it.
    let gauges = eventually(Duration::from_secs(10), || {
        let m = gw.metrics();
        let up = |node: &str| series_value(&m, "gateway_redis_node_up", &[("node", node)]);
        (up(&new) == Some(1.0) && up(&old) == Some(0.0)).then_some(())
    });
    assert!(gauges.is_some(), "node gauges after the failover:\n{}", gw.metrics());
    let mut after = Phase::default();
    for _ in 0..20 {
        assert_eq!(after.add(hit(gw.ports.listen, "alice")), 200);
    }
    after.report("cluster (3 masters + 3 replicas)", "after failover", "fail_closed");

    // The old master comes back as a replica: it is no longer tracked.
    cluster.restart(victim);
    let gone =
        eventually(Duration::from_secs(10), || (!gw.metrics().contains(&format!("node=\"{old}\""))).then_some(()));
    assert!(gone.is_some(), "{}", gw.metrics());
    let log = gw.stderr()[logged..].to_owned();
    assert!(!log.contains("Failed to connect to node"), "{log}");
    assert!(log.matches("redis cluster node unreachable").count() <= 3, "one line per node and outage:\n{log}");
}
