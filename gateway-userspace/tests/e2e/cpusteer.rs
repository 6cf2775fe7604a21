//! `[xdp] steering = "cpumap"` with the real gatewayd behind native XDP on a veth: every
//! connection is processed by the kernel on the CPU its (pinned) worker runs on, although all
//! clients send from one CPU; in TC mode it falls back with one log line. Needs root and ≥ 2 CPUs.

use std::{net::SocketAddr, time::Duration};

use super::{
    netns::{GW_IF, PEER_IF, VethPair},
    xdp::{HTTP_PORT, NsGateway, PinDir, get_from},
};

const SERVER: &str = "steering = \"client_hash\"\npin_workers = true";
const WORKERS: usize = 2;

fn xdp_config(mode: &str, pins: &PinDir) -> String {
    format!(
        "[xdp]\nenabled = true\ninterfaces = [\"{GW_IF}\"]\nmode = \"{mode}\"\npin_path = \"{}\"\nsteering = \"cpumap\"\n",
        pins.0.display()
    )
}

/// The NET_RX softirq count of each CPU (reported on failure: where the NIC side ran).
fn net_rx() -> String {
    std::fs::read_to_string("/proc/softirqs")
        .unwrap_or_default()
        .lines()
        .find(|l| l.trim_start().starts_with("NET_RX"))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn cpumap_processes_each_connection_on_its_workers_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs at least 2 CPUs to show steering (found {cpus})");
    let net = VethPair::new("cs", 42, 16);
    // A local sender leaves the TCP checksum for the "device" to fill in (CHECKSUM_PARTIAL); a
    // frame redirected through the cpumap loses that state and would fail the checksum check.
    // Real NICs deliver complete checksums: computed by the sender here, as on a wire.
    let ethtool = net.peer.command("ethtool").args(["-K", PEER_IF, "tx", "off"]).output();
    assert!(
        ethtool.as_ref().is_ok_and(|o| o.status.success()),
        "ethtool -K {PEER_IF} tx off failed (cargo xtask deps installs ethtool): {ethtool:?}"
    );
    let pins = PinDir::new("cs");
    let gw = NsGateway::try_start_with(&net.gw, net.gw_addr, SERVER, &xdp_config("xdp-driver", &pins))
        .unwrap_or_else(|e| panic!("{e}"));
    let log = gw.stderr();
    assert!(log.contains("xdp steering: cpumap (each client"), "cpumap mode not logged:\n{log}");
    assert_eq!(gw.metric("gateway_xdp_steering_mode", &[("mode", "cpumap")]), 1.0);

    // Every client sends from CPU 0 (the veth delivers on the sender's CPU): without steering,
    // every connection would be processed on CPU 0 whatever its worker.
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    let rx_before = net_rx();
    let served = std::thread::scope(|s| {
        s.spawn(|| {
            let mut on_cpu0 = nix::sched::CpuSet::new();
            on_cpu0.set(0).expect("cpu set");
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &on_cpu0).expect("pin the clients to CPU 0");
            let mut served = 0;
            let mut failures = Vec::new();
            for client in &net.clients {
                for _ in 0..2 {
                    match get_from(&net.peer, *client, dst, "/demo/hello", Duration::from_secs(5)) {
                        Ok(200) => served += 1,
                        other => failures.push(format!("{client}: {other:?}")),
                    }
                }
            }
            (served, failures)
        })
        .join()
        .expect("clients")
    });
    let rx_after = net_rx();
    let (served, failures) = served;
    assert!(failures.is_empty(), "requests failed: {failures:?}\n{}", gw.scrape());

    let per_worker: Vec<f64> =
        (0..WORKERS).map(|w| gw.metric("gateway_steering_connections_total", &[("worker", &w.to_string())])).collect();
    assert_eq!(per_worker.iter().sum::<f64>(), f64::from(served), "connections steered: {per_worker:?}");
    assert!(per_worker.iter().all(|n| *n > 0.0), "both workers should get clients: {per_worker:?}");
    for w in 0..WORKERS {
        let own = w % cpus;
        for cpu in 0..cpus {
            let n = gw.metric(
                "gateway_steering_connections_by_cpu_total",
                &[("worker", &w.to_string()), ("cpu", &cpu.to_string())],
            );
            if cpu == own {
                assert!(n > 0.0, "worker {w}'s connections were not processed on its CPU {own}");
            } else {
                assert_eq!(
                    n,
                    0.0,
                    "worker {w} (pinned to CPU {own}) got {n} connections processed on CPU {cpu}\n\
                     NET_RX before: {rx_before}\nNET_RX after:  {rx_after}\n{}",
                    gw.stderr()
                );
            }
        }
    }
    // Worker 1's clients arrived on CPU 0 and were sent to CPU 1 by the XDP program.
    let redirected = gw.metric("gateway_xdp_steered_packets_total", &[("result", "redirected"), ("cpu", "1")]);
    assert!(redirected > 0.0, "no packet redirected to CPU 1");
    assert_eq!(gw.metric("gateway_xdp_steered_packets_total", &[("result", "failed")]), 0.0);
}

#[test]
fn cpumap_falls_back_with_one_line_in_tc_mode() {
    let net = VethPair::new("ct", 43, 1);
    let pins = PinDir::new("ct");
    let gw = NsGateway::try_start_with(&net.gw, net.gw_addr, SERVER, &xdp_config("tc", &pins))
        .unwrap_or_else(|e| panic!("{e}"));
    let log = gw.stderr();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("xdp steering")).collect();
    assert_eq!(lines.len(), 1, "expected one steering line:\n{log}");
    assert!(lines[0].contains("falling back") && lines[0].contains("tc mode"), "{}", lines[0]);
    assert_eq!(gw.metric("gateway_xdp_steering_mode", &[("mode", "reuseport_fallback")]), 1.0);
    assert_eq!(gw.metric("gateway_xdp_steering_mode", &[("mode", "cpumap")]), 0.0);
    let dst = SocketAddr::from((net.gw_addr, HTTP_PORT));
    assert_eq!(get_from(&net.peer, net.clients[0], dst, "/demo/hello", Duration::from_secs(5)), Ok(200));
}
