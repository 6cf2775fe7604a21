//! The guard's clock: the program reads `bpf_jiffies64() × tick_ns` (inlined, where
//! `bpf_ktime_get_ns` is a helper call), and the tick length is a kernel build option
//! (`CONFIG_HZ`) that is not exposed anywhere reliable. So it is measured: the object's clock
//! probe reads jiffies and CLOCK_MONOTONIC back to back, twice, a few ticks apart, and
//! `gateway_common::gcra::calibrate_tick_ns` snaps the ratio to a known HZ.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun as _, TestRunOptions},
};
use gateway_common::{
    gcra::calibrate_tick_ns,
    xdp::{CLOCK_MAP, CLOCK_PROGRAM},
};

use super::{EbpfError, program_error, xdp};

/// Ticks to wait for: enough that a one-tick error in the count is within the snapping margin.
const WANT_TICKS: u64 = 20;
/// Longest calibration: 20 ticks at HZ = 100 take 200 ms; a slow guest gets some slack.
const GIVE_UP: Duration = Duration::from_secs(2);

/// Nanoseconds per jiffy, or `None` (with the reason) when the kernel's clocks did not allow a
/// measurement; the guard then keeps `bpf_ktime_get_ns`.
pub(super) fn calibrate(ebpf: &mut Ebpf) -> Result<Result<u64, String>, EbpfError> {
    let program = xdp(ebpf, CLOCK_PROGRAM)?;
    if program.fd().is_err() {
        // A verifier that refuses `bpf_jiffies64` (older than 5.5) is a fallback, not an error.
        if let Err(e) = program.load() {
            return Ok(Err(format!("the clock probe does not load: {e}")));
        }
    }
    let first = read(ebpf)?;
    let start = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = read(ebpf)?;
        let ticks = now.0.wrapping_sub(first.0);
        if ticks >= WANT_TICKS {
            return Ok(calibrate_tick_ns((first.0, now.0), (first.1, now.1))
                .ok_or_else(|| format!("no tick length from jiffies {first:?} → {now:?}")));
        }
        if start.elapsed() > GIVE_UP {
            return Ok(Err(format!("jiffies moved {ticks} in {:?}", start.elapsed())));
        }
    }
}

/// One (jiffies, CLOCK_MONOTONIC ns) reading by the program.
fn read(ebpf: &mut Ebpf) -> Result<(u64, u64), EbpfError> {
    let frame = [0u8; 64];
    let opts = TestRunOptions { data_in: Some(&frame), repeat: 1, ..TestRunOptions::default() };
    xdp(ebpf, CLOCK_PROGRAM)?.test_run(opts).map_err(|e| program_error(CLOCK_PROGRAM, "test-run", e))?;
    let map = ebpf.map(CLOCK_MAP).ok_or(EbpfError::MissingMap(CLOCK_MAP))?;
    let clock: Array<&aya::maps::MapData, u64> = Array::try_from(map).map_err(EbpfError::map(CLOCK_MAP))?;
    let jiffies = clock.get(&0, 0).map_err(EbpfError::map(CLOCK_MAP))?;
    let ns = clock.get(&1, 0).map_err(EbpfError::map(CLOCK_MAP))?;
    Ok((jiffies, ns))
}

impl super::XdpGuard {
    /// The guard program's clock now, in its own terms (`jiffies × tick`, or `bpf_ktime_get_ns`
    /// when uncalibrated), read by the clock probe: a program run before and one after a guard
    /// run bracket the time that run saw, whatever the scheduler did in between. The selftest
    /// paces and bounds its clock cases with it.
    pub fn program_clock_ns(&mut self) -> Result<u64, EbpfError> {
        let (jiffies, ns) = read(&mut self.ebpf)?;
        Ok(if self.tick_ns != 0 { gateway_common::gcra::coarse_ns(jiffies, self.tick_ns) } else { ns })
    }
}
