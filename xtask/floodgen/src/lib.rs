//! The raw floods' source schemes and the checksum arithmetic of the frames that carry them:
//! one definition for the XDP generator (`main.rs`, run by `BPF_PROG_RUN` in live-frames mode)
//! and for xtask's AF_PACKET sender and unit tests. `no_std`, no allocation, no loops the BPF
//! verifier could not bound.
#![no_std]

/// The frame layout the AF_PACKET sender builds and the XDP program rewrites: one definition
/// for both.
pub mod frame {
    pub const ETH_LEN: usize = 14;
    pub const IPV4_LEN: usize = 20;
    pub const IPV6_LEN: usize = 40;
    pub const TCP_LEN: usize = 20;
    pub const UDP_LEN: usize = 8;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
}

/// Which spoofed sources a flood draws (the `FEED_SCHEME` entry of the generator's config).
pub mod scheme {
    /// 2^16 IPv4 and 2^16 IPv6 sources, in a scrambled order (`syn-spoofed`).
    pub const POOL: u64 = 0;
    /// One IPv4 source (`syn-one`).
    pub const ONE: u64 = 1;
    /// 16 IPv4 sources (`udp`).
    pub const FEW16: u64 = 2;
    /// A new source for every frame of a family (`rotating`).
    pub const ROTATING: u64 = 3;
}

/// Whether a scheme sends IPv6 frames as well (half of its frames then are).
pub const fn both_families(scheme: u64) -> bool {
    scheme == scheme::POOL || scheme == scheme::ROTATING
}

/// The `k`-th IPv4 source of `scheme` as the index `n` of `topology::spoofed_v4(n)`
/// (10.128.0.0/9: the low 23 bits of `n`).
pub fn v4_index(scheme: u64, k: u64) -> u32 {
    match scheme {
        scheme::ONE => 1,
        // Apart from the one source of `syn-one`.
        scheme::FEW16 => 1000 + (k % 16) as u32,
        // Apart from the few sources above; the /9 repeats after 7 × 2^20 frames of this family
        // (over 90 s at 150k pps: longer than any cell).
        scheme::ROTATING => 0x10_0000 + k as u32,
        _ => {
            let idx = mix(k) & 0xFFFF;
            // Distinct per idx: the low 16 bits are idx; the /9 leaves 7 more bits.
            (((mix(idx ^ 0x5bd1_e995) & 0x7F) << 16) | idx) as u32
        }
    }
}

/// The `k`-th IPv6 source of `scheme` as the index `n` of `topology::spoofed_v6(n)` (the /64
/// `fd73:0:n::/64` inside fd73::/32, interface id 1). Only POOL and ROTATING send IPv6.
pub fn v6_index(scheme: u64, k: u64) -> u32 {
    match scheme {
        scheme::ROTATING => k as u32,
        _ => {
            let idx = mix(k) & 0xFFFF;
            (((mix(idx ^ 0x5bd1_e995) & 0xFFFF) << 16) | idx) as u32
        }
    }
}

/// The IPv4 address (host order) of `spoofed_v4(n)`.
pub const fn spoofed_v4(n: u32) -> u32 {
    0x0A80_0000 | (n & 0x007F_FFFF)
}

/// The 16-bit words of `spoofed_v6(n)` (fd73:0:HI:LO::1).
pub const fn spoofed_v6_words(n: u32) -> [u16; 8] {
    [0xfd73, 0, (n >> 16) as u16, n as u16, 0, 0, 0, 1]
}

/// The `k`-th frame's source port (spread over 1024..65024, so that one source's SYNs are not
/// retransmissions of one another).
pub fn sport(k: u64) -> u16 {
    1024 + (mix(k ^ 0xA5A5) % 64000) as u16
}

/// splitmix64's finaliser: scrambles an index into a well-spread 64-bit value.
pub const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An incremental Internet checksum update (RFC 1624: HC' = ~(~HC + ~m + m')), word by word.
#[derive(Debug, Clone, Copy)]
pub struct CsumUpdate(u32);

impl CsumUpdate {
    /// Starts from the checksum field's current value.
    pub const fn new(field: u16) -> Self {
        CsumUpdate(!field as u32)
    }

    /// One 16-bit word of the covered data changes from `old` to `new`.
    pub const fn word(self, old: u16, new: u16) -> Self {
        CsumUpdate(self.0 + (!old) as u32 + new as u32)
    }

    /// The new value of the checksum field. `udp`: a computed 0 is sent as all ones (0 means
    /// "no checksum" in UDP over IPv4 and is invalid over IPv6).
    pub const fn finish(self, udp: bool) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xFFFF) + (sum >> 16);
        sum = (sum & 0xFFFF) + (sum >> 16);
        let field = !(sum as u16);
        if udp && field == 0 { 0xFFFF } else { field }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full one's-complement sum of big-endian words, folded.
    fn sum(words: &[u16]) -> u16 {
        let mut s: u32 = words.iter().map(|&w| u32::from(w)).sum();
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn incremental_update_equals_a_full_recompute() {
        let mut words = [0x4500u16, 0x0028, 0x1c46, 0x4000, 0x4006, 0, 0x0a80, 0x0001, 0x0a48, 0x0001];
        words[5] = !sum(&words);
        for k in 0..5000u64 {
            let n = spoofed_v4(v4_index(scheme::ROTATING, k * 7919));
            let (hi, lo) = ((n >> 16) as u16, n as u16);
            let update = CsumUpdate::new(words[5]).word(words[6], hi).word(words[7], lo);
            words[6] = hi;
            words[7] = lo;
            words[5] = update.finish(false);
            assert_eq!(sum(&words), 0xFFFF, "frame {k}");
        }
    }
}
