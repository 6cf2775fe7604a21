//! `cargo xtask bench proxy --idle-only`: only the idle keep-alive rounds of `bench proxy`, after
//! the same warm-up, so that memory per idle connection can be checked (and the rounds rerun)
//! in a minute or two instead of the whole benchmark. Writes `bench/results/proxy-idle.md`.

use super::{EXTRAPOLATE_TO, GATEWAYD, IDLE_GOAL_BYTES, NGINX, WARMUP, summary::idle_tables};
use crate::bench::{
    Options, Subject,
    harness::Harness,
    idle::IdleResult,
    report::{self, Report, num},
};

/// `idle[c][s]`: the measurement at the c-th count for subject s.
pub fn report(subjects: &[Subject], idle: &[Vec<IdleResult>], opts: &Options, h: &Harness) -> Report {
    let pss = |i: &IdleResult| i.pss_per_connection(&i.after_request);
    let mut rep = Report::new("Benchmark: proxy, idle keep-alive connections only");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench proxy --idle-only --idle-connections {}` on {} (gatewayd {}): \
         `bench proxy`'s subjects and idle rounds after its {} s warm-up of each subject, without its \
         throughput and latency runs (their figures are in proxy.md). Load average {} at the start, {} \
         at the end.",
        opts.idle_connections.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        h.machine.date,
        report::git_revision(),
        WARMUP.as_secs(),
        h.machine.loadavg,
        h.loadavg(),
    ));
    rep.heading("Summary");
    let mut header: Vec<&str> = vec![""];
    header.extend(subjects.iter().map(|s| s.name));
    header.extend(["gatewayd / nginx", "gatewayd / haproxy"]);
    let mut rows: Vec<Vec<String>> = idle
        .iter()
        .map(|at| {
            let count = at.first().map_or(0, |i| i.connections);
            let values: Vec<f64> = at.iter().map(pss).collect();
            report::proxy_row(
                format!("memory per idle keep-alive connection at {count} (bytes, PSS)"),
                &values,
                0,
                false,
            )
        })
        .collect();
    if let Some(last) = idle.last() {
        let values: Vec<f64> = last.iter().map(|i| pss(i) * EXTRAPOLATE_TO / 1024.0 / 1024.0).collect();
        let label =
            format!("idle keep-alive memory at {}k connections (MiB, extrapolated)", EXTRAPOLATE_TO as u64 / 1000);
        rows.push(report::proxy_row(label, &values, 0, false));
    }
    rep.table(&header, &rows);

    rep.heading("Goals");
    let goals: Vec<Vec<String>> = idle
        .iter()
        .map(|at| {
            let (g, x) = (pss(&at[GATEWAYD]), pss(&at[NGINX]));
            vec![
                format!("memory per idle keep-alive connection at {} ≤ 4 KiB", at[GATEWAYD].connections),
                format!("{} B", num(g, 0)),
                format!("{} B", num(x, 0)),
                if g <= IDLE_GOAL_BYTES { "met" } else { "**not met**" }.to_owned(),
            ]
        })
        .collect();
    rep.table(&["goal", "gatewayd", "nginx", "verdict"], &goals);

    idle_tables(&mut rep, subjects, idle);
    rep.heading("Setup");
    rep.table(&["", ""], &report::proxy_setup_rows(&h.machine, &h.plan));
    rep.commands_and_configs(&h.commands, &h.configs);
    rep
}
