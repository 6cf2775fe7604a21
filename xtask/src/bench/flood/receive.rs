//! The gateway's receive of a raw flood under `--feed xdp-softirq`, measured exactly.
//!
//! `/proc/stat`'s softirq column is tick-sampled on this kernel (no `CONFIG_IRQ_TIME_ACCOUNTING`):
//! a tick that lands in softirq books the whole tick there, one that does not books none. The
//! feed's softirq comes in bursts of a few tens of microseconds, one per generator run, so a
//! cheap defence's figure is a count of a few hundred ticks per cell and moved by ±50 % between
//! reps (bench/README.md, "CPU"). The same work is known to the nanosecond elsewhere: veth's
//! NAPI runs in the softirq raised by the generator's own `BPF_PROG_RUN`, at the `local_bh_enable`
//! that ends each batch, in the generator's thread; without IRQ time accounting the scheduler
//! books that softirq to the thread it interrupted (its run time, `CLOCK_THREAD_CPUTIME_ID`,
//! in ns). So the generator thread's run time is its own frame making plus the gateway's receive of
//! every frame it made: the defence (XDP program, or the skb, GRO, TC, nftables and the TCP
//! stack) and what it sends back. The frame making alone is measured once per attack before the
//! cells (`attack::generator_cost`: the same runs redirected to a veth that is down, where
//! each frame is freed at once) and taken off. Softirq work that overflows to ksoftirqd is added
//! from those threads' run time. What runs elsewhere is left out and is not the gateway's receive:
//! the attacker's end receiving the answers (RPS to the other CPU: another machine's work).

use std::fs;

use anyhow::{Context as _, Result};

/// The calling thread's run time so far, in seconds: `CLOCK_THREAD_CPUTIME_ID`, the scheduler's
/// run time of the thread brought up to date on the call (its schedstat file lags by up to a
/// tick while the thread runs).
pub fn thread_cpu() -> Result<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a pointer to a timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(std::io::Error::last_os_error()).context("clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// Run time of every `ksoftirqd/N` thread together, in seconds (softirq work deferred from the
/// context that raised it, when it ran too long).
pub fn ksoftirqd_cpu() -> Result<f64> {
    let mut total = 0.0;
    for entry in fs::read_dir("/proc").context("cannot list /proc")?.flatten() {
        let dir = entry.path();
        // Processes come and go while /proc is read: one that ended is skipped.
        let Ok(comm) = fs::read_to_string(dir.join("comm")) else { continue };
        if !comm.starts_with("ksoftirqd/") {
            continue;
        }
        if let Some(s) = fs::read_to_string(dir.join("schedstat")).ok().as_deref().and_then(parse_schedstat) {
            total += s;
        }
    }
    Ok(total)
}

/// The first field of a schedstat file: time spent running, in nanoseconds, as seconds.
pub fn parse_schedstat(text: &str) -> Option<f64> {
    Some(text.split_whitespace().next()?.parse::<u64>().ok()? as f64 / 1e9)
}

/// The receive's seconds: the generator thread's run time less its own frame making
/// (`cost` seconds per frame, times the frames made), plus ksoftirqd's.
pub fn exact(generator_cpu: f64, frames: u64, cost: f64, ksoftirqd: f64) -> f64 {
    (generator_cpu - cost * frames as f64).max(0.0) + ksoftirqd.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_schedstat_and_takes_the_frame_making_off() {
        assert_eq!(parse_schedstat("1500000000 1171 2\n"), Some(1.5));
        assert_eq!(parse_schedstat(""), None);
        // 1.0 s of run time for 1 M frames at 0.6 µs each: 0.4 s of receive, plus ksoftirqd.
        assert!((exact(1.0, 1_000_000, 0.6e-6, 0.01) - 0.41).abs() < 1e-9);
        assert_eq!(exact(0.5, 1_000_000, 0.6e-6, 0.0), 0.0);
        // This thread has run, and ksoftirqd's threads can be read.
        assert!(thread_cpu().unwrap() > 0.0);
        assert!(ksoftirqd_cpu().unwrap() >= 0.0);
    }
}
