use std::time::Duration;

use http_body_util::Full;
use nix::sys::signal::Signal;

use super::support::*;

fn config(p: &Ports, u: &Upstream) -> String {
    basic_config(
        p,
        1,
        &format!(
            "[audit]\npath = \"{}\"\n\n[[services]]\nname = \"s\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/api\"]\nstrip_path = true\n",
            p.dir.join("audit.log").display(),
            u.addr
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_and_latencies() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            send(&c, req("GET", &gw.url("/api/x"), "h").body(Full::default()).unwrap()).await.status.as_u16(),
            200
        );
    }
    send(&c, req("POST", &gw.url("/api/status/503"), "h").body(Full::from("{}")).unwrap()).await;
    let m = gw.metrics();
    let labels = [("route", "r"), ("service", "s"), ("method", "GET"), ("status", "200")];
    assert_eq!(metric_value(&m, "gateway_http_requests_total", &labels), 3.0, "{m}");
    assert_eq!(metric_value(&m, "gateway_http_requests_total", &[("method", "POST"), ("status", "503")]), 1.0);
    assert_eq!(metric_value(&m, "gateway_request_duration_seconds_count", &[("route", "r")]), 4.0);
    assert_eq!(metric_value(&m, "gateway_upstream_duration_seconds_count", &[("route", "r")]), 4.0);
    assert_eq!(metric_value(&m, "gateway_proxy_overhead_seconds_count", &[("route", "r")]), 4.0);
    assert_eq!(metric_value(&m, "gateway_request_duration_seconds_bucket", &[("route", "r"), ("le", "+Inf")]), 4.0);
    assert_eq!(metric_value(&m, "gateway_upstream_target_up", &[("service", "s")]), 1.0);
    // The client pool may hold a second connection it opened while the first was returned to it.
    let active = metric_value(&m, "gateway_connections_active", &[("listener", "public")]);
    assert!((1.0..=2.0).contains(&active), "{m}");
    // host metrics from the real /proc
    assert!(m.contains("gateway_cpu_seconds_total{"), "no host CPU metrics:\n{m}");
    assert!(m.contains("gateway_worker_cpu_seconds_total{"), "no worker CPU metrics:\n{m}");
    let health = raw_get(gw.ports.metrics, "/healthz").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lines_carry_the_seed_fields_and_reopen_on_sigusr1() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    let path = gw.ports.dir.join("audit.log");
    let r = send(
        &client(),
        req("POST", &gw.url("/api/chat?x=1"), "h")
            .header("user-agent", "curl/7.68.0")
            .header("x-request-id", "rid-1")
            .body(Full::from("hello"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    get(&gw.url("/missing")).await;
    let lines = eventually(Duration::from_secs(5), || {
        let l = gw.audit_lines(&path);
        (l.len() >= 2).then_some(l)
    })
    .expect("audit lines not written");
    let a = &lines[0];
    for field in [
        "timestamp",
        "request_id",
        "user_id",
        "workspace_id",
        "method",
        "path",
        "status_code",
        "latency_ms",
        "tokens_used",
        "model_name",
        "tools_used",
        "ip_address",
        "user_agent",
        "route",
        "service",
        "upstream_latency_ms",
        "gateway_latency_ms",
        "bytes_received",
        "bytes_sent",
    ] {
        assert!(a.get(field).is_some(), "audit line lacks {field}: {a}");
    }
    assert_eq!(a["request_id"], "rid-1");
    assert_eq!(a["method"], "POST");
    assert_eq!(a["path"], "/api/chat");
    assert_eq!(a["status_code"], 200);
    assert_eq!(a["ip_address"], "127.0.0.1");
    assert_eq!(a["user_agent"], "curl/7.68.0");
    assert_eq!(a["route"], "r");
    assert_eq!(a["service"], "s");
    assert_eq!(a["upstream"], u.addr.to_string());
    assert_eq!(a["bytes_received"], 5);
    assert!(a["bytes_sent"].as_u64().unwrap() > 0);
    assert!(a["tools_used"].as_array().unwrap().is_empty());
    assert_eq!(lines[1]["status_code"], 404);
    assert_eq!(lines[1]["error"], "no_route");

    // logrotate: move the file away, SIGUSR1, and new lines go to a fresh file.
    let rotated = gw.ports.dir.join("audit.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    gw.signal(Signal::SIGUSR1);
    let reopened = eventually(Duration::from_secs(5), || {
        let rt = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| rt.block_on(get(&gw.url("/api/after-rotate"))));
        gw.audit_lines(&path).iter().any(|l| l["path"] == "/api/after-rotate").then_some(())
    });
    assert!(reopened.is_some(), "audit log was not reopened");
    assert!(gw.audit_lines(&rotated).len() >= 2);
    assert_eq!(gw.metric("gateway_audit_dropped_total", &[]), 0.0);
}
