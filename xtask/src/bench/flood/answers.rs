//! Where the guard's `XDP_TX` answers (SYN-ACKs with XDP SYN cookies) end up.
//!
//! A veth delivers a frame sent back with `XDP_TX` only to a peer that runs an XDP program of its
//! own (without one the frame is dropped at transmit; with GRO on instead, the frames were counted
//! and lost on 6.18). A physical NIC needs nothing of the kind, so:
//! - the legitimate clients' end (`fl-c1`) runs a pass-everything XDP program (`xdp-filter` from
//!   Debian's xdp-tools, policy allow): their SYN-ACKs arrive as they would over a wire;
//! - the attacker's end (`fl-a1`) runs none: answers to spoofed sources are discarded at the
//!   veth's transmit, for next to nothing, and never become RSTs or ICMP in fl-atk (on a real
//!   network the attacker's receive cost is on another machine, not on the gateway's CPUs).

use std::process::Command;

use anyhow::{Context as _, Result};

use super::topology::{CLIENT_IF, CLIENT_NS};
use crate::cmd::capture;

/// `xdp-filter` pins its maps under bpffs: it must see the host's, so the namespace is entered
/// with `nsenter --net` (network only), not `ip netns exec` (which remounts /sys).
fn in_client_ns(program: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/var/run/netns/{CLIENT_NS}")).arg(program);
    cmd
}

pub fn attach_client_receiver() -> Result<()> {
    capture(in_client_ns("xdp-filter").args(["load", CLIENT_IF, "--mode", "native", "--policy", "allow"]))
        .context("loading a pass-everything XDP program on the clients' veth end (xdp-tools)")
        .map(drop)
}

/// Best effort (the namespace goes next, and the program with it); also removes xdp-filter's pins.
pub fn detach_client_receiver() {
    let _absent = in_client_ns("xdp-filter").args(["unload", CLIENT_IF, "--all"]).output();
}
