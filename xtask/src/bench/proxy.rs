//! `cargo xtask bench proxy`: the same small-response keep-alive workload against the upstream
//! directly, through gatewayd and through nginx configured as the equivalent reverse proxy,
//! interleaved, the proxies pinned apart from the client and the upstream. Writes
//! `bench/results/proxy.md`.
//!
//! The upstream is nginx answering `return 200 "ok"`: a separate process (pinned with the
//! client, measurable on its own), among the fastest servers there is (it must not be the
//! bottleneck), already a dependency, and nothing of ours to maintain or to suspect.

pub(super) mod haproxy;
mod idle_only;
mod summary;

use std::{fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    Options, Subject,
    cpus::CpuList,
    free_port,
    harness::{Harness, Measured, Ready, fixed_rate, release_gatewayd},
    http,
    idle::{self, IdleResult},
    load::{self, Oha, OhaResult, WrkResult},
    report::{self, median},
};
use crate::gwconf::GwConf;
use summary::{Setup, write_report};

/// Each subject gets this much load before the measured runs (connections, pools, caches).
const WARMUP: Duration = Duration::from_secs(2);
/// Upstream keep-alive connections each proxy worker may keep idle (gatewayd's default).
const UPSTREAM_KEEPALIVE: usize = 64;
/// Idle keep-alive connections are extrapolated to this many in the report.
const EXTRAPOLATE_TO: f64 = 100_000.0;
/// The goal for memory per idle keep-alive connection.
const IDLE_GOAL_BYTES: f64 = 4096.0;

/// The indices of the subjects, in the order they are run.
const DIRECT: usize = 0;
const GATEWAYD: usize = 1;
const NGINX: usize = 2;
const HAPROXY: usize = 3;
/// The subjects that are proxies (the direct runs are the baseline).
const PROXIES: [usize; 3] = [GATEWAYD, NGINX, HAPROXY];
const DIRECT_NAME: &str = "upstream direct";

/// A highest-rate run and a fixed-rate run, with their CPU time and background.
type MaxRun = Measured<WrkResult>;
type RateRun = Measured<OhaResult>;

pub fn run(opts: &Options) -> Result<()> {
    load::ensure_oha()?;
    let gatewayd = release_gatewayd()?;
    let mut h = Harness::new("proxy")?;
    let workers = h.plan.subject.len();
    let (load_cpus, subject_cpus, dir, nofile) = (h.plan.load.clone(), h.plan.subject.clone(), h.dir.clone(), h.nofile);

    // The upstream, with the load, on the load CPUs.
    let (upstream_addr, upstream) = h.start_upstream()?;

    let (gw_addr, gw_metrics) = (free_port()?, free_port()?);
    let gw_conf = gatewayd_conf(gw_addr, gw_metrics, upstream_addr, workers);
    let gw = h.start_gatewayd("gatewayd", &gatewayd, gw_conf, Ready::Http(gw_addr, "/"))?;

    let nginx_addr = free_port()?;
    let nginx_conf = nginx_proxy_conf(&dir.join("nginx"), nginx_addr, upstream_addr, workers, nofile)?;
    let nginx = h.start_nginx("nginx proxy", "nginx", &subject_cpus, nginx_conf, Ready::Http(nginx_addr, "/"))?;

    let haproxy_addr = free_port()?;
    let haproxy_path = dir.join("haproxy.cfg");
    let haproxy_conf = haproxy::conf(haproxy_addr, upstream_addr, &subject_cpus, nofile);
    h.config("haproxy.cfg", "haproxy", &haproxy_path, haproxy_conf)?;
    let haproxy = h.start("haproxy", haproxy::command(&subject_cpus, &haproxy_path), haproxy_addr)?;

    let subjects = [
        Subject { name: DIRECT_NAME, addr: upstream_addr, tree: upstream },
        Subject { name: "gatewayd", addr: gw_addr, tree: gw },
        Subject { name: "nginx", addr: nginx_addr, tree: nginx },
        Subject { name: "haproxy", addr: haproxy_addr, tree: haproxy },
    ];
    for s in &subjects {
        sanity_check(s)?;
    }
    let own = [gw, nginx, haproxy];

    for s in &subjects {
        opts.load.run(opts.connections, WARMUP, &load_cpus, &s.url())?;
    }
    if opts.idle_only {
        let idle_results = idle_rounds(&mut h, opts, &subjects)?;
        let report = idle_only::report(&subjects, &idle_results, opts, &h);
        h.stop()?;
        let path = report.write("proxy-idle")?;
        eprintln!("xtask: bench proxy --idle-only: wrote {}", path.display());
        return Ok(());
    }

    // Highest rate, closed loop.
    let duration = opts.duration(10);
    let max_runs: Vec<Vec<MaxRun>> =
        h.interleave(opts.reps, &subjects, &own, |cpus, s| opts.load.run(opts.connections, duration, cpus, &s.url()))?;
    let max_rps: Vec<f64> =
        max_runs.iter().map(|runs| median(&runs.iter().map(|r| r.value.rps).collect::<Vec<_>>())).collect();

    // Latency at a fixed rate: half what the slowest proxy sustains, the same for every subject.
    let rate = fixed_rate(&PROXIES.map(|p| max_rps[p]))?;
    let oha = Oha { connections: opts.connections, duration, rate };
    let lag_before = loop_lag(gw_metrics)?;
    let rate_runs: Vec<Vec<RateRun>> = h.interleave(opts.reps, &subjects, &own, |cpus, s| oha.run(cpus, &s.url()))?;

    // gatewayd's own view of its stalls during the fixed-rate runs (all subjects' runs: its
    // probe keeps sampling while the others are measured, when its loop is idle).
    let lag_after = loop_lag(gw_metrics)?;
    let loop_lag = histogram_delta(&lag_before, &lag_after);

    let idle_results = idle_rounds(&mut h, opts, &subjects)?;
    let load_after = h.loadavg();

    let mut commands = vec![
        report::shell_line(&opts.load.command(opts.connections, duration, &load_cpus, &subjects[GATEWAYD].url())),
        report::shell_line(&oha.command(&load_cpus, &subjects[GATEWAYD].url())),
    ];
    commands.extend(h.commands.iter().cloned());
    let setup = Setup {
        opts,
        plan: &h.plan,
        machine: h.machine.clone(),
        load_after,
        commands,
        configs: h.configs.clone(),
        rate,
        loop_lag,
    };
    let report = write_report(&subjects, &max_runs, &rate_runs, &idle_results, &setup);
    h.stop()?;
    let path = report.write("proxy")?;
    eprintln!("xtask: bench proxy: wrote {}", path.display());
    Ok(())
}

/// Memory per idle keep-alive connection, at each count, once per subject: `idle[c][s]`.
fn idle_rounds(h: &mut Harness, opts: &Options, subjects: &[Subject]) -> Result<Vec<Vec<IdleResult>>> {
    let mut idle_results = Vec::new();
    for &count in &opts.idle_connections {
        let mut at_count = Vec::new();
        for s in subjects {
            eprintln!("xtask: {count} idle keep-alive connections to {}", s.name);
            at_count.push(idle::measure(s.tree, s.addr, "/", count)?);
            h.check_alive()?;
        }
        idle_results.push(at_count);
    }
    Ok(idle_results)
}

/// gatewayd's `gateway_worker_loop_lag_seconds` buckets (cumulative, summed over workers), in
/// exposition order.
fn loop_lag(metrics: SocketAddr) -> Result<Vec<(String, f64)>> {
    histogram(metrics, "gateway_worker_loop_lag_seconds")
}

/// The buckets of gatewayd's histogram `name` (cumulative, summed over every label set), in
/// exposition order.
pub(super) fn histogram(metrics: SocketAddr, name: &str) -> Result<Vec<(String, f64)>> {
    let response = http::get(metrics, "/metrics")?;
    let text = String::from_utf8_lossy(&response.body);
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(String, f64)> = Vec::new();
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let (series, value) = line.rsplit_once(' ').context("a sample without a value")?;
        let le = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()).context("a bucket without le")?;
        let value: f64 = value.parse().context("a bucket count that is not a number")?;
        match buckets.iter_mut().find(|(l, _)| l == le) {
            Some((_, sum)) => *sum += value,
            None => buckets.push((le.to_owned(), value)),
        }
    }
    if buckets.is_empty() {
        anyhow::bail!("gatewayd exports no {name} buckets");
    }
    Ok(buckets)
}

/// `after - before`, bucket by bucket (both read from the same gatewayd).
pub(super) fn histogram_delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after.iter().zip(before).map(|((le, a), (_, b))| (le.clone(), a - b)).collect()
}

/// `nginx -p PREFIX -c PREFIX/nginx.conf`, pinned to `cpus`.
pub(super) fn nginx_command(cpus: &CpuList, prefix: &Path) -> Command {
    let mut cmd = cpus.taskset("nginx");
    // -e: the error log before the config is read (the compiled-in one may not be writable).
    cmd.arg("-p").arg(prefix).arg("-e").arg(prefix.join("error.log")).arg("-c").arg(prefix.join("nginx.conf"));
    cmd
}

/// One GET through the subject must answer 200 "ok": a misrouted proxy would benchmark its
/// error page.
fn sanity_check(s: &Subject) -> Result<()> {
    let response = http::get(s.addr, "/")?;
    if response.status != 200 || response.body != b"ok" {
        bail!(
            "{} answered {} {:?} instead of 200 \"ok\"",
            s.name,
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    Ok(())
}

/// gatewayd as users run it, with its defaults (h2c sniffing, forwarding headers, request ids,
/// latency headers, metrics) except the access log (the audit log, off like nginx's) and the
/// admin socket (not needed).
pub(super) fn gatewayd_conf(listen: SocketAddr, metrics: SocketAddr, upstream: SocketAddr, workers: usize) -> String {
    upstream_routes(gatewayd_server(listen, metrics, workers), upstream).build()
}

/// The upstream as gatewayd's one service (its default idle pool, as nginx's `keepalive`) and
/// one open route to it.
pub(super) fn upstream_routes(conf: GwConf, upstream: SocketAddr) -> GwConf {
    conf.service("upstream", upstream, Some(UPSTREAM_KEEPALIVE)).route("all", "upstream", &[], "none", "")
}

/// The part of a benchmark's gatewayd config every benchmark shares: workers, one plain
/// listener, metrics, no admin socket. Benchmarks add their services and routes.
pub(super) fn gatewayd_server(listen: SocketAddr, metrics: SocketAddr, workers: usize) -> GwConf {
    GwConf::new(workers).server("log_level = \"warn\"").listener("bench", listen).metrics(metrics).no_admin()
}

/// nginx's `location /` doing what gatewayd does by default: HTTP/1.1 keep-alive to the
/// `backend` upstream block, forwarding headers, a request id both ways, the upstream's timing
/// in a response header.
pub(super) const NGINX_PROXY_LOCATION: &str = "        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Forwarded \"for=$remote_addr;proto=$scheme;host=$host\";
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;
            add_header Server-Timing \"upstream;dur=$upstream_response_time\" always;
        }";

/// Directives both nginx instances share: foreground, files under the prefix, enough
/// descriptors for the idle-connection measurement, no access log.
pub(super) fn nginx_common(prefix: &Path, workers: usize, nofile: u64) -> Result<String> {
    fs::create_dir_all(prefix)?;
    let p = prefix.display();
    Ok(format!(
        "daemon off;
worker_processes {workers};
pid {p}/nginx.pid;
error_log {p}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {nofile};
}}
"
    ))
}

pub(super) fn nginx_temp_paths(prefix: &Path) -> String {
    let p = prefix.display();
    format!(
        "    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
"
    )
}

pub(super) fn nginx_upstream_conf(prefix: &Path, listen: SocketAddr, workers: usize, nofile: u64) -> Result<String> {
    nginx_upstream_conf_with(prefix, listen, "", workers, nofile)
}

/// The upstream with more server lines (`bench h2`: HTTP/2 listeners and their certificate).
pub(super) fn nginx_upstream_conf_with(
    prefix: &Path,
    listen: SocketAddr,
    extra: &str,
    workers: usize,
    nofile: u64,
) -> Result<String> {
    Ok(format!(
        "{}http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{}    server {{
        listen {listen} reuseport backlog=1024;
{extra}        location / {{
            return 200 \"ok\";
        }}
    }}
}}
",
        nginx_common(prefix, workers, nofile)?,
        nginx_temp_paths(prefix)
    ))
}

/// nginx doing what gatewayd does by default: HTTP/1.1 keep-alive pool to the upstream,
/// forwarding headers, a request id both ways, the upstream's timing in a response header,
/// and the same idle timeout (60s).
fn nginx_proxy_conf(
    prefix: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    nofile: u64,
) -> Result<String> {
    nginx_proxy_conf_with(prefix, listen, "", upstream, workers, nofile)
}

/// The proxy with more server lines (`bench h2`: HTTP/2 listeners and their certificate).
pub(super) fn nginx_proxy_conf_with(
    prefix: &Path,
    listen: SocketAddr,
    extra: &str,
    upstream: SocketAddr,
    workers: usize,
    nofile: u64,
) -> Result<String> {
    Ok(format!(
        "{}http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
{}    upstream backend {{
        server {upstream};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen {listen} reuseport backlog=1024;
{extra}{NGINX_PROXY_LOCATION}
    }}
}}
",
        nginx_common(prefix, workers, nofile)?,
        nginx_temp_paths(prefix)
    ))
}
