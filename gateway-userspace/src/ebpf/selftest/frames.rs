//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4 (with options, fragments), IPv6 (with
//! extension headers, fragments), VLAN tags, TCP/UDP/ICMP. Checksums are left zero: the guard
//! never reads them.

use std::net::IpAddr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
pub const IPV6_HOPOPTS: u8 = 0;
pub const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_ROUTING: u8 = 43;

/// The transport part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// SYN without ACK: a new connection.
    TcpSyn,
    /// ACK with data: an established connection.
    TcpData,
    Udp,
    Icmp,
    /// No transport header at all (a non-first fragment).
    None,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    /// VLAN TPIDs, outermost first.
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub l4: L4,
    /// IPv4 option words (4 bytes each).
    pub ipv4_options: usize,
    /// IPv6 extension headers (hop-by-hop, routing, destination options), in order.
    pub ipv6_ext: Vec<u8>,
    /// A fragment header/offset: IPv4 fragment offset, or an IPv6 fragment header with this
    /// offset (in 8-byte units). `None`: not fragmented.
    pub fragment: Option<u16>,
    pub payload: usize,
}

impl FrameSpec {
    pub fn new(src: &str, l4: L4) -> FrameSpec {
        FrameSpec {
            vlans: Vec::new(),
            src: src.parse().unwrap_or(IpAddr::from([192, 0, 2, 1])),
            l4,
            ipv4_options: 0,
            ipv6_ext: Vec::new(),
            fragment: None,
            payload: 16,
        }
    }

    pub fn vlans(mut self, tpids: &[u16]) -> FrameSpec {
        self.vlans = tpids.to_vec();
        self
    }

    pub fn ipv4_options(mut self, words: usize) -> FrameSpec {
        self.ipv4_options = words;
        self
    }

    pub fn ipv6_ext(mut self, headers: &[u8]) -> FrameSpec {
        self.ipv6_ext = headers.to_vec();
        self
    }

    pub fn fragment(mut self, offset: u16) -> FrameSpec {
        self.fragment = Some(offset);
        self
    }

    pub fn build(&self) -> Frame {
        build(self)
    }
}

/// A frame and where its headers end (every shorter cut is inside a header).
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Vec<u8>,
    pub headers_len: usize,
}

fn build(spec: &FrameSpec) -> Frame {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // destination MAC
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // source MAC
    let ethertype = if spec.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
    for tpid in &spec.vlans {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0x00, 0x64]); // TCI: VLAN 100
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    let transport = transport(spec.l4, spec.payload);
    let l4_len = transport.len() - spec.payload;
    match spec.src {
        IpAddr::V4(src) => {
            let ihl = 5 + spec.ipv4_options;
            let total = ihl * 4 + transport.len();
            let protocol = protocol(spec.l4, false);
            let frag = spec.fragment.unwrap_or(0) & 0x1fff;
            f.push(0x40 | ihl as u8);
            f.push(0);
            f.extend_from_slice(&(total as u16).to_be_bytes());
            f.extend_from_slice(&[0x12, 0x34]);
            f.extend_from_slice(&frag.to_be_bytes());
            f.extend_from_slice(&[64, protocol, 0, 0]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(&[192, 0, 2, 254]);
            f.extend(std::iter::repeat_n(1u8, spec.ipv4_options * 4)); // NOP options
        }
        IpAddr::V6(src) => {
            let mut ext = Vec::new();
            let mut headers: Vec<u8> = spec.ipv6_ext.clone();
            if spec.fragment.is_some() {
                headers.push(44);
            }
            let last = protocol(spec.l4, true);
            for (i, h) in headers.iter().enumerate() {
                let next = headers.get(i + 1).copied().unwrap_or(last);
                if *h == 44 {
                    let offset = spec.fragment.unwrap_or(0) << 3;
                    ext.extend_from_slice(&[next, 0]);
                    ext.extend_from_slice(&offset.to_be_bytes());
                    ext.extend_from_slice(&[0, 0, 0, 1]);
                } else {
                    // 8 bytes: next header, length 0 (= 8 bytes), PadN.
                    ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            let first = headers.first().copied().unwrap_or(last);
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((ext.len() + transport.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[first, 64]);
            f.extend_from_slice(&src.octets());
            f.extend_from_slice(
                &"2001:db8:ffff::1".parse::<std::net::Ipv6Addr>().map(|a| a.octets()).unwrap_or([0; 16]),
            );
            f.extend_from_slice(&ext);
        }
    }
    let headers_len = f.len() + l4_len;
    f.extend_from_slice(&transport);
    Frame { bytes: f, headers_len }
}

fn protocol(l4: L4, v6: bool) -> u8 {
    match l4 {
        L4::TcpSyn | L4::TcpData => IPPROTO_TCP,
        L4::Udp => IPPROTO_UDP,
        L4::Icmp if v6 => IPPROTO_ICMPV6,
        L4::Icmp | L4::None => IPPROTO_ICMP,
    }
}

/// The transport header and payload.
fn transport(l4: L4, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    match l4 {
        L4::TcpSyn | L4::TcpData => {
            t.extend_from_slice(&40000u16.to_be_bytes());
            t.extend_from_slice(&443u16.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
            t.push(5 << 4); // data offset
            t.push(if l4 == L4::TcpSyn { 0x02 } else { 0x18 }); // SYN, or PSH|ACK
            t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        }
        L4::Udp => {
            t.extend_from_slice(&40000u16.to_be_bytes());
            t.extend_from_slice(&53u16.to_be_bytes());
            t.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            t.extend_from_slice(&[0, 0]);
        }
        L4::Icmp => t.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]),
        L4::None => {}
    }
    t.extend(std::iter::repeat_n(0xabu8, payload));
    t
}

/// An ARP request (not IP: no source to judge).
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 192, 0, 2, 1, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    f
}

/// A small deterministic PRNG (xorshift64*) for garbage frames.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A random frame whose EtherType is usually one the parser follows, so the garbage reaches
    /// the IP and transport parsers.
    pub fn garbage_frame(&mut self) -> Vec<u8> {
        let len = 14 + self.below(120);
        let mut f: Vec<u8> = (0..len).map(|_| self.next_u64() as u8).collect();
        let ethertype = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, self.next_u64() as u16][self.below(5)];
        f[12..14].copy_from_slice(&ethertype.to_be_bytes());
        if len > 14 && ethertype == ETH_P_IP && self.below(2) == 0 {
            f[14] = 0x40 | (f[14] & 0x0f); // mostly version 4, random IHL
        }
        if len > 14 && ethertype == ETH_P_IPV6 && self.below(2) == 0 {
            f[14] = 0x60 | (f[14] & 0x0f);
        }
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(FrameSpec::new("192.0.2.1", L4::TcpSyn).build().headers_len, 14 + 20 + 20);
        assert_eq!(FrameSpec::new("192.0.2.1", L4::Udp).ipv4_options(2).build().headers_len, 14 + 28 + 8);
        let v6 = FrameSpec::new("2001:db8::1", L4::TcpData).vlans(&[ETH_P_8021AD, ETH_P_8021Q]);
        assert_eq!(v6.ipv6_ext(&[IPV6_HOPOPTS]).build().headers_len, 14 + 8 + 40 + 8 + 20);
        let frag = FrameSpec::new("192.0.2.1", L4::None).fragment(3).build();
        assert_eq!(frag.headers_len, 14 + 20);
        assert_eq!(u16::from_be_bytes([frag.bytes[20], frag.bytes[21]]), 3);
    }
}
