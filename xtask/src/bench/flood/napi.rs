//! The XDP feed's receive as a NIC's: `fl-a0`'s NAPI in a kernel thread of its own, pinned to
//! one CPU, and what it cost.
//!
//! With `/sys/class/net/fl-a0/threaded` = 1, veth's `ndo_xdp_xmit` (the generator's redirect)
//! queues the frames on `fl-a0`'s ring and wakes the `napi/fl-a0-<id>` kthread instead of raising
//! a softirq on the generator's CPU: the gateway's receive (its XDP program, the skb built from
//! the frame, GRO, nftables, TC and the TCP stack) runs there, the way a NIC's queue is drained
//! on the CPU its interrupt is pinned to, whatever the sender is doing. Its CPU time is the
//! thread's (`/proc/<pid>/schedstat`, nanoseconds; the thread runs in process context, so
//! `/proc/stat` books it as system time, not softirq: left out, every defence would look
//! nearly free). The frames the ring refused (it holds 256; the generator's bursts can outrun
//! a slow receiver) are counted by veth as `xdp_xmit_errors` of `fl-a1`'s transmit queue.
//!
//! The generator and the attacker's receive of the answers (`fl-a1`'s backlog, sent there by
//! RPS) run on the other CPU, as another host would: the kernel's and TC's SYN-ACKs to the
//! spoofed sources then are not processed in the NAPI thread's context (where its CPU time and
//! `/proc/stat`'s softirq would both count them).

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use super::topology::{ATTACK_IF, ATTACK_NS, GW_ATTACK_IF, GW_NS, in_ns};
use crate::{bench::cpus, cmd::capture};

/// The CPU `fl-a0`'s NAPI thread is pinned to, as a NIC queue's interrupt is (`smp_affinity`):
/// one queue, one CPU, whatever else runs there (gatewayd and the clients float over both).
pub const NAPI_CPU: usize = 0;

/// The CPU of the attacker's side (the generator and `fl-a1`'s receive of the answers): the
/// other one on a 2-CPU machine, so that the wire's producer never takes the NAPI thread's turns.
pub fn attacker_cpu() -> usize {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(cpus).unwrap_or(1).saturating_sub(1)
}

/// Makes `fl-a0`'s NAPI threaded (it exists: GRO is on) and sends `fl-a1`'s backlog to the
/// attacker's CPU.
pub fn setup() -> Result<()> {
    write_sysfs(GW_NS, &format!("/sys/class/net/{GW_ATTACK_IF}/threaded"), "1")
        .context("threaded NAPI on the gateway's attack veth end")?;
    write_sysfs(
        ATTACK_NS,
        &format!("/sys/class/net/{ATTACK_IF}/queues/rx-0/rps_cpus"),
        &format!("{:x}", 1u64 << attacker_cpu()),
    )
    .context("RPS of the attacker's veth end to the attacker's CPU")
}

/// sysfs of a namespace's devices is only visible from inside it (`ip netns exec` remounts /sys).
fn write_sysfs(ns: &str, path: &str, value: &str) -> Result<()> {
    capture(in_ns(ns, "sh").args(["-c", &format!("echo {value} > {path}")])).map(drop)
}

/// `fl-a0`'s NAPI kthread.
#[derive(Debug, Clone, Copy)]
pub struct Thread(u32);

impl Thread {
    /// Finds the thread (by name: `napi/fl-a0-<napi id>`) and pins it to [`NAPI_CPU`]. Looked up
    /// per cell: veth recreates its NAPI when XDP or GRO change. It keeps the kernel's default
    /// policy (SCHED_OTHER, as ksoftirqd, where a NIC's softirq goes under sustained load): at
    /// SCHED_FIFO it refused fewer frames but starved gatewayd's worker on its CPU under the
    /// connection flood (bench/README.md).
    pub fn pinned() -> Result<Thread> {
        let prefix = format!("napi/{GW_ATTACK_IF}-");
        let mut found = None;
        for entry in fs::read_dir("/proc").context("cannot list /proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(comm) = fs::read_to_string(entry.path().join("comm")) else { continue };
            if comm.trim_end().starts_with(&prefix) {
                if found.is_some() {
                    bail!("more than one {prefix}* thread (veth with several queues?)");
                }
                found = Some(pid);
            }
        }
        let pid = found.with_context(|| format!("no {prefix}* kthread (threaded NAPI off?)"))?;
        cpus::pin(pid, &[NAPI_CPU]).context("pinning the NAPI thread")?;
        Ok(Thread(pid))
    }

    /// CPU time so far, in seconds (the scheduler's runtime of the thread).
    pub fn cpu_seconds(self) -> Result<f64> {
        let path = format!("/proc/{}/schedstat", self.0);
        let text = fs::read_to_string(Path::new(&path)).with_context(|| format!("cannot read {path}"))?;
        super::receive::parse_schedstat(&text).with_context(|| format!("{path}: {text}"))
    }
}

/// Frames `fl-a1`'s `ndo_xdp_xmit` could not queue on `fl-a0`'s ring (full), so far.
pub fn ring_refused() -> Result<u64> {
    let out = capture(in_ns(ATTACK_NS, "ethtool").args(["-S", ATTACK_IF]))?;
    xmit_errors(&out).with_context(|| format!("no xdp_xmit_errors in ethtool -S {ATTACK_IF}: {out}"))
}

fn xmit_errors(ethtool: &str) -> Option<u64> {
    let mut total = None;
    for line in ethtool.lines() {
        let Some((name, value)) = line.trim().split_once(':') else { continue };
        if name.ends_with("_xdp_xmit_errors") {
            *total.get_or_insert(0) += value.trim().parse::<u64>().ok()?;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ring_refusals() {
        let ethtool = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_tx_errors: 9\n     \
                       tx_queue_0_xdp_xmit: 100\n     tx_queue_0_xdp_xmit_errors: 7\n";
        assert_eq!(xmit_errors(ethtool), Some(7));
        assert_eq!(xmit_errors("NIC statistics:\n"), None);
    }
}
