//! `bench/results/proxy.md` from the runs of `bench proxy`.

use std::process::Command;

use super::{DIRECT, DIRECT_NAME, EXTRAPOLATE_TO, GATEWAYD, IDLE_GOAL_BYTES, MaxRun, NGINX, PROXIES, RateRun, WARMUP};
use crate::bench::{
    Options, Subject,
    cpus::CpuPlan,
    idle::IdleResult,
    report::{self, Machine, Pooled, Report, median, num, thousands},
};

pub struct Setup<'a> {
    pub opts: &'a Options,
    pub plan: &'a CpuPlan,
    pub machine: Machine,
    pub load_after: String,
    pub commands: Vec<String>,
    pub configs: Vec<(String, &'static str, String)>,
    pub rate: u64,
    /// gatewayd's loop-lag buckets (upper bound, cumulative count) over the fixed-rate phase.
    pub loop_lag: Vec<(String, f64)>,
}

/// `idle[c][s]`: the idle measurement at the c-th count for subject s.
pub fn write_report(
    subjects: &[Subject],
    max_runs: &[Vec<MaxRun>],
    rate_runs: &[Vec<RateRun>],
    idle: &[Vec<IdleResult>],
    setup: &Setup<'_>,
) -> Report {
    let n = subjects.len();
    let med = |f: &dyn Fn(usize) -> Vec<f64>, s: usize| median(&f(s));
    let max_rps = |s: usize| max_runs[s].iter().map(|r| r.value.rps).collect::<Vec<_>>();
    let max_cpu = |s: usize| max_runs[s].iter().map(|r| r.cpu_us_per(r.value.requests)).collect::<Vec<_>>();
    // Latency percentiles rank every run's requests together (`report::Pooled`), in ms.
    let pooled: Vec<Pooled> =
        rate_runs.iter().map(|runs| Pooled::of(runs.iter().map(|r| r.value.latencies.as_slice()))).collect();
    let p50 = |s: usize| pooled[s].p50 * 1e3;
    let p99 = |s: usize| pooled[s].p99 * 1e3;
    let p999 = |s: usize| pooled[s].p999 * 1e3;
    let rate_cpu = |s: usize| rate_runs[s].iter().map(|r| r.cpu_us_per(r.value.requests)).collect::<Vec<_>>();
    // The largest count: the row the summary and the extrapolation use.
    let last = idle.len().saturating_sub(1);
    let idle_pss = |c: usize, s: usize| idle[c][s].pss_per_connection(&idle[c][s].after_request);
    let idle_connected = |c: usize, s: usize| idle[c][s].pss_per_connection(&idle[c][s].connected);
    let load = setup.opts.load.name();

    let r = setup.rate;
    let mut rows = Vec::new();
    let mut row = |label: String, values: Vec<f64>, digits: usize, proxies_only: bool| {
        rows.push(report::proxy_row(label, &values, digits, proxies_only));
    };
    let all = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<_>>();
    row(format!("max requests/s ({load})"), all(&|s| med(&max_rps, s)), 0, false);
    row("CPU µs/request at max rate ¹".into(), all(&|s| med(&max_cpu, s)), 1, false);
    row(format!("p50 latency at {r} req/s (ms)"), all(&p50), 3, false);
    row(format!("p99 latency at {r} req/s (ms)"), all(&p99), 3, false);
    row(format!("p99.9 latency at {r} req/s (ms)"), all(&p999), 3, false);
    let added = |f: &dyn Fn(usize) -> f64| all(&|s| f(s) - f(DIRECT));
    row("added p50 vs direct (ms)".into(), added(&p50), 3, true);
    row("added p99 vs direct (ms)".into(), added(&p99), 3, true);
    row("added p99.9 vs direct (ms)".into(), added(&p999), 3, true);
    row(format!("CPU µs/request at {r} req/s ¹"), all(&|s| med(&rate_cpu, s)), 1, false);
    for (c, at) in idle.iter().enumerate() {
        let count = at.first().map_or(0, |i| i.connections);
        row(
            format!("memory per idle keep-alive connection at {count} (bytes, PSS) ²"),
            all(&|s| idle_pss(c, s)),
            0,
            false,
        );
    }
    if !idle.is_empty() {
        row(
            "memory per connection before any request (bytes, PSS)".into(),
            all(&|s| idle_connected(last, s)),
            0,
            false,
        );
        row(
            format!("idle keep-alive memory at {}k connections (MiB, extrapolated)", EXTRAPOLATE_TO as u64 / 1000),
            all(&|s| idle_pss(last, s) * EXTRAPOLATE_TO / 1024.0 / 1024.0),
            0,
            false,
        );
    }

    // Direct runs leave the proxy CPUs idle for anyone: only the proxies' runs say how much of
    // their CPUs the neighbours took.
    let all_background: Vec<f64> = PROXIES
        .iter()
        .flat_map(|&s| max_runs[s].iter().map(|r| r.background).chain(rate_runs[s].iter().map(|r| r.background)))
        .collect();
    let mut rep = Report::new("Benchmark: proxy");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench proxy` on {} (gatewayd {}). Medians of {} interleaved runs per \
         subject, except the latency percentiles at the fixed rate: those rank every run's requests together \
         (oha's per-request database; requests: {}), so a tail percentile rests on all runs' slowest \
         requests rather than a median of each run's few; raw runs (each with its own percentiles) below. Load average {} at the start, {} at the end; other processes used a \
         median {} of the proxy CPUs during the runs (\"background\" in the raw runs: on a quiet \
         machine it is about 0%; well above that, latency and throughput say more about the \
         neighbours than about the proxies).",
        setup.machine.date,
        report::git_revision(),
        setup.opts.reps,
        subjects.iter().zip(&pooled).map(|(s, p)| format!("{} {}", s.name, thousands(p.samples))).collect::<Vec<_>>().join(", "),
        setup.machine.loadavg,
        setup.load_after,
        percent(median(&all_background)),
    ));
    rep.heading("Summary");
    let mut header: Vec<&str> = vec![""];
    header.extend(subjects.iter().map(|s| s.name));
    header.extend(["gatewayd / nginx", "gatewayd / haproxy"]);
    rep.table(&header, &rows);
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
        .filter(|(_, _, run)| run.value.rps < 0.95 * r as f64)
        .map(|(i, subject, run)| format!("{} (run {i}: {} req/s)", subject.name, num(run.value.rps, 0)))
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
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let both = |f: &dyn Fn(usize) -> f64| (f(GATEWAYD), f(NGINX));
    let mut goals = Vec::new();
    let mut goal = |label: String, (g, x): (f64, f64), unit: &str, digits: usize, ok: bool| {
        goals.push(vec![
            label,
            format!("{} {unit}", num(g, digits)),
            format!("{} {unit}", num(x, digits)),
            verdict(ok).to_owned(),
        ]);
    };
    let (g, x) = both(&|s| med(&rate_cpu, s));
    goal(format!("CPU per request at {r} req/s ≤ nginx's"), (g, x), "µs", 1, g <= x);
    let (g, x) = both(&|s| med(&max_cpu, s));
    goal("CPU per request at max rate ≤ nginx's".into(), (g, x), "µs", 1, g <= x);
    let (g, x) = both(&|s| med(&max_rps, s));
    goal("highest rate ≥ nginx's".into(), (g, x), "req/s", 0, g >= x);
    let (g, x) = both(&|s| p99(s) - p99(DIRECT));
    goal(format!("added p99 at {r} req/s ≤ nginx's"), (g, x), "ms", 3, g <= x);
    let (g, x) = both(&|s| p999(s) - p999(DIRECT));
    goal(format!("added p99.9 at {r} req/s ≤ nginx's"), (g, x), "ms", 3, g <= x);
    for (c, at) in idle.iter().enumerate() {
        let count = at.first().map_or(0, |i| i.connections);
        let (g, x) = both(&|s| idle_pss(c, s));
        goal(format!("memory per idle keep-alive connection at {count} ≤ 4 KiB"), (g, x), "B", 0, g <= IDLE_GOAL_BYTES);
    }
    rep.table(&["goal", "gatewayd", "nginx", "verdict"], &goals);

    rep.heading(&format!("Raw runs: highest rate ({load}, closed loop)"));
    let raw: Vec<Vec<String>> = by_run(subjects, max_runs)
        .map(|(i, subject, run)| {
            vec![
                i.to_string(),
                subject.name.to_owned(),
                num(run.value.rps, 0),
                run.value.requests.to_string(),
                run.value.socket_errors.to_string(),
                num(run.cpu_us_per(run.value.requests), 1),
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
                num(run.value.rps, 0),
                num(run.value.p50 * 1e3, 3),
                num(run.value.p99 * 1e3, 3),
                num(run.value.p999 * 1e3, 3),
                num(run.cpu_us_per(run.value.requests), 1),
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

    rep.heading("gatewayd's event-loop lag during the fixed-rate phase");
    rep.paragraph(
        "`gateway_worker_loop_lag_seconds`: how long a task that became ready waited for the worker's \
         event loop (a probe yielding about 20 times a second), counted over the whole fixed-rate phase \
         (its own runs and the other subjects'). Samples above a millisecond are stalls every request \
         then waiting pays; on a busy machine they include the worker thread being preempted.",
    );
    let total = setup.loop_lag.last().map_or(0.0, |(_, n)| *n);
    let mut below = 0.0;
    let mut rows = Vec::new();
    for (le, cumulative) in &setup.loop_lag {
        rows.push(vec![
            format!("≤ {le} s"),
            num(cumulative - below, 0),
            if total > 0.0 { percent(cumulative / total) } else { "–".to_owned() },
        ]);
        below = *cumulative;
    }
    rep.table(&["lag", "samples", "cumulative share"], &rows);

    idle_tables(&mut rep, subjects, idle);

    rep.heading("Setup");
    let o = setup.opts;
    let mut rows = report::proxy_setup_rows(&setup.machine, setup.plan);
    rows.extend([
            vec!["access log".into(), "off for all (gatewayd: no `[audit]`; nginx: `access_log off`; haproxy: no `log` in its proxies)".into()],
            vec!["upstream".into(), "nginx, `return 200 \"ok\"` (2-byte body), keep-alive".into()],
            vec![
                "runs".into(),
                format!(
                    "{} × {} s per subject and phase, interleaved (direct, gatewayd, nginx, haproxy, direct, …), after a {} s warm-up each; {} connections",
                    o.reps,
                    o.duration(10).as_secs(),
                    WARMUP.as_secs(),
                    o.connections
                ),
            ],
            vec!["fixed rate".into(), format!("{r} req/s: half the lowest of the proxies' median highest rates")],
            vec!["gatewayd".into(), report::git_revision()],
            vec!["rustc".into(), report::version_of(Command::new("rustc").arg("--version").current_dir(crate::cmd::workspace_root()))],
            vec!["nginx".into(), report::version_of(Command::new("nginx").arg("-v"))],
            vec!["haproxy".into(), report::version_of(Command::new("haproxy").arg("-v"))],
            vec![load.into(), report::version_of(Command::new(load).arg(if load == "wrk" { "-v" } else { "-h" }))],
            vec!["oha".into(), report::version_of(Command::new("oha").arg("--version"))],
    ]);
    rep.table(&["", ""], &rows);
    rep.commands_and_configs(&setup.commands, &setup.configs);
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

/// The idle-connection section both reports share: every count's memory, per subject.
pub fn idle_tables(rep: &mut Report, subjects: &[Subject], idle: &[Vec<IdleResult>]) {
    rep.heading("Idle keep-alive connections");
    rep.paragraph(
        "Memory of the subject's process tree before, with the connections open (nothing sent), after one \
         request answered on each (then idle: the state that matters), and after closing them, at each \
         count in turn. Per-connection figures are growth over \"before\".",
    );
    let kib = |b: u64| num(b as f64 / 1024.0, 0);
    let mut rows = Vec::new();
    for at in idle {
        for (subject, i) in subjects.iter().zip(at) {
            rows.push(vec![
                i.connections.to_string(),
                subject.name.to_owned(),
                format!("{} / {}", kib(i.before.pss_bytes), kib(i.before.rss_bytes)),
                format!(
                    "{} / {}",
                    num(i.pss_per_connection(&i.connected), 0),
                    num(i.rss_per_connection(&i.connected), 0)
                ),
                format!(
                    "{} / {}",
                    num(i.pss_per_connection(&i.after_request), 0),
                    num(i.rss_per_connection(&i.after_request), 0)
                ),
                format!("{} / {}", kib(i.released.pss_bytes), kib(i.released.rss_bytes)),
            ]);
        }
    }
    rep.table(
        &[
            "connections",
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
}
