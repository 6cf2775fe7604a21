//! `cargo xtask bench tls`: TLS termination, gatewayd against nginx (Debian's package) with the
//! same certificates, worker count and CPU, in one run. Writes `bench/results/tls.md`.
//!
//! Both subjects terminate TLS 1.3 on two listeners (an ECDSA P-256 and an RSA-2048 certificate,
//! made by `gatewayd certs init`) and proxy to the same upstream nginx on the load CPUs (`/`:
//! `return 200 "ok"`, `/1m`: a 1 MiB file), like `bench proxy`. The load is xtask's own rustls
//! client (`tls/client.rs`): full handshakes with each certificate, resumed handshakes (every
//! connection must resume), and 1 MiB responses over keep-alive connections. Phases run one after
//! the other, subjects interleaved within each. The server's process-tree CPU time over each run
//! gives CPU µs per handshake (per MiB), hence handshakes per server core-second: the goal metric
//! (issue 3: ahead of nginx per core).

pub(super) mod client;
pub(super) mod keepalive;
mod report;

use std::{fs, net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

use self::client::{KeyKind, Target, Work};
use super::{
    Options,
    cpus::CpuPlan,
    free_port,
    harness::{Harness, Measurable, Ready, release_gatewayd},
    http,
    procfs::Tree,
    proxy::{NGINX_PROXY_LOCATION, nginx_common, nginx_temp_paths},
    report::Machine,
};
use crate::{cmd::exec, gwconf::GwConf};

/// Each subject gets this much of a phase's load before its measured runs.
const WARMUP: Duration = Duration::from_secs(1);
/// Seconds per measured run unless `--duration` says otherwise (4 phases × 2 subjects × reps).
const DEFAULT_DURATION_SECS: u64 = 5;
/// Upstream keep-alive connections each proxy worker may keep idle (gatewayd's default).
const UPSTREAM_KEEPALIVE: usize = 64;
/// The large response.
const LARGE_PATH: &str = "/1m";
const LARGE_LEN: usize = 1 << 20;

/// What one phase measures.
pub struct Phase {
    pub name: &'static str,
    /// What one unit of `Run::units` is, for the tables, singular and plural.
    pub unit: &'static str,
    pub units: &'static str,
    pub key: KeyKind,
    pub work: Work,
}

fn phases() -> [Phase; 4] {
    [
        Phase {
            name: "full handshakes, ECDSA P-256",
            unit: "handshake",
            units: "handshakes",
            key: KeyKind::EcdsaP256,
            work: Work::Full,
        },
        Phase {
            name: "full handshakes, RSA-2048",
            unit: "handshake",
            units: "handshakes",
            key: KeyKind::Rsa2048,
            work: Work::Full,
        },
        Phase {
            name: "resumed handshakes (ECDSA P-256 certificate)",
            unit: "handshake",
            units: "handshakes",
            key: KeyKind::EcdsaP256,
            work: Work::Resumed,
        },
        Phase {
            name: "1 MiB responses over keep-alive",
            unit: "MiB",
            units: "MiB",
            key: KeyKind::EcdsaP256,
            work: Work::Download { path: LARGE_PATH.to_owned(), len: LARGE_LEN },
        },
    ]
}

/// A subject: its TLS endpoints (one per certificate) and its processes.
pub struct Subject {
    pub name: &'static str,
    pub ecdsa: Target,
    pub rsa: Target,
    pub tree: Tree,
}

impl Measurable for Subject {
    fn tree(&self) -> Tree {
        self.tree
    }
}

impl Subject {
    fn target(&self, key: KeyKind) -> &Target {
        match key {
            KeyKind::EcdsaP256 => &self.ecdsa,
            KeyKind::Rsa2048 => &self.rsa,
        }
    }
}

/// One measured run of one subject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Run {
    /// Handshakes, or MiB received.
    pub units: f64,
    pub seconds: f64,
    /// The subject's process-tree CPU time (user + system) during the run.
    pub cpu_seconds: f64,
    /// Share of the subject's CPUs that other processes used meanwhile.
    pub background: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.units / self.seconds
    }

    pub fn cpu_us_per_unit(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.units
    }

    /// Units per second of server CPU: the goal metric for handshakes.
    pub fn per_core_second(&self) -> f64 {
        self.units / self.cpu_seconds
    }

    /// How busy the subject kept its CPUs (1 = all of them all the time): near 1, the rate is
    /// the server's limit; well below, the client (on the load CPUs) was.
    pub fn busy(&self, cpus: usize) -> f64 {
        self.cpu_seconds / (self.seconds * cpus as f64)
    }
}

/// What the report needs besides the runs.
pub struct Setup {
    pub reps: u32,
    pub duration: Duration,
    pub threads: usize,
    pub plan: CpuPlan,
    pub machine: Machine,
    pub load_after: String,
    pub commands: Vec<String>,
    pub configs: Vec<(String, &'static str, String)>,
    /// gatewayd's `/metrics` after the runs (kTLS support, connections by mode, resumptions).
    pub metrics: String,
}

pub fn run(opts: &Options) -> Result<()> {
    let gatewayd = release_gatewayd()?;
    let gatewayd_path = gatewayd.to_str().context("gatewayd path is not UTF-8")?;
    let mut h = Harness::new("tls")?;
    let workers = h.plan.subject.len();
    let duration = opts.duration(DEFAULT_DURATION_SECS);
    let (load_cpus, subject_cpus, dir, nofile) = (h.plan.load.clone(), h.plan.subject.clone(), h.dir.clone(), h.nofile);
    let machine = h.machine.clone();

    // The same certificates for both subjects, from gatewayd's own helper.
    let ecdsa = certificate(gatewayd_path, &dir.join("ecdsa"), "ecdsa-p256")?;
    let rsa = certificate(gatewayd_path, &dir.join("rsa"), "rsa-2048")?;

    let upstream_addr = free_port()?;
    let upstream_conf = upstream_conf(&dir.join("upstream"), upstream_addr, load_cpus.len(), nofile)?;
    let upstream_tree =
        h.start_nginx("upstream", "upstream", &load_cpus, upstream_conf, Ready::Http(upstream_addr, "/"))?;
    let large = http::get(upstream_addr, LARGE_PATH)?;
    if large.status != 200 || large.body.len() != LARGE_LEN {
        bail!("the upstream's {LARGE_PATH} answered {} with {} bytes", large.status, large.body.len());
    }

    // Each subject is ready when both its listeners complete a handshake and answer `GET /`.
    let target = |addr, cert: &CertificateDer<'static>, key| Target { addr, leaf: cert.clone(), key };
    let endpoints =
        |l: &Listeners| (target(l.ecdsa, &ecdsa, KeyKind::EcdsaP256), target(l.rsa, &rsa, KeyKind::Rsa2048));
    let tls_ready = |(e, r): &(Target, Target)| {
        let (e, r) = (e.clone(), r.clone());
        Ready::Probe(Box::new(move || client::probe(&e).and_then(|()| client::probe(&r))))
    };
    let gw_listen = Listeners { ecdsa: free_port()?, rsa: free_port()? };
    let metrics_addr = free_port()?;
    let gw_conf = gatewayd_conf(&gw_listen, metrics_addr, upstream_addr, workers, &dir);
    let gw_targets = endpoints(&gw_listen);
    let gw = h.start_gatewayd("gatewayd", &gatewayd, gw_conf, tls_ready(&gw_targets))?;

    let ng_listen = Listeners { ecdsa: free_port()?, rsa: free_port()? };
    let nginx_conf = nginx_conf(&dir.join("nginx"), &ng_listen, upstream_addr, workers, nofile, &dir)?;
    let ng_targets = endpoints(&ng_listen);
    let nginx = h.start_nginx("nginx", "nginx", &subject_cpus, nginx_conf, tls_ready(&ng_targets))?;

    let subjects = [
        Subject { name: "gatewayd", ecdsa: gw_targets.0, rsa: gw_targets.1, tree: gw },
        Subject { name: "nginx", ecdsa: ng_targets.0, rsa: ng_targets.1, tree: nginx },
    ];
    let own = [gw, nginx];

    let threads = opts.connections;
    let mut results = Vec::new();
    for phase in phases() {
        eprintln!("xtask: bench tls: {}", phase.name);
        for s in &subjects {
            client::prepare(s.target(phase.key), &phase.work, threads, WARMUP)?
                .run()
                .with_context(|| format!("{}: warm-up of {}", phase.name, s.name))?;
        }
        let measured = h.interleave_around(
            opts.reps,
            &subjects,
            &own,
            |_, s| client::prepare(s.target(phase.key), &phase.work, threads, duration),
            |_, s, prepared| prepared.run().with_context(|| format!("{}: {}", phase.name, s.name)),
            |_, outcome| Ok(outcome),
        )?;
        let runs: Vec<Vec<Run>> = measured
            .iter()
            .zip(&subjects)
            .map(|(runs, s)| {
                runs.iter()
                    .map(|m| {
                        let units = match phase.work {
                            Work::Download { .. } => m.value.bytes as f64 / LARGE_LEN as f64,
                            Work::Full | Work::Resumed => m.value.exchanges as f64,
                        };
                        let run = Run {
                            units,
                            seconds: m.value.seconds,
                            cpu_seconds: m.cpu.as_secs_f64(),
                            background: m.background,
                        };
                        eprintln!(
                            "xtask:   {}: {:.0} {}/s, {:.1} CPU µs/{}, background {:.1}%",
                            s.name,
                            run.rate(),
                            phase.unit,
                            run.cpu_us_per_unit(),
                            phase.unit,
                            run.background * 100.0
                        );
                        run
                    })
                    .collect()
            })
            .collect();
        results.push((phase, runs));
    }

    // HTTPS keep-alive (small answers), then memory per idle TLS connection.
    eprintln!("xtask: bench tls: small responses over HTTPS keep-alive");
    let endpoints = [
        keepalive::Endpoint { name: "upstream direct", url: format!("http://{upstream_addr}/"), tree: upstream_tree },
        keepalive::Endpoint { name: "gatewayd", url: format!("https://{}/", gw_listen.ecdsa), tree: gw },
        keepalive::Endpoint { name: "nginx", url: format!("https://{}/", ng_listen.ecdsa), tree: nginx },
    ];
    let keep_alive = keepalive::run(&mut h, &endpoints, &own, (opts.reps, opts.connections, duration))?;
    let idle_targets: Vec<_> = subjects.iter().map(|s| (s.name, s.ecdsa.clone(), s.tree)).collect();
    let idle = keepalive::idle_memory(&idle_targets, &opts.idle_connections)?;
    h.check_alive()?;

    let metrics = http::get(metrics_addr, "/metrics").map(|r| String::from_utf8_lossy(&r.body).into_owned())?;
    let load_after = h.loadavg();
    let mut commands = keep_alive.commands.clone();
    commands.push(format!("{gatewayd_path} certs init --out DIR --key-type ecdsa-p256 (and rsa-2048)"));
    commands.extend(h.commands.iter().cloned());
    let setup = Setup {
        reps: opts.reps,
        duration,
        threads,
        plan: h.plan.clone(),
        machine,
        load_after,
        commands,
        configs: h.configs.clone(),
        metrics,
    };
    h.stop()?;
    let mut rep = report::write(&subjects, &results, &setup);
    let names: Vec<&str> = subjects.iter().map(|s| s.name).collect();
    keepalive::write(&mut rep, &keep_alive, &idle, &names);
    let path = rep.write("tls")?;
    eprintln!("xtask: bench tls: wrote {}", path.display());
    Ok(())
}

/// `gatewayd certs init` into `dir` with `key_type`; returns the server certificate (a leaf for
/// `localhost` and 127.0.0.1, signed by the development CA beside it).
pub(super) fn certificate(gatewayd: &str, dir: &Path, key_type: &str) -> Result<CertificateDer<'static>> {
    exec(
        std::process::Command::new(gatewayd)
            .args(["certs", "init", "--force", "--cn", client::SERVER_NAME, "--san", "localhost,127.0.0.1"])
            .args(["--key-type", key_type, "--days", "2", "--out"])
            .arg(dir),
    )?;
    let path = dir.join("server.crt");
    CertificateDer::from_pem_file(&path).with_context(|| format!("reading {}", path.display()))
}

struct Listeners {
    ecdsa: SocketAddr,
    rsa: SocketAddr,
}

/// gatewayd with its defaults (as in `bench proxy`) on two TLS listeners; TLS settings are the
/// defaults too: TLS 1.3 only, session tickets on, kTLS on where the kernel has it.
fn gatewayd_conf(listen: &Listeners, metrics: SocketAddr, upstream: SocketAddr, workers: usize, dir: &Path) -> String {
    let d = dir.display();
    let conf = GwConf::new(workers)
        .server("log_level = \"warn\"")
        .tls_listener("ecdsa", listen.ecdsa, format!("{d}/ecdsa/server.crt"), format!("{d}/ecdsa/server.key"), "")
        .tls_listener("rsa", listen.rsa, format!("{d}/rsa/server.crt"), format!("{d}/rsa/server.key"), "")
        .metrics(metrics)
        .no_admin();
    super::proxy::upstream_routes(conf, upstream).build()
}

/// The upstream: `/` answers "ok", `/1m` is a 1 MiB file (sendfile), keep-alive.
fn upstream_conf(prefix: &Path, listen: SocketAddr, workers: usize, nofile: u64) -> Result<String> {
    let common = nginx_common(prefix, workers, nofile)?;
    let www = prefix.join("www");
    fs::create_dir_all(&www)?;
    let body: Vec<u8> = (0..LARGE_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    fs::write(www.join(LARGE_PATH.trim_start_matches('/')), body)?;
    Ok(format!(
        "{common}http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{}    server {{
        listen {listen} reuseport backlog=1024;
        location = {LARGE_PATH} {{
            root {};
        }}
        location / {{
            default_type text/plain;
            return 200 \"ok\";
        }}
    }}
}}
",
        nginx_temp_paths(prefix),
        www.display()
    ))
}

/// nginx terminating TLS as gatewayd does: TLS 1.3 only, X25519, the three TLS 1.3 suites
/// (the client picks AES-128-GCM), stateless session tickets (OpenSSL's default two per
/// handshake; keys made at startup and shared by the workers), no session cache (TLS 1.3
/// resumes with tickets), 16 KiB records (the default `ssl_buffer_size`). Behind it, the proxy
/// of `bench proxy` (keep-alive pool, forwarding and request-id headers), with response
/// buffering in memory only (`proxy_max_temp_file_size 0`: a 1 MiB answer is never written to
/// a temporary file, gatewayd streams it too).
fn nginx_conf(
    prefix: &Path,
    listen: &Listeners,
    upstream: SocketAddr,
    workers: usize,
    nofile: u64,
    dir: &Path,
) -> Result<String> {
    let d = dir.display();
    let location = NGINX_PROXY_LOCATION;
    Ok(format!(
        "{}http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    ssl_protocols TLSv1.3;
    ssl_ecdh_curve X25519;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256;
    ssl_session_tickets on;
    ssl_session_cache off;
    ssl_session_timeout 12h;
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;
    proxy_busy_buffers_size 32k;
    proxy_max_temp_file_size 0;
{}    upstream backend {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {ecdsa} ssl reuseport backlog=1024;
        ssl_certificate {d}/ecdsa/server.crt;
        ssl_certificate_key {d}/ecdsa/server.key;
{location}
    }}
    server {{
        listen {rsa} ssl reuseport backlog=1024;
        ssl_certificate {d}/rsa/server.crt;
        ssl_certificate_key {d}/rsa/server.key;
{location}
    }}
}}
",
        nginx_common(prefix, workers, nofile)?,
        nginx_temp_paths(prefix),
        ecdsa = listen.ecdsa,
        rsa = listen.rsa,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_give_rates_and_cpu_per_unit() {
        let run = Run { units: 5000.0, seconds: 5.0, cpu_seconds: 2.5, background: 0.0 };
        assert_eq!(run.rate(), 1000.0);
        assert_eq!(run.cpu_us_per_unit(), 500.0);
        assert_eq!(run.per_core_second(), 2000.0);
        assert_eq!(run.busy(1), 0.5);
        assert_eq!(run.busy(2), 0.25);
    }

    #[test]
    fn both_subjects_get_the_same_certificates_and_tls_settings() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-tls-conf-{}", std::process::id()));
        let listen = Listeners { ecdsa: "127.0.0.1:1001".parse()?, rsa: "127.0.0.1:1002".parse()? };
        let up: SocketAddr = "127.0.0.1:1003".parse()?;
        let gw = gatewayd_conf(&listen, "127.0.0.1:1004".parse()?, up, 2, Path::new("/certs"));
        let ng = nginx_conf(&dir.join("nginx"), &listen, up, 2, 1024, Path::new("/certs"));
        let _ = fs::remove_dir_all(&dir);
        let ng = ng?;
        for file in
            ["/certs/ecdsa/server.crt", "/certs/ecdsa/server.key", "/certs/rsa/server.crt", "/certs/rsa/server.key"]
        {
            assert!(gw.contains(file) && ng.contains(file), "{file}");
        }
        assert!(gw.contains("workers = 2\n"));
        assert!(ng.contains("worker_processes 2;"));
        assert!(ng.contains("ssl_protocols TLSv1.3;") && ng.contains("ssl_ecdh_curve X25519;"));
        assert!(ng.contains("listen 127.0.0.1:1001 ssl") && ng.contains("listen 127.0.0.1:1002 ssl"));
        Ok(())
    }
}
