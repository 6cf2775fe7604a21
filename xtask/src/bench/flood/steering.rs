//! `cargo xtask bench steering`: the cost of `[xdp] steering = "cpumap"` in the flood benchmark's
//! topology. The guard in native XDP with and without NIC steering, each without an attack and
//! under a one-source SYN flood, interleaved rep after rep; per cell the legitimate clients'
//! success, p99 (keep-alive and new connections) and CPU (gatewayd + softirq) per request.
//! Writes `bench/results/steering.md`. Needs root.
//!
//! The clients come from [`CLIENT_SOURCES`] addresses, as a user's would: steering keys on the
//! client address, and one address sends all its connections to one worker's CPU. oha cannot
//! bind source addresses, so an nftables SNAT rule in fl-cli gives each new connection the next
//! address (`numgen inc`; NAT rules see only a connection's first packet). Per cell the report
//! also shows where the work ran (`colocation.rs`): softirq and cpumap kthread time per CPU and
//! gatewayd's connections per (worker, CPU that processed them).
//!
//! The clients' and attackers' veths send with TX checksum offload off: a frame redirected
//! through a cpumap loses the skb's "checksum left to the device" state (a real NIC delivers
//! complete checksums). Both subjects run on the same topology.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    Cell, Defence, Flags, Topology,
    attack::Attack,
    run_cell,
    topology::{ATTACK_IF, ATTACK_NS, CLIENT_IF, CLIENT_NS, GW_CLIENT_ADDR, batch_in, in_ns},
};
use crate::{
    bench::{
        Options, load,
        report::{Machine, Report, git_revision, loadavg, median, num},
        run_dir,
    },
    cmd::{cargo, exec},
    deps,
};

/// Both with `client_hash` steering and pinned workers: only the cpumap differs.
const DEFENCES: [Defence; 2] = [Defence::GuardXdpPinned, Defence::GuardXdpCpumap];
const ATTACKS: [Attack; 2] = [Attack::None, Attack::SynOne];
/// Client addresses the legitimate connections are spread over (10.71.0.100 upwards).
const CLIENT_SOURCES: u32 = 64;

fn client_source(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 71, 0, 100)) + i)
}

/// Gives fl-cli the client addresses and the SNAT rule that hands them out, one per connection.
fn spread_clients(dir: &std::path::Path) -> Result<()> {
    let addrs: Vec<String> =
        (0..CLIENT_SOURCES).map(|i| format!("addr add {}/24 dev {CLIENT_IF}", client_source(i))).collect();
    batch_in(CLIENT_NS, &addrs)?;
    let map: Vec<String> = (0..CLIENT_SOURCES).map(|i| format!("{i} : {}", client_source(i))).collect();
    let rules = format!(
        "table ip fl_spread {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname \"{CLIENT_IF}\" ip daddr {GW_CLIENT_ADDR} snat to numgen inc mod {CLIENT_SOURCES} map {{ {} }}\n  }}\n}}\n",
        map.join(", ")
    );
    let file = dir.join("spread-clients.nft");
    std::fs::write(&file, rules).with_context(|| format!("cannot write {}", file.display()))?;
    exec(in_ns(CLIENT_NS, "nft").arg("-f").arg(&file)).context("the client SNAT rule")
}

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    load::ensure_oha()?;
    exec(cargo().args(["build", "--release", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]))?;
    let flags: &Flags = &opts.flood;
    let duration = opts.duration(5);
    let dir = run_dir("steering")?;
    // The raw floods arrive by `--feed`, as in `bench flood`.
    let topo = Topology::create(flags.feed)?;
    for (ns, iface) in [(CLIENT_NS, CLIENT_IF), (ATTACK_NS, ATTACK_IF)] {
        exec(in_ns(ns, "ethtool").args(["-K", iface, "tx", "off"]))
            .with_context(|| format!("turning TX checksum offload off on {iface}"))?;
    }
    spread_clients(&dir)?;
    let mut cells = Vec::new();
    for rep in 0..opts.reps {
        for attack in ATTACKS {
            for defence in DEFENCES {
                eprintln!("xtask: steering rep {} {} under {}", rep + 1, defence.label(), attack.label());
                let tag = format!("{}-{}-{rep}", defence.label(), attack.label());
                let cell = run_cell(&topo, defence, attack, flags, duration, None, &dir, &tag)
                    .with_context(|| format!("cell {tag} (logs in {})", dir.display()))?;
                cells.push(cell);
            }
        }
    }
    drop(topo);
    let path = write(&cells, opts, duration)?;
    print!("{}", std::fs::read_to_string(&path)?);
    Ok(())
}

fn write(cells: &[Cell], opts: &Options, duration: Duration) -> Result<std::path::PathBuf> {
    let flags = &opts.flood;
    let machine = Machine::read();
    let mut r = Report::new("NIC steering (cpumap): the guard in native XDP with and without it");
    r.paragraph(&format!(
        "`cargo xtask bench steering --reps {} --duration {} --attack-pps {} --legit-rate {} --legit-new-rate {}` \
         on {} ({}, {} CPUs, {}), {}, commit {}, load average before the report {}. Medians over reps. \
         Topology and clients as in `bench flood`, except that the clients' connections come from {CLIENT_SOURCES} \
         addresses (SNAT in fl-cli, a new address per connection), so that both workers get load.",
        opts.reps,
        duration.as_secs(),
        flags.attack_pps,
        flags.legit_rate,
        flags.legit_new_rate,
        machine.kernel,
        machine.cpu_model,
        machine.cpus,
        machine.memory,
        machine.date,
        git_revision(),
        loadavg(),
    ));
    r.paragraph(
        "CPU per request = (gatewayd CPU + all softirq CPU + cpumap kthread CPU) / requests answered; softirq \
         includes the attack's; with steering the TCP/IP stack of redirected packets runs in the cpumap kthreads \
         (process context, not softirq), so they are counted too. On a shared 2-CPU machine these are busy-machine \
         figures: compare rows of one run, not runs.",
    );
    let mut rows = Vec::new();
    for attack in ATTACKS {
        for defence in DEFENCES {
            let mine: Vec<&Cell> = cells.iter().filter(|c| c.attack == attack && c.defence == defence).collect();
            let pick = |f: &dyn Fn(&Cell) -> f64| median(&mine.iter().map(|c| f(c)).collect::<Vec<_>>());
            let cpu_us = pick(&|c| {
                let requests = (c.keep_alive.ok + c.new_conn.ok) as f64;
                (c.gatewayd + c.softirq + c.colocation.cpumap_kthreads) / requests * 1e6
            });
            rows.push(vec![
                attack.label().to_owned(),
                defence.label().to_owned(),
                num(pick(&|c| c.success() * 100.0), 2),
                num(pick(&|c| c.keep_alive.p99 * 1e3), 2),
                num(pick(&|c| c.new_conn.p99 * 1e3), 2),
                num(cpu_us, 0),
            ]);
        }
    }
    r.table(&["attack", "subject", "success %", "p99 keep-alive (ms)", "p99 new conn (ms)", "CPU µs / request"], &rows);
    colocation_section(&mut r, cells);
    r.code("toml", &super::subject::gatewayd_config(Defence::GuardXdpCpumap));
    r.write("steering")
}

/// Where the work ran, from the last rep of each cell, and what it means on a bigger machine.
fn colocation_section(r: &mut Report, cells: &[Cell]) {
    r.heading("Where the work ran (last rep of each cell)");
    r.paragraph(
        "Softirq and cpumap kthread seconds per CPU over the cell; `w/c` is connections of worker w whose packets \
         the kernel processed on CPU c (`gateway_steering_connections_by_cpu_total`; workers are pinned, worker i \
         to CPU i); steered packets are the XDP program's counters (`gateway_xdp_steered_packets_total`).",
    );
    let mut rows = Vec::new();
    for attack in ATTACKS {
        for defence in DEFENCES {
            let Some(c) = cells.iter().rev().find(|c| c.attack == attack && c.defence == defence) else { continue };
            let colo = &c.colocation;
            let softirq: Vec<String> =
                colo.softirq_by_cpu.iter().enumerate().map(|(i, s)| format!("cpu{i} {}", num(*s, 2))).collect();
            let connections: Vec<String> = colo
                .connections
                .iter()
                .filter(|(_, _, n)| *n > 0.0)
                .map(|(w, cpu, n)| format!("{w}/{cpu}: {}", num(*n, 0)))
                .collect();
            let steered: Vec<String> = colo
                .steered
                .iter()
                .filter(|(_, _, n)| *n > 0.0)
                .map(|(result, cpu, n)| {
                    format!(
                        "{result}{}: {}",
                        if cpu.is_empty() { String::new() } else { format!(" cpu{cpu}") },
                        num(*n, 0)
                    )
                })
                .collect();
            rows.push(vec![
                attack.label().to_owned(),
                defence.label().to_owned(),
                softirq.join(", "),
                num(colo.cpumap_kthreads, 2),
                connections.join(", "),
                if steered.is_empty() { "-".to_owned() } else { steered.join(", ") },
            ]);
        }
    }
    r.table(&["attack", "subject", "softirq s", "cpumap kthreads s", "connections w/c", "steered packets"], &rows);
    r.paragraph(
        "What a user on 8 vCPUs should expect: on this 2-CPU machine the client (oha), the attacker, gatewayd's \
         two workers and the demo upstream share the same two CPUs, and veth runs the receive path on the CPU of \
         the sending process, so any CPU is \"the wrong one\" about half the time and there is little cache \
         locality to win; the extra hop (cpumap enqueue, kthread wake-up) is then pure cost. On 8 vCPUs with a \
         real multi-queue NIC, RSS spreads flows over queues independently of the reuseport hash, so without \
         steering about 7 in 8 connections have their softirq/TCP processing on a different CPU than their \
         worker: every segment then crosses CPUs (socket lock, wake-up IPI, cache lines of the socket and the \
         skb). With steering, the `w/c` table above shows the property that matters: every worker's connections \
         are processed on its own CPU (only `i/i` entries), so that cross-CPU traffic goes away; what remains is \
         the cpumap hop, paid on the RSS CPU. Expect a gain where per-connection work dominates (many small \
         requests over keep-alive connections, TLS), and a loss where the receiving CPU is idle anyway or the \
         NIC already steers flows to the right CPU (aRFS).",
    );
}
