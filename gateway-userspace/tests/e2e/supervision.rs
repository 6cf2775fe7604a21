//! What supervises the daemon and what the daemon promises its supervisor: watchdog pings only
//! while every worker runs (a wedged worker thread stops them), and a stop that reaches
//! `drain_timeout` cuts what is still in flight, reports not-ready throughout, and exits 0.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixDatagram,
    time::Duration,
};

use nix::sys::signal::Signal;

use super::support::*;

/// One service and a catch-all route to it.
fn config(p: &Ports, workers: usize, u: &Upstream) -> String {
    ConfigBuilder::new(p).workers(workers).service("s", &[u.addr]).route("r", "s", "").build()
}

/// The sd_notify messages a daemon sent, as systemd would read them.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, _dir: dir, path }
    }

    /// The next message within `timeout`, if any.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        self.socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits (up to `timeout` in all) for a message containing `needle`.
    fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            if self.next(left).is_some_and(|m| m.contains(needle)) {
                return true;
            }
        }
        false
    }

    /// Throws away what was sent so far.
    fn drain(&self) {
        self.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 4096];
        while self.socket.recv(&mut buf).is_ok() {}
        self.socket.set_nonblocking(false).unwrap();
    }
}

/// The thread id of a named thread of `pid`.
fn thread_named(pid: i32, name: &str) -> i32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|e| e.file_name().to_str()?.parse().ok())
        .unwrap_or_else(|| panic!("no thread {name} in {pid}"))
}

/// Stops one thread of another process (and only that thread: ptrace's SEIZE + INTERRUPT, unlike
/// SIGSTOP, does not stop the thread group) until dropped. Detaches on drop, also when the test
/// fails (the tracer is this thread, so the guard must not move to another).
struct WedgedThread(i32);

impl WedgedThread {
    fn stop(tid: i32) -> WedgedThread {
        // SAFETY: plain ptrace requests on a thread id; no memory is passed.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0, "PTRACE_INTERRUPT");
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "the thread did not stop");
        }
        WedgedThread(tid)
    }
}

impl Drop for WedgedThread {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.0, 0, 0) };
    }
}

#[test]
fn a_wedged_worker_stops_the_watchdog_pings() {
    let notify = NotifySocket::new();
    let u = Upstream::start("u");
    // WatchdogSec=2: pings every second while all is well.
    let env = [("NOTIFY_SOCKET", notify.path.display().to_string()), ("WATCHDOG_USEC", "2000000".to_owned())];
    let gw = Gateway::start_with_env(|p| config(p, 2, &u), &env);
    assert!(notify.wait_for("WATCHDOG=1", Duration::from_secs(10)), "no watchdog pings at all");

    let worker = thread_named(gw.pid().as_raw(), "gw-worker-1");
    let wedged = WedgedThread::stop(worker);
    // The control thread notices (an event: its log line and STATUS), then sends no more pings
    // for as long as the worker stays stopped: a window of three ping intervals.
    assert!(
        eventually(Duration::from_secs(10), || gw.stderr().contains("withholding watchdog pings").then_some(()))
            .is_some(),
        "the stalled worker was not noticed:\n{}",
        gw.stderr()
    );
    notify.drain();
    let mut during = Vec::new();
    while let Some(m) = notify.next(Duration::from_secs(3)) {
        during.push(m);
        if during.len() > 20 {
            break;
        }
    }
    assert!(!during.iter().any(|m| m.contains("WATCHDOG=1")), "pings went on with a worker stopped: {during:?}");
    // Running again: pings resume, and say so once.
    drop(wedged);
    assert!(notify.wait_for("WATCHDOG=1", Duration::from_secs(10)), "pings did not resume:\n{}", gw.stderr());
    assert!(gw.stderr().contains("watchdog pings resume"), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_that_reaches_the_drain_deadline_cuts_in_flight_requests_and_exits_zero() {
    let u = Upstream::start("u");
    let mut gw = Gateway::start(|p| config(p, 1, &u).replace("drain_timeout = \"10s\"", "drain_timeout = \"1s\""));
    // A request the upstream answers only after 60 s.
    let mut slow = TcpStream::connect(gw.ports.listen).unwrap();
    slow.write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || (u.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1)
            .then_some(()))
        .is_some()
    );
    gw.signal(Signal::SIGTERM);
    // Not ready while draining (a load balancer stops sending new clients).
    let readyz = eventually(Duration::from_secs(5), || {
        raw_get(gw.ports.metrics, "/readyz").ok().filter(|r| r.starts_with("HTTP/1.1 503"))
    });
    assert!(readyz.is_some(), "/readyz did not turn 503 while draining");
    // At the deadline the request is cut: the client sees the connection end without a response.
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let end = slow.read_to_end(&mut got);
    assert!(end.is_ok() || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset), "{end:?}");
    assert!(got.is_empty(), "a response arrived: {}", String::from_utf8_lossy(&got));
    let status = tokio::task::spawn_blocking(move || {
        let status = gw.wait_exit(Duration::from_secs(20));
        (status, gw.stderr())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit status {}:\n{}", status.0, status.1);
    assert!(status.1.contains("drain deadline reached"), "{}", status.1);
}
