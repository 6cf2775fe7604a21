use std::{os::unix::fs::OpenOptionsExt, time::Duration};

use http_body_util::Full;
use nix::sys::signal::Signal;

use super::support::*;

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p)
        .table("[audit]", &format!("path = \"{}\"", p.dir.join("audit.log").display()))
        .service("s", &[u.addr])
        .route("r", "s", "paths = [\"/api\"]\nstrip_path = true")
        .build()
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
    assert_eq!(gw.series("gateway_audit_dropped_total", &[]), 0.0);
    // The file holds client addresses and identities: owner and group only, new files too.
    for file in [&path, &rotated] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o640, "{} has mode {:o}", file.display(), mode & 0o777);
    }
}

/// A writer that cannot keep up (here: the audit "file" is a pipe nobody reads) never slows a
/// request: lines beyond the queue are dropped and counted, and every request is either in the
/// log or in the drop counter.
#[tokio::test(flavor = "multi_thread")]
async fn audit_lines_beyond_a_full_queue_are_dropped_and_counted_not_waited_for() {
    let u = Upstream::start("u");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audit.pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Opened for reading (so the daemon's open for writing does not wait) and not read until the end.
    let reader = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
    let gw = Gateway::start(|p| {
        config(p, &u).replace(
            &format!("path = \"{}\"", p.dir.join("audit.log").display()),
            &format!("path = \"{}\"\nqueue_size = 8", fifo.display()),
        )
    });
    let c = client();
    // A pipe holds 64 KiB: a few hundred lines fill it, then the queue of 8, then lines drop.
    const REQUESTS: usize = 600;
    for i in 0..REQUESTS {
        let r = send(&c, req("GET", &gw.url(&format!("/api/{i}")), "h").body(Full::default()).unwrap()).await;
        assert_eq!(r.status.as_u16(), 200, "request {i} suffered from the stuck audit writer");
    }
    assert_eq!(u.requests(), REQUESTS);
    let dropped = eventually(Duration::from_secs(5), || {
        let d = gw.metric("gateway_audit_dropped_total", &[]);
        (d > 0.0).then_some(d)
    })
    .expect("no audit line was counted as dropped");
    // Now read what was written: written + dropped = every request (nothing vanished uncounted).
    let mut reader = reader;
    let mut written = String::new();
    let counted = eventually(Duration::from_secs(10), || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = std::io::Read::read(&mut reader, &mut buf) {
            if n == 0 {
                break;
            }
            written.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let lines = written.matches('\n').count();
        let dropped = gw.metric("gateway_audit_dropped_total", &[]);
        (lines as f64 + dropped == REQUESTS as f64).then_some((lines, dropped))
    });
    assert!(counted.is_some(), "written {} + dropped {} != {REQUESTS}", written.lines().count(), dropped);
}
