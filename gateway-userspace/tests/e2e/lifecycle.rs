use std::{net::TcpStream, time::Duration};

use http_body_util::Full;
use nix::sys::signal::Signal;

use super::support::*;

/// One service and the `/one` route (its prefix stripped).
fn config<'p>(p: &'p Ports, workers: usize, u: &Upstream) -> ConfigBuilder<'p> {
    ConfigBuilder::new(p).workers(workers).service("s", &[u.addr]).route(
        "one",
        "s",
        "paths = [\"/one\"]\nstrip_path = true",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_good_config_and_keeps_running_on_bad() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, 2, &u).build());
    assert_eq!(get(&gw.url("/two")).await.status.as_u16(), 404);

    let with_two = || config(&gw.ports, 2, &u).route("two", "s", "paths = [\"/two\"]");
    let good = with_two().build();
    assert!(gw.reload(&good), "good reload refused:\n{}", gw.stderr());
    assert_eq!(get(&gw.url("/two")).await.status.as_u16(), 200);

    let bad = good.replace("paths = [\"/two\"]", "paths = [\"two\"]");
    assert!(!gw.reload(&bad), "bad config was accepted");
    assert_eq!(get(&gw.url("/two")).await.status.as_u16(), 200, "the old config keeps serving");
    assert_eq!(gw.metric("gateway_config_reloads_total", &[("result", "error")]), 1.0);
    assert!(gw.stderr().contains("routes[1].paths[0]"), "the reason is logged:\n{}", gw.stderr());

    // A listener added by reload is bound by every worker; the old one keeps working.
    let extra = free_port();
    let more = with_two().table("[[listeners]]", &format!("name = \"extra\"\nbind = \"{extra}\"")).build();
    assert!(gw.reload(&more), "{}", gw.stderr());
    assert_eq!(get(&format!("http://{extra}/two")).await.status.as_u16(), 200);
    assert_eq!(get(&gw.url("/one")).await.status.as_u16(), 200);
    // ...and removing it closes it.
    assert!(gw.reload(&good));
    assert!(eventually(Duration::from_secs(3), || TcpStream::connect(extra).is_err().then_some(())).is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let u = Upstream::start("u");
    let mut gw = Gateway::start(|p| config(p, 2, &u).build());
    let url = gw.url("/one/slow/1500");
    let in_flight = tokio::spawn(async move { get(&url).await });
    assert!(
        eventually(Duration::from_secs(3), || (u.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1)
            .then_some(()))
        .is_some()
    );
    gw.signal(Signal::SIGTERM);
    // New connections are refused once the listeners are closed.
    let listen = gw.ports.listen;
    assert!(eventually(Duration::from_secs(2), || TcpStream::connect(listen).is_err().then_some(())).is_some());
    let r = in_flight.await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "the in-flight request completed during the drain");
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// The same over HTTP/2: streams run inside their connection's task (`listener/conn/h2_exec.rs`),
/// and the drain's graceful shutdown (GOAWAY) must let every stream of the connection finish.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_h2_streams_of_one_connection() {
    let u = Upstream::start("u");
    let mut gw = Gateway::start(|p| config(p, 1, &u).build());
    let c = h2c_client();
    // One request first, so that the connection exists before the two streams start: two
    // requests racing an unconnected HTTP/2-only client can each open a connection.
    assert_eq!(send(&c, http::Request::get(gw.url("/one")).body(Full::default()).unwrap()).await.status.as_u16(), 200);
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let (c, url) = (c.clone(), gw.url("/one/slow/1500"));
            tokio::spawn(async move { send(&c, http::Request::get(url).body(Full::default()).unwrap()).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(3), || (u.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 2)
            .then_some(()))
        .is_some()
    );
    assert_eq!(gw.series("gateway_connections_total", &[]), 1.0, "both streams share one connection");
    gw.signal(Signal::SIGTERM);
    for stream in streams {
        let r = stream.await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "an in-flight stream completed during the drain");
    }
    let status = tokio::task::spawn_blocking(move || gw.wait_exit(Duration::from_secs(10))).await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_spread_over_several_workers() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, 4, &u).build());
    for _ in 0..40 {
        // A fresh client per request: a fresh connection, so the kernel picks a socket each time.
        let r = send(&client(), http::Request::get(gw.url("/one")).body(Full::default()).unwrap()).await;
        assert_eq!(r.status.as_u16(), 200);
    }
    let m = gw.metrics();
    let busy = (0..4)
        .filter(|w| metric_value(&m, "gateway_worker_connections_total", &[("worker", &w.to_string())]) > 0.0)
        .count();
    assert!(busy > 1, "all connections landed on one worker:\n{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_socket_reports_status_and_reloads() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, 1, &u).admin_socket(&p.dir.join("admin.sock")).build());
    let socket = gw.ports.dir.join("admin.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the admin socket is private");
    let run =
        |args: &[&str]| std::process::Command::new(BIN).arg("--admin-socket").arg(&socket).args(args).output().unwrap();
    let out = run(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["ready"], true);

    let with_two = std::fs::read_to_string(&gw.config_path).unwrap()
        + "[[routes]]\nname = \"two\"\nservice = \"s\"\npaths = [\"/two\"]\n";
    std::fs::write(&gw.config_path, &with_two).unwrap();
    let out = run(&["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&gw.url("/two")).await.status.as_u16(), 200);

    std::fs::write(&gw.config_path, with_two.replace("[\"/two\"]", "[\"two\"]")).unwrap();
    let out = run(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "a refused reload is an error for the CLI");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("routes[1].paths[0]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sd_notify protocol as systemd sees it (Type=notify): READY=1 once listening, RELOADING=1
/// then READY=1 around a reload, WATCHDOG=1 pings, STOPPING=1 on SIGTERM.
#[test]
fn speaks_sd_notify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let u = Upstream::start("u");
    let env = [("NOTIFY_SOCKET", path.display().to_string()), ("WATCHDOG_USEC", "400000".to_owned())];
    let mut gw = Gateway::start_with_env(|p| config(p, 1, &u).build(), &env);
    let mut seen = String::new();
    let wait_for = |needle: &str, seen: &mut String| {
        let mut buf = [0u8; 4096];
        while !seen.contains(needle) {
            let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no {needle} (got {seen:?}): {e}"));
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    };
    wait_for("READY=1", &mut seen);
    wait_for("WATCHDOG=1", &mut seen);
    seen.clear();
    gw.signal(Signal::SIGHUP);
    wait_for("RELOADING=1", &mut seen);
    assert!(seen.contains("MONOTONIC_USEC="), "{seen}");
    wait_for("READY=1", &mut seen);
    gw.signal(Signal::SIGTERM);
    wait_for("STOPPING=1", &mut seen);
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
}
