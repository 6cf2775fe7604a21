//! The closed-UDP bitmap: UDP destination ports the guard drops (`flags::UDP_CLOSED`), one bit
//! per port. gatewayd serves TCP only, so UDP to one of its listener ports can only be junk;
//! dropping it in XDP spares the kernel a socket lookup and an ICMP port-unreachable per datagram.

use aya::maps::Array;
use gateway_common::xdp::{UDP_CLOSED_MAP, UDP_PORT_WORDS};

use super::{EbpfError, XdpGuard};

impl XdpGuard {
    /// Makes `ports` the closed ones (every other port open). Written in full: the map is not
    /// pinned, and this runs at start and reload only.
    pub fn set_closed_udp_ports(&mut self, ports: &[u16]) -> Result<(), EbpfError> {
        let map = self.ebpf.map_mut(UDP_CLOSED_MAP).ok_or(EbpfError::MissingMap(UDP_CLOSED_MAP))?;
        let mut map: Array<_, u64> = Array::try_from(map).map_err(EbpfError::map(UDP_CLOSED_MAP))?;
        for (i, word) in (0u32..).zip(bitmap(ports)) {
            map.set(i, word, 0).map_err(EbpfError::map(UDP_CLOSED_MAP))?;
        }
        Ok(())
    }
}

/// The bitmap words marking `ports`, as the program reads them (word `port / 64`, bit `port % 64`).
fn bitmap(ports: &[u16]) -> Vec<u64> {
    let mut words = vec![0u64; UDP_PORT_WORDS as usize];
    for &port in ports {
        words[usize::from(port) / 64] |= 1 << (port % 64);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_bits_of_their_words() {
        let words = bitmap(&[0, 63, 64, 8080, u16::MAX]);
        assert_eq!(words.len(), 1024);
        assert_eq!(words[0], 1 | 1 << 63);
        assert_eq!(words[1], 1);
        assert_eq!(words[8080 / 64], 1 << (8080 % 64));
        assert_eq!(words[1023], 1 << 63);
        assert_eq!(words.iter().map(|w| w.count_ones()).sum::<u32>(), 5);
    }
}
