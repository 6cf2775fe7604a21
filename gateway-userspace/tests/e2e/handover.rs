//! Who may listen on gatewayd's addresses: an accidental second instance is refused (naming the
//! first), and a restart through systemd hands the listening sockets over (file descriptor store
//! → LISTEN_FDS) so no connection is refused while the old process drains and the new one starts.
//! The test plays systemd's part with a notify socket of its own.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::net::UnixDatagram,
    },
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use sendfd::RecvWithFd;

use super::support::*;

fn config(p: &Ports, workers: usize, u: &Upstream) -> String {
    ConfigBuilder::new(p).workers(workers).service("u", &[u.addr]).route("all", "u", r#"paths = ["/"]"#).build()
}

/// Runs a second gatewayd on `listen` with its own metrics port; returns its exit status and
/// stderr, or panics if it became ready (it joined the first one's listener).
fn second_instance(listen: std::net::SocketAddr, dir: &std::path::Path, u: &Upstream) -> (bool, String) {
    let ports = Ports { listen, metrics: free_port(), dir: dir.to_owned() };
    let config_path = dir.join("second.toml");
    std::fs::write(&config_path, config(&ports, 1, u)).unwrap();
    let stderr_path = dir.join("second.stderr");
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.success(), std::fs::read_to_string(&stderr_path).unwrap());
        }
        let ready = raw_get(ports.metrics, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200"));
        if ready || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the second instance {} instead of refusing:\n{}",
                if ready { "became ready" } else { "kept running" },
                std::fs::read_to_string(&stderr_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[tokio::test]
async fn second_instance_on_the_same_listener_is_refused_naming_the_first() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, 2, &u));
    let dir = tempfile::tempdir().unwrap();
    let (ok, stderr) = second_instance(gw.ports.listen, dir.path(), &u);
    assert!(!ok, "the second instance must exit non-zero:\n{stderr}");
    assert!(stderr.contains(&gw.ports.listen.to_string()), "names the address:\n{stderr}");
    assert!(stderr.contains(&format!("pid {} (gatewayd)", gw.pid())), "names the first instance:\n{stderr}");
    // The first one keeps serving every connection.
    for _ in 0..20 {
        assert_eq!(get(&gw.url("/x")).await.status, 200);
    }
    assert!(!gw.stderr().contains("ERROR"), "{}", gw.stderr());
}

/// What systemd's file descriptor store holds for the service.
struct FdStore {
    sock: UnixDatagram,
    fds: Vec<(OwnedFd, String)>,
}

impl FdStore {
    /// Reads notify messages until READY=1, keeping the FDSTORE=1 descriptors and their names.
    fn collect_until_ready(&mut self) {
        loop {
            let mut buf = [0u8; 4096];
            let mut fds: [RawFd; 8] = [-1; 8];
            let (n, nfds) = self.sock.recv_with_fd(&mut buf, &mut fds).expect("notify message before READY=1");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.lines().any(|l| l == "FDSTORE=1") {
                let name = msg.lines().find_map(|l| l.strip_prefix("FDNAME=")).expect("FDNAME").to_owned();
                for fd in &fds[..nfds] {
                    // SAFETY: received with SCM_RIGHTS: a new descriptor owned by this process.
                    self.fds.push((unsafe { OwnedFd::from_raw_fd(*fd) }, name.clone()));
                }
            }
            if msg.lines().any(|l| l == "READY=1") {
                return;
            }
        }
    }
}

#[test]
fn restart_hands_the_listening_sockets_over_and_refuses_no_connection() {
    let u = Upstream::start("u");
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut store = FdStore { sock, fds: Vec::new() };
    let env = [("NOTIFY_SOCKET", notify_path.display().to_string())];
    let mut old = Gateway::start_with_env(|p| config(p, 2, &u), &env);
    store.collect_until_ready();
    assert_eq!(store.fds.len(), 2, "one listening socket per worker in the store");
    let listen = old.ports.listen;

    // A client opening a new connection per request, all through the restart.
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match raw_get(listen, "/r") {
                    Ok(r) if r.starts_with("HTTP/1.1 200") => served.fetch_add(1, Ordering::Relaxed),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            errors
        })
    };
    eventually(Duration::from_secs(10), || (served.load(Ordering::Relaxed) > 20).then_some(()));

    old.signal(Signal::SIGTERM);
    assert!(old.wait_exit(Duration::from_secs(20)).success(), "{}", old.stderr());
    // Between the two processes: a connection is accepted by the kernel (queued on the stored
    // socket), not refused; its request is answered by the new process.
    let mut waiting = TcpStream::connect(listen).expect("connect while no process serves");
    waiting.write_all(b"GET /queued HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();

    let new = start_with_fds(&store, listen, &u, dir.path());
    let mut answer = String::new();
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let before = served.load(Ordering::Relaxed);
    eventually(Duration::from_secs(10), || (served.load(Ordering::Relaxed) > before + 20).then_some(()));
    stop.store(true, Ordering::Relaxed);
    let errors = client.join().unwrap();
    assert!(errors.is_empty(), "{} requests failed across the restart: {errors:?}", errors.len());
    assert!(new.stderr().contains("adopting listening sockets handed over by systemd"), "{}", new.stderr());
}

/// Starts gatewayd as systemd would after a restart: the stored sockets as fds 3.., with
/// LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (set by a shell that then execs gatewayd).
fn start_with_fds(store: &FdStore, listen: std::net::SocketAddr, u: &Upstream, dir: &std::path::Path) -> Started {
    let ports = Ports { listen, metrics: free_port(), dir: dir.to_owned() };
    let config_path = dir.join("new.toml");
    std::fs::write(&config_path, config(&ports, 2, u)).unwrap();
    let stderr_path = dir.join("new.stderr");
    let names: Vec<&str> = store.fds.iter().map(|(_, n)| n.as_str()).collect();
    let raw: Vec<RawFd> = store.fds.iter().map(|(fd, _)| std::os::fd::AsRawFd::as_raw_fd(fd)).collect();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ exec \"$0\" --config \"$1\"", BIN])
        .arg(&config_path)
        .env("RUST_LOG", "debug")
        .env("LISTEN_FDS", raw.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            // Through high numbers first, so no source is overwritten before it is copied; dup2's
            // copies are not close-on-exec.
            let mut high = Vec::with_capacity(raw.len());
            for fd in &raw {
                match libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 100) {
                    -1 => return Err(std::io::Error::last_os_error()),
                    h => high.push(h),
                }
            }
            for (i, h) in high.iter().enumerate() {
                if libc::dup2(*h, 3 + i as RawFd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(*h);
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let started = Started { child, stderr_path };
    let ready = eventually(Duration::from_secs(20), || {
        raw_get(ports.metrics, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")).then_some(())
    });
    assert!(ready.is_some(), "the new process did not become ready:\n{}", started.stderr());
    started
}

struct Started {
    child: std::process::Child,
    stderr_path: std::path::PathBuf,
}

impl Started {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connection the daemon accepted just before it began to drain, whose request arrives after
/// the drain began, is answered, not closed as idle (under load across a restart that was one
/// request in a few hundred lost with EOF).
#[test]
fn connection_accepted_before_the_drain_gets_its_answer() {
    let u = Upstream::start("u");
    let mut gw = Gateway::start(|p| config(p, 1, &u));
    let accepted = gw.metric("gateway_connections_total", &[]);
    let mut early = TcpStream::connect(gw.ports.listen).unwrap();
    eventually(Duration::from_secs(10), || (gw.metric("gateway_connections_total", &[]) > accepted).then_some(()))
        .expect("the connection was accepted");
    gw.signal(Signal::SIGTERM);
    eventually(Duration::from_secs(10), || gw.stderr().contains("draining").then_some(())).expect("draining");
    early.write_all(b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    early.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = early.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "got {answer:?}\n{}", gw.stderr());
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
}
