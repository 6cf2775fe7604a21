//! Issue 18 (identity provider): the real gatewayd against the test IdP running as a process of
//! its own ([`IdpProcess`]), with real faults: slow answers, paused (SIGSTOP), resumed (SIGCONT),
//! killed (SIGKILL) and restarted. Checks the per-issuer circuit breaker (no request waits the
//! IdP's timeout while it is open; it closes once the IdP answers) and the coalescing of
//! concurrent introspections of one token, and measures request latency in each phase: the
//! table is printed and, with `GATEWAYD_IDP_FAULT_REPORT=<file>`, written as the report
//! `bench/results/faults-idp.md`.

use std::time::{Duration, Instant};

use http_body_util::Full;
use serde_json::json;
use tokio::task::JoinSet;

use super::{idp::*, support::*};

fn config(p: &Ports, up: &Upstream, idp: &IdpProcess) -> String {
    std::fs::write(p.dir.join("idp-secret"), idp.client_secret()).expect("secret file");
    let issuer = format!(
        r#"
name = "idp"
issuer = "{issuer}"
audiences = ["api"]
refresh_interval = "10m"
# The IdP's deadline (introspection and key fetches): long, so the latency table shows who
# waited for it.
fetch_timeout = "10s"
idp_outage_grace = "1m"
unknown_kid_refetch_interval = "1s"
breaker_failures = 3
breaker_cool_down = "2s"
"#,
        issuer = idp.issuer(),
    );
    let introspection = format!(
        "client_id = \"{}\"\nclient_secret_file = \"{}/idp-secret\"\ntimeout = \"10s\"",
        idp.client_id(),
        p.dir.display()
    );
    ConfigBuilder::new(p)
        .workers(2)
        .service("s", &[up.addr])
        .auth(r#"leeway = "5s""#)
        .table("[[auth.issuers]]", &issuer)
        .table("[auth.issuers.introspection]", &introspection)
        .table("[[auth.policies]]", "name = \"users\"\nany_of = [\"jwt\"]\nscopes = [\"read\"]")
        .route("api", "s", "paths = [\"/api\"]\nauth = \"users\"")
        .build()
}

/// One request with a bearer token, and how long it took.
async fn timed(url: String, token: String) -> (Reply, Duration) {
    let req = req("GET", &url, "api.test").header("authorization", format!("Bearer {token}"));
    let started = Instant::now();
    let reply = send(&client(), req.body(Full::default()).unwrap()).await;
    (reply, started.elapsed())
}

/// One request per token, one after the other.
async fn sequentially(gw: &Gateway, tokens: &[String]) -> Vec<(Reply, Duration)> {
    let mut out = Vec::new();
    for t in tokens {
        out.push(timed(gw.url("/api/x"), t.clone()).await);
    }
    out
}

/// Concurrent requests, one per token.
async fn concurrently(gw: &Gateway, tokens: &[String]) -> Vec<(Reply, Duration)> {
    let mut set = JoinSet::new();
    for t in tokens {
        set.spawn(timed(gw.url("/api/x"), t.clone()));
    }
    set.join_all().await
}

fn tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn breaker_state(gw: &Gateway) -> f64 {
    gw.series("gateway_auth_idp_breaker_state", &[("issuer", "idp")])
}

/// Latencies of one phase of the scenario.
struct Phase {
    fault: &'static str,
    what: String,
    latencies: Vec<Duration>,
    statuses: Vec<u16>,
}

impl Phase {
    fn new(fault: &'static str, what: &str, replies: &[(Reply, Duration)]) -> Phase {
        Phase {
            fault,
            what: what.to_owned(),
            latencies: replies.iter().map(|(_, d)| *d).collect(),
            statuses: replies.iter().map(|(r, _)| r.status.as_u16()).collect(),
        }
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }

    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        let mut statuses: Vec<String> = Vec::new();
        for s in [200, 503] {
            let n = self.statuses.iter().filter(|x| **x == s).count();
            if n > 0 {
                statuses.push(format!("{n}× {s}"));
            }
        }
        format!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            self.fault,
            self.what,
            self.latencies.len(),
            statuses.join(", "),
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99)),
            ms(self.latencies.iter().copied().max().unwrap_or_default()),
        )
    }
}

fn report(phases: &[Phase], recovery: &[(&str, Duration)]) -> String {
    let mut out = String::from(
        "# Request latency while the IdP fails\n\n\
         Produced by the end-to-end test `e2e::idp_faults::idp_faults_trip_the_breaker_and_concurrent_introspections_coalesce`\n\
         (`GATEWAYD_IDP_FAULT_REPORT=$PWD/bench/results/faults-idp.md cargo test -p gateway-userspace --test e2e idp_faults`):\n\
         the real gatewayd (2 workers, debug build) on loopback, the test IdP as a process of its own,\n\
         faults injected with SIGSTOP, SIGCONT, SIGKILL and a restart. Every request carries an opaque\n\
         token not seen before (an uncached introspection), except where said. Settings: introspection\n\
         `timeout` and `fetch_timeout` 10 s, `breaker_failures = 3`, `breaker_cool_down = \"2s\"`.\n\
         Latencies are client-side (request sent to response head), in ms.\n\n\
         | Fault | Requests | n | Status | p50 | p99 | max |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in phases {
        out.push_str(&p.row());
        out.push('\n');
    }
    out.push_str(
        "\nTime from the IdP answering again to the breaker closing (`gateway_auth_idp_breaker_state` 0):\n\n",
    );
    for (what, d) in recovery {
        out.push_str(&format!("- {what}: {:.0} ms\n", d.as_secs_f64() * 1000.0));
    }
    out.push_str(
        "\nWhile the breaker is open no request waits for the IdP: only the first `breaker_failures`\n\
         calls after the IdP hangs wait the full timeout (that is how the breaker learns); a killed\n\
         IdP refuses connections, so even those are fast.\n",
    );
    out
}

/// Asserts every reply is a 503 `idp_unavailable` with `Retry-After`.
fn assert_unavailable(replies: &[(Reply, Duration)], when: &str) {
    for (r, _) in replies {
        assert_eq!(r.status, 503, "{when}: {:?}", r.body);
        assert_eq!(r.json()["error"], "idp_unavailable", "{when}");
        let after: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After");
        assert!(after >= 1, "{when}: Retry-After {after}");
    }
}

fn breaker_rejections(gw: &Gateway) -> f64 {
    gw.metric("gateway_auth_idp_breaker_rejections_total", &[("issuer", "idp")])
}

/// Sends `tokens` one at a time and asserts each is a 503 refused by the open breaker itself:
/// the rejection counter moves with every request, so none of them made an IdP call and none
/// can have waited for the IdP's timeout (the event, not a latency bound).
async fn refused_by_breaker(gw: &Gateway, tokens: &[String], gap: Duration, when: &str) -> Vec<(Reply, Duration)> {
    let mut out = Vec::new();
    for t in tokens {
        let before = breaker_rejections(gw);
        let reply = timed(gw.url("/api/x"), t.clone()).await;
        assert_unavailable(std::slice::from_ref(&reply), when);
        let rejected = breaker_rejections(gw) - before;
        assert!(rejected >= 1.0, "{when}: the request was not refused by the breaker (it called the IdP)");
        out.push(reply);
        tokio::time::sleep(gap).await;
    }
    out
}

/// Requests spread over `span` (so they meet the breaker open, half-open and open again), each
/// checked with [`refused_by_breaker`] as it comes.
async fn spread_failing_fast(gw: &Gateway, tokens: &[String], span: Duration, when: &str) -> Vec<(Reply, Duration)> {
    refused_by_breaker(gw, tokens, span / tokens.len() as u32, when).await
}

/// Waits until the breaker is closed again; returns how long that took.
fn wait_closed(gw: &Gateway, what: &str) -> Duration {
    let started = Instant::now();
    eventually(Duration::from_secs(30), || (breaker_state(gw) == 0.0).then_some(()))
        .unwrap_or_else(|| panic!("the breaker did not close after {what}:\n{}", gw.stderr()));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_faults_trip_the_breaker_and_concurrent_introspections_coalesce() {
    let mut idp = IdpProcess::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    let active = json!({"active": true, "sub": "svc", "scope": "read", "aud": "api", "iss": idp.issuer(),
                        "exp": now() + 3600});
    let all: Vec<String> =
        ["healthy", "slow", "slow-shared", "recovered", "restarted"].iter().flat_map(|p| tokens(p, 20)).collect();
    idp.set_introspection(&all, &active);
    let up = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &up, &idp));
    let mut phases = Vec::new();
    let mut recovery = Vec::new();

    // Healthy: one introspection per new token.
    let replies = sequentially(&gw, &tokens("healthy", 20)).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200), "{:?}", replies[0].0.body);
    phases.push(Phase::new("none", "new token each", &replies));

    // Slow: 8 concurrent requests for one uncached token make one IdP call; all get its answer
    // (the answer takes long enough for all 8 to arrive while it is awaited).
    idp.set_delay(Duration::from_secs(1));
    let before = idp.introspection_hits();
    let coalesced = gw.metric("gateway_auth_introspection_coalesced_total", &[("issuer", "idp")]);
    let replies = concurrently(&gw, &vec!["slow-shared-0".to_owned(); 8]).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200), "{:?}", replies[0].0.body);
    assert_eq!(idp.introspection_hits() - before, 1, "8 concurrent requests for one token made several IdP calls");
    assert_eq!(gw.metric("gateway_auth_introspection_coalesced_total", &[("issuer", "idp")]) - coalesced, 7.0);
    phases.push(Phase::new("slow (1 s answers)", "8 concurrent, one token", &replies));
    let replies = sequentially(&gw, &tokens("slow", 5)).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200));
    assert_eq!(breaker_state(&gw), 0.0, "a slow IdP is not an unreachable one");
    phases.push(Phase::new("slow (1 s answers)", "new token each", &replies));
    idp.set_delay(Duration::ZERO);

    // Hung: the first calls wait the timeout; that opens the breaker.
    idp.pause();
    let replies = concurrently(&gw, &tokens("hung-learning", 3)).await;
    for (r, _) in &replies {
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (503, Some("idp_unavailable")));
    }
    phases.push(Phase::new("hung (SIGSTOP)", "3 concurrent before the breaker opens", &replies));
    assert_ne!(breaker_state(&gw), 0.0, "3 timeouts did not open the breaker");
    assert_eq!(gw.metric("gateway_auth_idp_breaker_transitions_total", &[("issuer", "idp"), ("to", "open")]), 1.0);
    // Open, half-open with the probe hanging, open again: nobody waits.
    let replies = spread_failing_fast(&gw, &tokens("hung", 30), Duration::from_secs(5), "IdP hung, breaker open").await;
    phases.push(Phase::new(
        "hung (SIGSTOP)",
        "new token each over 5 s, breaker open or half-open (probe under way)",
        &replies,
    ));
    // An unknown kid cannot be refetched either: refused at once, no refetch.
    let refetches = gw.metric("gateway_auth_jwks_unknown_kid_refetches_total", &[("issuer", "idp")]);
    let unknown = Key::es256().token(
        json!({"kid": "new"}),
        &json!({"iss": idp.issuer(), "aud": "api", "sub": "x",
        "exp": now() + 300, "scope": "read"}),
    );
    let replies = refused_by_breaker(&gw, &[unknown], Duration::ZERO, "unknown kid, breaker open").await;
    phases.push(Phase::new("hung (SIGSTOP)", "JWT with an unknown kid, breaker open", &replies));
    assert_eq!(gw.metric("gateway_auth_jwks_unknown_kid_refetches_total", &[("issuer", "idp")]), refetches);
    assert!(gw.metric("gateway_auth_idp_breaker_rejections_total", &[("issuer", "idp")]) >= 31.0);
    assert_eq!(gw.stderr().matches("circuit breaker open, requests").count(), 1, "logged once per outage");

    // Resumed: the probe gets its answer and the breaker closes.
    idp.resume();
    recovery.push(("after SIGCONT", wait_closed(&gw, "SIGCONT")));
    let replies = sequentially(&gw, &tokens("recovered", 20)).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200), "{:?}", replies[0].0.body);
    phases.push(Phase::new("recovered (SIGCONT)", "new token each", &replies));

    // Killed: refused connections fail at once; three of them open the breaker.
    idp.kill();
    let replies = sequentially(&gw, &tokens("down-learning", 3)).await;
    assert_unavailable(&replies, "IdP killed, breaker closed");
    phases.push(Phase::new("down (SIGKILL)", "3 before the breaker opens", &replies));
    assert_ne!(breaker_state(&gw), 0.0, "3 refused connections did not open the breaker");
    let replies =
        spread_failing_fast(&gw, &tokens("down", 30), Duration::from_secs(5), "IdP killed, breaker open").await;
    phases.push(Phase::new(
        "down (SIGKILL)",
        "new token each over 5 s, breaker open or half-open (probe under way)",
        &replies,
    ));

    // Restarted on the same port: the next probe closes the breaker.
    idp.restart();
    recovery.push(("after a restart", wait_closed(&gw, "the restart")));
    let replies = sequentially(&gw, &tokens("restarted", 20)).await;
    assert!(replies.iter().all(|(r, _)| r.status == 200), "{:?}", replies[0].0.body);
    phases.push(Phase::new("restarted", "new token each", &replies));
    assert!(gw.stderr().contains("circuit breaker closed"), "{}", gw.stderr());

    let text = report(&phases, &recovery);
    println!("{text}");
    if let Ok(path) = std::env::var("GATEWAYD_IDP_FAULT_REPORT") {
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}
