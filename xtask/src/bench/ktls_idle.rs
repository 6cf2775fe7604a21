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
mod smaps;

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

/// The rounds, each on a fresh gatewayd: listener (named after its mode) and idle connections.
/// Every round starts from the same state, so the difference between the two kTLS rounds is
/// what 1,000 more idle connections cost, free of what a process grows once.
const ROUNDS: [(&str, usize); 3] = [("ktls", 1000), ("ktls", 2000), ("userspace", 2000)];
/// The goal (issue 11) for memory per idle kTLS connection.
pub const GOAL_BYTES: f64 = 4.0 * 1024.0;
const KTLS_ADDR: &str = "127.0.0.1:8443";
const USERSPACE_ADDR: &str = "127.0.0.1:8444";
const METRICS_ADDR: &str = "127.0.0.1:9090";
/// Lines of gatewayd's `/metrics` the script prints for the report.
const METRIC_PREFIX: &str = "ktls-idle-metric: ";
const GUEST_VERSION_PREFIX: &str = "ktls-idle-kernel: ";
/// Connections of each round's warm-up before its baseline (see `client::Options::warmup`):
/// `bench tls` and `bench proxy` measure idle memory on a gatewayd that has served their load
/// phases (and a warm-up) before, so what a process grows once with its first connections is
/// not counted per connection there either. The fresh-process figure is reported beside.
const WARMUP_CONNECTIONS: usize = 100;

/// `bin`: the gatewayd to measure (a copy of another revision's build); the release build of
/// this tree otherwise.
pub fn run(bin: Option<&std::path::PathBuf>) -> Result<()> {
    let root = workspace_root();
    let (gatewayd, measured) = match bin {
        Some(bin) => (bin.clone(), format!("`{}`", bin.display())),
        None => (release_gatewayd()?, format!("the release build of revision {}", git_revision())),
    };
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
            "xtask:   {} × {}: {:.0} B per idle connection (RSS; anonymous {:.0} B), fresh process {:.0} B \
             (anonymous {:.0} B), kernel slab {:.0} B",
            s.connections,
            s.mode,
            s.rss_per_connection(),
            s.anon_per_connection(),
            s.fresh_rss_per_connection(),
            s.fresh_anon_per_connection(),
            s.slab_per_connection()
        );
    }
    if let Some(m) = marginal_ktls(&samples) {
        eprintln!("xtask:   marginal per idle kTLS connection (1000 → 2000): {m:.0} B");
    }
    let rep = report(&samples, &metrics, kernel, &measured);
    let path = rep.write_section("tls", "Benchmark: tls", "ktls-idle")?;
    eprintln!("xtask: bench ktls-idle: wrote {}", path.display());
    Ok(())
}

/// Every count of both modes was measured, and gatewayd counted the kTLS listener's
/// connections as offloaded and the other's as userspace.
fn check(samples: &[Sample], metrics: &[&str]) -> Result<()> {
    for mode in ["ktls", "userspace"] {
        let mut want = 0;
        for &(_, count) in ROUNDS.iter().filter(|(m, _)| *m == mode) {
            if !samples.iter().any(|s| s.mode == mode && s.connections == count as u64) {
                bail!("no measurement of {count} {mode} connections in the guest's output");
            }
            want += count as u64;
        }
        let counted = connections_metric(metrics, mode);
        if counted < want {
            bail!("gatewayd counted {counted} connections with mode=\"{mode}\" on listener {mode}, want ≥ {want}");
        }
    }
    Ok(())
}

/// What each connection beyond the smaller kTLS round cost: the growth of the larger round
/// minus that of the smaller, over the difference in connections (what a fresh process grows
/// once cancels out).
fn marginal_ktls(samples: &[Sample]) -> Option<f64> {
    let ktls: Vec<&Sample> = samples.iter().filter(|s| s.mode == "ktls").collect();
    let (small, large) = (ktls.iter().min_by_key(|s| s.connections)?, ktls.iter().max_by_key(|s| s.connections)?);
    let growth = |s: &Sample| s.idle_rss as f64 - s.before_rss as f64;
    (large.connections > small.connections)
        .then(|| (growth(large) - growth(small)) / (large.connections - small.connections) as f64)
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
        r#"round() {{
  gatewayd --config /tmp/gw.toml > /tmp/gw.log 2>&1 &
  pid=$!
  i=0
  until wget -q -O /dev/null http://{METRICS_ADDR}/readyz 2>/dev/null; do
    i=$((i+1)); [ $i -lt 300 ] || {{ echo "gatewayd not ready within 60 s"; cat /tmp/gw.log; exit 1; }}; sleep 0.2
  done
  wget -q -O /tmp/metrics http://{METRICS_ADDR}/metrics
  grep -q '^gateway_ktls_supported 1' /tmp/metrics || {{ echo "gatewayd found no kTLS"; grep ktls /tmp/metrics; cat /tmp/gw.log; exit 1; }}
  HOME=/root xtask ktls-idle-client --pid $pid --cert /tmp/pki/server.crt --mode $1 --addr $2 --counts $3 --warmup {WARMUP_CONNECTIONS} \
    || {{ echo "client failed ($*)"; tail -20 /tmp/gw.log; exit 1; }}
  wget -q -O /tmp/metrics http://{METRICS_ADDR}/metrics
  grep -E '^gateway_tls_connections_total' /tmp/metrics | sed 's/^/{METRIC_PREFIX}/'
  kill $pid
  wait $pid || true
}}
"#
    );
    for (mode, count) in ROUNDS {
        let addr = if mode == "ktls" { KTLS_ADDR } else { USERSPACE_ADDR };
        let _ = writeln!(s, "round {mode} {addr} {count}");
    }
    s
}

fn report(samples: &[Sample], metrics: &[&str], kernel: &str, measured: &str) -> Report {
    let mut rep = Report::default();
    rep.heading("kTLS idle memory (VM, Debian 12 6.1)");
    rep.paragraph(&format!(
        "Memory per idle TLS 1.3 keep-alive connection with the session in the kernel (kTLS), measured where \
         kTLS exists: a qemu guest (TCG, 2 vCPUs, 1.5 GiB) with Debian 12's kernel {kernel} and its `tls` \
         module, gatewayd (2 workers) with two TLS listeners on the same ECDSA P-256 certificate, \
         one offloading to the kernel after the handshake (the default) and one with `ktls = false` \
         (rustls keeps the session), both proxying `GET /demo/hello` to the built-in demo upstream. \
         Each round starts a fresh gatewayd (the same starting state for all) and warms it up as `bench tls` \
         and `bench proxy` do before their idle rounds (there, the load phases and a warm-up ran first): \
         {WARMUP_CONNECTIONS} connections through the same listener, one request each, idle until parked, a \
         second request each, closed, then 3 s for the workers to hand freed memory back. Then the client \
         (`xtask ktls-idle-client`, xtask's rustls client inside the guest) opens N connections one after the \
         other (TLS 1.3, AES-128-GCM, X25519), sends one request on each, leaves them idle for 5 s (gatewayd \
         parks an idle connection after 1 s), and measures as `bench tls` does on the host: growth of \
         gatewayd's RSS (= PSS, one process) over the baseline, per connection. While they sit idle it also \
         reads `/proc/net/tls_stat` (`TlsCurrTxSw`/`TlsCurrRxSw`: sockets with kernel TLS now) and the \
         kernel's slab memory (`Slab` in `/proc/meminfo`; both ends of every loopback connection, so it is a \
         ceiling for the server's kernel share), then sends a second request on the first 100 connections \
         (parked ones must still serve). Goal: ≤ {} B per idle kTLS connection (userspace memory), judged on \
         the warmed-up baseline like `bench tls`'s ≤ 16 KiB; the growth over the fresh process (before the \
         warm-up: what the first connections of a new process fault in once, code pages above all) is shown \
         beside it and judged too. gatewayd: {measured}.",
        num(GOAL_BYTES, 0),
    ));
    let goal_for = |s: &Sample, bytes: f64| -> &'static str {
        match s.mode.as_str() {
            "ktls" if bytes <= GOAL_BYTES => "met (≤ 4 KiB)",
            "ktls" => "**not met** (≤ 4 KiB)",
            _ if bytes <= super::tls::keepalive::IDLE_GOAL_BYTES => "met (≤ 16 KiB)",
            _ => "**not met** (≤ 16 KiB)",
        }
    };
    let mut rows = Vec::new();
    for s in samples {
        rows.push(vec![
            s.connections.to_string(),
            if s.mode == "ktls" { "kTLS".to_owned() } else { "userspace (rustls)".to_owned() },
            num(s.per_connection(s.connected_rss), 0),
            num(s.rss_per_connection(), 0),
            num(s.anon_per_connection(), 0),
            num(s.rss_per_connection() - s.anon_per_connection(), 0),
            num(s.fresh_rss_per_connection(), 0),
            num(s.fresh_anon_per_connection(), 0),
            num(s.fresh_rss_per_connection() - s.fresh_anon_per_connection(), 0),
            num(s.per_connection(s.closed_rss), 0),
            format!("{} / {}", s.tls_tx, s.tls_rx),
            num(s.slab_per_connection(), 0),
            goal_for(s, s.rss_per_connection()).to_owned(),
            goal_for(s, s.fresh_rss_per_connection()).to_owned(),
        ]);
    }
    rep.table(
        &[
            "connections",
            "TLS in",
            "after handshake (B/conn, RSS)",
            "**idle after one request (B/conn, RSS)**",
            "of which anonymous ¹",
            "of which file-backed ¹",
            "idle, over the fresh process (B/conn, RSS) ²",
            "of which anonymous",
            "of which file-backed",
            "closed again (B/conn, RSS)",
            "kernel TLS sockets while idle (TX / RX)",
            "kernel slab growth while idle (B/conn, both ends)",
            "goal (warmed up)",
            "goal (fresh process)",
        ],
        &rows,
    );
    rep.paragraph(
        "¹ The anonymous part of the RSS growth (`Anonymous:` in `/proc/PID/smaps_rollup`: heap and stacks, \
         what gatewayd allocated); the rest is file-backed: pages of gatewayd's binary run for the first \
         time (`ktls-idle-smaps` lines on the guest's console name the mapping). ² Over the memory of the \
         fresh process, before the warm-up: it adds what a new process grows once with its first TLS \
         connections — gatewayd's code for the handshake, rustls, aws-lc, the kTLS offload and parking \
         (file-backed, clean, resident once per process whatever the number of connections), and its \
         allocator's first pages of each size class — spread over the N connections.",
    );
    if let Some(marginal) = marginal_ktls(samples) {
        rep.paragraph(&format!(
            "**Marginal memory per idle kTLS connection** (the 2,000-connection round's growth minus the \
             1,000-connection round's, per extra connection): **{} B** — goal ≤ {} B: {}.",
            num(marginal, 0),
            num(GOAL_BYTES, 0),
            if marginal <= GOAL_BYTES { "met" } else { "**not met**" }
        ));
    }
    rep.paragraph(
        "Where an idle kTLS connection's memory is. Measured once with a temporary diagnostic build of \
         4b42d95 (mimalloc's heap visited page by page after each forced collection, blocks in use per size \
         class): per connection exactly one block each of 16, 80, 128, 256 and 640 B and two of 1,024 B \
         (3,168 B, all live: the pages of those classes were full, nothing retained), nothing else growing \
         with the connections. They are the SNI (16), the kTLS stream (`TlsIo`, 80), the task's cell \
         (tokio, 128), its I/O registration (tokio's `ScheduledIo`, 256), `ConnInfo` in its `Rc` (640), \
         the future of `serve_connection` (1,024) and the future of `serve_tls` (1,024: it awaited the \
         serving, so the handshake's arguments and state stayed for the connection's life). Cut since: \
         `serve_tls` returns the serving future instead of awaiting it (the task keeps a 64 B future), and \
         the client certificate and refusal in `TlsInfo` are boxed (`ConnInfo` in the 384 B class); unit \
         tests in listener/conn/task_size.rs hold both. Nothing of rustls stays alive once the kernel holds \
         the session (the `ktls` crate consumes the `ServerConnection`), and aws-lc's glibc arenas did not \
         grow in the kTLS rounds (they did in the userspace round: `ktls-idle-smaps` lines).",
    );
    rep.paragraph("gatewayd's TLS metrics at the end of each round:");
    rep.code("text", &metrics.join("\n"));
    rep.paragraph(
        "Command: `cargo xtask bench ktls-idle` (about 5 minutes under TCG after the release build; nothing \
         in it depends on the host's speed except the time). The guest's console stays in \
         `target/vm/runs/bench-ktls-idle-bookworm/`.",
    );
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(mode: &str, connections: u64, before_rss: u64, idle_rss: u64) -> Sample {
        Sample {
            mode: mode.into(),
            connections,
            fresh_rss: before_rss,
            fresh_anon: before_rss,
            before_rss,
            connected_rss: idle_rss,
            idle_rss,
            closed_rss: before_rss,
            before_anon: before_rss,
            idle_anon: idle_rss,
            tls_tx: 0,
            tls_rx: 0,
            slab_before: 0,
            slab_idle: 0,
        }
    }

    #[test]
    fn the_marginal_cost_leaves_out_what_a_fresh_process_grows_once() -> Result<()> {
        // 2 MB grown once plus 3,000 B per connection, in both rounds.
        let samples = [
            sample("ktls", 1000, 40_000_000, 45_000_000),
            sample("ktls", 2000, 40_000_000, 48_000_000),
            sample("userspace", 2000, 40_000_000, 70_000_000),
        ];
        assert_eq!(marginal_ktls(&samples), Some(3000.0));
        assert_eq!(samples[0].rss_per_connection(), 5000.0);
        assert_eq!(marginal_ktls(&samples[..1]), None);
        let metrics = [
            "gateway_tls_connections_total{listener=\"ktls\",mode=\"ktls\"} 1000",
            "gateway_tls_connections_total{listener=\"ktls\",mode=\"ktls\"} 2001",
            "gateway_tls_connections_total{listener=\"userspace\",mode=\"userspace\"} 2001",
        ];
        check(&samples, &metrics)?;
        // A kTLS listener whose connections stayed in userspace fails the run.
        let wrong =
            [metrics[0], metrics[2], "gateway_tls_connections_total{listener=\"ktls\",mode=\"userspace\"} 2000"];
        assert!(check(&samples, &wrong).is_err());
        assert!(check(&samples[1..], &metrics).is_err());
        let script = script();
        assert_eq!(script.matches("\nround ").count(), ROUNDS.len());
        assert!(script.contains("round ktls 127.0.0.1:8443 2000\n") && script.contains("ktls = false\n"));
        assert!(script.contains(&format!("--warmup {WARMUP_CONNECTIONS} ")), "every round warms up");
        Ok(())
    }
}
