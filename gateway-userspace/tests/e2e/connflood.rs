//! The guard against floods that its per-source packet and SYN buckets let through (issue 15):
//! a source that keeps opening real connections and closing them before any request is put in
//! the XDP deny list by `[xdp.feedback]` (reason `empty_connection`), while a client whose
//! connections carry requests is served throughout; UDP to the listener's port (gatewayd serves
//! TCP only) is dropped in XDP, other UDP is not. Needs root (network namespaces, XDP).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use super::{
    netns::{GW_IF, Netns, VethPair},
    support::eventually,
    xdp::{HTTP_PORT, NsGateway, PinDir, SHORT, get_from},
};

/// A TCP handshake from `src`, then a reset (SO_LINGER 0) before any byte: what the flood
/// benchmark's `connections` attack does, once.
fn empty_connection(ns: &Netns, src: Ipv4Addr, dst: SocketAddr) -> Result<(), String> {
    ns.run(move || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        s.bind(&SocketAddr::from((src, 0)).into()).map_err(|e| format!("bind {src}: {e}"))?;
        s.connect_timeout(&dst.into(), SHORT).map_err(|e| format!("connect from {src}: {e}"))?;
        s.set_linger(Some(Duration::ZERO)).map_err(|e| e.to_string())?;
        drop(TcpStream::from(s));
        Ok(())
    })
}

#[test]
fn sources_that_open_connections_without_requests_are_blocked_in_xdp() {
    let net = VethPair::new("cf", 44, 2);
    let [flooder, client] = [net.clients[0], net.clients[1]];
    let pins = PinDir::new("cf");
    let xdp = format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\n\n\
         [xdp.feedback]\nenabled = true\nempty_connection_threshold = 5\nwindow = \"1m\"\nblock_for = \"1m\"\n",
        pins.0.display()
    );
    let gw = NsGateway::start(&net.gw, net.gw_addr, &xdp);
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    let empties = |n: f64| {
        eventually(Duration::from_secs(5), || {
            (gw.metric("gateway_xdp_feedback_reports_total", &[("reason", "empty_connection")]) >= n).then_some(())
        })
        .unwrap_or_else(|| panic!("{n} empty connections not counted:\n{}", gw.scrape()))
    };
    for _ in 0..4 {
        empty_connection(&net.peer, flooder, dst).expect("handshake before the threshold");
    }
    empties(4.0);
    // Connections that carry a request count for nothing, whoever opens them.
    for _ in 0..6 {
        assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200));
    }
    assert_eq!(get_from(&net.peer, flooder, dst, "/demo/hello", SHORT), Ok(200), "blocked before the threshold");
    assert_eq!(gw.metric("gateway_xdp_blocks_total", &[("origin", "feedback")]), 0.0);
    empty_connection(&net.peer, flooder, dst).expect("the fifth handshake");
    empties(5.0);
    eventually(Duration::from_secs(5), || {
        (gw.metric("gateway_xdp_blocks_total", &[("origin", "feedback")]) == 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no feedback block:\n{}", gw.stderr()));
    assert!(empty_connection(&net.peer, flooder, dst).is_err(), "the blocked source still completes handshakes");
    assert!(
        gw.metric("gateway_xdp_packets_total", &[("iface", GW_IF), ("verdict", "drop_denylist")]) > 0.0,
        "the flooder's SYN was not dropped by the deny list"
    );
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200), "an innocent source was refused");
    let log = gw.stderr();
    assert!(log.lines().any(|l| l.contains("repeat offender") && l.contains("empty_connection")), "{log}");
    assert_eq!(
        gw.metric("gateway_xdp_feedback_reports_total", &[("reason", "empty_connection")]),
        5.0,
        "a request-carrying connection was counted as empty"
    );
}

#[test]
fn udp_to_the_listener_port_is_dropped_in_xdp() {
    let net = VethPair::new("cu", 45, 1);
    let client = net.clients[0];
    let pins = PinDir::new("cu");
    let xdp = format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"xdp-skb\"\npin_path = \"{}\"\n",
        pins.0.display()
    );
    let gw = NsGateway::start(&net.gw, net.gw_addr, &xdp);
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    let dropped = || gw.metric("gateway_xdp_packets_total", &[("iface", GW_IF), ("verdict", "drop_udp_closed")]);
    let send = |port: u16, n: usize| {
        let to = SocketAddr::from((net.gw_addr, port));
        net.peer.run(move || {
            let socket = UdpSocket::bind((client, 0)).expect("bind");
            for _ in 0..n {
                socket.send_to(b"junk", to).expect("send");
            }
        })
    };
    send(9, 20);
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200));
    assert_eq!(dropped(), 0.0, "udp to a port gatewayd does not listen on was dropped as closed");
    send(HTTP_PORT, 20);
    eventually(Duration::from_secs(5), || (dropped() >= 20.0).then_some(()))
        .unwrap_or_else(|| panic!("udp to the listener port not dropped:\n{}", gw.scrape()));
    assert_eq!(get_from(&net.peer, client, dst, "/demo/hello", SHORT), Ok(200), "tcp to the same port refused");
}
