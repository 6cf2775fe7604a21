//! `cargo xtask bench cpu-compare BEFORE AFTER...`: CPU per proxied request of several gatewayd
//! binaries (a build of main and one of a branch), interleaved round by round. Writes
//! `bench/results/cpu-compare.md`.
//!
//! `bench proxy`'s workload, narrowed to what a before/after needs: every binary runs at once
//! with one worker on the subject CPUs (its own port), the same nginx upstream and `wrk -t1
//! -c64` on the load CPUs. Per round and binary: the binary's CPU µs per request (its
//! `/proc/<pid>/stat` over the run) and, from perf's software counters (these work in VMs
//! without hardware counters), context switches and syscalls per request. On a busy machine the
//! CPU figures move with the neighbours (the background share says how much): prefer
//! `bench callgrind` there, and this on a quiet machine.

use std::{
    collections::BTreeMap,
    fs,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options, Subject, free_port,
    harness::{Harness, Measured, Ready},
    load::{Wrk, WrkResult},
    proxy::gatewayd_conf,
    report::{Report, median, num, ratio},
};

const WARMUP: Duration = Duration::from_secs(2);
/// Seconds per measured run unless `--duration` says otherwise.
const DEFAULT_SECS: u64 = 8;
/// perf's software counters read per run.
const EVENTS: &[&str] = &[
    "context-switches",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_epoll_wait",
];

/// One round of one binary: wrk's result and perf's counts.
struct Round {
    wrk: WrkResult,
    counts: BTreeMap<String, f64>,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.bins.is_empty() {
        bail!("bench cpu-compare: name the gatewayd binaries to compare (BEFORE AFTER...)");
    }
    let mut h = Harness::new("cpu-compare")?;
    let (load_cpus, dir) = (h.plan.load.clone(), h.dir.clone());
    let duration = opts.duration(DEFAULT_SECS);
    let (upstream, _) = h.start_upstream()?;

    let mut subjects = Vec::new();
    let names: Vec<String> = opts.bins.iter().map(|b| b.display().to_string()).collect();
    for (i, bin) in opts.bins.iter().enumerate() {
        let (addr, metrics) = (free_port()?, free_port()?);
        let name = format!("gatewayd-{i}");
        let tree = h.start_gatewayd(&name, bin, gatewayd_conf(addr, metrics, upstream, 1), Ready::Http(addr, "/"))?;
        // Subject names are static in the harness's interleaving; the report uses `names`.
        subjects.push(Subject { name: "gatewayd", addr, tree });
    }
    let own: Vec<_> = subjects.iter().map(|s| s.tree).collect();
    let wrk = Wrk { connections: opts.connections, duration };
    for s in &subjects {
        Wrk { connections: opts.connections, duration: WARMUP }.run(&load_cpus, &s.url())?;
    }
    let perf_out = dir.join("perf.csv");
    let runs = h.interleave_around(
        opts.reps,
        &subjects,
        &own,
        |_, s| perf_stat(s.tree.0, duration, &perf_out),
        |cpus, s, perf| Ok((perf, wrk.run(cpus, &s.url())?)),
        |_, (mut perf, wrk)| {
            let status = perf.wait()?;
            if !status.success() {
                bail!("perf stat failed ({status}); see {}", perf_out.display());
            }
            Ok(Round { wrk, counts: parse_perf(&fs::read_to_string(&perf_out)?) })
        },
    )?;
    let load_after = h.loadavg();
    let (machine, plan, commands, configs) = (h.machine.clone(), h.plan.clone(), h.commands.clone(), h.configs.clone());
    h.stop()?;

    let mut rep = Report::new("CPU per proxied request, binaries compared");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench cpu-compare --reps {} --duration {} --connections {} BIN...` on {} (workspace at \
         {}). Machine: {} ({} CPUs), kernel {}; load average {} at the start, {load_after} at the end. Each binary: \
         one worker on CPUs {}; wrk and the upstream nginx on {}; the binaries interleaved round by round.",
        opts.reps,
        duration.as_secs(),
        opts.connections,
        machine.date,
        super::report::git_revision(),
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        machine.loadavg,
        plan.subject,
        plan.load,
    ));
    let per_request = |m: &Measured<Round>, event: &str| {
        m.value.counts.get(event).copied().unwrap_or(f64::NAN) / m.value.wrk.requests as f64
    };
    let cpu =
        |runs: &[Measured<Round>]| median(&runs.iter().map(|m| m.cpu_us_per(m.value.wrk.requests)).collect::<Vec<_>>());
    let base = cpu(&runs[0]);
    let mut header = vec!["binary", "median CPU µs/request", "vs the first", "median requests/s", "background"];
    let short: Vec<String> =
        EVENTS.iter().map(|e| format!("{}/request", e.trim_start_matches("syscalls:sys_enter_"))).collect();
    header.extend(short.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = names
        .iter()
        .zip(&runs)
        .map(|(name, runs)| {
            let mut row = vec![
                format!("`{name}`"),
                num(cpu(runs), 2),
                ratio(cpu(runs), base),
                num(median(&runs.iter().map(|m| m.value.wrk.rps).collect::<Vec<_>>()), 0),
                format!("{}%", num(median(&runs.iter().map(|m| m.background * 100.0).collect::<Vec<_>>()), 1)),
            ];
            row.extend(
                EVENTS.iter().map(|e| num(median(&runs.iter().map(|m| per_request(m, e)).collect::<Vec<_>>()), 2)),
            );
            row
        })
        .collect();
    rep.heading("Medians");
    rep.table(&header, &rows);
    rep.heading("Raw rounds");
    let raw: Vec<Vec<String>> = (0..opts.reps as usize)
        .flat_map(|r| {
            names.iter().zip(&runs).filter_map(move |(name, runs)| {
                let m = runs.get(r)?;
                Some(vec![
                    (r + 1).to_string(),
                    format!("`{name}`"),
                    m.value.wrk.requests.to_string(),
                    num(m.cpu_us_per(m.value.wrk.requests), 2),
                    format!("{}%", num(m.background * 100.0, 1)),
                ])
            })
        })
        .collect();
    rep.table(&["round", "binary", "requests", "CPU µs/request", "background"], &raw);
    rep.heading("Reproduce");
    rep.commands_and_configs(&commands, &configs);
    let path = rep.write("cpu-compare")?;
    eprintln!("xtask: bench cpu-compare: wrote {}", path.display());
    Ok(())
}

/// `perf stat` on `pid` for `duration`, CSV into `out`, started now (the run starts right after).
fn perf_stat(pid: u32, duration: Duration, out: &std::path::Path) -> Result<Child> {
    let mut cmd = Command::new("perf");
    cmd.args(["stat", "-x,", "-e", &EVENTS.join(","), "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &duration.as_secs().to_string()])
        .stdout(Stdio::null());
    cmd.spawn().context("cannot start perf (linux-perf)")
}

/// perf stat's CSV (`count,unit,event,...`) → count by event; `<not counted>` rows are left out.
fn parse_perf(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(',');
            let count: f64 = fields.next()?.trim().parse().ok()?;
            let event = fields.nth(1)?.trim();
            Some((event.to_owned(), count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_read() {
        let text = "# started on Sat Dec  5 08:00:00 2026\n\n12345,,context-switches,4000000000,100.00,,\n\
                    80000,,syscalls:sys_enter_writev,4000000000,100.00,,\n<not counted>,,syscalls:sys_enter_read,0,0.00,,\n";
        let counts = parse_perf(text);
        assert_eq!(counts.get("context-switches"), Some(&12345.0));
        assert_eq!(counts.get("syscalls:sys_enter_writev"), Some(&80000.0));
        assert_eq!(counts.len(), 2);
    }
}
