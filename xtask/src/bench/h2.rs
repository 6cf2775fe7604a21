//! `cargo xtask bench h2`: HTTP/2 clients — cleartext with prior knowledge, and TLS with ALPN
//! h2 — in front of the same HTTP/1.1 upstream as `bench proxy`, through gatewayd, nginx and
//! HAProxy 2.6 (each one worker/thread on the subject CPUs), and to an origin nginx that answers
//! h2 itself on the subject CPUs (the baseline for added latency: what the client would see with
//! no proxy in front, on the same CPU, with the same TLS settings). Highest rate and CPU per request with
//! h2load in two shapes (many streams on few connections, one stream on many), latency at a
//! fixed rate with oha (`--http2`, open loop, latency-corrected: h2load reports no
//! percentiles). Writes `bench/results/h2.md`.

pub(super) mod h2load;
mod summary;

use std::{fs, net::SocketAddr, time::Instant};

use anyhow::{Context as _, Result, bail};

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
const NAMES: [&str; 4] = ["origin direct", "gatewayd", "nginx", "haproxy"];

/// TLS settings every subject gets, so that no subject wins by a cheaper cipher or group:
/// TLS 1.3 only, rustls' default cipher suites in rustls' order (gatewayd has no cipher
/// setting) and X25519 first. nginx and HAProxy would also offer TLS 1.2 and other groups by
/// default, and HAProxy would pick by its own order (AES-256 where the others follow the
/// client's AES-128); which suite and group were negotiated is read from h2load and must be the
/// same for every subject (`tls_parameters`).
const TLS13_SUITES: &str = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
/// Session resumption as in `bench tls`: tickets (gatewayd's and HAProxy's default too).
const NGINX_TLS: &str = "        ssl_protocols TLSv1.3;\n        ssl_ecdh_curve X25519:prime256v1:secp384r1;\n        \
                         ssl_session_tickets on;\n        ssl_session_cache off;\n        ssl_session_timeout 12h;\n";

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
    /// The TLS version, cipher suite and group every subject negotiated (TLS mode).
    pub tls: Option<String>,
    /// gatewayd's own histograms over its fixed-rate runs: where its slow requests spent
    /// their time.
    pub inside: Inside,
}

/// Buckets (upper bound, cumulative count) of gatewayd's histograms, counted over the fixed-rate
/// runs of one mode: a request's whole time inside gatewayd, the part of it spent waiting for the
/// upstream's response head, and the worker's loop lag. When the slow requests' counts match
/// bucket for bucket between the first two, the tail is the upstream's (on the load CPUs, beside
/// the load generator), not gatewayd's own work.
pub struct Inside {
    pub request: Vec<(String, f64)>,
    pub upstream: Vec<(String, f64)>,
    pub loop_lag: Vec<(String, f64)>,
}

const INSIDE: [&str; 3] =
    ["gateway_request_duration_seconds", "gateway_upstream_duration_seconds", "gateway_worker_loop_lag_seconds"];

fn read_inside(metrics: SocketAddr) -> Result<Vec<Vec<(String, f64)>>> {
    INSIDE.iter().map(|name| proxy::histogram(metrics, name)).collect()
}

/// The TLS parameters all subjects negotiated: one answer, or an error naming who differs (a
/// subject with a cheaper cipher or group would not be compared like for like).
fn tls_parameters(mode: Mode, warm: &[(&str, Option<String>)]) -> Result<Option<String>> {
    let first = warm.first().and_then(|(_, tls)| tls.clone());
    if mode == Mode::Tls && first.is_none() {
        bail!("h2load did not report the negotiated TLS parameters");
    }
    if warm.iter().any(|(_, tls)| *tls != first) {
        bail!("{}: the subjects negotiated different TLS parameters: {warm:?}", mode.title());
    }
    Ok(first)
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
    let ssl = format!(
        "        ssl_certificate {};\n        ssl_certificate_key {};\n{NGINX_TLS}        ssl_conf_command Ciphersuites {TLS13_SUITES};\n",
        crt.display(),
        key.display()
    );

    // The upstream of the proxies, with the load, on the load CPUs (HTTP/1.1 only).
    let (up, _upstream) = h.start_upstream()?;

    // The direct baseline: the same origin answering h2c and h2 itself, pinned like the proxies
    // (one worker on the subject CPUs). Served from the load CPUs, it would share a core with
    // the load generator's TLS and come out slower than the proxies (negative added latency).
    let or = Ports::new()?;
    let extra = format!("        listen {} http2;\n        listen {} ssl http2;\n{ssl}", or.h2c, or.tls);
    let or_conf = proxy::nginx_upstream_conf_with(&dir.join("origin"), or.h1, &extra, workers, nofile)?;
    let origin = h.start_nginx(NAMES[DIRECT], "origin", &subject_cpus, or_conf, Ready::Http(or.h1, "/"))?;

    // gatewayd sniffs h2c on its plain listener; its TLS listener offers h2 and http/1.1.
    let gw = Ports::new()?;
    let gw = Ports { h2c: gw.h1, ..gw };
    let metrics = free_port()?;
    let gw_server =
        proxy::gatewayd_server(gw.h1, metrics, workers).tls_listener("tls", gw.tls, crt.display(), key.display(), "");
    let gw_conf = proxy::upstream_routes(gw_server, up).build();
    let gw_tree = h.start_gatewayd("gatewayd", &gatewayd_bin, gw_conf, Ready::Http(gw.h1, "/"))?;

    let ng = Ports::new()?;
    let extra = format!("        listen {} http2;\n        listen {} ssl http2;\n{ssl}", ng.h2c, ng.tls);
    let ng_conf = proxy::nginx_proxy_conf_with(&dir.join("nginx"), ng.h1, &extra, up, workers, nofile)?;
    let ng_tree = h.start_nginx(NAMES[NGINX], "nginx", &subject_cpus, ng_conf, Ready::Http(ng.h1, "/"))?;

    let ha = Ports::new()?;
    let binds = format!(
        "    bind {} proto h2\n    bind {} ssl crt {} alpn h2,http/1.1 ssl-min-ver TLSv1.3 ciphersuites {TLS13_SUITES} curves X25519:P-256:P-384 prefer-client-ciphers\n",
        ha.h2c,
        ha.tls,
        pem.display()
    );
    let ha_path = dir.join("haproxy.cfg");
    h.config("haproxy.cfg", "haproxy", &ha_path, haproxy::conf_with(ha.h1, &binds, up, &subject_cpus, nofile))?;
    let ha_tree = h.start(NAMES[HAPROXY], haproxy::command(&subject_cpus, &ha_path), ha.h1)?;

    let ports = [or, gw, ng, ha];
    let trees = [origin, gw_tree, ng_tree, ha_tree];
    let own = trees;
    let duration = opts.duration(DEFAULT_SECS);
    let warmup = std::time::Duration::from_secs(WARMUP_SECS);

    let mut all = Vec::new();
    for mode in [Mode::Cleartext, Mode::Tls] {
        eprintln!("xtask: bench h2: {}", mode.title());
        let subjects: Vec<Subject> =
            (0..NAMES.len()).map(|i| Subject { name: NAMES[i], addr: ports[i].of(mode), tree: trees[i] }).collect();
        // Warm-up, and the check that every subject answers h2 with 2xx (h2load fails otherwise)
        // and negotiated the same TLS.
        let mut warm = Vec::new();
        for s in &subjects {
            let run = h2load::run(SHAPES[0], warmup, &load_cpus, &mode.url(s.addr))
                .with_context(|| format!("{}: {} does not answer", mode.title(), s.name))?;
            warm.push((s.name, run.tls));
        }
        let tls = tls_parameters(mode, &warm)?;
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
        // Only gatewayd's own runs move its histograms (its probe also samples the loop while the
        // others run, idle).
        let before = read_inside(metrics)?;
        let fixed =
            h.interleave(opts.reps, &subjects, &own, |cpus, s| oha.run_args(cpus, &mode.url(s.addr), &[], &args))?;
        let after = read_inside(metrics)?;
        let mut delta = before.iter().zip(&after).map(|(b, a)| proxy::histogram_delta(b, a));
        let mut next = || delta.next().unwrap_or_default();
        let inside = Inside { request: next(), upstream: next(), loop_lag: next() };
        all.push(ModeRuns { mode, rate, max, fixed, tls, inside });
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

    #[test]
    fn subjects_must_negotiate_the_same_tls() {
        let aes = Some("TLSv1.3 TLS_AES_256_GCM_SHA384 X25519".to_owned());
        let chacha = Some("TLSv1.3 TLS_CHACHA20_POLY1305_SHA256 X25519".to_owned());
        let same = [("a", aes.clone()), ("b", aes.clone())];
        assert_eq!(tls_parameters(Mode::Tls, &same).unwrap(), aes);
        assert!(tls_parameters(Mode::Tls, &[("a", aes.clone()), ("b", chacha)]).is_err());
        assert!(tls_parameters(Mode::Tls, &[("a", None), ("b", None)]).is_err());
        assert_eq!(tls_parameters(Mode::Cleartext, &[("a", None), ("b", None)]).unwrap(), None);
    }
}
