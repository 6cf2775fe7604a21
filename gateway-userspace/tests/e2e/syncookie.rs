//! `[xdp] syn_cookies = "always"` with the real gatewayd behind native XDP, and behind the TC
//! classifier, on a veth: a real client's SYN is answered by the program (XDP_TX; in TC a redirect
//! out of the device it came in on; the kernel sends no SYN-ACK of its own), its ACK carries the
//! kernel's cookie back, the kernel accepts it (`TcpExtSyncookiesRecv` rises) and the HTTP
//! exchange on that connection works. Needs root.

use std::{net::SocketAddr, time::Duration};

use gateway_userspace::ebpf::{AttachMode, LoadOptions, XdpGuard};

use super::{
    netns::{GW_IF, Netns, PEER_IF, VethPair},
    xdp::{HTTP_PORT, NsGateway, PinDir, get_from},
};

/// `TcpExt` counters of the namespace, by name.
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    let out = ns.command("cat").arg("/proc/net/netstat").output().expect("read /proc/net/netstat");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { panic!("no TcpExt in:\n{text}") };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExt {name} in:\n{text}"))
}

fn sh(ns: &Netns, script: &str) {
    let out = ns.command("sh").args(["-c", script]).output().expect("run sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn xdp_answers_syns_with_cookies_and_the_kernel_accepts_the_acks() {
    let net = VethPair::new("sc", 45, 1);
    // A frame sent back with XDP_TX on a veth reaches the other end only when that end runs an
    // XDP program of its own (with GRO on instead, the frames were counted and lost on 6.18); a
    // physical NIC needs nothing of the kind. The guard with an empty config passes everything.
    let _peer_xdp = net.peer.run(|| {
        let mut guard = XdpGuard::load(&LoadOptions { pin_dir: None, max_sources: 1024 }).expect("load the guard");
        guard.attach(PEER_IF, Some(AttachMode::XdpDriver)).expect("attach a pass-everything program to the peer");
        guard
    });
    answers_with_cookies(&net, "sc", "xdp-driver");
}

/// The TC program's SYN-ACK leaves by a real redirect (BPF_PROG_TEST_RUN, in the selftest, only
/// returns the verdict): no program is needed on the peer.
#[test]
fn tc_answers_syns_with_cookies_and_the_kernel_accepts_the_acks() {
    let net = VethPair::new("st", 46, 1);
    answers_with_cookies(&net, "st", "tc");
}

fn answers_with_cookies(net: &VethPair, tag: &str, mode: &str) {
    // "always" asks for a cookie for every SYN; the kernel issues one for every SYN only with 2
    // (with 1, only while the listener's SYN queue is full).
    sh(&net.gw, "echo 2 > /proc/sys/net/ipv4/tcp_syncookies");
    let pins = PinDir::new(tag);
    let xdp = format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"{mode}\"\npin_path = \"{}\"\nsyn_cookies = \"always\"\n",
        pins.0.display()
    );
    let gw = NsGateway::try_start_with(&net.gw, net.gw_addr, "", &xdp).unwrap_or_else(|e| panic!("{e}"));
    let (recv, sent) = (tcp_ext(&net.gw, "SyncookiesRecv"), tcp_ext(&net.gw, "SyncookiesSent"));
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    // With tcp_syncookies = 2 the kernel's own SYN-ACKs on loopback (gatewayd to its demo
    // upstream, scrapes) carry cookies too: each can account for at most one validated ACK.
    for _ in 0..3 {
        assert_eq!(get_from(&net.peer, net.clients[0], dst, "/demo/hello", Duration::from_secs(5)), Ok(200));
    }
    let validated = tcp_ext(&net.gw, "SyncookiesRecv") - recv;
    let kernel_sent = tcp_ext(&net.gw, "SyncookiesSent") - sent;
    assert!(
        validated >= kernel_sent + 3,
        "the kernel validated {validated} cookie ACKs and sent {kernel_sent} cookies itself, for 3 connections through {mode}"
    );
    let answered = gw.metric("gateway_xdp_packets_total", &[("iface", GW_IF), ("verdict", "syn_cookie")]);
    assert!(answered >= 3.0, "the {mode} program answered {answered} SYNs for 3 connections\n{}", gw.scrape());
}
