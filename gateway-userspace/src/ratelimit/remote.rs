//! The Redis backend: one Lua script call per decision, on two keys that share a hash tag.
//!
//! Keys: `<prefix>:rl:{<layer>:<key>}:<window seconds>:<window number>`; the counter of window
//! `n` lives until the end of window `n + 1`, when it stops mattering. The script is
//! [`super::window::admits`] in Lua, run atomically by Redis, so every node sharing the Redis
//! sees one counter. Nodes pass their own clock (NTP keeps fleets within milliseconds, far below
//! a window), which also lets tests drive windows with a manual clock.

use std::sync::LazyLock;

use super::{
    key::Key,
    policy::LayerSpec,
    window::{self, Outcome, Position},
};
use crate::kv::{Kv, KvError};

/// KEYS: current window counter, previous window counter. ARGV: limit, weight of the previous
/// window (parts per million), TTL of a new counter (ms). Returns {admitted, current, previous}
/// (the counts as seen before this request, plus one for the current when admitted).
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local prev = tonumber(redis.call('GET', KEYS[2]) or '0')
local w = prev * tonumber(ARGV[2])
local weighted = (w - w % 1000000) / 1000000
if w % 1000000 > 0 then weighted = weighted + 1 end
if weighted + cur >= tonumber(ARGV[1]) then
  return {0, cur, prev}
end
cur = redis.call('INCR', KEYS[1])
if cur == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, cur, prev}
",
    )
});

/// The two keys of a decision: current and previous window.
pub fn keys(kv: &Kv, layer: &LayerSpec, key: &Key<'_>, pos: Position) -> (String, String) {
    let mut part = String::with_capacity(48);
    key.redis_part(&mut part);
    let base = kv.key(format_args!("rl:{{{}:{part}}}:{}", layer.name, layer.window.seconds()));
    (format!("{base}:{}", pos.index), format!("{base}:{}", pos.index.saturating_sub(1)))
}

/// Counts the request in Redis if it fits.
pub async fn decide(kv: &Kv, layer: &LayerSpec, key: &Key<'_>, limit: u64, now_ms: u64) -> Result<Outcome, KvError> {
    let pos = Position::of(now_ms, layer.window.millis());
    let (cur_key, prev_key) = keys(kv, layer, key, pos);
    let mut call = SCRIPT.prepare_invoke();
    call.key(&cur_key).key(&prev_key).arg(limit).arg(pos.weight()).arg(pos.ttl());
    let (admitted, cur, prev): (i64, i64, i64) = kv.script("ratelimit", &cur_key, &call).await?;
    let (cur, prev) = (cur.max(0) as u64, prev.max(0) as u64);
    let before = if admitted == 1 { cur.saturating_sub(1) } else { cur };
    let mut outcome = window::outcome(prev, before, pos, limit);
    // Redis decided; the arithmetic is the same, but its word is the one that counted.
    if outcome.allowed != (admitted == 1) {
        outcome = if admitted == 1 {
            Outcome { allowed: true, remaining: 0, reset_ms: pos.until_end() }
        } else {
            Outcome { allowed: false, remaining: 0, reset_ms: window::retry_after(prev, cur, pos, limit) }
        };
    }
    Ok(outcome)
}
