//! `cargo xtask bench steering`: the cost of `[xdp] steering = "cpumap"` in the flood benchmark's
//! topology. The guard in native XDP with and without NIC steering, each without an attack and
//! under a one-source SYN flood, interleaved rep after rep; per cell the legitimate clients'
//! success, p99 (keep-alive and new connections) and CPU (gatewayd + softirq) per request.
//! Writes `bench/results/steering.md`. Needs root.
//!
//! The clients' and attackers' veths send with TX checksum offload off: a frame redirected
//! through a cpumap loses the skb's "checksum left to the device" state (a real NIC delivers
//! complete checksums). Both subjects run on the same topology.

use std::time::Duration;

use anyhow::{Context as _, Result};

use super::{
    Cell, Defence, Flags, Topology,
    attack::Attack,
    run_cell,
    topology::{ATTACK_IF, ATTACK_NS, CLIENT_IF, CLIENT_NS, in_ns},
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

const DEFENCES: [Defence; 2] = [Defence::GuardXdp, Defence::GuardXdpCpumap];
const ATTACKS: [Attack; 2] = [Attack::None, Attack::SynOne];

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    load::ensure_oha()?;
    exec(cargo().args(["build", "--release", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]))?;
    let flags: &Flags = &opts.flood;
    let duration = opts.duration(5);
    let dir = run_dir("steering")?;
    let topo = Topology::create()?;
    for (ns, iface) in [(CLIENT_NS, CLIENT_IF), (ATTACK_NS, ATTACK_IF)] {
        exec(in_ns(ns, "ethtool").args(["-K", iface, "tx", "off"]))
            .with_context(|| format!("turning TX checksum offload off on {iface}"))?;
    }
    let mut cells = Vec::new();
    for rep in 0..opts.reps {
        for attack in ATTACKS {
            for defence in DEFENCES {
                eprintln!("xtask: steering rep {} {} under {}", rep + 1, defence.label(), attack.label());
                let tag = format!("{}-{}-{rep}", defence.label(), attack.label());
                let cell = run_cell(&topo, defence, attack, flags, duration, &dir, &tag)
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
         Topology and clients as in `bench flood` (one client address: its connections all go to one worker's CPU).",
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
        "CPU per request = (gatewayd CPU + all softirq CPU) / requests answered; softirq includes the attack's. \
         On a shared 2-CPU machine these are busy-machine figures: compare rows of one run, not runs.",
    );
    let mut rows = Vec::new();
    for attack in ATTACKS {
        for defence in DEFENCES {
            let mine: Vec<&Cell> = cells.iter().filter(|c| c.attack == attack && c.defence == defence).collect();
            let pick = |f: &dyn Fn(&Cell) -> f64| median(&mine.iter().map(|c| f(c)).collect::<Vec<_>>());
            let cpu_us = pick(&|c| {
                let requests = (c.keep_alive.ok + c.new_conn.ok) as f64;
                (c.gatewayd + c.softirq) / requests * 1e6
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
    r.code("toml", &super::subject::gatewayd_config(Defence::GuardXdpCpumap));
    r.write("steering")
}
