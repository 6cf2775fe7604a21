//! `cargo xtask bench h2`: HTTP/2 clients — cleartext with prior knowledge, and TLS with ALPN
//! h2 — in front of the same HTTP/1.1 upstream as `bench proxy`, through gatewayd, nginx and
//! HAProxy 2.6 (each one worker/thread on the subject CPUs), and to the upstream directly (it
//! speaks h2 itself: the baseline for added latency). Highest rate and CPU per request with
//! h2load in two shapes (many streams on few connections, one stream on many), latency at a
//! fixed rate with oha (`--http2`, open loop, latency-corrected: h2load reports no
//! percentiles). Writes `bench/results/h2.md`.

pub(super) mod h2load;
mod summary;

use std::{fs, net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result};

use super::{
    Options, Subject, free_port,
    harness::{Harness, Measured, Ready, fixed_rate, release_gatewayd},
    load::{self, Oha, OhaResult},
    proxy::{self, haproxy},
    report, tls,
};
use h2load::{H2loadResult, Shape};

/// The closed-loop shapes: h2load's usual many streams per connection, and many connections
/// with one stream each (how browsers behind a CDN and most service clients look).
const SHAPES: [Shape; 2] = [Shape { connections: 16, streams: 16 }, Shape { connections: 64, streams: 1 }];
/// oha's connections and streams per connection (`-p`) at the fixed rate.
const OHA_CONNECTIONS: usize = 16;
const OHA_STREAMS: &str = "4";
/// Default seconds per measured run: 2 modes × 3 measurements × 4 subjects × 3 rounds × 5 s
/// is 6 minutes of load.
const DEFAULT_SECS: u64 = 5;
const WARMUP_SECS: u64 = 1;

const DIRECT: usize = 0;
const GATEWAYD: usize = 1;
const NGINX: usize = 2;
const HAPROXY: usize = 3;
const PROXIES: [usize; 3] = [GATEWAYD, NGINX, HAPROXY];
const NAMES: [&str; 4] = ["upstream direct", "gatewayd", "nginx", "haproxy"];

/// How clients reach the subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// h2c, prior knowledge.
    Cleartext,
    /// TLS 1.3, ALPN h2.
    Tls,
}

impl Mode {
    pub fn title(self) -> &'static str {
        match self {
            Mode::Cleartext => "HTTP/2 cleartext (prior knowledge)",
            Mode::Tls => "HTTP/2 over TLS (ALPN h2)",
        }
    }

    fn url(self, addr: SocketAddr) -> String {
        match self {
            Mode::Cleartext => format!("http://{addr}/"),
            Mode::Tls => format!("https://{addr}/"),
        }
    }

    /// `--insecure` for https URLs is added by the oha runner itself (`load::Oha`).
    fn oha_args(self) -> Vec<&'static str> {
        vec!["--http2", "-p", OHA_STREAMS]
    }
}

/// The listeners of one subject: HTTP/1.1 (readiness), h2c and TLS.
struct Ports {
    h1: SocketAddr,
    h2c: SocketAddr,
    tls: SocketAddr,
}

impl Ports {
    fn new() -> Result<Ports> {
        Ok(Ports { h1: free_port()?, h2c: free_port()?, tls: free_port()? })
    }

    fn of(&self, mode: Mode) -> SocketAddr {
        match mode {
            Mode::Cleartext => self.h2c,
            Mode::Tls => self.tls,
        }
    }
}

/// All runs of one mode. `max[shape][subject][round]`, `fixed[subject][round]`.
pub struct ModeRuns {
    pub mode: Mode,
    pub rate: u64,
    pub max: Vec<Vec<Vec<Measured<H2loadResult>>>>,
    pub fixed: Vec<Vec<Measured<OhaResult>>>,
}

pub fn run(opts: &Options) -> Result<()> {
    load::ensure_oha()?;
    let gatewayd_bin = release_gatewayd()?;
    // The report's run time: the measurement, not the build.
    let started = Instant::now();
    let gatewayd = gatewayd_bin.to_str().context("gatewayd path is not UTF-8")?;
    let mut h = Harness::new("h2")?;
    let workers = h.plan.subject.len();
    let (load_cpus, subject_cpus, dir, nofile) = (h.plan.load.clone(), h.plan.subject.clone(), h.dir.clone(), h.nofile);

    // One ECDSA P-256 certificate for every subject (as `bench tls`).
    let certs = dir.join("certs");
    tls::certificate(gatewayd, &certs, "ecdsa-p256")?;
    let (crt, key) = (certs.join("server.crt"), certs.join("server.key"));
    // HAProxy wants certificate and key in one file.
    let pem = certs.join("server.pem");
    fs::write(&pem, [fs::read(&crt)?, fs::read(&key)?].concat())?;
    let ssl = format!("        ssl_certificate {};\n        ssl_certificate_key {};\n", crt.display(), key.display());

    // The upstream, with the load, on the load CPUs; it serves h2 itself for the direct runs.
    let up = Ports::new()?;
    let extra = format!("        listen {} http2;\n        listen {} ssl http2;\n{ssl}", up.h2c, up.tls);
    let up_conf = proxy::nginx_upstream_conf_with(&dir.join("upstream"), up.h1, &extra, load_cpus.len(), nofile)?;
    let upstream = h.start_nginx(NAMES[DIRECT], "upstream", &load_cpus, up_conf, Ready::Http(up.h1, "/"))?;

    // gatewayd sniffs h2c on its plain listener; its TLS listener offers h2 and http/1.1.
    let gw = Ports::new()?;
    let gw = Ports { h2c: gw.h1, ..gw };
    let metrics = free_port()?;
    let gw_server =
        proxy::gatewayd_server(gw.h1, metrics, workers).tls_listener("tls", gw.tls, crt.display(), key.display(), "");
    let gw_conf = proxy::upstream_routes(gw_server, up.h1).build();
    let gw_tree = h.start_gatewayd("gatewayd", &gatewayd_bin, gw_conf, Ready::Http(gw.h1, "/"))?;

    let ng = Ports::new()?;
    let extra = format!("        listen {} http2;\n        listen {} ssl http2;\n{ssl}", ng.h2c, ng.tls);
    let ng_conf = proxy::nginx_proxy_conf_with(&dir.join("nginx"), ng.h1, &extra, up.h1, workers, nofile)?;
    let ng_tree = h.start_nginx(NAMES[NGINX], "nginx", &subject_cpus, ng_conf, Ready::Http(ng.h1, "/"))?;

    let ha = Ports::new()?;
    let binds =
        format!("    bind {} proto h2\n    bind {} ssl crt {} alpn h2,http/1.1\n", ha.h2c, ha.tls, pem.display());
    let ha_path = dir.join("haproxy.cfg");
    h.config("haproxy.cfg", "haproxy", &ha_path, haproxy::conf_with(ha.h1, &binds, up.h1, &subject_cpus, nofile))?;
    let ha_tree = h.start(NAMES[HAPROXY], haproxy::command(&subject_cpus, &ha_path), ha.h1)?;

    let ports = [up, gw, ng, ha];
    let trees = [upstream, gw_tree, ng_tree, ha_tree];
    let own = [gw_tree, ng_tree, ha_tree];
    let duration = opts.duration(DEFAULT_SECS);
    let warmup = std::time::Duration::from_secs(WARMUP_SECS);

    let mut all = Vec::new();
    for mode in [Mode::Cleartext, Mode::Tls] {
        eprintln!("xtask: bench h2: {}", mode.title());
        let subjects: Vec<Subject> =
            (0..NAMES.len()).map(|i| Subject { name: NAMES[i], addr: ports[i].of(mode), tree: trees[i] }).collect();
        // Warm-up, and the check that every subject answers h2 with 2xx (h2load fails otherwise).
        for s in &subjects {
            h2load::run(SHAPES[0], warmup, &load_cpus, &mode.url(s.addr))
                .with_context(|| format!("{}: {} does not answer", mode.title(), s.name))?;
        }
        let mut max = Vec::new();
        for shape in SHAPES {
            max.push(h.interleave(opts.reps, &subjects, &own, |cpus, s| {
                h2load::run(shape, duration, cpus, &mode.url(s.addr))
            })?);
        }
        // Latency at half what the slowest proxy sustains (many streams), the same for all.
        let proxies_rps = PROXIES.map(|p| report::median(&max[0][p].iter().map(|r| r.value.rps).collect::<Vec<_>>()));
        let rate = fixed_rate(&proxies_rps).with_context(|| mode.title())?;
        let oha = Oha { connections: OHA_CONNECTIONS, duration, rate };
        let args = mode.oha_args();
        let fixed =
            h.interleave(opts.reps, &subjects, &own, |cpus, s| oha.run_args(cpus, &mode.url(s.addr), &[], &args))?;
        all.push(ModeRuns { mode, rate, max, fixed });
    }
    let load_after = h.loadavg();

    let mut commands: Vec<String> = Vec::new();
    for shape in SHAPES {
        commands.push(report::shell_line(&h2load::command(
            shape,
            duration,
            &load_cpus,
            &Mode::Tls.url(ports[GATEWAYD].tls),
        )));
    }
    let oha = Oha { connections: OHA_CONNECTIONS, duration, rate: all[1].rate };
    commands.push(report::shell_line(&oha.command_args(
        &load_cpus,
        &Mode::Tls.url(ports[GATEWAYD].tls),
        &[],
        &Mode::Tls.oha_args(),
    )));
    commands.push(format!("{gatewayd} certs init --force --cn localhost --san localhost,127.0.0.1 --key-type ecdsa-p256 --days 2 --out DIR"));
    commands.extend(h.commands.iter().cloned());
    let setup = summary::Setup {
        opts,
        plan: h.plan.clone(),
        machine: h.machine.clone(),
        load_after,
        commands,
        configs: h.configs.clone(),
        wall: started.elapsed(),
    };
    h.stop()?;
    let path = summary::write_report(&all, &setup).write("h2")?;
    eprintln!("xtask: bench h2: wrote {} ({} s)", path.display(), started.elapsed().as_secs());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_runs_skip_certificate_verification() {
        assert_eq!(Mode::Cleartext.oha_args(), ["--http2", "-p", "4"]);
        assert_eq!(Mode::Tls.oha_args(), ["--http2", "-p", "4"]);
        assert_eq!(Mode::Tls.url("127.0.0.1:1".parse().unwrap()), "https://127.0.0.1:1/");
    }
}
