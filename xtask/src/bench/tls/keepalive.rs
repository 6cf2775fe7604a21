//! HTTPS keep-alive (issue 11): `bench proxy`'s workload over TLS 1.3 — small answers on 64
//! keep-alive connections, at the highest rate (wrk) and at a fixed rate (oha, latency-corrected)
//! — through gatewayd and nginx, with the upstream directly (plain HTTP) as the latency baseline;
//! and memory per idle TLS keep-alive connection (after one request), as `bench proxy` measures
//! it for plain connections.

use std::time::Duration;

use anyhow::Result;

use super::client::{KeepAlives, Target};
use crate::bench::{
    harness::{Harness, Measurable, Measured, fixed_rate},
    idle::{self, IdleResult},
    load::{Oha, OhaResult, Wrk, WrkResult},
    procfs::Tree,
    report::{Report, median, num, ratio},
};

/// The goal for memory per idle TLS keep-alive connection (userspace, without kTLS).
pub const IDLE_GOAL_BYTES: f64 = 16.0 * 1024.0;
/// Each subject gets this much load before the measured runs.
const WARMUP: Duration = Duration::from_secs(2);

/// One subject of the keep-alive runs: the upstream directly, or a TLS-terminating proxy.
pub struct Endpoint {
    pub name: &'static str,
    pub url: String,
    pub tree: Tree,
}

/// Indices into the endpoints: the baseline and the two proxies.
const DIRECT: usize = 0;
const GATEWAYD: usize = 1;
const NGINX: usize = 2;

pub struct KeepAliveRuns {
    pub names: Vec<&'static str>,
    pub max: Vec<Vec<Measured<WrkResult>>>,
    pub rate: Vec<Vec<Measured<OhaResult>>>,
    /// The fixed rate (requests/s): half what the slower proxy sustained.
    pub fixed_rate: u64,
    pub connections: usize,
    pub duration: Duration,
    /// The load commands (against gatewayd), for the report.
    pub commands: Vec<String>,
}

/// Highest rate, then the fixed rate, subjects interleaved in each (`own`: the proxies' trees,
/// on the subject CPUs).
pub fn run(
    h: &mut Harness,
    endpoints: &[Endpoint; 3],
    own: &[Tree],
    (reps, connections, duration): (u32, usize, Duration),
) -> Result<KeepAliveRuns> {
    let load = h.plan.load.clone();
    for e in endpoints {
        Wrk { connections, duration: WARMUP }.run(&load, &e.url)?;
    }
    let wrk = Wrk { connections, duration };
    let max = h.interleave(reps, endpoints, own, |cpus, e| wrk.run(cpus, &e.url))?;
    let max_rps: Vec<f64> =
        max.iter().map(|runs| median(&runs.iter().map(|r| r.value.rps).collect::<Vec<_>>())).collect();
    let fixed_rate = fixed_rate(&[max_rps[GATEWAYD], max_rps[NGINX]])?;
    let oha = Oha { connections, duration, rate: fixed_rate };
    let rate = h.interleave(reps, endpoints, own, |cpus, e| oha.run(cpus, &e.url))?;
    for (e, (max, rate)) in endpoints.iter().zip(max.iter().zip(&rate)) {
        for (m, r) in max.iter().zip(rate) {
            eprintln!(
                "xtask:   {}: {:.0} requests/s (https keep-alive, highest rate); p99 {:.2} ms at {fixed_rate} requests/s",
                e.name,
                m.value.rps,
                r.value.p99 * 1e3
            );
        }
    }
    let commands = vec![
        crate::bench::report::shell_line(&wrk.command(&load, &endpoints[GATEWAYD].url)),
        crate::bench::report::shell_line(&oha.command(&load, &endpoints[GATEWAYD].url)),
    ];
    Ok(KeepAliveRuns {
        names: endpoints.iter().map(|e| e.name).collect(),
        max,
        rate,
        fixed_rate,
        connections,
        duration,
        commands,
    })
}

impl Measurable for Endpoint {
    fn tree(&self) -> Tree {
        self.tree
    }
}

/// Memory per idle TLS keep-alive connection at each count, for each subject (`targets`: its
/// ECDSA listener). `idle[c][s]`: count c, subject s.
pub fn idle_memory(targets: &[(&'static str, Target, Tree)], counts: &[usize]) -> Result<Vec<Vec<IdleResult>>> {
    let mut all = Vec::new();
    for &count in counts {
        let mut at_count = Vec::new();
        for (name, target, tree) in targets {
            eprintln!("xtask: bench tls: {count} idle TLS keep-alive connections to {name}");
            let client = KeepAlives::new(target)?;
            at_count.push(idle::measure_with(*tree, target.addr, count, || client.open(), |c| c.get_ok())?);
        }
        all.push(at_count);
    }
    Ok(all)
}

/// Per-request CPU of a run: the subject's CPU time over its requests.
fn cpu_us<T>(m: &Measured<T>, requests: u64) -> f64 {
    m.cpu_us_per(requests.max(1))
}

/// The keep-alive and idle-memory sections of the report: summary, goals, raw runs.
pub fn write(rep: &mut Report, ka: &KeepAliveRuns, idle: &[Vec<IdleResult>], idle_names: &[&str]) {
    let med = |v: Vec<f64>| median(&v);
    let max_rps = |s: usize| med(ka.max[s].iter().map(|r| r.value.rps).collect());
    let max_cpu = |s: usize| med(ka.max[s].iter().map(|r| cpu_us(r, r.value.requests)).collect());
    let rate_cpu = |s: usize| med(ka.rate[s].iter().map(|r| cpu_us(r, r.value.requests)).collect());
    let p = |s: usize, f: fn(&OhaResult) -> f64| med(ka.rate[s].iter().map(|r| f(&r.value)).collect());
    let added = |s: usize, f: fn(&OhaResult) -> f64| (p(s, f) - p(DIRECT, f)) * 1e3;

    rep.heading("HTTPS keep-alive (TLS 1.3)");
    rep.paragraph(&format!(
        "`bench proxy`'s workload over TLS 1.3: `GET /` (the upstream's \"ok\") on {} keep-alive connections, \
         to each subject's ECDSA P-256 listener; the upstream directly (plain HTTP) is the latency baseline. \
         Highest rate: wrk (OpenSSL; it offers TLS 1.3's suites in OpenSSL's order, so both subjects serve \
         TLS_AES_256_GCM_SHA384), closed loop. Fixed rate: oha at {} requests/s (half what the slower proxy \
         sustained), latency-corrected; \"added\" is the subject's percentile minus the upstream's. Medians \
         of the interleaved runs of {} s; server CPU per request is the subject's process-tree CPU time over \
         its requests.",
        ka.connections,
        ka.fixed_rate,
        ka.duration.as_secs()
    ));
    let (g, n) = (GATEWAYD, NGINX);
    let row = |label: &str, f: &dyn Fn(usize) -> f64, digits: usize| {
        vec![label.to_owned(), num(f(g), digits), num(f(n), digits), ratio(f(g), f(n))]
    };
    let rows = vec![
        row("highest rate (requests/s)", &max_rps, 0),
        row("server CPU µs per request at the highest rate", &max_cpu, 1),
        row(&format!("server CPU µs per request at {} requests/s", ka.fixed_rate), &rate_cpu, 1),
        row("added p50 (ms)", &|s| added(s, |r| r.p50), 3),
        row("added p99 (ms)", &|s| added(s, |r| r.p99), 3),
        row("added p99.9 (ms)", &|s| added(s, |r| r.p999), 3),
    ];
    rep.table(&["", ka.names[g], ka.names[n], "gatewayd / nginx"], &rows);

    rep.heading("Goals (issue 11)");
    let goal = |what: String, gv: f64, nv: f64, digits: usize, met: bool| {
        vec![what, num(gv, digits), num(nv, digits), if met { "met" } else { "**not met**" }.to_owned()]
    };
    let mut goals = vec![
        goal(
            "CPU µs per request at the highest rate ≤ nginx's".into(),
            max_cpu(g),
            max_cpu(n),
            1,
            max_cpu(g) <= max_cpu(n),
        ),
        goal(
            format!("CPU µs per request at {} requests/s ≤ nginx's", ka.fixed_rate),
            rate_cpu(g),
            rate_cpu(n),
            1,
            rate_cpu(g) <= rate_cpu(n),
        ),
    ];
    for (label, f) in [("p99", (|r: &OhaResult| r.p99) as fn(&OhaResult) -> f64), ("p99.9", |r: &OhaResult| r.p999)] {
        let (gv, nv) = (added(g, f), added(n, f));
        goals.push(goal(format!("added {label} (ms) at the fixed rate ≤ nginx's"), gv, nv, 3, gv <= nv));
    }
    goals.push(goal("highest rate ≥ nginx's".into(), max_rps(g), max_rps(n), 0, max_rps(g) >= max_rps(n)));
    let idle_pss = |c: usize, s: usize| idle[c][s].pss_per_connection(&idle[c][s].after_request);
    for (c, at) in idle.iter().enumerate() {
        let (gv, nv) = (idle_pss(c, 0), idle_pss(c, 1));
        goals.push(vec![
            format!("memory per idle TLS keep-alive connection at {} ≤ 16 KiB (userspace, no kTLS)", at[0].connections),
            format!("{} B", num(gv, 0)),
            format!("{} B", num(nv, 0)),
            if gv <= IDLE_GOAL_BYTES { "met" } else { "**not met**" }.to_owned(),
        ]);
    }
    rep.table(&["goal", ka.names[g], ka.names[n], "verdict"], &goals);

    rep.heading("Idle TLS keep-alive connections");
    rep.paragraph(
        "Memory (PSS growth of the subject's process tree, per connection) with N TLS 1.3 connections to the \
         ECDSA listener: after their full handshakes, then after one `GET /` on each and 3 s idle (the state \
         that matters: gatewayd parks an idle connection after `park_after`, 1 s, keeping rustls' state and \
         dropping hyper's), then with all of them closed again. Connections and requests are made one after \
         the other by xtask's rustls client (`cargo xtask bench tls --idle-connections 1000,2000,10000`).",
    );
    let mut rows = Vec::new();
    for at in idle {
        for (name, r) in idle_names.iter().zip(at) {
            rows.push(vec![
                r.connections.to_string(),
                (*name).to_owned(),
                num(r.pss_per_connection(&r.connected), 0),
                num(r.pss_per_connection(&r.after_request), 0),
                num(r.rss_per_connection(&r.after_request), 0),
                num(r.pss_per_connection(&r.released), 0),
            ]);
        }
    }
    rep.table(
        &[
            "connections",
            "subject",
            "after handshake (B/conn, PSS)",
            "after one request, idle (B/conn, PSS)",
            "same, RSS",
            "closed again (B/conn, PSS)",
        ],
        &rows,
    );

    rep.heading("Raw runs: HTTPS keep-alive");
    let mut raw = Vec::new();
    for (s, name) in ka.names.iter().enumerate() {
        for (i, (m, r)) in ka.max[s].iter().zip(&ka.rate[s]).enumerate() {
            raw.push(vec![
                (i + 1).to_string(),
                (*name).to_owned(),
                num(m.value.rps, 0),
                num(cpu_us(m, m.value.requests), 1),
                num(cpu_us(r, r.value.requests), 1),
                num(r.value.p50 * 1e3, 3),
                num(r.value.p99 * 1e3, 3),
                num(r.value.p999 * 1e3, 3),
                format!("{:.1}% / {:.1}%", m.background * 100.0, r.background * 100.0),
            ]);
        }
    }
    rep.table(
        &[
            "run",
            "subject",
            "highest rate (requests/s)",
            "CPU µs/request (highest rate)",
            "CPU µs/request (fixed rate)",
            "p50 (ms)",
            "p99 (ms)",
            "p99.9 (ms)",
            "background (highest / fixed)",
        ],
        &raw,
    );
}
