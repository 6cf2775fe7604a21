//! Token budgets end to end, against a fake OpenAI-compatible upstream: charged from JSON and
//! from server-sent events (without buffering the stream), the upstream's usage header, the audit
//! fields, MCP tool calls, exhaustion and the reset at the budget's midnight, and Redis.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};

use super::support::*;

fn config(p: &Ports, llm: &FakeLlm, budget: &str) -> String {
    let audit = format!("path = \"{}\"", p.dir.join("audit.log").display());
    let b = ConfigBuilder::new(p)
        .workers(2)
        .table("[audit]", &audit)
        .service("llm", &[llm.addr])
        .route("chat", "llm", "paths = [\"/v1\"]\nauth = \"tenants\"")
        .route("mcp", "llm", "paths = [\"/mcp\"]\nauth = \"tenants\"");
    tenants(b).toml(budget).build()
}

/// The workspaces the tests use, each an API consumer: a workspace comes from the caller's
/// authenticated identity (a client-sent `X-Workspace-Id` is removed by the identify phase).
const WORKSPACES: [&str; 8] =
    ["workspace-123", "workspace-456", "ws-daily", "ws-mcp", "ws-o", "ws-r", "ws-stream", "ws-tiny"];

fn tenants(mut b: ConfigBuilder<'_>) -> ConfigBuilder<'_> {
    b = b.auth("").table("[[auth.policies]]", "name = \"tenants\"\nany_of = [\"api_key\"]");
    for ws in WORKSPACES {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, api_key(ws).as_bytes());
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        b = b.consumer(&format!("name = \"{ws}\"\napi_keys = [\"sha256:{hex}\"]\nworkspace_id = \"{ws}\""));
    }
    b
}

fn api_key(workspace: &str) -> String {
    format!("key-{workspace}")
}

const BUDGET: &str = r#"
[[token_budgets]]
name = "ws-daily"
routes = ["chat", "mcp"]
daily_tokens = 1000
"#;

fn chat(gw: &Gateway, workspace: &str, stream: bool, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let body = serde_json::json!({
        "model": "llama-3.3-8b-instruct",
        "messages": [{"role": "user", "content": "Hello"}],
        "stream": stream,
    });
    let mut b = req("POST", &gw.url("/v1/chat/completions"), "api.test")
        .header("content-type", "application/json")
        .header("x-api-key", api_key(workspace));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::from(body.to_string())).unwrap()
}

/// A request that costs nothing (no usage in the response): reads the budget headers.
async fn probe(gw: &Gateway, workspace: &str) -> Reply {
    let r = req("GET", &gw.url("/v1/models"), "api.test").header("x-api-key", api_key(workspace));
    send(&client(), r.body(Full::default()).unwrap()).await
}

async fn used_becomes(gw: &Gateway, workspace: &str, used: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = probe(gw, workspace).await;
        if r.header("x-token-budget-used") == Some(&used.to_string()) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "used never became {used}: {:?}", r.headers);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn audit_line(gw: &Gateway, path: &str, n: usize) -> Vec<serde_json::Value> {
    let file = gw.ports.dir.join("audit.log");
    eventually(Duration::from_secs(10), || {
        let lines: Vec<_> = gw.audit_lines(&file).into_iter().filter(|l| l["path"] == path).collect();
        (lines.len() >= n).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no {n} audit lines for {path}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_are_charged_from_json_and_sse_usage() {
    let llm = FakeLlm::start();
    let gw = Gateway::start(|p| config(p, &llm, BUDGET));
    let c = client();

    let r =
        send(&c, chat(&gw, "workspace-123", false, &[("x-fake-tokens", "150"), ("x-fake-tools", "search,calculator")]))
            .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-token-budget-limit"), Some("1000"));
    assert_eq!(r.header("x-token-budget-used"), Some("0"));
    assert_eq!(r.header("x-token-budget-remaining"), Some("1000"));
    assert!(r.json()["usage"]["total_tokens"] == 150, "the body passes through unchanged");
    used_becomes(&gw, "workspace-123", 150).await;

    let r = send(&c, chat(&gw, "workspace-123", true, &[("x-fake-tokens", "200"), ("x-fake-tools", "lookup")])).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-token-budget-used"), Some("150"));
    assert!(String::from_utf8_lossy(&r.body).ends_with("data: [DONE]\n\n"));
    used_becomes(&gw, "workspace-123", 350).await;
    assert_eq!(probe(&gw, "workspace-456").await.header("x-token-budget-used"), Some("0"), "per workspace");

    let lines = audit_line(&gw, "/v1/chat/completions", 2);
    assert_eq!(lines[0]["tokens_used"], 150);
    assert_eq!(lines[0]["model_name"], "llama-3.3-8b-instruct");
    assert_eq!(lines[0]["tools_used"], serde_json::json!(["search", "calculator"]));
    assert_eq!(lines[0]["workspace_id"], "workspace-123");
    assert_eq!(lines[1]["tokens_used"], 200);
    assert_eq!(lines[1]["tools_used"], serde_json::json!(["lookup"]));
    let m = gw.metrics();
    assert_eq!(metric_value(&m, "gateway_token_budget_tokens_total", &[("route", "chat")]), 350.0, "{m}");
    assert!(!m.contains("gateway_token_budget_tokens_total{route=\"chat\",workspace"), "no workspace label by default");
    assert!(
        metric_value(&m, "gateway_ratelimit_decisions_total", &[("layer", "ws-daily"), ("result", "allowed")]) >= 2.0
    );
    assert!(
        metric_value(&m, "gateway_token_budget_uncounted_total", &[("route", "chat"), ("reason", "no_usage")]) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_counted_without_being_buffered() {
    let llm = FakeLlm::start();
    let gw = Gateway::start(|p| config(p, &llm, BUDGET));
    let resp =
        client().request(chat(&gw, "ws-stream", true, &[("x-fake-tokens", "42"), ("x-fake-hold", "1")])).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    // The upstream holds the rest of the stream: the first event still reaches the client.
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame()).await.expect("first event not buffered");
    let first = first.expect("a frame").expect("data").into_data().expect("data frame");
    assert!(String::from_utf8_lossy(&first).contains("Hel"), "{first:?}");
    llm.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("\"total_tokens\":42"));
    used_becomes(&gw, "ws-stream", 42).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mcp_tool_calls_and_the_usage_header_reach_the_audit_log() {
    let llm = FakeLlm::start();
    let budget = format!("{BUDGET}usage_header = \"x-usage-tokens\"\n");
    let gw = Gateway::start(|p| config(p, &llm, &budget));
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search", "arguments": {"q": "rust"}}});
    let r = req("POST", &gw.url("/mcp"), "api.test")
        .header("content-type", "application/json")
        .header("x-api-key", api_key("ws-mcp"))
        .body(Full::from(call.to_string()))
        .unwrap();
    let r = send(&client(), r).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], 7);
    let line = &audit_line(&gw, "/mcp", 1)[0];
    assert_eq!(line["tools_used"], serde_json::json!(["search"]));
    assert_eq!(line["tokens_used"], serde_json::Value::Null);

    // The upstream's header wins over the body's usage.
    let r =
        send(&client(), chat(&gw, "ws-mcp", false, &[("x-fake-tokens", "10"), ("x-fake-usage-header", "33")])).await;
    assert_eq!(r.status, 200);
    used_becomes(&gw, "ws-mcp", 33).await;
}

/// libfaketime, preloaded into the daemon: its wall clock reads the time written in a file
/// (frozen until the file changes), while its monotonic clock (timers, tokio) stays real.
struct FakeWallClock {
    file: tempfile::NamedTempFile,
}

impl FakeWallClock {
    const LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

    fn at(utc: &str) -> FakeWallClock {
        assert!(
            std::path::Path::new(Self::LIBRARY).exists(),
            "{} is missing: `cargo xtask deps` installs Debian's faketime",
            Self::LIBRARY
        );
        let clock = FakeWallClock { file: tempfile::NamedTempFile::new().unwrap() };
        clock.set(utc);
        clock
    }

    /// Moves the daemon's wall clock to `utc` ("YYYY-MM-DD hh:mm:ss").
    fn set(&self, utc: &str) {
        std::fs::write(self.file.path(), format!("{utc}\n")).unwrap();
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", Self::LIBRARY.to_owned()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.path().display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
            ("TZ", "UTC".to_owned()),
        ]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_budget_refuses_until_midnight_in_its_time_zone() {
    let llm = FakeLlm::start();
    let budget = "[[token_budgets]]\nname = \"tiny\"\nroutes = [\"chat\"]\ndaily_tokens = 100\ntimezone = \"+02:00\"\n";
    // 21:59:00 UTC is 23:59:00 in the budget's zone: a minute before its midnight (and two hours
    // and a minute before UTC's, which must not matter). The clock stands still meanwhile, so
    // nothing here races the real one.
    let clock = FakeWallClock::at("2026-12-04 21:59:00");
    let gw = Gateway::start_with_env(|p| config(p, &llm, budget), &clock.env());
    let r = send(&client(), chat(&gw, "ws-tiny", false, &[("x-fake-tokens", "150")])).await;
    assert_eq!(r.status, 200, "the request that crosses the budget is served");
    // Charged: the budget is exhausted until the day rolls over.
    let refused = eventually(Duration::from_secs(5), || {
        let r = futures_block(probe(&gw, "ws-tiny"));
        (r.status == 429).then_some(r)
    })
    .expect("refused once exhausted");
    let body = refused.json();
    assert_eq!(body["error"], "token_budget_exhausted");
    assert!(body["message"].as_str().unwrap().contains("150 of 100 tokens"), "{body}");
    assert_eq!(refused.header("retry-after"), Some("60"), "Retry-After is the time to the zone's midnight");
    assert_eq!(refused.header("x-token-budget-remaining"), Some("0"));
    let reached = llm.requests();
    assert_eq!(futures_block(probe(&gw, "ws-tiny")).status, 429);
    assert_eq!(llm.requests(), reached, "refused requests never reach the upstream");
    // One second before the zone's midnight: still the same day.
    clock.set("2026-12-04 21:59:59");
    assert_eq!(futures_block(probe(&gw, "ws-tiny")).status, 429, "refused until midnight");
    // After the zone's midnight (still the 4th in UTC) the budget is fresh.
    clock.set("2026-12-04 22:00:01");
    let fresh = eventually(Duration::from_secs(10), || {
        let r = futures_block(probe(&gw, "ws-tiny"));
        (r.status == 200).then_some(r)
    })
    .expect("served again after midnight");
    assert_eq!(fresh.header("x-token-budget-used"), Some("0"));
}

/// Runs a future to completion from a synchronous polling closure (inside a multi-thread
/// runtime).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// `on_redis_error = "fail_open"` for a token budget: while Redis is down requests are served
/// (the budget cannot be checked, and is not enforced), counted as errors; back to enforcing,
/// with the counts Redis kept, once it returns.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_budget_failing_open_serves_while_redis_is_down() {
    let llm = FakeLlm::start();
    let mut redis = RedisServer::start();
    let budget = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\n[[token_budgets]]\nname = \"open\"\nroutes = [\"chat\"]\ndaily_tokens = 100\nbackend = \"redis\"\non_redis_error = \"fail_open\"\n",
        redis.url()
    );
    let gw = Gateway::start(|p| config(p, &llm, &budget));
    // Exhausted while Redis is up: refused.
    assert_eq!(send(&client(), chat(&gw, "ws-o", false, &[("x-fake-tokens", "150")])).await.status, 200);
    let refused =
        eventually(Duration::from_secs(5), || (futures_block(probe(&gw, "ws-o")).status == 429).then_some(()));
    assert!(refused.is_some(), "the budget is enforced while Redis answers");
    // Redis down: failing open serves the same exhausted workspace.
    redis.kill();
    let served = eventually(Duration::from_secs(5), || (futures_block(probe(&gw, "ws-o")).status == 200).then_some(()));
    assert!(served.is_some(), "fail_open serves while the budget cannot be checked:\n{}", gw.stderr());
    let reached = llm.requests();
    assert_eq!(send(&client(), chat(&gw, "ws-o", false, &[("x-fake-tokens", "1")])).await.status, 200);
    assert_eq!(llm.requests(), reached + 1, "served requests reach the upstream");
    // Back (an empty Redis: the test server keeps nothing across a kill): checked and enforced
    // again, without a restart of the gateway.
    redis.restart();
    let checked = eventually(Duration::from_secs(10), || {
        let r = futures_block(probe(&gw, "ws-o"));
        (r.status == 200 && r.header("x-token-budget-used").is_some()).then_some(())
    });
    assert!(checked.is_some(), "the budget is checked again once Redis is back:\n{}", gw.stderr());
    assert_eq!(send(&client(), chat(&gw, "ws-o", false, &[("x-fake-tokens", "150")])).await.status, 200);
    let enforced =
        eventually(Duration::from_secs(10), || (futures_block(probe(&gw, "ws-o")).status == 429).then_some(()));
    assert!(enforced.is_some(), "enforcing again once Redis is back:\n{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_budgets_are_shared_and_fail_as_configured() {
    let llm = FakeLlm::start();
    let mut redis = RedisServer::start();
    let budget = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n\n[[token_budgets]]\nname = \"shared\"\nroutes = [\"chat\"]\ndaily_tokens = 500\nbackend = \"redis\"\non_redis_error = \"fail_closed\"\nworkspace_label = true\n",
        redis.url()
    );
    let a = Gateway::start(|p| config(p, &llm, &budget));
    let b = Gateway::start(|p| config(p, &llm, &budget));
    let r = send(&client(), chat(&a, "ws-r", true, &[("x-fake-tokens", "120")])).await;
    assert_eq!(r.status, 200);
    // Charged through one gateway, seen by the other.
    used_becomes(&b, "ws-r", 120).await;
    let m = a.metrics();
    assert_eq!(
        metric_value(&m, "gateway_token_budget_tokens_total", &[("route", "chat"), ("workspace", "ws-r")]),
        120.0,
        "{m}"
    );

    redis.kill();
    let r = eventually(Duration::from_secs(5), || {
        let r = futures_block(probe(&a, "ws-r"));
        (r.status == 503).then_some(r)
    })
    .expect("fails closed");
    assert_eq!(r.json()["error"], "token_budget_unavailable");
    redis.restart();
    let back = eventually(Duration::from_secs(10), || (futures_block(probe(&a, "ws-r")).status == 200).then_some(()));
    assert!(back.is_some(), "recovers without a restart");
}
