//! The real XDP guard on a real interface: a veth pair between two private network namespaces, the
//! program attached to one end, pings sent from the other. Needs root (CAP_NET_ADMIN, CAP_BPF,
//! CAP_SYS_ADMIN) and `ip`/`ping` (`cargo xtask deps` installs them). It fails, never skips, when
//! it cannot run: a skipped eBPF test would let CI stay green with a broken pipeline.

use std::{fs::File, process::Command};

use gateway_common::xdp::Verdict;
use gateway_userspace::ebpf::{AttachMode, XdpGuard};
use nix::sched::{CloneFlags, setns};

const PINGS: u64 = 3;
/// veth names live inside the test's private namespaces, so they cannot clash across tests.
const VETH_XDP: &str = "gw-xdp";
const VETH_PEER: &str = "gw-peer";

#[test]
fn xdp_driver_mode_counts_pings_on_veth() {
    pings_are_counted_as_pass(AttachMode::Driver, "drv", 1);
}

#[test]
fn xdp_skb_mode_counts_pings_on_veth() {
    pings_are_counted_as_pass(AttachMode::Skb, "skb", 2);
}

fn pings_are_counted_as_pass(mode: AttachMode, tag: &str, subnet: u8) {
    let net = VethNet::create(tag, subnet);
    // Declared after `net`, so dropped (detached) before the namespaces are deleted.
    let mut xdp = XdpGuard::load().unwrap_or_else(|e| panic!("loading the XDP program failed: {e}"));
    net.in_xdp_ns(|| xdp.attach(VETH_XDP, mode)).unwrap_or_else(|e| panic!("attach failed: {e}"));
    let before = counts(&xdp);

    net.ping_xdp_end(PINGS);

    let after = counts(&xdp);
    let passed = after[Verdict::Pass as usize] - before[Verdict::Pass as usize];
    assert!(
        passed >= PINGS,
        "{mode:?}: {passed} frames counted as pass for {PINGS} pings (before {before:?}, after {after:?})"
    );
    for verdict in Verdict::ALL.into_iter().filter(|v| *v != Verdict::Pass) {
        assert_eq!(after[verdict as usize], 0, "{mode:?}: unexpected {} count", verdict.label());
    }
}

fn counts(xdp: &XdpGuard) -> gateway_userspace::ebpf::VerdictCounts {
    xdp.verdict_counts().unwrap_or_else(|e| panic!("reading verdict counters failed: {e}"))
}

/// Two namespaces joined by a veth pair; both are deleted on drop, also when the test panics.
struct VethNet {
    xdp_ns: String,
    peer_ns: String,
    xdp_addr: String,
    created: Vec<String>,
}

impl VethNet {
    fn create(tag: &str, subnet: u8) -> Self {
        let pid = std::process::id();
        let mut net = VethNet {
            xdp_ns: format!("gwtest-{pid}-{tag}-xdp"),
            peer_ns: format!("gwtest-{pid}-{tag}-peer"),
            xdp_addr: format!("10.213.{subnet}.1"),
            created: Vec::new(),
        };
        for ns in [net.xdp_ns.clone(), net.peer_ns.clone()] {
            run(Command::new("ip").args(["netns", "add", &ns]));
            net.created.push(ns);
        }
        let (xdp_ns, peer_ns) = (net.xdp_ns.as_str(), net.peer_ns.as_str());
        let peer = ["peer", "name", VETH_PEER, "netns", peer_ns];
        run(Command::new("ip").args(["-n", xdp_ns, "link", "add", VETH_XDP, "type", "veth"]).args(peer));
        run(Command::new("ip").args(["-n", xdp_ns, "addr", "add", &format!("{}/30", net.xdp_addr), "dev", VETH_XDP]));
        run(Command::new("ip").args([
            "-n",
            peer_ns,
            "addr",
            "add",
            &format!("10.213.{subnet}.2/30"),
            "dev",
            VETH_PEER,
        ]));
        run(Command::new("ip").args(["-n", xdp_ns, "link", "set", VETH_XDP, "up"]));
        run(Command::new("ip").args(["-n", peer_ns, "link", "set", VETH_PEER, "up"]));
        net
    }

    /// Runs `f` with the calling thread inside the XDP end's namespace (aya resolves interface
    /// names in the caller's namespace), then moves the thread back, also on panic.
    fn in_xdp_ns<T>(&self, f: impl FnOnce() -> T) -> T {
        let home = open("/proc/thread-self/ns/net");
        let target = open(&format!("/var/run/netns/{}", self.xdp_ns));
        setns(&target, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns into {}: {e}", self.xdp_ns));
        let _back = GoHome(home);
        f()
    }

    /// Pings the XDP end from the peer namespace; every ping must be answered (XDP_PASS).
    fn ping_xdp_end(&self, count: u64) {
        let count = count.to_string();
        let ping = ["ping", "-c", &count, "-i", "0.2", "-W", "1", &self.xdp_addr];
        run(Command::new("ip").args(["netns", "exec", &self.peer_ns]).args(ping));
    }
}

impl Drop for VethNet {
    fn drop(&mut self) {
        // Deleting a namespace also removes the veth end inside it (and so the pair).
        for ns in &self.created {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: ip netns del {ns}: {}", String::from_utf8_lossy(&out.stderr)),
                Err(e) => eprintln!("cleanup: ip netns del {ns}: {e}"),
            }
        }
    }
}

struct GoHome(File);

impl Drop for GoHome {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
            // Staying in the test namespace would poison the rest of this thread's work.
            eprintln!("cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

fn open(path: &str) -> File {
    File::open(path).unwrap_or_else(|e| panic!("open {path}: {e} (these tests need root)"))
}

/// Runs a setup command; any failure ends the test with the command and its output.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
