//! What operators' tools read: `/metrics` in the format the scraper asks for, checked by
//! Prometheus' own `promtool`. promtool comes from Debian's `prometheus` package (`cargo xtask
//! deps` installs it); a test that needs it fails when it is missing.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use http_body_util::Full;

use super::{prometheus::Prometheus, support::*};

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
        ConfigBuilder::new(p).service("s", &[u.addr]).route("r", "s", r#"paths = ["/api"]"#).build()
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

/// The `keys` policy and `[[consumers]]` `name`s with API key `key-NAME` and id `id-NAME` (to
/// follow the `[auth]` table).
fn api_consumers(names: &[&str]) -> String {
    let mut out = String::from("[[auth.policies]]\nname = \"keys\"\nany_of = [\"api_key\"]\n");
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
        ConfigBuilder::new(p)
            .workers(2)
            .metrics("consumer_label = true\nconsumer_label_limit = 2")
            .service("s", &[u.addr])
            .route("r", "s", "paths = [\"/api\"]\nauth = \"keys\"")
            .auth("")
            .toml(&api_consumers(&["a", "b", "c", "d"]))
            .build()
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

    // The label is fixed at startup: a reload that raises the cap says so and changes nothing.
    let config = std::fs::read_to_string(&gw.config_path).expect("read config");
    assert!(gw.reload(&config.replace("consumer_label_limit = 2", "consumer_label_limit = 10")));
    assert!(gw.stderr().contains("metrics.consumer_label(_limit) take effect at the next restart"), "{}", gw.stderr());
    let r = req("GET", &gw.url("/api/x"), "h").header("x-api-key", "key-c");
    assert_eq!(send(&c, r.body(Full::default()).unwrap()).await.status, 200);
    assert_eq!(gw.metric("gateway_http_requests_total", &[("consumer_id", "other")]), 4.0);
}

#[test]
fn a_consumer_label_limit_of_zero_is_refused_with_its_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatewayd.toml");
    let ports = Ports { listen: free_port(), metrics: free_port(), dir: dir.path().into() };
    let config = ConfigBuilder::new(&ports).metrics("consumer_label = true\nconsumer_label_limit = 0").build();
    std::fs::write(&path, config).expect("write");
    let out = Command::new(BIN).arg("check-config").arg(&path).output().expect("run gatewayd");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("metrics.consumer_label_limit") && stderr.contains("must be at least 1"), "{stderr}");
}

/// Every `expr` in a Grafana dashboard (panels, nested rows included).
pub fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| dashboard_exprs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// What Grafana puts in place of the dashboard's variables when "All" is selected.
pub fn with_variables(expr: &str) -> String {
    expr.replace("$instance", ".*").replace("$route", ".*").replace("$service", ".*").replace("$__rate_interval", "20s")
}

/// Metrics this machine cannot produce, with the reason; their expressions must still parse.
/// Sensors are looked up for real: where the kernel has them, their panels must show data.
fn unavailable_here(expr: &str) -> Option<&'static str> {
    let absent = |glob_dir: &str, prefix: &str| {
        std::fs::read_dir(glob_dir)
            .map(|d| !d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(prefix)))
            .unwrap_or(true)
    };
    let cpu0 = |leaf: &str| !std::path::Path::new("/sys/devices/system/cpu/cpu0").join(leaf).exists();
    if expr.contains("gateway_thermal_zone_") && absent("/sys/class/thermal", "thermal_zone") {
        return Some("no thermal zones in /sys/class/thermal (a VM without sensors)");
    }
    if expr.contains("gateway_hwmon_") && absent("/sys/class/hwmon", "hwmon") {
        return Some("no hwmon sensors in /sys/class/hwmon");
    }
    if expr.contains("gateway_cpu_thermal_throttle_") && cpu0("thermal_throttle") {
        return Some("no thermal_throttle counters in sysfs (a VM)");
    }
    if expr.contains("gateway_cpu_frequency_") && cpu0("cpufreq") {
        return Some("no cpufreq in sysfs (a VM)");
    }
    if expr.contains("gateway_acme_") {
        return Some(
            "no ACME CA in this test: acme::tls_alpn_01_issues_renews_in_place_and_a_ca_outage_keeps_the_old_certificate checks these against pebble",
        );
    }
    if expr.contains("gateway_tls_revocation_") {
        return Some(
            "no revocation sources in this test: ocsp::client_certificates_are_checked_with_an_ocsp_responder_under_each_mode checks these against openssl ocsp",
        );
    }
    if expr.contains("gateway_xdp_") {
        return Some(
            "no XDP guard in this test (it needs a veth in a private netns): xdp::xdp_dashboard_panels_have_data_in_a_real_prometheus checks these",
        );
    }
    None
}

pub const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/prometheus/gatewayd-rules.yml");
pub const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/gatewayd.json");

/// One gatewayd with the parts the dashboard shows: a TLS listener, API-key consumers (with the
/// consumer label), a JWT issuer, a Redis-backed rate limit, a token budget by workspace.
fn dashboard_config(p: &Ports, u: &Upstream, llm: &FakeLlm, idp: &super::idp::Idp, redis: &RedisServer) -> String {
    let ca = super::pki::Ca::new("dashboard CA");
    ca.server(&["localhost"]).write(&p.dir, "server");
    let tls = free_port();
    std::fs::write(p.dir.join("tls.port"), tls.to_string()).expect("write tls port");
    ConfigBuilder::new(p)
        .workers(2)
        .add_listener("tls", tls, Some(r#"certificates = [{ cert = "server.crt", key = "server.key" }]"#))
        .metrics("consumer_label = true")
        .table("[redis]", &format!("url = \"{}\"", redis.url()))
        .service("api", &[u.addr])
        .service("llm", &[llm.addr])
        .route("open", "api", "paths = [\"/api\"]\nstrip_path = true\nauth = \"none\"")
        .route("keyed", "api", "paths = [\"/keyed\"]\nstrip_path = true")
        .route("jwt", "api", "paths = [\"/jwt\"]\nstrip_path = true\nauth = \"tokens\"")
        .route("chat", "llm", "paths = [\"/v1\"]")
        .rate_limit(
            r#"
name = "per-ip"
routes = ["keyed"]
key = "ip"
limit = 3
window = "hour"
backend = "redis"
on_redis_error = "fail_closed"
"#,
        )
        .table(
            "[[token_budgets]]",
            "name = \"daily\"\nroutes = [\"chat\"]\ndaily_tokens = 1000000\nworkspace_label = true",
        )
        .auth(r#"default_policy = "keys""#)
        .table(
            "[[auth.issuers]]",
            &format!("name = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\nfetch_timeout = \"2s\"", idp.issuer()),
        )
        .table("[[auth.policies]]", "name = \"tokens\"\nany_of = [\"jwt\"]")
        .toml(&api_consumers(&["a", "b"]))
        .build()
}

/// Requests that give every panel something to show: 2xx, 4xx (404, 401, 429), 5xx, TLS
/// handshakes that succeed and fail, JWTs (cache miss and hit), tokens charged.
async fn load(gw: &Gateway, tls: &str, token: &str) {
    let c = client();
    let call = |path: &str, headers: &[(&str, &str)], body: &str| {
        let mut r = req(if body.is_empty() { "GET" } else { "POST" }, &gw.url(path), "h");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Full::from(body.to_owned())).unwrap()
    };
    for _ in 0..3 {
        assert_eq!(send(&c, call("/api/x", &[], "")).await.status, 200);
    }
    assert_eq!(send(&c, call("/api/status/503", &[], "")).await.status, 503);
    assert_eq!(send(&c, call("/nowhere", &[], "")).await.status, 404);
    assert_eq!(send(&c, call("/keyed/x", &[], "")).await.status, 401);
    let mut statuses = Vec::new();
    for name in ["a", "b", "a", "b"] {
        statuses.push(send(&c, call("/keyed/x", &[("x-api-key", &format!("key-{name}"))], "")).await.status.as_u16());
    }
    assert!(statuses.contains(&429), "the per-ip layer (3 an hour, Redis) limits: {statuses:?}");
    let bearer = format!("Bearer {token}");
    for _ in 0..2 {
        assert_eq!(send(&c, call("/jwt/x", &[("authorization", &bearer)], "")).await.status, 200);
    }
    let chat = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let chat_req = call("/v1/chat/completions", &[("x-api-key", "key-a"), ("content-type", "application/json")], &chat);
    assert_eq!(send(&c, chat_req).await.status, 200);
    let curl = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--resolve", &format!("localhost:{tls}:127.0.0.1")])
        .arg(format!("https://localhost:{tls}/api/x"))
        .output()
        .expect("run curl (`cargo xtask deps` installs it)");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200", "curl over TLS");
    // Plain HTTP to the TLS listener: a failed handshake (`protocol`).
    let _ = raw_get(format!("127.0.0.1:{tls}").parse().expect("addr"), "/");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_and_rule_expression_returns_data_from_a_real_prometheus() {
    let (u, llm, redis) = (Upstream::start("u"), FakeLlm::start(), RedisServer::start());
    let idp = super::idp::Idp::start();
    let key = super::idp::Key::rsa();
    idp.set_keys(vec![key.jwk("k1")]);
    let token = key.token(serde_json::json!({"kid": "k1"}), &idp.claims("alice"));
    let gw = Gateway::start(|p| dashboard_config(p, &u, &llm, &idp, &redis));
    let tls = std::fs::read_to_string(gw.ports.dir.join("tls.port")).expect("tls port");
    let tls = tls.rsplit(':').next().expect("port").to_owned();

    // The live output the server will scrape is clean for promtool too.
    load(&gw, &tls, &token).await;
    assert_promtool_clean(&scrape(&gw, None).1);

    let prometheus = Prometheus::start(gw.ports.metrics, &[std::path::Path::new(RULES)]);
    // Load between scrapes, so rates have samples that differ.
    for _ in 0..3 {
        load(&gw, &tls, &token).await;
        prometheus.wait_scrapes(2.0);
    }
    let up = prometheus.query("up{job=\"gatewayd\"} == 1");
    assert_eq!(up.len(), 1, "gatewayd is not up for prometheus: {up:?}\n{}", prometheus.log());

    let dashboard = dashboard();
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 30, "{exprs:?}");
    exprs.extend(variable_exprs(&dashboard));
    // Recording rules' results (what alerts and panels read) must have data too.
    let records = recording_rules();
    let rules = healthy_rules(&prometheus, records.len());
    let mut empty = Vec::new();
    for expr in exprs.iter().map(|e| with_variables(e)).chain(records) {
        let result = prometheus.query(&expr);
        match unavailable_here(&expr) {
            Some(reason) => eprintln!("parses, no data on this machine ({reason}): {expr}"),
            None if result.is_empty() => empty.push(expr),
            None => {}
        }
    }
    if !empty.is_empty() {
        let targets = prometheus.targets();
        panic!("expressions without data:\n{}\ntargets: {targets}\n{}", empty.join("\n"), scrape(&gw, None).1);
    }
    // Alerts parse and evaluate (health ok above). Those about states this gateway is not in
    // stay quiet (the latency and 5xx ones depend on the load and the machine's speed).
    let healthy_here = [
        "GatewaydDown",
        "GatewaydNotReady",
        "GatewaydCertificateExpiringSoon",
        "GatewaydIdpUnreachable",
        "GatewaydIssuerFailedClosed",
        "GatewaydRedisDown",
        "GatewaydRedisFailClosedRefusing",
        "GatewaydConfigReloadFailed",
    ];
    for rule in rules.iter().filter(|r| r["type"] == "alerting") {
        let quiet = rule["name"].as_str().is_some_and(|n| healthy_here.contains(&n));
        assert!(!quiet || rule["state"] == "inactive", "{rule}");
    }
}

/// The variables' `label_values(SELECTOR, LABEL)` queries, as PromQL listing the values.
pub fn variable_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let variables = dashboard["templating"]["list"].as_array().expect("templating list");
    for definition in variables.iter().filter(|v| v["type"] == "query").filter_map(|v| v["definition"].as_str()) {
        let args = definition.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')'));
        let (selector, label) = args.and_then(|a| a.rsplit_once(", ")).expect("label_values(SELECTOR, LABEL)");
        let selector = match selector.strip_suffix('}') {
            Some(open) => format!("{open}, {label}!=\"\"}}"),
            None => format!("{selector}{{{label}!=\"\"}}"),
        };
        exprs.push(with_variables(&format!("count by ({label}) ({selector})")));
    }
    exprs
}

/// The names the recording rules record.
pub fn recording_rules() -> Vec<String> {
    let text = std::fs::read_to_string(RULES).expect("read rules");
    text.lines().filter_map(|l| l.trim().strip_prefix("- record: ").map(str::to_owned)).collect()
}

/// Waits until every rule has been evaluated without error; returns them as the server has them.
pub fn healthy_rules(prometheus: &Prometheus<'_>, records: usize) -> Vec<serde_json::Value> {
    let evaluated = eventually(std::time::Duration::from_secs(20), || {
        let rules = prometheus.rules();
        let evaluated = |r: &serde_json::Value| r["health"] == "ok" && r["lastEvaluation"] != "0001-01-01T00:00:00Z";
        (rules.len() > records && rules.iter().all(evaluated)).then_some(rules)
    });
    evaluated.unwrap_or_else(|| panic!("rules not all evaluated healthy: {:?}", prometheus.rules()))
}

pub fn dashboard() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read dashboard")).expect("dashboard JSON")
}
