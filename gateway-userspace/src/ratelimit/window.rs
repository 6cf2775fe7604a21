//! The sliding window counter, shared by both backends (the Redis script mirrors [`admits`]).
//!
//! Time is cut into fixed windows of length `T` aligned to the Unix epoch; each key keeps the
//! count of the current window and of the previous one. A request at `elapsed` ms into the
//! current window sees
//!
//! ```text
//! used = ceil(prev · (T − elapsed) / T) + cur
//! ```
//!
//! and is admitted (and counted) when `used < limit`; refused requests are not counted. The
//! previous window fades out linearly instead of vanishing at the edge, so the fixed window's
//! double burst (a full limit just before the edge and another just after) cannot happen: right
//! after the edge the previous window still weighs almost fully. While the previous window is
//! empty the count is exact: requests 1..=limit pass, the next one is refused.
//!
//! The weight is computed in integer parts per million so Rust and Lua (whose numbers are
//! doubles) get bit-identical answers: `prev · weight` stays below 2^53 for limits up to 10^9.

/// Parts per million.
pub const SCALE: u64 = 1_000_000;
/// The largest limit the arithmetic above stays exact for.
pub const MAX_LIMIT: u64 = 1_000_000_000;
// The largest product the script computes is exactly representable in a double.
const _: () = assert!(MAX_LIMIT * SCALE < 1 << 53);

/// Where `now` falls in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Window number since the epoch.
    pub index: u64,
    /// Milliseconds into the window.
    pub elapsed: u64,
    /// Window length in milliseconds.
    pub window: u64,
}

impl Position {
    pub fn of(now_ms: u64, window_ms: u64) -> Position {
        Position { index: now_ms / window_ms, elapsed: now_ms % window_ms, window: window_ms }
    }

    /// How much of the previous window still counts, in parts per million.
    pub fn weight(&self) -> u64 {
        (self.window - self.elapsed) * SCALE / self.window
    }

    /// Milliseconds until the current window ends.
    pub fn until_end(&self) -> u64 {
        self.window - self.elapsed
    }

    /// Milliseconds until a counter of this window stops mattering (end of the next window).
    pub fn ttl(&self) -> u64 {
        2 * self.window - self.elapsed
    }
}

/// `ceil(prev · weight / SCALE)`.
pub fn weighted(prev: u64, weight: u64) -> u64 {
    (prev * weight).div_ceil(SCALE)
}

/// Whether one more request fits.
pub fn admits(prev: u64, cur: u64, weight: u64, limit: u64) -> bool {
    weighted(prev, weight) + cur < limit
}

/// What one decision tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Requests left in the window after this one.
    pub remaining: u64,
    /// Allowed: ms until the current window ends. Refused: ms until a request would be admitted.
    pub reset_ms: u64,
}

/// The outcome for a request that saw `prev`/`cur` (before counting it) at `pos`.
pub fn outcome(prev: u64, cur: u64, pos: Position, limit: u64) -> Outcome {
    let weight = pos.weight();
    if admits(prev, cur, weight, limit) {
        let used = weighted(prev, weight) + cur + 1;
        Outcome { allowed: true, remaining: limit.saturating_sub(used), reset_ms: pos.until_end() }
    } else {
        Outcome { allowed: false, remaining: 0, reset_ms: retry_after(prev, cur, pos, limit) }
    }
}

/// Milliseconds from `pos` until a request would be admitted, if nothing else is counted
/// meanwhile. Precondition: it is refused now.
pub fn retry_after(prev: u64, cur: u64, pos: Position, limit: u64) -> u64 {
    let t = pos.window;
    if cur < limit
        && let Some(at) = first_admitting_elapsed(prev, limit - cur - 1, t)
        && at < t
    {
        return at.saturating_sub(pos.elapsed).max(1);
    }
    // Not in this window: in the next one `cur` becomes the fading previous count (and if even
    // that never admits, e.g. after the limit was lowered, the window after is empty).
    let at = first_admitting_elapsed(cur, limit - 1, t).unwrap_or(t);
    (t - pos.elapsed) + at
}

/// The smallest `elapsed` at which `ceil(prev · weight(elapsed) / SCALE) <= room`, where
/// `weight(e) = floor((t − e) · SCALE / t)`. `None` when that is never the case in `[0, t)`.
fn first_admitting_elapsed(prev: u64, room: u64, t: u64) -> Option<u64> {
    if prev <= room {
        return Some(0);
    }
    // ceil(prev·w/SCALE) <= room  ⇔  prev·w <= room·SCALE  ⇔  w <= floor(room·SCALE / prev) =: w_max
    let w_max = room * SCALE / prev;
    // floor((t−e)·SCALE/t) <= w_max  ⇔  (t−e)·SCALE < (w_max+1)·t  ⇔  e > t − (w_max+1)·t/SCALE
    //  ⇔  e > (t·(SCALE − w_max − 1)) / SCALE, so the smallest integer e is floor(that) + 1.
    let bound = t * (SCALE - w_max - 1);
    let e = bound / SCALE + 1;
    (e < t).then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first ms at or after `pos` at which a request is admitted, by brute force.
    fn brute_force(prev: u64, cur: u64, now: u64, t: u64, limit: u64) -> u64 {
        let start = Position::of(now, t);
        for dt in 0..3 * t {
            let p = Position::of(now + dt, t);
            let (pv, cv) = match p.index - start.index {
                0 => (prev, cur),
                1 => (cur, 0),
                _ => (0, 0),
            };
            if admits(pv, cv, p.weight(), limit) {
                return dt;
            }
        }
        panic!("never admitted");
    }

    #[test]
    fn first_window_is_exact() {
        let pos = Position::of(60_000 * 1000 + 5, 60_000);
        for cur in 0..100 {
            assert!(outcome(0, cur, pos, 100).allowed);
        }
        let o = outcome(0, 100, pos, 100);
        assert!(!o.allowed);
        // Refused past the window's end, until 1 % of this window's 100 has faded.
        assert_eq!(o.reset_ms, (60_000 - 5) + 600);
        assert_eq!(outcome(0, 99, pos, 100).remaining, 0);
        assert_eq!(outcome(0, 0, pos, 100).remaining, 99);
    }

    #[test]
    fn the_previous_window_fades_linearly() {
        let t = 60_000;
        // 100 requests in the previous window; just after the edge almost nothing is left.
        let start = Position::of(10 * t, t);
        assert!(!admits(100, 0, start.weight(), 100));
        let quarter = Position::of(10 * t + t / 4, t);
        // 75 % of 100 still counts: 24 more fit.
        assert!(admits(100, 24, quarter.weight(), 100));
        assert!(!admits(100, 25, quarter.weight(), 100));
    }

    #[test]
    fn retry_after_is_the_first_admitting_instant() {
        let t = 1000;
        for (prev, cur, limit) in
            [(10, 0, 10), (10, 5, 10), (0, 10, 10), (7, 3, 10), (3, 10, 10), (1, 0, 1), (25, 4, 20), (0, 30, 10)]
        {
            for now in [5_000, 5_001, 5_250, 5_500, 5_999] {
                let pos = Position::of(now, t);
                if admits(prev, cur, pos.weight(), limit) {
                    continue;
                }
                let expected = brute_force(prev, cur, now, t, limit);
                assert_eq!(
                    retry_after(prev, cur, pos, limit),
                    expected,
                    "prev={prev} cur={cur} limit={limit} now={now}"
                );
            }
        }
    }
}
