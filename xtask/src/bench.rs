//! `cargo xtask bench <name>`: benchmarks that measure the speed goals (never timed assertions in
//! tests). Each writes `bench/results/<name>.md`.
//!
//! The parts every benchmark shares live in the submodules: CPU pinning that keeps the subject
//! apart from the load (`cpus`), pinned processes stopped on drop and awaited by polling
//! (`process`), CPU time, memory and descriptors of a process tree (`procfs`), the load
//! generators (`load`: wrk, oha), idle-connection memory (`idle`), and the report (`report`).
//! Runs are interleaved and rotated (A B C, B C A, …) so that drift on a shared machine, and what
//! one run leaves behind for the next, hit every subject alike.

mod auth;
pub mod c100k;
mod callgrind;
mod cpu_compare;
mod cpus;
mod flood;
mod h2;
mod harness;
mod http;
mod idle;
pub mod ktls_idle;
mod load;
mod process;
mod procfs;
mod proxy;
mod ratelimit;
mod report;
mod slow_clients;
mod tls;
mod xdp;

use std::{
    fs,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
};

use anyhow::{Context as _, Result};

use crate::run::target_dir;

#[derive(clap::Args)]
pub struct Options {
    /// The benchmark to run.
    #[arg(value_enum)]
    target: Target,
    /// Measured runs of each kind per subject (interleaved); the report shows their medians.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Seconds each measured load run lasts [default: 10; tls: 5; flood: 5 per cell].
    #[arg(long)]
    duration: Option<u64>,
    /// Concurrent keep-alive connections of the load generators (tls: client threads, each with
    /// one connection at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Idle keep-alive connections opened to measure memory per connection; a list measures
    /// each count in turn (memory per connection must hold at every scale, not only the one
    /// that amortises fixed costs best).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000, 2_000, 10_000])]
    idle_connections: Vec<usize>,
    /// proxy: only the idle-connection memory rounds, after the warm-up (a minute or two;
    /// writes results/proxy-idle.md).
    #[arg(long)]
    idle_only: bool,
    /// The closed-loop load generator for the highest rate (proxy).
    #[arg(long, value_enum, default_value_t = load::MaxLoad::Wrk)]
    load: load::MaxLoad,
    #[command(flatten)]
    flood: flood::Flags,
    /// callgrind: the client protocol of the measured requests.
    #[arg(long, value_enum, default_value_t = callgrind::Proto::H1)]
    proto: callgrind::Proto,
    /// callgrind (nginx), cpu-compare (nginx, haproxy): also measure these reference proxies,
    /// after the binaries.
    #[arg(long, value_enum, value_delimiter = ',')]
    against: Vec<callgrind::Against>,
    /// cpu-compare: count every syscall kind, page faults and TCP segments per request too
    /// (writes results/syscalls.md).
    #[arg(long)]
    syscalls: bool,
    /// cpu-compare: open-loop load at this many requests/s (oha -q) instead of closed-loop wrk;
    /// callgrind: the measured requests sent by oha at this rate (one wake-up per request).
    #[arg(long)]
    rate: Option<u64>,
    /// callgrind: measured requests per subject [default: h1, https: 4000; h2, h2s: 20000];
    /// slow-clients: clients per case [default: 1000].
    #[arg(long)]
    requests: Option<u64>,
    /// callgrind h2, h2s: h2load's streams per connection (`-m`); given, h2load opens
    /// `--connections` connections (`--streams 1`: the `-c64 -m1` shape of `bench h2`)
    /// [default: -c16 -m16].
    #[arg(long)]
    streams: Option<usize>,
    /// callgrind, cpu-compare: the gatewayd binaries to compare (e.g. a build of main and one of
    /// a branch), in this order; slow-clients, ktls-idle: the gatewayd to measure [default: the
    /// release build].
    #[arg(value_name = "BIN")]
    bins: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Target {
    /// gatewayd vs nginx as a reverse proxy vs the upstream directly: rps, latency, CPU, memory.
    Proxy,
    /// The XDP guard: ns per packet of its paths next to an empty XDP program (BPF_PROG_TEST_RUN).
    Xdp,
    /// Token validation (µs, cold and cached, RS256/ES256/EdDSA) and an authenticated route vs
    /// an open one through gatewayd.
    Auth,
    /// TLS termination, gatewayd vs nginx with the same certificates: full handshakes/s (ECDSA
    /// P-256, RSA-2048), resumed handshakes/s, 1 MiB responses over keep-alive, CPU per unit.
    Tls,
    /// Rate-limit decisions: ns per memory decision in process; an open route vs a memory- and a
    /// Redis-limited one through gatewayd, and Redis round trips per request.
    Ratelimit,
    /// 100,000 concurrent keep-alive connections in a systemd-booted guest: RSS per connection,
    /// time to open them, p99 of a separate client.
    C100k,
    /// Memory per idle TLS keep-alive connection with kTLS and with rustls, in a Debian 12
    /// guest (qemu; the host kernel has no kTLS): the kTLS section of bench/results/tls.md.
    KtlsIdle,
    /// HTTP/2 clients (h2c and ALPN h2) in front of an HTTP/1.1 upstream: gatewayd vs nginx vs
    /// HAProxy vs the upstream directly: rps, CPU per request, latency at a fixed rate.
    H2,
    /// Legitimate clients under SYN, UDP, connection, HTTP and rotating-source floods, per
    /// defence: kernel defaults, nftables meters, the guard in XDP and TC mode (needs root).
    Flood,
    /// The guard in native XDP with and without `[xdp] steering = "cpumap"`, in the flood
    /// topology: success, p99 and CPU per request (needs root).
    Steering,
    /// Instructions per proxied request under callgrind of each BIN (`--proto`, `--against
    /// nginx`): repeatable on a busy machine.
    Callgrind,
    /// CPU per proxied request of each BIN (before/after a change; `--against nginx,haproxy`),
    /// interleaved, with perf's context switches and syscalls per request (`--syscalls`: every
    /// kind, and TCP segments).
    CpuCompare,
    /// Slow readers: memory, upstream connections and response buffering of gatewayd and nginx
    /// while clients read nothing (`--requests`: clients, `--duration`: seconds of waiting).
    SlowClients,
}

impl Options {
    /// Each measured run's length: `--duration`, else the benchmark's default.
    fn duration(&self, default_secs: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.duration.unwrap_or(default_secs))
    }
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.bins.is_empty()
        && !matches!(opts.target, Target::Callgrind | Target::CpuCompare | Target::SlowClients | Target::KtlsIdle)
    {
        anyhow::bail!("only callgrind, cpu-compare, slow-clients and ktls-idle take binaries ({:?})", opts.bins);
    }
    if opts.idle_only && !matches!(opts.target, Target::Proxy) {
        anyhow::bail!("--idle-only is a mode of bench proxy only");
    }
    match opts.target {
        Target::Proxy => proxy::run(opts),
        Target::Xdp => xdp::run(),
        Target::Auth => auth::run(opts),
        Target::Tls => tls::run(opts),
        Target::Ratelimit => ratelimit::run(opts),
        Target::C100k => c100k::run(),
        Target::KtlsIdle => ktls_idle::run(opts.bins.first()),
        Target::Flood => flood::run(opts),
        Target::Steering => flood::steering::run(opts),
        Target::H2 => h2::run(opts),
        Target::Callgrind => callgrind::run(opts),
        Target::CpuCompare => cpu_compare::run(opts),
        Target::SlowClients => slow_clients::run(opts),
    }
}

/// Something a benchmark sends load to, and the processes whose cost is measured.
pub struct Subject {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub tree: procfs::Tree,
}

impl Subject {
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

/// How much of some CPUs' capacity *other* processes (builds, other tenants) used while a
/// measurement ran: the noise indicator of every raw run.
pub struct Background<'a> {
    /// The CPUs that should have been ours alone.
    pub cpus: &'a cpus::CpuList,
    /// Our processes pinned there (their CPU time is not background).
    pub own: Vec<procfs::Tree>,
}

impl Background<'_> {
    /// Runs `f`; returns its result and the share (0 to 1) of `cpus`' capacity that processes
    /// other than `own` were busy during it.
    pub fn measure<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let own = |trees: &[procfs::Tree]| -> Result<std::time::Duration> {
            trees.iter().map(|t| t.cpu_time()).sum::<Result<std::time::Duration>>()
        };
        let start = std::time::Instant::now();
        let busy = procfs::cpus_busy_time(&self.cpus.0)?;
        let mine = own(&self.own)?;
        let result = f()?;
        let busy = procfs::cpus_busy_time(&self.cpus.0)?.saturating_sub(busy);
        let mine = own(&self.own)?.saturating_sub(mine);
        let capacity = start.elapsed().as_secs_f64() * self.cpus.len() as f64;
        Ok((result, (busy.saturating_sub(mine).as_secs_f64() / capacity).clamp(0.0, 1.0)))
    }
}

/// Runs `f` for every subject, `reps` times, interleaved, each round starting one subject later
/// (rep 1: A B C, rep 2: B C A, rep 3: C A B, …); returns the results per subject, in rep order.
///
/// Rotated rather than A B C every round: with a fixed order each subject always ran right
/// after the same neighbour (in `bench h2`, gatewayd after the origin on the same CPU) and at the
/// same point of the round, so whatever a run leaves behind (connections closing, the load
/// generator's exit, a neighbour's periodic work) fell on the same subject every round. The
/// slowest 0.1 % of pooled fixed-rate runs rests on a handful of such events.
pub fn interleave<S, T>(reps: u32, subjects: &[S], mut f: impl FnMut(u32, &S) -> Result<T>) -> Result<Vec<Vec<T>>> {
    let mut results: Vec<Vec<T>> = subjects.iter().map(|_| Vec::new()).collect();
    let n = subjects.len();
    for rep in 0..reps {
        for k in 0..n {
            let i = (rep as usize + k) % n;
            results[i].push(f(rep, &subjects[i])?);
        }
    }
    Ok(results)
}

/// A free loopback port (bound, then released for the subject to bind).
pub fn free_port() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `target/bench/<name>/`, emptied: configs and logs of this run, kept for inspection.
pub fn run_dir(name: &str) -> Result<PathBuf> {
    let dir = target_dir().join("bench").join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// The release gatewayd binary (built by the benchmark first).
pub fn gatewayd_binary() -> PathBuf {
    target_dir().join("release").join("gatewayd")
}

#[cfg(test)]
mod tests;
