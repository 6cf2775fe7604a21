//! `cargo xtask bench callgrind --proto h1|https|h2|h2s [--rate N] [--against nginx] BIN...`:
//! instructions per proxied request, counted by valgrind's callgrind. Counts, not time: repeatable on a busy
//! machine, so this is the before/after figure for a change while other work runs (wall-clock
//! CPU figures are for `bench proxy` on a quiet machine). Writes its section of
//! `bench/results/callgrind.md` (one section per protocol).
//!
//! Each subject (every BIN, then nginx with `--against nginx`) runs alone under callgrind with
//! one worker, behind the `bench proxy` upstream (nginx, `return 200 "ok"`, on the load CPUs).
//! Instrumentation is off at start; after a warm-up (a quarter of the requests: pools, caches)
//! it is switched on for exactly the measured requests and off again, so startup and warm-up
//! are not counted; every thread of the subject is.
//!
//! Two regimes. Closed loop (the default: hey or h2load keep every connection busy): ready
//! connections batch up behind each `epoll_wait`, so per-wake-up costs (the event loop's turn,
//! timers, task scheduling) are shared by many requests. `--rate N`: oha sends the measured
//! requests at N per second (`-q`), spread over the connections; at a low rate (300) even under
//! callgrind's slowdown each request arrives alone, so each pays a whole wake-up as at a fixed
//! rate in `bench proxy` (where the CPU per request is measured in time, not instructions).
//!
//! valgrind 3.19 runs gatewayd under the seccomp shim `bench/tools/no-prctl-auxv.c` (compiled
//! here): without it gatewayd dies at start in rustix's auxv reader (rustix issue #1559).

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options, free_port,
    h2::h2load,
    harness::{Harness, Ready},
    load::{ensure_oha, parse_hey, parse_oha},
    proxy::{gatewayd_server, nginx_proxy_conf_with},
    report::{Report, num, ratio},
};
use crate::cmd::{announce, capture, exec, workspace_root};

/// Under valgrind gatewayd starts ~50 times slower than natively.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// `--rate`: the measured requests default to this many seconds of load.
const RATE_SECONDS: u64 = 10;
/// h2load's shape for the HTTP/2 protocols (as `bench h2`'s many-streams shape).
const H2_CONNECTIONS: usize = 16;
const H2_STREAMS: usize = 16;

/// The client protocol of the measured requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// HTTP/1.1 keep-alive, cleartext (hey).
    H1,
    /// HTTP/1.1 keep-alive over TLS 1.3 (h2load `--h1`: hey's Go TLS client gets an
    /// "illegal parameter" alert from gatewayd's TLS listener).
    Https,
    /// HTTP/2 cleartext with prior knowledge (h2load).
    H2,
    /// HTTP/2 over TLS 1.3, ALPN h2 (h2load).
    H2s,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::Https => "https",
            Proto::H2 => "h2",
            Proto::H2s => "h2s",
        }
    }

    fn default_requests(self) -> u64 {
        match self {
            Proto::H1 | Proto::Https => 4_000,
            Proto::H2 | Proto::H2s => 20_000,
        }
    }

    /// oha's protocol options for the fixed-rate load (`--insecure` for https URLs is added
    /// with the URL).
    fn oha_args(self, streams: usize) -> Vec<String> {
        match self {
            Proto::H1 | Proto::Https => Vec::new(),
            Proto::H2 | Proto::H2s => vec!["--http2".into(), "-p".into(), streams.to_string()],
        }
    }
}

/// A reference subject measured after the binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// Debian's nginx as the equivalent reverse proxy (`bench proxy`'s config), one worker.
    Nginx,
    /// Debian's HAProxy as `bench proxy` configures it, one thread (cpu-compare only).
    Haproxy,
}

impl Against {
    pub fn name(self) -> &'static str {
        match self {
            Against::Nginx => "nginx",
            Against::Haproxy => "haproxy",
        }
    }
}

/// Where a subject listens.
struct Ports {
    /// HTTP/1.1 (gatewayd also sniffs h2c here).
    plain: SocketAddr,
    /// nginx's h2c listener (nginx cannot sniff).
    h2c: SocketAddr,
    tls: SocketAddr,
}

impl Ports {
    fn new() -> Result<Self> {
        Ok(Ports { plain: free_port()?, h2c: free_port()?, tls: free_port()? })
    }

    fn url(&self, proto: Proto, nginx: bool) -> String {
        match proto {
            Proto::H1 => format!("http://{}/", self.plain),
            Proto::H2 if nginx => format!("http://{}/", self.h2c),
            Proto::H2 => format!("http://{}/", self.plain),
            // By name: the clients then send SNI (Go's TLS, hey's, sends none for an address).
            Proto::Https | Proto::H2s => format!("https://localhost:{}/", self.tls.port()),
        }
    }
}

/// The load's concurrency: connections, and for HTTP/2 the streams h2load keeps open on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    connections: usize,
    streams: usize,
}

impl Shape {
    /// HTTP/1: `--connections`. HTTP/2: `-c16 -m16` (`bench h2`'s many-streams shape) unless
    /// `--streams` is given, then `--connections` connections with that many streams each.
    fn of(proto: Proto, connections: usize, streams: Option<usize>) -> Self {
        match (proto, streams) {
            (Proto::H1 | Proto::Https, _) => Shape { connections, streams: 1 },
            (Proto::H2 | Proto::H2s, None) => Shape { connections: H2_CONNECTIONS, streams: H2_STREAMS },
            (Proto::H2 | Proto::H2s, Some(m)) => Shape { connections, streams: m.max(1) },
        }
    }
}

/// One subject's count.
struct Counted {
    name: String,
    instructions: u64,
    top: String,
}

pub fn run(opts: &Options) -> Result<()> {
    let mut subjects: Vec<PathBuf> = opts.bins.clone();
    if opts.against.contains(&Against::Haproxy) {
        bail!("bench callgrind: --against takes nginx only (HAProxy is compared by `bench cpu-compare`)");
    }
    let against_nginx = opts.against.contains(&Against::Nginx);
    if subjects.is_empty() && !against_nginx {
        bail!("bench callgrind: name at least one gatewayd binary (BIN...) or --against nginx");
    }
    for bin in &subjects {
        if !bin.is_file() {
            bail!("{} is not a file", bin.display());
        }
    }
    let proto = opts.proto;
    let shape = Shape::of(proto, opts.connections, opts.streams);
    let connections = shape.connections;
    let rate = opts.rate;
    if rate.is_some() {
        ensure_oha()?;
    }
    // hey sends a multiple of its connections (the rest is dropped silently).
    let default_requests = rate.map_or(proto.default_requests(), |r| r.saturating_mul(RATE_SECONDS));
    let requests = round_to(opts.requests.unwrap_or(default_requests), connections);
    let warmup = round_to(requests / 4, connections);
    let mut h = Harness::new("callgrind")?;
    h.ready_timeout = READY_TIMEOUT;
    let (subject_cpus, dir, nofile) = (h.plan.subject.clone(), h.dir.clone(), h.nofile);
    let shim = shim(&dir)?;
    let certs = dir.join("certs");
    // Any gatewayd makes the certificate; nginx alone takes the workspace's release build.
    let certs_bin = subjects.first().cloned().unwrap_or_else(super::gatewayd_binary);
    super::tls::certificate(certs_bin.to_str().context("binary path is not UTF-8")?, &certs, "ecdsa-p256")?;

    let (upstream, _) = h.start_upstream()?;

    let mut counted = Vec::new();
    if against_nginx {
        subjects.push(PathBuf::from("nginx"));
    }
    for (i, bin) in subjects.iter().enumerate() {
        let is_nginx = against_nginx && i == subjects.len() - 1;
        let name = if is_nginx { "nginx".to_owned() } else { bin.display().to_string() };
        let ports = Ports::new()?;
        let out = dir.join(format!("cg-{i}.out"));
        let mut cmd = subject_cpus.taskset(shim.to_str().context("shim path is not UTF-8")?);
        cmd.args(["valgrind", "--tool=callgrind", "--instr-atstart=no"])
            .arg(format!("--callgrind-out-file={}", out.display()));
        if is_nginx {
            let prefix = dir.join("nginx");
            let conf = nginx_conf(&prefix, &ports, upstream, &certs, nofile)?;
            h.config("nginx: nginx.conf", "nginx", &prefix.join("nginx.conf"), conf)?;
            cmd.arg("nginx").arg("-p").arg(&prefix).arg("-e").arg(prefix.join("error.log"));
            cmd.arg("-c").arg(prefix.join("nginx.conf"));
        } else {
            let conf_path = dir.join(format!("gatewayd-{i}.toml"));
            h.config("gatewayd.toml", "toml", &conf_path, gatewayd_conf(&ports, upstream, &certs)?)?;
            cmd.arg(bin).arg("--config").arg(&conf_path);
        }
        eprintln!("xtask: bench callgrind: {name} under callgrind, {requests} {} requests", proto.name());
        let tree = h.start_ready(&format!("subject-{i} under callgrind"), cmd, Ready::Http(ports.plain, "/"))?;
        let url = ports.url(proto, is_nginx);
        load(proto, warmup, shape, &url)?;
        callgrind_control(tree.0, "-i", "on")?;
        match rate {
            Some(rate) => load_at_rate(proto, requests, rate, shape, &url)?,
            None => load(proto, requests, shape, &url)?,
        }
        callgrind_control(tree.0, "-i", "off")?;
        callgrind_control(tree.0, "-d", "")?;
        h.check_alive()?;
        let (instructions, top) = read_profile(&dir, &format!("cg-{i}.out"))?;
        // On stdout, one line per subject (scripts read it).
        println!(
            "{name}: instructions per request: {} ({instructions} over {requests} requests; profile: {}/cg-{i}.out*)",
            instructions / requests,
            dir.display()
        );
        counted.push(Counted { name, instructions, top });
    }
    let machine = h.machine.clone();
    let commands = h.commands.clone();
    h.stop()?;

    let mut rep = Report::default();
    match rate {
        Some(rate) => rep.heading(&format!("{} at {rate} requests/s ({})", proto.name(), proto_title(proto))),
        None => rep.heading(&format!("{} ({})", proto.name(), proto_title(proto))),
    }
    let measured_load = match rate {
        Some(rate) => format!(
            "measured requests sent by `oha -c {connections} -q {rate}{}` (one at a time: each request pays a \
             wake-up of the event loop), warm-up by {}",
            proto.oha_args(shape.streams).iter().map(|a| format!(" {a}")).collect::<String>(),
            load_shape(proto, shape)
        ),
        None => load_shape(proto, shape),
    };
    rep.paragraph(&format!(
        "Written by `cargo xtask bench callgrind --proto {} --requests {requests} --connections {connections}{}{}{} BIN...` \
         on {} (workspace at {}); {}. One worker under callgrind, {requests} measured requests after {} warm-up \
         requests; instructions of every thread, startup excluded. Instruction counts do not depend on the \
         machine's load; compare binaries measured in the same run.",
        proto.name(),
        rate.map(|r| format!(" --rate {r}")).unwrap_or_default(),
        opts.streams.map(|m| format!(" --streams {m}")).unwrap_or_default(),
        if against_nginx { " --against nginx" } else { "" },
        machine.date,
        super::report::git_revision(),
        measured_load,
        warmup,
    ));
    let base = counted.first().map_or(0.0, |c| c.instructions as f64 / requests as f64);
    let rows: Vec<Vec<String>> = counted
        .iter()
        .map(|c| {
            let per = c.instructions as f64 / requests as f64;
            vec![format!("`{}`", c.name), c.instructions.to_string(), num(per, 0), ratio(per, base)]
        })
        .collect();
    rep.table(&["subject", "instructions", "per request", "vs the first"], &rows);
    for c in &counted {
        rep.paragraph(&format!("Top functions of `{}` (exclusive, whole measured window):", c.name));
        rep.code("text", &c.top);
    }
    rep.paragraph("Commands:");
    rep.code("sh", &commands.join("\n"));
    let key = match rate {
        Some(_) => format!("callgrind-{}-rate", proto.name()),
        None => format!("callgrind-{}", proto.name()),
    };
    let path = rep.write_section("callgrind", "Instructions per proxied request (callgrind)", &key)?;
    eprintln!("xtask: bench callgrind: wrote the {key} section of {}", path.display());
    Ok(())
}

/// `n` rounded down to a multiple of `step`, at least `step`.
fn round_to(n: u64, step: usize) -> u64 {
    let step = step.max(1) as u64;
    (n / step).max(1) * step
}

fn proto_title(proto: Proto) -> &'static str {
    match proto {
        Proto::H1 => "HTTP/1.1 keep-alive, cleartext",
        Proto::Https => "HTTP/1.1 keep-alive over TLS 1.3",
        Proto::H2 => "HTTP/2 cleartext, prior knowledge",
        Proto::H2s => "HTTP/2 over TLS 1.3 (ALPN h2)",
    }
}

fn load_shape(proto: Proto, shape: Shape) -> String {
    let Shape { connections, streams } = shape;
    match proto {
        Proto::H1 => format!("hey -c {connections}"),
        Proto::Https => format!("h2load --h1 -c {connections}"),
        Proto::H2 | Proto::H2s => format!("h2load -c{connections} -m{streams}"),
    }
}

/// Sends exactly `requests` requests (hey: a multiple of its connections); fails unless every
/// one answered 2xx.
fn load(proto: Proto, requests: u64, shape: Shape, url: &str) -> Result<()> {
    let Shape { connections, streams } = shape;
    let mut cmd = Command::new(match proto {
        Proto::H1 => "hey",
        Proto::Https | Proto::H2 | Proto::H2s => "h2load",
    });
    match proto {
        Proto::H1 => cmd.args(["-n", &requests.to_string(), "-c", &connections.to_string()]),
        Proto::Https => cmd.args(["--h1", "-n", &requests.to_string(), "-c", &connections.to_string()]),
        Proto::H2 | Proto::H2s => {
            cmd.args(["-n", &requests.to_string()]).args(["-c", &connections.to_string(), "-m", &streams.to_string()])
        }
    };
    cmd.arg(url);
    announce(&cmd);
    let out = capture(&mut cmd)?;
    let answered = match proto {
        Proto::H1 => {
            let r = parse_hey(&out, Duration::ZERO).with_context(|| format!("hey's output:\n{out}"))?;
            (r.non_2xx + r.socket_errors == 0).then_some(r.requests)
        }
        Proto::Https | Proto::H2 | Proto::H2s => {
            let r = h2load::parse(&out).with_context(|| format!("h2load's output:\n{out}"))?;
            (r.failed == 0).then_some(r.requests)
        }
    };
    if answered != Some(requests) {
        bail!("not all {requests} requests to {url} answered 2xx:\n{out}");
    }
    Ok(())
}

/// Sends exactly `requests` requests at `rate` per second with oha (open loop, over
/// `shape.connections` keep-alive connections); fails unless every one answered 2xx.
fn load_at_rate(proto: Proto, requests: u64, rate: u64, shape: Shape, url: &str) -> Result<()> {
    let mut cmd = Command::new("oha");
    cmd.args(proto.oha_args(shape.streams))
        .args(["-n", &requests.to_string(), "-c", &shape.connections.to_string(), "-q", &rate.to_string()])
        .args(["--worker-threads", "1", "--no-tui", "--output-format", "json"]);
    if url.starts_with("https://") {
        cmd.arg("--insecure");
    }
    cmd.arg(url);
    announce(&cmd);
    let out = capture(&mut cmd)?;
    let r = parse_oha(&out).with_context(|| format!("oha's output:\n{out}"))?;
    if r.errors > 0 || r.requests != requests {
        bail!("not all {requests} requests to {url} answered 2xx ({} did, {} errors):\n{out}", r.requests, r.errors);
    }
    Ok(())
}

fn callgrind_control(pid: u32, flag: &str, value: &str) -> Result<()> {
    let mut cmd = Command::new("callgrind_control");
    cmd.arg(flag);
    if !value.is_empty() {
        cmd.arg(value);
    }
    capture(cmd.arg(pid.to_string())).map(drop)
}

/// The seccomp shim, compiled into the run directory.
fn shim(dir: &Path) -> Result<PathBuf> {
    let out = dir.join("no-prctl-auxv");
    let source = workspace_root().join("bench/tools/no-prctl-auxv.c");
    exec(Command::new("cc").arg("-O2").arg("-o").arg(&out).arg(&source))?;
    Ok(out)
}

/// The sum of the `totals:` of every dump `prefix*` in `dir`, and the top functions of the
/// largest dump (`callgrind_annotate`).
fn read_profile(dir: &Path, prefix: &str) -> Result<(u64, String)> {
    let mut total = 0;
    let mut largest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let n = dump_total(&text);
        total += n;
        if largest.as_ref().is_none_or(|(m, _)| n > *m) {
            largest = Some((n, path));
        }
    }
    let Some((_, path)) = largest.filter(|_| total > 0) else {
        bail!("callgrind counted no instructions in {}/{prefix}*", dir.display());
    };
    let annotate = capture(Command::new("callgrind_annotate").arg("--inclusive=no").arg(&path))?;
    let top = annotate.lines().skip_while(|l| !l.contains("file:function")).take(26).collect::<Vec<_>>().join("\n");
    Ok((total, top))
}

/// The instruction total of one callgrind dump (`totals:`, or `summary:` in older formats).
fn dump_total(text: &str) -> u64 {
    let find = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok());
    find("totals:").or_else(|| find("summary:")).unwrap_or(0)
}

/// gatewayd as in `bench proxy`, one worker, plus a TLS listener with the run's certificate.
fn gatewayd_conf(ports: &Ports, upstream: SocketAddr, certs: &Path) -> Result<String> {
    let (crt, key) = (certs.join("server.crt"), certs.join("server.key"));
    let conf =
        gatewayd_server(ports.plain, free_port()?, 1).tls_listener("tls", ports.tls, crt.display(), key.display(), "");
    Ok(super::proxy::upstream_routes(conf, upstream).build())
}

/// `bench proxy`'s nginx, one process (no master: callgrind follows the one that serves), with
/// an h2c and a TLS listener.
fn nginx_conf(prefix: &Path, ports: &Ports, upstream: SocketAddr, certs: &Path, nofile: u64) -> Result<String> {
    let extra = format!(
        "        listen {} http2;\n        listen {} ssl http2;\n        ssl_certificate {};\n        ssl_certificate_key {};\n",
        ports.h2c,
        ports.tls,
        certs.join("server.crt").display(),
        certs.join("server.key").display()
    );
    Ok(format!("master_process off;\n{}", nginx_proxy_conf_with(prefix, ports.plain, &extra, upstream, 1, nofile)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_a_multiple_of_the_connections() {
        assert_eq!(round_to(4000, 16), 4000);
        assert_eq!(round_to(100, 8), 96);
        assert_eq!(round_to(3, 8), 8);
    }

    #[test]
    fn dump_totals_are_read() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=main\n1 5\ntotals: 123456\n";
        assert_eq!(dump_total(dump), 123_456);
        assert_eq!(dump_total("events: Ir\nsummary: 77\n"), 77);
        assert_eq!(dump_total("events: Ir\n"), 0);
    }

    #[test]
    fn h2_shape_follows_streams() {
        assert_eq!(Shape::of(Proto::H2, 64, None), Shape { connections: 16, streams: 16 });
        assert_eq!(Shape::of(Proto::H2s, 64, Some(1)), Shape { connections: 64, streams: 1 });
        assert_eq!(Shape::of(Proto::H1, 64, Some(8)), Shape { connections: 64, streams: 1 });
    }

    #[test]
    fn the_fixed_rate_load_speaks_each_protocol() {
        assert!(Proto::H1.oha_args(1).is_empty());
        assert!(Proto::Https.oha_args(1).is_empty());
        assert_eq!(Proto::H2.oha_args(16), ["--http2", "-p", "16"]);
        assert_eq!(Proto::H2s.oha_args(1), ["--http2", "-p", "1"]);
    }

    #[test]
    fn each_protocol_has_its_url() -> Result<()> {
        let ports = Ports { plain: "127.0.0.1:1".parse()?, h2c: "127.0.0.1:2".parse()?, tls: "127.0.0.1:3".parse()? };
        assert_eq!(ports.url(Proto::H1, false), "http://127.0.0.1:1/");
        assert_eq!(ports.url(Proto::H2, false), "http://127.0.0.1:1/");
        assert_eq!(ports.url(Proto::H2, true), "http://127.0.0.1:2/");
        assert_eq!(ports.url(Proto::Https, true), "https://localhost:3/");
        assert_eq!(ports.url(Proto::H2s, false), "https://localhost:3/");
        Ok(())
    }
}
