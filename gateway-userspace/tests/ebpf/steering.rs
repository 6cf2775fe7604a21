//! Connection steering on real SO_REUSEPORT sockets on loopback: each connection is found on the
//! worker socket the policy names, and a worker taken out of steering gets no new connection
//! while the others keep theirs.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use gateway_common::{
    steer::{client_hash, slot_of},
    xdp::mapped_v4,
};
use gateway_userspace::{
    config::SteeringPolicy,
    ebpf::{Steering, steering::slot_table},
    socket::bind_reuseport,
};
use socket2::{Domain, Socket, Type};

struct Group {
    addr: SocketAddr,
    sockets: Vec<TcpListener>,
}

fn group(steering: &Steering, workers: usize) -> Group {
    let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 128).expect("bind");
    let addr = first.local_addr().expect("addr");
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind_reuseport(addr, 128).expect("bind same port"));
    }
    for (w, s) in sockets.iter().enumerate() {
        steering.register(addr, w, s).unwrap_or_else(|e| panic!("register worker {w}: {e}"));
    }
    Group { addr, sockets }
}

/// Connects from `client` and returns the index of the socket that got the connection.
fn connect_from(g: &Group, client: Ipv4Addr) -> usize {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((client, 0)).into()).expect("bind client address");
    s.connect_timeout(&g.addr.into(), Duration::from_secs(2)).expect("connect");
    let _client: TcpStream = s.into();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        for (w, l) in g.sockets.iter().enumerate() {
            match l.accept() {
                Ok(_) => return w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept on worker {w}: {e}"),
            }
        }
        assert!(Instant::now() < deadline, "no socket got the connection from {client}");
        std::thread::yield_now();
    }
}

fn expected(client: Ipv4Addr, live: &[bool]) -> usize {
    slot_table(live)[slot_of(client_hash(mapped_v4(client.octets()))) as usize] as usize
}

#[test]
fn client_hash_steers_each_client_to_its_worker_and_drains_one_worker() {
    const WORKERS: usize = 3;
    let steering = Steering::new(SteeringPolicy::ClientHash, WORKERS).expect("steering loads");
    let g = group(&steering, WORKERS);
    let clients: Vec<Ipv4Addr> = (1..=24).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
    let all = [true; WORKERS];
    let mut per_worker = [0u64; WORKERS];
    for c in &clients {
        for _ in 0..2 {
            let got = connect_from(&g, *c);
            assert_eq!(got, expected(*c, &all), "client {c}");
            per_worker[got] += 1;
        }
    }
    assert!(per_worker.iter().filter(|n| **n > 0).count() > 1, "every client on one worker: {per_worker:?}");
    let (counted, fallback) = steering.counts();
    assert_eq!(counted, per_worker.to_vec(), "steering counters");
    assert_eq!(fallback, 0);

    // Worker 1 drains: out of steering before its socket closes.
    steering.unregister(g.addr, 1);
    let live = [true, false, true];
    for c in &clients {
        let got = connect_from(&g, *c);
        assert_ne!(got, 1, "client {c} steered to the draining worker");
        if expected(*c, &all) != 1 {
            assert_eq!(got, expected(*c, &all), "client {c} moved although its worker stayed");
        }
        assert_eq!(got, expected(*c, &live), "client {c}");
    }
}

#[test]
fn cpu_policy_steers_to_the_receiving_cpus_worker() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // On one CPU every connection lands on worker 0 whatever the program does: that proves nothing.
    assert!(cpus >= 2, "CPU steering needs several CPUs to be tested ({cpus} here)");
    let workers = cpus.min(4);
    // `cargo xtask vm-test steering` says how many workers the spread must cover (its guest's
    // four vCPUs): fewer CPUs seen here would make a narrower spread pass.
    if let Ok(want) = std::env::var("GATEWAYD_STEERING_WORKERS") {
        assert_eq!(workers.to_string(), want, "CPU steering spread over {workers} workers, {want} expected");
    }
    let steering = Steering::new(SteeringPolicy::Cpu, workers).expect("steering loads");
    let g = group(&steering, workers);
    for cpu in 0..workers {
        // On loopback the SYN is processed on the sending CPU.
        let got = std::thread::scope(|s| {
            s.spawn(|| {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("cpu set");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
                (0..3).map(|_| connect_from(&g, Ipv4Addr::LOCALHOST)).collect::<Vec<_>>()
            })
            .join()
            .expect("client thread")
        });
        assert!(got.iter().all(|w| *w == cpu % workers), "from CPU {cpu}: workers {got:?}");
    }
    // The program counted each worker's three, none by the fallback.
    let (counted, fallback) = steering.counts();
    assert_eq!((counted, fallback), (vec![3; workers], 0), "steering counters");
}
