//! UDP to a closed port (a gatewayd TCP listener's port, `flags::UDP_CLOSED`): dropped with its
//! own verdict, IPv4 and IPv6; other UDP ports, TCP to that port, an allow-listed source, and the
//! flag off all pass.

use gateway_common::xdp::{Verdict, flags};

use super::{
    GENEROUS, Suite, config,
    frames::{FrameSpec, L4},
    net, tcp,
};
use crate::ebpf::EbpfError;

/// The destination port of the crafted UDP frames (`frames::transport`).
const UDP_FRAME_PORT: u16 = 53;

impl Suite<'_> {
    pub(super) fn closed_udp(&mut self) -> Result<(), EbpfError> {
        self.reset(GENEROUS)?;
        let mut closed = config(GENEROUS);
        closed.flags |= flags::UDP_CLOSED;
        self.guard.write_config(&closed)?;
        self.guard.set_closed_udp_ports(&[UDP_FRAME_PORT])?;
        let udp4 = FrameSpec::new("192.0.2.40", L4::Udp).build();
        let udp6 = FrameSpec::new("2001:db8:40::1", L4::Udp).build();
        self.expect("udp to a closed port (ipv4)", &udp4.bytes, Verdict::DropUdpClosed)?;
        self.expect("udp to a closed port (ipv6)", &udp6.bytes, Verdict::DropUdpClosed)?;
        self.expect("tcp is not udp", &tcp("192.0.2.40").bytes, Verdict::Pass)?;
        self.guard.set_allow(&[net("192.0.2.41/32")])?;
        let allowed = FrameSpec::new("192.0.2.41", L4::Udp).build();
        self.expect("allow-listed source: udp to a closed port passes", &allowed.bytes, Verdict::PassAllowList)?;
        self.guard.set_closed_udp_ports(&[8080, 8443])?;
        self.expect("udp to another port passes", &udp4.bytes, Verdict::Pass)?;
        self.guard.set_closed_udp_ports(&[UDP_FRAME_PORT])?;
        self.guard.write_config(&config(GENEROUS))?;
        self.expect("closed-udp check off: udp passes", &udp6.bytes, Verdict::Pass)?;
        self.guard.set_closed_udp_ports(&[])
    }
}
