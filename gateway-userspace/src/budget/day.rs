//! Budget days: a calendar day in a configured time zone (UTC by default), so a budget resets at
//! the workspace's midnight, DST included.

use jiff::{
    Timestamp,
    tz::{Offset, TimeZone},
};

/// A named time zone (`UTC`, an IANA name such as `Europe/Amsterdam`, or a fixed offset such as
/// `+05:30`).
#[derive(Debug, Clone)]
pub struct Zone {
    pub name: String,
    tz: TimeZone,
}

/// One budget day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    /// `yyyymmdd` of the local date.
    pub id: u32,
    /// Unix ms of the next local midnight.
    pub ends_ms: u64,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone { name: "UTC".into(), tz: TimeZone::UTC }
    }

    /// `UTC`, `±HH:MM[:SS]`, or an IANA name from the system's tzdata.
    pub fn parse(name: &str) -> Result<Zone, String> {
        if name == "UTC" {
            return Ok(Zone::utc());
        }
        if name.starts_with(['+', '-']) {
            let offset = parse_offset(name)
                .ok_or_else(|| format!("invalid offset {name:?}: expected e.g. \"+02:00\" or \"-05:30\""))?;
            return Ok(Zone { name: name.to_owned(), tz: TimeZone::fixed(offset) });
        }
        TimeZone::get(name)
            .map(|tz| Zone { name: name.to_owned(), tz })
            .map_err(|e| format!("unknown time zone {name:?} ({e}); use \"UTC\", an IANA name like \"Europe/Amsterdam\" (needs tzdata) or an offset like \"+02:00\""))
    }

    /// The day `now_ms` falls in.
    pub fn day(&self, now_ms: u64) -> Day {
        self.local_day(now_ms).unwrap_or_else(|| {
            // Out of jiff's range (not a real clock): plain UTC days.
            let index = now_ms / 86_400_000;
            Day { id: index as u32, ends_ms: (index + 1) * 86_400_000 }
        })
    }

    fn local_day(&self, now_ms: u64) -> Option<Day> {
        let now = Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let date = now.to_zoned_datetime(self.tz.clone()).date();
        let next = date.tomorrow().ok()?.to_zoned_datetime(self.tz.clone()).ok()?;
        let id = u32::try_from(i32::from(date.year()) * 10_000 + i32::from(date.month()) * 100 + i32::from(date.day()))
            .ok()?;
        Some(Day { id, ends_ms: u64::try_from(next.timestamp().as_millisecond()).ok()? })
    }
}

fn parse_offset(s: &str) -> Option<Offset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let mut parts = rest.split(':');
    let mut total = 0i32;
    for (i, scale) in [3600, 60, 1].into_iter().enumerate() {
        match parts.next() {
            Some(p) if p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()) => total += p.parse::<i32>().ok()? * scale,
            None if i >= 2 => break,
            _ => return None,
        }
    }
    if parts.next().is_some() {
        return None;
    }
    Offset::from_seconds(sign * total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAN_1_2026_UTC: u64 = 1_767_225_600_000;

    #[test]
    fn utc_days() {
        let z = Zone::utc();
        let d = z.day(JAN_1_2026_UTC + 5);
        assert_eq!(d.id, 20_260_101);
        assert_eq!(d.ends_ms, JAN_1_2026_UTC + 86_400_000);
        assert_eq!(z.day(JAN_1_2026_UTC - 1).id, 20_251_231);
    }

    #[test]
    fn offsets_move_midnight() {
        let z = Zone::parse("+02:00").unwrap();
        // 23:00 UTC on Dec 31 is already Jan 1 at +02:00, which ends at 22:00 UTC on Jan 1.
        let d = z.day(JAN_1_2026_UTC - 3_600_000);
        assert_eq!(d.id, 20_260_101);
        assert_eq!(d.ends_ms, JAN_1_2026_UTC + 22 * 3_600_000);
        assert!(Zone::parse("+2").is_err());
        assert!(Zone::parse("+02:00:30").is_ok());
        assert!(Zone::parse("Not/AZone").unwrap_err().contains("unknown time zone"));
    }

    #[test]
    fn iana_zones_follow_dst() {
        // Needs the system tzdata (installed by `cargo xtask deps`).
        let z = Zone::parse("Europe/Amsterdam").expect("tzdata installed");
        // 29 March 2026: clocks go forward, the day is 23 hours long.
        let d = z.day(1_774_738_800_000 + 3_600_000); // 2026-03-29T00:00+01:00 plus one hour
        assert_eq!(d.id, 20_260_329);
        assert_eq!(d.ends_ms, 1_774_738_800_000 + 23 * 3_600_000);
    }
}
