//! SYN cookies in XDP and TC (`flags::SYN_COOKIES`): SYNs to a real listening socket — in a private
//! network namespace of the suite's thread with `net.ipv4.tcp_syncookies = 2`, so the kernel
//! wants a cookie for every SYN (with 1 it wants one only while the SYN queue is full) — come back
//! as `XDP_TX` (TC: `TC_ACT_REDIRECT`, to the device it came in on) with a well-formed
//! SYN-ACK: MACs, addresses and ports swapped, ack = seq + 1, the MSS option, valid IPv4 and TCP
//! checksums; IPv4 and IPv6, with no options (the frame grows), one option, and Linux's full set
//! (it shrinks). No listener, the flag off, a SYN-ACK: the SYN passes. Auto
//! mode answers only past its per-CPU threshold; a tracked source over its SYN bucket is dropped,
//! not answered, and an answered source takes no way in the table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use gateway_common::xdp::{SourceKey, Verdict, flags, mapped_v4};

use super::{GENEROUS, GuardProgram, LOOPBACK_IFINDEX, Limits, Suite, TC_ACT_REDIRECT, XDP_TX, config};
use crate::ebpf::EbpfError;

/// The client port of the crafted SYNs.
const CLIENT_PORT: u16 = 40000;
const CLIENT_SEQ: u32 = 0x1234_5678;
/// MSS, SACK permitted, timestamps, NOP, window scale 7: what Linux sends.
const LINUX_OPTIONS: [u8; 20] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7];
const MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];

impl Suite<'_> {
    pub(super) fn syn_cookies(&mut self) -> Result<(), EbpfError> {
        let netns = match PrivateNetns::enter() {
            Ok(n) => n,
            Err(e) => {
                self.record("syn cookies: a private network namespace with tcp_syncookies = 2", Some(e));
                return Ok(());
            }
        };
        let result = self.syn_cookie_cases();
        if let Err(e) = netns.leave() {
            self.record("syn cookies: back to the original network namespace", Some(e));
        }
        result
    }

    fn syn_cookie_cases(&mut self) -> Result<(), EbpfError> {
        self.reset(GENEROUS)?;
        let v4 = listener(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let v6 = listener(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let (v4, v6) = match (v4, v6) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                self.record("syn cookies: listeners on 127.0.0.1 and ::1", Some(e));
                return Ok(());
            }
        };
        let port4 = v4.local_addr().map(|a| a.port()).unwrap_or(0);
        let port6 = v6.local_addr().map(|a| a.port()).unwrap_or(0);
        let lo4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let lo6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let mut always = config(GENEROUS);
        always.flags |= flags::SYN_COOKIES;
        self.guard.write_config(&always)?;
        for (name, ip, port, options) in [
            ("ipv4 syn with MSS", lo4, port4, &MSS_OPTION[..]),
            ("ipv4 syn without options (frame grows)", lo4, port4, &[][..]),
            ("ipv4 syn with Linux's options (frame shrinks)", lo4, port4, &LINUX_OPTIONS[..]),
            ("ipv6 syn with MSS", lo6, port6, &MSS_OPTION[..]),
            ("ipv6 syn with Linux's options", lo6, port6, &LINUX_OPTIONS[..]),
        ] {
            let frame = syn_frame(ip, port, options, 0x02);
            let failure = self.answered(&frame)?.err();
            self.record(format!("syn cookies: {name} → sent back, a well-formed SYN-ACK"), failure);
        }
        let closed = free_port();
        self.expect("syn cookies: no listener → pass", &syn_frame(lo4, closed, &MSS_OPTION, 0x02), Verdict::Pass)?;
        let synack = syn_frame(lo4, port4, &MSS_OPTION, 0x12);
        self.expect("syn cookies: a SYN-ACK is not answered", &synack, Verdict::Pass)?;
        // A tracked source over its SYN bucket: dropped, not answered.
        self.reset(Limits { syn: Some((1, 1)), ..GENEROUS })?;
        let mut tight = config(Limits { syn: Some((1, 1)), ..GENEROUS });
        tight.flags |= flags::SYN_COOKIES;
        self.guard.write_config(&tight)?;
        let syn = syn_frame(lo4, port4, &MSS_OPTION, 0x02);
        let answered_untracked = self.answered(&syn)?;
        let key = SourceKey { addr: mapped_v4([127, 0, 0, 1]) };
        let tracked = self.guard.source(&key)?.is_some();
        let failure = match answered_untracked {
            Err(e) => Some(e),
            Ok(()) if tracked => Some("the answered source took a way in the table".into()),
            Ok(()) => None,
        };
        self.record("syn cookies: an untracked source is answered and takes no way", failure);
        let data = super::frames::FrameSpec::new("127.0.0.1", super::frames::L4::TcpData).build();
        self.guard.write_config(&config(Limits { syn: Some((1, 1)), ..GENEROUS }))?;
        self.expect("syn cookies: data from the source tracks it", &data.bytes, Verdict::Pass)?;
        self.guard.write_config(&tight)?;
        let first = self.answered(&syn)?.err();
        self.record("syn cookies: a tracked source within its SYN bucket is answered", first);
        self.expect("syn cookies: a tracked source over its SYN bucket is dropped", &syn, Verdict::DropSynRateLimit)?;
        // Auto: the first `threshold` SYNs this second go to the kernel, then XDP answers.
        self.reset(GENEROUS)?;
        let mut auto = config(GENEROUS);
        auto.flags |= flags::SYN_COOKIES;
        auto.syn_cookie_threshold = 2;
        self.guard.write_config(&auto)?;
        self.expect("syn cookies auto: 1st SYN under the threshold passes", &syn, Verdict::Pass)?;
        self.expect("syn cookies auto: 2nd SYN under the threshold passes", &syn, Verdict::Pass)?;
        let third = self.answered(&syn)?.err();
        self.record("syn cookies auto: past the per-CPU threshold → answered", third);
        self.guard.write_config(&config(GENEROUS))?;
        self.expect("syn cookies off: the SYN passes", &syn, Verdict::Pass)?;
        drop((v4, v6));
        Ok(())
    }

    /// What the program returns for a SYN it answered: `XDP_TX`, or in TC the redirect back out
    /// of the device the SYN came in on.
    pub(super) fn answer_code(&self) -> u32 {
        if self.program == GuardProgram::Tc { TC_ACT_REDIRECT } else { XDP_TX }
    }

    /// Runs `frame` (a SYN) and checks that it came back (`XDP_TX`, or a TC redirect) with a
    /// well-formed SYN-ACK and that only the `syn_cookie` counter moved.
    fn answered(&mut self, frame: &[u8]) -> Result<Result<(), String>, EbpfError> {
        let before = self.guard.counters(LOOPBACK_IFINDEX)?;
        let (ret, out) = self.guard.test_run_out(self.program, frame)?;
        let after = self.guard.counters(LOOPBACK_IFINDEX)?;
        let moved: Vec<Verdict> =
            Verdict::ALL.into_iter().filter(|v| after[*v as usize] != before[*v as usize]).collect();
        let want = self.answer_code();
        if moved != [Verdict::SynCookie] || ret != want {
            return Ok(Err(format!("returned {ret}, counters moved: {moved:?} (want {want}, syn_cookie)")));
        }
        Ok(check_syn_ack(frame, &out))
    }
}

fn listener(ip: IpAddr) -> Result<TcpListener, String> {
    crate::socket::bind_reuseport(SocketAddr::new(ip, 0), 16).map_err(|e| format!("cannot listen on {ip}: {e}"))
}

/// The calling thread in a fresh network namespace (loopback up, `tcp_syncookies = 2`) until
/// [`PrivateNetns::leave`]. `BPF_PROG_TEST_RUN` and the socket lookup use the thread's namespace.
struct PrivateNetns {
    original: std::fs::File,
}

impl PrivateNetns {
    fn enter() -> Result<Self, String> {
        use nix::sched::{CloneFlags, unshare};
        let original =
            std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?;
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        let netns = PrivateNetns { original };
        loopback_up()?;
        // /proc/sys/net is the writing thread's namespace: this one's, not the host's.
        std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
            .map_err(|e| format!("net.ipv4.tcp_syncookies = 2: {e}"))?;
        Ok(netns)
    }

    fn leave(self) -> Result<(), String> {
        nix::sched::setns(&self.original, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))
    }
}

/// `ip link set lo up`, through the ioctl (no tool needed in the test VMs).
fn loopback_up() -> Result<(), String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: plain socket creation; the descriptor is owned right after.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: a valid socket and a valid ifreq for SIOCSIFFLAGS.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req) } < 0 {
        return Err(format!("loopback up: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(9)
}

/// A TCP segment with `flags` and `options` from `ip`:CLIENT_PORT to `ip`:`port`.
fn syn_frame(ip: IpAddr, port: u16, options: &[u8], tcp_flags: u8) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    tcp.extend_from_slice(&port.to_be_bytes());
    tcp.extend_from_slice(&CLIENT_SEQ.to_be_bytes());
    tcp.extend_from_slice(&[0; 4]);
    tcp.push((((20 + options.len()) / 4) as u8) << 4);
    tcp.push(tcp_flags);
    tcp.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    let mut f = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02];
    match ip {
        IpAddr::V4(a) => {
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            f.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&a.octets());
        }
    }
    f.extend_from_slice(&tcp);
    f
}

/// RFC 1071 sum of `bytes` (odd length padded), not complemented, folded.
fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    for pair in bytes.chunks(2) {
        acc += u32::from(pair[0]) << 8 | pair.get(1).copied().map_or(0, u32::from);
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What a SYN-ACK answering `syn` must look like (see the module comment).
fn check_syn_ack(syn: &[u8], out: &[u8]) -> Result<(), String> {
    let v4 = syn[12..14] == [0x08, 0x00];
    let (ip_len, addr_at, addr_len) = if v4 { (20, 26, 4) } else { (40, 22, 16) };
    let want_len = 14 + ip_len + 24;
    if out.len() != want_len {
        return Err(format!("answer is {} bytes, want {want_len}", out.len()));
    }
    if out[0..6] != syn[6..12] || out[6..12] != syn[0..6] || out[12..14] != syn[12..14] {
        return Err("MAC addresses not swapped".into());
    }
    let (src, dst) = (addr_at, addr_at + addr_len);
    if out[src..src + addr_len] != syn[dst..dst + addr_len] || out[dst..dst + addr_len] != syn[src..src + addr_len] {
        return Err("IP addresses not swapped".into());
    }
    let ip = &out[14..14 + ip_len];
    if v4 {
        if ip[0] != 0x45 || be16(ip, 2) != 44 || ip[9] != 6 || ip[8] == 0 {
            return Err(format!("bad IPv4 header {ip:02x?}"));
        }
        if sum16(ip, 0) != 0xffff {
            return Err("IPv4 header checksum invalid".into());
        }
    } else if ip[0] >> 4 != 6 || be16(ip, 4) != 24 || ip[6] != 6 || ip[7] == 0 {
        return Err(format!("bad IPv6 header {ip:02x?}"));
    }
    let th = &out[14 + ip_len..];
    let syn_th = &syn[14 + ip_len..];
    if be16(th, 0) != be16(syn_th, 2) || be16(th, 2) != be16(syn_th, 0) {
        return Err("ports not swapped".into());
    }
    if be32(th, 8) != CLIENT_SEQ.wrapping_add(1) {
        return Err(format!("ack {:#x}, want seq + 1", be32(th, 8)));
    }
    if th[12] >> 4 != 6 || th[13] != 0x12 {
        return Err(format!("data offset {} flags {:#04x}, want 6 and SYN|ACK", th[12] >> 4, th[13]));
    }
    let mss = be16(th, 22);
    if th[20..22] != [2, 4] || mss == 0 || mss > 1460 {
        return Err(format!("option {:02x?}, want MSS ≤ 1460", &th[20..24]));
    }
    // Pseudo-header: addresses, protocol, TCP length; then the segment. Valid: sums to 0xffff.
    let mut pseudo = out[src..dst + addr_len].to_vec();
    pseudo.extend_from_slice(&[0, 6, 0, 24]);
    if sum16(th, sum16(&pseudo, 0)) != 0xffff {
        return Err("TCP checksum invalid".into());
    }
    Ok(())
}
