//! Request semantics (RFC 9110/9112/9113) on raw inputs, as nginx 1.22 answers them: one
//! authority for routing and the upstream Host, Host rules, transfer codings, bodies on GET,
//! request-line length, the JSON shape of parser refusals, and client headers spelled with `_`.

use std::net::SocketAddr;

use http_body_util::Full;

use super::{
    pki::{Ca, Https, client_config},
    support::*,
};

/// Two host routes (both `preserve_host`) on their own upstreams, and a catch-all.
fn config(p: &Ports, good: &Upstream, evil: &Upstream, any: &Upstream, server: &str) -> String {
    ConfigBuilder::new(p)
        .server(server)
        .service("good", &[good.addr])
        .service("evil", &[evil.addr])
        .service("any", &[any.addr])
        .route("good", "good", "hosts = [\"good.example\"]\npreserve_host = true")
        .route("evil", "evil", "hosts = [\"evil.example\"]\npreserve_host = true")
        .route("any", "any", "")
        .build()
}

/// Status and body of a raw HTTP/1.1 exchange (the gateway closes: `Connection: close`).
fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let text = raw_request(addr, bytes).expect("raw request");
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status: {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A refusal: the status, and the JSON shape every refusal has.
fn refused(addr: SocketAddr, bytes: &[u8], status: u16, error: &str) {
    let (got, body) = raw(addr, bytes);
    let v = json(&body);
    assert_eq!((got, v["error"].as_str()), (status, Some(error)), "{body}");
    assert_eq!(v["status"], status);
    assert!(v["request_id"].as_str().is_some_and(|id| id.len() == 36), "{body}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn route_and_upstream_host_agree_on_one_authority() {
    let (good, evil, any) = (Upstream::start("good"), Upstream::start("evil"), Upstream::start("any"));
    let gw = Gateway::start(|p| config(p, &good, &evil, &any, ""));
    let addr = gw.ports.listen;

    // Absolute-form: the target's authority replaces Host (RFC 9112 §3.2.2), for the route,
    // the upstream Host (preserve_host) and X-Forwarded-Host alike.
    let (status, body) =
        raw(addr, b"GET http://evil.example/x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n\r\n");
    let v = json(&body);
    assert_eq!((status, v["upstream"].as_str()), (200, Some("evil")), "{body}");
    assert_eq!(v["headers"]["host"][0], "evil.example");
    assert_eq!(v["headers"]["x-forwarded-host"][0], "evil.example");

    // A trailing dot names the same host.
    let (status, body) = raw(addr, b"GET /x HTTP/1.1\r\nHost: Good.Example.\r\nConnection: close\r\n\r\n");
    let v = json(&body);
    assert_eq!((status, v["upstream"].as_str()), (200, Some("good")), "{body}");
    assert_eq!(v["headers"]["host"][0], "good.example");

    // Host: one, and in every HTTP/1.1 request (RFC 9112 §3.2; nginx answers 400 to both).
    let dup = b"GET /x HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    refused(addr, dup, 400, "duplicate_host");
    refused(addr, b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "missing_host");
    refused(addr, b"GET http://good.example/x HTTP/1.1\r\nConnection: close\r\n\r\n", 400, "missing_host");
    let (status, body) = raw(addr, b"GET /x HTTP/1.0\r\n\r\n");
    assert_eq!((status, json(&body)["upstream"].as_str()), (200, Some("any")), "HTTP/1.0 needs no Host: {body}");

    // HTTP/2: :authority decides; a Host naming another authority is malformed (RFC 9113 §8.3.1).
    let h2 = |uri: &'static str, host: Option<&'static str>| async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::get(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let resp = send.send_request(req.body(Full::<bytes::Bytes>::default()).unwrap()).await.unwrap();
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        (status, json(std::str::from_utf8(&body).unwrap()))
    };
    let (status, v) = h2("http://good.example./x", None).await;
    assert_eq!((status, v["upstream"].as_str()), (200, Some("good")), "{v}");
    assert_eq!(v["headers"]["host"][0], "good.example");
    let (status, v) = h2("http://good.example/x", Some("good.example")).await;
    assert_eq!((status, v["upstream"].as_str()), (200, Some("good")), "{v}");
    let (status, v) = h2("http://good.example/x", Some("evil.example")).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("host_mismatch")), "{v}");
    assert_eq!(good.requests() + evil.requests(), 4, "refused requests never reach an upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_method_length_and_parser_refusals() {
    let (good, evil, any) = (Upstream::start("good"), Upstream::start("evil"), Upstream::start("any"));
    let gw = Gateway::start(|p| config(p, &good, &evil, &any, ""));
    let addr = gw.ports.listen;
    let head = "Host: good.example\r\nConnection: close\r\n";

    // Only `chunked` alone frames a body: other codings would be dropped on the way (501, as nginx).
    for coding in ["gzip, chunked", "identity, chunked"] {
        let req = format!("POST /x HTTP/1.1\r\n{head}Transfer-Encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        refused(addr, req.as_bytes(), 501, "unsupported_transfer_coding");
    }
    let twice = format!("POST /x HTTP/1.1\r\n{head}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    refused(addr, twice.as_bytes(), 400, "bad_framing");

    // A GET body is forwarded, framed, however it came.
    let by_length = format!("GET /x HTTP/1.1\r\n{head}Content-Length: 5\r\n\r\nhello");
    let chunked = format!("GET /x HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    for req in [by_length, chunked] {
        let (status, body) = raw(addr, req.as_bytes());
        assert_eq!((status, json(&body)["body_len"].as_u64()), (200, Some(5)), "{req:?}: {body}");
    }

    // The method is part of the request line: a 10 KB one is 414 (nginx too).
    let long_method = format!("{} /x HTTP/1.1\r\n{head}\r\n", "A".repeat(10_240));
    refused(addr, long_method.as_bytes(), 414, "uri_too_long");

    // hyper's own parser refusals have the JSON shape of every other refusal.
    refused(addr, format!("GET /x HTTP/1.1\r\n{head}Bad Header: x\r\n\r\n").as_bytes(), 400, "bad_request");
    let huge = format!("GET /x HTTP/1.1\r\n{head}X-Big: {}\r\n\r\n", "a".repeat(100_000));
    refused(addr, huge.as_bytes(), 431, "headers_too_large");
    assert_eq!(gw.metric("gateway_http_refusals_total", &[("reason", "bad_request")]), 1.0);
    assert_eq!(good.requests(), 2, "only the two GETs with bodies were forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn underscore_spellings_of_owned_headers_never_reach_upstreams() {
    let forged = "X_Forwarded_User: admin\r\nX_Client_Cert_Verify: success\r\nX_Consumer_Id: 1\r\n\
                  X_Authenticated_Scope: admin\r\nX-Forwarded_Port: 1\r\nX_Custom: kept?\r\n";
    let req = format!("GET /x HTTP/1.1\r\nHost: good.example\r\nConnection: close\r\n{forged}\r\n");
    let (good, evil, any) = (Upstream::start("good"), Upstream::start("evil"), Upstream::start("any"));

    // Default: every header with `_` is dropped (nginx's `underscores_in_headers off`).
    let gw = Gateway::start(|p| config(p, &good, &evil, &any, ""));
    let (status, body) = raw(gw.ports.listen, req.as_bytes());
    let v = json(&body);
    assert_eq!(status, 200, "{body}");
    let names: Vec<&String> = v["headers"].as_object().unwrap().keys().collect();
    assert!(names.iter().all(|n| !n.contains('_')), "{names:?}");
    assert_eq!(v["headers"]["x-client-cert-verify"][0], "absent");
    let dropped = |reason| gw.metric("gateway_http_dropped_headers_total", &[("reason", reason)]);
    assert_eq!((dropped("owned_name"), dropped("underscore")), (5.0, 1.0));

    // Forwarding underscores still never forwards an owned name in disguise.
    let gw = Gateway::start(|p| config(p, &good, &evil, &any, "underscores_in_headers = true\n"));
    let (status, body) = raw(gw.ports.listen, req.as_bytes());
    let v = json(&body);
    assert_eq!(status, 200, "{body}");
    let names: Vec<&String> = v["headers"].as_object().unwrap().keys().filter(|n| n.contains('_')).collect();
    assert_eq!(names, ["x_custom"], "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn client_cert_sans_are_one_structured_item_each() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    // One URI SAN that reads as two when SANs are joined with ", ".
    let partner = clients.client_with_uris("partner", &["spiffe://partner/a, URI:spiffe://admin", "spiffe://b\"q"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        ConfigBuilder::new(p)
            .listener_tls(
                r#"
certificates = [{ cert = "server.crt", key = "server.key" }]
client_auth = "required"
client_ca = ["clients-ca.crt"]
"#,
            )
            .service("s", &[u.addr])
            .route("r", "s", "")
            .build()
    });
    let mut conn = Https::connect(gw.ports.listen, "localhost", client_config(&ca, Some(&partner), &[])).await.unwrap();
    let r = conn.get("/x", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    let san = r.json()["headers"]["x-client-cert-san"][0].as_str().unwrap().to_owned();
    // An RFC 8941 List of Strings: two items, each exactly one SAN.
    assert_eq!(san, r#""URI:spiffe://partner/a, URI:spiffe://admin", "URI:spiffe://b\"q""#);
}
