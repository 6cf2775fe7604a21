//! Load generators: `wrk` for the highest request rate a subject sustains, `oha` at a fixed
//! rate (`-q`) with `--latency-correction` for latency percentiles free of coordinated omission
//! (a closed-loop client like wrk waits for slow answers before sending more, so it never
//! measures the requests a stall delayed). oha keeps every answered request's latency in a
//! SQLite file (`--db-url`, read with the `sqlite3` tool), so reports can pool the requests of
//! every run before taking percentiles (`report::Pooled`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::cpus::CpuList;
use crate::cmd::{announce, capture, cargo, exec, succeeds};

/// What a closed-loop wrk run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub socket_errors: u64,
    pub non_2xx: u64,
}

/// `wrk` with one thread per CPU of `cpus`, pinned there.
#[derive(Debug, Clone)]
pub struct Wrk {
    pub connections: usize,
    pub duration: Duration,
}

impl Wrk {
    pub fn command(&self, cpus: &CpuList, url: &str) -> Command {
        self.command_with(cpus, url, &[])
    }

    /// With extra request headers (`-H "name: value"`).
    pub fn command_with(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)]) -> Command {
        let mut cmd = cpus.taskset("wrk");
        for (name, value) in headers {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
        cmd.args(["-t", &cpus.len().to_string()])
            .args(["-c", &self.connections.to_string()])
            .args(["-d", &format!("{}s", self.duration.as_secs())])
            .arg(url);
        cmd
    }

    /// Runs it; fails if wrk fails, saw no request, or got any non-2xx answer.
    pub fn run(&self, cpus: &CpuList, url: &str) -> Result<WrkResult> {
        self.run_with(cpus, url, &[])
    }

    pub fn run_with(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)]) -> Result<WrkResult> {
        let mut cmd = self.command_with(cpus, url, headers);
        announce(&cmd);
        let out = capture(&mut cmd)?;
        let result = parse_wrk(&out).with_context(|| format!("cannot read wrk's output:\n{out}"))?;
        if result.requests == 0 || result.non_2xx > 0 {
            bail!("wrk against {url}: {} requests, {} non-2xx answers:\n{out}", result.requests, result.non_2xx);
        }
        Ok(result)
    }
}

fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let mut socket_errors = 0;
    let mut non_2xx = 0;
    for line in out.lines().map(str::trim) {
        // "123456 requests in 10.00s, 12.34MB read"
        if let Some((count, rest)) = line.split_once(" requests in ") {
            requests = count.trim().parse().ok();
            seconds = rest.split(',').next().and_then(|d| d.trim().strip_suffix('s')).and_then(|d| d.parse().ok());
        } else if let Some(value) = line.strip_prefix("Requests/sec:") {
            rps = value.trim().parse().ok();
        } else if let Some(counts) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            socket_errors = counts.split(',').filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = value.trim().parse().context("bad non-2xx count")?;
        }
    }
    Ok(WrkResult {
        requests: requests.context("no `N requests in` line")?,
        seconds: seconds.context("no duration in the `requests in` line")?,
        rps: rps.context("no `Requests/sec:` line")?,
        socket_errors,
        non_2xx,
    })
}

/// The closed-loop load generator for the highest rate: wrk (default), or hey, which is what
/// many users reach for first (`--load hey`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MaxLoad {
    Wrk,
    Hey,
}

impl MaxLoad {
    pub fn name(self) -> &'static str {
        match self {
            MaxLoad::Wrk => "wrk",
            MaxLoad::Hey => "hey",
        }
    }

    pub fn command(self, connections: usize, duration: Duration, cpus: &CpuList, url: &str) -> Command {
        match self {
            MaxLoad::Wrk => Wrk { connections, duration }.command(cpus, url),
            MaxLoad::Hey => hey_command(connections, duration, cpus, url),
        }
    }

    /// Runs it; fails if the tool fails, saw no request, or got any non-2xx answer.
    pub fn run(self, connections: usize, duration: Duration, cpus: &CpuList, url: &str) -> Result<WrkResult> {
        match self {
            MaxLoad::Wrk => Wrk { connections, duration }.run(cpus, url),
            MaxLoad::Hey => {
                let mut cmd = hey_command(connections, duration, cpus, url);
                announce(&cmd);
                let out = capture(&mut cmd)?;
                let result = parse_hey(&out, duration).with_context(|| format!("cannot read hey's output:\n{out}"))?;
                if result.requests == 0 || result.non_2xx > 0 {
                    bail!("hey against {url}: {} answers, {} non-2xx:\n{out}", result.requests, result.non_2xx);
                }
                Ok(result)
            }
        }
    }
}

/// `hey -z D -c N -cpus K`: N workers (keep-alive connections) on the load CPUs.
fn hey_command(connections: usize, duration: Duration, cpus: &CpuList, url: &str) -> Command {
    let mut cmd = cpus.taskset("hey");
    cmd.args(["-z", &format!("{}s", duration.as_secs())])
        .args(["-c", &connections.to_string()])
        .args(["-cpus", &cpus.len().to_string()])
        .arg(url);
    cmd
}

/// hey's summary: `Requests/sec:`, the status code distribution (`[200]\tN responses`) and the
/// error distribution (`[N]\tGet ...: error`), in the shape of wrk's result.
pub(super) fn parse_hey(out: &str, duration: Duration) -> Result<WrkResult> {
    let mut rps = None;
    let (mut ok, mut non_2xx, mut errors) = (0u64, 0u64, 0u64);
    let mut section = "";
    for line in out.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            rps = value.trim().parse().ok();
        } else if line.ends_with("distribution:") {
            section = line;
        } else if let Some(rest) = line.strip_prefix('[') {
            let Some((key, rest)) = rest.split_once(']') else { continue };
            let count: u64 = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            if section.starts_with("Status code") {
                if key.starts_with('2') { ok += count } else { non_2xx += count }
            } else if section.starts_with("Error") {
                // Here the key is the count: `[3]\tGet "...": EOF`.
                errors += key.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(WrkResult {
        requests: ok,
        seconds: duration.as_secs_f64(),
        rps: rps.context("no `Requests/sec:` line")?,
        socket_errors: errors,
        non_2xx,
    })
}

/// What an open-loop oha run measured. Latencies in seconds, from each request's *scheduled*
/// start (`--latency-correction`).
#[derive(Debug, Clone, PartialEq)]
pub struct OhaResult {
    pub requests: u64,
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub errors: u64,
    /// Every answered request's latency (oha's database), for percentiles pooled over runs.
    pub latencies: Vec<f64>,
}

/// `oha -q RATE --latency-correction` with `connections` connections.
#[derive(Debug, Clone)]
pub struct Oha {
    pub connections: usize,
    pub duration: Duration,
    pub rate: u64,
}

impl Oha {
    pub fn command(&self, cpus: &CpuList, url: &str) -> Command {
        self.command_with(cpus, url, &[])
    }

    /// With extra request headers (`-H "name: value"`).
    pub fn command_with(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)]) -> Command {
        self.command_args(cpus, url, headers, &[])
    }

    /// With extra request headers and extra options (`bench h2`: `--http2 -p N`).
    pub fn command_args(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)], args: &[&str]) -> Command {
        let mut cmd = cpus.taskset("oha");
        cmd.args(args);
        for (name, value) in headers {
            cmd.args(["-H", &format!("{name}: {value}")]);
        }
        cmd.args(["-z", &format!("{}s", self.duration.as_secs())])
            .args(["-c", &self.connections.to_string()])
            .args(["-q", &self.rate.to_string()])
            .arg("--latency-correction")
            .args(["--worker-threads", &cpus.len().to_string()])
            .args(["--no-tui", "--output-format", "json"]);
        if url.starts_with("https://") {
            // Benchmarks' certificates come from throwaway CAs.
            cmd.arg("--insecure");
        }
        cmd.arg(url);
        cmd
    }

    /// Runs it; fails if oha fails, saw no request, or got any non-2xx answer or error (other
    /// than the requests cut off by the end of the run).
    pub fn run(&self, cpus: &CpuList, url: &str) -> Result<OhaResult> {
        self.run_with(cpus, url, &[])
    }

    pub fn run_with(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)]) -> Result<OhaResult> {
        self.run_args(cpus, url, headers, &[])
    }

    /// Also reads every request's latency from oha's database (a file in the temporary
    /// directory, removed once read; oha writes it after the run, outside the measured time).
    pub fn run_args(&self, cpus: &CpuList, url: &str, headers: &[(&str, &str)], args: &[&str]) -> Result<OhaResult> {
        let db = db_path();
        // oha appends to an existing file: start from none.
        let _absent = std::fs::remove_file(&db);
        let mut cmd = self.command_args(cpus, url, headers, args);
        cmd.arg("--db-url").arg(&db);
        announce(&cmd);
        let out = capture(&mut cmd);
        let latencies = out.as_ref().ok().map(|_| oha_db_latencies(&db));
        let _ = std::fs::remove_file(&db);
        let out = out?;
        let mut result = parse_oha(&out).with_context(|| format!("cannot read oha's JSON output:\n{out}"))?;
        if result.requests == 0 || result.errors > 0 {
            bail!("oha against {url}: {} answers, {} errors or non-2xx:\n{out}", result.requests, result.errors);
        }
        result.latencies = latencies.context("oha wrote no database")??;
        // The database holds every answered request, as oha's percentiles do; with no error or
        // non-2xx answer (checked above) that is `requests`.
        if result.latencies.len() as u64 != result.requests {
            bail!("oha's database has {} requests, its summary {}", result.latencies.len(), result.requests);
        }
        Ok(result)
    }
}

#[derive(Deserialize)]
struct OhaJson {
    summary: OhaSummary,
    #[serde(rename = "latencyPercentiles")]
    latency_percentiles: BTreeMap<String, f64>,
    #[serde(rename = "statusCodeDistribution")]
    status_codes: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution")]
    errors: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct OhaSummary {
    #[serde(rename = "requestsPerSec")]
    requests_per_sec: f64,
}

/// A fresh path for one run's oha database.
fn db_path() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("xtask-oha-{}-{n}.db", std::process::id()))
}

/// The `duration` column of oha's database (end minus the latency-corrected start), in seconds.
pub fn oha_db_latencies(db: &Path) -> Result<Vec<f64>> {
    let out = capture(Command::new("sqlite3").args(["-batch", "-noheader"]).arg(db).arg("SELECT duration FROM oha"))
        .with_context(|| format!("cannot read oha's database {}", db.display()))?;
    out.lines().map(|l| l.trim().parse::<f64>().with_context(|| format!("not a duration: {l:?}"))).collect()
}

/// oha's name for requests still in flight when `-z` ends: not the subject's fault.
const OHA_DEADLINE: &str = "aborted due to deadline";

pub fn parse_oha(out: &str) -> Result<OhaResult> {
    let json: OhaJson = serde_json::from_str(out)?;
    let percentile = |key: &str| {
        json.latency_percentiles.get(key).copied().with_context(|| format!("no `{key}` in latencyPercentiles"))
    };
    let ok: u64 = json.status_codes.iter().filter(|(code, _)| code.starts_with('2')).map(|(_, n)| n).sum();
    let not_ok: u64 = json.status_codes.iter().filter(|(code, _)| !code.starts_with('2')).map(|(_, n)| n).sum();
    let errors: u64 = json.errors.iter().filter(|(e, _)| *e != OHA_DEADLINE).map(|(_, n)| n).sum();
    Ok(OhaResult {
        requests: ok,
        rps: json.summary.requests_per_sec,
        p50: percentile("p50")?,
        p99: percentile("p99")?,
        p999: percentile("p99.9")?,
        errors: errors + not_ok,
        latencies: Vec::new(),
    })
}

/// The oha release the JSON reading above was written against.
const OHA_VERSION: &str = "1.16.0";

/// Installs oha from crates.io into ~/.cargo/bin unless that exact version is there (a few
/// minutes, once). Only benchmarks need it, so `deps` (run by `test`) does not install it.
pub fn ensure_oha() -> Result<()> {
    if installed_oha().as_deref() == Some(OHA_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: installing oha {OHA_VERSION} (takes a few minutes, once)");
    exec(
        cargo()
            .args(["install", "oha", "--locked", "--force", "--version", &format!("={OHA_VERSION}")])
            // Keep this build out of the workspace's target dir and its fingerprints.
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("installing oha failed")?;
    match installed_oha() {
        Some(v) if v == OHA_VERSION => Ok(()),
        other => bail!("oha was installed but `oha --version` reports {other:?}, not {OHA_VERSION}"),
    }
}

/// `oha 1.16.0` → `1.16.0`.
fn installed_oha() -> Option<String> {
    let mut cmd = Command::new("oha");
    cmd.arg("--version");
    if !succeeds(&mut cmd) {
        return None;
    }
    let out = capture(&mut cmd).ok()?;
    out.split_whitespace().nth(1).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms  312.00us   9.87ms   91.23%
    Req/Sec    53.12k     2.01k   57.00k    80.00%
  528571 requests in 10.01s, 83.67MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  52804.29
Transfer/sec:      8.36MB
";

    #[test]
    fn wrk_output_is_read() {
        let parsed = parse_wrk(WRK).ok();
        let expected = WrkResult { requests: 528_571, seconds: 10.01, rps: 52804.29, socket_errors: 4, non_2xx: 7 };
        assert_eq!(parsed, Some(expected));
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn hey_output_is_read() {
        let out = "Summary:\n  Total:\t1.0004 secs\n  Requests/sec:\t30942.0891\n\nStatus code distribution:\n  [200]\t30954 responses\n  [502]\t2 responses\n\nError distribution:\n  [3]\tGet \"http://x/\": EOF\n";
        let expected = WrkResult { requests: 30_954, seconds: 1.0, rps: 30942.0891, socket_errors: 3, non_2xx: 2 };
        assert_eq!(parse_hey(out, Duration::from_secs(1)).ok(), Some(expected));
        assert!(parse_hey("", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn oha_json_is_read_without_cut_off_requests() {
        let json = r#"{"summary":{"successRate":1.0,"total":10.0,"slowest":0.01,"fastest":0.0001,
            "average":0.0003,"requestsPerSec":20001.5,"totalData":40000,"sizePerRequest":2,"sizePerSec":4000.0},
            "latencyPercentiles":{"p10":0.0001,"p50":0.00025,"p99":0.0011,"p99.9":0.004,"p99.99":0.009},
            "statusCodeDistribution":{"200":200010,"502":2},
            "errorDistribution":{"aborted due to deadline":5,"connection closed":1}}"#;
        let expected = OhaResult {
            requests: 200_010,
            rps: 20001.5,
            p50: 0.00025,
            p99: 0.0011,
            p999: 0.004,
            errors: 3,
            latencies: Vec::new(),
        };
        assert_eq!(parse_oha(json).ok(), Some(expected));
        assert!(parse_oha(r#"{"summary":{}}"#).is_err());
    }

    #[test]
    fn commands_are_pinned_and_complete() {
        let cpus = CpuList(vec![0]);
        let wrk = Wrk { connections: 64, duration: Duration::from_secs(10) }.command(&cpus, "http://x/");
        let args: Vec<_> = wrk.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args.join(" "), "-c 0 wrk -t 1 -c 64 -d 10s http://x/");
        let oha = Oha { connections: 32, duration: Duration::from_secs(5), rate: 1000 }.command(&cpus, "http://x/");
        let args: Vec<_> = oha.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args.join(" "),
            "-c 0 oha -z 5s -c 32 -q 1000 --latency-correction --worker-threads 1 --no-tui --output-format json http://x/"
        );
    }
}
