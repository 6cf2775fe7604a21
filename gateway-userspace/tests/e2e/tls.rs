//! TLS at the edge, with real clients (rustls here, Debian's curl and openssl) and real
//! certificates (rcgen): versions, ALPN, SNI, resumption, client certificates and their
//! failure reasons, per-route requirements, consumers and offboarding by reload, certificate
//! and CRL reloads, upstream (m)TLS, the kTLS decision, `gatewayd certs init`.

use std::{path::Path, process::Command, time::Duration};

use rustls::ProtocolVersion;

use super::{pki::*, support::*};

/// One TLS listener ("tls") on `p.listen` with the given `[listeners.tls]` body. Routes are open
/// (`[auth] default_policy = "none"`) unless the config gets an `[auth]` table of its own.
fn tls_config<'p>(p: &'p Ports, tls: &str) -> ConfigBuilder<'p> {
    ConfigBuilder::new(p).drain_timeout("5s").listener("tls", p.listen).listener_tls(tls)
}

const CERT: &str = r#"certificates = [{ cert = "server.crt", key = "server.key" }]"#;

fn handshakes(gw: &Gateway, result: &str) -> f64 {
    gw.metric("gateway_tls_handshakes_total", &[("listener", "tls"), ("result", result)])
}

/// Waits until the handshake counter for `result` reaches `n` (the server counts after the
/// client has seen the outcome).
fn await_handshakes(gw: &Gateway, result: &str, n: f64) {
    let got = eventually(Duration::from_secs(5), || (handshakes(gw, result) >= n).then_some(()));
    assert!(got.is_some(), "expected {n} handshakes with result {result}:\n{}", gw.metrics());
}

/// The daemon's log once it has `n` lines containing `needle` (or after 5 s, for the assertion to
/// show): a refusal is counted before it is logged, so the last line can trail the counter.
fn logged(gw: &Gateway, needle: &str, n: usize) -> String {
    eventually(Duration::from_secs(5), || {
        Some(gw.stderr()).filter(|l| l.lines().filter(|l| l.contains(needle)).count() >= n)
    })
    .unwrap_or_else(|| gw.stderr())
}

/// `openssl s_client` against the gateway with stdin closed; (exit success, output).
fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> (bool, String) {
    s_client_input(addr, args, b"")
}

/// `openssl s_client` with `input` on stdin (then EOF).
fn s_client_input(addr: std::net::SocketAddr, args: &[&str], input: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl must be installed (cargo xtask deps)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write to openssl");
    drop(stdin);
    let out = child.wait_with_output().expect("openssl output");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// curl against the gateway; (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (cargo xtask deps)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread")]
async fn tls13_with_alpn_h2_and_http1_end_to_end() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        tls_config(p, CERT).catch_all(u.addr).build()
    });

    let mut h2 =
        Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &["h2", "http/1.1"])).await.unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.version, Some(ProtocolVersion::TLSv1_3));
    for _ in 0..3 {
        let r = h2.get("/hello", &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(r.json()["headers"]["x-client-cert-verify"][0], "absent");
    }
    let mut h1 = Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &[])).await.unwrap();
    assert_eq!(h1.alpn, None);
    assert_eq!(h1.get("/one", &[]).await.unwrap().status.as_u16(), 200);

    // Debian's curl, over HTTP/2 and verifying the chain against the CA.
    let ca_file = ca.write(&gw.ports.dir, "ca");
    let url = format!("https://localhost:{}/curl", gw.ports.listen.port());
    let (ok, out, err) =
        curl(&["--http2", "--cacert", path(&ca_file), "-o", "/dev/null", "-w", "%{http_version} %{http_code}", &url]);
    assert!(ok, "curl failed: {err}");
    assert_eq!(out, "2 200");

    await_handshakes(&gw, "ok", 3.0);
    assert_eq!(gw.metric("gateway_tls_handshakes_total", &[("version", "TLSv1.3"), ("result", "ok")]), 3.0);
    assert!(
        gw.metric("gateway_tls_handshake_duration_seconds_count", &[("listener", "tls"), ("resumed", "false")]) >= 3.0
    );
    assert_eq!(u.requests(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn old_protocol_versions_are_refused_and_tls12_is_opt_in() {
    let ca = Ca::new("edge CA");
    let server = ca.server(&["localhost"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        tls_config(p, CERT).build()
    });
    // SECLEVEL=0 makes OpenSSL 3 actually offer TLS 1.0/1.1, so the refusal is the gateway's.
    for version in ["-tls1", "-tls1_1", "-tls1_2"] {
        let (ok, out) =
            s_client(gw.ports.listen, &[version, "-cipher", "DEFAULT@SECLEVEL=0", "-servername", "localhost"]);
        assert!(!ok, "{version} must be refused:\n{out}");
    }
    await_handshakes(&gw, "protocol", 3.0);
    let (ok, out) = s_client(gw.ports.listen, &["-tls1_3", "-servername", "localhost", "-brief"]);
    assert!(ok, "TLS 1.3 must work:\n{out}");
    assert!(out.contains("TLSv1.3"), "{out}");

    // With min_version = "1.2", TLS 1.2 (AEAD suites only) is accepted; 1.1 still is not.
    let gw12 = Gateway::start(|p| {
        server.write(&p.dir, "server");
        tls_config(p, &format!("{CERT}\nmin_version = \"1.2\"")).build()
    });
    let (ok, out) = s_client(gw12.ports.listen, &["-tls1_2", "-servername", "localhost", "-brief"]);
    assert!(ok, "TLS 1.2 must work when enabled:\n{out}");
    assert!(out.contains("ECDHE") && out.contains("GCM") || out.contains("CHACHA20"), "{out}");
    // Each refusal is the server's own (its handshake_failure alert, number 40, which rustls sends
    // for no common suite and for a version it does not speak) and is counted by the server, not
    // just any failure on the client's side.
    let (ok, out) = s_client(gw12.ports.listen, &["-tls1_2", "-cipher", "AES128-SHA256", "-servername", "localhost"]);
    assert!(!ok, "a CBC, non-ECDHE suite must not be negotiated");
    assert!(out.contains("SSL alert number 40"), "the server's handshake_failure alert expected:\n{out}");
    let (ok, out) = s_client(gw12.ports.listen, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!ok);
    assert!(out.contains("SSL alert number 40"), "the server's handshake_failure alert expected:\n{out}");
    let refused = eventually(Duration::from_secs(5), || {
        let m = gw12.metrics();
        let all = metric_value(&m, "gateway_tls_handshakes_total", &[("listener", "tls")]);
        let ok = metric_value(&m, "gateway_tls_handshakes_total", &[("listener", "tls"), ("result", "ok")]);
        (all - ok >= 2.0).then_some(())
    });
    assert!(refused.is_some(), "the server did not count both refusals:\n{}", gw12.metrics());
    await_handshakes(&gw12, "ok", 1.0);
    assert_eq!(gw12.metric("gateway_tls_handshakes_total", &[("version", "TLSv1.2"), ("result", "ok")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_selects_exact_wildcard_and_default_certificates() {
    let ca = Ca::new("edge CA");
    let (api, wild, fallback, rsa) = (
        ca.server(&["api.example.com"]),
        ca.server(&["*.example.org"]),
        ca.server(&["fallback.test"]),
        ca.server_rsa(&["rsa.example.net"]),
    );
    let certs = r#"certificates = [
  { cert = "api.crt", key = "api.key" },
  { cert = "wild.crt", key = "wild.key" },
  { cert = "fallback.crt", key = "fallback.key", default = true },
  { cert = "rsa.crt", key = "rsa.key" },
]"#;
    let gw = Gateway::start(|p| {
        api.write(&p.dir, "api");
        wild.write(&p.dir, "wild");
        fallback.write(&p.dir, "fallback");
        rsa.write(&p.dir, "rsa");
        tls_config(p, certs).build()
    });
    let cfg = client_config(&ca, None, &[]);
    let cn = |sni: &'static str| {
        let cfg = cfg.clone();
        let addr = gw.ports.listen;
        async move { Https::connect(addr, sni, cfg).await.map(|c| c.peer_cn.unwrap_or_default()) }
    };
    assert_eq!(cn("api.example.com").await.unwrap(), "api.example.com");
    assert_eq!(cn("www.example.org").await.unwrap(), "*.example.org");
    assert_eq!(cn("rsa.example.net").await.unwrap(), "rsa.example.net");
    // No certificate for the name: the default is served (and the client rejects it).
    assert!(cn("unknown.test").await.is_err());
    assert!(cn("a.b.example.org").await.is_err(), "a wildcard covers one label");
    // curl verifies the name against the selected certificate.
    let ca_file = ca.write(&gw.ports.dir, "ca");
    let port = gw.ports.listen.port();
    let (ok, _, err) = curl(&[
        "--cacert",
        path(&ca_file),
        "--resolve",
        &format!("www.example.org:{port}:127.0.0.1"),
        "-o",
        "/dev/null",
        &format!("https://www.example.org:{port}/"),
    ]);
    assert!(ok, "curl with SNI www.example.org: {err}");
    // Expiry gauges name each certificate.
    let api_expiry = gw.metric(
        "gateway_tls_certificate_expiry_timestamp_seconds",
        &[("listener", "tls"), ("name", "api.example.com")],
    );
    let (_, parsed) = x509_parser::parse_x509_certificate(&api.der).unwrap();
    assert_eq!(api_expiry, parsed.validity().not_after.timestamp() as f64);

    // strict_sni refuses names without a certificate instead of serving the default.
    let strict = Gateway::start(|p| {
        api.write(&p.dir, "server");
        tls_config(p, &format!("{CERT}\nstrict_sni = true")).build()
    });
    assert!(Https::connect(strict.ports.listen, "other.example.com", cfg.clone()).await.is_err());
    assert!(Https::connect(strict.ports.listen, "api.example.com", cfg.clone()).await.is_ok());
    await_handshakes(&strict, "bad_sni", 1.0);
}

/// An upstream, a CA, and a gateway with one TLS listener for "localhost" (a certificate from
/// that CA) in front of it; `limits`: the body of `[server.limits]`.
fn edge_gateway(limits: &str) -> (Upstream, Ca, Gateway) {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let server = ca.server(&["localhost"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        let config = tls_config(p, CERT).catch_all(u.addr).build();
        config.replace("drain_timeout = \"5s\"", &format!("drain_timeout = \"5s\"\n[server.limits]\n{limits}"))
    });
    (u, ca, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_resume_with_tickets() {
    let (_u, ca, gw) = edge_gateway("");
    // One client config = one session store: the second connection presents a ticket.
    let cfg = client_config(&ca, None, &[]);
    let mut first = Https::connect(gw.ports.listen, "localhost", cfg.clone()).await.unwrap();
    assert!(!first.resumed);
    // Tickets arrive after the handshake; a request makes sure they were read.
    assert_eq!(first.get("/a", &[]).await.unwrap().status.as_u16(), 200);
    let mut second = Https::connect(gw.ports.listen, "localhost", cfg).await.unwrap();
    assert!(second.resumed, "the second connection should resume");
    assert_eq!(second.get("/b", &[]).await.unwrap().status.as_u16(), 200);
    let resumed = eventually(Duration::from_secs(5), || {
        let n = gw.metric("gateway_tls_handshake_duration_seconds_count", &[("resumed", "true")]);
        (n >= 1.0).then_some(n)
    });
    assert_eq!(resumed, Some(1.0));

    // openssl: save the session, reconnect with it.
    let sess = gw.ports.dir.join("sess.pem");
    let ca_file = ca.write(&gw.ports.dir, "ca");
    // A whole request (the gateway closes after it), so the tickets sent after the handshake
    // are read before openssl saves the session.
    let (ok, out) = s_client_input(
        gw.ports.listen,
        &["-servername", "localhost", "-CAfile", path(&ca_file), "-sess_out", path(&sess), "-ign_eof"],
        b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(ok, "{out}");
    let (ok, out) =
        s_client(gw.ports.listen, &["-servername", "localhost", "-CAfile", path(&ca_file), "-sess_in", path(&sess)]);
    assert!(ok, "{out}");
    assert!(out.contains("Reused, TLSv1.3"), "openssl did not resume:\n{out}");
}

/// An idle HTTPS keep-alive connection is parked like a plain one (hyper's buffers given back,
/// rustls' state kept) and serves its next requests on the same TLS session.
#[tokio::test(flavor = "multi_thread")]
async fn idle_tls_connections_park_and_keep_serving() {
    let (_u, ca, gw) = edge_gateway("park_after = \"200ms\"");
    let parks = || gw.metric("gateway_connections_parked_total", &[("listener", "tls")]);
    let mut c = Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &[])).await.unwrap();
    for (round, path) in ["/one", "/two", "/three"].into_iter().enumerate() {
        let r = c.get(path, &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "{path}");
        assert_eq!(r.json()["path"], path);
        let parked = eventually(Duration::from_secs(5), || (parks() > round as f64).then_some(()));
        assert!(parked.is_some(), "the idle TLS connection was not parked after {path}:\n{}", gw.metrics());
    }
    let r = c.get("/four", &[]).await.unwrap();
    assert_eq!(r.json()["path"], "/four");
    assert_eq!(gw.metric("gateway_connections_total", &[]), 1.0, "one client connection throughout");
    assert_eq!(handshakes(&gw, "ok"), 1.0, "one TLS session throughout");
}

/// A listener requiring client certificates from `ca` (with a CRL), and a service.
fn mtls_listener(mode: &str, crl: bool) -> String {
    let crl = if crl { "client_crl = [\"clients.crl\"]" } else { "" };
    format!("{CERT}\nclient_auth = \"{mode}\"\nclient_ca = [\"clients-ca.crt\"]\n{crl}")
}

/// A `required` listener refusing absent, untrusted, expired, revoked and wrong-usage client
/// certificates, with `client_cert_refusal = refusal`: each case is counted with its reason in
/// `gateway_tls_handshakes_total`, logged once, and never reaches the upstream. `check` sees
/// each refused request's outcome.
async fn required_client_certificates_are_refused(
    refusal: &str,
    check: impl Fn(Option<&str>, &str, Result<Reply, String>),
) -> (Gateway, Ca, Leaf) {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let rogue = Ca::new("rogue CA");
    let server = ca.server(&["localhost"]);
    let (good, revoked, expired, wrong) = (
        clients.client("partner-a"),
        clients.client("partner-revoked"),
        clients.expired_client("partner-expired"),
        clients.server_only_client("partner-server-cert"),
    );
    let untrusted = rogue.client("partner-a");
    let listener = format!("{}\nclient_cert_refusal = \"{refusal}\"", mtls_listener("required", true));
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        std::fs::write(p.dir.join("clients.crl"), clients.crl(1, &[&revoked])).unwrap();
        tls_config(p, &listener).catch_all(u.addr).build()
    });
    let addr = gw.ports.listen;
    let r = https_get(addr, client_config(&ca, Some(&good), &[]), "/ok").await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    let echo = r.json();
    assert_eq!(echo["headers"]["x-client-cert-verify"][0], "success");
    assert_eq!(echo["headers"]["x-client-cert-subject"][0], "CN=partner-a,O=gatewayd tests");
    assert_eq!(echo["headers"]["x-client-cert-sha256"][0], good.sha256_hex());

    for (cert, result) in [
        (None, "no_client_cert"),
        (Some(&untrusted), "unknown_ca"),
        (Some(&expired), "expired"),
        (Some(&revoked), "revoked"),
        (Some(&wrong), "bad_usage"),
    ] {
        let before = handshakes(&gw, result);
        let r = https_get(addr, client_config(&ca, cert, &[]), "/refused").await;
        check(cert.map(|_| result), result, r);
        await_handshakes(&gw, result, before + 1.0);
    }
    assert_eq!(u.requests(), 1, "refused clients never reach the upstream");
    (gw, ca, good)
}

#[tokio::test(flavor = "multi_thread")]
async fn required_client_certificates_are_refused_with_400_and_the_reason() {
    let (gw, ca, good) = required_client_certificates_are_refused("status", |cert, result, r| {
        let r = r.unwrap_or_else(|e| panic!("{result}: the handshake completes, got {e}"));
        assert_eq!(r.status.as_u16(), 400, "{result}");
        let body = r.json();
        let error = if cert.is_none() { "client_cert_required" } else { "client_cert_invalid" };
        assert_eq!(body["error"], error, "{result}: {body}");
        let message = body["message"].as_str().unwrap();
        let want = match result {
            "no_client_cert" => "No required SSL certificate was sent",
            "unknown_ca" => "not issued by a trusted CA",
            "expired" => "has expired",
            "revoked" => "is revoked",
            _ => "not valid for client authentication",
        };
        assert!(message.contains(want), "{result}: {message}");
        assert_eq!(r.header("connection"), Some("close"), "{result}");
    })
    .await;
    let log = logged(&gw, "client certificate refused", 5);
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("client certificate refused")).collect();
    assert_eq!(refusals.len(), 5, "one log line per refused connection:\n{log}");
    assert!(refusals[3].contains("revoked"), "{log}");
    assert_eq!(
        gw.metric("gateway_http_requests_total", &[("status", "400")]),
        5.0,
        "the refusals are requests too (counted, audited)"
    );

    // The seed's curl checks: a certificate file pair gets through; none gets nginx's answer.
    let ca_file = ca.write(&gw.ports.dir, "ca");
    let (cert, key) = good.write(&gw.ports.dir, "good");
    let url = format!("https://localhost:{}/curl", gw.ports.listen.port());
    let (ok, _, err) =
        curl(&["--cacert", path(&ca_file), "--cert", path(&cert), "--key", path(&key), "-o", "/dev/null", &url]);
    assert!(ok, "{err}");
    let (_, body, err) = curl(&["--cacert", path(&ca_file), "-w", "\n%{http_code}", &url]);
    assert!(body.contains("No required SSL certificate was sent") && body.ends_with("400"), "{body} {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn required_client_certificates_can_be_refused_in_the_handshake() {
    let (gw, ca, _) = required_client_certificates_are_refused("handshake", |_, result, r| {
        assert!(r.is_err(), "{result}: the handshake must fail, got {r:?}");
    })
    .await;
    let log = logged(&gw, "TLS handshake refused: client certificate", 5);
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("TLS handshake refused: client certificate")).collect();
    assert_eq!(refusals.len(), 5, "one log line per refusal:\n{log}");
    assert!(refusals[3].contains("revoked"), "{log}");
    let ca_file = ca.write(&gw.ports.dir, "ca");
    let url = format!("https://localhost:{}/curl", gw.ports.listen.port());
    let (ok, _, _) = curl(&["--cacert", path(&ca_file), "-o", "/dev/null", &url]);
    assert!(!ok, "curl without a client certificate must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_listener_routes_require_certificates_and_identity_is_forwarded_and_audited() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    let partner = clients.client("partner-a");
    let config = |p: &Ports| {
        tls_config(p, &mtls_listener("optional", false))
            .table("[audit]", &format!("path = \"{}\"", p.dir.join("audit.log").display()))
            .service("s", &[u.addr])
            .route("open", "s", r#"paths = ["/open"]"#)
            .route("partners", "s", "paths = [\"/partners\"]\nclient_cert = \"required\"")
            .build()
    };
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        config(p)
    });
    let forged =
        [("x-client-cert-subject", "CN=admin"), ("x-client-cert-verify", "success"), ("x-consumer-name", "root")];

    // No certificate: public routes work, with forged identity headers replaced.
    let mut anon = Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &[])).await.unwrap();
    let r = anon.get("/open/x", &forged).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-client-cert-verify"][0], "absent");
    assert!(h.get("x-client-cert-subject").is_none() && h.get("x-consumer-name").is_none(), "{h}");
    let r = anon.get("/partners/x", &forged).await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.json()["error"], "client_cert_required");

    // A verified certificate: both routes, identity forwarded, forged copies gone.
    let mut partner_conn =
        Https::connect(gw.ports.listen, "localhost", client_config(&ca, Some(&partner), &[])).await.unwrap();
    let r = partner_conn.get("/partners/x", &forged).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    let h = &r.json()["headers"];
    assert_eq!(h["x-client-cert-verify"], serde_json::json!(["success"]));
    assert_eq!(h["x-client-cert-subject"], serde_json::json!(["CN=partner-a,O=gatewayd tests"]));
    assert_eq!(h["x-client-cert-sha256"][0], partner.sha256_hex());
    assert!(h["x-client-cert-serial"][0].as_str().is_some_and(|s| s.len() == 32), "{h}");
    assert!(h.get("x-consumer-name").is_none(), "no consumer is configured: {h}");

    assert_eq!(gw.metric("gateway_http_refusals_total", &[("reason", "client_cert_required")]), 1.0);
    let audit = gw.ports.dir.join("audit.log");
    let lines = eventually(Duration::from_secs(5), || {
        let l = gw.audit_lines(&audit);
        (l.len() >= 3).then_some(l)
    })
    .expect("audit lines");
    let mine = lines.iter().find(|l| l["route"] == "partners" && l["status_code"] == 200).expect("partner line");
    assert_eq!(mine["client_cert_verify"], "success");
    assert_eq!(mine["client_cert_subject"], "CN=partner-a,O=gatewayd tests");
    assert_eq!(mine["client_cert_sha256"], partner.sha256_hex());
    assert_eq!(mine["tls_version"], "TLSv1.3");
    let refused = lines.iter().find(|l| l["status_code"] == 403).expect("refusal line");
    assert_eq!(refused["client_cert_verify"], "absent");
    assert_eq!(refused["error"], "client_cert_required");
}

/// An optional-certificate listener, route `partner-api` mapping certificates to `consumers`.
fn consumer_config(p: &Ports, u: &Upstream, consumers: &str) -> String {
    tls_config(p, &mtls_listener("optional", false))
        .service("s", &[u.addr])
        .route("partner-api", "s", r#"client_cert = "consumer""#)
        .toml(consumers)
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_are_mapped_from_certificates_and_offboarded_by_reload() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    let (a, b) = (clients.client("producer-api-client"), clients.client("partner-b"));
    let onboarded = format!(
        r#"
[[consumers]]
name = "producer"
id = "c-001"
client_certs = [{{ subject_cn = "producer-api-client" }}]

[[consumers]]
name = "partner-b"
client_certs = [{{ sha256 = "{}" }}]
"#,
        b.sha256_hex()
    );
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        consumer_config(p, &u, &onboarded)
    });
    let mut conn_a = Https::connect(gw.ports.listen, "localhost", client_config(&ca, Some(&a), &[])).await.unwrap();
    let r = conn_a.get("/orders", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.json()["headers"]["x-consumer-name"][0], "producer");
    assert_eq!(r.json()["headers"]["x-consumer-id"][0], "c-001");
    let r = https_get(gw.ports.listen, client_config(&ca, Some(&b), &[]), "/orders").await.unwrap();
    assert_eq!(r.json()["headers"]["x-consumer-name"][0], "partner-b");
    // A verified certificate of nobody in particular.
    let stranger = clients.client("stranger");
    let r = https_get(gw.ports.listen, client_config(&ca, Some(&stranger), &[]), "/orders").await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.json()["error"], "unknown_consumer");

    // Offboard "producer": after the reload its requests are refused, on the connection it
    // already has too; partner-b is unaffected.
    let remaining = onboarded.split("[[consumers]]").nth(2).map(|s| format!("[[consumers]]{s}")).unwrap();
    let config = consumer_config(&gw.ports, &u, &remaining);
    assert!(gw.reload(&config), "{}", gw.stderr());
    let r = conn_a.get("/orders", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(r.json()["error"], "unknown_consumer");
    let r = https_get(gw.ports.listen, client_config(&ca, Some(&a), &[]), "/orders").await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    let r = https_get(gw.ports.listen, client_config(&ca, Some(&b), &[]), "/orders").await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
}

/// A gateway whose listener (`client_auth = mode`) checks a partner CA's CRL, which revokes
/// nobody yet.
struct CrlSetup {
    u: Upstream,
    ca: Ca,
    clients: Ca,
    partner: Leaf,
    gw: Gateway,
}

impl CrlSetup {
    fn start(mode: &str) -> CrlSetup {
        let u = Upstream::start("u");
        let ca = Ca::new("edge CA");
        let clients = Ca::new("partner CA");
        let server = ca.server(&["localhost"]);
        let partner = clients.client("partner-a");
        let gw = Gateway::start(|p| {
            server.write(&p.dir, "server");
            clients.write(&p.dir, "clients-ca");
            std::fs::write(p.dir.join("clients.crl"), clients.crl(1, &[])).unwrap();
            tls_config(p, &mtls_listener(mode, true)).catch_all(u.addr).build()
        });
        CrlSetup { u, ca, clients, partner, gw }
    }

    /// A connection presenting the partner's certificate.
    async fn partner_connection(&self) -> Https {
        let cfg = client_config(&self.ca, Some(&self.partner), &[]);
        Https::connect(self.gw.ports.listen, "localhost", cfg).await.unwrap()
    }

    /// The CA revokes the partner; the new CRL is installed with a reload.
    fn revoke_partner(&self) {
        std::fs::write(self.gw.ports.dir.join("clients.crl"), self.clients.crl(2, &[&self.partner])).unwrap();
        let config = std::fs::read_to_string(&self.gw.config_path).unwrap();
        assert!(self.gw.reload(&config), "{}", self.gw.stderr());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_reload_revokes_new_and_established_connections() {
    let t = CrlSetup::start("required");
    let cfg = client_config(&t.ca, Some(&t.partner), &[]);
    let mut established = Https::connect(t.gw.ports.listen, "localhost", cfg.clone()).await.unwrap();
    assert_eq!(established.get("/a", &[]).await.unwrap().status.as_u16(), 200);

    t.revoke_partner();
    let r = established.get("/b", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 403, "the established connection is held to the new CRL");
    assert_eq!(r.json()["error"], "client_cert_invalid");
    // New connections, full handshakes or resumed with the earlier ticket, are refused.
    let before = handshakes(&t.gw, "revoked");
    for (cfg, path) in [(cfg.clone(), "/c"), (client_config(&t.ca, Some(&t.partner), &[]), "/d")] {
        let r = https_get(t.gw.ports.listen, cfg, path).await.unwrap();
        assert_eq!(r.status.as_u16(), 400);
        assert_eq!(r.json()["error"], "client_cert_invalid");
    }
    await_handshakes(&t.gw, "revoked", before + 2.0);
    assert_eq!(t.u.requests(), 1);
}

/// On an `optional` listener a certificate revoked by a CRL reload keeps no route open: the
/// established connection is refused on the open route too, while clients without a
/// certificate keep using it.
#[tokio::test(flavor = "multi_thread")]
async fn a_crl_reload_refuses_a_revoked_connection_on_open_routes_of_an_optional_listener() {
    let t = CrlSetup::start("optional");
    let mut established = t.partner_connection().await;
    let r = established.get("/open", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.json()["headers"]["x-client-cert-verify"][0], "success");
    let mut anonymous = Https::connect(t.gw.ports.listen, "localhost", client_config(&t.ca, None, &[])).await.unwrap();

    t.revoke_partner();
    let r = established.get("/open", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 403, "the revoked connection is refused on the open route");
    assert_eq!(r.json()["error"], "client_cert_invalid");
    assert_eq!(anonymous.get("/open", &[]).await.unwrap().status.as_u16(), 200, "no certificate: still open");
    assert_eq!(t.u.requests(), 2, "the revoked client's request never reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_reload_without_dropping_connections_and_bad_files_keep_the_old_ones() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let (old, new) = (ca.server(&["localhost", "old.test"]), ca.server(&["localhost", "new.test"]));
    let gw = Gateway::start(|p| {
        old.write(&p.dir, "server");
        tls_config(p, CERT).catch_all(u.addr).build()
    });
    let cfg = client_config(&ca, None, &[]);
    let mut established = Https::connect(gw.ports.listen, "localhost", cfg.clone()).await.unwrap();
    assert_eq!(established.peer_cn.as_deref(), Some("localhost"));
    assert_eq!(established.get("/1", &[]).await.unwrap().status.as_u16(), 200);

    new.write(&gw.ports.dir, "server");
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(gw.reload(&config));
    let fresh = Https::connect(gw.ports.listen, "new.test", cfg.clone()).await;
    assert!(fresh.is_ok(), "the new certificate (for new.test) is served: {:?}", fresh.err());
    assert!(Https::connect(gw.ports.listen, "old.test", cfg.clone()).await.is_err(), "the old one is gone");
    assert_eq!(established.get("/2", &[]).await.unwrap().status.as_u16(), 200, "established connections stay");

    // A broken key file: the reload fails, located; the running certificate keeps serving.
    std::fs::write(gw.ports.dir.join("server.key"), "not a key").unwrap();
    assert!(!gw.reload(&config));
    assert!(gw.stderr().contains("listeners[0].tls.certificates[0].key"), "{}", gw.stderr());
    assert!(Https::connect(gw.ports.listen, "new.test", cfg.clone()).await.is_ok());
    assert_eq!(established.get("/3", &[]).await.unwrap().status.as_u16(), 200);
    assert_eq!(gw.metric("gateway_config_reloads_total", &[("result", "error")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_mtls_presents_our_certificate_and_reports_failures() {
    let ca = Ca::new("internal CA");
    let upstream_cert = ca.server(&["dogcatcher-api"]);
    let gateway_client = ca.client("kong-client");
    let rogue = Ca::new("rogue CA");
    let untrusted_client = rogue.client("kong-client");
    let dogcatcher = Upstream::start_tls("dogcatcher", server_config(&upstream_cert, Some(&ca)));
    let edge_ca = Ca::new("edge CA");
    let edge = edge_ca.server(&["localhost"]);
    let config = |p: &Ports, client: &str| {
        let upstream_tls = "tls = true\ntls_server_name = \"dogcatcher-api\"\nretries = 0";
        tls_config(p, CERT)
            .service_with(
                "dogcatcher",
                &[dogcatcher.addr],
                &format!("{upstream_tls}\ntls_ca = [\"internal-ca.crt\"]\n{client}"),
            )
            .service_with("wrong-ca", &[dogcatcher.addr], &format!("{upstream_tls}\ntls_ca = [\"rogue-ca.crt\"]"))
            .route("mtls", "dogcatcher", "paths = [\"/dogcatcher-mtls\"]\nstrip_path = true")
            .route("wrong-ca", "wrong-ca", r#"paths = ["/wrong-ca"]"#)
            .build()
    };
    let good = "tls_client_cert = \"kong-client.crt\"\ntls_client_key = \"kong-client.key\"";
    let gw = Gateway::start(|p| {
        edge.write(&p.dir, "server");
        ca.write(&p.dir, "internal-ca");
        rogue.write(&p.dir, "rogue-ca");
        gateway_client.write(&p.dir, "kong-client");
        untrusted_client.write(&p.dir, "untrusted-client");
        config(p, good)
    });
    let cfg = client_config(&edge_ca, None, &[]);
    let r = https_get(gw.ports.listen, cfg.clone(), "/dogcatcher-mtls/api/dogs/").await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{:?}", r.body);
    assert_eq!(r.json()["upstream"], "dogcatcher");
    assert_eq!(r.json()["path"], "/api/dogs/");
    let (_, parsed) = x509_parser::parse_x509_certificate(&gateway_client.der).unwrap();
    assert_eq!(
        gw.metric("gateway_upstream_tls_certificate_expiry_timestamp_seconds", &[("service", "dogcatcher")]),
        parsed.validity().not_after.timestamp() as f64
    );

    // The upstream does not trust gatewayd's certificate: 502, with the reason counted.
    let r = https_get(gw.ports.listen, cfg.clone(), "/wrong-ca/x").await.unwrap();
    assert_eq!(r.status.as_u16(), 502);
    assert_eq!(r.json()["error"], "upstream_tls");
    assert_eq!(
        gw.metric("gateway_upstream_tls_errors_total", &[("service", "wrong-ca"), ("reason", "unknown_ca")]),
        1.0
    );

    let bad = "tls_client_cert = \"untrusted-client.crt\"\ntls_client_key = \"untrusted-client.key\"";
    assert!(gw.reload(&config(&gw.ports, bad)));
    let r = https_get(gw.ports.listen, cfg.clone(), "/dogcatcher-mtls/api/dogs/").await.unwrap();
    assert_eq!(r.status.as_u16(), 502);
    assert_eq!(r.json()["error"], "upstream_tls");
    assert_eq!(
        gw.metric(
            "gateway_upstream_tls_errors_total",
            &[("service", "dogcatcher"), ("reason", "client_cert_rejected")]
        ),
        1.0
    );
    assert!(gw.reload(&config(&gw.ports, "")));
    let r = https_get(gw.ports.listen, cfg, "/dogcatcher-mtls/api/dogs/").await.unwrap();
    assert_eq!(r.status.as_u16(), 502);
    assert_eq!(
        gw.metric(
            "gateway_upstream_tls_errors_total",
            &[("service", "dogcatcher"), ("reason", "client_cert_required")]
        ),
        1.0
    );
    assert!(gw.stderr().contains("upstream refused the TLS session"), "{}", gw.stderr());
    assert_eq!(dogcatcher.requests(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn ktls_is_decided_at_startup_and_large_bodies_stream_intact() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let server = ca.server(&["localhost"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        tls_config(p, CERT).catch_all(u.addr).build()
    });
    let mut c = Https::connect(gw.ports.listen, "localhost", client_config(&ca, None, &[])).await.unwrap();
    let r = c.get("/bytes/4194304", &[]).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body.len(), 4 << 20);
    assert!(r.body.iter().all(|b| *b == b'x'));
    let supported = gw.series("gateway_ktls_supported", &[]);
    let log = gw.stderr();
    // What the kernel can do, asked independently of the daemon: its probe (setsockopt TCP_ULP
    // "tls") loads the tls module where the kernel has one, and /proc/net/tls_stat exists exactly
    // then. This host has no CONFIG_TLS, so here the fallback must be taken; the vm-test `ktls`
    // scenario proves the offload on kernels that have it.
    let kernel_has_tls = std::path::Path::new("/proc/net/tls_stat").exists();
    let mode = if kernel_has_tls {
        assert_eq!(supported, 1.0, "the kernel has kTLS but the daemon did not take it:\n{log}");
        assert!(log.contains("kTLS available"), "{log}");
        "ktls"
    } else {
        assert_eq!(supported, 0.0, "no kTLS in this kernel, yet the daemon says it has it");
        assert!(log.contains("kTLS unavailable"), "the fallback to rustls is said loudly:\n{log}");
        "userspace"
    };
    let n = eventually(Duration::from_secs(5), || {
        let n = gw.metric("gateway_tls_connections_total", &[("listener", "tls"), ("mode", mode)]);
        (n >= 1.0).then_some(n)
    });
    assert_eq!(n, Some(1.0), "{}", gw.metrics());
}

#[tokio::test(flavor = "multi_thread")]
async fn certs_init_makes_a_pki_for_mtls_with_curl() {
    let u = Upstream::start("u");
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["certs", "init", "--out"])
        .arg(dir.path())
        .args(["--cn", "dogcatcher-api", "--san", "localhost,127.0.0.1", "--days", "30", "--client-cn", "kong-client"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["ca.crt", "ca.key", "server.crt", "server.key", "client.crt", "client.key", "client.pem"] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let d = dir.path().display().to_string();
    let listener = format!(
        "certificates = [{{ cert = \"{d}/server.crt\", key = \"{d}/server.key\" }}]\nclient_auth = \"required\"\nclient_ca = [\"{d}/ca.crt\"]"
    );
    let gw = Gateway::start(|p| tls_config(p, &listener).catch_all(u.addr).build());
    let url = format!("https://127.0.0.1:{}/hello", gw.ports.listen.port());
    let (ok, body, err) = curl(&["--cacert", &format!("{d}/ca.crt"), "--cert", &format!("{d}/client.pem"), &url]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-client-cert-subject"][0], "CN=kong-client");
    let (_, body, _) = curl(&["--cacert", &format!("{d}/ca.crt"), &url]);
    assert!(body.contains("No required SSL certificate was sent"), "no client certificate: refused, {body}");
    let (ok, out) = s_client(
        gw.ports.listen,
        &[
            "-cert",
            &format!("{d}/client.crt"),
            "-key",
            &format!("{d}/client.key"),
            "-CAfile",
            &format!("{d}/ca.crt"),
            "-verify_return_error",
            "-brief",
        ],
    );
    assert!(ok, "{out}");
    // The same files again are refused without --force.
    let again = Command::new(BIN).args(["certs", "init", "--out"]).arg(dir.path()).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn check_config_locates_tls_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("edge CA");
    let (a, b) = (ca.server(&["a.test"]), ca.server(&["b.test"]));
    a.write(dir.path(), "a");
    b.write(dir.path(), "b");
    let text = r#"
[[listeners]]
name = "tls"
bind = "127.0.0.1:8443"

[listeners.tls]
certificates = [{ cert = "a.crt", key = "b.key" }, { cert = "missing.crt", key = "b.key" }]
client_auth = "optional"

[[services]]
name = "s"
targets = ["127.0.0.1:5000"]
tls_client_cert = "a.crt"

[[routes]]
name = "r"
service = "s"
client_cert = "consumer"

[[consumers]]
name = "p"
client_certs = [{ san = "partner.example" }]
"#;
    let file = dir.path().join("gatewayd.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "listeners[0].tls.certificates[0].key: ",
        "does not match the certificate",
        "listeners[0].tls.certificates[1].cert: cannot read",
        "listeners[0].tls.client_ca: client certificates need at least one CA bundle",
        "services[0].tls_client_cert: has no effect without `tls = true`",
        "consumers[0].client_certs[0]: invalid san",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// Waits (without blocking the runtime) until the server has ended `conn`.
async fn closed_by_server(conn: &Https) -> bool {
    let wait = async {
        while !conn.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), wait).await.is_ok()
}

/// Handshake failures are counted and logged (at info, as client-certificate refusals) with
/// their real reasons: a client that does not hold its certificate's key, a CA certificate
/// presented as the client's own, a certificate issued by one without the CA bit, a chain too
/// long to accept.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_failures_are_counted_and_logged_with_their_real_reasons() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    let listener = format!("{}\nclient_cert_refusal = \"handshake\"", mtls_listener("required", false));
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        tls_config(p, &listener).catch_all(u.addr).build()
    });
    let partner = clients.client("partner-a");
    let thief = clients.client("partner-b");
    let sub_ca = clients.intermediate("partner sub CA", true);
    let not_a_ca = clients.intermediate("partner-c", false);
    let issued_by_non_ca = not_a_ca.client("partner-d");
    let mut deep = vec![clients.intermediate("level 1", true)];
    for level in 2..=7 {
        let next = deep.last().unwrap().intermediate(&format!("level {level}"), true);
        deep.push(next);
    }
    let deep_leaf = deep.last().unwrap().client("partner-deep");
    let deep_chain =
        std::iter::once(deep_leaf.der.clone()).chain(deep.iter().rev().map(|c| c.der().clone())).collect::<Vec<_>>();
    let cases = [
        ("key_mismatch", client_config_presenting(&ca, vec![partner.der.clone()], &thief)),
        ("bad_ca", client_config_presenting(&ca, vec![sub_ca.der().clone()], &sub_ca.as_leaf())),
        (
            "bad_ca",
            client_config_presenting(
                &ca,
                vec![issued_by_non_ca.der.clone(), not_a_ca.der().clone()],
                &issued_by_non_ca,
            ),
        ),
        ("bad_chain", client_config_presenting(&ca, deep_chain, &deep_leaf)),
    ];
    for (i, (result, cfg)) in cases.into_iter().enumerate() {
        let before = handshakes(&gw, result);
        let r = https_get(gw.ports.listen, cfg, "/refused").await;
        assert!(r.is_err(), "case {i} ({result}): the handshake must fail, got {r:?}");
        await_handshakes(&gw, result, before + 1.0);
    }
    assert_eq!(handshakes(&gw, "unknown_ca") + handshakes(&gw, "other"), 0.0, "{}", gw.metrics());
    let log = gw.stderr();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("TLS handshake refused: client certificate")).collect();
    assert_eq!(refusals.len(), 4, "one info line per refusal:\n{log}");
    assert!(refusals[0].contains("key_mismatch") && refusals[0].contains("private key"), "{log}");
    assert!(refusals[1].contains("bad_ca") && refusals[3].contains("bad_chain"), "{log}");
    // The real partner still gets in.
    let r = https_get(gw.ports.listen, client_config(&ca, Some(&partner), &[]), "/ok").await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(u.requests(), 1);
}

/// With `client_cert_refusal = "status"` over HTTP/2, the 400 ends the connection (GOAWAY: no
/// more streams), and the audit line says the certificate failed and why.
#[tokio::test(flavor = "multi_thread")]
async fn an_h2_client_certificate_refusal_is_followed_by_goaway_and_audited_as_failed() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let rogue = Ca::new("rogue CA");
    let server = ca.server(&["localhost"]);
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        let audit = format!("path = \"{}\"", p.dir.join("audit.log").display());
        tls_config(p, &mtls_listener("required", false)).table("[audit]", &audit).catch_all(u.addr).build()
    });
    let untrusted = rogue.client("partner-a");
    for (cert, error, verify, failure) in [
        (Some(&untrusted), "client_cert_invalid", "failed", serde_json::json!("unknown_ca")),
        (None, "client_cert_required", "absent", serde_json::Value::Null),
    ] {
        let mut conn = Https::connect(gw.ports.listen, "localhost", client_config(&ca, cert, &["h2"])).await.unwrap();
        assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]));
        let r = conn.get("/first", &[]).await.unwrap();
        assert_eq!(r.status.as_u16(), 400);
        assert_eq!(r.json()["error"], error);
        assert!(closed_by_server(&conn).await, "{error}: the connection must end after the refusal");
        assert!(conn.get("/second", &[]).await.is_err(), "{error}: no more streams on a refused connection");

        let audit = gw.ports.dir.join("audit.log");
        let line = eventually(Duration::from_secs(5), || {
            gw.audit_lines(&audit).into_iter().find(|l| l["error"] == error && l["path"] == "/first")
        })
        .expect("audit line of the refusal");
        assert_eq!(line["client_cert_verify"], verify, "{line}");
        assert_eq!(line["client_cert_failure"], failure, "{line}");
    }
    assert_eq!(u.requests(), 0);
}

/// Session tickets belong to their listener: a session resumed without a certificate on an
/// open listener must not resume on one that requires certificates (rustls takes a resumed
/// session's client certificate from the ticket, so it would skip the requirement).
#[tokio::test(flavor = "multi_thread")]
async fn session_tickets_do_not_resume_on_a_listener_with_other_client_auth() {
    let u = Upstream::start("u");
    let ca = Ca::new("edge CA");
    let clients = Ca::new("partner CA");
    let server = ca.server(&["localhost"]);
    let partners = free_port();
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        let partners_tls = format!("{}\nclient_cert_refusal = \"handshake\"", mtls_listener("required", false));
        tls_config(p, CERT).add_listener("partners", partners, Some(&partners_tls)).catch_all(u.addr).build()
    });
    let cfg = client_config(&ca, None, &[]);
    let mut open = Https::connect(gw.ports.listen, "localhost", cfg.clone()).await.unwrap();
    assert_eq!(open.get("/open", &[]).await.unwrap().status.as_u16(), 200, "and its tickets arrive");
    let attempt = async {
        let mut c = Https::connect(partners, "localhost", cfg.clone()).await.map_err(|e| e.to_string())?;
        let resumed = c.resumed;
        c.get("/partners", &[]).await.map(|r| (resumed, r.status))
    };
    let r = attempt.await;
    assert!(r.is_err(), "without a certificate, and not by resuming another listener's session: {r:?}");
    assert_eq!(u.requests(), 1);
    // Resumption still works where the ticket came from.
    let again = Https::connect(gw.ports.listen, "localhost", cfg).await.unwrap();
    assert!(again.resumed, "tickets resume on their own listener");
}
