//! `cargo xtask bench flood`: the data plane under fire. Legitimate clients (oha at fixed rates)
//! keep using gatewayd while an attacker floods it, with each defence in front of it in turn:
//! the kernel's defaults, nftables per-source meters, the gatewayd guard in native XDP and in TC
//! mode. Per cell: the clients' success ratio and p99, the attack packets offered and dropped,
//! the CPU (softirq and gatewayd) per million attack packets, and how long an HTTP flooder that
//! the L7 limit refuses takes to be dropped in XDP (`[xdp.feedback]`). Cells are interleaved
//! (every defence under one attack, then the next attack, rep after rep) so that drift on a
//! shared machine hits all alike. Writes `bench/results/flood.md`. Needs root.
//!
//! The network (namespaces `fl-*`, veth pairs) is in `topology`, the attacks in `attack`, the
//! defences in `subject`, the clients in `legit`, the report in `report`.

mod answers;
mod attack;
mod colocation;
mod feed;
mod legit;
mod napi;
mod packet;
mod receive;
mod report;
pub mod steering;
mod subject;
mod topology;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use self::{
    attack::Attack,
    feed::Feed,
    legit::{LegitResult, Oha},
    subject::{Defence, Up},
    topology::{ATTACK_IF, ATTACK_NS, GW_NS, Topology},
};
use super::{Options, load, run_dir};
use crate::{
    cmd::{cargo, exec},
    deps,
};

/// The flood benchmark's own flags (ignored by the other benchmarks).
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// flood: packets per second the raw-packet attacks aim at (the report shows what the
    /// machine actually offered); the connection flood aims at a quarter of it in handshakes.
    #[arg(long, default_value_t = 150_000)]
    pub attack_pps: u64,
    /// flood: requests per second of the legitimate keep-alive client (2,000 latency samples in
    /// a 5 s cell; the report's p99 pools every rep's samples: 6,000 with 3 reps).
    #[arg(long, default_value_t = 400)]
    pub legit_rate: u64,
    /// flood: requests per second of the legitimate client that opens a connection per request
    /// (500 samples in a 5 s cell, 1,500 pooled over 3 reps; half the guard's and nftables'
    /// per-source SYN rate of 200/s, so neither refuses it).
    #[arg(long, default_value_t = 100)]
    pub legit_new_rate: u64,
    /// flood: only these attacks (comma-separated; the baseline `none` is always run).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub attacks: Vec<Attack>,
    /// flood: only these defences (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub defences: Vec<Defence>,
    /// flood: how the raw floods reach the gateway's veth end: `xdp-softirq` (the default,
    /// written to results/flood.md: XDP frames through veth's ndo_xdp_xmit onto the gateway end's
    /// ring, received in softirq at the end of each burst on the generator's CPU, which floats at
    /// nice 19: a NIC's delivery and timing), `skb` (results/flood-skb-feed.md: the AF_PACKET
    /// sender at nice 19; veth's native XDP copies each skb first, which a NIC would not) or `xdp`
    /// (results/flood-xdp-feed.md: the same frames drained by a NAPI thread pinned to CPU 0, which
    /// competes with gatewayd in scheduler slices, where a NIC's softirq runs in short bursts).
    /// bench/README.md, "The XDP feed".
    #[arg(long, value_enum, default_value_t = feed::Feed::XdpSoftirq)]
    pub feed: feed::Feed,
}

/// What one (defence, attack, rep) cell measured.
#[derive(Debug, Clone)]
pub struct Cell {
    pub defence: Defence,
    pub attack: Attack,
    pub keep_alive: LegitResult,
    pub new_conn: LegitResult,
    /// Packets the attacker's veth sent during the attack window (every attack, whatever its kind).
    pub offered: u64,
    /// Frames, handshakes or requests the attack threads completed.
    pub units: u64,
    pub seconds: f64,
    pub dropped: Option<u64>,
    pub softirq: f64,
    pub gatewayd: f64,
    /// Seconds from the start of the HTTP or connection flood until the guard dropped a
    /// flooder's packet (`drop_denylist`), for the guard under those attacks.
    pub escalation: Option<f64>,
    /// Per-CPU receive work and gatewayd's steering counters (the steering report's proof).
    pub colocation: colocation::CoLocation,
    /// SYNs the gateway's TCP stack dropped at a listener (`TcpExt: ListenDrops`): none when
    /// every spoofed source is routed back (a SYN without a route back is dropped there, never
    /// queued, and no cookie of any defence engages for it).
    pub listen_drops: u64,
    /// CPU seconds of the gateway's NAPI thread (`napi.rs`: the XDP feed's receive; `None` with
    /// the skb feed, whose receive is softirq).
    pub napi: Option<f64>,
    /// Frames the gateway's NAPI ring refused (full) during the cell: made by the XDP feed's
    /// generator but never offered to the defence (not in `offered`).
    pub ring_refused: Option<u64>,
    /// CPU seconds of the gateway's receive in softirq, measured exactly (`receive.rs`): with
    /// `--feed xdp-softirq`, for the raw floods and the no-attack baseline (ksoftirqd's alone);
    /// `None` otherwise.
    pub receive: Option<f64>,
    /// Frames per `BPF_PROG_RUN` of the XDP generator (64 while it keeps to its schedule, up to
    /// 256 when behind); `None` without it.
    pub frames_per_run: Option<f64>,
}

impl Cell {
    pub fn success(&self) -> f64 {
        let ok = (self.keep_alive.ok + self.new_conn.ok) as f64;
        let all = ok + (self.keep_alive.failed + self.new_conn.failed) as f64;
        if all == 0.0 { f64::NAN } else { ok / all }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    load::ensure_oha()?;
    exec(cargo().args(["build", "--release", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]))?;
    let flags = &opts.flood;
    let duration = opts.duration(5);
    let attacks: Vec<Attack> = if flags.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        std::iter::once(Attack::None).chain(flags.attacks.iter().copied().filter(|a| *a != Attack::None)).collect()
    };
    let defences = if flags.defences.is_empty() { Defence::ALL.to_vec() } else { flags.defences.clone() };
    let dir = run_dir("flood")?;
    let topo = Topology::create(flags.feed)?;
    // The generator's own CPU per frame of each raw flood, taken off its thread's run time to
    // leave the gateway's receive (`receive.rs`); only where that receive runs in its softirq.
    let mut costs = Vec::new();
    if flags.feed == Feed::XdpSoftirq {
        for &attack in &attacks {
            if let Some(cost) = attack::generator_cost(attack, &topo, flags.attack_pps, GENERATOR_COST_WINDOW)? {
                eprintln!("xtask: flood: the generator alone costs {:.0} ns per {} frame", cost * 1e9, attack.label());
                costs.push((attack, cost));
            }
        }
    }
    let mut cells = Vec::new();
    for rep in 0..opts.reps {
        for &attack in &attacks {
            for &defence in &defences {
                eprintln!("xtask: flood rep {} {} under {}", rep + 1, defence.label(), attack.label());
                let tag = format!("{}-{}-{rep}", defence.label(), attack.label());
                let cost = costs.iter().find(|(a, _)| *a == attack).map(|(_, c)| *c);
                let cell = run_cell(&topo, defence, attack, flags, duration, cost, &dir, &tag)
                    .with_context(|| format!("cell {tag} (logs in {})", dir.display()))?;
                eprintln!("xtask:   {}", report::one_line(&cell));
                cells.push(cell);
            }
        }
    }
    drop(topo);
    let path = report::write(&cells, opts, duration)?;
    print!("{}", std::fs::read_to_string(&path)?);
    Ok(())
}

/// The attack starts first; the clients join half a second into it (arriving while a flood is
/// on is the hard case: a guard must let a source it has never seen through).
const LEAD: Duration = Duration::from_millis(500);

/// How long the generator runs alone to measure its own cost per frame (per raw flood).
const GENERATOR_COST_WINDOW: Duration = Duration::from_secs(2);

#[allow(clippy::too_many_arguments)]
fn run_cell(
    topo: &Topology,
    defence: Defence,
    attack: Attack,
    flags: &Flags,
    duration: Duration,
    generator_cost: Option<f64>,
    dir: &std::path::Path,
    tag: &str,
) -> Result<Cell> {
    let up = Up::start(defence, dir, tag)?;
    let tree = up.gatewayd.tree();
    let dropped_before = up.dropped()?;
    let tx_before = topology::tx_packets(ATTACK_NS, ATTACK_IF)?;
    let listen_drops_before = topology::proc_net_counter(GW_NS, "netstat", "TcpExt", "ListenDrops")?;
    let softirq_before = softirq_seconds()?;
    let ksoftirqd_before = receive::ksoftirqd_cpu()?;
    let gatewayd_before = tree.cpu_time()?;
    let napi = if flags.feed.threaded() { Some(napi::Thread::pinned()?) } else { None };
    let napi_before = napi.map(|t| t.cpu_seconds()).transpose()?.unwrap_or(0.0);
    let refused_before = if flags.feed.frames() { napi::ring_refused()? } else { 0 };
    let colocation = colocation::Probe::start()?;
    let start = Instant::now();
    let running = attack::start(attack, topo, flags.attack_pps, duration + LEAD + Duration::from_secs(5))?;
    let watch = (attack.is_closed_loop() && defence.is_guard())
        .then(|| std::thread::spawn(move || watch_escalation(start, duration + LEAD)));
    std::thread::sleep(LEAD);
    let keep_alive = Oha::start(flags.legit_rate, duration, true, &dir.join(format!("oha-{tag}-keep-alive.db")))?;
    let new_conn = Oha::start(flags.legit_new_rate, duration, false, &dir.join(format!("oha-{tag}-new.db")))?;
    let (keep_alive, new_conn) = (keep_alive.wait()?, new_conn.wait()?);
    let stopped = running.stop()?;
    let units = stopped.units;
    let seconds = start.elapsed().as_secs_f64();
    let offered = topology::tx_packets(ATTACK_NS, ATTACK_IF)?.saturating_sub(tx_before);
    let softirq = softirq_seconds()? - softirq_before;
    let ksoftirqd = receive::ksoftirqd_cpu()? - ksoftirqd_before;
    let receive = match (flags.feed, attack, stopped.generator_cpu, generator_cost) {
        (Feed::XdpSoftirq, Attack::None, ..) => Some(ksoftirqd.max(0.0)),
        (Feed::XdpSoftirq, _, Some(cpu), Some(cost)) => Some(receive::exact(cpu, units, cost, ksoftirqd)),
        _ => None,
    };
    let listen_drops =
        topology::proc_net_counter(GW_NS, "netstat", "TcpExt", "ListenDrops")?.saturating_sub(listen_drops_before);
    let gatewayd = tree.cpu_time()?.saturating_sub(gatewayd_before).as_secs_f64();
    let napi_seconds = napi.map(|t| t.cpu_seconds()).transpose()?.map(|after| after - napi_before);
    let ring_refused =
        if flags.feed.frames() { Some(napi::ring_refused()?.saturating_sub(refused_before)) } else { None };
    let dropped = match (dropped_before, up.dropped()?) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    let escalation = watch.and_then(|w| w.join().ok()).flatten();
    let colocation = colocation.finish()?;
    up.stop()?;
    Ok(Cell {
        defence,
        attack,
        keep_alive,
        new_conn,
        offered,
        units,
        seconds,
        dropped,
        softirq,
        gatewayd,
        escalation,
        colocation,
        listen_drops,
        napi: napi_seconds,
        ring_refused,
        receive,
        frames_per_run: stopped.generator_runs.filter(|r| *r > 0).map(|r| units as f64 / r as f64),
    })
}

/// Polls the guard's counters until a packet is dropped by the deny list (a feedback block in
/// force); the seconds since `start`, or `None` within `limit`.
fn watch_escalation(start: Instant, limit: Duration) -> Option<f64> {
    while start.elapsed() < limit {
        let denied = subject::scrape("/metrics")
            .map(|m| subject::metric_sum(&m, "gateway_xdp_packets_total", "verdict=\"drop_denylist\""))
            .unwrap_or(0.0);
        if denied > 0.0 {
            return Some(start.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Time all CPUs spent in softirq (the `softirq` column of /proc/stat's `cpu` line): the network
/// receive path of every namespace, wherever it ran.
fn softirq_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let ticks = parse_softirq(&stat).context("no cpu line in /proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}

fn parse_softirq(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    line.split_whitespace().nth(7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softirq_is_the_seventh_field() {
        let stat = "cpu  1300313 4681 225046 415751 5256 0 14909 4355 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(parse_softirq(stat), Some(14909));
        assert_eq!(parse_softirq("intr 5\n"), None);
    }
}
