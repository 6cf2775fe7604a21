//! `cargo xtask bench slow-clients`: slow readers against gatewayd (streaming, and a route with
//! `response_buffering`) and nginx (`proxy_buffering on`, its default). Writes its section of
//! `bench/results/slow-clients.md` (the hand-written analysis there stays).
//!
//! Per case (1,000 clients of a 1 MiB answer, then a fifth as many of an 8 MiB one: more than
//! the kernel's socket buffers take off the proxy's hands) and subject: N connections with a
//! 4 KiB receive buffer each send one `GET` and read nothing; for `--duration` seconds
//! (default 20) xtask samples the proxy's RSS (summed over its processes), its established
//! connections to the upstream (`ss -p`) and, for gatewayd, `gateway_upstream_target_active_requests`;
//! then every client reads its answer to the end (all bytes must arrive).

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use super::{
    Options, free_port,
    harness::{Harness, Ready},
    http,
    procfs::Tree,
    proxy::{gatewayd_server, nginx_common, nginx_proxy_conf_with, nginx_temp_paths},
    report::{Report, num},
};
use crate::cmd::capture;

const DEFAULT_CLIENTS: u64 = 1_000;
const DEFAULT_SETTLE_SECS: u64 = 20;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// The clients' receive buffer: a reader far slower than the upstream.
const CLIENT_RCVBUF: usize = 4096;
const MIB: usize = 1 << 20;

/// A proxy under test and the path prefix of its route.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    prefix: &'static str,
    tree: Tree,
    /// gatewayd's metrics, for its active upstream requests.
    metrics: Option<SocketAddr>,
}

/// What one case measured on one proxy.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    rss_before: u64,
    rss_peak: u64,
    rss_settled: u64,
    upstream_settled: usize,
    active_settled: Option<f64>,
    all_read: bool,
    rss_after_reading: u64,
}

pub fn run(opts: &Options) -> Result<()> {
    // A given binary (a build to compare), else the workspace's release build.
    let gatewayd = match opts.bins.first() {
        Some(bin) => bin.clone(),
        None => super::harness::release_gatewayd()?,
    };
    let mut h = Harness::new("slow-clients")?;
    let (load_cpus, subject_cpus, dir, nofile) = (h.plan.load.clone(), h.plan.subject.clone(), h.dir.clone(), h.nofile);
    let workers = subject_cpus.len();
    let clients = opts.requests.unwrap_or(DEFAULT_CLIENTS) as usize;
    let settle = opts.duration(DEFAULT_SETTLE_SECS);
    let cases = [(clients, MIB), ((clients / 5).max(1), 8 * MIB)];

    let upstream = free_port()?;
    let up_conf = upstream_conf(&dir.join("upstream"), upstream, nofile, &cases)?;
    h.start_nginx("upstream", "upstream", &load_cpus, up_conf, Ready::Http(upstream, "/s/1"))?;

    let (gw_addr, gw_metrics) = (free_port()?, free_port()?);
    let gw = h.start_gatewayd(
        "gatewayd",
        &gatewayd,
        gatewayd_conf(gw_addr, gw_metrics, upstream, workers),
        Ready::Http(gw_addr, "/s/1"),
    )?;
    let ng_addr = free_port()?;
    let ng_conf = nginx_proxy_conf_with(&dir.join("nginx"), ng_addr, "", upstream, workers, nofile)?;
    let ng = h.start_nginx("nginx", "nginx", &subject_cpus, ng_conf, Ready::Http(ng_addr, "/s/1"))?;
    let proxies = [
        Proxy { name: "gatewayd, streaming", addr: gw_addr, prefix: "/s/", tree: gw, metrics: Some(gw_metrics) },
        Proxy {
            name: "gatewayd, `response_buffering`",
            addr: gw_addr,
            prefix: "/b/",
            tree: gw,
            metrics: Some(gw_metrics),
        },
        Proxy { name: "nginx, `proxy_buffering on`", addr: ng_addr, prefix: "/s/", tree: ng, metrics: None },
    ];

    let mut results = Vec::new();
    for &(n, size) in &cases {
        let mut row = Vec::new();
        for p in &proxies {
            eprintln!("xtask: bench slow-clients: {n} readers of {} MiB through {}", size / MIB, p.name);
            row.push(measure(p, upstream.port(), n, size, settle)?);
            h.check_alive()?;
        }
        results.push(row);
    }
    let (machine, commands, configs) = (h.machine.clone(), h.commands.clone(), h.configs.clone());
    h.stop()?;

    let mut rep = Report::default();
    rep.heading("Measured by `cargo xtask bench slow-clients`");
    rep.paragraph(&format!(
        "`cargo xtask bench slow-clients --requests {clients} --duration {}` on {} (workspace at {}; gatewayd `{}`), {} CPUs, \
         kernel {}, load average {} at the start. Release gatewayd, {workers} worker(s) on CPUs {}; nginx the same; \
         the upstream nginx serves static files on {}. RSS summed over each proxy's processes; upstream \
         connections = its established connections to the upstream port (`ss -tnp`); both gatewayd rows are one \
         process (two routes), so its RSS \"before\" of the second includes what the first left.",
        settle.as_secs(),
        machine.date,
        super::report::git_revision(),
        gatewayd.display(),
        machine.cpus,
        machine.kernel,
        machine.loadavg,
        subject_cpus,
        load_cpus,
    ));
    let mb = |b: u64| num(b as f64 / 1e6, 0);
    for ((n, size), row) in cases.iter().zip(&results) {
        rep.subheading(&format!("{n} clients, {} MiB response", size / MIB));
        let rows: Vec<Vec<String>> = proxies
            .iter()
            .zip(row)
            .map(|(p, s)| {
                vec![
                    p.name.to_owned(),
                    format!("{} MB", mb(s.rss_before)),
                    format!("{} MB", mb(s.rss_peak)),
                    format!("{} MB", mb(s.rss_settled)),
                    s.upstream_settled.to_string(),
                    s.active_settled.map_or("–".into(), |a| num(a, 0)),
                    if s.all_read { "yes".into() } else { "**no**".into() },
                    format!("{} MB", mb(s.rss_after_reading)),
                ]
            })
            .collect();
        rep.table(
            &[
                "",
                "RSS before",
                "RSS peak",
                &format!("RSS after {} s", settle.as_secs()),
                "upstream connections then",
                "upstream requests in flight then",
                "all bytes read",
                "RSS after reading",
            ],
            &rows,
        );
    }
    rep.paragraph("Commands and configs:");
    rep.code("sh", &commands.join("\n"));
    for (title, lang, text) in &configs {
        rep.paragraph(&format!("{title}:"));
        rep.code(lang, text);
    }
    let path = rep.write_section("slow-clients", "Slow readers", "slow-clients")?;
    eprintln!("xtask: bench slow-clients: wrote its section of {}", path.display());
    if results.iter().flatten().any(|s| !s.all_read) {
        bail!("some clients did not receive their whole answer (see {})", path.display());
    }
    Ok(())
}

fn measure(p: &Proxy, upstream_port: u16, n: usize, size: usize, settle: Duration) -> Result<Sample> {
    let rss = || p.tree.memory().map(|m| m.rss_bytes);
    let rss_before = rss()?;
    let path = format!("{}{}", p.prefix, size / MIB);
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(slow_request(p.addr, &path)?);
    }
    let (start, mut rss_peak) = (Instant::now(), rss_before);
    while start.elapsed() < settle {
        std::thread::sleep(SAMPLE_EVERY.min(settle));
        rss_peak = rss_peak.max(rss()?);
    }
    let rss_settled = rss()?;
    rss_peak = rss_peak.max(rss_settled);
    let upstream_settled = upstream_connections(p.tree, upstream_port)?;
    let active_settled = p.metrics.map(active_requests).transpose()?;
    let mut all_read = true;
    for mut s in sockets {
        all_read &= read_answer(&mut s, size).unwrap_or(false);
    }
    Ok(Sample {
        rss_before,
        rss_peak,
        rss_settled,
        upstream_settled,
        active_settled,
        all_read,
        rss_after_reading: rss()?,
    })
}

/// A connection with a small receive buffer (set before connecting, so the window stays small)
/// that has sent `GET path`.
fn slow_request(addr: SocketAddr, path: &str) -> Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_recv_buffer_size(CLIENT_RCVBUF)?;
    socket.connect(&addr.into()).with_context(|| format!("connecting to {addr}"))?;
    let mut stream: TcpStream = socket.into();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    Ok(stream)
}

/// Reads the head and `size` body bytes; true when the answer was 200 with all of them.
fn read_answer(stream: &mut TcpStream, size: usize) -> Result<bool> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut head = Vec::new();
    let body_start = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    if !head.starts_with(b"HTTP/1.1 200") {
        return Ok(false);
    }
    let mut got = head.len() - body_start;
    while got < size {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got == size)
}

/// The tree's established TCP connections to the upstream port.
fn upstream_connections(tree: Tree, port: u16) -> Result<usize> {
    let out = capture(Command::new("ss").args(["-Htnp", "state", "established"]).arg(format!("( dport = :{port} )")))?;
    let pids = tree.pids()?;
    Ok(count_owned(&out, &pids))
}

/// Lines of `ss -p` output whose process is one of `pids` (`users:(("nginx",pid=12,fd=3))`).
fn count_owned(ss: &str, pids: &[u32]) -> usize {
    ss.lines().filter(|l| pids.iter().any(|p| l.contains(&format!("pid={p},")))).count()
}

fn active_requests(metrics: SocketAddr) -> Result<f64> {
    let body = http::get(metrics, "/metrics")?.body;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("gateway_upstream_target_active_requests"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// gatewayd as users run it, two routes to the upstream: `/s/` streams, `/b/` buffers answers.
fn gatewayd_conf(listen: SocketAddr, metrics: SocketAddr, upstream: SocketAddr, workers: usize) -> String {
    gatewayd_server(listen, metrics, workers)
        .service("upstream", upstream, None)
        .route("stream", "upstream", &["/s"], "none", "")
        .route("buffered", "upstream", &["/b"], "none", "response_buffering = true\n")
        .build()
}

/// nginx serving `/s/<MiB>` and `/b/<MiB>` files of each case's size, keep-alive.
fn upstream_conf(
    prefix: &std::path::Path,
    listen: SocketAddr,
    nofile: u64,
    cases: &[(usize, usize)],
) -> Result<String> {
    let www = prefix.join("www");
    for dir in ["s", "b"] {
        fs::create_dir_all(www.join(dir))?;
        for size in [1].into_iter().chain(cases.iter().map(|(_, s)| s / MIB)) {
            fs::write(www.join(dir).join(size.to_string()), vec![b'x'; size * MIB])?;
        }
    }
    Ok(format!(
        "{}http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
{}    server {{
        listen {listen} reuseport backlog=4096;
        root {};
    }}
}}
",
        nginx_common(prefix, 1, nofile)?,
        nginx_temp_paths(prefix),
        www.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_connections_are_counted_per_process() {
        let ss = "0 0 127.0.0.1:40000 127.0.0.1:18001 users:((\"gatewayd\",pid=120,fd=33))\n\
                  0 0 127.0.0.1:40001 127.0.0.1:18001 users:((\"nginx\",pid=1201,fd=9))\n\
                  0 0 127.0.0.1:40002 127.0.0.1:18001 users:((\"gatewayd\",pid=120,fd=34))\n";
        assert_eq!(count_owned(ss, &[120]), 2);
        assert_eq!(count_owned(ss, &[1201, 1202]), 1);
        assert_eq!(count_owned(ss, &[12]), 0);
    }

    #[test]
    fn both_gatewayd_routes_reach_the_upstream_and_one_buffers() {
        let conf = gatewayd_conf(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            2,
        );
        assert_eq!(conf.matches("[[routes]]").count(), 2);
        assert_eq!(conf.matches("response_buffering = true").count(), 1);
        assert!(conf.contains("workers = 2\n"));
    }
}
