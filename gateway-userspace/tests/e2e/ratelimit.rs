//! Rate limits end to end: the seed's curl loop, headers, per-route and per-consumer policies,
//! window roll-over, two gateways sharing one Redis, Redis killed and restarted (fail open /
//! fail closed), and a real Redis Cluster.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{pki::*, support::*};

/// A raw response: status, headers (lower-case names), body.
struct Raw {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn num(&self, name: &str) -> u64 {
        self.header(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {name}: {:?}", self.headers))
    }
}

/// One request on a fresh connection (so consecutive requests spread over the workers).
fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let raw = raw_request(addr, head.as_bytes()).expect("request");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status =
        lines.next().and_then(|l| l.get(9..12)).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{raw}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Raw { status, headers, body: body.to_owned() }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Waits (by polling the clock) until at least `margin` seconds remain in the current window, so
/// a test of exact counts does not straddle a window edge.
fn clear_of_window_edge(window: u64, margin: u64) {
    let ok = eventually(Duration::from_secs(margin + 5), || (window - now_s() % window > margin).then_some(()));
    assert!(ok.is_some());
}

fn config(p: &Ports, workers: usize, upstream: &Upstream, extra: &str) -> String {
    ConfigBuilder::new(p)
        .workers(workers)
        .service("api", &[upstream.addr])
        .route("chat", "api", r#"paths = ["/v1"]"#)
        .route("health", "api", r#"paths = ["/health"]"#)
        .toml(extra)
        .build()
}

const SEED_LAYERS: &str = r#"
[[rate_limits]]
name = "per-ip"
routes = ["chat"]
key = "ip"
limit = 100
window = "minute"
"#;

#[test]
fn the_seed_curl_loop_gets_exact_counts_and_headers() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, 2, &u, SEED_LAYERS));
    clear_of_window_edge(60, 10);
    let started = now_s();
    for i in 1..=100u64 {
        let r = request(gw.ports.listen, "/v1/chat/completions", &[]);
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
        assert_eq!(r.num("x-ratelimit-limit-minute"), 100);
        assert_eq!(r.num("x-ratelimit-remaining-minute"), 100 - i, "request {i}");
        let reset = r.num("x-ratelimit-reset");
        assert!(reset > started && reset <= started + 61, "reset {reset} is the end of the minute");
        assert_eq!(r.header("ratelimit-policy"), Some("\"per-ip\";q=100;w=60"));
        assert!(r.header("ratelimit").is_some_and(|v| v.starts_with(&format!("\"per-ip\";r={};t=", 100 - i))));
    }
    for i in 101..=105 {
        let r = request(gw.ports.listen, "/v1/chat/completions", &[]);
        assert_eq!(r.status, 429, "request {i}");
        let retry = r.num("retry-after");
        assert!((1..=61).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.num("x-ratelimit-remaining-minute"), 0);
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON body");
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(body["retry_after"], retry);
        assert!(body["message"].as_str().unwrap().contains("100 requests per minute"), "{body}");
    }
    assert_eq!(u.requests(), 100, "refused requests never reach the upstream");

    // An unlimited route carries no limit headers and is not counted.
    let r = request(gw.ports.listen, "/health", &[]);
    assert_eq!(r.status, 200);
    assert!(r.header("x-ratelimit-limit-minute").is_none() && r.header("ratelimit").is_none());

    let m = gw.metrics();
    let d = |result| {
        metric_value(
            &m,
            "gateway_ratelimit_decisions_total",
            &[("route", "chat"), ("layer", "per-ip"), ("result", result)],
        )
    };
    assert_eq!((d("allowed"), d("limited"), d("error")), (100.0, 5.0, 0.0), "{m}");
    assert_eq!(metric_value(&m, "gateway_http_refusals_total", &[("reason", "rate_limited")]), 5.0);
    assert!(metric_value(&m, "gateway_ratelimit_memory_keys", &[("store", "ratelimit")]) >= 1.0);
}

#[test]
fn layers_run_in_order_and_partners_get_their_own_limits() {
    let u = Upstream::start("u");
    // Partners with different SLAs, keyed by consumer, else (no certificate here) by a header.
    let layers = r#"
[[rate_limits]]
name = "partners"
routes = ["chat"]
key = ["consumer", "header:x-partner-id"]
limit = 1
window = "hour"
overrides = { "partner-a" = 6, "partner-b" = 3 }

[[rate_limits]]
name = "per-ip"
routes = ["chat"]
key = "ip"
limit = 8
window = "hour"
"#;
    let gw = Gateway::start(|p| config(p, 1, &u, layers));
    clear_of_window_edge(3600, 30);
    let count = |partner: &str, n: usize| {
        (0..n).filter(|_| request(gw.ports.listen, "/v1/x", &[("x-partner-id", partner)]).status == 200).count()
    };
    assert_eq!(count("partner-b", 5), 3, "partner-b's SLA");
    assert_eq!(count("partner-c", 3), 1, "the default for everyone else");
    // partner-a has 6, but the per-IP layer (8, of which 4 are used) stops it at 4.
    let r = (0..6).map(|_| request(gw.ports.listen, "/v1/x", &[("x-partner-id", "partner-a")])).collect::<Vec<_>>();
    assert_eq!(r.iter().filter(|r| r.status == 200).count(), 4);
    let refused = r.iter().find(|r| r.status == 429).expect("refused");
    let message: serde_json::Value = serde_json::from_str(&refused.body).expect("JSON body");
    assert!(message["message"].as_str().unwrap().contains("\"per-ip\""), "the per-IP layer refused: {message}");
    // Both layers' headers: the hour window shows the tighter of the two.
    assert_eq!(refused.num("x-ratelimit-remaining-hour"), 0);
    assert_eq!(refused.header("ratelimit-policy"), Some("\"partners\";q=6;w=3600, \"per-ip\";q=8;w=3600"));
    // Requests without the partner key skip that layer (only the per-IP one applies).
    assert_eq!(request(gw.ports.listen, "/v1/x", &[]).status, 429);
}

#[test]
fn a_window_rolls_over_with_the_real_clock() {
    let u = Upstream::start("u");
    let layer = "[[rate_limits]]\nname = \"burst\"\nkey = \"ip\"\nlimit = 3\nwindow = \"second\"\n";
    let gw = Gateway::start(|p| config(p, 1, &u, layer));
    let mut seen_429 = false;
    for _ in 0..10 {
        let r = request(gw.ports.listen, "/v1/x", &[]);
        if r.status == 429 {
            // The next second, once enough of this one's three has faded.
            assert!((1..=2).contains(&r.num("retry-after")), "{:?}", r.headers);
            seen_429 = true;
            break;
        }
    }
    assert!(seen_429, "three per second");
    let back =
        eventually(Duration::from_secs(5), || (request(gw.ports.listen, "/v1/x", &[]).status == 200).then_some(()));
    assert!(back.is_some(), "admitted again once the window moved on");
}

fn redis_config(p: &Ports, u: &Upstream, redis: &str, layers: &str) -> String {
    config(
        p,
        2,
        u,
        &format!(
            "[redis]\n{redis}\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\n{layers}"
        ),
    )
}

#[test]
fn two_gateways_sharing_redis_enforce_one_global_limit() {
    let u = Upstream::start("u");
    let redis = RedisServer::start();
    let layer = "[[rate_limits]]\nname = \"global\"\nkey = \"ip\"\nlimit = 10\nwindow = \"hour\"\nbackend = \"redis\"\non_redis_error = \"fail_closed\"\n";
    let url = format!("url = \"{}\"", redis.url());
    let a = Gateway::start(|p| redis_config(p, &u, &url, layer));
    let b = Gateway::start(|p| redis_config(p, &u, &url, layer));
    clear_of_window_edge(3600, 30);
    let mut ok = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = request(gw.ports.listen, "/v1/x", &[]);
        if r.status == 200 {
            ok += 1;
            assert_eq!(r.num("x-ratelimit-remaining-hour"), 10 - ok, "one counter for both gateways");
        } else {
            assert_eq!(r.status, 429);
        }
    }
    assert_eq!(ok, 10);
    assert_eq!(a.metric("gateway_redis_up", &[]), 1.0);
    assert!(a.metric("gateway_redis_command_duration_seconds_count", &[("command", "ratelimit")]) >= 10.0);
}

#[test]
fn redis_outage_fails_open_or_closed_as_configured_and_recovers() {
    let u = Upstream::start("u");
    let mut redis = RedisServer::start();
    let layers = r#"
[[routes]]
name = "closed"
service = "api"
paths = ["/closed"]

[[rate_limits]]
name = "open-layer"
routes = ["chat"]
key = "ip"
limit = 3
window = "hour"
backend = "redis"
on_redis_error = "fail_open"

[[rate_limits]]
name = "closed-layer"
routes = ["closed"]
key = "ip"
limit = 3
window = "hour"
backend = "redis"
on_redis_error = "fail_closed"
"#;
    let url = format!("url = \"{}\"", redis.url());
    let gw = Gateway::start(|p| redis_config(p, &u, &url, layers));
    clear_of_window_edge(3600, 60);
    let statuses =
        |path: &str, n: usize| (0..n).map(|_| request(gw.ports.listen, path, &[]).status).collect::<Vec<_>>();
    assert_eq!(statuses("/v1/x", 4), [200, 200, 200, 429]);
    assert_eq!(statuses("/closed", 4), [200, 200, 200, 429]);

    redis.kill();
    // Fail open: served (uncounted); fail closed: 503 with Retry-After.
    assert_eq!(statuses("/v1/x", 3), [200, 200, 200]);
    let r = request(gw.ports.listen, "/closed", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.num("retry-after"), 1);
    assert!(r.body.contains("ratelimit_unavailable"));
    let down = eventually(Duration::from_secs(5), || (gw.series("gateway_redis_up", &[]) == 0.0).then_some(()));
    assert!(down.is_some(), "gateway_redis_up drops");
    let m = gw.metrics();
    assert!(
        metric_value(&m, "gateway_ratelimit_decisions_total", &[("layer", "open-layer"), ("result", "error")]) >= 3.0
    );
    assert!(
        metric_value(&m, "gateway_ratelimit_decisions_total", &[("layer", "closed-layer"), ("result", "error")]) >= 1.0
    );
    assert!(gw.stderr().contains("redis unreachable"), "the outage is logged");

    // Back (empty): decisions are correct again without restarting gatewayd.
    redis.restart();
    let up = eventually(Duration::from_secs(10), || (gw.metric("gateway_redis_up", &[]) == 1.0).then_some(()));
    assert!(up.is_some(), "reconnected:\n{}", gw.stderr());
    assert_eq!(statuses("/v1/x", 4), [200, 200, 200, 429]);
    assert_eq!(statuses("/closed", 4), [200, 200, 200, 429]);
    assert_eq!(gw.stderr().matches("redis unreachable").count(), 1, "logged once per outage");
}

#[test]
fn a_redis_cluster_keeps_exact_counts_per_key() {
    let u = Upstream::start("u");
    let cluster = RedisCluster::start();
    let layer = "[[rate_limits]]\nname = \"tenant\"\nkey = \"header:x-tenant\"\nlimit = 3\nwindow = \"hour\"\nbackend = \"redis\"\non_redis_error = \"fail_closed\"\n";
    let nodes = format!("cluster = {}", toml_nodes(&cluster));
    let gw = Gateway::start(|p| redis_config(p, &u, &nodes, layer));
    clear_of_window_edge(3600, 30);
    // Ten tenants: their keys land on all three masters.
    for t in 0..10 {
        let tenant = format!("tenant-{t}");
        let statuses: Vec<u16> =
            (0..4).map(|_| request(gw.ports.listen, "/v1/x", &[("x-tenant", &tenant)]).status).collect();
        assert_eq!(statuses, [200, 200, 200, 429], "{tenant}");
    }
    assert_eq!(gw.metric("gateway_redis_up", &[]), 1.0);
}

#[test]
fn counters_survive_a_reload() {
    let u = Upstream::start("u");
    let layer = "[[rate_limits]]\nname = \"r\"\nkey = \"ip\"\nlimit = 2\nwindow = \"hour\"\n";
    let gw = Gateway::start(|p| config(p, 1, &u, layer));
    clear_of_window_edge(3600, 30);
    assert_eq!(request(gw.ports.listen, "/v1/x", &[]).status, 200);
    assert_eq!(request(gw.ports.listen, "/v1/x", &[]).status, 200);
    let changed = config(&gw.ports, 1, &u, &format!("{layer}overrides = {{ \"10.9.9.9\" = 50 }}\n"));
    assert!(gw.reload(&changed), "reloaded:\n{}", gw.stderr());
    assert_eq!(request(gw.ports.listen, "/v1/x", &[]).status, 429, "the count survived the reload");
}

/// Seed 003, scenario 2: partners authenticated by client certificates (mTLS), each with its
/// own SLA, from one `consumer` layer with overrides.
#[tokio::test(flavor = "multi_thread")]
async fn partners_identified_by_client_certificates_get_their_own_slas() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let partners = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    let (a, b) = (partners.client("partner-a"), partners.client("partner-b"));
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        partners.write(&p.dir, "partners-ca");
        ConfigBuilder::new(p)
            .workers(2)
            .listener_tls(
                r#"
certificates = [{ cert = "server.crt", key = "server.key" }]
client_auth = "required"
client_ca = ["partners-ca.crt"]
"#,
            )
            .service("s", &[u.addr])
            // The client-certificate phase does the identification.
            .route("partner-api", "s", "client_cert = \"consumer\"\nauth = \"none\"")
            .consumer(
                r#"name = "partner-a"
client_certs = [{ subject_cn = "partner-a" }]"#,
            )
            .consumer(
                r#"name = "partner-b"
client_certs = [{ subject_cn = "partner-b" }]"#,
            )
            .rate_limit(
                r#"
name = "partner-sla"
key = "consumer"
limit = 1
window = "hour"
overrides = { "partner-a" = 5, "partner-b" = 3 }
"#,
            )
            .build()
    });
    clear_of_window_edge(3600, 30);
    for (leaf, sla) in [(&a, 5u64), (&b, 3)] {
        let mut conn = Https::connect(gw.ports.listen, "localhost", client_config(&ca, Some(leaf), &[])).await.unwrap();
        for i in 1..=sla {
            let r = conn.get("/orders", &[]).await.unwrap();
            assert_eq!(r.status.as_u16(), 200, "request {i} of {sla}");
            assert_eq!(r.header("x-ratelimit-limit-hour"), Some(sla.to_string().as_str()));
        }
        let r = conn.get("/orders", &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), 429);
        assert_eq!(r.json()["error"], "rate_limited");
    }
}

/// The README's per-consumer example: API-key consumers are counted by their id (`user`), and
/// overrides name them by consumer name (or id); everyone else gets the layer's limit.
#[test]
fn api_key_consumers_counted_by_id_get_the_overrides_that_name_them() {
    let u = Upstream::start("u");
    let digest = |key: &str| {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
        format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let consumers: String =
        [("partner-a", "c-001", "key-a"), ("partner-b", "c-002", "key-b"), ("partner-c", "c-003", "key-c")]
            .iter()
            .map(|(name, id, key)| {
                format!("[[consumers]]\nname = \"{name}\"\nid = \"{id}\"\napi_keys = [\"{}\"]\n", digest(key))
            })
            .collect();
    let layers = format!(
        r#"
[auth]
default_policy = "keys"

[[auth.policies]]
name = "keys"
any_of = ["api_key"]

{consumers}
[[rate_limits]]
name = "per-user"
routes = ["chat"]
key = ["user", "api_key"]
limit = 1
window = "hour"
overrides = {{ "partner-a" = 4, "c-002" = 2 }}
"#
    );
    let gw = Gateway::start(|p| config(p, 1, &u, &layers));
    clear_of_window_edge(3600, 30);
    for (key, sla) in [("key-a", 4u64), ("key-b", 2), ("key-c", 1)] {
        for i in 1..=sla {
            let r = request(gw.ports.listen, "/v1/x", &[("x-api-key", key)]);
            assert_eq!(r.status, 200, "{key}: request {i} of {sla}: {}", r.body);
            assert_eq!(r.num("x-ratelimit-limit-hour"), sla, "{key}");
        }
        let r = request(gw.ports.listen, "/v1/x", &[("x-api-key", key)]);
        assert_eq!(r.status, 429, "{key}: past its limit of {sla}");
    }
}
