//! `cargo xtask bench proxy`: the same small-response keep-alive workload against the upstream
//! directly, through gatewayd and through nginx configured as the equivalent reverse proxy,
//! interleaved, the proxies pinned apart from the client and the upstream. Writes
//! `bench/results/proxy.md`.
//!
//! The upstream is nginx answering `return 200 "ok"`: a separate process (pinned with the
//! client, measurable on its own), among the fastest servers there is (it must not be the
//! bottleneck), already a dependency, and nothing of ours to maintain or to suspect.

use std::{fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    Background, Options, Subject,
    cpus::{CpuList, CpuPlan},
    free_port, gatewayd_binary, http,
    idle::{self, IdleResult},
    interleave,
    load::{self, Oha, OhaResult, Wrk, WrkResult},
    process::Service,
    report::{self, Machine, Report, median, num, ratio},
    run_dir,
};
use crate::{cmd::cargo, cmd::exec, deps};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
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
const DIRECT_NAME: &str = "upstream direct";

struct MaxRun {
    wrk: WrkResult,
    cpu_us_per_request: f64,
    /// Share of the proxy CPUs other processes used meanwhile.
    background: f64,
}

struct RateRun {
    oha: OhaResult,
    cpu_us_per_request: f64,
    background: f64,
}

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    load::ensure_oha()?;
    exec(cargo().args(["build", "--release", "--locked", "--package", "gateway-userspace", "--bin", "gatewayd"]))?;
    let gatewayd = gatewayd_binary();

    let plan = CpuPlan::detect()?;
    let nofile = idle::raise_fd_limit()?;
    plan.pin_self_to_load()?;
    let workers = plan.subject.len();
    let dir = run_dir("proxy")?;
    let machine = Machine::read();
    eprintln!(
        "xtask: bench proxy: subject CPUs {}, load CPUs {}, {workers} worker(s); logs in {}",
        plan.subject,
        plan.load,
        dir.display()
    );

    // The upstream, with the load, on the load CPUs.
    let upstream_addr = free_port()?;
    let upstream_conf = nginx_upstream_conf(&dir.join("upstream"), upstream_addr, plan.load.len(), nofile)?;
    let (mut upstream, upstream_line) =
        start_nginx("upstream nginx", &plan.load, &dir.join("upstream"), &upstream_conf)?;
    upstream.wait_http_ok(upstream_addr, "/", READY_TIMEOUT)?;

    let gw_addr = free_port()?;
    let gw_conf = gatewayd_conf(gw_addr, free_port()?, upstream_addr, workers);
    let gw_conf_path = dir.join("gatewayd.toml");
    fs::write(&gw_conf_path, &gw_conf)?;
    let mut gw_cmd = plan.subject.taskset(gatewayd.to_str().context("gatewayd path is not UTF-8")?);
    gw_cmd.arg("--config").arg(&gw_conf_path);
    let gw_line = report::shell_line(&gw_cmd);
    let mut gw = Service::start("gatewayd", gw_cmd, &dir.join("gatewayd.log"))?;
    gw.wait_http_ok(gw_addr, "/", READY_TIMEOUT)?;

    let nginx_addr = free_port()?;
    let nginx_conf = nginx_proxy_conf(&dir.join("nginx"), nginx_addr, upstream_addr, workers, nofile)?;
    let (mut nginx, nginx_line) = start_nginx("nginx proxy", &plan.subject, &dir.join("nginx"), &nginx_conf)?;
    nginx.wait_http_ok(nginx_addr, "/", READY_TIMEOUT)?;

    let subjects = [
        Subject { name: DIRECT_NAME, addr: upstream_addr, tree: upstream.tree() },
        Subject { name: "gatewayd", addr: gw_addr, tree: gw.tree() },
        Subject { name: "nginx", addr: nginx_addr, tree: nginx.tree() },
    ];
    for s in &subjects {
        sanity_check(s)?;
    }
    let background = Background { cpus: &plan.subject, own: vec![subjects[GATEWAYD].tree, subjects[NGINX].tree] };
    let mut services = [upstream, gw, nginx];
    let mut alive = || -> Result<()> { services.iter_mut().try_for_each(Service::check_alive) };

    let warm = Wrk { connections: opts.connections, duration: WARMUP };
    for s in &subjects {
        warm.run(&plan.load, &s.url())?;
    }

    // Highest rate, closed loop.
    let wrk = Wrk { connections: opts.connections, duration: opts.duration(10) };
    let max_runs = interleave(opts.reps, &subjects, |_, s| {
        let cpu = s.tree.cpu_time()?;
        let (w, background) = background.measure(|| wrk.run(&plan.load, &s.url()))?;
        let cpu = s.tree.cpu_time()? - cpu;
        alive()?;
        Ok(MaxRun { cpu_us_per_request: cpu.as_secs_f64() * 1e6 / w.requests as f64, wrk: w, background })
    })?;
    let max_rps: Vec<f64> =
        max_runs.iter().map(|runs| median(&runs.iter().map(|r| r.wrk.rps).collect::<Vec<_>>())).collect();

    // Latency at a fixed rate: half what the slower proxy sustains, the same for every subject.
    let rate = ((max_rps[GATEWAYD].min(max_rps[NGINX]) * 0.5) / 100.0).floor() as u64 * 100;
    if rate == 0 {
        bail!("the proxies sustained under 200 requests/s ({max_rps:?}); something is wrong");
    }
    let oha = Oha { connections: opts.connections, duration: opts.duration(10), rate };
    let rate_runs = interleave(opts.reps, &subjects, |_, s| {
        let cpu = s.tree.cpu_time()?;
        let (o, background) = background.measure(|| oha.run(&plan.load, &s.url()))?;
        let cpu = s.tree.cpu_time()? - cpu;
        alive()?;
        Ok(RateRun { cpu_us_per_request: cpu.as_secs_f64() * 1e6 / o.requests as f64, oha: o, background })
    })?;

    // Memory per idle keep-alive connection, once per subject.
    let mut idle_results = Vec::new();
    for s in &subjects {
        eprintln!("xtask: {} idle keep-alive connections to {}", opts.idle_connections, s.name);
        idle_results.push(idle::measure(s.tree, s.addr, "/", opts.idle_connections)?);
        alive()?;
    }
    let load_after = report::loadavg();
    for service in services {
        service.stop()?;
    }

    let setup = Setup {
        opts,
        plan: &plan,
        machine,
        load_after,
        commands: vec![
            report::shell_line(&wrk.command(&plan.load, &subjects[GATEWAYD].url())),
            report::shell_line(&oha.command(&plan.load, &subjects[GATEWAYD].url())),
            gw_line,
            nginx_line,
            upstream_line,
        ],
        configs: vec![
            ("gatewayd.toml", "toml", gw_conf),
            ("nginx proxy: nginx.conf", "nginx", nginx_conf),
            ("upstream: nginx.conf", "nginx", upstream_conf),
        ],
        rate,
    };
    let report = write_report(&subjects, &max_runs, &rate_runs, &idle_results, &setup);
    let path = report.write("proxy")?;
    eprintln!("xtask: bench proxy: wrote {}", path.display());
    Ok(())
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

/// Starts nginx with `conf` under `prefix`; returns it and its command line.
pub(super) fn start_nginx(name: &str, cpus: &CpuList, prefix: &Path, conf: &str) -> Result<(Service, String)> {
    let conf_path = prefix.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut cmd = cpus.taskset("nginx");
    // -e: the error log before the config is read (the compiled-in one may not be writable).
    cmd.arg("-p").arg(prefix).arg("-e").arg(prefix.join("error.log")).arg("-c").arg(&conf_path);
    let line = report::shell_line(&cmd);
    Ok((Service::start(name, cmd, &prefix.join("stdout.log"))?, line))
}

/// gatewayd as users run it, with its defaults (h2c sniffing, forwarding headers, request ids,
/// latency headers, metrics) except the access log (the audit log, off like nginx's) and the
/// admin socket (not needed).
fn gatewayd_conf(listen: SocketAddr, metrics: SocketAddr, upstream: SocketAddr, workers: usize) -> String {
    gatewayd_server(listen, metrics, workers)
        + &format!(
            r#"[[services]]
name = "upstream"
targets = ["{upstream}"]
max_idle_per_target = {UPSTREAM_KEEPALIVE}

[[routes]]
name = "all"
service = "upstream"
auth = "none"
"#
        )
}

/// The part of a benchmark's gatewayd config every benchmark shares: workers, one plain
/// listener, metrics, no admin socket. Benchmarks append their services and routes.
pub(super) fn gatewayd_server(listen: SocketAddr, metrics: SocketAddr, workers: usize) -> String {
    format!(
        r#"[server]
workers = {workers}
log_level = "warn"

[[listeners]]
name = "bench"
bind = "{listen}"

[metrics]
bind = "{metrics}"

[admin]
socket = ""

"#
    )
}

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
    Ok(format!(
        "{}http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{}    server {{
        listen {listen} reuseport backlog=1024;
        location / {{
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
        location / {{
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
        }}
    }}
}}
",
        nginx_common(prefix, workers, nofile)?,
        nginx_temp_paths(prefix)
    ))
}

struct Setup<'a> {
    opts: &'a Options,
    plan: &'a CpuPlan,
    machine: Machine,
    load_after: String,
    commands: Vec<String>,
    configs: Vec<(&'static str, &'static str, String)>,
    rate: u64,
}

fn write_report(
    subjects: &[Subject; 3],
    max_runs: &[Vec<MaxRun>],
    rate_runs: &[Vec<RateRun>],
    idle: &[IdleResult],
    setup: &Setup<'_>,
) -> Report {
    let med = |f: &dyn Fn(usize) -> Vec<f64>, s: usize| median(&f(s));
    let max_rps = |s: usize| max_runs[s].iter().map(|r| r.wrk.rps).collect::<Vec<_>>();
    let max_cpu = |s: usize| max_runs[s].iter().map(|r| r.cpu_us_per_request).collect::<Vec<_>>();
    let ms =
        |f: fn(&OhaResult) -> f64| move |s: usize| rate_runs[s].iter().map(|r| f(&r.oha) * 1e3).collect::<Vec<_>>();
    let p50 = ms(|o| o.p50);
    let p99 = ms(|o| o.p99);
    let p999 = ms(|o| o.p999);
    let rate_cpu = |s: usize| rate_runs[s].iter().map(|r| r.cpu_us_per_request).collect::<Vec<_>>();
    let idle_pss = |s: usize| idle[s].pss_per_connection(&idle[s].after_request);
    let idle_connected = |s: usize| idle[s].pss_per_connection(&idle[s].connected);

    let r = setup.rate;
    let mut rows = Vec::new();
    let mut row = |label: String, values: [f64; 3], digits: usize, proxies_only: bool| {
        let first = if proxies_only { "–".to_owned() } else { num(values[DIRECT], digits) };
        rows.push(vec![
            label,
            first,
            num(values[GATEWAYD], digits),
            num(values[NGINX], digits),
            ratio(values[GATEWAYD], values[NGINX]),
        ]);
    };
    let all = |f: &dyn Fn(usize) -> f64| [f(DIRECT), f(GATEWAYD), f(NGINX)];
    row("max requests/s (wrk)".into(), all(&|s| med(&max_rps, s)), 0, false);
    row("CPU µs/request at max rate ¹".into(), all(&|s| med(&max_cpu, s)), 1, false);
    row(format!("p50 latency at {r} req/s (ms)"), all(&|s| med(&p50, s)), 3, false);
    row(format!("p99 latency at {r} req/s (ms)"), all(&|s| med(&p99, s)), 3, false);
    row(format!("p99.9 latency at {r} req/s (ms)"), all(&|s| med(&p999, s)), 3, false);
    let added = |f: &dyn Fn(usize) -> Vec<f64>| all(&|s| med(f, s) - med(f, DIRECT));
    row("added p50 vs direct (ms)".into(), added(&p50), 3, true);
    row("added p99 vs direct (ms)".into(), added(&p99), 3, true);
    row(format!("CPU µs/request at {r} req/s ¹"), all(&|s| med(&rate_cpu, s)), 1, false);
    row("memory per idle keep-alive connection (bytes, PSS) ²".into(), all(&idle_pss), 0, false);
    row("memory per connection before any request (bytes, PSS)".into(), all(&idle_connected), 0, false);
    row(
        format!("idle keep-alive memory at {}k connections (MiB, extrapolated)", EXTRAPOLATE_TO as u64 / 1000),
        all(&|s| idle_pss(s) * EXTRAPOLATE_TO / 1024.0 / 1024.0),
        0,
        false,
    );

    // Direct runs leave the proxy CPUs idle for anyone: only the proxies' runs say how much of
    // their CPUs the neighbours took.
    let all_background: Vec<f64> = [GATEWAYD, NGINX]
        .iter()
        .flat_map(|&s| max_runs[s].iter().map(|r| r.background).chain(rate_runs[s].iter().map(|r| r.background)))
        .collect();
    let mut rep = Report::new("Benchmark: proxy");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench proxy` on {} (gatewayd {}). Medians of {} interleaved runs per \
         subject; raw runs below. Load average {} at the start, {} at the end; other processes used a \
         median {} of the proxy CPUs during the runs (\"background\" in the raw runs: on a quiet \
         machine it is about 0%; well above that, latency and throughput say more about the \
         neighbours than about the proxies).",
        setup.machine.date,
        report::git_revision(),
        setup.opts.reps,
        setup.machine.loadavg,
        setup.load_after,
        percent(median(&all_background)),
    ));
    rep.heading("Summary");
    rep.table(&["", "upstream direct", "gatewayd", "nginx", "gatewayd / nginx"], &rows);
    rep.paragraph(
        "¹ CPU time (user + system, all threads and processes) of the subject's process tree divided by \
         the requests served during the run; for \"upstream direct\" that is the upstream nginx itself. \
         Kernel work done in softirq context for the subject's sockets is partly accounted to whichever \
         process was running, so small differences are noise.  \n\
         ² Growth of the subject's PSS (summed over its processes) with the idle connections open, \
         each having served one request, divided by their number. Userspace memory only: the kernel's \
         socket buffers are the same for every subject and not included.",
    );

    let short: Vec<String> = by_run(subjects, rate_runs)
        .filter(|(_, _, run)| run.oha.rps < 0.95 * r as f64)
        .map(|(i, subject, run)| format!("{} (run {i}: {} req/s)", subject.name, num(run.oha.rps, 0)))
        .collect();
    if !short.is_empty() {
        rep.paragraph(&format!(
            "**Warning:** some runs did not sustain the fixed rate of {r} req/s: {}. Their latency \
             is that of an overloaded server (requests queue in the client and the latency correction \
             counts the wait).",
            short.join(", ")
        ));
    }

    rep.heading("Goals");
    let cpu_g = med(&rate_cpu, GATEWAYD);
    let cpu_n = med(&rate_cpu, NGINX);
    let added_g = med(&p99, GATEWAYD) - med(&p99, DIRECT);
    let added_n = med(&p99, NGINX) - med(&p99, DIRECT);
    let mem_g = idle_pss(GATEWAYD);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    rep.table(
        &["goal", "gatewayd", "nginx", "verdict"],
        &[
            vec![
                format!("CPU per request at {r} req/s ≤ nginx's"),
                format!("{} µs", num(cpu_g, 1)),
                format!("{} µs", num(cpu_n, 1)),
                verdict(cpu_g <= cpu_n).to_owned(),
            ],
            vec![
                format!("added p99 at {r} req/s ≤ nginx's"),
                format!("{} ms", num(added_g, 3)),
                format!("{} ms", num(added_n, 3)),
                verdict(added_g <= added_n).to_owned(),
            ],
            vec![
                "memory per idle keep-alive connection < 4 KiB".to_owned(),
                format!("{} B", num(mem_g, 0)),
                format!("{} B", num(idle_pss(NGINX), 0)),
                verdict(mem_g < IDLE_GOAL_BYTES).to_owned(),
            ],
        ],
    );

    rep.heading("Raw runs: highest rate (wrk, closed loop)");
    let raw: Vec<Vec<String>> = by_run(subjects, max_runs)
        .map(|(i, subject, run)| {
            vec![
                i.to_string(),
                subject.name.to_owned(),
                num(run.wrk.rps, 0),
                run.wrk.requests.to_string(),
                run.wrk.socket_errors.to_string(),
                num(run.cpu_us_per_request, 1),
                background(subject, run.background),
            ]
        })
        .collect();
    rep.table(
        &["run", "subject", "requests/s", "requests", "socket errors", "CPU µs/request", "background on proxy CPUs"],
        &raw,
    );

    rep.heading(&format!("Raw runs: fixed rate {r} req/s (oha, open loop, latency-corrected)"));
    let raw: Vec<Vec<String>> = by_run(subjects, rate_runs)
        .map(|(i, subject, run)| {
            vec![
                i.to_string(),
                subject.name.to_owned(),
                num(run.oha.rps, 0),
                num(run.oha.p50 * 1e3, 3),
                num(run.oha.p99 * 1e3, 3),
                num(run.oha.p999 * 1e3, 3),
                num(run.cpu_us_per_request, 1),
                background(subject, run.background),
            ]
        })
        .collect();
    rep.table(
        &[
            "run",
            "subject",
            "achieved req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU µs/request",
            "background on proxy CPUs",
        ],
        &raw,
    );

    rep.heading(&format!("Idle keep-alive connections ({} per subject)", setup.opts.idle_connections));
    rep.paragraph(
        "Memory of the subject's process tree before, with the connections open (nothing sent), after one \
         request answered on each (then idle: the state that matters), and after closing them. \
         Per-connection figures are growth over \"before\".",
    );
    let kib = |b: u64| num(b as f64 / 1024.0, 0);
    let mut rows = Vec::new();
    for (s, subject) in subjects.iter().enumerate() {
        let i = &idle[s];
        rows.push(vec![
            subject.name.to_owned(),
            format!("{} / {}", kib(i.before.pss_bytes), kib(i.before.rss_bytes)),
            format!("{} / {}", num(i.pss_per_connection(&i.connected), 0), num(i.rss_per_connection(&i.connected), 0)),
            format!(
                "{} / {}",
                num(i.pss_per_connection(&i.after_request), 0),
                num(i.rss_per_connection(&i.after_request), 0)
            ),
            format!("{} / {}", kib(i.released.pss_bytes), kib(i.released.rss_bytes)),
        ]);
    }
    rep.table(
        &[
            "subject",
            "before: PSS / RSS KiB",
            "connected: B/conn PSS / RSS",
            "after one request: B/conn PSS / RSS",
            "closed again: PSS / RSS KiB",
        ],
        &rows,
    );
    rep.paragraph(
        "nginx allocates its connection structures for all `worker_connections` when a worker \
         starts (and touches them while linking the free list), so that part of its per-connection \
         cost is in \"before\", not in the growth; its growth is what a connection adds on top \
         (nginx frees a keep-alive connection's request buffers while it is idle). \"closed again\" \
         shows what the allocator kept after the connections were gone.",
    );

    rep.heading("Setup");
    let m = &setup.machine;
    let o = setup.opts;
    rep.table(
        &["", ""],
        &[
            vec!["machine".into(), format!("{}, {} × {}, {}", m.kernel, m.cpus, m.cpu_model, m.memory)],
            vec!["subject CPUs (proxies)".into(), format!("{} (taskset)", setup.plan.subject)],
            vec!["load CPUs (client, upstream, xtask)".into(), format!("{} (taskset)", setup.plan.load)],
            vec!["workers".into(), format!("gatewayd `workers = {0}`, nginx `worker_processes {0}`", setup.plan.subject.len())],
            vec!["access log".into(), "off for both (gatewayd: no `[audit]`; nginx: `access_log off`)".into()],
            vec!["upstream".into(), "nginx, `return 200 \"ok\"` (2-byte body), keep-alive".into()],
            vec![
                "runs".into(),
                format!(
                    "{} × {} s per subject and phase, interleaved (direct, gatewayd, nginx, direct, …), after a {} s warm-up each; {} connections",
                    o.reps,
                    o.duration(10).as_secs(),
                    WARMUP.as_secs(),
                    o.connections
                ),
            ],
            vec!["fixed rate".into(), format!("{r} req/s: half the lower of the two proxies' median highest rates")],
            vec!["gatewayd".into(), report::git_revision()],
            vec!["rustc".into(), report::version_of(Command::new("rustc").arg("--version").current_dir(crate::cmd::workspace_root()))],
            vec!["nginx".into(), report::version_of(Command::new("nginx").arg("-v"))],
            vec!["wrk".into(), report::version_of(Command::new("wrk").arg("-v"))],
            vec!["oha".into(), report::version_of(Command::new("oha").arg("--version"))],
        ],
    );
    rep.paragraph("Commands (ports are picked free for each run):");
    rep.code("sh", &setup.commands.join("\n"));
    for (name, lang, text) in &setup.configs {
        rep.paragraph(&format!("{name}:"));
        rep.code(lang, text);
    }
    rep
}

/// Results per subject back in the order they ran: (run number from 1, subject, result).
fn by_run<'a, T>(subjects: &'a [Subject], results: &'a [Vec<T>]) -> impl Iterator<Item = (usize, &'a Subject, &'a T)> {
    let reps = results.iter().map(Vec::len).max().unwrap_or(0);
    (0..reps).flat_map(move |i| {
        subjects.iter().zip(results).filter_map(move |(subject, runs)| Some((i + 1, subject, runs.get(i)?)))
    })
}

/// The background share of a proxy's run; `–` for the direct runs, which do not use the proxy
/// CPUs.
fn background(subject: &Subject, share: f64) -> String {
    if subject.name == DIRECT_NAME { "–".to_owned() } else { percent(share) }
}

/// `0.123` → `12.3%`.
fn percent(share: f64) -> String {
    if share.is_finite() { format!("{:.1}%", share * 100.0) } else { "–".to_owned() }
}
