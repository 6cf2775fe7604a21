//! The guard's clock in the kernel: the tick calibrated at load is 1/HZ for a real HZ, a sender
//! at exactly the configured rate is never dropped (the tolerance's extra tick), and a greedy
//! sender gets no more than the bound of `gateway_common::gcra` (which a wrong tick would break:
//! a tick measured too long makes the clock run fast). The bucket cases then run again on the
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

    fn clock_bounds(&mut self) -> Result<(), EbpfError> {
        self.reset(Limits { rate: Some((RATE, 1)), ..GENEROUS })?;
        let frame = tcp("198.51.100.77");
        // A sender at the rate or slower (sleeps only ever overshoot): every frame must pass.
        let mut failure = None;
        for i in 0..FRAMES {
            match self.verdict(&frame.bytes)? {
                Ok(Verdict::Pass) => {}
                Ok(v) => {
                    failure = Some(format!("frame {i} of a sender at {RATE}/s: {}", v.label()));
                    break;
                }
                Err(why) => {
                    failure = Some(why);
                    break;
                }
            }
            std::thread::sleep(Duration::from_nanos(NS_PER_SEC / RATE));
        }
        self.record(format!("clock: a sender at exactly {RATE}/s (burst 1) is never dropped"), failure);

        // A greedy sender: fewer than burst + (W + 2 ticks) / interval pass in a window W.
        self.reset(Limits { rate: Some((RATE, 1)), ..GENEROUS })?;
        let tick = self.guard.tick_ns();
        let start = Instant::now();
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
        let window = start.elapsed().as_nanos() as u64;
        let interval = NS_PER_SEC / RATE;
        let bound = 1 + (window + 2 * tick) / interval;
        if failure.is_none() && passed > bound {
            failure = Some(format!("{passed} frames passed in {window} ns, bound {bound}"));
        }
        if failure.is_none() && passed == u64::from(FRAMES) * 5 {
            failure = Some("every frame passed: the bucket did not limit".into());
        }
        self.record("clock: a greedy sender stays within burst + (window + 2 ticks) × rate", failure);
        Ok(())
    }
}
