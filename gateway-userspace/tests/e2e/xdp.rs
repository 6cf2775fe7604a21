//! The XDP/TC guard in front of the real gatewayd: the daemon runs in one private network
//! namespace with the guard on its veth end, clients live in the other with several addresses.
//! One address floods and is dropped after its burst while another keeps getting 200; a
//! deny-listed address gets nothing; an allow-listed one floods and is still served — in native
//! XDP, generic XDP and TC mode. Also: `gatewayd xdp block|unblock|top`, the L7 → L3 feedback
//! loop, and pins that keep the guard (and its buckets and counters) across a restart while
//! locking out a second instance. Needs root.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway_userspace::ebpf::remove_stale_pins;
use socket2::{Domain, Socket, Type};

use super::{
    dashboards::{RULES, dashboard, dashboard_exprs, healthy_rules, recording_rules, with_variables},
    netns::{GW_IF, Netns, VethPair},
    prometheus::Prometheus,
    support::{BIN, ConfigBuilder, Ports, eventually, metric_value, raw_get},
};

pub(super) const HTTP_PORT: u16 = 8080;
const METRICS: &str = "127.0.0.1:9090";

/// gatewayd running inside a namespace, with the demo upstream behind `/demo`.
pub(super) struct NsGateway<'a> {
    ns: &'a Netns,
    child: Option<Child>,
    dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl<'a> NsGateway<'a> {
    fn config(listen: Ipv4Addr, dir: &std::path::Path, server: &str, xdp: &str) -> String {
        let demo: SocketAddr = "127.0.0.1:8081".parse().expect("an address");
        let ports = Ports {
            listen: SocketAddr::from((listen, HTTP_PORT)),
            metrics: METRICS.parse().expect("an address"),
            dir: dir.to_owned(),
        };
        ConfigBuilder::new(&ports)
            .workers(2)
            .drain_timeout("2s")
            .server(server)
            .admin_socket(&dir.join("admin.sock"))
            .table("[demo]", &format!("enabled = true\nbind = \"{demo}\""))
            .service("demo", &[demo])
            .route("demo", "demo", "paths = [\"/demo\"]\nstrip_path = true\nauth = \"none\"")
            .toml(xdp)
            .build()
    }

    /// Starts gatewayd and waits until it is ready; `Err` with its stderr if it exits first.
    fn try_start(ns: &'a Netns, listen: Ipv4Addr, xdp: &str) -> Result<NsGateway<'a>, String> {
        Self::try_start_with(ns, listen, "", xdp)
    }

    /// Like `try_start`, with extra `[server]` keys.
    pub(super) fn try_start_with(
        ns: &'a Netns,
        listen: Ipv4Addr,
        server: &str,
        xdp: &str,
    ) -> Result<NsGateway<'a>, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gatewayd.toml");
        std::fs::write(&config_path, Self::config(listen, dir.path(), server, xdp)).expect("config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = ns
            .command(BIN)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn gatewayd");
        let mut gw = NsGateway { ns, child: Some(child), dir, stderr_path };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = gw.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                gw.child = None;
                return Err(format!("gatewayd exited with {status}:\n{}", gw.stderr()));
            }
            let ready = ns.run(|| raw_get(METRICS.parse().unwrap(), "/readyz"));
            if ready.is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return Ok(gw);
            }
            if Instant::now() > deadline {
                return Err(format!("gatewayd not ready in time:\n{}", gw.stderr()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub(super) fn start(ns: &'a Netns, listen: Ipv4Addr, xdp: &str) -> NsGateway<'a> {
        Self::try_start(ns, listen, xdp).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The directory of its config and admin socket (`admin.sock`).
    pub(super) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub(super) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The whole metrics page.
    pub(super) fn scrape(&self) -> String {
        self.ns.run(|| raw_get(METRICS.parse().unwrap(), "/metrics")).expect("scrape")
    }

    pub(super) fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.ns.run(|| raw_get(METRICS.parse().unwrap(), "/metrics")).expect("scrape");
        metric_value(&text, name, labels)
    }

    fn packets(&self, verdict: &str) -> f64 {
        self.metric("gateway_xdp_packets_total", &[("iface", GW_IF), ("verdict", verdict)])
    }

    /// `gatewayd --admin-socket … ARGS` (the admin socket is a path: no namespace needed).
    pub(super) fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--admin-socket")
            .arg(self.dir.path().join("admin.sock"))
            .args(args)
            .output()
            .expect("run gatewayd cli")
    }

    /// Rewrites the `[xdp]` part of the config, sends SIGHUP and waits for the reload to count.
    fn reload(&self, listen: Ipv4Addr, xdp: &str) -> bool {
        let ok_before = self.metric("gateway_config_reloads_total", &[("result", "ok")]);
        let err_before = self.metric("gateway_config_reloads_total", &[("result", "error")]);
        let config = Self::config(listen, self.dir.path(), "", xdp);
        std::fs::write(self.dir.path().join("gatewayd.toml"), config).expect("config");
        let pid = self.child.as_ref().expect("running").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        eventually(Duration::from_secs(10), || {
            let ok = self.metric("gateway_config_reloads_total", &[("result", "ok")]);
            let err = self.metric("gateway_config_reloads_total", &[("result", "error")]);
            (ok > ok_before || err > err_before).then_some(ok > ok_before)
        })
        .unwrap_or_else(|| panic!("reload not counted:\n{}", self.stderr()))
    }

    fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                // The child was taken out of `self`: kill it here, or nothing would.
                let _ = child.kill();
                let _ = child.wait();
                panic!("gatewayd did not stop within 15 s of SIGTERM (killed):\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NsGateway<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET `path` from source address `src`: the status, or why there was none.
pub(super) fn get_from(
    ns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    get_from_with(ns, src, dst, path, "", timeout)
}

/// Like `get_from`, with extra header lines (each ending in CRLF).
fn get_from_with(
    ns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddr,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let (path, headers) = (path.to_owned(), headers.to_owned());
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        s.bind(&SocketAddr::from((src, 0)).into()).map_err(|e| format!("bind {src}: {e}"))?;
        s.connect_timeout(&dst.into(), timeout).map_err(|e| format!("connect from {src}: {e}"))?;
        let mut stream: TcpStream = s.into();
        stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{headers}\r\n");
        stream.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        stream.read_to_end(&mut out).map_err(|e| format!("read from {src}: {e}"))?;
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {text:?}"))
    })
}

/// UDP datagrams from `src` to the gateway's address, up to about 20000 per second, until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Flood {
    fn start(ns: &Netns, src: Ipv4Addr, dst: Ipv4Addr) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = ns.spawn(move || {
            let socket = UdpSocket::bind((src, 0)).expect("bind flood source");
            // Evenly spread (not bursts with pauses, which would leave the bucket room to refill
            // for the flooder's own connection attempts).
            while !flag.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let _ = socket.send_to(b"flood", (dst, 9));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Flood { stop, thread: Some(thread) }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A pin directory of its own, removed (links detached) at the end of the test.
pub(super) struct PinDir(pub(super) PathBuf);

impl PinDir {
    pub(super) fn new(tag: &str) -> PinDir {
        PinDir(PathBuf::from(format!("/sys/fs/bpf/gwtest-{}-{tag}", std::process::id())))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = remove_stale_pins(&self.0) {
            eprintln!("cleanup {}: {e}", self.0.display());
        }
    }
}

fn guard_attached(ns: &Netns) -> bool {
    let link = ns.ip_output(&["link", "show", "dev", GW_IF]);
    let tc = ns.run(|| Command::new("tc").args(["filter", "show", "dev", GW_IF, "ingress"]).output());
    link.contains("xdp") || tc.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("gateway_tc"))
}

pub(super) const SHORT: Duration = Duration::from_secs(1);

fn flood_dropped_others_served(mode: &str, tag: &str, subnet: u8) {
    let net = VethPair::new(tag, subnet, 4);
    let [flooder, client, denied, allowed] = [net.clients[0], net.clients[1], net.clients[2], net.clients[3]];
    let pins = PinDir::new(tag);
    let xdp = format!(
        r#"
[xdp]
enabled = true
interfaces = ["{GW_IF}"]
mode = "{mode}"
pin_path = "{pins}"
deny = ["{denied}/32"]
allow = ["{allowed}"]

[xdp.rate_limit]
rate = 50
burst = 100

[xdp.syn_limit]
rate = 20
burst = 40
"#,
        pins = pins.0.display()
    );
    let mut gw = NsGateway::start(&net.gw, net.gw_addr, &xdp);
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(gw.metric("gateway_xdp_mode", &[("iface", GW_IF), ("mode", mode)]), 1.0, "{}", gw.stderr());
    let log = gw.stderr();
    assert!(log.lines().any(|l| l.contains("xdp guard attached") && l.contains(mode)), "attach not logged:\n{log}");
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200));

    let _floods = [Flood::start(&net.peer, flooder, net.gw_addr), Flood::start(&net.peer, allowed, net.gw_addr)];
    eventually(Duration::from_secs(10), || (gw.packets("drop_ratelimit") > 100.0).then_some(()))
        .unwrap_or_else(|| panic!("{mode}: the flood was not rate limited:\n{}", gw.stderr()));
    assert!(get_from(&net.peer, flooder, dst, "/demo/hello", SHORT).is_err(), "{mode}: the flooding source was served");
    for _ in 0..3 {
        assert_eq!(
            get_from(&net.peer, client, dst, "/demo/hello", SHORT),
            Ok(200),
            "{mode}: the quiet source was refused"
        );
    }
    assert!(get_from(&net.peer, denied, dst, "/demo/hello", SHORT).is_err(), "{mode}: the denied source was served");
    assert!(gw.packets("drop_denylist") >= 1.0, "{mode}: no drop_denylist counted");
    assert_eq!(
        get_from(&net.peer, allowed, dst, "/demo/hello", SHORT),
        Ok(200),
        "{mode}: the allow-listed source was refused"
    );
    assert!(gw.packets("pass_allowlist") > 100.0, "{mode}: the allow-listed flood was not counted as pass_allowlist");
    // Every source that passed the new-source guard is tracked (the count is refreshed by the
    // guard's upkeep thread, hence the wait).
    let tracked = eventually(Duration::from_secs(10), || {
        let n = gw.metric("gateway_xdp_tracked_sources", &[]);
        (n >= 1.0).then_some(n)
    });
    assert!(tracked.is_some(), "{mode}: no tracked source counted:\n{}", gw.stderr());

    assert!(gw.stop().success(), "{mode}: unclean exit:\n{}", gw.stderr());
    assert!(!guard_attached(&net.gw), "{mode}: the guard stayed attached after a normal stop");
}

#[test]
fn flood_is_dropped_while_others_are_served_native_xdp() {
    flood_dropped_others_served("xdp-driver", "fd", 31);
}

#[test]
fn flood_is_dropped_while_others_are_served_generic_xdp() {
    flood_dropped_others_served("xdp-skb", "fs", 32);
}

#[test]
fn flood_is_dropped_while_others_are_served_tc() {
    flood_dropped_others_served("tc", "ft", 33);
}

/// The guard in skb mode with a configured deny entry and a 50/s (burst 100) rate limit.
pub(super) fn rate_limited_guard(pins: &PinDir) -> String {
    format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\ndeny = [\"192.0.2.0/24\"]\n\n[xdp.rate_limit]\nrate = 50\nburst = 100\n",
        pins.0.display()
    )
}

/// `gatewayd xdp block ADDR --for 10m`, which must succeed.
fn block_for_10m(gw: &NsGateway<'_>, addr: Ipv4Addr) -> Output {
    let out = gw.cli(&["xdp", "block", &addr.to_string(), "--for", "10m"]);
    assert!(out.status.success(), "block failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn admin_blocks_unblocks_and_lists_top_offenders() {
    let net = VethPair::new("adm", 34, 2);
    let [target, flooder] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("adm");
    let gw = NsGateway::start(&net.gw, net.gw_addr, &rate_limited_guard(&pins));
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200));
    let status: serde_json::Value = serde_json::from_slice(&gw.cli(&["status"]).stdout).expect("status JSON");
    assert_eq!(status["xdp"], serde_json::json!([{"iface": GW_IF, "mode": "xdp-skb"}]), "{status}");

    let out = block_for_10m(&gw, target);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON answer");
    assert_eq!(answer["cidr"], format!("{target}/32"));
    assert_eq!(answer["expires_in_secs"], 600);
    assert!(get_from(&net.peer, target, dst, "/demo/hello", SHORT).is_err(), "blocked source still served");
    assert_eq!(gw.metric("gateway_xdp_deny_entries", &[("origin", "admin")]), 1.0);
    assert_eq!(gw.metric("gateway_xdp_blocks_total", &[("origin", "admin")]), 1.0);

    {
        let _flood = Flood::start(&net.peer, flooder, net.gw_addr);
        eventually(Duration::from_secs(10), || (gw.packets("drop_ratelimit") > 50.0).then_some(()))
            .expect("flood rate limited");
    }
    let top = gw.cli(&["xdp", "top", "-n", "5"]);
    assert!(top.status.success(), "top failed: {}", String::from_utf8_lossy(&top.stderr));
    let table = String::from_utf8_lossy(&top.stdout);
    let flooder_line = table.lines().nth(2).unwrap_or_default();
    assert!(flooder_line.starts_with(&format!("{flooder}/32")) && flooder_line.contains("rate_limit"), "top:\n{table}");
    assert!(table.lines().any(|l| l.starts_with(&format!("{target}/32")) && l.contains("admin")), "top:\n{table}");

    let refused = gw.cli(&["xdp", "unblock", "192.0.2.0/24"]);
    assert!(!refused.status.success(), "a config entry was unblocked at run time");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("configuration"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = gw.cli(&["xdp", "unblock", &target.to_string()]);
    assert!(out.status.success(), "unblock failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200), "unblocked source refused");
    let bad = gw.cli(&["xdp", "block", "not-a-cidr"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invalid CIDR"));

    let log = gw.stderr();
    assert!(log.lines().any(|l| l.contains("xdp: blocked") && l.contains("admin")), "{log}");
    assert!(log.contains("xdp: unblocked"), "{log}");
}

/// The dashboard's XDP panels and the XDP recording rule, evaluated by a real Prometheus that
/// runs beside the guarded gatewayd in its namespace: packets by verdict (a flood rate limited),
/// tracked sources, blocks and deny entries (an admin block) all return data.
#[test]
fn xdp_dashboard_panels_have_data_in_a_real_prometheus() {
    let net = VethPair::new("dash", 38, 2);
    let [target, flooder] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("dash");
    let gw = NsGateway::start(&net.gw, net.gw_addr, &rate_limited_guard(&pins));
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(get_from(&net.peer, target, dst, "/demo/hello", SHORT), Ok(200));
    let rules = [std::path::Path::new(RULES)];
    let prometheus =
        Prometheus::start_in(Some(&net.gw), "127.0.0.1:9091".parse().unwrap(), METRICS.parse().unwrap(), &rules);
    block_for_10m(&gw, target);
    {
        let _flood = Flood::start(&net.peer, flooder, net.gw_addr);
        eventually(Duration::from_secs(10), || (gw.packets("drop_ratelimit") > 50.0).then_some(()))
            .expect("flood rate limited");
        eventually(Duration::from_secs(15), || (gw.metric("gateway_xdp_tracked_sources", &[]) >= 1.0).then_some(()))
            .expect("tracked sources counted");
        prometheus.wait_scrapes(3.0);
    }
    let records = recording_rules();
    healthy_rules(&prometheus, records.len());
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard()["panels"], &mut exprs);
    let xdp_exprs: Vec<String> =
        exprs.iter().chain(&records).filter(|e| e.contains("xdp")).map(|e| with_variables(e)).collect();
    assert!(xdp_exprs.len() >= 5, "{xdp_exprs:?}");
    for expr in &xdp_exprs {
        assert!(!prometheus.query(expr).is_empty(), "no data: {expr}\n{}", prometheus.targets());
    }
}

#[test]
fn repeat_offenders_are_blocked_by_the_feedback_loop_then_released() {
    let net = VethPair::new("fb", 35, 2);
    let [scanner, client] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("fb");
    let xdp = format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\n\n\
         [xdp.feedback]\nenabled = true\nthreshold = 5\nwindow = \"1m\"\nblock_for = \"3s\"\nreasons = [\"not_found\"]\n",
        pins.0.display()
    );
    let gw = NsGateway::start(&net.gw, net.gw_addr, &xdp);
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    for i in 0..4 {
        assert_eq!(get_from(&net.peer, scanner, dst, &format!("/wp-admin/{i}"), SHORT), Ok(404));
    }
    assert_eq!(get_from(&net.peer, scanner, dst, "/demo/hello", SHORT), Ok(200), "blocked before the threshold");
    assert_eq!(get_from(&net.peer, scanner, dst, "/.env", SHORT), Ok(404));
    eventually(Duration::from_secs(5), || {
        (gw.metric("gateway_xdp_blocks_total", &[("origin", "feedback")]) == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no feedback block:\n{}", gw.stderr()));
    assert!(get_from(&net.peer, scanner, dst, "/demo/hello", SHORT).is_err(), "the repeat offender is still served");
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200), "an innocent source was refused");
    assert!(gw.stderr().contains("repeat offender"), "{}", gw.stderr());
    // The cool-down ends by itself.
    eventually(Duration::from_secs(10), || {
        get_from(&net.peer, scanner, dst, "/demo/hello", SHORT).ok().filter(|s| *s == 200)
    })
    .unwrap_or_else(|| panic!("the block did not expire:\n{}", gw.stderr()));
    eventually(Duration::from_secs(5), || gw.stderr().contains("block expired").then_some(()))
        .unwrap_or_else(|| panic!("expiry not logged:\n{}", gw.stderr()));
}

/// The feedback loop blocks what the guard sees, the TCP peer: a forged X-Forwarded-For never
/// redirects a block to another address, and a trusted proxy (whose clients' offences arrive
/// from its address) is never blocked.
#[test]
fn feedback_blocks_the_peer_never_a_forwarded_address_nor_a_trusted_proxy() {
    let net = VethPair::new("fp", 36, 2);
    let [proxy, scanner] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("fp");
    let xdp = format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\n\n\
         [xdp.feedback]\nenabled = true\nthreshold = 3\nwindow = \"1m\"\nblock_for = \"1h\"\nreasons = [\"not_found\"]\n",
        pins.0.display()
    );
    let server = format!("trusted_proxies = [\"{proxy}/32\"]");
    let gw = NsGateway::try_start_with(&net.gw, net.gw_addr, &server, &xdp).unwrap_or_else(|e| panic!("{e}"));
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    // Offences through the trusted proxy, each naming a forged hop and a real client: more than
    // the threshold, and nobody is blocked (blocking the proxy would block all its clients).
    for i in 0..5 {
        let xff = format!("X-Forwarded-For: 192.0.2.{i}, 198.51.100.7\r\n");
        assert_eq!(get_from_with(&net.peer, proxy, dst, &format!("/wp-admin/{i}"), &xff, SHORT), Ok(404));
    }
    assert_eq!(get_from(&net.peer, proxy, dst, "/demo/hello", SHORT), Ok(200), "the trusted proxy was blocked");
    // An untrusted scanner that forges X-Forwarded-For is blocked under its own address.
    for i in 0..3 {
        let xff = format!("X-Forwarded-For: 203.0.113.{i}\r\n");
        assert_eq!(get_from_with(&net.peer, scanner, dst, &format!("/.env/{i}"), &xff, SHORT), Ok(404));
    }
    eventually(Duration::from_secs(5), || {
        (gw.metric("gateway_xdp_blocks_total", &[("origin", "feedback")]) == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no feedback block:\n{}", gw.stderr()));
    let log = gw.stderr();
    assert!(log.contains(&scanner.to_string()), "the block names the scanner:\n{log}");
    for forged in ["192.0.2.", "198.51.100.7", "203.0.113."] {
        assert!(!log.contains(forged), "a forwarded address ({forged}) reached the feedback loop:\n{log}");
    }
    assert!(get_from(&net.peer, scanner, dst, "/demo/hello", SHORT).is_err(), "the scanner was not blocked");
    assert_eq!(get_from(&net.peer, proxy, dst, "/demo/hello", SHORT), Ok(200), "the trusted proxy was blocked");
    assert_eq!(gw.metric("gateway_xdp_blocks_total", &[("origin", "feedback")]), 1.0, "only the scanner");
}

#[test]
fn pins_keep_the_guard_across_a_restart_and_lock_out_a_second_instance() {
    let net = VethPair::new("rs", 36, 1);
    let flooder = net.clients[0];
    let pins = PinDir::new("rs");
    let xdp = |keep: bool, enabled: bool| {
        format!(
            "[xdp]\nenabled = {enabled}\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\n\
             keep_attached_on_restart = {keep}\n\n[xdp.rate_limit]\nrate = 50\nburst = 100\n",
            pins.0.display()
        )
    };
    let mut first = NsGateway::start(&net.gw, net.gw_addr, &xdp(true, true));
    {
        let _flood = Flood::start(&net.peer, flooder, net.gw_addr);
        eventually(Duration::from_secs(10), || (first.packets("drop_ratelimit") > 100.0).then_some(()))
            .expect("flood rate limited");
    }
    let dropped = first.packets("drop_ratelimit");

    let other = Netns::new("rs2");
    match NsGateway::try_start(&other, Ipv4Addr::LOCALHOST, &xdp(true, true).replace(GW_IF, "lo")) {
        Ok(_) => panic!("a second instance started on a pin directory in use"),
        Err(stderr) => assert!(stderr.contains("in use by another gatewayd"), "{stderr}"),
    }

    assert!(first.stop().success(), "{}", first.stderr());
    assert!(first.stderr().contains("left attached"), "{}", first.stderr());
    assert!(guard_attached(&net.gw), "the guard was detached although keep_attached_on_restart is set");

    let mut second = NsGateway::start(&net.gw, net.gw_addr, &xdp(false, true));
    assert!(second.stderr().contains("adopted the guard's pinned link"), "{}", second.stderr());
    assert!(second.packets("drop_ratelimit") >= dropped, "pinned counters were reset");
    assert!(second.stop().success());
    assert!(!guard_attached(&net.gw), "keep_attached_on_restart = false, yet the guard stayed");

    // A run that keeps it, then a run with the guard disabled: the stale guard is removed.
    let mut third = NsGateway::start(&net.gw, net.gw_addr, &xdp(true, true));
    assert!(third.stop().success());
    assert!(guard_attached(&net.gw));
    let fourth = NsGateway::start(&net.gw, net.gw_addr, &xdp(true, false));
    assert!(fourth.stderr().contains("removed the guard an earlier run left attached"), "{}", fourth.stderr());
    assert!(!guard_attached(&net.gw));
}

#[test]
fn reload_updates_lists_and_limits_in_place() {
    let net = VethPair::new("rl", 37, 2);
    let [client, other] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("rl");
    let xdp = |deny: &str, syn_burst: u32| {
        format!(
            "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\ndeny = [{deny}]\n\n\
             [xdp.syn_limit]\nrate = 1\nburst = {syn_burst}\n",
            pins.0.display()
        )
    };
    let gw = NsGateway::start(&net.gw, net.gw_addr, &xdp("", 100));
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200));

    // Deny the client: applied to the map, nothing reattached.
    assert!(gw.reload(net.gw_addr, &xdp(&format!("\"{client}/32\""), 100)), "{}", gw.stderr());
    assert!(get_from(&net.peer, client, dst, "/demo/hello", SHORT).is_err(), "the newly denied source is still served");
    assert_eq!(get_from(&net.peer, other, dst, "/demo/hello", SHORT), Ok(200));
    let log = gw.stderr();
    assert!(
        log.lines().any(|l| l.contains("settings and lists updated") && l.contains("deny_added") && l.contains('1')),
        "{log}"
    );
    assert_eq!(log.matches("xdp guard attached").count(), 1, "the guard was reattached:\n{log}");

    // Lift the deny, and tighten the SYN burst to one: new connections in a row soon meet the
    // empty bucket (rate 1/s, burst 1) where burst 100 let every one through. The SYN drop
    // counter moving is the event; how many pass first depends only on the machine's speed.
    assert!(gw.reload(net.gw_addr, &xdp("", 1)));
    let syn_drops = gw.packets("drop_syn_ratelimit");
    let mut served = 0u64;
    let dropped = (0..10).any(|_| {
        let r = get_from(&net.peer, client, dst, "/demo/hello", SHORT);
        served += u64::from(r == Ok(200));
        r.is_err()
    });
    assert!(served >= 1, "the lifted deny still applies");
    assert!(dropped, "a SYN burst of 1 let ten connections through in a row");
    assert!(gw.packets("drop_syn_ratelimit") > syn_drops, "the refused connection was not the SYN bucket's drop");

    // A bad section is refused and changes nothing.
    assert!(!gw.reload(net.gw_addr, &xdp("\"10.0.0.1/8\"", 100)));
    assert!(gw.stderr().contains("host bits set"), "{}", gw.stderr());
}
