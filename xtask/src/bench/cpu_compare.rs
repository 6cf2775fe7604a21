//! `cargo xtask bench cpu-compare BEFORE AFTER...`: CPU per proxied request of several gatewayd
//! binaries (a build of main and one of a branch), interleaved round by round, with
//! `--against nginx,haproxy` the reference proxies beside them. Writes
//! `bench/results/cpu-compare.md`, or with `--syscalls` `bench/results/syscalls.md`.
//!
//! `bench proxy`'s workload, narrowed to what a before/after needs: every subject runs at once
//! with one worker (thread) on the subject CPUs (its own port), the same nginx upstream, and on
//! the load CPUs `wrk -t1 -c64` (closed loop) or with `--rate` `oha -q RATE` (open loop). Per
//! round and subject: its CPU µs per request (`/proc/<pid>/stat` of its process tree over the
//! run) and, from perf's software counters (these work in VMs without hardware counters),
//! context switches and syscalls per request. `--syscalls` counts every syscall kind a proxy
//! makes, page faults and migrations, and the TCP segments the host sent per request (`kernel`).
//! On a busy machine the CPU figures move with the neighbours (the background share says how
//! much): prefer `bench callgrind` there, and this on a quiet machine; the counts per request
//! hold on a busy machine.

mod kernel;

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};

use super::{
    Options, Subject,
    callgrind::Against,
    cpus::CpuList,
    free_port,
    harness::{Harness, Measured, Ready},
    load::{self, Oha, Wrk},
    proxy::{gatewayd_conf, haproxy, nginx_proxy_conf_with},
    report::{Report, median, num, ratio, shell_line, version_of},
};
use kernel::{PerRequest, TcpCounters};

const WARMUP: Duration = Duration::from_secs(2);
/// Seconds per measured run unless `--duration` says otherwise.
const DEFAULT_SECS: u64 = 8;
/// A run whose subject CPUs were busier than this with other processes marks the report as
/// taken on a busy machine.
const BUSY_BACKGROUND: f64 = 0.10;

/// One round of one subject: the load's answers and the kernel's counts.
struct Round {
    rps: f64,
    kernel: PerRequest,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.bins.is_empty() {
        bail!("bench cpu-compare: name the gatewayd binaries to compare (BEFORE AFTER...)");
    }
    if opts.rate.is_some() {
        load::ensure_oha()?;
    }
    let mut h = Harness::new("cpu-compare")?;
    let (load_cpus, subject_cpus, dir, nofile) = (h.plan.load.clone(), h.plan.subject.clone(), h.dir.clone(), h.nofile);
    let duration = opts.duration(DEFAULT_SECS);
    let (upstream, _) = h.start_upstream()?;

    let mut subjects = Vec::new();
    let mut names: Vec<String> = opts.bins.iter().map(|b| format!("`{}`", b.display())).collect();
    for (i, bin) in opts.bins.iter().enumerate() {
        let (addr, metrics) = (free_port()?, free_port()?);
        let name = format!("gatewayd-{i}");
        let tree = h.start_gatewayd(&name, bin, gatewayd_conf(addr, metrics, upstream, 1), Ready::Http(addr, "/"))?;
        // Subject names are static in the harness's interleaving; the report uses `names`.
        subjects.push(Subject { name: "gatewayd", addr, tree });
    }
    // The reference proxies as `bench proxy` configures them, with one worker (thread) each.
    let one_cpu = CpuList(subject_cpus.0[..1].to_vec());
    for against in &opts.against {
        let addr = free_port()?;
        let tree = match against {
            Against::Nginx => {
                let conf = nginx_proxy_conf_with(&dir.join("nginx"), addr, "", upstream, 1, nofile)?;
                names.push(version_of(Command::new("nginx").arg("-v")).replace("nginx version: ", ""));
                h.start_nginx("nginx proxy", "nginx", &subject_cpus, conf, Ready::Http(addr, "/"))?
            }
            Against::Haproxy => {
                let path = dir.join("haproxy.cfg");
                h.config("haproxy.cfg", "haproxy", &path, haproxy::conf(addr, upstream, &one_cpu, nofile))?;
                // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://..." → "HAProxy 2.6.12-1+deb12u4"
                let version = version_of(Command::new("haproxy").arg("-v"));
                names.push(format!("HAProxy {}", version.split_whitespace().nth(2).unwrap_or("?")));
                h.start("haproxy", haproxy::command(&subject_cpus, &path), addr)?
            }
        };
        subjects.push(Subject { name: against.name(), addr, tree });
    }
    let own: Vec<_> = subjects.iter().map(|s| s.tree).collect();
    let wrk = Wrk { connections: opts.connections, duration };
    let oha = opts.rate.map(|rate| Oha { connections: opts.connections, duration, rate });
    for s in &subjects {
        Wrk { connections: opts.connections, duration: WARMUP }.run(&load_cpus, &s.url())?;
    }
    let events = kernel::events(opts.syscalls);
    let runs = h.interleave_around(
        opts.reps,
        &subjects,
        &own,
        |_, s| {
            let tcp = TcpCounters::read()?;
            // Every process of the subject (nginx's worker is the master's child).
            Ok((kernel::PerfStat::start(&s.tree.pids()?, &events, &dir)?, tcp))
        },
        |cpus, s, before| {
            let answered = match &oha {
                Some(oha) => oha.run(cpus, &s.url()).map(|r| (r.requests, r.rps))?,
                None => wrk.run(cpus, &s.url()).map(|r| (r.requests, r.rps))?,
            };
            Ok((before, answered))
        },
        |_, ((perf, tcp_before), (requests, rps))| {
            let events = perf.finish()?;
            let tcp = TcpCounters::read()?.since(tcp_before);
            Ok(Round { rps, kernel: PerRequest { events, tcp, requests } })
        },
    )?;
    let load_after = h.loadavg();
    // The load's command line first (against the first subject; the others only differ by port).
    let url = subjects[0].url();
    let load_command = oha.as_ref().map_or_else(|| wrk.command(&load_cpus, &url), |o| o.command(&load_cpus, &url));
    let mut commands = vec![shell_line(&load_command)];
    commands.extend(h.commands.iter().cloned());
    let configs = h.configs.clone();
    let rep = report(opts, &h, &names, &runs, &events, &load_after, duration);
    h.stop()?;
    let mut rep = rep;
    rep.heading("Reproduce");
    rep.commands_and_configs(&commands, &configs);
    let path = rep.write(if opts.syscalls { "syscalls" } else { "cpu-compare" })?;
    eprintln!("xtask: bench cpu-compare: wrote {}", path.display());
    Ok(())
}

/// The command line that reproduces this run.
fn command_line(opts: &Options, duration: Duration) -> String {
    let mut line = format!("cargo xtask bench cpu-compare --reps {} --duration {}", opts.reps, duration.as_secs());
    line += &format!(" --connections {}", opts.connections);
    if let Some(rate) = opts.rate {
        line += &format!(" --rate {rate}");
    }
    if !opts.against.is_empty() {
        let against: Vec<&str> = opts.against.iter().map(|a| a.name()).collect();
        line += &format!(" --against {}", against.join(","));
    }
    if opts.syscalls {
        line += " --syscalls";
    }
    line + " BIN..."
}

fn report(
    opts: &Options,
    h: &Harness,
    names: &[String],
    runs: &[Vec<Measured<Round>>],
    events: &[String],
    load_after: &str,
    duration: Duration,
) -> Report {
    let (machine, plan) = (&h.machine, &h.plan);
    let mut rep = Report::new(if opts.syscalls {
        "Kernel work per proxied request, side by side"
    } else if opts.against.is_empty() {
        "CPU per proxied request, binaries compared"
    } else {
        "CPU per proxied request, side by side"
    });
    let load = match opts.rate {
        Some(rate) => format!("`oha -c{} -q {rate}` (open loop)", opts.connections),
        None => format!("`wrk -t{} -c{}` (closed loop)", plan.load.len(), opts.connections),
    };
    rep.paragraph(&format!(
        "Written by `{}` on {} (workspace at {}). Machine: {} ({} CPUs), kernel {}; load average {} at the start, \
         {load_after} at the end. Each subject: one worker (thread) on CPUs {}; the load, {load}, and the upstream \
         nginx on {}; the subjects interleaved round by round, all running at once.",
        command_line(opts, duration),
        machine.date,
        super::report::git_revision(),
        machine.cpu_model,
        machine.cpus,
        machine.kernel,
        machine.loadavg,
        plan.subject,
        plan.load,
    ));
    let busiest = runs.iter().flatten().map(|m| m.background).fold(0.0, f64::max);
    if busiest > BUSY_BACKGROUND {
        rep.paragraph(&format!(
            "**Busy machine**: other processes took up to {}% of the subject CPUs during a run. perf's counts per \
             request (syscalls, context switches) hold; CPU µs, requests/s and the host-wide TCP segments (other \
             processes' loopback traffic counts too) do not: re-run on a quiet machine.",
            num(busiest * 100.0, 0)
        ));
    }
    let per_request = |m: &Measured<Round>, event: &str| {
        m.value.kernel.events.get(event).copied().unwrap_or(f64::NAN) / m.value.kernel.requests as f64
    };
    let cpu = |runs: &[Measured<Round>]| {
        median(&runs.iter().map(|m| m.cpu_us_per(m.value.kernel.requests)).collect::<Vec<_>>())
    };
    let base = cpu(&runs[0]);
    let mut header = vec!["subject", "median CPU µs/request", "vs the first", "median requests/s", "background"];
    let short: Vec<String> = kernel::EVENTS.iter().map(|e| format!("{}/request", kernel::short_name(e))).collect();
    header.extend(short.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = names
        .iter()
        .zip(runs)
        .map(|(name, runs)| {
            let mut row = vec![
                name.clone(),
                num(cpu(runs), 2),
                ratio(cpu(runs), base),
                num(median(&runs.iter().map(|m| m.value.rps).collect::<Vec<_>>()), 0),
                format!("{}%", num(median(&runs.iter().map(|m| m.background * 100.0).collect::<Vec<_>>()), 1)),
            ];
            row.extend(
                kernel::EVENTS
                    .iter()
                    .map(|e| num(median(&runs.iter().map(|m| per_request(m, e)).collect::<Vec<_>>()), 2)),
            );
            row
        })
        .collect();
    rep.heading("Medians");
    rep.table(&header, &rows);
    if opts.syscalls {
        rep.heading("Per request, by kind");
        rep.paragraph(
            "Medians over the rounds. perf's syscall tracepoints and software counters over every thread of every \
             process of the subject (exact counts); rows any subject reaches at least once per 2,000 requests. \
             `net:net_dev_xmit`: packets sent in the subject's threads (its own sends, and ACKs the kernel sends \
             while it runs). TCP segments and delayed ACKs are the host's counters (`/proc/net/snmp`, \
             `/proc/net/netstat`): client, proxy and upstream together, so the subjects differ by what the proxy \
             adds; the fewest of the rounds, as any other traffic on the host only adds to them (the raw rounds \
             show each). Counting every syscall kind costs the subjects a little per syscall: \
             compare CPU µs between runs with the same flags.",
        );
        let mut header = vec!["per request"];
        header.extend(names.iter().map(String::as_str));
        let kinds: Vec<Vec<PerRequest>> =
            runs.iter().map(|rs| rs.iter().map(|m| m.value.kernel.clone()).collect()).collect();
        rep.table(&header, &kernel::table(events, &kinds));
    }
    rep.heading("Raw rounds");
    let raw: Vec<Vec<String>> = (0..opts.reps as usize)
        .flat_map(|r| {
            names.iter().zip(runs).filter_map(move |(name, runs)| {
                let m = runs.get(r)?;
                Some(vec![
                    (r + 1).to_string(),
                    name.clone(),
                    m.value.kernel.requests.to_string(),
                    num(m.cpu_us_per(m.value.kernel.requests), 2),
                    format!("{}%", num(m.background * 100.0, 1)),
                    num(m.value.kernel.tcp.out_segs as f64 / m.value.kernel.requests as f64, 2),
                ])
            })
        })
        .collect();
    let header = ["round", "subject", "requests", "CPU µs/request", "background", "TCP segments/request (host)"];
    rep.table(&header, &raw);
    rep
}
