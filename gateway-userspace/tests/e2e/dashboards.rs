//! What operators' tools read: `/metrics` in the format the scraper asks for, checked by
//! Prometheus' own `promtool`. promtool comes from Debian's `prometheus` package (`cargo xtask
//! deps` installs it); a test that needs it fails when it is missing.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use http_body_util::Full;

use super::support::*;

/// Runs `promtool ARGS` with `stdin`; panics when promtool cannot be run.
pub fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): `cargo xtask deps` installs Debian's prometheus package")
        });
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write to promtool");
    child.wait_with_output().expect("promtool output")
}

/// `promtool check metrics` on an exposition: panics with its findings unless it finds none.
pub fn assert_promtool_clean(exposition: &str) {
    let out = promtool(&["check", "metrics"], exposition);
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}\n---\n{exposition}"
    );
}

fn scrape(gw: &Gateway, accept: Option<&str>) -> (String, String) {
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let raw = raw_request(
        gw.ports.metrics,
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n").as_bytes(),
    )
    .expect("scrape");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_else(|| panic!("no content-type:\n{head}"))
        .to_owned();
    (content_type, body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_answer_in_the_format_the_scraper_accepts() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| {
        basic_config(
            p,
            1,
            &format!(
                "[[services]]\nname = \"s\"\ntargets = [\"{}\"]\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/api\"]\n",
                u.addr
            ),
        )
    });
    let c = client();
    assert_eq!(send(&c, req("GET", &gw.url("/api/x"), "h").body(Full::default()).unwrap()).await.status, 200);
    assert_eq!(send(&c, req("GET", &gw.url("/nowhere"), "h").body(Full::default()).unwrap()).await.status, 404);

    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let (content_type, text) = scrape(&gw, accept);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8", "Accept {accept:?}");
        // One family per counter, named after its samples.
        assert_eq!(text.matches("# TYPE gateway_http_requests_total counter\n").count(), 1, "{text}");
        assert!(!text.contains("# TYPE gateway_http_requests counter"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert_promtool_clean(&text);
    }

    // Prometheus' own scrape header prefers OpenMetrics.
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for accept in ["application/openmetrics-text", prometheus] {
        let (content_type, om) = scrape(&gw, Some(accept));
        assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
        assert!(om.contains("# TYPE gateway_http_requests counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}

fn sha256_hex(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// `[[consumers]]` `name`s with API key `key-NAME` and id `id-NAME`.
fn api_consumers(names: &[&str]) -> String {
    let mut out = String::from("[auth]\n[[auth.policies]]\nname = \"keys\"\nany_of = [\"api_key\"]\n");
    for name in names {
        out.push_str(&format!(
            "[[consumers]]\nname = \"{name}\"\nid = \"id-{name}\"\napi_keys = [\"sha256:{}\"]\nworkspace_id = \"ws-{name}\"\n",
            sha256_hex(&format!("key-{name}"))
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn per_consumer_request_counts_are_capped_at_the_configured_number_of_consumers() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| {
        format!(
            "[server]\nworkers = 2\n[[listeners]]\nname = \"public\"\nbind = \"{}\"\n\
             [metrics]\nbind = \"{}\"\nconsumer_label = true\nconsumer_label_limit = 2\n[admin]\nsocket = \"\"\n\
             [[services]]\nname = \"s\"\ntargets = [\"{}\"]\n\
             [[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/api\"]\nauth = \"keys\"\n{}",
            p.listen,
            p.metrics,
            u.addr,
            api_consumers(&["a", "b", "c", "d"])
        )
    });
    let c = client();
    for (name, n) in [("a", 3), ("b", 1), ("c", 2), ("d", 1)] {
        for _ in 0..n {
            let r = req("GET", &gw.url("/api/x"), "h").header("x-api-key", format!("key-{name}"));
            assert_eq!(send(&c, r.body(Full::default()).unwrap()).await.status, 200);
        }
    }
    let anonymous = send(&c, req("GET", &gw.url("/api/x"), "h").body(Full::default()).unwrap()).await;
    assert_eq!(anonymous.status, 401);

    let m = gw.metrics();
    let count = |consumer: &str, status: &str| {
        series_value(
            &m,
            "gateway_http_requests_total",
            &[("route", "r"), ("status", status), ("consumer_id", consumer)],
        )
    };
    assert_eq!(count("id-a", "200"), Some(3.0), "{m}");
    assert_eq!(count("id-b", "200"), Some(1.0), "{m}");
    // c and d came after the cap of 2: one `other` series holds both.
    assert_eq!(count("other", "200"), Some(3.0), "{m}");
    assert_eq!(count("id-c", "200"), None, "{m}");
    assert_eq!(count("", "401"), Some(1.0), "{m}");
    assert_promtool_clean(&scrape(&gw, None).1);
}

#[test]
fn a_consumer_label_limit_of_zero_is_refused_with_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatewayd.toml");
    std::fs::write(&path, "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[metrics]\nconsumer_label = true\nconsumer_label_limit = 0\n")
        .expect("write");
    let out = Command::new(BIN).arg("check-config").arg(&path).output().expect("run gatewayd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("metrics.consumer_label_limit") && stderr.contains("must be at least 1"), "{stderr}");
}
