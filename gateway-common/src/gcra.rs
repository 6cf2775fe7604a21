//! The guard's token buckets as GCRA (one timestamp per bucket), and the coarse clock they run on.
//!
//! The XDP program reads time as `bpf_jiffies64() × tick_ns`: the verifier inlines `bpf_jiffies64`
//! (about 1 ns) where `bpf_ktime_get_ns` is a helper call (about 37 ns on the benchmark machine,
//! a third of the pass path). That clock steps once per kernel tick (1/`CONFIG_HZ`, 4 ms on
//! Debian), so it lags real time by less than one tick; `tick_ns` is calibrated by the daemon at
//! load (the tick length is a kernel build option).
//!
//! Error bounds of GCRA(interval `I`, tolerance `L`) on a clock `c` that lags real time `t` by
//! less than a tick `τ` (`t − τ < c(t) ≤ t`, non-decreasing), one CPU:
//!
//! - **No false drops** with `L = (burst − 1)·I + τ`: a sender that conforms to the real-time
//!   bucket (at most `burst + (t₂ − t₁)/I` packets in every window `[t₁, t₂]`) is never dropped.
//!   For packet `n+1`, the arrival time after packet `n` is `c(t_k) + (n − k + 1)·I` for some
//!   `k ≤ n`; conformance of packets `k..=n+1` gives `(n − k + 1)·I ≤ (burst − 1)·I + t_{n+1} − t_k`,
//!   and the lag gives `c(t_k) − c(t_{n+1}) < t_k − t_{n+1} + τ`; summed: the arrival time is below
//!   `c(t_{n+1}) + L`, so the packet passes. Without the `+ τ` a conforming sender at the bucket's
//!   exact rate is dropped at tick boundaries (the test `exact_tolerance_drops_on_a_coarse_clock`).
//! - **Bounded excess**: GCRA admits at most `1 + (D + L)/I` packets over a clock span `D`, and a
//!   real window of length `W` spans less than `W + τ` of the coarse clock, so it admits fewer than
//!   `burst + (W + 2τ)/I` packets: at most `2·τ/I` (two ticks' worth of the rate) beyond the exact
//!   bucket. At 1,000 packets/s and HZ = 250 that is 8 packets in any window.
//! - `I = ⌊10⁹ / rate⌋` rounds the interval down: the rate is exceeded by less than one part in
//!   `I` (below 10⁻⁶ for rates up to 1,000/s).
//!
//! Several CPUs update one bucket without a lock (see [`crate::xdp::SourceState`]): at most
//! (CPUs − 1) further packets can slip through at any instant.

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// The `CONFIG_HZ` choices Linux offers on x86 and arm64; a calibration close to one of them is
/// snapped to it.
pub const KNOWN_HZ: [u64; 4] = [100, 250, 300, 1000];

/// GCRA parameters of a token bucket of `rate` per second and `burst`, on a clock whose
/// resolution is `tick_ns` (0: an exact clock): the cost of one packet and how far ahead of now
/// the arrival time may run.
#[inline(always)]
pub const fn params(rate: u64, burst: u64, tick_ns: u64) -> (u64, u64) {
    let rate = if rate == 0 { 1 } else { rate };
    let burst = if burst == 0 { 1 } else { burst };
    let mut interval = NS_PER_SEC / rate;
    if interval == 0 {
        interval = 1;
    }
    (interval, interval.saturating_mul(burst - 1).saturating_add(tick_ns))
}

/// Whether a packet conforms: the arrival time is at most `tolerance` ahead of `now`.
#[inline(always)]
pub const fn conforms(tat: u64, now: u64, tolerance: u64) -> bool {
    tat <= now.saturating_add(tolerance)
}

/// The arrival time after a conforming packet: an idle bucket (arrival time in the past) restarts
/// from now.
#[inline(always)]
pub const fn advance(tat: u64, now: u64, interval: u64) -> u64 {
    (if tat > now { tat } else { now }).saturating_add(interval)
}

/// One packet through a bucket: `Some(new arrival time)` when it passes, `None` when dropped.
#[inline(always)]
pub const fn step(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    if conforms(tat, now, tolerance) { Some(advance(tat, now, interval)) } else { None }
}

/// The coarse clock's reading in ns for a jiffies count.
#[inline(always)]
pub const fn coarse_ns(jiffies: u64, tick_ns: u64) -> u64 {
    jiffies.wrapping_mul(tick_ns)
}

/// The tick length from two (jiffies, CLOCK_MONOTONIC ns) readings: snapped to a [`KNOWN_HZ`]
/// within 5 %, else the measured length; `None` when the readings cannot tell (too few ticks
/// apart, or time did not move forward).
pub const fn calibrate_tick_ns(jiffies: (u64, u64), ns: (u64, u64)) -> Option<u64> {
    let ticks = jiffies.1.wrapping_sub(jiffies.0);
    // Ten ticks: the count is off by at most one, so the measurement is within 10 %, and only
    // the snapping below makes it exact.
    if ticks < 10 || ticks > (1 << 32) || ns.1 <= ns.0 {
        return None;
    }
    let measured = (ns.1 - ns.0) / ticks;
    if measured == 0 {
        return None;
    }
    let mut i = 0;
    while i < KNOWN_HZ.len() {
        let tick = NS_PER_SEC / KNOWN_HZ[i];
        let off = measured.abs_diff(tick);
        if off * 20 <= tick {
            return Some(tick);
        }
        i += 1;
    }
    Some(measured)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const TICK: u64 = 4_000_000;

    /// A small deterministic generator (xorshift64*) for arrival patterns.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The coarse clock at real time `t`: the last tick boundary, from a phase in `[0, tick)`.
    fn clock(t: u64, phase: u64) -> u64 {
        (t + phase) / TICK * TICK
    }

    /// Runs arrivals (real ns, sorted) through one bucket; returns which passed.
    fn run(arrivals: &[u64], interval: u64, tolerance: u64, phase: u64) -> Vec<bool> {
        let mut tat = 0;
        arrivals
            .iter()
            .map(|&t| match step(tat, clock(t, phase) + 10 * TICK, interval, tolerance) {
                Some(next) => {
                    tat = next;
                    true
                }
                None => false,
            })
            .collect()
    }

    /// A sender that conforms to the exact real-time bucket: it sends whenever a token is there,
    /// after random pauses (tokens accumulate up to `burst`).
    fn conforming(rng: &mut Rng, rate: u64, burst: u64, n: usize) -> Vec<u64> {
        let interval = NS_PER_SEC / rate;
        // `tat`: the exact real-time GCRA's arrival time; a packet may go once `t ≥ tat − (burst − 1)·I`.
        let (mut t, mut tat, mut out) = (0u64, 0u64, Vec::new());
        while out.len() < n {
            t += match rng.below(4) {
                0 => 0,
                1 => rng.below(interval),
                2 => interval,
                _ => rng.below(interval * (burst + 2)),
            };
            let earliest = tat.saturating_sub(interval * (burst - 1));
            if t < earliest {
                t = earliest;
            }
            tat = tat.max(t) + interval;
            out.push(t);
        }
        out
    }

    #[test]
    fn conforming_senders_are_never_dropped_on_a_coarse_clock() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for &(rate, burst) in &[(1, 1), (1, 5), (100, 1), (250, 3), (1000, 1), (1000, 10), (100_000, 50)] {
            let (interval, tolerance) = params(rate, burst, TICK);
            for _ in 0..50 {
                let arrivals = conforming(&mut rng, rate, burst, 400);
                let phase = rng.below(TICK);
                let passed = run(&arrivals, interval, tolerance, phase);
                let dropped = passed.iter().filter(|p| !**p).count();
                assert_eq!(dropped, 0, "rate {rate} burst {burst} phase {phase}: {dropped} conforming packets dropped");
            }
        }
    }

    #[test]
    fn exact_tolerance_drops_on_a_coarse_clock() {
        // The same conforming sender with the tolerance of an exact clock: the tick matters.
        let (interval, tolerance) = params(1000, 1, 0);
        let arrivals: Vec<u64> = (0..100).map(|i| i * interval + 1).collect();
        let passed = run(&arrivals, interval, tolerance, 0);
        assert!(passed.iter().any(|p| !p), "an exact-clock tolerance should drop some conforming packets");
    }

    #[test]
    fn excess_over_any_window_stays_within_two_ticks_of_rate() {
        let mut rng = Rng(42);
        for &(rate, burst) in &[(1000, 1), (1000, 10), (250, 4), (20_000, 100)] {
            let (interval, tolerance) = params(rate, burst, TICK);
            for _ in 0..20 {
                // A greedy sender: far more than the rate, at random instants.
                let mut t = 0;
                let arrivals: Vec<u64> = (0..2000)
                    .map(|_| {
                        t += rng.below(interval / 4 + 1);
                        t
                    })
                    .collect();
                let phase = rng.below(TICK);
                let passed: Vec<u64> = arrivals
                    .iter()
                    .zip(run(&arrivals, interval, tolerance, phase))
                    .filter(|(_, p)| *p)
                    .map(|(t, _)| *t)
                    .collect();
                assert!(passed.len() < arrivals.len(), "the greedy sender must be limited");
                for (i, &start) in passed.iter().enumerate() {
                    for (j, &end) in passed.iter().enumerate().skip(i) {
                        let admitted = (j - i + 1) as u64;
                        // Fewer than burst + (W + 2τ)/I, as an integer inequality (× I).
                        assert!(
                            admitted * interval < burst * interval + (end - start) + 2 * TICK,
                            "rate {rate} burst {burst}: {admitted} packets in {} ns",
                            end - start
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn exact_bucket_bounds_hold_without_a_tick() {
        // tick 0 is the exact clock: burst b then exactly one packet per interval.
        let (interval, tolerance) = params(10, 3, 0);
        assert_eq!((interval, tolerance), (100_000_000, 200_000_000));
        let mut tat = 0;
        let now = 5 * NS_PER_SEC;
        let passes = (0..5).filter(|_| step(tat, now, interval, tolerance).map(|n| tat = n).is_some()).count();
        assert_eq!(passes, 3);
        assert!(step(tat, now + interval, interval, tolerance).is_some());
    }

    #[test]
    fn parameters_saturate_instead_of_overflowing() {
        assert_eq!(params(0, 0, 0), (NS_PER_SEC, 0));
        assert_eq!(params(2 * NS_PER_SEC, 3, 0), (1, 2));
        assert_eq!(params(1, u64::MAX, TICK).1, u64::MAX);
    }

    #[test]
    fn calibration_snaps_to_known_hz() {
        // 50 ticks of HZ=250 over 200 ms, with a tick's worth of error either way.
        assert_eq!(calibrate_tick_ns((1000, 1050), (0, 200_000_000)), Some(4_000_000));
        assert_eq!(calibrate_tick_ns((1000, 1051), (0, 200_000_000)), Some(4_000_000));
        assert_eq!(calibrate_tick_ns((7, 207), (10, 200_000_010)), Some(1_000_000));
        assert_eq!(calibrate_tick_ns((0, 60), (0, 200_000_000)), Some(3_333_333));
        assert_eq!(calibrate_tick_ns((0, 20), (0, 200_000_000)), Some(10_000_000));
        // Not a known HZ: the measured length.
        assert_eq!(calibrate_tick_ns((0, 40), (0, 200_000_000)), Some(5_000_000));
        // Too few ticks, or time standing still: no answer.
        assert_eq!(calibrate_tick_ns((0, 5), (0, 200_000_000)), None);
        assert_eq!(calibrate_tick_ns((0, 50), (7, 7)), None);
        // jiffies wrap (32-bit jiffies on the low word are not used, but the difference wraps).
        assert_eq!(calibrate_tick_ns((u64::MAX - 24, 25), (0, 200_000_000)), Some(4_000_000));
    }
}
