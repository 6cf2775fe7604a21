//! ACME against a real CA: Debian's `pebble` (Let's Encrypt's test CA) validating real
//! challenges against the gateway's own listeners — tls-alpn-01 on the TLS listener, http-01 on
//! the plain one — issuing short-lived certificates so renewal happens within the test, and
//! stopped to show that an outage keeps the old certificate in service.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::Duration,
};

use super::{
    dashboards::{RULES, dashboard, dashboard_exprs, healthy_rules, recording_rules, with_variables},
    pki::*,
    prometheus::Prometheus,
    support::*,
};

/// A running pebble whose validation ports are the gateway's listeners.
struct Pebble {
    child: Option<Child>,
    listen: SocketAddr,
    management: SocketAddr,
    /// Trusts pebble's own HTTPS (the directory).
    ca_file: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

impl Pebble {
    /// `validity`: the lifetime of the certificates it issues, in seconds.
    fn start(dir: &Path, http_port: u16, tls_port: u16, validity: u64) -> Pebble {
        let ca = Ca::new("pebble test listener CA");
        let ca_file = ca.write(dir, "pebble-ca");
        let (cert, key) = ca.server(&["localhost", "127.0.0.1"]).write(dir, "pebble");
        let (listen, management) = (free_port(), free_port());
        let config = dir.join("pebble.json");
        let json = serde_json::json!({ "pebble": {
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
            "certificateValidityPeriod": validity,
        }});
        std::fs::write(&config, json.to_string()).unwrap();
        let mut p = Pebble { child: None, listen, management, ca_file, log: dir.join("pebble.log"), config };
        p.restart();
        p
    }

    fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&self.config)
            // Validate at once, and for real (never skip validation).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            // Every request with a valid nonce succeeds: retries are the gateway's, not the test's.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble must be installed (cargo xtask deps)");
        self.child = Some(child);
        let up = eventually(Duration::from_secs(10), || std::net::TcpStream::connect(self.listen).ok());
        assert!(up.is_some(), "pebble did not listen:\n{}", self.log());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// New orders the CA has received.
    fn orders(&self) -> usize {
        self.log().matches("POST /order-plz").count()
    }

    fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// Pebble's root (regenerated at each start), to verify what the gateway serves.
    fn root(&self) -> rustls::pki_types::CertificateDer<'static> {
        use rustls::pki_types::pem::PemObject as _;
        let out = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.ca_file)
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .expect("curl must be installed (cargo xtask deps)");
        rustls::pki_types::CertificateDer::from_pem_slice(&out.stdout).expect("pebble root PEM")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The serial of the certificate the listener serves for `localhost`, if the handshake works.
fn served_serial(addr: SocketAddr) -> Option<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl must be installed (cargo xtask deps)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().strip_prefix("serial=").map(str::to_owned)
}

/// Two listeners on the ports pebble validates (plain for http-01, TLS for tls-alpn-01), a
/// catch-all user route, the ACME table and `extra` TOML.
fn config(p: &Ports, plain: SocketAddr, tls: SocketAddr, upstream: SocketAddr, acme: &str, extra: &str) -> String {
    ConfigBuilder::new(p)
        .drain_timeout("5s")
        .listener("plain", plain)
        .add_listener("tls", tls, Some(&format!("acme = {{ {acme} }}")))
        .catch_all(upstream)
        .toml(extra)
        .build()
}

fn acme_table(pebble: &Pebble, state: &Path, challenge: &str) -> String {
    format!(
        r#"directory = "{dir}", domains = ["localhost"], challenge = "{challenge}", state_dir = "{state}", directory_ca = "{ca}", contact = ["mailto:ops@example.com"], retry_min = "1s", retry_max = "2s""#,
        dir = pebble.directory(),
        state = state.display(),
        ca = pebble.ca_file.display(),
    )
}

fn orders(gw: &Gateway, result: &str) -> f64 {
    gw.metric("gateway_acme_orders_total", &[("listener", "tls"), ("result", result)])
}

fn await_orders(gw: &Gateway, result: &str, n: f64) {
    let ok = eventually(Duration::from_secs(45), || (orders(gw, result) >= n).then_some(()));
    assert!(ok.is_some(), "expected {n} {result} orders:\n{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_renews_in_place_and_a_ca_outage_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    // 30 s certificates: renewed 20 s after issuance.
    let mut pebble = Pebble::start(dir.path(), plain.port(), tls.port(), 30);
    let upstream = Upstream::start("app");
    let state = dir.path().join("state");
    let table = acme_table(&pebble, &state, "tls-alpn-01");
    let gw = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table, ""));
    // The dashboard's ACME panels and the ACME alerts are read from a real Prometheus.
    let prometheus = Prometheus::start(gw.ports.metrics, &[Path::new(RULES)]);
    await_orders(&gw, "ok", 1.0);
    let first = served_serial(tls).expect("the ordered certificate is served");
    // It verifies against pebble's root for the ordered name.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pebble.root()).unwrap();
    let client = Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth());
    let mut held = Https::connect(tls, "localhost", client.clone()).await.expect("handshake with the ACME certificate");
    assert_eq!(held.get("/x", &[]).await.expect("request").status, 200);
    for f in ["cert.pem", "key.pem"] {
        let stored = std::fs::read_dir(&state).unwrap().flatten().find(|e| e.path().is_dir()).unwrap().path().join(f);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777, 0o600, "{}", stored.display());
    }
    let expiry = gw.series("gateway_acme_certificate_expiry_timestamp_seconds", &[("listener", "tls")]);
    let next = gw.series("gateway_acme_next_renewal_timestamp_seconds", &[("listener", "tls")]);
    assert!(next < expiry, "renewal ({next}) is planned before expiry ({expiry})");

    // Renewal at 2/3 of the lifetime: a new certificate, swapped in without a restart; the
    // connection opened on the old one keeps working.
    await_orders(&gw, "ok", 2.0);
    let second = eventually(Duration::from_secs(5), || served_serial(tls).filter(|s| *s != first));
    let second = second.expect("the renewed certificate is served");
    assert_eq!(held.get("/x", &[]).await.expect("the old connection survives the swap").status, 200);
    assert_eq!(https_get(tls, client.clone(), "/x").await.expect("new handshake").status, 200);

    // The CA goes away: the renewal fails, is counted and retried; the listener keeps serving
    // the certificate it has.
    pebble.stop();
    await_orders(&gw, "error", 2.0);
    assert_eq!(orders(&gw, "ok"), 2.0);
    assert_eq!(served_serial(tls).as_deref(), Some(second.as_str()), "the old certificate keeps serving");
    assert_eq!(held.get("/x", &[]).await.expect("still serving").status, 200);
    assert!(gw.stderr().contains("ACME order failed"), "{}", gw.stderr());

    prometheus.wait_scrapes(2.0);
    healthy_rules(&prometheus, recording_rules().len());
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut exprs);
    let acme: Vec<String> = exprs.iter().filter(|e| e.contains("gateway_acme_")).map(|e| with_variables(e)).collect();
    assert!(acme.len() >= 3, "{acme:?}");
    for expr in &acme {
        assert!(!prometheus.query(expr).is_empty(), "no data: {expr}\n{}", prometheus.targets());
    }
    let errors = prometheus.query("sum(increase(gateway_acme_orders_total{result=\"error\"}[1h]))");
    assert!(!errors.is_empty(), "the failed renewal is visible to Prometheus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_answered_ahead_of_user_routes_and_a_restart_reuses_the_stored_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), plain.port(), tls.port(), 3600);
    // The catch-all route would send /.well-known/acme-challenge/… here: the challenge must win.
    let upstream = Upstream::start("app");
    let state = dir.path().join("state");
    let table = acme_table(&pebble, &state, "http-01");
    let mut gw = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table, ""));
    await_orders(&gw, "ok", 1.0);
    assert_eq!(orders(&gw, "error"), 0.0, "{}", gw.stderr());
    let first = served_serial(tls).expect("the ordered certificate is served");
    assert_eq!(upstream.requests(), 0, "the challenge never reached the user route");
    assert_eq!(pebble.orders(), 1);
    gw.signal(nix::sys::signal::Signal::SIGTERM);
    gw.wait_exit(Duration::from_secs(15));
    drop(gw);

    // A restart serves the stored certificate at once and orders nothing: the renewal is
    // planned (the gauge appears) for later, and the CA saw no new order.
    let gw = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table, ""));
    assert_eq!(served_serial(tls).as_deref(), Some(first.as_str()));
    let planned = eventually(Duration::from_secs(10), || {
        series_value(&gw.metrics(), "gateway_acme_next_renewal_timestamp_seconds", &[("listener", "tls")])
    });
    let expiry = gw.series("gateway_acme_certificate_expiry_timestamp_seconds", &[("listener", "tls")]);
    assert!(planned.expect("renewal planned") < expiry);
    assert_eq!(gw.metric("gateway_acme_orders_total", &[]), 0.0, "{}", gw.stderr());
    assert_eq!(pebble.orders(), 1, "no new order after the restart");

    // A reload that leaves `acme` as it is keeps the renewal task and the certificate.
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(gw.reload(&text), "{}", gw.stderr());
    assert_eq!(served_serial(tls).as_deref(), Some(first.as_str()));
    assert_eq!(gw.metric("gateway_acme_orders_total", &[]), 0.0, "{}", gw.stderr());
    assert_eq!(pebble.orders(), 1, "no new order after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_orders_once_through_redis_and_respects_another_nodes_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(dir.path(), plain.port(), tls.port(), 3600);
    let (upstream, redis) = (Upstream::start("app"), RedisServer::start());
    let redis_toml = format!("[redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n", redis.url());
    // Node A answers on the ports pebble validates, and orders.
    let table_a = acme_table(&pebble, &dir.path().join("state-a"), "http-01");
    let a = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table_a, &redis_toml));
    await_orders(&a, "ok", 1.0);
    let serial = served_serial(tls).expect("node A serves its certificate");

    // Node B (own ports, own state directory) finds A's certificate in Redis: no order of its own.
    let (plain_b, tls_b) = (free_port(), free_port());
    let table_b = acme_table(&pebble, &dir.path().join("state-b"), "http-01");
    let b = Gateway::start(|p| config(p, plain_b, tls_b, upstream.addr, &table_b, &redis_toml));
    let shared = eventually(Duration::from_secs(10), || served_serial(tls_b));
    assert_eq!(shared.as_deref(), Some(serial.as_str()), "node B serves the fleet's certificate");
    assert!(b.stderr().contains("source=\"redis\""), "{}", b.stderr());
    assert_eq!(b.metric("gateway_acme_orders_total", &[]), 0.0, "{}", b.stderr());
    assert_eq!(pebble.orders(), 1, "one order for the fleet");

    // Without a shared certificate and with the lock held elsewhere, node C waits instead of
    // ordering.
    let keys = redis_command(redis.port, "KEYS *acme:cert:*").unwrap();
    let cert_key = keys.lines().find(|l| l.contains("acme:cert:")).expect("the shared certificate key").to_owned();
    redis_command(redis.port, &format!("DEL {cert_key}")).unwrap();
    let lock_key = cert_key.replace("acme:cert:", "acme:lock:");
    assert!(redis_command(redis.port, &format!("SET {lock_key} other-node PX 60000")).unwrap().contains("OK"));
    let (plain_c, tls_c) = (free_port(), free_port());
    let table_c = acme_table(&pebble, &dir.path().join("state-c"), "http-01");
    let c = Gateway::start(|p| config(p, plain_c, tls_c, upstream.addr, &table_c, &redis_toml));
    let waiting = eventually(Duration::from_secs(10), || {
        c.stderr().contains("another node holds the ACME order lock").then_some(())
    });
    assert!(waiting.is_some(), "{}", c.stderr());
    assert_eq!(c.metric("gateway_acme_orders_total", &[]), 0.0, "{}", c.stderr());
    assert_eq!(pebble.orders(), 1, "no order while another node holds the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_down_at_startup_leaves_the_listener_up_and_a_restarted_ca_is_ordered_from() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, tls) = (free_port(), free_port());
    let mut pebble = Pebble::start(dir.path(), plain.port(), tls.port(), 3600);
    let upstream = Upstream::start("app");
    let table = acme_table(&pebble, &dir.path().join("state"), "tls-alpn-01");
    // Registered with this CA first, so the stored account is one the restarted CA forgets.
    let gw = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table, ""));
    await_orders(&gw, "ok", 1.0);
    drop(gw);
    // Keep the account, lose the certificate.
    let state = dir.path().join("state");
    for entry in std::fs::read_dir(&state).unwrap().flatten().filter(|e| e.path().is_dir()) {
        std::fs::remove_dir_all(entry.path()).unwrap();
    }
    pebble.stop();

    // No certificate and no CA: the daemon is ready, the plain listener serves, orders fail.
    let gw = Gateway::start(|p| config(p, plain, tls, upstream.addr, &table, ""));
    await_orders(&gw, "error", 1.0);
    assert!(raw_get(plain, "/x").unwrap().starts_with("HTTP/1.1 200"), "the plain listener serves");
    assert_eq!(served_serial(tls), None, "no certificate to serve yet");

    // The CA is back and has forgotten every account: the stored one is replaced by a new
    // registration, the retry orders, and the certificate is served.
    pebble.restart();
    await_orders(&gw, "ok", 1.0);
    assert!(served_serial(tls).is_some(), "{}", gw.stderr());
    assert!(gw.stderr().contains("does not know the stored ACME account"), "{}", gw.stderr());
}
