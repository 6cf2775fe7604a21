//! Listening sockets that outlive the process: each one a worker binds is also given to systemd's
//! file descriptor store (`FDSTORE=1`, `FDNAME=gw-listener-w<worker>-<addr>`; the unit sets
//! `FileDescriptorStoreMax=`). On `systemctl restart` or a package upgrade systemd keeps them open
//! while the old process drains and exits, so connections wait in the accept queue instead of
//! being refused, and passes them to the new process (`LISTEN_FDS`, `LISTEN_FDNAMES`), whose
//! workers adopt them instead of binding. This is the only way two processes share a listener:
//! a second instance started by hand is refused (see `occupant`).

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, FromRawFd, OwnedFd},
    sync::Mutex,
};

use sd_notify::NotifyState;

const PREFIX: &str = "gw-listener-w";

/// Sockets inherited from the previous process, waiting for their worker.
#[derive(Default)]
pub struct Handover {
    inherited: Mutex<HashMap<(SocketAddr, usize), TcpListener>>,
}

impl Handover {
    /// Takes the listening sockets systemd passed in (none outside systemd). Other passed
    /// descriptors are left alone.
    pub fn from_env() -> Handover {
        let mut inherited = HashMap::new();
        let fds = match sd_notify::listen_fds_with_names() {
            Ok(fds) => fds,
            Err(error) => {
                tracing::warn!(%error, "ignoring malformed LISTEN_FDS");
                return Handover::default();
            }
        };
        for (fd, name) in fds {
            let Some(worker) = worker_of(&name) else { continue };
            // SAFETY: systemd passed this descriptor to this process (LISTEN_PID matched) and
            // nothing else in the process owns it.
            let socket = TcpListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
            match socket.local_addr() {
                Ok(addr) => {
                    inherited.insert((addr, worker), socket);
                }
                Err(error) => tracing::warn!(%name, %error, "ignoring a handed-over socket"),
            }
        }
        if !inherited.is_empty() {
            tracing::info!(sockets = inherited.len(), "adopting listening sockets handed over by systemd");
        }
        Handover { inherited: Mutex::new(inherited) }
    }

    /// The inherited socket for `addr` on `worker`, made non-blocking.
    pub fn take(&self, addr: SocketAddr, worker: usize) -> Option<TcpListener> {
        let socket = self.lock().remove(&(addr, worker))?;
        match socket.set_nonblocking(true) {
            Ok(()) => Some(socket),
            Err(error) => {
                tracing::warn!(%addr, worker, %error, "cannot use a handed-over socket; binding anew");
                None
            }
        }
    }

    /// Closes inherited sockets no worker wants (a listener removed or fewer workers since the
    /// last run) and takes them out of the store. Connections queued on them are lost: that is
    /// what removing a listener means.
    pub fn release_unclaimed(&self) {
        for ((addr, worker), _socket) in self.lock().drain() {
            tracing::info!(%addr, worker, "closing a handed-over socket the new configuration does not use");
            forget(addr, worker);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, usize), TcpListener>> {
        self.inherited.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Gives `socket` to systemd's store, to survive a restart. A no-op outside systemd.
pub fn keep(addr: SocketAddr, worker: usize, socket: &TcpListener) {
    let name = name(addr, worker);
    let states = [NotifyState::FdStore, NotifyState::FdName(&name)];
    if let Err(error) = sd_notify::notify_with_fds(&states, &[socket.as_fd()]) {
        tracing::warn!(%addr, worker, %error, "cannot keep the listening socket in systemd's store; a restart will briefly refuse connections");
    }
}

/// Takes the socket out of systemd's store (the listener was removed by a reload).
pub fn forget(addr: SocketAddr, worker: usize) {
    let name = name(addr, worker);
    if let Err(error) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(&name)]) {
        tracing::warn!(%addr, worker, %error, "cannot remove a listening socket from systemd's store");
    }
}

/// `FDNAME` allows no `:`; the address is only for people reading `systemctl status` — adoption
/// reads the socket's own address.
fn name(addr: SocketAddr, worker: usize) -> String {
    format!("{PREFIX}{worker}-{}", addr.to_string().replace(':', "_"))
}

fn worker_of(name: &str) -> Option<usize> {
    name.strip_prefix(PREFIX)?.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_worker_and_no_colon() {
        let v6: SocketAddr = "[::1]:8443".parse().unwrap();
        let n = name(v6, 12);
        assert!(!n.contains(':') && n.len() < 255, "{n}");
        assert_eq!(worker_of(&n), Some(12));
        assert_eq!(worker_of(&name("127.0.0.1:80".parse().unwrap(), 0)), Some(0));
        assert_eq!(worker_of("stored-by-someone-else"), None);
    }
}
