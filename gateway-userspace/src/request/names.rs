//! A connection's header names, remembered from its peer's last head.
//!
//! A peer sends the same names in the same order head after head (a client's library, an
//! upstream server). `HeaderName::from_bytes` lower-cases a name through a table and matches it
//! against the standard names (a custom one is copied into an allocation) on every field of
//! every head, ~120 instructions a field; comparing the bytes with the name the same position
//! had last time is a `memcmp`. The answer is `from_bytes`'s own, so nothing about which names
//! are valid changes.

use http::{HeaderName, header::InvalidHeaderName};

/// Bytes of names kept per connection (the names of a typical head are ~60).
const MAX_RAW: usize = 512;
/// Positions remembered: fields past these are parsed every time.
const MAX_NAMES: usize = 24;

/// The names of the last head read on one connection, by position, as sent and as parsed.
#[derive(Default)]
pub struct NameCache {
    /// The names' bytes as the peer spelled them, one after the other.
    raw: Vec<u8>,
    /// Per position: where its spelling lies in `raw`, and the name it became.
    names: Vec<(u16, u16, HeaderName)>,
}

impl NameCache {
    /// `HeaderName::from_bytes(raw)` for the field at position `i` of a head.
    #[inline]
    pub fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
        if let Some((start, end, name)) = self.names.get(i)
            && self.raw.get(usize::from(*start)..usize::from(*end)) == Some(raw)
        {
            return Ok(name.clone());
        }
        let name = HeaderName::from_bytes(raw)?;
        self.remember(i, raw, &name);
        Ok(name)
    }

    fn remember(&mut self, i: usize, raw: &[u8], name: &HeaderName) {
        if i >= MAX_NAMES || raw.len() > MAX_RAW {
            return;
        }
        if self.raw.len() + raw.len() > MAX_RAW {
            // Bounded: start over (the next heads fill it again from their first field).
            self.raw.clear();
            self.names.clear();
        }
        if i > self.names.len() {
            // Positions are kept contiguous from the first field.
            return;
        }
        // Both fit in u16: `raw` never grows past MAX_RAW.
        let start = self.raw.len() as u16;
        self.raw.extend_from_slice(raw);
        let entry = (start, self.raw.len() as u16, name.clone());
        match self.names.get_mut(i) {
            Some(slot) => *slot = entry,
            None => self.names.push(entry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_as_from_bytes_does() {
        let mut cache = NameCache::default();
        for _ in 0..3 {
            for (i, raw) in ["Host", "User-Agent", "X-Custom_Thing", "host"].iter().enumerate() {
                let got = cache.name(i, raw.as_bytes()).unwrap();
                assert_eq!(got, HeaderName::from_bytes(raw.as_bytes()).unwrap());
            }
        }
        // Another spelling at a remembered position (of the same length too), and an invalid
        // name, are parsed.
        assert_eq!(cache.name(1, b"Accept").unwrap(), http::header::ACCEPT);
        assert_eq!(cache.name(0, b"Date").unwrap(), http::header::DATE);
        assert_eq!(cache.name(0, b"HOST").unwrap(), http::header::HOST);
        assert!(cache.name(0, b"bad name").is_err());
        assert!(cache.name(0, b"").is_err());
        assert_eq!(cache.name(0, b"Host").unwrap(), http::header::HOST);
    }

    #[test]
    fn stays_bounded() {
        let mut cache = NameCache::default();
        for round in 0..50 {
            for i in 0..40 {
                let raw = format!("x-name-{round}-{i}-{}", "y".repeat(i));
                assert_eq!(cache.name(i, raw.as_bytes()).unwrap().as_str(), raw);
            }
            assert!(cache.raw.len() <= MAX_RAW && cache.names.len() <= MAX_NAMES);
        }
    }
}
