//! Header parsing over `[data, data_end)`, every read bounds-checked first (the verifier insists,
//! and so do frames off the wire). The verdict for what cannot be parsed is part of the contract:
//!
//! | Frame | Result |
//! | --- | --- |
//! | shorter than an Ethernet header | malformed |
//! | EtherType not IPv4/IPv6 (ARP, LLDP, …), after up to two VLAN tags | not IP (passes) |
//! | a third VLAN tag | malformed |
//! | a VLAN tag, IPv4 header (incl. options) or IPv6 header cut short | malformed |
//! | IPv4 version ≠ 4, IHL < 5; IPv6 version ≠ 6 | malformed |
//! | an IPv6 extension header cut short | malformed |
//! | more than [`MAX_EXT_HEADERS`] IPv6 extension headers | IP, not a SYN (still rate limited) |
//! | a non-first fragment (IPv4 offset ≠ 0, IPv6 fragment offset ≠ 0) | IP, not a SYN |
//! | TCP header < 20 bytes, data offset < 5 or past the frame; UDP header < 8 bytes | malformed |
//! | other IP protocols (ICMP, …) | IP, not a SYN |
//!
//! A UDP datagram's destination port is reported (first fragments only) for the closed-UDP check.

use core::ptr::read;

use gateway_common::xdp::mapped_v4;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ1: u16 = 0x9100;
pub(crate) const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up on finding the transport header.
pub const MAX_EXT_HEADERS: usize = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// What the guard needs from a frame.
#[derive(Clone, Copy)]
pub enum Parsed {
    /// No source address to judge (ARP and other non-IP EtherTypes): passes.
    NotIp,
    /// See the module table.
    Malformed,
    /// An IP packet: its source (mapped form for IPv4), what the guard needs of layer 4, and
    /// its upper-layer protocol as the last header walked names it (also for a non-first
    /// fragment: the IPv4 protocol field, the IPv6 fragment header's next header; for too many
    /// IPv6 extension headers, the one not walked). Connection steering keys on `proto`.
    Ip { addr: [u32; 4], v4: bool, l4: L4, proto: u8 },
}

/// Layer 4 as the guard sees it.
#[derive(Clone, Copy)]
pub struct L4 {
    /// A TCP SYN without ACK: opens a connection.
    pub syn: bool,
    /// The destination port of a UDP datagram; 0 for anything else (port 0 is never served).
    pub udp_port: u16,
}

/// Neither a SYN nor UDP (or no transport header to read).
const OTHER: L4 = L4 { syn: false, udp_port: 0 };

#[inline(always)]
pub(crate) fn has(at: usize, len: usize, end: usize) -> bool {
    at + len <= end
}

#[inline(always)]
pub(crate) unsafe fn u8_at(at: usize) -> u8 {
    unsafe { *(at as *const u8) }
}

/// Header fields are read in 16-bit units: every field offset used here is even and packet data
/// starts 2-byte aligned (XDP headroom, the skb's MAC header), so these are aligned loads — one
/// instruction each, where an unaligned read would be four byte loads and shifts. (Even if data
/// were not aligned, x86's verifier and JIT accept misaligned packet loads; strict-alignment
/// architectures would refuse the program at load, never misread.)
#[inline(always)]
unsafe fn u16_at(at: usize) -> u16 {
    unsafe { read(at as *const u16) }
}

#[inline(always)]
pub(crate) unsafe fn be16_at(at: usize) -> u16 {
    u16::from_be(unsafe { u16_at(at) })
}

/// Two 16-bit loads as one address word (bytes in memory order, like `u32::from_ne_bytes`).
#[inline(always)]
pub(crate) unsafe fn word_at(at: usize) -> u32 {
    unsafe {
        let lo = u16_at(at) as u32;
        let hi = u16_at(at + 2) as u32;
        if cfg!(target_endian = "little") { lo | (hi << 16) } else { (lo << 16) | hi }
    }
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD || proto == ETH_P_QINQ1
}

#[inline(always)]
pub fn parse(data: usize, end: usize) -> Parsed {
    if !has(data, ETH_HLEN, end) {
        return Parsed::Malformed;
    }
    let mut l3 = data + ETH_HLEN;
    let mut proto = unsafe { be16_at(data + 12) };
    if is_vlan(proto) {
        if !has(l3, 4, end) {
            return Parsed::Malformed;
        }
        proto = unsafe { be16_at(l3 + 2) };
        l3 += 4;
        if is_vlan(proto) {
            if !has(l3, 4, end) {
                return Parsed::Malformed;
            }
            proto = unsafe { be16_at(l3 + 2) };
            l3 += 4;
            if is_vlan(proto) {
                return Parsed::Malformed;
            }
        }
    }
    match proto {
        ETH_P_IP => ipv4(l3, end),
        ETH_P_IPV6 => ipv6(l3, end),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn ipv4(ip: usize, end: usize) -> Parsed {
    if !has(ip, 20, end) {
        return Parsed::Malformed;
    }
    let vihl = unsafe { u8_at(ip) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    if !has(ip, ihl, end) {
        return Parsed::Malformed;
    }
    let mut addr = mapped_v4([0; 4]);
    addr[3] = unsafe { word_at(ip + 12) };
    let protocol = unsafe { u8_at(ip + 9) };
    let fragment_offset = unsafe { be16_at(ip + 6) } & 0x1fff;
    if fragment_offset != 0 {
        return Parsed::Ip { addr, v4: true, l4: OTHER, proto: protocol };
    }
    match transport(protocol, ip + ihl, end) {
        Some(l4) => Parsed::Ip { addr, v4: true, l4, proto: protocol },
        None => Parsed::Malformed,
    }
}

#[inline(always)]
fn ipv6(ip: usize, end: usize) -> Parsed {
    if !has(ip, 40, end) {
        return Parsed::Malformed;
    }
    if unsafe { u8_at(ip) } >> 4 != 6 {
        return Parsed::Malformed;
    }
    let addr: [u32; 4] = unsafe { [word_at(ip + 8), word_at(ip + 12), word_at(ip + 16), word_at(ip + 20)] };
    let mut next = unsafe { u8_at(ip + 6) };
    let mut at = ip + 40;
    for _ in 0..MAX_EXT_HEADERS {
        let len = match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                if !has(at, 2, end) {
                    return Parsed::Malformed;
                }
                (unsafe { u8_at(at + 1) } as usize + 1) * 8
            }
            IPV6_AH => {
                if !has(at, 2, end) {
                    return Parsed::Malformed;
                }
                (unsafe { u8_at(at + 1) } as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                if !has(at, 8, end) {
                    return Parsed::Malformed;
                }
                if unsafe { be16_at(at + 2) } & 0xfff8 != 0 {
                    return Parsed::Ip { addr, v4: false, l4: OTHER, proto: unsafe { u8_at(at) } };
                }
                8
            }
            _ => break,
        };
        next = unsafe { u8_at(at) };
        at += len;
    }
    if matches!(next, IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT) {
        // Too many extension headers to find the transport header: judged by source only.
        return Parsed::Ip { addr, v4: false, l4: OTHER, proto: next };
    }
    match transport(next, at, end) {
        Some(l4) => Parsed::Ip { addr, v4: false, l4, proto: next },
        None => Parsed::Malformed,
    }
}

/// `None` when the TCP/UDP header is cut short or impossible.
#[inline(always)]
fn transport(protocol: u8, l4: usize, end: usize) -> Option<L4> {
    match protocol {
        IPPROTO_TCP => {
            if !has(l4, 20, end) {
                return None;
            }
            let doff = ((unsafe { u8_at(l4 + 12) } >> 4) as usize) * 4;
            if doff < 20 || !has(l4, doff, end) {
                return None;
            }
            let flags = unsafe { u8_at(l4 + 13) };
            Some(L4 { syn: flags & (TCP_SYN | TCP_ACK) == TCP_SYN, udp_port: 0 })
        }
        IPPROTO_UDP => {
            if !has(l4, 8, end) {
                return None;
            }
            Some(L4 { syn: false, udp_port: unsafe { be16_at(l4 + 2) } })
        }
        _ => Some(OTHER),
    }
}
