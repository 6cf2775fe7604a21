use std::time::Duration;

use http_body_util::Full;

use super::support::*;

fn config(p: &Ports, a: &Upstream, b: &Upstream) -> String {
    ConfigBuilder::new(p)
        .service("a", &[a.addr])
        .service("b", &[b.addr])
        .route("catch-all", "a", "")
        .route(
            "wild",
            "b",
            r#"hosts = ["*.example.org"]
paths = ["/api"]"#,
        )
        .route(
            "exact",
            "a",
            r#"hosts = ["api.example.org"]
paths = ["/api"]"#,
        )
        .route(
            "api-v2",
            "b",
            r#"paths = ["/api/v2"]
strip_path = true"#,
        )
        .route("api-any", "a", r#"paths = ["/api"]"#)
        .route(
            "api-post",
            "b",
            r#"paths = ["/api"]
methods = ["POST"]"#,
        )
        .route(
            "canary",
            "b",
            r#"paths = ["/api"]
headers = { "x-canary" = ["yes"] }"#,
        )
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_priority_and_strips_paths() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let gw = Gateway::start(|p| config(p, &a, &b));
    let c = client();
    // Which route served a request: the one whose request counter moved (the upstream's name
    // alone cannot tell routes of one service apart).
    const ROUTES: [&str; 7] = ["catch-all", "wild", "exact", "api-v2", "api-any", "api-post", "canary"];
    let counts = || {
        let m = gw.metrics();
        ROUTES.map(|r| metric_value(&m, "gateway_http_requests_total", &[("route", r)]))
    };
    let routed = async |method: &str, path: &str, host: &str, header: Option<(&str, &str)>| {
        let before = counts();
        let mut builder = req(method, &gw.url(path), host);
        if let Some((k, v)) = header {
            builder = builder.header(k, v);
        }
        let r = send(&c, builder.body(Full::default()).unwrap()).await;
        assert_eq!(r.status.as_u16(), 200);
        let after = eventually(Duration::from_secs(5), || {
            let after = counts();
            (after.iter().sum::<f64>() > before.iter().sum::<f64>()).then_some(after)
        })
        .expect("request counted");
        let moved: Vec<&str> =
            ROUTES.iter().zip(before.iter().zip(after)).filter(|(_, (b, a))| a > *b).map(|(r, _)| *r).collect();
        assert_eq!(moved.len(), 1, "{moved:?}");
        (moved[0], r)
    };

    // Each step below has candidates that the rule it names, and only that rule, separates.
    // Host: an exact host beats a wildcard (same prefix /api) ...
    assert_eq!(routed("GET", "/api/x", "api.example.org", None).await.0, "exact");
    // ... and a wildcard host beats no host constraint (wild vs api-any, same prefix /api) ...
    assert_eq!(routed("GET", "/api/x", "www.example.org", None).await.0, "wild");
    // ... even against a longer path without one: host is decided first (wild /api vs api-v2 /api/v2).
    assert_eq!(routed("GET", "/api/v2/items", "www.example.org", None).await.0, "wild");
    // Path: among routes without hosts, the longest prefix wins (api-v2 vs api-any), and
    // strip_path removes it.
    let (route, r) = routed("GET", "/api/v2/items?id=7", "other.net", None).await;
    assert_eq!(route, "api-v2");
    assert_eq!(r.json()["path"], "/items");
    assert_eq!(r.json()["query"], "id=7");
    // Method: at an equal prefix, a method condition beats none (api-post vs api-any, both /api).
    assert_eq!(routed("POST", "/api/x", "other.net", None).await.0, "api-post");
    // Headers: at an equal prefix, a header condition beats a method condition (canary vs api-post).
    assert_eq!(routed("POST", "/api/x", "other.net", Some(("x-canary", "yes"))).await.0, "canary");
    // No condition of theirs met: the route with the prefix and no conditions, path untouched.
    let (route, r) = routed("GET", "/api/x", "other.net", None).await;
    assert_eq!(route, "api-any");
    assert_eq!(r.json()["path"], "/api/x");
    // `/apix` is not under `/api`: only the catch-all matches.
    assert_eq!(routed("GET", "/apix", "www.example.org", None).await.0, "catch-all");
    // dot segments are resolved before routing
    let raw =
        raw_request(gw.ports.listen, b"GET /api/v2/../v2/z HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
    assert!(raw.contains("\"path\":\"/z\""), "{raw}");
    let m = gw.metrics();
    assert!(
        metric_value(&m, "gateway_http_requests_total", &[("route", "exact"), ("service", "a"), ("status", "200")])
            >= 1.0
    );
    assert!(metric_value(&m, "gateway_http_requests_total", &[("route", "canary"), ("method", "POST")]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_route_is_a_json_404() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| {
        ConfigBuilder::new(p).service("s", &[u.addr]).route("r", "s", r#"paths = ["/only"]"#).build()
    });
    let r = get(&gw.url("/elsewhere")).await;
    assert_eq!(r.status.as_u16(), 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], "no_route");
    assert_eq!(v["request_id"].as_str(), r.header("x-request-id"));
    assert_eq!(u.requests(), 0);
    assert_eq!(gw.metric("gateway_http_refusals_total", &[("reason", "no_route")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_prior_knowledge_is_served() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| ConfigBuilder::new(p).service("s", &[u.addr]).route("r", "s", "").build());
    let c = h2c_client();
    let mut handles = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        let url = gw.url(&format!("/h2/{i}"));
        handles
            .push(tokio::spawn(async move { send(&c, http::Request::get(url).body(Full::default()).unwrap()).await }));
    }
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status.as_u16(), 200);
        // The upstream hop is HTTP/1.1 regardless of the client's version.
        assert_eq!(r.json()["version"], "HTTP/1.1");
    }
}
