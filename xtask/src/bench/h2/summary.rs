//! `bench/results/h2.md` from the runs of `bench h2`.

use std::{process::Command, time::Duration};

use super::{DIRECT, GATEWAYD, ModeRuns, NAMES, NGINX, OHA_CONNECTIONS, OHA_STREAMS, PROXIES, SHAPES, WARMUP_SECS};
use crate::bench::{
    Options,
    cpus::CpuPlan,
    harness::Measured,
    report::{self, Machine, Pooled, Report, median, num, thousands},
};

pub struct Setup<'a> {
    pub opts: &'a Options,
    pub plan: CpuPlan,
    pub machine: Machine,
    pub load_after: String,
    pub commands: Vec<String>,
    pub configs: Vec<(String, &'static str, String)>,
    pub wall: Duration,
}

/// The median over rounds of `f` for each subject.
fn per_subject<T>(runs: &[Vec<Measured<T>>], f: impl Fn(&Measured<T>) -> f64) -> Vec<f64> {
    runs.iter().map(|rounds| median(&rounds.iter().map(&f).collect::<Vec<_>>())).collect()
}

/// The figures of one mode per subject: medians over rounds, latency percentiles over every
/// round's requests pooled.
struct Figures {
    max_rps: Vec<Vec<f64>>,
    max_cpu: Vec<Vec<f64>>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    p999: Vec<f64>,
    /// The requests the latency percentiles rest on.
    samples: Vec<usize>,
    rate_cpu: Vec<f64>,
}

impl Figures {
    fn of(m: &ModeRuns) -> Figures {
        let pooled: Vec<Pooled> =
            m.fixed.iter().map(|rounds| Pooled::of(rounds.iter().map(|r| r.value.latencies.as_slice()))).collect();
        Figures {
            max_rps: m.max.iter().map(|runs| per_subject(runs, |r| r.value.rps)).collect(),
            max_cpu: m.max.iter().map(|runs| per_subject(runs, |r| r.cpu_us_per(r.value.requests))).collect(),
            p50: pooled.iter().map(|p| p.p50 * 1e3).collect(),
            p99: pooled.iter().map(|p| p.p99 * 1e3).collect(),
            p999: pooled.iter().map(|p| p.p999 * 1e3).collect(),
            samples: pooled.iter().map(|p| p.samples).collect(),
            rate_cpu: per_subject(&m.fixed, |r| r.cpu_us_per(r.value.requests)),
        }
    }
}

/// How many of `buckets`' observations were above `le` (the total minus the bucket's count).
fn above(buckets: &[(String, f64)], le: &str) -> f64 {
    let total = buckets.last().map_or(0.0, |(_, n)| *n);
    buckets.iter().find(|(l, _)| l == le).map_or(f64::NAN, |(_, n)| total - n)
}

/// gatewayd's own histograms over its fixed-rate runs: are its slow requests slow inside it, or
/// waiting for the upstream?
fn inside_section(rep: &mut Report, m: &ModeRuns) {
    let i = &m.inside;
    rep.subheading(&format!("{}: where gatewayd's slow requests spent their time", m.mode.title()));
    let total = i.request.last().map_or(0.0, |(_, n)| *n);
    let rows: Vec<Vec<String>> = i
        .request
        .iter()
        .filter(|(le, _)| le != "+Inf" && le.parse::<f64>().is_ok_and(|v| v <= 0.05))
        .map(|(le, _)| {
            let ms = le.parse::<f64>().map_or(f64::NAN, |v| v * 1e3);
            vec![
                format!("> {} ms", num(ms, 1)),
                num(above(&i.request, le), 0),
                num(above(&i.upstream, le), 0),
                num(above(&i.loop_lag, le), 0),
            ]
        })
        .collect();
    rep.paragraph(&format!(
        "From gatewayd's metrics, read before and after the fixed-rate runs at {} req/s ({} requests through \
         gatewayd, {} loop-lag samples): requests whose time inside gatewayd (head received to response \
         head sent, `gateway_request_duration_seconds`) exceeded each bound, those whose wait for the \
         upstream's response head did (`gateway_upstream_duration_seconds`), and loop-lag probes that \
         waited longer (`gateway_worker_loop_lag_seconds`). Equal counts in the first two columns: the \
         slow requests were slow at the upstream (one nginx on the load CPUs, beside the load generator), \
         not in gatewayd.",
        m.rate,
        thousands(total as usize),
        thousands(i.loop_lag.last().map_or(0.0, |(_, n)| *n) as usize),
    ));
    rep.table(&["bound", "requests slower inside gatewayd", "of them: upstream wait", "loop-lag samples"], &rows);
}

fn added(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| v - values[DIRECT]).collect()
}

pub fn write_report(modes: &[ModeRuns], setup: &Setup<'_>) -> Report {
    let background: Vec<f64> = modes
        .iter()
        .flat_map(|m| {
            PROXIES.iter().flat_map(move |&s| {
                m.max
                    .iter()
                    .flat_map(move |runs| runs[s].iter().map(|r| r.background))
                    .chain(m.fixed[s].iter().map(|r| r.background))
            })
        })
        .collect();
    let mut rep = Report::new("Benchmark: h2 (HTTP/2 clients, HTTP/1.1 upstream)");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench h2` on {} (gatewayd {}) in {} s. Medians of {} interleaved rounds per \
         subject, except the latency percentiles at the fixed rate: those rank every round's requests \
         together (oha's per-request database; the count is in the table), so a p99.9 is the slowest 0.1 % \
         of all rounds' requests together rather than a median of each round's slowest 0.1 %; raw runs (each with its own percentiles) below. Load average {} at the start, {} at the end; other processes used a median \
         {} of the proxy CPUs during the runs (\"background\": about 0% on a quiet machine; well above that the \
         figures say more about the neighbours than about the proxies — a busy-machine run).",
        setup.machine.date,
        report::git_revision(),
        setup.wall.as_secs(),
        setup.opts.reps,
        setup.machine.loadavg,
        setup.load_after,
        percent(median(&background)),
    ));

    let mut goals = Vec::new();
    for m in modes {
        let f = Figures::of(m);
        let r = m.rate;
        rep.heading(m.mode.title());
        let mut rows = Vec::new();
        let mut row = |label: String, values: &[f64], digits: usize, proxies_only: bool| {
            rows.push(report::proxy_row(label, values, digits, proxies_only));
        };
        for (i, shape) in SHAPES.iter().enumerate() {
            row(format!("max requests/s (h2load {})", shape.label()), &f.max_rps[i], 0, false);
            row(format!("CPU µs/request at max rate ({}) ¹", shape.label()), &f.max_cpu[i], 1, false);
        }
        row(format!("p50 latency at {r} req/s (ms)"), &f.p50, 3, false);
        row(format!("p99 latency at {r} req/s (ms)"), &f.p99, 3, false);
        row(format!("p99.9 latency at {r} req/s (ms)"), &f.p999, 3, false);
        row("added p50 vs direct (ms)".into(), &added(&f.p50), 3, true);
        row("added p99 vs direct (ms)".into(), &added(&f.p99), 3, true);
        row("added p99.9 vs direct (ms)".into(), &added(&f.p999), 3, true);
        row(format!("CPU µs/request at {r} req/s ¹"), &f.rate_cpu, 1, false);
        let mut count = vec![format!("requests the latency percentiles at {r} req/s rank (all rounds)")];
        count.extend(f.samples.iter().map(|&n| thousands(n)));
        count.extend(["–".to_owned(), "–".to_owned()]);
        rows.push(count);
        let mut header = vec![""];
        header.extend(NAMES);
        header.extend(["gatewayd / nginx", "gatewayd / haproxy"]);
        rep.table(&header, &rows);

        let mut goal = |label: String, (g, x): (f64, f64), unit: &str, digits: usize, ok: bool| {
            goals.push(vec![
                m.mode.title().to_owned(),
                label,
                format!("{} {unit}", num(g, digits)),
                format!("{} {unit}", num(x, digits)),
                (if ok { "met" } else { "**not met**" }).to_owned(),
            ]);
        };
        let pair = |v: &[f64]| (v[GATEWAYD], v[NGINX]);
        for (i, shape) in SHAPES.iter().enumerate() {
            let (g, x) = pair(&f.max_cpu[i]);
            goal(format!("CPU per request at max rate ({}) ≤ nginx's", shape.label()), (g, x), "µs", 1, g <= x);
            let (g, x) = pair(&f.max_rps[i]);
            goal(format!("highest rate ({}) ≥ nginx's", shape.label()), (g, x), "req/s", 0, g >= x);
        }
        let (g, x) = pair(&f.rate_cpu);
        goal(format!("CPU per request at {r} req/s ≤ nginx's"), (g, x), "µs", 1, g <= x);
        let (g, x) = pair(&added(&f.p99));
        goal(format!("added p99 at {r} req/s ≤ nginx's"), (g, x), "ms", 3, g <= x);
        let (g, x) = pair(&added(&f.p999));
        goal(format!("added p99.9 at {r} req/s ≤ nginx's"), (g, x), "ms", 3, g <= x);
    }
    rep.paragraph(
        "¹ CPU time (user + system) of the subject's process tree divided by the requests it served during the \
         run; for \"origin direct\" that is an nginx answering h2 itself (`return 200 \"ok\"`) on the subject \
         CPUs, with the same TLS settings: the baseline of \"added\" latency.",
    );
    rep.paragraph(
        "Where gatewayd's instructions per HTTP/2 request go (callgrind, with the command to re-run it) and \
         what was tried to lower them: [h2-profile.md](h2-profile.md).",
    );
    for m in modes {
        inside_section(&mut rep, m);
    }
    rep.heading("Goals");
    rep.table(&["clients", "goal", "gatewayd", "nginx", "verdict"], &goals);

    for m in modes {
        rep.heading(&format!("Raw runs: {}", m.mode.title()));
        let mut rows = Vec::new();
        let rounds = m.fixed.first().map_or(0, Vec::len);
        for round in 0..rounds {
            for (s, name) in NAMES.iter().enumerate() {
                for (i, shape) in SHAPES.iter().enumerate() {
                    let run = &m.max[i][s][round];
                    rows.push(raw_row(
                        round,
                        name,
                        &format!("h2load {}", shape.label()),
                        run,
                        run.value.rps,
                        run.value.requests,
                        s,
                        "–",
                    ));
                }
                let run = &m.fixed[s][round];
                let latency = format!(
                    "{} / {} / {}",
                    num(run.value.p50 * 1e3, 3),
                    num(run.value.p99 * 1e3, 3),
                    num(run.value.p999 * 1e3, 3)
                );
                rows.push(raw_row(
                    round,
                    name,
                    &format!("oha {} req/s", m.rate),
                    run,
                    run.value.rps,
                    run.value.requests,
                    s,
                    &latency,
                ));
            }
        }
        rep.table(
            &[
                "round",
                "subject",
                "load",
                "requests/s",
                "requests",
                "CPU µs/request",
                "p50 / p99 / p99.9 ms",
                "background on proxy CPUs",
            ],
            &rows,
        );
    }

    rep.heading("Setup");
    let o = setup.opts;
    let mut rows = report::proxy_setup_rows(&setup.machine, &setup.plan);
    rows.extend([
            vec!["upstream".into(), "nginx, `return 200 \"ok\"`, HTTP/1.1 keep-alive to the proxies, on the load CPUs".into()],
            vec!["origin direct".into(), "the same nginx `return 200 \"ok\"` answering h2c and h2 itself, one worker on the subject CPUs".into()],
            vec!["TLS".into(), format!(
                "one ECDSA P-256 certificate (`gatewayd certs init`) for all; TLS 1.3 only, rustls' cipher suites and groups for nginx and HAProxy too; negotiated by every subject: {}",
                modes.iter().find_map(|m| m.tls.as_deref()).unwrap_or("–")
            )],
            vec![
                "runs".into(),
                format!(
                    "{} rounds × {} s per subject and measurement, interleaved (direct, gatewayd, nginx, haproxy, …), after a {WARMUP_SECS} s warm-up each",
                    o.reps,
                    o.duration(super::DEFAULT_SECS).as_secs()
                ),
            ],
            vec![
                "fixed rate".into(),
                format!("half the lowest of the proxies' median highest rates (h2load {}), oha -c {OHA_CONNECTIONS} -p {OHA_STREAMS}", SHAPES[0].label()),
            ],
            vec!["gatewayd".into(), report::git_revision()],
            vec!["nginx".into(), report::version_of(Command::new("nginx").arg("-v"))],
            vec!["haproxy".into(), report::version_of(Command::new("haproxy").arg("-v"))],
            vec!["h2load".into(), report::version_of(Command::new("h2load").arg("--version"))],
            vec!["oha".into(), report::version_of(Command::new("oha").arg("--version"))],
    ]);
    rep.table(&["", ""], &rows);
    rep.commands_and_configs(&setup.commands, &setup.configs);
    rep
}

#[allow(clippy::too_many_arguments)]
fn raw_row<T>(
    round: usize,
    name: &str,
    load: &str,
    run: &Measured<T>,
    rps: f64,
    requests: u64,
    subject: usize,
    latency: &str,
) -> Vec<String> {
    vec![
        (round + 1).to_string(),
        name.to_owned(),
        load.to_owned(),
        num(rps, 0),
        requests.to_string(),
        num(run.cpu_us_per(requests), 1),
        latency.to_owned(),
        if subject == DIRECT { "–".to_owned() } else { percent(run.background) },
    ]
}

/// `0.123` → `12.3%`.
fn percent(share: f64) -> String {
    if share.is_finite() { format!("{:.1}%", share * 100.0) } else { "–".to_owned() }
}
