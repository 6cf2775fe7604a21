//! The legitimate clients: two oha runs at fixed rates from fl-cli, one over keep-alive
//! connections, one opening a new connection per request (what a flood of SYNs hurts first).
//! oha (`-q` with `--latency-correction`) measures latency from each request's scheduled start,
//! so a stall delays the requests behind it in the numbers too (wrk and hey, closed-loop, would
//! hide them); `load::ensure_oha` installs the pinned release. Every answered request's latency
//! is kept (oha's `--db-url` SQLite file, read with the `sqlite3` tool): the report pools them
//! over reps, so a p99 rests on thousands of samples rather than one run's few.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{
    attack::SERVICE_PORT,
    topology::{self, CLIENT_NS, GW_CLIENT_ADDR},
};

/// What one oha run saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegitResult {
    pub ok: u64,
    /// Non-2xx answers and errors (timeouts, resets, refused connects); requests cut off by the
    /// end of the run are not counted.
    pub failed: u64,
    /// Seconds; NaN when nothing was answered.
    pub p99: f64,
    /// Seconds from each answered request's scheduled start to its end (latency-corrected).
    pub latencies: Vec<f64>,
}

/// One oha process in fl-cli; `wait` collects its result.
pub struct Oha {
    child: Child,
    db: PathBuf,
}

/// Per-request timeout: a request stuck this long (SYN dropped twice) counts as failed instead of
/// vanishing as "cut off by the deadline".
const TIMEOUT: &str = "3s";

impl Oha {
    /// `db`: where oha writes its per-request records (removed once read).
    pub fn start(rate: u64, duration: Duration, keep_alive: bool, db: &Path) -> Result<Oha> {
        // oha appends to an existing file: start from none.
        let _absent = std::fs::remove_file(db);
        let url = format!("http://{GW_CLIENT_ADDR}:{SERVICE_PORT}/demo/hello");
        let mut cmd = topology::in_ns(CLIENT_NS, "oha");
        cmd.args(["-z", &format!("{}ms", duration.as_millis())])
            .args(["-c", "8", "-q", &rate.to_string(), "-t", TIMEOUT])
            .args(["--latency-correction", "--worker-threads", "1", "--no-tui", "--output-format", "json"]);
        if !keep_alive {
            cmd.arg("--disable-keepalive");
        }
        cmd.arg("--db-url").arg(db);
        cmd.arg(url).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(Oha { child: cmd.spawn().context("cannot start oha in fl-cli")?, db: db.to_owned() })
    }

    pub fn wait(self) -> Result<LegitResult> {
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!("oha failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut result = parse(&text).with_context(|| format!("cannot read oha's JSON:\n{text}"))?;
        result.latencies = crate::bench::load::oha_db_latencies(&self.db)?;
        let _ = std::fs::remove_file(&self.db);
        // oha's database holds every request that got an answer (any status), as its percentiles do.
        let answered = json_answered(&text)?;
        if result.latencies.len() as u64 != answered {
            bail!("oha's database has {} requests, its summary {answered}", result.latencies.len());
        }
        Ok(result)
    }
}

/// Answered requests (every status) in oha's JSON summary.
fn json_answered(text: &str) -> Result<u64> {
    let json: Json = serde_json::from_str(text)?;
    Ok(json.status_codes.values().sum())
}

#[derive(Deserialize)]
struct Json {
    #[serde(rename = "latencyPercentiles")]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution")]
    status_codes: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution")]
    errors: BTreeMap<String, u64>,
}

/// oha's name for requests still in flight when `-z` ends.
const DEADLINE: &str = "aborted due to deadline";

fn parse(text: &str) -> Result<LegitResult> {
    let json: Json = serde_json::from_str(text)?;
    let ok = json.status_codes.iter().filter(|(c, _)| c.starts_with('2')).map(|(_, n)| n).sum();
    let not_ok: u64 = json.status_codes.iter().filter(|(c, _)| !c.starts_with('2')).map(|(_, n)| n).sum();
    let errors: u64 = json.errors.iter().filter(|(e, _)| *e != DEADLINE).map(|(_, n)| n).sum();
    let p99 = json.latency_percentiles.get("p99").copied().flatten().unwrap_or(f64::NAN);
    Ok(LegitResult { ok, failed: not_ok + errors, p99, latencies: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_but_cut_off_requests_do_not() {
        let json = r#"{"summary":{},"latencyPercentiles":{"p50":0.001,"p99":0.004},
            "statusCodeDistribution":{"200":990,"429":3},
            "errorDistribution":{"aborted due to deadline":8,"timeout":7}}"#;
        assert_eq!(parse(json).ok(), Some(LegitResult { ok: 990, failed: 10, p99: 0.004, latencies: Vec::new() }));
        let none =
            r#"{"latencyPercentiles":{"p99":null},"statusCodeDistribution":{},"errorDistribution":{"timeout":5}}"#;
        let parsed = parse(none).ok();
        assert!(parsed.as_ref().is_some_and(|r| r.ok == 0 && r.failed == 5 && r.p99.is_nan()), "{parsed:?}");
    }
}
