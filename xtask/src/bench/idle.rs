//! Memory per idle keep-alive connection: open many connections to a subject, measure its
//! memory (PSS and RSS of its process tree) before, with the connections merely open, after one
//! request on each (the keep-alive state that matters), and after they are closed again.

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::{
    http,
    procfs::{
        Memory, Tree,
        tcp::{self, Ends},
    },
};

/// How long the subject may take to accept (or notice the closing of) all the connections.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the connections sit idle after their request before memory is measured.
const IDLE_SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct IdleResult {
    pub connections: usize,
    pub before: Memory,
    /// Connected, no request sent yet.
    pub connected: Memory,
    /// One request answered on each, then idle.
    pub after_request: Memory,
    /// All closed again (what the allocator kept).
    pub released: Memory,
}

impl IdleResult {
    /// PSS growth per connection from `before` to `state`, in bytes.
    pub fn pss_per_connection(&self, state: &Memory) -> f64 {
        (state.pss_bytes as f64 - self.before.pss_bytes as f64) / self.connections as f64
    }

    pub fn rss_per_connection(&self, state: &Memory) -> f64 {
        (state.rss_bytes as f64 - self.before.rss_bytes as f64) / self.connections as f64
    }
}

/// Raises this process's open-file limit to its hard limit (children inherit it: the subject
/// needs one descriptor per connection too) and returns it.
pub fn raise_fd_limit() -> Result<u64> {
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(RLIMIT_NOFILE)")?;
    Ok(hard)
}

/// Opens `n` connections to `addr` (served by `tree`), sends `GET path` on each one after the
/// other (sequentially, so a proxy needs a single upstream connection) and measures the
/// subject's memory at each step. The connections are closed before this returns.
pub fn measure(tree: Tree, addr: SocketAddr, path: &str, n: usize) -> Result<IdleResult> {
    let request = |conn: &mut TcpStream| -> Result<()> {
        let response = http::request(conn, addr, path)?;
        if response.status != 200 {
            bail!("status {}", response.status);
        }
        Ok(())
    };
    measure_with(tree, addr, n, || http::connect(addr), request)
}

/// `measure` with any kind of connection to the subject listening on `addr`: `connect` opens
/// one (TLS: with its handshake done), `request` sends one request on it and checks the answer.
pub fn measure_with<C>(
    tree: Tree,
    addr: SocketAddr,
    n: usize,
    connect: impl FnMut() -> Result<C>,
    request: impl FnMut(&mut C) -> Result<()>,
) -> Result<IdleResult> {
    measure_with_idle(tree, addr, n, connect, request, |_| Ok(()))
}

/// `measure_with`, and `idle` looks at the idle connections (after their memory is measured,
/// before they are closed): e.g. the kernel's count of kTLS sockets, or a second request.
pub fn measure_with_idle<C>(
    tree: Tree,
    addr: SocketAddr,
    n: usize,
    mut connect: impl FnMut() -> Result<C>,
    mut request: impl FnMut(&mut C) -> Result<()>,
    idle: impl FnOnce(&mut [C]) -> Result<()>,
) -> Result<IdleResult> {
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if n as u64 + 64 > soft {
        bail!("{n} idle connections need more descriptors than the limit of {soft} (see raise_fd_limit)");
    }
    // The previous measurement waited until the subject had closed its connections.
    let before = tree.memory()?;
    let fds_before = tree.open_fds()?;

    let drops_before = tcp::listen_drops()?;
    let mut conns: Vec<C> = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(connect().with_context(|| format!("idle connection {i} of {n}"))?);
    }
    // Counted as the subject sees them (see procfs/tcp.rs): its descriptor count also moves
    // with connections that are none of ours.
    let clients = tcp::own_connections_to(addr)?;
    if clients.len() != n {
        bail!("{} of the {n} connections to {addr} are open on this side", clients.len());
    }
    wait_for_held(tree, &clients, "the connections to be accepted", |held| held == n).with_context(|| {
        let drops = tcp::listen_drops().map(|d| d.saturating_sub(drops_before));
        format!("the kernel turned away {drops:?} connections at full accept queues (ListenOverflows + ListenDrops) meanwhile")
    })?;
    let connected = tree.memory()?;
    // What a descriptor count would have said (it used to be the criterion): shown when it
    // differs, as the evidence of what else the subject opened or closed meanwhile.
    let fds = tree.open_fds()?;
    if fds != fds_before + n {
        eprintln!(
            "xtask: process {} accepted all {n} connections, but its descriptors went from {fds_before} to {fds} \
             (others opened or closed meanwhile)",
            tree.0
        );
    }

    for (i, conn) in conns.iter_mut().enumerate() {
        request(conn).with_context(|| format!("request on idle connection {i}"))?;
    }
    // "Idle" means idle for a moment: long enough for a proxy to do what it does with idle
    // connections (gatewayd parks them after 1 s, see listener/conn.rs, and hands the memory
    // they freed back at its first one-second tick without requests, see worker/collect.rs:
    // up to 3 s after the last request, so 3 s measured a race).
    std::thread::sleep(IDLE_SETTLE);
    let after_request = tree.memory()?;
    idle(&mut conns)?;

    drop(conns);
    // A proxy keeps the upstream connection(s) these requests opened: only the client
    // connections must be gone.
    wait_for_held(tree, &clients, "the connections to be closed", |held| held == 0)?;
    let released = tree.memory()?;
    Ok(IdleResult { connections: n, before, connected, after_request, released })
}

/// Polls until `done` holds for the number of `clients` whose other end `tree` holds.
fn wait_for_held(tree: Tree, clients: &HashSet<Ends>, what: &str, done: impl Fn(usize) -> bool) -> Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let held = tcp::held_by(tree, clients)?;
        if done(held) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "process {} holds {held} of the {} client connections after {SETTLE_TIMEOUT:?}, waiting for {what}",
                tree.0,
                clients.len()
            );
        }
        // Reading /proc/net/tcp with tens of thousands of sockets takes milliseconds.
        std::thread::sleep(Duration::from_millis(100));
    }
}
