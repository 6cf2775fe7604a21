//! Connection steering through the real gatewayd: with several workers, each client's
//! connections land on the worker the policy names, as the per-worker metrics show
//! (`gateway_steering_connections_total` from the program, `gateway_worker_connections_total`
//! from the workers' accept loops). Needs root (the sk_reuseport program).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use gateway_common::{
    steer::{client_hash, slot_of},
    xdp::mapped_v4,
};
use gateway_userspace::ebpf::steering::slot_table;
use socket2::{Domain, Socket, Type};

use super::support::{ConfigBuilder, Gateway, Ports, Upstream, eventually};

fn config(p: &Ports, upstream: SocketAddr, workers: usize, steering: &str, pin: bool) -> String {
    ConfigBuilder::new(p)
        .workers(workers)
        .server(&format!("pin_workers = {pin}\nsteering = \"{steering}\""))
        .service("up", &[upstream])
        .route("all", "up", "auth = \"none\"")
        .build()
}

/// One request on its own connection from `src`; the status.
fn get_from(src: Ipv4Addr, dst: SocketAddr) -> u16 {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((src, 0)).into()).expect("bind client address");
    s.connect_timeout(&dst.into(), Duration::from_secs(2)).expect("connect");
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"GET /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").expect("write");
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn per_worker(gw: &Gateway, metric: &str, workers: usize) -> Vec<f64> {
    (0..workers).map(|w| gw.metric(metric, &[("worker", &w.to_string())])).collect()
}

#[test]
fn client_hash_lands_each_client_on_its_worker() {
    const WORKERS: usize = 3;
    let up = Upstream::start("up");
    let gw = Gateway::start(|p| config(p, up.addr, WORKERS, "client_hash", false));
    let clients: Vec<Ipv4Addr> = (1..=12).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let table = slot_table(&[true; WORKERS]);
    let mut expected = vec![0.0; WORKERS];
    for c in &clients {
        for _ in 0..3 {
            assert_eq!(get_from(*c, gw.ports.listen), 200);
            expected[table[slot_of(client_hash(mapped_v4(c.octets()))) as usize] as usize] += 1.0;
        }
    }
    assert!(expected.iter().filter(|n| **n > 0.0).count() > 1, "a poor spread for the test: {expected:?}");
    let got = eventually(Duration::from_secs(5), || {
        let accepted = per_worker(&gw, "gateway_worker_connections_total", WORKERS);
        (accepted == expected).then_some(accepted)
    });
    assert!(
        got.is_some(),
        "accepted per worker {:?}, the policy says {expected:?}",
        per_worker(&gw, "gateway_worker_connections_total", WORKERS)
    );
    assert_eq!(per_worker(&gw, "gateway_steering_connections_total", WORKERS), expected);
    assert_eq!(gw.series("gateway_steering_fallbacks_total", &[]), 0.0);
}

#[test]
fn cpu_steering_lands_connections_on_the_receiving_cpus_worker() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    // On one CPU every connection lands on worker 0 whatever the policy does: that proves nothing.
    assert!(cpus >= 2, "CPU steering needs several CPUs to be tested ({cpus} here)");
    let up = Upstream::start("up");
    let gw = Gateway::start(|p| config(p, up.addr, cpus, "cpu", true));
    for cpu in 0..cpus {
        let before = per_worker(&gw, "gateway_steering_connections_total", cpus);
        let listen = gw.ports.listen;
        std::thread::spawn(move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).expect("cpu set");
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
            for _ in 0..4 {
                assert_eq!(get_from(Ipv4Addr::LOCALHOST, listen), 200);
            }
        })
        .join()
        .expect("client thread");
        let after = per_worker(&gw, "gateway_steering_connections_total", cpus);
        for w in 0..cpus {
            let want = if w == cpu { 4.0 } else { 0.0 };
            assert_eq!(
                after[w] - before[w],
                want,
                "from CPU {cpu}: worker {w} got {} (before {before:?}, after {after:?})",
                after[w] - before[w]
            );
        }
    }
}
