//! `cargo xtask bench ktls-idle` (issue 11): memory per idle TLS keep-alive connection with kTLS,
//! measured where kTLS exists (the host kernel has no `CONFIG_TLS`): a Debian 12 guest (Linux 6.1,
//! the `tls` module) under qemu, a release gatewayd with two TLS listeners, one offloading to the
//! kernel and one keeping TLS in rustls (`ktls = false`), so both figures come from the same
//! kernel, binary and allocator.
//!
//! The client is this xtask binary (`ktls-idle-client`, see `client.rs`), copied into the guest:
//! it measures gatewayd's memory exactly as `bench tls` does on the host (`idle.rs`: RSS/PSS
//! growth per connection after one request each and `IDLE_SETTLE` idle), and also reads the
//! kernel's count of kTLS sockets and its slab memory while the connections sit idle. Writes the
//! "kTLS idle memory" section of `bench/results/tls.md` (`bench tls` keeps it).

pub mod client;

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context as _, Result, bail};

use self::client::{LINE_PREFIX, Sample};
use super::{
    harness::release_gatewayd,
    report::{Report, git_revision, num},
};
use crate::{
    cmd::workspace_root,
    gwconf::GwConf,
    vm::{self, Guest, Suite},
};

/// Connection counts measured through the kTLS listener, and through the rustls one.
const KTLS_COUNTS: &str = "1000,2000";
const USERSPACE_COUNTS: &str = "1000";
/// The goal (issue 11) for memory per idle kTLS connection.
pub const GOAL_BYTES: f64 = 4.0 * 1024.0;
const KTLS_ADDR: &str = "127.0.0.1:8443";
const USERSPACE_ADDR: &str = "127.0.0.1:8444";
const METRICS_ADDR: &str = "127.0.0.1:9090";
/// Lines of gatewayd's `/metrics` the script prints for the report.
const METRIC_PREFIX: &str = "ktls-idle-metric: ";
const GUEST_VERSION_PREFIX: &str = "ktls-idle-kernel: ";

pub fn run() -> Result<()> {
    let root = workspace_root();
    let gatewayd = release_gatewayd()?;
    let guest = Guest {
        suite: Suite::Bookworm,
        modules: vec!["tls".into()],
        files: vec![
            (gatewayd, "/usr/bin/gatewayd".into()),
            (std::env::current_exe().context("the xtask binary")?, "/usr/bin/xtask".into()),
        ],
        script: script(),
        timeout: Duration::from_secs(600),
        cpus: 2,
    };
    eprintln!("xtask: bench ktls-idle: booting Debian 12 with the tls module (TCG: a few minutes)");
    let console = vm::run(root, "bench-ktls-idle", &guest)?;
    let samples: Vec<Sample> =
        console.lines().filter_map(|l| l.trim().strip_prefix(LINE_PREFIX)).map(Sample::parse).collect::<Result<_>>()?;
    let metrics: Vec<&str> = console.lines().filter_map(|l| l.trim().strip_prefix(METRIC_PREFIX)).collect();
    let kernel = console.lines().find_map(|l| l.trim().strip_prefix(GUEST_VERSION_PREFIX)).unwrap_or("?");
    check(&samples, &metrics)?;
    for s in &samples {
        eprintln!(
            "xtask:   {} × {}: {:.0} B per idle connection (RSS), kernel slab {:.0} B",
            s.connections,
            s.mode,
            s.rss_per_connection(),
            s.slab_per_connection()
        );
    }
    let rep = report(&samples, &metrics, kernel);
    let path = rep.write_section("tls", "Benchmark: tls", "ktls-idle")?;
    eprintln!("xtask: bench ktls-idle: wrote {}", path.display());
    Ok(())
}

/// Every count of both modes was measured, and gatewayd counted the kTLS listener's
/// connections as offloaded and the other's as userspace.
fn check(samples: &[Sample], metrics: &[&str]) -> Result<()> {
    for (mode, counts) in [("ktls", KTLS_COUNTS), ("userspace", USERSPACE_COUNTS)] {
        let mut want = 0;
        for count in counts.split(',') {
            let count: u64 = count.parse()?;
            if !samples.iter().any(|s| s.mode == mode && s.connections == count) {
                bail!("no measurement of {count} {mode} connections in the guest's output");
            }
            want += count;
        }
        let counted = connections_metric(metrics, mode);
        if counted < want {
            bail!("gatewayd counted {counted} connections with mode=\"{mode}\" on listener {mode}, want ≥ {want}");
        }
    }
    Ok(())
}

/// `gateway_tls_connections_total{listener="L",mode="L"}` (both listeners are named after their mode).
fn connections_metric(metrics: &[&str], mode: &str) -> u64 {
    metrics
        .iter()
        .filter(|l| l.starts_with("gateway_tls_connections_total{"))
        .filter(|l| l.contains(&format!("listener=\"{mode}\"")) && l.contains(&format!("mode=\"{mode}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The guest: certificates from gatewayd's own helper, gatewayd on both listeners, then the
/// client against each, then gatewayd's TLS metrics.
fn script() -> String {
    let conf = GwConf::new(2)
        .server("log_level = \"warn\"")
        // Opening thousands of connections under TCG takes minutes: none may time out meanwhile.
        .raw("[server.limits]\nidle_timeout = \"1h\"\n\n")
        .tls_listener("ktls", KTLS_ADDR, "/tmp/pki/server.crt", "/tmp/pki/server.key", "")
        .tls_listener("userspace", USERSPACE_ADDR, "/tmp/pki/server.crt", "/tmp/pki/server.key", "ktls = false\n")
        .metrics(METRICS_ADDR)
        .no_admin()
        .demo()
        .build();
    let mut s = String::from("set -e\nulimit -n 65536\n");
    let _ = writeln!(s, "echo \"{GUEST_VERSION_PREFIX}$(uname -r)\"");
    s.push_str("gatewayd certs init --out /tmp/pki --cn localhost --san localhost,127.0.0.1 --key-type ecdsa-p256 > /dev/null\n");
    let _ = write!(s, "cat > /tmp/gw.toml <<'EOF'\n{conf}EOF\n");
    let _ = write!(
        s,
        r#"gatewayd --config /tmp/gw.toml > /tmp/gw.log 2>&1 &
pid=$!
i=0
until wget -q -O /dev/null http://{METRICS_ADDR}/readyz 2>/dev/null; do
  i=$((i+1)); [ $i -lt 300 ] || {{ echo "gatewayd not ready within 60 s"; cat /tmp/gw.log; exit 1; }}; sleep 0.2
done
grep -q "kTLS available" /tmp/gw.log || {{ echo "gatewayd did not find kTLS"; cat /tmp/gw.log; exit 1; }}
client() {{
  HOME=/root xtask ktls-idle-client --pid $pid --cert /tmp/pki/server.crt "$@" \
    || {{ echo "client failed ($*)"; tail -20 /tmp/gw.log; exit 1; }}
}}
client --mode ktls --addr {KTLS_ADDR} --counts {KTLS_COUNTS}
client --mode userspace --addr {USERSPACE_ADDR} --counts {USERSPACE_COUNTS}
wget -q -O /tmp/metrics http://{METRICS_ADDR}/metrics
grep -E '^gateway_(tls_connections_total|ktls_supported)' /tmp/metrics | sed 's/^/{METRIC_PREFIX}/'
kill $pid
"#
    );
    s
}

fn report(samples: &[Sample], metrics: &[&str], kernel: &str) -> Report {
    let mut rep = Report::default();
    rep.heading("kTLS idle memory (VM, Debian 12 6.1)");
    rep.paragraph(&format!(
        "Memory per idle TLS 1.3 keep-alive connection with the session in the kernel (kTLS), measured where \
         kTLS exists: a qemu guest (TCG, 2 vCPUs, 1.5 GiB) with Debian 12's kernel {kernel} and its `tls` \
         module, the release gatewayd (2 workers) with two TLS listeners on the same ECDSA P-256 certificate, \
         one offloading to the kernel after the handshake (the default) and one with `ktls = false` \
         (rustls keeps the session), both proxying `GET /demo/hello` to the built-in demo upstream. \
         The client (`xtask ktls-idle-client`, xtask's rustls client inside the guest) opens N connections \
         one after the other (TLS 1.3, AES-128-GCM, X25519), sends one request on each, leaves them idle \
         for 5 s (gatewayd parks an idle connection after 1 s), and measures as `bench tls` does on the host: \
         growth of gatewayd's RSS (= PSS, one process) over its idle baseline, per connection. While they \
         sit idle it also reads `/proc/net/tls_stat` (`TlsCurrTxSw`/`TlsCurrRxSw`: sockets with kernel TLS \
         now) and the kernel's slab memory (`Slab` in `/proc/meminfo`; both ends of every loopback \
         connection, so it is a ceiling for the server's kernel share), then sends a second request on the \
         first 100 connections (parked ones must still serve). Goal: ≤ {} B per idle kTLS connection \
         (userspace memory). Revision {}.",
        num(GOAL_BYTES, 0),
        git_revision()
    ));
    let mut rows = Vec::new();
    for s in samples {
        let goal = match s.mode.as_str() {
            "ktls" if s.rss_per_connection() <= GOAL_BYTES => "met (≤ 4 KiB)",
            "ktls" => "**not met** (≤ 4 KiB)",
            _ if s.rss_per_connection() <= super::tls::keepalive::IDLE_GOAL_BYTES => "met (≤ 16 KiB)",
            _ => "**not met** (≤ 16 KiB)",
        };
        rows.push(vec![
            s.connections.to_string(),
            if s.mode == "ktls" { "kTLS".to_owned() } else { "userspace (rustls)".to_owned() },
            num(s.per_connection(s.connected_rss), 0),
            num(s.rss_per_connection(), 0),
            num(s.per_connection(s.closed_rss), 0),
            format!("{} / {}", s.tls_tx, s.tls_rx),
            num(s.slab_per_connection(), 0),
            goal.to_owned(),
        ]);
    }
    rep.table(
        &[
            "connections",
            "TLS in",
            "after handshake (B/conn, RSS)",
            "after one request, idle (B/conn, RSS)",
            "closed again (B/conn, RSS)",
            "kernel TLS sockets while idle (TX / RX)",
            "kernel slab growth while idle (B/conn, both ends)",
            "goal",
        ],
        &rows,
    );
    rep.paragraph("gatewayd's TLS metrics after the runs:");
    rep.code("text", &metrics.join("\n"));
    rep.paragraph(
        "Command: `cargo xtask bench ktls-idle` (about 4 minutes under TCG; nothing in it depends on the \
         host's speed except the time). The guest's console stays in `target/vm/runs/bench-ktls-idle-bookworm/`.",
    );
    rep
}

