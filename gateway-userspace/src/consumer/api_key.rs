//! API keys (seed 001's `X-API-Key`): each consumer's keys are configured as SHA-256 digests
//! (`sha256:<64 hex>`), so the config file never holds a usable key. A presented key is hashed
//! and compared in constant time against the digests that share its first 8 bytes (the index
//! only narrows the candidates; what it reveals through timing is a prefix of a SHA-256 digest,
//! which tells nothing about any key).
//!
//! Keys are expected to be long random strings (as issued by `openssl rand -hex 32`), so one
//! SHA-256 pass is the right hash: a slow password hash would only hand attackers a cheap way to
//! burn the gateway's CPU.

use std::collections::HashMap;

use aws_lc_rs::{constant_time::verify_slices_are_equal, digest};

/// A configured key digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyDigest(pub [u8; 32]);

impl ApiKeyDigest {
    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(s: &str) -> Result<ApiKeyDigest, String> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| "expected \"sha256:<64 hex digits>\" (printf %s \"$KEY\" | sha256sum)".to_owned())?;
        if hex.len() != 64 {
            return Err(format!("expected 64 hex digits after sha256:, found {}", hex.len()));
        }
        // By bytes, not by str slices: a non-ASCII character in the file must be refused, not
        // split inside its UTF-8 sequence (a panic on config input, found by the config fuzzer).
        let nibble = |b: u8| (b as char).to_digit(16).ok_or_else(|| "not a hex digest".to_owned());
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = (nibble(pair[0])? << 4 | nibble(pair[1])?) as u8;
        }
        Ok(ApiKeyDigest(out))
    }

    pub fn of(key: &str) -> ApiKeyDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, key.as_bytes()).as_ref());
        ApiKeyDigest(out)
    }

    fn prefix(&self) -> u64 {
        let mut p = [0u8; 8];
        p.copy_from_slice(&self.0[..8]);
        u64::from_ne_bytes(p)
    }
}

/// Every configured key: digest → the consumer's position in [`super::Consumers`].
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_prefix: HashMap<u64, Vec<(ApiKeyDigest, usize)>>,
}

impl ApiKeys {
    /// Adds a digest; false if it is already taken (a key shared by two consumers is refused).
    pub fn insert(&mut self, digest: ApiKeyDigest, consumer: usize) -> bool {
        let bucket = self.by_prefix.entry(digest.prefix()).or_default();
        if bucket.iter().any(|(d, _)| *d == digest) {
            return false;
        }
        bucket.push((digest, consumer));
        true
    }

    /// The consumer a presented key belongs to.
    pub fn find(&self, presented: &str) -> Option<usize> {
        let digest = ApiKeyDigest::of(presented);
        let candidates = self.by_prefix.get(&digest.prefix())?;
        let mut found = None;
        // Every candidate is compared, in constant time, whatever matched before.
        for (d, consumer) in candidates {
            if verify_slices_are_equal(&d.0, &digest.0).is_ok() {
                found = Some(*consumer);
            }
        }
        found
    }

    /// Who has this exact digest (configuration time: not constant time).
    pub fn owner(&self, digest: &ApiKeyDigest) -> Option<usize> {
        let bucket = self.by_prefix.get(&digest.prefix())?;
        bucket.iter().find(|(d, _)| d == digest).map(|(_, c)| *c)
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_keys_match() {
        // printf %s secret-key-1 | sha256sum
        let d = ApiKeyDigest::parse("sha256:9c5b0b5ef4c38a1bc0f3a12dcb9ebb41d55e5d0c04f2a5a0a6b8a1f0c2d3e4f5");
        assert!(d.is_ok());
        assert!(ApiKeyDigest::parse("9c5b").is_err());
        assert!(
            ApiKeyDigest::parse("sha256:zz5b0b5ef4c38a1bc0f3a12dcb9ebb41d55e5d0c04f2a5a0a6b8a1f0c2d3e4f5").is_err()
        );
        assert!(ApiKeyDigest::parse("sha256:abc").is_err());
        // 64 bytes with a two-byte character across a digit pair (the fuzzer's panic), and a sign
        // `from_str_radix` would have taken.
        assert!(ApiKeyDigest::parse(&format!("sha256:{}ʛ{}", "a".repeat(3), "b".repeat(59))).is_err());
        assert!(ApiKeyDigest::parse(&format!("sha256:+1{}", "c".repeat(62))).is_err());

        let mut keys = ApiKeys::default();
        assert!(keys.insert(ApiKeyDigest::of("key-one"), 0));
        assert!(keys.insert(ApiKeyDigest::of("key-two"), 1));
        assert!(!keys.insert(ApiKeyDigest::of("key-one"), 2), "a key cannot belong to two consumers");
        assert_eq!(keys.find("key-one"), Some(0));
        assert_eq!(keys.find("key-two"), Some(1));
        assert_eq!(keys.find("key-three"), None);
        assert_eq!(keys.find(""), None);
    }

    #[test]
    fn sha256sum_format_matches() {
        // echo -n abc | sha256sum
        let d = ApiKeyDigest::parse("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad").unwrap();
        assert_eq!(d, ApiKeyDigest::of("abc"));
    }
}
