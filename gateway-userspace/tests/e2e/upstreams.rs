use std::time::Duration;

use http_body_util::Full;

use super::support::*;

fn service_config(p: &Ports, workers: usize, targets: &[String], extra_service: &str) -> String {
    let targets = targets.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
    ConfigBuilder::new(p)
        .workers(workers)
        .table("[[services]]", &format!("name = \"s\"\ntargets = [{targets}]\n{extra_service}"))
        .route("r", "s", "")
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_a_504() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| service_config(p, 1, &[u.addr.to_string()], "read_timeout = \"300ms\""));
    let r = get(&gw.url("/slow/3000")).await;
    assert_eq!(r.status.as_u16(), 504);
    assert_eq!(r.json()["error"], "read_timeout");
    assert_eq!(gw.metric("gateway_http_requests_total", &[("status", "504")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_target_is_a_502_then_ejected_then_probed_back() {
    let dead_port = DeadPort::new();
    let dead = dead_port.addr;
    let gw = Gateway::start(|p| {
        service_config(p, 1, &[dead.to_string()], "max_fails = 2\nfail_timeout = \"1s\"\nretries = 0")
    });
    let target = dead.to_string();
    for _ in 0..2 {
        let r = get(&gw.url("/x")).await;
        assert_eq!(r.status.as_u16(), 502);
        assert_eq!(r.json()["error"], "connect_refused");
    }
    assert_eq!(gw.series("gateway_upstream_target_up", &[("target", &target)]), 0.0);
    let r = get(&gw.url("/x")).await;
    assert_eq!(r.status.as_u16(), 503, "an ejected target is not tried");
    assert_eq!(r.json()["error"], "no_healthy_upstream");

    // The target comes back; after the cool-down one probe succeeds and it is back in service.
    let u = dead_port.revive("back");
    let back = eventually(Duration::from_secs(5), || {
        let rt = tokio::runtime::Handle::current();
        let r = tokio::task::block_in_place(|| rt.block_on(get(&gw.url("/x"))));
        (r.status.as_u16() == 200).then_some(())
    });
    assert!(back.is_some(), "target never came back");
    assert_eq!(gw.metric("gateway_upstream_target_up", &[("target", &target)]), 1.0);
    assert!(u.requests() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_failures_are_retried_for_idempotent_methods_only() {
    let dead_port = DeadPort::new();
    let dead = dead_port.addr;
    let live = Upstream::start("live");
    let gw = Gateway::start(|p| {
        service_config(p, 1, &[dead.to_string(), live.addr.to_string()], "max_fails = 1000\nretries = 1")
    });
    let c = client();
    for _ in 0..6 {
        let r = send(&c, req("GET", &gw.url("/g"), "h").body(Full::default()).unwrap()).await;
        assert_eq!(r.status.as_u16(), 200, "GET must be retried on the live target");
    }
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(send(&c, req("POST", &gw.url("/p"), "h").body(Full::from("x")).unwrap()).await.status.as_u16());
    }
    assert!(statuses.contains(&502), "POST must not be retried: {statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn least_conn_avoids_the_busy_target() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let gw = Gateway::start(|p| service_config(p, 2, &[a.addr.to_string(), b.addr.to_string()], "lb = \"least_conn\""));
    let slow_url = gw.url("/slow/2500");
    let slow = tokio::spawn(async move { get(&slow_url).await });
    let busy = eventually(Duration::from_secs(3), || {
        if a.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            Some("a")
        } else if b.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1 {
            Some("b")
        } else {
            None
        }
    })
    .expect("slow request never reached an upstream");
    let c = client();
    for _ in 0..6 {
        let r = send(&c, req("GET", &gw.url("/fast"), "h").body(Full::default()).unwrap()).await;
        assert_ne!(r.json()["upstream"], busy, "least_conn sent a request to the busy target");
    }
    assert_eq!(slow.await.unwrap().status.as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_kept_alive_and_reused() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| service_config(p, 1, &[u.addr.to_string()], ""));
    // One client connection, used sequentially.
    let stream = tokio::net::TcpStream::connect(gw.ports.listen).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    for i in 0..50 {
        let req = req("GET", &format!("/k/{i}"), "h").body(Full::<bytes::Bytes>::default()).unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    }
    assert_eq!(u.requests(), 50);
    assert_eq!(u.connections(), 1, "sequential requests should reuse one upstream connection");
    assert_eq!(gw.metric("gateway_connections_total", &[]), 1.0, "the client connection was kept alive");
}
