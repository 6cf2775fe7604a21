use http_body_util::Full;

use super::support::*;

fn config(p: &Ports, a: &Upstream, b: &Upstream) -> String {
    basic_config(
        p,
        1,
        &format!(
            r#"
[[services]]
name = "a"
targets = ["{a}"]

[[services]]
name = "b"
targets = ["{b}"]

[[routes]]
name = "catch-all"
service = "a"

[[routes]]
name = "wild"
service = "b"
hosts = ["*.example.org"]
paths = ["/api"]

[[routes]]
name = "exact"
service = "a"
hosts = ["api.example.org"]
paths = ["/api"]

[[routes]]
name = "api-v2"
service = "b"
paths = ["/api/v2"]
strip_path = true

[[routes]]
name = "api-post"
service = "b"
paths = ["/api"]
methods = ["POST"]

[[routes]]
name = "canary"
service = "b"
paths = ["/api"]
headers = {{ "x-canary" = ["yes"] }}
"#,
            a = a.addr,
            b = b.addr
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_priority_and_strips_paths() {
    let (a, b) = (Upstream::start("a"), Upstream::start("b"));
    let gw = Gateway::start(|p| config(p, &a, &b));
    let c = client();
    let route = |r: &Reply| r.json()["upstream"].as_str().unwrap_or_default().to_owned();

    // exact host beats wildcard beats any host
    let r = send(&c, req("GET", &gw.url("/api/x"), "api.example.org").body(Full::default()).unwrap()).await;
    assert_eq!((r.status.as_u16(), route(&r)), (200, "a".into()));
    let r = send(&c, req("GET", &gw.url("/api/x"), "www.example.org").body(Full::default()).unwrap()).await;
    assert_eq!(route(&r), "b");
    // longest prefix wins, and strip_path removes it
    let r = send(&c, req("GET", &gw.url("/api/v2/items?id=7"), "other.net").body(Full::default()).unwrap()).await;
    assert_eq!(route(&r), "b");
    assert_eq!(r.json()["path"], "/items");
    assert_eq!(r.json()["query"], "id=7");
    // a method condition beats none at equal prefix
    let r = send(&c, req("POST", &gw.url("/api/x"), "other.net").body(Full::default()).unwrap()).await;
    assert_eq!(route(&r), "b");
    // a header condition beats a method condition
    let r =
        send(&c, req("POST", &gw.url("/api/x"), "other.net").header("x-canary", "yes").body(Full::default()).unwrap())
            .await;
    assert_eq!(route(&r), "b");
    // everything else falls to the catch-all, path untouched
    let r = send(&c, req("GET", &gw.url("/api/x"), "other.net").body(Full::default()).unwrap()).await;
    assert_eq!(route(&r), "a");
    assert_eq!(r.json()["path"], "/api/x");
    // `/apix` is not under `/api`
    let r = send(&c, req("GET", &gw.url("/apix"), "www.example.org").body(Full::default()).unwrap()).await;
    assert_eq!(route(&r), "a");
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
        basic_config(
            p,
            1,
            &format!(
                "[[services]]\nname = \"s\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/only\"]\n",
                u.addr
            ),
        )
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
    let gw = Gateway::start(|p| {
        basic_config(
            p,
            1,
            &format!(
                "[[services]]\nname = \"s\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nservice = \"s\"\n",
                u.addr
            ),
        )
    });
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
