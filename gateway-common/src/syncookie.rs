//! SYN cookies answered in XDP or TC: the SYN-ACK the program writes in place of a SYN, as plain
//! functions over 16-bit words (tested on the host; the program only copies them into the frame).
//!
//! The cookie itself is the kernel's (`bpf_tcp_gen_syncookie`), so the kernel's
//! `cookie_v4_check`/`cookie_v6_check` accepts the client's ACK and creates the connection as if
//! it had answered the SYN itself. The answer carries one option, MSS (the value the cookie
//! encodes). It carries no timestamp: the kernel hides the client's window scale and SACK
//! permission in the timestamp it echoes, and without one the connection is set up without them
//! (`cookie_timestamp_decode`: no timestamp → options cleared) — what the kernel's own cookies
//! give a client that sends no timestamps. Small exchanges lose nothing; a bulk transfer over a
//! cookie-answered connection is limited to a 64 KiB window.

/// Length of the SYN-ACK's TCP header: 20 bytes and the MSS option.
pub const SYNACK_TCP_LEN: usize = 24;
/// Ethernet + IPv4 (no options) + the SYN-ACK's TCP header.
pub const SYNACK_FRAME_V4: usize = 14 + 20 + SYNACK_TCP_LEN;
/// Ethernet + IPv6 (no extension headers) + the SYN-ACK's TCP header.
pub const SYNACK_FRAME_V6: usize = 14 + 40 + SYNACK_TCP_LEN;
/// TTL / hop limit of the answer (the kernel's default).
pub const SYNACK_TTL: u8 = 64;
/// IANA protocol number of TCP.
const TCP: u16 = 6;
/// `BPF_TCP_LISTEN` (`struct bpf_sock.state`).
pub const TCP_LISTEN: u32 = 10;

/// Per-CPU array (one [`SynWindow`]): SYNs to listeners seen by this CPU in the current second,
/// the auto mode's trigger.
pub const SYN_WINDOW_MAP: &str = "GW_SYNWIN";

/// Value of [`SYN_WINDOW_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynWindow {
    pub start_ns: u64,
    pub syns: u64,
}

/// What the answer needs from the SYN, all in host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynAck {
    /// The SYN's destination port (the listener's): the answer's source port.
    pub local_port: u16,
    /// The SYN's source port.
    pub remote_port: u16,
    /// The kernel's cookie: the answer's sequence number.
    pub cookie: u32,
    /// The SYN's sequence number (the answer acknowledges it + 1).
    pub client_seq: u32,
    /// The MSS the cookie encodes (announced in the option).
    pub mss: u16,
}

impl SynAck {
    /// The receive window announced (unscaled): ten segments, what the kernel's
    /// `tcp_select_initial_window` lets a client send before the first window update.
    pub const fn window(&self) -> u16 {
        let w = self.mss as u32 * 10;
        if w > 0xffff { 0xffff } else { w as u16 }
    }

    /// The TCP header as 16-bit words (host order), checksum field 0.
    pub const fn tcp_words(&self) -> [u16; SYNACK_TCP_LEN / 2] {
        let seq = self.cookie;
        let ack = self.client_seq.wrapping_add(1);
        [
            self.local_port,
            self.remote_port,
            (seq >> 16) as u16,
            seq as u16,
            (ack >> 16) as u16,
            ack as u16,
            // Data offset 6 words, flags SYN|ACK.
            (6 << 12) | 0x12,
            self.window(),
            0,
            0,
            // Kind 2 (MSS), length 4.
            0x0204,
            self.mss,
        ]
    }
}

/// One's-complement sum of 16-bit words, not yet folded.
#[inline(always)]
pub const fn sum_words(words: &[u16], mut acc: u32) -> u32 {
    let mut i = 0;
    while i < words.len() {
        acc += words[i] as u32;
        i += 1;
    }
    acc
}

/// Folds a sum into the 16-bit checksum (complemented).
#[inline(always)]
pub const fn fold(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The TCP checksum of `tcp` (checksum field 0) between `src` and `dst` (addresses as 16-bit
/// words: 2 for IPv4, 8 for IPv6).
#[inline(always)]
pub const fn tcp_checksum(src: &[u16], dst: &[u16], tcp: &[u16; SYNACK_TCP_LEN / 2]) -> u16 {
    tcp_checksum_from(sum_words(dst, sum_words(src, 0)), tcp)
}

/// The TCP checksum of `tcp` given the sum of both addresses' words (the pseudo-header's
/// address part: the same whichever way round they are).
#[inline(always)]
pub const fn tcp_checksum_from(addr_sum: u32, tcp: &[u16; SYNACK_TCP_LEN / 2]) -> u16 {
    fold(sum_words(tcp, addr_sum + TCP as u32 + SYNACK_TCP_LEN as u32))
}

/// The IPv4 header of the answer (no options, DF, id 0) as words, checksum included.
#[inline(always)]
pub const fn ipv4_words(src: [u16; 2], dst: [u16; 2]) -> [u16; 10] {
    let mut w = [
        0x4500,
        (20 + SYNACK_TCP_LEN) as u16,
        0,
        0x4000,
        ((SYNACK_TTL as u16) << 8) | TCP,
        0,
        src[0],
        src[1],
        dst[0],
        dst[1],
    ];
    w[5] = fold(sum_words(&w, 0));
    w
}

#[cfg(feature = "user")]
// SAFETY: two `u64`, no padding.
unsafe impl aya::Pod for SynWindow {}

#[cfg(test)]
mod tests {
    use super::*;

    fn be_bytes(words: &[u16]) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (i, w) in words.iter().enumerate() {
            out[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// A byte-wise reference checksum (RFC 1071) to compare against.
    fn rfc1071(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map(u32::from).unwrap_or(0);
            sum += hi | lo;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    const ANSWER: SynAck =
        SynAck { local_port: 8080, remote_port: 40000, cookie: 0xdead_beef, client_seq: u32::MAX, mss: 1460 };

    #[test]
    fn ipv4_header_checksums_to_zero() {
        let w = ipv4_words([0xc000, 0x0201], [0xc633, 0x6407]);
        assert_eq!(rfc1071(&be_bytes(&w)[..20]), 0);
        assert_eq!(w[1], 44);
    }

    #[test]
    fn tcp_header_is_a_syn_ack_for_the_syn() {
        let w = ANSWER.tcp_words();
        assert_eq!((w[0], w[1]), (8080, 40000));
        assert_eq!(((w[2] as u32) << 16) | w[3] as u32, 0xdead_beef);
        // The ack wraps: seq + 1.
        assert_eq!(((w[4] as u32) << 16) | w[5] as u32, 0);
        assert_eq!(w[6] >> 12, 6);
        assert_eq!(w[6] & 0x3f, 0x12);
        assert_eq!(w[7], 14600);
        assert_eq!((w[10], w[11]), (0x0204, 1460));
        assert_eq!(SynAck { mss: 9000, ..ANSWER }.window(), 0xffff);
    }

    #[test]
    fn tcp_checksum_matches_a_byte_wise_pseudo_header_sum() {
        let (src, dst) = ([0xc633u16, 0x6407], [0xc000u16, 0x0201]);
        let tcp = ANSWER.tcp_words();
        let mut bytes = [0u8; 12 + SYNACK_TCP_LEN];
        bytes[..4].copy_from_slice(&be_bytes(&src)[..4]);
        bytes[4..8].copy_from_slice(&be_bytes(&dst)[..4]);
        bytes[9] = 6;
        bytes[11] = SYNACK_TCP_LEN as u8;
        bytes[12..].copy_from_slice(&be_bytes(&tcp)[..SYNACK_TCP_LEN]);
        let sum = tcp_checksum(&src, &dst, &tcp);
        assert_eq!(sum, rfc1071(&bytes));
        // With the checksum in place the whole thing sums to zero.
        bytes[12 + 16..12 + 18].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(rfc1071(&bytes), 0);
    }

    #[test]
    fn ipv6_checksum_covers_all_address_words() {
        let src = [0x2001, 0xdb8, 0, 0, 0, 0, 0, 1];
        let dst = [0x2001, 0xdb8, 0, 0, 0, 0, 0, 2];
        let tcp = ANSWER.tcp_words();
        let a = tcp_checksum(&src, &dst, &tcp);
        let b = tcp_checksum(&[0x2001, 0xdb8, 0, 0, 0, 0, 1, 1], &dst, &tcp);
        assert_ne!(a, b);
        assert_eq!(a, tcp_checksum(&dst, &src, &tcp));
    }
}
