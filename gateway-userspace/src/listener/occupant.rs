//! Who else listens on an address. SO_REUSEPORT would let a second gatewayd (same user) join the
//! first one's listening group and take half of its connections with its own config, so before
//! binding, the daemon looks in the kernel's socket table (`/proc/net/tcp`, `tcp6` of its own
//! network namespace) for a listening socket on the same address that is not one of its own
//! (sockets it holds, including those handed over by systemd on a restart), and refuses to start.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
};

use procfs::{
    net::TcpState,
    process::{FDTarget, Process},
};

/// A listening socket on an address we want, held by someone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// The address the other socket is bound to (may be a wildcard covering ours).
    pub bound: SocketAddr,
    pub inode: u64,
    /// The process holding it, when `/proc/<pid>/fd` is readable to us.
    pub process: Option<(i32, String)>,
}

impl fmt::Display for Occupant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.process {
            Some((pid, name)) => write!(f, "pid {pid} ({name}), listening on {}", self.bound),
            None => write!(
                f,
                "another process (socket inode {}, listening on {}; its owner is not visible to this user)",
                self.inode, self.bound
            ),
        }
    }
}

/// The first listening socket that would share `addr` with us and is not ours.
pub fn foreign_listener(addr: SocketAddr) -> Option<Occupant> {
    let ours = socket_inodes(&Process::myself().ok()?);
    let table = match addr {
        SocketAddr::V4(_) => procfs::net::tcp(),
        SocketAddr::V6(_) => procfs::net::tcp6(),
    };
    let entry = table
        .ok()?
        .into_iter()
        .find(|e| e.state == TcpState::Listen && overlaps(e.local_address, addr) && !ours.contains(&e.inode))?;
    Some(Occupant { bound: entry.local_address, inode: entry.inode, process: holder(entry.inode) })
}

/// Same port, and the same address or a wildcard on either side.
fn overlaps(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound.port() == wanted.port() && (bound.ip() == wanted.ip() || unspecified(bound.ip()) || unspecified(wanted.ip()))
}

fn unspecified(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

fn socket_inodes(process: &Process) -> HashSet<u64> {
    let Ok(fds) = process.fd() else { return HashSet::new() };
    fds.filter_map(|fd| match fd.ok()?.target {
        FDTarget::Socket(inode) => Some(inode),
        _ => None,
    })
    .collect()
}

/// The process (pid, command name) holding socket `inode`. Without privileges, other users'
/// `/proc/<pid>/fd` is unreadable and the holder stays unknown.
fn holder(inode: u64) -> Option<(i32, String)> {
    let me = std::process::id() as i32;
    procfs::process::all_processes().ok()?.filter_map(Result::ok).filter(|p| p.pid != me).find_map(|p| {
        socket_inodes(&p).contains(&inode).then(|| {
            let name = p.stat().map(|s| s.comm).unwrap_or_else(|_| "?".to_owned());
            (p.pid, name)
        })
    })
}

#[cfg(test)]
mod tests {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};

    use super::*;

    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn finds_another_process_listener_and_ignores_our_own() {
        let ours = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ours.local_addr().unwrap();
        assert_eq!(foreign_listener(addr), None, "our own socket is not foreign");

        // Hand the socket to a child (`sleep`, fd inherited) and close ours: now someone else holds it.
        let fd = ours.as_raw_fd();
        let mut sleep = std::process::Command::new("sleep");
        sleep.arg("30");
        // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on the inherited fd.
        unsafe {
            sleep.pre_exec(move || match libc::fcntl(fd, libc::F_SETFD, 0) {
                -1 => Err(std::io::Error::last_os_error()),
                _ => Ok(()),
            });
        }
        let child = Reaped(sleep.spawn().expect("sleep"));
        drop(ours);
        let found = foreign_listener(addr).expect("the child's listener");
        assert_eq!(found.process, Some((child.0.id() as i32, "sleep".to_owned())), "{found}");
        assert!(found.to_string().starts_with(&format!("pid {} (sleep)", child.0.id())), "{found}");
        let wildcard = SocketAddr::new("0.0.0.0".parse().unwrap(), addr.port());
        assert!(foreign_listener(wildcard).is_some(), "a wildcard overlaps the child's address");
        let other_port = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1).max(1));
        assert!(!overlaps(addr, other_port));
    }
}
