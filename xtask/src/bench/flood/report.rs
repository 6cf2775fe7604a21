//! `bench/results/flood.md`: medians per (attack, defence) with p99s over every rep's samples
//! pooled, the goal check for the guard, every raw cell, and what is needed to reproduce the run
//! (the nftables rules, gatewayd's config).

use std::{path::PathBuf, time::Duration};

use anyhow::Result;

use super::{
    Cell,
    attack::Attack,
    feed::Feed,
    legit::LegitResult,
    subject::{self, Defence, L7_LIMIT_PER_SECOND},
};
use crate::bench::{
    Options,
    report::{Machine, Report, git_revision, median, num, percentile, thousands, version_of},
};

/// Per (attack, defence): the medians over reps, CPU with the defence's no-attack cost removed;
/// the p99s over every rep's samples pooled.
struct Summary {
    success: f64,
    p99_keep_alive: Pooled,
    p99_new: Pooled,
    offered_pps: f64,
    dropped_pps: f64,
    /// Tick-sampled softirq of every CPU (`/proc/stat`).
    softirq_per_m: f64,
    /// The gateway's receive in softirq, exact (`--feed xdp-softirq`'s raw floods; NaN otherwise).
    receive_per_m: f64,
    /// The gateway's NAPI thread (XDP feed; NaN with the skb feed).
    napi_per_m: f64,
    gatewayd_per_m: f64,
    /// Frames the gateway's NAPI ring refused, per second (XDP feed; NaN with the skb feed).
    refused_pps: f64,
    cpu_per_dropped_us: f64,
    /// Extra softirq + gatewayd CPU per second of the attack window (ms/s).
    extra_cpu_ms_per_s: f64,
    escalation: f64,
}

/// A p99 over pooled samples, and how many there were.
#[derive(Debug, Clone, Copy)]
struct Pooled {
    p99: f64,
    samples: usize,
}

impl Pooled {
    /// Every sample of `runs` together (a p99 of one short run is its few slowest requests: one
    /// scheduler hiccup moves it; pooled over reps it rests on thousands).
    fn of<'a>(runs: impl Iterator<Item = &'a LegitResult>) -> Pooled {
        let samples: Vec<f64> = runs.flat_map(|r| r.latencies.iter().copied()).collect();
        Pooled { p99: percentile(&samples, 0.99), samples: samples.len() }
    }

    /// `1.1 ms (6,000)`-style cell text, without the unit.
    fn cell(self) -> String {
        format!("{} ({})", ms(self.p99), thousands(self.samples))
    }
}

fn summarise(cells: &[Cell], attack: Attack, defence: Defence) -> Option<Summary> {
    let mine: Vec<&Cell> = cells.iter().filter(|c| c.attack == attack && c.defence == defence).collect();
    if mine.is_empty() {
        return None;
    }
    let baseline: Vec<&Cell> = cells.iter().filter(|c| c.attack == Attack::None && c.defence == defence).collect();
    let soft_rate = median(&baseline.iter().map(|c| c.softirq / c.seconds).collect::<Vec<_>>());
    let gw_rate = median(&baseline.iter().map(|c| c.gatewayd / c.seconds).collect::<Vec<_>>());
    let napi_rate = median(&baseline.iter().filter_map(|c| Some(c.napi? / c.seconds)).collect::<Vec<_>>());
    let receive_rate = median(&baseline.iter().filter_map(|c| Some(c.receive? / c.seconds)).collect::<Vec<_>>());
    let m = |f: &dyn Fn(&Cell) -> f64| median(&mine.iter().map(|c| f(c)).collect::<Vec<_>>());
    // Extra (kernel receive, NAPI thread, gatewayd) seconds over the defence's no-attack rate.
    // The kernel's receive is the exact one where it was measured (`receive.rs`), otherwise the
    // tick-sampled softirq of every CPU. The NAPI thread is the threaded XDP feed's receive
    // (process context: not in /proc/stat's softirq).
    let soft = |c: &Cell| (c.softirq - soft_rate.max(0.0) * c.seconds).max(0.0);
    let exact = |c: &Cell| c.receive.map(|r| (r - receive_rate.max(0.0) * c.seconds).max(0.0));
    let extra = |c: &Cell| {
        let kernel = exact(c).unwrap_or_else(|| soft(c));
        let napi = c.napi.map_or(0.0, |n| (n - napi_rate.max(0.0) * c.seconds).max(0.0));
        let gw = (c.gatewayd - gw_rate.max(0.0) * c.seconds).max(0.0);
        (kernel, napi, gw)
    };
    // Without an attack there are no attack packets to divide by (a few stray frames would make
    // the quotient huge): "–".
    let per_m = |v: f64, c: &Cell| {
        if c.offered == 0 || attack == Attack::None { f64::NAN } else { v * 1e3 / (c.offered as f64 / 1e6) }
    };
    Some(Summary {
        success: m(&|c| c.success()),
        p99_keep_alive: Pooled::of(mine.iter().map(|c| &c.keep_alive)),
        p99_new: Pooled::of(mine.iter().map(|c| &c.new_conn)),
        offered_pps: m(&|c| c.offered as f64 / c.seconds),
        dropped_pps: m(&|c| c.dropped.map_or(f64::NAN, |d| d as f64 / c.seconds)),
        softirq_per_m: m(&|c| per_m(soft(c), c)),
        receive_per_m: m(&|c| exact(c).map_or(f64::NAN, |r| per_m(r, c))),
        napi_per_m: m(&|c| if c.napi.is_some() { per_m(extra(c).1, c) } else { f64::NAN }),
        gatewayd_per_m: m(&|c| per_m(extra(c).2, c)),
        refused_pps: m(&|c| c.ring_refused.map_or(f64::NAN, |r| r as f64 / c.seconds)),
        cpu_per_dropped_us: m(&|c| match c.dropped {
            Some(d) if d > 0 => {
                let (kernel, napi, gw) = extra(c);
                (kernel + napi + gw) * 1e6 / d as f64
            }
            _ => f64::NAN,
        }),
        extra_cpu_ms_per_s: m(&|c| {
            let (kernel, napi, gw) = extra(c);
            if attack == Attack::None { f64::NAN } else { (kernel + napi + gw) * 1e3 / c.seconds }
        }),
        escalation: m(&|c| c.escalation.unwrap_or(f64::NAN)),
    })
}

impl Summary {
    /// The kernel's receive per million offered packets: the exact figure where it was measured,
    /// else the tick-sampled softirq.
    fn kernel_per_m(&self) -> f64 {
        if self.receive_per_m.is_finite() { self.receive_per_m } else { self.softirq_per_m }
    }
}

fn ms(seconds: f64) -> String {
    num(seconds * 1e3, 1)
}

fn pct(ratio: f64) -> String {
    if ratio.is_finite() { format!("{:.2} %", ratio * 100.0) } else { "–".to_owned() }
}

pub fn one_line(c: &Cell) -> String {
    format!(
        "success {} p99 {}/{} ms, offered {:.0} pps, dropped {}, softirq {:.2} s, receive {} s, NAPI thread {} s, gatewayd {:.2} s, ring refused {}, escalation {}",
        pct(c.success()),
        ms(c.keep_alive.p99),
        ms(c.new_conn.p99),
        c.offered as f64 / c.seconds,
        c.dropped.map_or("–".to_owned(), |d| d.to_string()),
        c.softirq,
        c.receive.map_or("–".to_owned(), |r| num(r, 3)),
        c.napi.map_or("–".to_owned(), |n| num(n, 2)),
        c.gatewayd,
        c.ring_refused.map_or("–".to_owned(), |r| r.to_string()),
        c.escalation.map_or("–".to_owned(), |e| format!("{e:.2} s")),
    )
}

/// How the XDP feeds deliver the raw floods: the same generator and ring, drained by a NAPI
/// thread (`xdp`) or in softirq at the end of each burst (`xdp-softirq`).
fn xdp_feed_text(feed: Feed) -> String {
    let drain = if feed.threaded() {
        "That ring is drained by `fl-a0`'s threaded NAPI (`napi/fl-a0-<id>`, a kernel thread pinned to CPU 0, as \
         a NIC queue's interrupt is pinned to one CPU, at the default SCHED_OTHER, as ksoftirqd runs a NIC's \
         softirq under load); the generator and `fl-atk`'s receive of the answers (RPS) run on CPU 1, so the \
         rate offered does not depend on the defence."
    } else {
        "The gateway end's NAPI drains the ring in softirq at the end of each burst, on the generator's CPU, \
         as a NIC's interrupt raises it on the CPU it lands on; the generator floats at nice 19, as the \
         AF_PACKET sender does."
    };
    format!(
        "The raw floods (`syn-spoofed`, `syn-one`, `udp`, `rotating`) reach `fl-gw` as XDP frames (`--feed {}`): \
         a generator XDP program (xtask/floodgen), run by `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` in \
         `fl-atk` in bursts of 64 frames (at most 256 when behind), writes each frame's source (checksums \
         valid) and redirects it to `fl-atk`'s veth end, whose `ndo_xdp_xmit` queues the frame on the gateway \
         end's 256-frame ring (GRO is on there, so the ring exists whatever the defence). {drain} The guard's \
         native XDP runs on the frame itself, with no skb and no copy; for the kernel, nftables and TC, veth \
         builds the skb from the frame, as a NIC driver does from its DMA buffer. Frames the ring refused \
         (full) are counted apart (veth's `xdp_xmit_errors`) and are not in the offered count.",
        feed.label()
    )
}

pub fn write(cells: &[Cell], opts: &Options, duration: Duration) -> Result<PathBuf> {
    let flags = &opts.flood;
    let machine = Machine::read();
    let mut attacks: Vec<Attack> = Vec::new();
    let mut defences: Vec<Defence> = Vec::new();
    for c in cells {
        if !attacks.contains(&c.attack) {
            attacks.push(c.attack);
        }
        if !defences.contains(&c.defence) {
            defences.push(c.defence);
        }
    }
    let mut r = Report::new("Flood benchmark: legitimate clients under attack, per defence");
    r.paragraph(&format!(
        "`cargo xtask bench flood --reps {} --duration {} --attack-pps {} --legit-rate {} --legit-new-rate {} --feed {}` \
         on {} ({}, {} CPUs, {}), {}, commit {}, load average before the report {}. oha: {}. nft: {}.",
        opts.reps,
        duration.as_secs(),
        flags.attack_pps,
        flags.legit_rate,
        flags.legit_new_rate,
        flags.feed.label(),
        machine.kernel,
        machine.cpu_model,
        machine.cpus,
        machine.memory,
        machine.date,
        git_revision(),
        machine.loadavg,
        version_of(std::process::Command::new("oha").arg("--version")),
        version_of(std::process::Command::new("nft").arg("--version")),
    ));
    r.heading("Setup");
    r.paragraph(
        "Three network namespaces: `fl-gw` (gatewayd with its built-in demo upstream, two workers), `fl-cli` \
         (the legitimate clients) and `fl-atk` (the attackers), joined to `fl-gw` by two veth pairs; the guard \
         and the nftables chain sit on both of `fl-gw`'s veth ends. Spoofed sources are routed back over the \
         attack link (the kernel queues and answers their SYNs, then sends cookies once its SYN queue is full) \
         and `fl-atk` drops what is sent to them in its netdev ingress hook. Every cell starts gatewayd afresh (pinned maps removed, nftables table reloaded), starts the \
         attack, and 0.5 s later two oha clients from one address for the run's duration: a keep-alive one \
         and one that opens a connection per request (`--disable-keepalive`), 8 connections each, 3 s \
         timeout per request, `--latency-correction`.",
    );
    r.paragraph(&match flags.feed {
        Feed::Xdp | Feed::XdpSoftirq => xdp_feed_text(flags.feed),
        Feed::Skb => "The raw floods come from xtask's AF_PACKET sender (`--feed skb`): the sender builds an skb \
                      per frame, and veth's native XDP copies each one into a page-pool page before the guard \
                      sees it (`skb_pp_cow_data`), which a NIC would not (bench/README.md). The sender runs at \
                      nice 19: it stands in for machines elsewhere, so the clients and gatewayd do not wait for a \
                      CPU behind its frame building and sends (bench/README.md)."
            .to_owned(),
    });
    let rows: Vec<Vec<String>> = Attack::ALL
        .iter()
        .filter(|a| attacks.contains(a))
        .map(|a| vec![format!("`{}`", a.label()), a.describe().to_owned()])
        .collect();
    r.table(&["attack", "what the attacker sends"], &rows);
    r.paragraph(&format!(
        "gatewayd refuses more than {L7_LIMIT_PER_SECOND} requests per second per IP (429), and under the guard \
         `[xdp.feedback]` blocks a source after 20 refusals, or 50 connections closed without a request, in \
         60 s (the defaults). Offered pps counts every \
         packet the attacker's veth sent during the attack window (handshake packets and requests too); dropped \
         pps counts what the defence itself discarded (guard: `drop_*` verdicts and SYNs it answered with a \
         SYN cookie in XDP or TC, `syn_cookie`: neither reaches the TCP stack; nftables: its drop counters; \
         the kernel filters nothing and answers SYNs with cookies). The guard's XDP SYN-ACKs reach the \
         clients' veth end (which runs a pass-everything XDP program, as a veth needs to receive `XDP_TX`) \
         and are discarded at the attacker's end's transmit (no program there): no RSTs come back. The guard's TC \
         SYN-ACKs (redirected out of the gateway's veth end) and the kernel's go through `fl-atk`'s receive path to \
         its netdev ingress drop (about 15 % of the softirq under the TC guard and `syn-spoofed`; bench/README.md). \
         CPU is the kernel's receive and gatewayd's own CPU time, each minus what the same defence used \
         without an attack over the same time, per million offered packets (the generator's own CPU is the \
         wire's and is not counted). The kernel's receive: with `--feed xdp-softirq`, for the raw floods, \
         measured exactly (*receive, exact*): veth's NAPI runs in the softirq the generator's own \
         `BPF_PROG_RUN` raises, in the generator's thread, and this kernel (no `CONFIG_IRQ_TIME_ACCOUNTING`) \
         books that softirq to the thread's run time (`CLOCK_THREAD_CPUTIME_ID`, ns); the generator's own \
         frame making, measured before the cells with the same runs redirected to a veth that is down (each \
         frame freed at once; 64-frame runs, as the cells' runs while on schedule: *frames per generator \
         run* below shows each cell's), is taken off, and ksoftirqd's run time added. Otherwise (the closed-loop \
         attacks, whose receive runs in the attack threads' sends, and the other feeds) it is the softirq time \
         of all CPUs from `/proc/stat`, which this kernel samples at each tick (*softirq, tick-sampled*: a \
         cheap defence's figure is a few hundred ticks per cell and moves by half between reps; shown for \
         every cell). With `--feed xdp` it is the gateway's NAPI thread's run time (`/proc/<pid>/schedstat`: \
         it runs in process context, so `/proc/stat` books it as system time, not softirq). Per dropped packet \
         it is the same extra CPU divided by the packets dropped; extra CPU ms / s is the same extra CPU per \
         second of the attack window. Escalation is the time from the start of the HTTP or connection flood until the \
         guard's deny list dropped a flooder's packet."
    ));
    r.heading("Results (medians over reps; p99 over every rep's samples, their count in brackets)");
    let mut rows = Vec::new();
    for &attack in &attacks {
        for &defence in &defences {
            let Some(s) = summarise(cells, attack, defence) else { continue };
            rows.push(vec![
                attack.label().to_owned(),
                defence.label().to_owned(),
                pct(s.success),
                s.p99_keep_alive.cell(),
                s.p99_new.cell(),
                num(s.offered_pps, 0),
                num(s.dropped_pps, 0),
                num(s.refused_pps, 0),
                num(s.softirq_per_m, 0),
                num(s.receive_per_m, 0),
                num(s.napi_per_m, 0),
                num(s.gatewayd_per_m, 0),
                num(s.cpu_per_dropped_us, 2),
                num(s.extra_cpu_ms_per_s, 0),
                if s.escalation.is_finite() { format!("{:.2} s", s.escalation) } else { "–".to_owned() },
            ]);
        }
    }
    r.table(
        &[
            "attack",
            "defence",
            "legit success",
            "p99 keep-alive ms (samples)",
            "p99 new conn ms (samples)",
            "attack pps offered",
            "dropped pps",
            "ring refused pps",
            "softirq ms / M pkts (tick-sampled)",
            "receive ms / M pkts (exact)",
            "NAPI thread ms / M pkts",
            "gatewayd ms / M pkts",
            "CPU µs / dropped pkt",
            "extra CPU ms / s",
            "escalation",
        ],
        &rows,
    );
    r.heading("Goal check");
    r.paragraph(
        "Goal: with the guard, legitimate success ≥ 99 % and p99 (the worse of the two clients) within 2× of no \
         attack, for every attack this machine can generate, at lower CPU per dropped packet \
         than nftables. For the paced raw-packet floods the CPU column compares the kernel's receive (exact \
         where measured, else tick-sampled softirq) + NAPI thread + gatewayd CPU per million \
         *offered* attack packets (what the flood costs the host, whatever each defence drops: nftables' \
         per-source meters drop nothing of a spoofed flood, so per dropped packet would compare with nothing). \
         For the closed-loop attacks (`connections`, `http`) the defence itself decides how many packets the \
         attacker gets to send (a source blocked in XDP stops completing handshakes and requests), so per \
         offered packet would reward letting the attacker send more: there it compares the extra CPU per second \
         of the attack window. Each p99 is over the samples of every rep pooled (a 4 s run's p99 is its 16th \
         slowest request of 1,600, or the 4th of 400 new connections: one scheduler hiccup moved it 0.6–1.9 ms \
         between runs). No attack is the p99 of every defence's `none` samples pooled: without an attack \
         every defence passes everything, so they measure the same thing; the defence's own baseline \
         is shown as well.",
    );
    r.table(
        &["attack", "defence", "success ≥ 99 %", "p99 ≤ 2× no attack", "CPU < nftables"],
        &goal_rows(cells, &attacks, &defences),
    );
    r.heading("Every cell");
    r.paragraph(
        "Listen drops: SYNs the gateway's TCP stack dropped at the listener (`TcpExt: ListenDrops`), e.g. for \
         want of a route back to their source: such a SYN is never queued, so no defence's cookies engage for \
         it. It must be 0 under the raw floods (their spoofed sources are routed back); it is how the \
         `rotating` flood's IPv6 half, once drawn outside the routed prefix, showed up.",
    );
    let raw: Vec<Vec<String>> = cells
        .iter()
        .map(|c| {
            vec![
                c.attack.label().to_owned(),
                c.defence.label().to_owned(),
                format!("{}/{}", c.keep_alive.ok, c.keep_alive.failed),
                format!("{}/{}", c.new_conn.ok, c.new_conn.failed),
                ms(c.keep_alive.p99),
                ms(c.new_conn.p99),
                c.offered.to_string(),
                c.units.to_string(),
                c.dropped.map_or("–".to_owned(), |d| d.to_string()),
                c.listen_drops.to_string(),
                c.ring_refused.map_or("–".to_owned(), |r| r.to_string()),
                num(c.softirq, 2),
                c.receive.map_or("–".to_owned(), |r| num(r, 3)),
                c.frames_per_run.map_or("–".to_owned(), |f| num(f, 1)),
                c.napi.map_or("–".to_owned(), |n| num(n, 2)),
                num(c.gatewayd, 2),
                num(c.seconds, 2),
            ]
        })
        .collect();
    r.table(
        &[
            "attack",
            "defence",
            "keep-alive ok/failed",
            "new conn ok/failed",
            "p99 ka ms",
            "p99 new ms",
            "packets offered",
            "attack units sent",
            "dropped",
            "listen drops",
            "ring refused",
            "softirq s",
            "receive s (exact)",
            "frames per generator run",
            "NAPI thread s",
            "gatewayd s",
            "window s",
        ],
        &raw,
    );
    r.heading("The nftables rules (netdev ingress on both of fl-gw's veth ends)");
    r.code("nft", &subject::nft_ruleset());
    r.heading("gatewayd's configuration (guard-xdp; guard-tc differs in `mode`, the others have no `[xdp]`)");
    r.code("toml", &subject::gatewayd_config(Defence::GuardXdp));
    // Each feed has its own file; the default's is the report (bench/README.md, "The XDP feed").
    r.write(&if flags.feed == Feed::default() {
        "flood".to_owned()
    } else {
        format!("flood-{}-feed", flags.feed.label())
    })
}

fn goal_rows(cells: &[Cell], attacks: &[Attack], defences: &[Defence]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let yes_no = |ok: bool, detail: String| format!("{} ({detail})", if ok { "yes" } else { "**no**" });
    let baseline = || cells.iter().filter(|c| c.attack == Attack::None);
    let pooled_p99 =
        Pooled::of(baseline().map(|c| &c.keep_alive)).p99.max(Pooled::of(baseline().map(|c| &c.new_conn)).p99);
    for &defence in defences.iter().filter(|d| d.is_guard()) {
        let Some(base) = summarise(cells, Attack::None, defence) else { continue };
        let own_p99 = base.p99_keep_alive.p99.max(base.p99_new.p99);
        for &attack in attacks.iter().filter(|a| **a != Attack::None) {
            let Some(s) = summarise(cells, attack, defence) else { continue };
            let p99 = s.p99_keep_alive.p99.max(s.p99_new.p99);
            // Per offered attack packet: what the operator pays for the flood whatever each defence
            // chose to drop (nftables drops nothing of a spoofed flood, so per dropped packet has
            // nothing to compare with there).
            // The closed-loop attacks: per second of attack (see the goal paragraph).
            let (cost, unit): (fn(&Summary) -> f64, &str) = if attack.is_closed_loop() {
                (|s| s.extra_cpu_ms_per_s, "ms / s")
            } else {
                (|s| s.kernel_per_m() + s.napi_per_m.max(0.0) + s.gatewayd_per_m, "ms / M pkts")
            };
            let nft = summarise(cells, attack, Defence::Nftables).map_or(f64::NAN, |n| cost(&n));
            let mine = cost(&s);
            let cpu = if nft.is_finite() && mine.is_finite() {
                yes_no(mine < nft, format!("{mine:.0} vs {nft:.0} {unit}"))
            } else {
                format!("n/a (guard {} , nftables {} {unit})", num(mine, 0), num(nft, 0))
            };
            rows.push(vec![
                attack.label().to_owned(),
                defence.label().to_owned(),
                yes_no(s.success >= 0.99, pct(s.success)),
                yes_no(
                    p99 <= 2.0 * pooled_p99,
                    format!("{} vs {} ms; own no-attack {} ms", ms(p99), ms(pooled_p99), ms(own_p99)),
                ),
                cpu,
            ]);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::flood::legit::LegitResult;

    fn cell(attack: Attack, offered: u64, softirq: f64) -> Cell {
        let legit = LegitResult { ok: 100, failed: 0, p99: 0.001, latencies: vec![0.001; 100] };
        Cell {
            defence: Defence::GuardXdp,
            attack,
            keep_alive: legit.clone(),
            new_conn: legit,
            offered,
            units: offered,
            seconds: 4.0,
            dropped: Some(0),
            softirq,
            gatewayd: 0.0,
            escalation: None,
            colocation: Default::default(),
            listen_drops: 0,
            napi: None,
            ring_refused: None,
            receive: None,
            frames_per_run: None,
        }
    }

    #[test]
    fn no_attack_has_no_cost_per_attack_packet_and_closed_loop_cost_is_per_second() {
        // A few stray frames in the baseline must not turn into a cost per million packets.
        let cells = [cell(Attack::None, 4, 0.4), cell(Attack::Http, 1_000, 2.4)];
        let base = summarise(&cells, Attack::None, Defence::GuardXdp).unwrap();
        assert!(base.softirq_per_m.is_nan() && base.gatewayd_per_m.is_nan() && base.extra_cpu_ms_per_s.is_nan());
        let http = summarise(&cells, Attack::Http, Defence::GuardXdp).unwrap();
        // 2.4 s minus the baseline's 0.1 s/s over 4 s: 2.0 s extra, 500 ms per second.
        assert!((http.extra_cpu_ms_per_s - 500.0).abs() < 1e-6, "{}", http.extra_cpu_ms_per_s);
        assert!(Attack::Http.is_closed_loop() && !Attack::SynSpoofed.is_closed_loop());
    }

    #[test]
    fn the_exact_receive_is_preferred_to_tick_sampled_softirq() {
        // Baseline: ksoftirqd 0.01 s/s; under the flood 0.44 s of receive over 4 s for 1 M
        // packets: 0.40 s extra, 400 ms per million, whatever the ticks said (2.0 s).
        let mut base = cell(Attack::None, 0, 0.4);
        base.receive = Some(0.04);
        let mut flood = cell(Attack::SynOne, 1_000_000, 2.0);
        flood.receive = Some(0.44);
        let s = summarise(&[base, flood.clone()], Attack::SynOne, Defence::GuardXdp).unwrap();
        assert!((s.receive_per_m - 400.0).abs() < 1e-6, "{}", s.receive_per_m);
        assert!((s.kernel_per_m() - 400.0).abs() < 1e-6);
        assert!((s.softirq_per_m - 1_600.0).abs() < 1e-6, "{}", s.softirq_per_m);
        // Not measured (other feeds): the tick-sampled softirq it is.
        flood.receive = None;
        let s = summarise(&[cell(Attack::None, 0, 0.4), flood], Attack::SynOne, Defence::GuardXdp).unwrap();
        assert!(s.receive_per_m.is_nan() && (s.kernel_per_m() - 1_600.0).abs() < 1e-6);
    }

    #[test]
    fn p99_pools_every_rep() {
        // Two reps of 100: the slowest 2 % sit in one of them; its own p99 would hide the other's.
        let mut fast = cell(Attack::Udp, 1, 0.0);
        let mut slow = fast.clone();
        fast.keep_alive.latencies = vec![0.001; 100];
        slow.keep_alive.latencies = [vec![0.001; 96], vec![0.009; 4]].concat();
        let s = summarise(&[fast, slow], Attack::Udp, Defence::GuardXdp).unwrap();
        assert_eq!((s.p99_keep_alive.p99, s.p99_keep_alive.samples), (0.009, 200));
        assert_eq!(s.p99_keep_alive.cell(), "9.0 (200)");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
