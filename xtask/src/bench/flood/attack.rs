//! The attacks, run from threads inside the attacker namespace and bounded in time.
//!
//! Raw-packet floods are sent by our own AF_PACKET sender rather than trafgen or hping3: it
//! needs no config language for per-packet source schemes (131,072 spoofed v4 and v6 sources,
//! a never-repeating rotation), paces itself to `--attack-pps`, and nothing is installed for it.
//! Real handshakes and HTTP requests use ordinary sockets bound to the attacker's addresses.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use socket2::{Domain, Socket, Type};

use super::{
    feed,
    packet::{self, Frame, Link, Payload},
    topology::{
        self, ATTACK_IF, ATTACK_NS, CONNECTION_SOURCES, GW_ATTACK_ADDR, GW_ATTACK_ADDR6, HTTP_SOURCES, Topology,
    },
};

pub const SERVICE_PORT: u16 = 8080;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// No attack: the baseline of each subject.
    None,
    /// TCP SYNs from 131,072 spoofed sources (half IPv4, half IPv6).
    SynSpoofed,
    /// TCP SYNs from one spoofed source.
    SynOne,
    /// UDP junk (64 bytes) to the service port from 16 spoofed sources.
    Udp,
    /// Real handshakes (connect, then reset) from 300 addresses.
    Connections,
    /// HTTP requests from 4 addresses, refused by the per-IP L7 limit (429).
    Http,
    /// TCP SYNs from never-repeating spoofed sources (v4 and v6): tries to evict tracked sources.
    Rotating,
}

impl Attack {
    pub const ALL: [Attack; 7] = [
        Attack::None,
        Attack::SynSpoofed,
        Attack::SynOne,
        Attack::Udp,
        Attack::Connections,
        Attack::Http,
        Attack::Rotating,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Attack::None => "none",
            Attack::SynSpoofed => "syn-spoofed",
            Attack::SynOne => "syn-one",
            Attack::Udp => "udp",
            Attack::Connections => "connections",
            Attack::Http => "http",
            Attack::Rotating => "rotating",
        }
    }

    /// Whether the attacker's sending depends on the gateway's answers (handshakes, requests),
    /// so that a defence changes how many packets it offers.
    pub fn is_closed_loop(self) -> bool {
        matches!(self, Attack::Connections | Attack::Http)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Attack::None => "no attack (baseline)",
            Attack::SynSpoofed => {
                "SYN flood, 131,072 spoofed sources (65,536 IPv4 in 10.128.0.0/9, 65,536 IPv6 in fd73::/32), paced"
            }
            Attack::SynOne => "SYN flood from one spoofed source (10.128.0.1), paced",
            Attack::Udp => "UDP datagrams (64 bytes of junk) to the service port from 16 spoofed sources, paced",
            Attack::Connections => {
                "real TCP handshakes from 300 addresses, each closed with a reset at once, 4 threads (at most pps/4 per second)"
            }
            Attack::Http => {
                "keep-alive HTTP GETs from 4 addresses (2 connections each, one request in flight), refused by the per-IP limit of 1,000/s"
            }
            Attack::Rotating => {
                "SYN flood whose source never repeats (alternating IPv4 and IPv6), to flush the guard's LRU of tracked sources, paced"
            }
        }
    }
}

/// A running attack: its threads stop at `stop()` or at their deadline, whichever comes first.
pub struct Running {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<u64>>>,
    /// The XDP generator's thread's run time and runs (`None` until a generator has finished).
    generator: Arc<Mutex<Option<(f64, u64)>>>,
}

/// What a stopped attack sent.
#[derive(Debug, Clone, Copy)]
pub struct Stopped {
    /// Units sent: frames, handshakes or requests.
    pub units: u64,
    /// Seconds the XDP generator's thread ran (`None` without one: AF_PACKET sender, or an
    /// attack of real sockets). With `--feed xdp-softirq` it includes the gateway's receive.
    pub generator_cpu: Option<f64>,
    /// The generator's `BPF_PROG_RUN` calls.
    pub generator_runs: Option<u64>,
}

impl Running {
    /// Stops the threads; returns what they sent.
    pub fn stop(self) -> Result<Stopped> {
        self.stop.store(true, Ordering::Relaxed);
        let mut units = 0;
        for thread in self.threads {
            units += thread.join().map_err(|_| anyhow::anyhow!("an attack thread panicked"))??;
        }
        let generator = *self.generator.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Stopped { units, generator_cpu: generator.map(|g| g.0), generator_runs: generator.map(|g| g.1) })
    }
}

/// The frames of a raw flood: whose sources, and what they carry (`None`: not a raw flood).
fn raw_frames(attack: Attack) -> Option<(Scheme, Payload)> {
    match attack {
        Attack::SynSpoofed => Some((Scheme::Pool, Payload::Syn)),
        Attack::SynOne => Some((Scheme::One, Payload::Syn)),
        Attack::Udp => Some((Scheme::Few16, Payload::Udp(64))),
        Attack::Rotating => Some((Scheme::Rotating, Payload::Syn)),
        Attack::None | Attack::Connections | Attack::Http => None,
    }
}

/// The XDP generator's own CPU per frame of `attack`'s frames, in seconds (`None`: not a raw
/// flood, or no generator in this topology). The same runs at the same pace as in a cell, for
/// `window`, redirected to the dispatcher anchor veth, which is down: each frame is freed as
/// the redirect fails, so the thread's run time is the frame making alone (`receive.rs`).
/// The runs are the cells' usual 64 frames; the frames per run of every cell are in the report.
pub fn generator_cost(attack: Attack, topo: &Topology, pps: u64, window: Duration) -> Result<Option<f64>> {
    let (Some((scheme, payload)), Some(object)) = (raw_frames(attack), topo.generator.clone()) else {
        return Ok(None);
    };
    let link = Link { src_mac: topo.attack_mac, dst_mac: topo.gw_attack_mac };
    let how = topo.feed;
    let fed = topology::run_in(ATTACK_NS, move || {
        let generator = feed::Generator::load_to(&object, link, scheme.code(), payload, topology::ANCHOR_IF)?;
        generator.run(how, pps, Instant::now() + window, &AtomicBool::new(false))
    })?;
    if fed.frames == 0 {
        bail!("the generator made no frames while measuring its own cost for {}", attack.label());
    }
    Ok(Some(fed.cpu / fed.frames as f64))
}

/// Starts `attack`; it ends by itself after `limit` at the latest.
/// Raw floods go through the topology's XDP generator, or without one through the AF_PACKET
/// sender (`--feed skb`).
pub fn start(attack: Attack, topo: &Topology, pps: u64, limit: Duration) -> Result<Running> {
    let stop = Arc::new(AtomicBool::new(false));
    let generator = Arc::new(Mutex::new(None));
    let deadline = Instant::now() + limit;
    let link = Link { src_mac: topo.attack_mac, dst_mac: topo.gw_attack_mac };
    let mut threads = Vec::new();
    let raw = |scheme: Scheme, payload: Payload| {
        let stop = stop.clone();
        let how = topo.feed;
        let totals = generator.clone();
        let Some(object) = topo.generator.clone() else {
            return topology::spawn_in(ATTACK_NS, move || raw_flood(link, scheme, payload, pps, deadline, &stop));
        };
        // The generator starts once loaded (an AF_PACKET socket is ready at once, a program
        // takes a while to verify).
        let (ready, loaded) = std::sync::mpsc::channel();
        let thread = topology::spawn_in(ATTACK_NS, move || {
            let generator = feed::Generator::load(&object, link, scheme.code(), payload);
            let _ = ready.send(());
            let fed = generator?.run(how, pps, deadline, &stop)?;
            let mut total = totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (cpu, runs) = total.unwrap_or((0.0, 0));
            *total = Some((cpu + fed.cpu, runs + fed.runs));
            Ok(fed.frames)
        })?;
        // A load error comes out of the thread at `stop()`; a closed channel means it ended.
        let _ = loaded.recv();
        Ok(thread)
    };
    match attack {
        Attack::None => {}
        Attack::SynSpoofed | Attack::SynOne | Attack::Udp | Attack::Rotating => {
            if let Some((scheme, payload)) = raw_frames(attack) {
                threads.push(raw(scheme, payload)?);
            }
        }
        Attack::Connections => {
            const THREADS: usize = 4;
            let per_thread = (pps / 4 / THREADS as u64).max(1);
            for t in 0..THREADS {
                let stop = stop.clone();
                threads.push(topology::spawn_in(ATTACK_NS, move || {
                    connection_flood(t, THREADS, per_thread, deadline, &stop)
                })?);
            }
        }
        Attack::Http => {
            for i in 0..HTTP_SOURCES * 2 {
                let stop = stop.clone();
                let src = topology::http_source(i % HTTP_SOURCES);
                threads.push(topology::spawn_in(ATTACK_NS, move || http_flood(src, deadline, &stop))?);
            }
        }
    }
    Ok(Running { stop, threads, generator })
}

/// Which spoofed sources a raw flood draws (the definitions are `floodgen`'s, shared with the XDP
/// feed's program).
#[derive(Debug, Clone, Copy)]
enum Scheme {
    /// 2^16 IPv4 and 2^16 IPv6 sources, in a scrambled order.
    Pool,
    One,
    /// 16 IPv4 sources.
    Few16,
    /// A new source for every frame.
    Rotating,
}

impl Scheme {
    fn code(self) -> u64 {
        match self {
            Scheme::Pool => floodgen::scheme::POOL,
            Scheme::One => floodgen::scheme::ONE,
            Scheme::Few16 => floodgen::scheme::FEW16,
            Scheme::Rotating => floodgen::scheme::ROTATING,
        }
    }

    /// The source of the n-th frame of the AF_PACKET sender (families alternate frame by frame;
    /// the XDP feed alternates them run by run, with the same per-family sequence).
    fn source(self, n: u64) -> IpAddr {
        let code = self.code();
        let (v6, k) = if floodgen::both_families(code) { (n & 1 == 1, n >> 1) } else { (false, n) };
        if v6 {
            IpAddr::V6(topology::spoofed_v6(floodgen::v6_index(code, k)))
        } else {
            IpAddr::V4(topology::spoofed_v4(floodgen::v4_index(code, k)))
        }
    }
}

/// An AF_PACKET socket bound to the attacker's veth, bypassing its qdisc (as trafgen does).
fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain system calls on a descriptor we own; sockaddr_ll is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET) (needs root)");
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let name = std::ffi::CString::new(ATTACK_IF)?;
        let ifindex = libc::if_nametoindex(name.as_ptr());
        if ifindex == 0 {
            bail!("no interface {ATTACK_IF} in {ATTACK_NS}");
        }
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = i32::try_from(ifindex)?;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        if libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).context("bind(AF_PACKET)");
        }
        let one: libc::c_int = 1;
        let one_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // Best effort: without it frames only take the (noqueue) qdisc path.
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, (&raw const one).cast(), one_len);
        Ok(fd)
    }
}

/// Sends frames paced to `pps` until `stop` or `deadline`; returns the frames the kernel took.
fn raw_flood(
    link: Link,
    scheme: Scheme,
    payload: Payload,
    pps: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<u64> {
    let fd = packet_socket()?;
    yield_to_the_host()?;
    // A batch of frames goes out in one sendmmsg: the generator shares the machine's two CPUs
    // with the gateway and its legitimate clients, so its own cost per packet (a syscall each)
    // would show up as their latency, which an attacker on another host would not cause.
    let mut frames: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(packet::frame_len(true, payload))).collect();
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        // Pace in batches: ahead of schedule, sleep the difference.
        let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
        if sent > due {
            std::thread::sleep(Duration::from_secs_f64((sent - due) as f64 / pps as f64));
            continue;
        }
        for buf in &mut frames {
            let src = scheme.source(n);
            let dst = if src.is_ipv6() { IpAddr::V6(GW_ATTACK_ADDR6) } else { IpAddr::V4(GW_ATTACK_ADDR) };
            let sport = floodgen::sport(n);
            packet::build(buf, link, Frame { src, dst, sport, dport: SERVICE_PORT, payload, seq: n as u32 });
            n += 1;
        }
        sent += send_batch(&fd, &mut frames);
    }
    Ok(sent)
}

/// Puts the calling thread (the AF_PACKET sender) at the lowest priority, nice 19. The sender
/// stands in for machines elsewhere on the network: building frames and its sendmmsg calls are
/// their CPU, not the gateway's. At the default priority it held a CPU for slices of 0.2–0.7 ms
/// (up to 17 ms) while the legitimate clients and gatewayd's workers, woken on the same CPU,
/// waited their turn behind it (`perf sched timehist` during `rotating` under the guard: the most
/// common cause of their wakeups delayed over 0.3 ms, and most of the new-connection client's
/// p99). At nice 19 a task woken on that CPU runs as soon as the current sendmmsg returns (the
/// bed's kernel does not preempt in kernel mode). The gateway's receive of the flood that runs
/// inside those calls (veth's NAPI in the sender's softirq) is still done and counted: the pace
/// holds while a CPU is free, and the report shows the rate offered. Same for every defence.
pub(super) fn yield_to_the_host() -> Result<()> {
    // SAFETY: plain system calls; with PRIO_PROCESS, Linux takes a thread id and renices only it.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setpriority(nice 19) for the flood sender");
    }
    Ok(())
}

/// Frames per sendmmsg.
const BATCH: usize = 64;

/// Sends every frame of `frames` in one sendmmsg (bound socket: no addresses); returns how many
/// the kernel took (a full socket buffer takes fewer: they count as not sent, as a failed send did).
fn send_batch(fd: &OwnedFd, frames: &mut [Vec<u8>]) -> u64 {
    let mut iovecs: Vec<libc::iovec> =
        frames.iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: f.len() }).collect();
    let mut msgs: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is valid (no name, no control data).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            libc::mmsghdr { msg_hdr: hdr, msg_len: 0 }
        })
        .collect();
    // SAFETY: msgs points at msgs.len() initialised headers whose iovecs point into live frames.
    let rc = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0) };
    u64::try_from(rc).unwrap_or(0)
}

/// Completed handshakes from this thread's share of the 300 sources, each reset at once (no
/// TIME_WAIT on either side), at most `per_second`.
fn connection_flood(
    thread: usize,
    threads: usize,
    per_second: u64,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<u64> {
    let dst = SocketAddr::from((GW_ATTACK_ADDR, SERVICE_PORT));
    let start = Instant::now();
    let mut done: u64 = 0;
    let mut i = thread;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
        if done > due {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let src = SocketAddr::from((topology::connection_source(i % CONNECTION_SOURCES), 0));
        i += threads;
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_linger(Some(Duration::ZERO))?;
        socket.bind(&src.into())?;
        if socket.connect_timeout(&dst.into(), Duration::from_millis(500)).is_ok() {
            done += 1;
        }
    }
    Ok(done)
}

/// Keep-alive requests from `src`, one in flight, reconnecting when the gateway closes or stops
/// answering (as it does once the source is blocked).
fn http_flood(src: std::net::Ipv4Addr, deadline: Instant, stop: &AtomicBool) -> Result<u64> {
    const REQUEST: &[u8] = b"GET /demo/hello HTTP/1.1\r\nHost: flood\r\n\r\n";
    let dst = SocketAddr::from((GW_ATTACK_ADDR, SERVICE_PORT));
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_linger(Some(Duration::ZERO))?;
        socket.bind(&SocketAddr::from((src, 0)).into())?;
        if socket.connect_timeout(&dst.into(), Duration::from_millis(300)).is_err() {
            continue;
        }
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_millis(300)))?;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            if stream.write_all(REQUEST).is_err() {
                break;
            }
            sent += 1;
            match stream.read(&mut buf) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_pool_has_both_families_and_over_50k_sources() {
        let sources: HashSet<IpAddr> = (0..4_000_000).map(|n| Scheme::Pool.source(n)).collect();
        let v6 = sources.iter().filter(|s| s.is_ipv6()).count();
        assert!(sources.len() >= 120_000, "{} distinct sources", sources.len());
        assert!(v6 > 50_000 && sources.len() - v6 > 50_000, "{v6} IPv6 of {}", sources.len());
        assert!(sources.len() <= 1 << 17, "the pool is bounded");
    }

    /// Every source an attack spoofs must be routed back and discarded (topology.rs): a source
    /// outside that space is dropped by the gateway's stack at its route lookup, so its SYNs
    /// never fill the SYN queue and no defence's cookies engage (the rotating flood's IPv6 half
    /// once was: half its SYNs passed the guard unanswered). Frame numbers up to a long cell.
    #[test]
    fn every_spoofed_source_is_routed_back() {
        let schemes = [Scheme::Pool, Scheme::One, Scheme::Few16, Scheme::Rotating];
        for scheme in schemes {
            let frames = (0..200_000).chain((0..1000).map(|k| 10_000_000 + k * 1_000));
            for n in frames {
                let src = scheme.source(n);
                assert!(topology::is_spoofed(src), "{scheme:?} frame {n}: {src} is outside the routed-back space");
            }
        }
    }

    #[test]
    fn rotation_never_repeats_and_one_is_one() {
        let rotating: HashSet<IpAddr> = (0..100_000).map(|n| Scheme::Rotating.source(n)).collect();
        assert_eq!(rotating.len(), 100_000);
        let one: HashSet<IpAddr> = (0..1000).map(|n| Scheme::One.source(n)).collect();
        assert_eq!(one.len(), 1);
        let few: HashSet<IpAddr> = (0..1000).map(|n| Scheme::Few16.source(n)).collect();
        assert_eq!(few.len(), 16);
    }

    /// The XDP feed's program draws each family's sources by its own counter `k` (runs alternate
    /// the families): those sequences stay inside the routed-back space too, and `rotating`'s
    /// never repeat within a family (nor across: the families differ).
    #[test]
    fn per_family_sources_are_spoofed_and_rotation_never_repeats() {
        use floodgen::{scheme, v4_index, v6_index};
        for code in [scheme::POOL, scheme::ONE, scheme::FEW16, scheme::ROTATING] {
            for k in (0..100_000).chain((0..1000).map(|j| 5_000_000 + j * 997)) {
                let v4 = IpAddr::V4(topology::spoofed_v4(v4_index(code, k)));
                assert!(topology::is_spoofed(v4), "scheme {code} v4 frame {k}: {v4}");
                if floodgen::both_families(code) {
                    let v6 = IpAddr::V6(topology::spoofed_v6(v6_index(code, k)));
                    assert!(topology::is_spoofed(v6), "scheme {code} v6 frame {k}: {v6}");
                }
            }
        }
        // 3 M frames per family: 40 s of a 150k pps flood, longer than any cell.
        const FRAMES: u64 = 3_000_000;
        let v4: HashSet<u32> = (0..FRAMES).map(|k| v4_index(scheme::ROTATING, k) & 0x7F_FFFF).collect();
        let v6: HashSet<u32> = (0..FRAMES).map(|k| v6_index(scheme::ROTATING, k)).collect();
        assert_eq!((v4.len() as u64, v6.len() as u64), (FRAMES, FRAMES));
        let one: HashSet<u32> = (0..FRAMES).step_by(1000).map(|k| v4_index(scheme::ONE, k)).collect();
        assert_eq!(one.len(), 1);
        let pool4: HashSet<u32> = (0..FRAMES).map(|k| v4_index(scheme::POOL, k)).collect();
        let pool6: HashSet<u32> = (0..FRAMES).map(|k| v6_index(scheme::POOL, k)).collect();
        assert_eq!((pool4.len(), pool6.len()), (1 << 16, 1 << 16), "131,072 sources in all");
    }

    /// The tests that make the fl-* namespaces (fixed names) run one at a time.
    static NAMESPACES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// `Tcp: InSegs` / `Udp: InDatagrams`-style counters of `/proc/net/snmp` inside `ns`.
    fn snmp(ns: &str, proto: &str, field: &str) -> u64 {
        topology::proc_net_counter(ns, "snmp", proto, field).expect("read /proc/net/snmp")
    }

    /// The harness itself, for real and in a second: the namespaces come up, the raw sender's
    /// SYNs (v4 and v6, spoofed) and UDP junk reach the gateway's stack with valid checksums, and
    /// the attacker veth's counter sees them. Needs root (like the XDP tests).
    #[test]
    fn raw_floods_reach_the_gateway_stack_with_valid_checksums() -> Result<()> {
        let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let topo = Topology::create(feed::Feed::Skb)?;
        let ns = topology::GW_NS;
        let (segs, udp, csum) =
            (snmp(ns, "Tcp", "InSegs"), snmp(ns, "Udp", "NoPorts"), snmp(ns, "Tcp", "InCsumErrors"));
        let tx = topology::tx_packets(ATTACK_NS, ATTACK_IF)?;
        let run = |attack| -> Result<u64> {
            let running = start(attack, &topo, 5_000, Duration::from_secs(5))?;
            std::thread::sleep(Duration::from_millis(200));
            Ok(running.stop()?.units)
        };
        let (sent, junk) = (run(Attack::SynSpoofed)?, run(Attack::Udp)?);
        assert!(sent > 100 && junk > 100, "sent {sent} SYNs, {junk} datagrams");
        assert!(topology::tx_packets(ATTACK_NS, ATTACK_IF)? - tx >= sent + junk);
        // Every SYN is a valid segment to the stack (v4 and v6 both count in Tcp: InSegs).
        assert!(snmp(ns, "Tcp", "InSegs") - segs >= sent, "SYNs lost or refused");
        assert_eq!(snmp(ns, "Tcp", "InCsumErrors"), csum, "bad TCP checksums");
        assert!(snmp(ns, "Udp", "NoPorts") - udp >= junk, "datagrams lost or refused");
        Ok(())
    }

    /// The XDP feed for real: xtask/floodgen's program (built with the nightly toolchain, as
    /// the benchmark does) makes the frames in BPF_PROG_RUN's live mode and redirects them to
    /// fl-a1; fl-a0 (no XDP program, GRO on) receives them in its NAPI thread (`napi.rs`) and
    /// the gateway's stack takes every SYN (v4 and v6) and datagram with valid checksums. Needs
    /// root.
    #[test]
    fn xdp_feed_reaches_the_gateway_stack_with_valid_checksums() -> Result<()> {
        let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let topo = Topology::create(feed::Feed::Xdp)?;
        let ns = topology::GW_NS;
        let (segs, udp, csum) =
            (snmp(ns, "Tcp", "InSegs"), snmp(ns, "Udp", "NoPorts"), snmp(ns, "Tcp", "InCsumErrors"));
        let (ucsum, rx) = (snmp(ns, "Udp", "InCsumErrors"), topology::rx_packets(ns, topology::GW_ATTACK_IF)?);
        let napi = super::super::napi::Thread::pinned()?;
        let napi_before = napi.cpu_seconds()?;
        let run = |attack| -> Result<u64> {
            let running = start(attack, &topo, 20_000, Duration::from_secs(5))?;
            std::thread::sleep(Duration::from_millis(300));
            Ok(running.stop()?.units)
        };
        let (sent, rotating, junk) = (run(Attack::SynSpoofed)?, run(Attack::Rotating)?, run(Attack::Udp)?);
        assert!(sent > 100 && rotating > 100 && junk > 100, "made {sent} + {rotating} SYNs, {junk} datagrams");
        let received = topology::rx_packets(ns, topology::GW_ATTACK_IF)? - rx;
        assert!(received >= sent + rotating + junk, "fl-a0 received {received} of {}", sent + rotating + junk);
        // The receive ran in the NAPI thread, not in the generator's syscall.
        assert!(napi.cpu_seconds()? > napi_before, "fl-a0's NAPI thread did not run");
        assert!(snmp(ns, "Tcp", "InSegs") - segs >= sent + rotating, "SYNs lost or refused");
        assert_eq!(snmp(ns, "Tcp", "InCsumErrors"), csum, "bad TCP checksums");
        assert_eq!(snmp(ns, "Udp", "InCsumErrors"), ucsum, "bad UDP checksums");
        assert!(snmp(ns, "Udp", "NoPorts") - udp >= junk, "datagrams lost or refused");
        Ok(())
    }

    /// The same frames without the NAPI thread (`--feed xdp-softirq`): the gateway end's NAPI
    /// runs in softirq at the end of each of the generator's runs, and takes every frame. Needs
    /// root.
    #[test]
    fn xdp_softirq_feed_reaches_the_gateway_stack() -> Result<()> {
        let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let topo = Topology::create(feed::Feed::XdpSoftirq)?;
        let ns = topology::GW_NS;
        let (segs, csum) = (snmp(ns, "Tcp", "InSegs"), snmp(ns, "Tcp", "InCsumErrors"));
        let rx = topology::rx_packets(ns, topology::GW_ATTACK_IF)?;
        let running = start(Attack::SynSpoofed, &topo, 20_000, Duration::from_secs(5))?;
        std::thread::sleep(Duration::from_millis(300));
        let stopped = running.stop()?;
        let sent = stopped.units;
        assert!(sent > 100, "made {sent} SYNs");
        // The receive ran in the generator's softirq: its thread's run time per frame is above
        // what making the frames alone costs (measured with the frames freed at the redirect).
        let cpu = stopped.generator_cpu.expect("the generator's run time");
        let own = generator_cost(Attack::SynSpoofed, &topo, 20_000, Duration::from_millis(300))?.expect("a raw flood");
        assert!(own > 0.0 && cpu / sent as f64 > own, "{cpu} s for {sent} frames, {own} s per frame alone");
        let received = topology::rx_packets(ns, topology::GW_ATTACK_IF)? - rx;
        assert!(received >= sent, "fl-a0 received {received} of {sent}");
        assert!(snmp(ns, "Tcp", "InSegs") - segs >= sent, "SYNs lost or refused");
        assert_eq!(snmp(ns, "Tcp", "InCsumErrors"), csum, "bad TCP checksums");
        Ok(())
    }
}
