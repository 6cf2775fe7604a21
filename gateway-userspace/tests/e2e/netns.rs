//! Private network namespaces and veth pairs for tests that need real interfaces (the XDP/TC
//! guard). Everything is created under names unique to the test process and deleted on drop,
//! also when the test panics. Needs root and `ip` (iproute2; `cargo xtask deps` installs it).

use std::{
    fs::File,
    net::Ipv4Addr,
    os::fd::AsFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// Interface names inside the test's namespaces (they cannot clash across tests).
pub const GW_IF: &str = "gw0";
pub const PEER_IF: &str = "peer0";

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!("gwt{}-{}-{tag}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n <ns> ARGS`, failing the test with the output on error.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// `ip -n <ns> ARGS` output.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a fresh thread that has entered this namespace (the caller's thread never
    /// changes namespace, so nothing can leak into other tests).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e} (tests need root)", self.name));
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Runs `f` on a background thread inside this namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let ns = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e} (tests need root)", self.name));
        std::thread::spawn(move || {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// A command that starts inside this namespace (network only: mounts and bpffs are the
    /// host's, so pins outlive the process like in production).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let ns = File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e} (tests need root)", self.name));
        let mut cmd = Command::new(program);
        // SAFETY: setns(2) is async-signal-safe; the descriptor was opened before the fork.
        unsafe {
            cmd.pre_exec(move || setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from));
        }
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace also removes the interfaces inside it (and so veth pairs).
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("cleanup: ip netns del {}: {}", self.name, String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.name),
        }
    }
}

/// Two namespaces joined by a veth pair: the gateway end (`gw0`, 10.213.S.1/24) and a peer end
/// (`peer0`) holding several client addresses (10.213.S.2, .3, …).
pub struct VethPair {
    pub gw: Netns,
    pub peer: Netns,
    pub gw_addr: Ipv4Addr,
    pub clients: Vec<Ipv4Addr>,
}

impl VethPair {
    pub fn new(tag: &str, subnet: u8, clients: u8) -> VethPair {
        let gw = Netns::new(&format!("{tag}g"));
        let peer = Netns::new(&format!("{tag}p"));
        gw.ip(&["link", "add", GW_IF, "type", "veth", "peer", "name", PEER_IF, "netns", &peer.name]);
        let gw_addr = Ipv4Addr::new(10, 213, subnet, 1);
        gw.ip(&["addr", "add", &format!("{gw_addr}/24"), "dev", GW_IF]);
        let clients: Vec<Ipv4Addr> = (0..clients).map(|i| Ipv4Addr::new(10, 213, subnet, 2 + i)).collect();
        for c in &clients {
            peer.ip(&["addr", "add", &format!("{c}/24"), "dev", PEER_IF]);
        }
        gw.ip(&["link", "set", GW_IF, "up"]);
        peer.ip(&["link", "set", PEER_IF, "up"]);
        VethPair { gw, peer, gw_addr, clients }
    }
}

/// Runs a setup command; any failure ends the test with the command and its output.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is iproute2 installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
