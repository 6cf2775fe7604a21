//! The guest side of `bench ktls-idle` (`xtask ktls-idle-client`, hidden): idle TLS keep-alive
//! connections to one gatewayd listener, measured with `idle.rs` like `bench tls` on the host,
//! plus what only the guest's kernel can tell (kTLS sockets, slab memory). One line per count
//! on stdout (`ktls-idle: key=value ...`), which the host parses from the console.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

use super::smaps::Snapshot;
use crate::bench::{
    idle::{self, raise_fd_limit},
    procfs::Tree,
    tls::client::{KeepAlives, KeyKind, Target},
};

/// Prefix of the result lines on the guest's console.
pub const LINE_PREFIX: &str = "ktls-idle: ";
/// Prefix of the lines saying where gatewayd's memory grew.
pub const SMAPS_PREFIX: &str = "ktls-idle-smaps: ";
/// What each connection asks for, and the answer it must get (gatewayd's demo upstream).
const PATH: &str = "/demo/hello";
const BODY: &[u8] = b"Hello from the gatewayd demo upstream!\n";
/// Idle (parked) connections that must answer a second request before they are closed.
const SECOND_REQUESTS: usize = 100;
/// After the warm-up's connections closed: long enough for gatewayd's workers to hand the
/// memory they freed back (a forced collection at their first idle one-second tick, see
/// worker/collect.rs) before the baseline is taken.
const WARMUP_SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(clap::Args)]
pub struct Options {
    /// gatewayd's process id (its memory is measured).
    #[arg(long)]
    pid: u32,
    /// The TLS listener to connect to.
    #[arg(long)]
    addr: SocketAddr,
    /// The server certificate (PEM) the listener must present.
    #[arg(long)]
    cert: PathBuf,
    /// Idle connections to open, measured one count after the other.
    #[arg(long, value_delimiter = ',')]
    counts: Vec<usize>,
    /// What the listener does with TLS after the handshake: `ktls` (the kernel must hold every
    /// idle connection's session) or `userspace` (it must hold none).
    #[arg(long)]
    mode: String,
    /// Connections of the warm-up before the baseline: opened, one request each, left idle
    /// (parked), a second request each, closed, as a gateway in service has done long before
    /// (its code is resident, its allocator and runtime have grown their once-per-process
    /// structures). The memory before it is kept as the fresh-process baseline.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
}

/// One count through one listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub mode: String,
    pub connections: u64,
    /// gatewayd's RSS and its anonymous part before anything (the fresh process), in bytes.
    pub fresh_rss: u64,
    pub fresh_anon: u64,
    /// gatewayd's RSS in bytes: before (after the warm-up, if any), with the connections handshaken, idle after one request
    /// each, closed again.
    pub before_rss: u64,
    pub connected_rss: u64,
    pub idle_rss: u64,
    pub closed_rss: u64,
    /// The anonymous part of gatewayd's RSS before and idle (the rest is its binary's code and
    /// data pages it ran: see `procfs::Memory`).
    pub before_anon: u64,
    pub idle_anon: u64,
    /// `TlsCurrTxSw` / `TlsCurrRxSw` of `/proc/net/tls_stat` while idle.
    pub tls_tx: u64,
    pub tls_rx: u64,
    /// `Slab` of `/proc/meminfo` in bytes, before and while idle.
    pub slab_before: u64,
    pub slab_idle: u64,
}

impl Sample {
    pub fn per_connection(&self, rss: u64) -> f64 {
        (rss as f64 - self.before_rss as f64) / self.connections as f64
    }

    pub fn rss_per_connection(&self) -> f64 {
        self.per_connection(self.idle_rss)
    }

    /// Growth of the anonymous memory per connection, idle.
    pub fn anon_per_connection(&self) -> f64 {
        (self.idle_anon as f64 - self.before_anon as f64) / self.connections as f64
    }

    /// RSS growth per idle connection over the fresh process's (the warm-up's growth counts).
    pub fn fresh_rss_per_connection(&self) -> f64 {
        (self.idle_rss as f64 - self.fresh_rss as f64) / self.connections as f64
    }

    pub fn fresh_anon_per_connection(&self) -> f64 {
        (self.idle_anon as f64 - self.fresh_anon as f64) / self.connections as f64
    }

    pub fn slab_per_connection(&self) -> f64 {
        (self.slab_idle as f64 - self.slab_before as f64) / self.connections as f64
    }

    fn line(&self) -> String {
        format!(
            "{LINE_PREFIX}mode={} connections={} fresh_rss={} fresh_anon={} before_rss={} connected_rss={} idle_rss={} closed_rss={} \
             before_anon={} idle_anon={} tls_tx={} tls_rx={} slab_before={} slab_idle={}",
            self.mode,
            self.connections,
            self.fresh_rss,
            self.fresh_anon,
            self.before_rss,
            self.connected_rss,
            self.idle_rss,
            self.closed_rss,
            self.before_anon,
            self.idle_anon,
            self.tls_tx,
            self.tls_rx,
            self.slab_before,
            self.slab_idle
        )
    }

    /// The text after `LINE_PREFIX`.
    pub fn parse(text: &str) -> Result<Sample> {
        let field = |key: &str| -> Result<&str> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .with_context(|| format!("no {key}= in {text:?}"))
        };
        let n = |key: &str| -> Result<u64> { field(key)?.parse().with_context(|| format!("{key} in {text:?}")) };
        Ok(Sample {
            mode: field("mode")?.to_owned(),
            connections: n("connections")?,
            fresh_rss: n("fresh_rss")?,
            fresh_anon: n("fresh_anon")?,
            before_rss: n("before_rss")?,
            connected_rss: n("connected_rss")?,
            idle_rss: n("idle_rss")?,
            closed_rss: n("closed_rss")?,
            before_anon: n("before_anon")?,
            idle_anon: n("idle_anon")?,
            tls_tx: n("tls_tx")?,
            tls_rx: n("tls_rx")?,
            slab_before: n("slab_before")?,
            slab_idle: n("slab_idle")?,
        })
    }
}

pub fn run(opts: &Options) -> Result<()> {
    raise_fd_limit()?;
    if !matches!(opts.mode.as_str(), "ktls" | "userspace") {
        bail!("--mode must be ktls or userspace, not {:?}", opts.mode);
    }
    let leaf = CertificateDer::from_pem_file(&opts.cert).with_context(|| format!("reading {}", opts.cert.display()))?;
    let client = KeepAlives::new(&Target { addr: opts.addr, leaf, key: KeyKind::EcdsaP256 })?;
    let tree = Tree(opts.pid);
    let fresh = tree.memory()?;
    if opts.warmup > 0 {
        eprintln!("ktls-idle-client: warm-up: {} {} connections to {}", opts.warmup, opts.mode, opts.addr);
        idle::measure_with_idle(
            tree,
            opts.addr,
            opts.warmup,
            || client.open(),
            |c| c.get(PATH, BODY),
            |conns| conns.iter_mut().try_for_each(|c| c.get(PATH, BODY)),
        )
        .context("warm-up")?;
        std::thread::sleep(WARMUP_SETTLE);
    }
    for &count in &opts.counts {
        eprintln!("ktls-idle-client: {count} idle {} connections to {}", opts.mode, opts.addr);
        let slab_before = slab_bytes()?;
        let maps_before = Snapshot::read(opts.pid)?;
        let mut seen = None;
        let result = idle::measure_with_idle(
            tree,
            opts.addr,
            count,
            || client.open(),
            |c| c.get(PATH, BODY),
            |conns| {
                let (tx, rx) = kernel_tls_sockets()?;
                seen = Some((tx, rx, slab_bytes()?));
                print_changes(&opts.mode, count, "idle", &maps_before, &Snapshot::read(opts.pid)?);
                // The client is rustls: every kernel TLS socket is one of gatewayd's.
                let offloaded = tx >= count as u64 && rx >= count as u64;
                match opts.mode.as_str() {
                    "ktls" if !offloaded => {
                        bail!("{count} idle kTLS connections, but the kernel holds {tx} TX / {rx} RX TLS sockets")
                    }
                    "userspace" if tx + rx > 0 => {
                        bail!("the kernel holds {tx} TX / {rx} RX TLS sockets for a listener with ktls = false")
                    }
                    _ => {}
                }
                for (i, c) in conns.iter_mut().take(SECOND_REQUESTS).enumerate() {
                    c.get(PATH, BODY).with_context(|| format!("second request on parked connection {i}"))?;
                }
                Ok(())
            },
        )?;
        let (tls_tx, tls_rx, slab_idle) = seen.context("the idle connections were never looked at")?;
        print_changes(&opts.mode, count, "closed", &maps_before, &Snapshot::read(opts.pid)?);
        let sample = Sample {
            mode: opts.mode.clone(),
            connections: count as u64,
            fresh_rss: fresh.rss_bytes,
            fresh_anon: fresh.anon_bytes,
            before_rss: result.before.rss_bytes,
            connected_rss: result.connected.rss_bytes,
            idle_rss: result.after_request.rss_bytes,
            closed_rss: result.released.rss_bytes,
            before_anon: result.before.anon_bytes,
            idle_anon: result.after_request.anon_bytes,
            tls_tx,
            tls_rx,
            slab_before,
            slab_idle,
        };
        println!("{}", sample.line());
    }
    Ok(())
}

/// gatewayd's mappings whose resident size changed by 64 KiB or more since before the count
/// (diagnostics on the console: which part of the growth is heap, stack or a library's).
fn print_changes(mode: &str, count: usize, state: &str, before: &Snapshot, now: &Snapshot) {
    for (start, name, was, is) in before.changes(now, 64 * 1024) {
        println!(
            "{SMAPS_PREFIX}mode={mode} connections={count} state={state} mapping={start:x} {name}: {} -> {} KiB",
            was / 1024,
            is / 1024
        );
    }
}

/// `TlsCurrTxSw` and `TlsCurrRxSw`: sockets whose TLS the kernel does now (software crypto).
fn kernel_tls_sockets() -> Result<(u64, u64)> {
    let stat =
        std::fs::read_to_string("/proc/net/tls_stat").context("/proc/net/tls_stat (is the tls module loaded?)")?;
    let counter = |name: &str| -> Result<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/net/tls_stat"))
    };
    Ok((counter("TlsCurrTxSw")?, counter("TlsCurrRxSw")?))
}

/// The kernel's slab memory (`Slab:` in `/proc/meminfo`), in bytes.
fn slab_bytes() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:")?.split_whitespace().next()?.parse().ok())
        .context("no Slab: in /proc/meminfo")?;
    Ok(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_survives_the_console() -> Result<()> {
        let sample = Sample {
            mode: "ktls".into(),
            connections: 1000,
            fresh_rss: 9_000_000,
            fresh_anon: 3_500_000,
            before_rss: 10_000_000,
            connected_rss: 40_000_000,
            idle_rss: 13_000_000,
            closed_rss: 13_500_000,
            before_anon: 4_000_000,
            idle_anon: 6_500_000,
            tls_tx: 1000,
            tls_rx: 1001,
            slab_before: 1 << 20,
            slab_idle: 5 << 20,
        };
        let line = sample.line();
        let parsed = Sample::parse(line.strip_prefix(LINE_PREFIX).context("prefix")?)?;
        assert_eq!(parsed, sample);
        assert_eq!(parsed.rss_per_connection(), 3000.0);
        assert_eq!(parsed.anon_per_connection(), 2500.0);
        assert_eq!(parsed.fresh_rss_per_connection(), 4000.0);
        assert_eq!(parsed.fresh_anon_per_connection(), 3000.0);
        assert_eq!(parsed.per_connection(parsed.connected_rss), 30_000.0);
        assert!(Sample::parse("mode=ktls connections=1").is_err());
        Ok(())
    }
}
