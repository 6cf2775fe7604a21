use http_body_util::Full;

use super::support::*;

fn config(p: &Ports, u: &Upstream, trusted: &str) -> String {
    ConfigBuilder::new(p)
        .server(&format!("trusted_proxies = [{trusted}]"))
        .service("s", &[u.addr])
        .route("r", "s", "")
        .route("keep-host", "s", "paths = [\"/keep\"]\npreserve_host = true")
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_headers_from_untrusted_clients_are_replaced() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u, ""));
    let r = send(
        &client(),
        req("GET", &gw.url("/x"), "api.example.com")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "for=6.6.6.6")
            .header("connection", "x-drop-me")
            .header("x-drop-me", "1")
            .header("x-request-id", "client-id-1")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "api.example.com");
    assert_eq!(h["forwarded"][0], "for=127.0.0.1;proto=http;host=\"api.example.com\"");
    assert!(h.get("x-drop-me").is_none(), "hop-by-hop header named in Connection was forwarded");
    assert_eq!(h["x-request-id"][0], "client-id-1");
    assert_eq!(h["host"][0], u.addr.to_string(), "upstream Host is the target unless preserve_host");
    // response side: request id echoed, hop-by-hop stripped, latency headers added
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert!(r.header("x-upstream-private").is_none());
    assert!(r.header("connection").is_none_or(|v| !v.contains("x-upstream-private")));
    assert!(r.header("x-gateway-upstream-latency").unwrap().parse::<u64>().is_ok());
    assert!(r.header("x-gateway-proxy-latency").unwrap().parse::<u64>().is_ok());
    let timing = r.header("server-timing").unwrap();
    assert!(timing.contains("upstream;dur=") && timing.contains("gateway;dur="), "{timing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_are_extended_and_host_can_be_preserved() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u, "\"127.0.0.0/8\""));
    let r = send(
        &client(),
        req("GET", &gw.url("/keep/it"), "shop.example.com")
            .header("x-forwarded-for", "198.51.100.7")
            .header("x-forwarded-proto", "https")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"][0], "198.51.100.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["host"][0], "shop.example.com");
    // a generated request id is a UUID
    let id = h["x-request-id"][0].as_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_host_keeps_the_port_and_the_port_is_forwarded() {
    let u = Upstream::start("u");
    let forged = |b: http::request::Builder| {
        b.header("x-forwarded-port", "1").header("x-forwarded-host", "forged.example").body(Full::default()).unwrap()
    };
    // From a client: the gateway's own view, with the port the client named and the one it used.
    let gw = Gateway::start(|p| config(p, &u, ""));
    let r = send(&client(), forged(req("GET", &gw.url("/x"), "api.example.com:8443"))).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-host"][0], "api.example.com:8443");
    assert_eq!(h["x-forwarded-port"][0], gw.ports.listen.port().to_string());
    assert_eq!(h["forwarded"][0], "for=127.0.0.1;proto=http;host=\"api.example.com:8443\"");
    // From a trusted proxy: its X-Forwarded-Host and -Port are kept, like -Proto.
    let gw = Gateway::start(|p| config(p, &u, "\"127.0.0.0/8\""));
    let r = send(&client(), forged(req("GET", &gw.url("/x"), "api.example.com:8443"))).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-host"][0], "forged.example");
    assert_eq!(h["x-forwarded-port"][0], "1");
}
