//! Addresses and prefixes as the maps store them (16 bytes, IPv4 mapped into IPv6), and back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use gateway_common::xdp::{LIST_BUCKETS, SourceKey, list_bucket, mapped_v4, prefix_mask, words_v6};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The mapped words of an address.
pub fn words_of(ip: IpAddr) -> [u32; 4] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mapped_v4(v4.octets()),
        IpAddr::V6(v6) => words_v6(v6.octets()),
    }
}

/// Host bits cleared, and IPv4-mapped IPv6 prefixes (`::ffff:10.0.0.0/104`) turned into IPv4:
/// the one spelling each prefix has in the maps.
pub fn normalize_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96).map(IpNet::V4).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// An allow or deny entry as an operator writes it, in `[xdp]` or to `gatewayd xdp block`: a
/// CIDR without host bits, or a bare address (that host alone). One parser for both, so the CLI
/// refuses what the config refuses: `10.0.7.5/24` is a typo for a host or for `10.0.7.0/24`,
/// and guessing which would block the wrong thing.
pub fn parse_list_entry(raw: &str) -> Result<IpNet, String> {
    let net = raw
        .parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid CIDR {raw:?}: expected e.g. \"203.0.113.0/24\" or \"198.51.100.7\""))?;
    if net.trunc() != net {
        return Err(format!("{raw:?} has host bits set; did you mean \"{}\"?", net.trunc()));
    }
    Ok(normalize_net(net))
}

/// The LPM key of a prefix.
pub fn lpm_key(net: IpNet) -> Key<[u32; 4]> {
    match normalize_net(net) {
        IpNet::V4(v4) => Key::new(u32::from(v4.prefix_len()) + 96, mapped_v4(v4.network().octets())),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), words_v6(v6.network().octets())),
    }
}

/// The prefix an LPM key stands for.
pub fn net_of_lpm(key: &Key<[u32; 4]>) -> IpNet {
    net_of_words(key.data(), key.prefix_len())
}

/// The prefix a bucket key stands for, given the configured prefix lengths.
pub fn net_of_key(key: &SourceKey, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let is_v4 = key.addr[0] == 0 && key.addr[1] == 0 && key.addr[2] == mapped_v4([0; 4])[2];
    let bits = if is_v4 { u32::from(ipv4_prefix) + 96 } else { u32::from(ipv6_prefix) };
    net_of_words(key.addr, bits)
}

fn net_of_words(words: [u32; 4], bits: u32) -> IpNet {
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(bytes);
    let bits = bits.min(128) as u8;
    match v6.to_ipv4_mapped() {
        Some(v4) if bits >= 96 => IpNet::V4(Ipv4Net::new(v4, bits - 96).unwrap_or_else(|_| host_v4(v4))),
        _ => IpNet::V6(Ipv6Net::new(v6, bits).unwrap_or_else(|_| Ipv6Net::from(v6))),
    }
}

fn host_v4(v4: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::from(v4)
}

/// The bucket key of an address under the configured prefix lengths: what `xdp block` of a
/// repeat offender covers.
pub fn source_net(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> IpNet {
    let words = words_of(ip);
    let is_v4 = matches!(ip.to_canonical(), IpAddr::V4(_));
    let bits = if is_v4 { u32::from(ipv4_prefix) + 96 } else { u32::from(ipv6_prefix) };
    let mask = prefix_mask(bits);
    let masked = [words[0] & mask[0], words[1] & mask[1], words[2] & mask[2], words[3] & mask[3]];
    net_of_words(masked, bits)
}

/// Sets, in the prefilter bitmap (one bit per [`list_bucket`]), the bit of every bucket that
/// holds an address of the prefix `key`. May set a bucket holding none (an IPv4-only prefix also
/// marks IPv6 bucket 0): extra bits only cost a lookup, a missing one would skip an entry.
pub fn mark_buckets(key: &Key<[u32; 4]>, bitmap: &mut [u64]) {
    let (words, bits) = (key.data(), key.prefix_len().min(128));
    let mut mark = |first: u32, count: u32| {
        for bucket in first..first + count {
            if bucket < LIST_BUCKETS {
                bitmap[(bucket / 64) as usize] |= 1 << (bucket % 64);
            }
        }
    };
    // The prefix's IPv6 addresses: by their first 16 bits.
    let v6 = list_bucket(&[words[0], 1, 0, 0]);
    if bits >= 16 {
        mark(v6, 1);
    } else {
        let span = 1 << (16 - bits);
        mark(v6 & !(span - 1), span);
    }
    // Its IPv4 (mapped) addresses, if it has any: its first min(bits, 96) bits are those of
    // `::ffff:0:0/96`.
    let mapped = mapped_v4([0; 4]);
    let mask = prefix_mask(bits.min(96));
    if (0..3).all(|i| words[i] & mask[i] == mapped[i] & mask[i]) {
        let v4 = list_bucket(&[0, 0, mapped[2], words[3]]);
        let v4_bits = bits.saturating_sub(96);
        if v4_bits >= 16 {
            mark(v4, 1);
        } else {
            let span = 1 << (16 - v4_bits);
            mark(v4 & !(span - 1), span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_round_trip_through_lpm_keys() {
        for s in ["10.0.0.0/8", "192.0.2.7/32", "0.0.0.0/0", "2001:db8::/32", "::/0", "2001:db8::1/128"] {
            assert_eq!(net_of_lpm(&lpm_key(net(s))), net(s), "{s}");
        }
        assert_eq!(lpm_key(net("10.0.0.0/8")).prefix_len(), 104);
    }

    #[test]
    fn host_bits_and_mapped_spellings_are_normalized() {
        assert_eq!(normalize_net(net("10.1.2.3/8")), net("10.0.0.0/8"));
        assert_eq!(normalize_net(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
    }

    /// Every address of a prefix lands in a marked bucket, for prefixes of every kind and length.
    #[test]
    fn prefilter_marks_every_bucket_a_prefix_reaches() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", "11.0.0.1"),
            ("198.51.100.0/24", "198.51.100.7", "198.52.100.7"),
            ("192.0.2.7/32", "192.0.2.7", "192.1.2.7"),
            ("0.0.0.0/0", "255.1.2.3", "2001:db8::1"),
            ("2001:db8::/32", "2001:db8:ffff::1", "2002:db8::1"),
            ("2000::/3", "3fff::1", "4000::1"),
            ("::/0", "1.2.3.4", "1.2.3.4"),
            ("::ffff:0:0/96", "203.0.113.9", "2001:db8::1"),
            ("::/8", "9.9.9.9", "100::1"),
        ];
        for (prefix, inside, outside) in cases {
            let mut bitmap = vec![0u64; (LIST_BUCKETS / 64) as usize];
            let key = if prefix.contains("::ffff:0:0") || prefix == "::/8" {
                // Spelled as IPv6 on purpose: normalize_net would not turn these into IPv4.
                let n: Ipv6Net = prefix.parse().unwrap();
                Key::new(u32::from(n.prefix_len()), words_v6(n.network().octets()))
            } else {
                lpm_key(net(prefix))
            };
            mark_buckets(&key, &mut bitmap);
            let is_set = |ip: &str| {
                let b = list_bucket(&words_of(ip.parse().unwrap()));
                bitmap[(b / 64) as usize] >> (b % 64) & 1 == 1
            };
            assert!(is_set(inside), "{prefix}: bucket of {inside} not marked");
            if prefix != "::/0" {
                assert!(!is_set(outside), "{prefix}: bucket of {outside} marked");
            }
        }
    }

    #[test]
    fn sources_are_grouped_by_prefix() {
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(source_net(ip, 32, 64), net("2001:db8:1:2::/64"));
        assert_eq!(source_net("192.0.2.9".parse().unwrap(), 24, 64), net("192.0.2.0/24"));
        assert_eq!(source_net("::ffff:192.0.2.9".parse().unwrap(), 32, 64), net("192.0.2.9/32"));
        let key = SourceKey { addr: words_of("192.0.2.9".parse().unwrap()) };
        assert_eq!(net_of_key(&key, 32, 64), net("192.0.2.9/32"));
    }
}
