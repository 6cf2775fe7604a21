//! Ethernet frames of the raw-packet attacks: a TCP SYN or a UDP datagram from any (spoofed)
//! IPv4 or IPv6 source, with valid IP, TCP and UDP checksums so that the kernel judges them like
//! real traffic (a frame with a bad checksum would be dropped early and cheaply, flattering
//! every subject).

use std::net::IpAddr;

use floodgen::frame::{ETH_LEN, IPV4_LEN, IPV6_LEN, PROTO_TCP, PROTO_UDP, TCP_LEN, UDP_LEN};

/// What a raw attack frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// A TCP SYN (no ACK) to the port.
    Syn,
    /// A UDP datagram to the port, with this many bytes of junk.
    Udp(usize),
}

/// The link addresses of the frames (the attacker's veth end, the gateway's).
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

/// One attack frame's addresses and contents.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// `src` and `dst` must be of the same family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub payload: Payload,
    /// Varies the TCP sequence number / IPv4 id / UDP junk so that frames are not identical.
    pub seq: u32,
}

/// Writes one frame into `buf` (cleared first).
pub fn build(buf: &mut Vec<u8>, link: Link, frame: Frame) {
    let Frame { src, dst, sport, dport, payload, seq } = frame;
    buf.clear();
    buf.extend_from_slice(&link.dst_mac);
    buf.extend_from_slice(&link.src_mac);
    let l4_len = match payload {
        Payload::Syn => TCP_LEN,
        Payload::Udp(junk) => UDP_LEN + junk,
    };
    let proto = match payload {
        Payload::Syn => PROTO_TCP,
        Payload::Udp(_) => PROTO_UDP,
    };
    // The pseudo-header's sum (addresses, protocol, length), shared by TCP and UDP.
    let pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = u16::try_from(IPV4_LEN + l4_len).unwrap_or(u16::MAX);
            let mut ip = [0u8; IPV4_LEN];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[4..6].copy_from_slice(&(seq as u16).to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let sum = fold(add(0, &ip));
            ip[10..12].copy_from_slice(&(!sum).to_be_bytes());
            buf.extend_from_slice(&ip);
            let sum = add(add(0, &s.octets()), &d.octets());
            sum + u32::from(proto) + l4_len as u32
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            buf.extend_from_slice(&0x86DDu16.to_be_bytes());
            let mut ip = [0u8; IPV6_LEN];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            buf.extend_from_slice(&ip);
            let sum = add(add(0, &s.octets()), &d.octets());
            sum + u32::from(proto) + l4_len as u32
        }
        _ => unreachable!("mixed address families in one frame"),
    };
    let l4_start = buf.len();
    buf.extend_from_slice(&sport.to_be_bytes());
    buf.extend_from_slice(&dport.to_be_bytes());
    let checksum_at = match payload {
        Payload::Syn => {
            buf.extend_from_slice(&seq.to_be_bytes());
            buf.extend_from_slice(&0u32.to_be_bytes()); // ack
            buf.push(5 << 4); // data offset: 5 words
            buf.push(0x02); // SYN
            buf.extend_from_slice(&64240u16.to_be_bytes()); // window
            buf.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            l4_start + 16
        }
        Payload::Udp(junk) => {
            buf.extend_from_slice(&u16::try_from(l4_len).unwrap_or(u16::MAX).to_be_bytes());
            buf.extend_from_slice(&[0, 0]);
            let mut x = seq | 1;
            for _ in 0..junk {
                // xorshift: cheap junk that differs per frame.
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            l4_start + 6
        }
    };
    let mut sum = fold(add(pseudo, &buf[l4_start..]));
    // UDP sends a computed 0 as all ones (0 means "no checksum").
    if sum == 0xFFFF && matches!(payload, Payload::Udp(_)) {
        sum = 0;
    }
    buf[checksum_at..checksum_at + 2].copy_from_slice(&(!sum).to_be_bytes());
}

/// Adds 16-bit big-endian words of `bytes` (odd length padded with a zero) to `sum`.
fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The one's-complement sum folded to 16 bits.
fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// Length of the frame `build` writes (for sizing buffers and reporting).
pub fn frame_len(ipv6: bool, payload: Payload) -> usize {
    let ip = if ipv6 { IPV6_LEN } else { IPV4_LEN };
    ETH_LEN
        + ip
        + match payload {
            Payload::Syn => TCP_LEN,
            Payload::Udp(junk) => UDP_LEN + junk,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: Link = Link { src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2] };

    /// A correct checksum makes the one's-complement sum over the covered bytes all ones.
    fn verifies(pseudo: u32, bytes: &[u8]) -> bool {
        fold(add(pseudo, bytes)) == 0xFFFF
    }

    #[test]
    fn ipv4_syn_has_valid_checksums() {
        let mut buf = Vec::new();
        let (s, d) = ("10.128.3.4".parse().unwrap(), "10.72.0.1".parse().unwrap());
        build(&mut buf, LINK, Frame { src: s, dst: d, sport: 40000, dport: 8080, payload: Payload::Syn, seq: 7 });
        assert_eq!(buf.len(), frame_len(false, Payload::Syn));
        assert_eq!(&buf[12..14], &[0x08, 0x00]);
        assert!(verifies(0, &buf[14..34]), "IPv4 header checksum");
        let pseudo = add(add(0, &buf[26..30]), &buf[30..34]) + 6 + 20;
        assert!(verifies(pseudo, &buf[34..]), "TCP checksum");
        assert_eq!(buf[34 + 13], 0x02, "SYN only");
    }

    #[test]
    fn ipv6_udp_has_valid_checksum() {
        let mut buf = Vec::new();
        let (s, d) = ("fd73::1234".parse().unwrap(), "fd72::1".parse().unwrap());
        build(&mut buf, LINK, Frame { src: s, dst: d, sport: 5000, dport: 8080, payload: Payload::Udp(33), seq: 99 });
        assert_eq!(buf.len(), frame_len(true, Payload::Udp(33)));
        assert_eq!(&buf[12..14], &[0x86, 0xDD]);
        let pseudo = add(add(0, &buf[22..38]), &buf[38..54]) + 17 + (8 + 33);
        assert!(verifies(pseudo, &buf[54..]), "UDP checksum");
    }
}
