//! The benchmark's network: three namespaces joined to the gateway's by two veth pairs.
//!
//! ```text
//!  fl-cli: fl-c1 10.71.0.2 ──veth── fl-c0 10.71.0.1  ┐
//!                                                    ├ fl-gw: gatewayd (+ its demo upstream)
//!  fl-atk: fl-a1 10.72.0.2 ──veth── fl-a0 10.72.0.1  ┘        guard on fl-c0 and fl-a0
//!          + 10.72.1.0/24, 10.72.2.0/24 (connection flood), 10.72.3.1-4 (HTTP flood)
//! ```
//!
//! Spoofed sources (10.128.0.0/9, fd73::/32) are routed back over the attack link, as a host's
//! default route would send them: the kernel queues a request socket per spoofed SYN and sends its
//! SYN-ACK (then cookies once the SYN queue is full), as on a real edge. (They used to be
//! blackholed in fl-gw, which made the kernel drop each SYN at its route lookup, before queueing:
//! the SYN queue never filled, so neither the kernel's nor the guard's cookies ever engaged.)
//! fl-atk discards packets to the spoofed ranges in its netdev ingress hook (an attacker never
//! processes answers; no RST or ICMP comes back). SYN-ACKs the guard answers in XDP: `answers.rs`. Everything is removed on drop (and stale namespaces of an aborted run at
//! the start).

use std::{
    fs::File,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::AsFd,
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use nix::sched::{CloneFlags, setns};

use super::feed::{Feed, Object};
use crate::cmd::capture;

pub const GW_NS: &str = "fl-gw";
pub const CLIENT_NS: &str = "fl-cli";
pub const ATTACK_NS: &str = "fl-atk";
/// The gateway's interfaces, where the guard (XDP or TC) and the nftables chain sit.
pub const GW_CLIENT_IF: &str = "fl-c0";
pub const GW_ATTACK_IF: &str = "fl-a0";
pub const CLIENT_IF: &str = "fl-c1";
pub const ATTACK_IF: &str = "fl-a1";
/// A veth pair inside fl-atk that carries nothing: the XDP feed's generator is attached to it
/// so that it stays in the kernel's XDP dispatcher between runs (`feed.rs`). It stays down:
/// frames redirected to it are freed as the redirect fails, which is how the generator's own
/// cost per frame is measured (`receive.rs`).
pub const ANCHOR_IF: &str = "fl-g0";
const ANCHOR_PEER: &str = "fl-g1";

pub const GW_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 2);
pub const GW_ATTACK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 72, 0, 1);
pub const GW_ATTACK_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd72, 0, 0, 0, 0, 0, 0, 1);
/// Sources of the connection flood (real addresses in fl-atk): 10.72.1.0 upwards.
pub const CONNECTION_SOURCES: usize = 300;
/// Sources of the HTTP request flood (real addresses in fl-atk).
pub const HTTP_SOURCES: usize = 4;

pub fn connection_source(i: usize) -> Ipv4Addr {
    let n = u32::from(Ipv4Addr::new(10, 72, 1, 0)) + i as u32;
    Ipv4Addr::from(n)
}

pub fn http_source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 72, 3, 1 + i as u8)
}

/// The spoofed source space, routed back over the attack link and discarded in fl-atk: one
/// definition for the routes, the discard rules and the sources the attacks draw.
pub const SPOOFED_V4: &str = "10.128.0.0/9";
pub const SPOOFED_V6: &str = "fd73::/32";

/// The n-th spoofed IPv4 source (modulo the /9's 2^23 addresses).
pub fn spoofed_v4(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0A80_0000 | (n & 0x007F_FFFF))
}

/// The n-th spoofed IPv6 source, one /64 each (sources inside one /64 would share a bucket in the
/// guard and a meter in nftables, and be no flood of many). `n` is 32 bits: the /64s inside
/// fd73::/32. (It once took 48 bits: the rotating flood's IPv6 half fell outside the routed
/// prefix, fl-gw dropped those SYNs at its route lookup (`TcpExtListenDrops`), the IPv6
/// listener's SYN queue never filled, and neither the kernel nor the guard sent them cookies.)
pub fn spoofed_v6(n: u32) -> Ipv6Addr {
    Ipv6Addr::from((0xfd73_u128 << 112) | (u128::from(n) << 64) | 1)
}

/// Whether `addr` is in the spoofed space (routed back and discarded), per the prefixes above.
#[cfg(test)]
pub fn is_spoofed(addr: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (prefix, len) = match addr {
        IpAddr::V4(_) => SPOOFED_V4.split_once('/'),
        IpAddr::V6(_) => SPOOFED_V6.split_once('/'),
    }
    .expect("a prefix with a length");
    let (Ok(prefix), Ok(len)) = (prefix.parse::<IpAddr>(), len.parse::<u32>()) else { return false };
    match (addr, prefix) {
        (IpAddr::V4(a), IpAddr::V4(p)) => (u32::from(a) ^ u32::from(p)).checked_shr(32 - len).unwrap_or(0) == 0,
        (IpAddr::V6(a), IpAddr::V6(p)) => (u128::from(a) ^ u128::from(p)).checked_shr(128 - len).unwrap_or(0) == 0,
        _ => false,
    }
}

pub struct Topology {
    /// How the raw floods reach the gateway (`feed.rs`).
    pub feed: Feed,
    /// The XDP feed's generator program, when the raw floods arrive that way (`feed.rs`).
    pub generator: Option<Object>,
    /// The gateway's MAC on the attack link (destination of the raw frames).
    pub gw_attack_mac: [u8; 6],
    pub attack_mac: [u8; 6],
}

impl Topology {
    /// `feed`: with the XDP feed, the generator is built, fl-a0 gets GRO on (veth's NAPI
    /// receive ring exists then with or without an XDP program attached, and `ndo_xdp_xmit`
    /// frames need it: `feed.rs`), threaded unless `xdp-softirq` (`napi.rs`), and fl-atk an idle veth pair
    /// that keeps the generator in the XDP dispatcher.
    pub fn create(feed: Feed) -> Result<Self> {
        let generator = if feed.frames() { Some(Object::build()?) } else { None };
        remove_namespaces();
        // From here on, a failure removes what was made (drop).
        let mut topo = Topology { feed, generator, gw_attack_mac: [0; 6], attack_mac: [0; 6] };
        for ns in [GW_NS, CLIENT_NS, ATTACK_NS] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let gw = [
            format!("link add {GW_CLIENT_IF} type veth peer name {CLIENT_IF} netns {CLIENT_NS}"),
            format!("link add {GW_ATTACK_IF} type veth peer name {ATTACK_IF} netns {ATTACK_NS}"),
            format!("addr add {GW_CLIENT_ADDR}/24 dev {GW_CLIENT_IF}"),
            format!("addr add {GW_ATTACK_ADDR}/16 dev {GW_ATTACK_IF}"),
            format!("addr add {GW_ATTACK_ADDR6}/64 dev {GW_ATTACK_IF} nodad"),
            format!("link set {GW_CLIENT_IF} up"),
            format!("link set {GW_ATTACK_IF} up"),
            format!("route add {SPOOFED_V4} via 10.72.0.2"),
            format!("route add {SPOOFED_V6} via fd72::2"),
        ];
        batch_in(GW_NS, &gw)?;
        batch_in(
            CLIENT_NS,
            &[format!("addr add {CLIENT_ADDR}/24 dev {CLIENT_IF}"), format!("link set {CLIENT_IF} up")],
        )?;
        let mut batch = vec![
            format!("addr add 10.72.0.2/16 dev {ATTACK_IF}"),
            format!("addr add fd72::2/64 dev {ATTACK_IF} nodad"),
            format!("link set {ATTACK_IF} up"),
        ];
        batch.extend((0..CONNECTION_SOURCES).map(|i| format!("addr add {}/16 dev {ATTACK_IF}", connection_source(i))));
        batch.extend((0..HTTP_SOURCES).map(|i| format!("addr add {}/16 dev {ATTACK_IF}", http_source(i))));
        batch_in(ATTACK_NS, &batch)?;
        discard_answers_to_spoofed()?;
        // A spoofed source has no way back: strict reverse-path filtering would drop the flood
        // before any subject sees it (the default of a new namespace is off; make sure).
        for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"] {
            sysctl(GW_NS, key, "0")?;
        }
        sysctl(GW_NS, &format!("net.ipv4.conf.{GW_ATTACK_IF}.rp_filter"), "0")?;
        if feed.frames() {
            capture(in_ns(GW_NS, "ethtool").args(["-K", GW_ATTACK_IF, "gro", "on"]))
                .context("GRO on the gateway's attack veth end (its NAPI ring takes the XDP feed's frames)")?;
            if feed.threaded() {
                super::napi::setup()?;
            }
            ip(&["-n", ATTACK_NS, "link", "add", ANCHOR_IF, "type", "veth", "peer", "name", ANCHOR_PEER])
                .context("the XDP feed's dispatcher anchor veth")?;
        }
        super::answers::attach_client_receiver()?;
        topo.gw_attack_mac = mac(GW_NS, GW_ATTACK_IF)?;
        topo.attack_mac = mac(ATTACK_NS, ATTACK_IF)?;
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        super::answers::detach_client_receiver();
        remove_namespaces();
    }
}

/// fl-atk drops what fl-gw sends to the spoofed ranges at its veth's ingress (before IP).
fn discard_answers_to_spoofed() -> Result<()> {
    let rules = format!(
        "table netdev fl-atk {{\n    chain ingress {{\n        type filter hook ingress device \"{ATTACK_IF}\" priority -500; policy accept;\n        ip daddr {SPOOFED_V4} counter drop\n        ip6 daddr {SPOOFED_V6} counter drop\n    }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("fl-{}-atk.nft", std::process::id()));
    std::fs::write(&path, rules).with_context(|| format!("cannot write {}", path.display()))?;
    let result = capture(in_ns(ATTACK_NS, "nft").arg("-f").arg(&path)).context("fl-atk's discard rules (nftables)");
    let _ = std::fs::remove_file(&path);
    result.map(drop)
}

fn remove_namespaces() {
    for ns in [GW_NS, CLIENT_NS, ATTACK_NS] {
        // Absent namespaces are the normal case: ignore the outcome.
        let _absent = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    capture(Command::new("ip").args(args)).map(drop)
}

/// Runs `ip -batch` commands inside `ns` (hundreds of addresses in one process).
pub fn batch_in(ns: &str, lines: &[String]) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fl-{}-{ns}.ip", std::process::id()));
    std::fs::write(&dir, lines.join("\n") + "\n").with_context(|| format!("cannot write {}", dir.display()))?;
    let result = ip(&["-n", ns, "-batch", dir.to_str().context("temp path is not UTF-8")?]);
    let _ = std::fs::remove_file(&dir);
    result
}

pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    capture(in_ns(ns, "sysctl").args(["-q", "-w", &format!("{key}={value}")])).map(drop)
}

/// The MAC address of `iface` in `ns`, from `ip -j link show`.
fn mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = capture(Command::new("ip").args(["-n", ns, "-j", "link", "show", iface]))?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -j link: {out}"))?;
    let text = json[0]["address"].as_str().with_context(|| format!("no address for {iface}: {out}"))?;
    parse_mac(text)
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
    match <[u8; 6]>::try_from(bytes) {
        Ok(mac) => Ok(mac),
        Err(_) => bail!("not a MAC address: {text}"),
    }
}

/// Packets an interface has sent (counted by the veth driver itself, whatever the sender).
pub fn tx_packets(ns: &str, iface: &str) -> Result<u64> {
    let out = capture(Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", iface]))?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -s -j link: {out}"))?;
    json[0]["stats64"]["tx"]["packets"].as_u64().with_context(|| format!("no tx packets for {iface}: {out}"))
}

/// Packets an interface has received (the veth driver's count: skbs and XDP frames alike,
/// before any XDP program's verdict).
#[cfg(test)]
pub fn rx_packets(ns: &str, iface: &str) -> Result<u64> {
    let out = capture(Command::new("ip").args(["-n", ns, "-s", "-j", "link", "show", iface]))?;
    let json: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("ip -s -j link: {out}"))?;
    json[0]["stats64"]["rx"]["packets"].as_u64().with_context(|| format!("no rx packets for {iface}: {out}"))
}

/// A counter of the kernel's `/proc/net/FILE` inside `ns` (`netstat`, `snmp`: a line of names,
/// then one of values, per group), e.g. `netstat` `TcpExt` `ListenDrops`.
pub fn proc_net_counter(ns: &str, file: &str, group: &str, field: &str) -> Result<u64> {
    let out = capture(in_ns(ns, "cat").arg(format!("/proc/net/{file}")))?;
    netstat_field(&out, group, field).with_context(|| format!("no {group} {field} in {ns}'s /proc/net/{file}"))
}

fn netstat_field(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// `ip netns exec NS PROGRAM`: the program runs (execs in place, same pid) inside `ns`.
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program]);
    cmd
}

/// Runs `f` on a thread that has entered `ns` (the calling thread never changes namespace).
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/var/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("cannot open {path} (the benchmark needs root)"))?;
    Ok(std::thread::spawn(move || {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET).context("setns")?;
        f()
    }))
}

/// Runs `f` inside `ns` and waits for it.
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    spawn_in(ns, f)?.join().map_err(|_| anyhow::anyhow!("a thread in {ns} panicked"))?
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn addresses_stay_in_their_ranges() {
        assert_eq!(connection_source(0), Ipv4Addr::new(10, 72, 1, 0));
        assert_eq!(connection_source(299), Ipv4Addr::new(10, 72, 2, 43));
        assert_eq!(spoofed_v4(u32::MAX), Ipv4Addr::new(10, 255, 255, 255));
        assert_eq!(spoofed_v4(0), Ipv4Addr::new(10, 128, 0, 0));
        assert_eq!(spoofed_v6(5), "fd73:0:0:5::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(spoofed_v6(u32::MAX), "fd73:0:ffff:ffff::1".parse::<Ipv6Addr>().unwrap());
        for edge in [spoofed_v4(0), spoofed_v4(u32::MAX)].map(IpAddr::V4) {
            assert!(is_spoofed(edge), "{edge}");
        }
        for edge in [spoofed_v6(0), spoofed_v6(u32::MAX)].map(IpAddr::V6) {
            assert!(is_spoofed(edge), "{edge}");
        }
        for outside in ["10.127.255.255", "10.72.0.2", "fd73:1::1", "fd74::1", "fd72::2"] {
            assert!(!is_spoofed(outside.parse().unwrap()), "{outside}");
        }
        let netstat = "TcpExt: SyncookiesSent ListenDrops\nTcpExt: 3 17\nIpExt: InNoRoutes\nIpExt: 5\n";
        assert_eq!(netstat_field(netstat, "TcpExt", "ListenDrops"), Some(17));
        assert_eq!(netstat_field(netstat, "IpExt", "InNoRoutes"), Some(5));
        assert_eq!(netstat_field(netstat, "TcpExt", "Nope"), None);
        assert_eq!(parse_mac("02:ab:00:00:00:ff").ok(), Some([2, 0xab, 0, 0, 0, 0xff]));
        assert!(parse_mac("02:ab").is_err());
    }
}
