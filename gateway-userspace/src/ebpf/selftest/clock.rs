//! The guard's clock in the kernel: the tick calibrated at load is 1/HZ for a real HZ (a wrong
//! tick would make the bucket run at a wrong rate), a sender at exactly the configured rate is
//! never dropped (the tolerance's extra tick), and a greedy sender gets no more than the bound of
//! `gateway_common::gcra`. Both rate cases are judged on the program's own clock, so they do not
//! depend on how this thread is scheduled. The bucket cases then run again on the
//! `bpf_ktime_get_ns` fallback.

use std::time::{Duration, Instant};

use gateway_common::{
    gcra::{KNOWN_HZ, NS_PER_SEC},
    xdp::Verdict,
};

use super::{GENEROUS, Limits, Suite, tcp};
use crate::ebpf::EbpfError;

/// 1,000 packets/s, burst 1: faster than any HZ, so several packets fall in one tick.
const RATE: u64 = 1000;
const FRAMES: u32 = 200;

impl Suite<'_> {
    pub(super) fn clock(&mut self) -> Result<(), EbpfError> {
        let tick = self.guard.tick_ns();
        let failure = if tick == 0 {
            Some("not calibrated: the guard fell back to bpf_ktime_get_ns".to_owned())
        } else if !KNOWN_HZ.iter().any(|hz| NS_PER_SEC / hz == tick) {
            Some(format!("tick of {tick} ns is not 1/HZ for any HZ in {KNOWN_HZ:?}"))
        } else {
            None
        };
        self.record(format!("clock: jiffies calibrated at load (tick {tick} ns)"), failure);
        self.clock_bounds()?;
        // The same bucket cases on the fallback clock, then back.
        self.guard.set_clock(None)?;
        self.buckets()?;
        self.clock_bounds()?;
        self.guard.set_clock((tick != 0).then_some(tick))
    }

    /// Both cases run against the program's own clock ([`XdpGuard::program_clock_ns`] before
    /// and after each run brackets the time the program saw), never against this thread's sleeps:
    /// under load a sleep overshoots and the kernel's tick can arrive late and catch up, and
    /// neither may decide the outcome.
    fn clock_bounds(&mut self) -> Result<(), EbpfError> {
        let interval = NS_PER_SEC / RATE;
        // The tolerance `gateway_common::gcra` derives for burst 1 on this clock: one tick.
        let tolerance = self.guard.tick_ns();
        self.reset(Limits { rate: Some((RATE, 1)), ..GENEROUS })?;
        let frame = tcp("198.51.100.77");
        // A sender at exactly the rate as the program's clock sees it: frame n goes once
        // `before(n) + tolerance ≥ after(k) + (n − k)·interval` for every earlier frame k. By the
        // derivation such a sender is never dropped; without the tick in the tolerance, the
        // frames this sends within one tick on the jiffies clock are.
        let mut failure = None;
        let mut latest = i128::MIN; // max over sent frames k of after(k) − k·interval
        let mut n = 0u32;
        let give_up = Instant::now() + Duration::from_secs(30);
        while n < FRAMES && failure.is_none() {
            let before = i128::from(self.guard.program_clock_ns()?);
            if n > 0 && before + i128::from(tolerance) < latest + i128::from(n) * i128::from(interval) {
                if Instant::now() > give_up {
                    failure = Some(format!("the program's clock stopped moving after frame {n}"));
                }
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            match self.verdict(&frame.bytes)? {
                Ok(Verdict::Pass) => {}
                Ok(v) => failure = Some(format!("frame {n} of a sender at {RATE}/s: {}", v.label())),
                Err(why) => failure = Some(why),
            }
            let after = i128::from(self.guard.program_clock_ns()?);
            latest = latest.max(after - i128::from(n) * i128::from(interval));
            n += 1;
        }
        self.record(format!("clock: a sender at exactly {RATE}/s (burst 1) is never dropped"), failure);

        // A greedy sender: GCRA admits at most 1 + (D + tolerance) / interval frames over a span
        // D of its clock, D measured from before the first run to after the last.
        self.reset(Limits { rate: Some((RATE, 1)), ..GENEROUS })?;
        let start = self.guard.program_clock_ns()?;
        let mut passed = 0u64;
        let mut failure = None;
        for _ in 0..FRAMES * 5 {
            match self.verdict(&frame.bytes)? {
                Ok(Verdict::Pass) => passed += 1,
                Ok(_) => {}
                Err(why) => {
                    failure = Some(why);
                    break;
                }
            }
        }
        let span = self.guard.program_clock_ns()?.saturating_sub(start);
        let bound = 1 + (span + tolerance) / interval;
        if failure.is_none() && passed > bound {
            failure = Some(format!("{passed} frames passed over {span} ns of the program's clock, bound {bound}"));
        }
        if failure.is_none() && passed == u64::from(FRAMES) * 5 {
            failure = Some("every frame passed: the bucket did not limit".into());
        }
        self.record(
            "clock: a greedy sender stays within burst + (span + 1 tick) × rate of the program's clock",
            failure,
        );
        Ok(())
    }
}
