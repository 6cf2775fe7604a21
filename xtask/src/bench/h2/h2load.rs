//! h2load (nghttp2-client, Debian): the closed-loop HTTP/2 load generator of `bench h2`.
//! Cleartext URLs are spoken with prior knowledge, `https://` ones negotiate h2 by ALPN; it
//! does not verify certificates.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench::cpus::CpuList,
    cmd::{announce, capture},
};

/// Connections and streams per connection of one closed-loop shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub connections: usize,
    pub streams: usize,
}

impl Shape {
    pub fn label(self) -> String {
        format!("-c{} -m{}", self.connections, self.streams)
    }
}

/// What one h2load run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct H2loadResult {
    pub requests: u64,
    pub rps: f64,
    /// Requests that failed, errored or timed out, plus non-2xx answers.
    pub failed: u64,
    /// What TLS the connections negotiated ("TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"), from
    /// h2load's `TLS Protocol:`, `Cipher:` and `Server Temp Key:` lines; `None` for h2c.
    pub tls: Option<String>,
}

/// `h2load -t T -c C -m M -D SECS URL`, one thread per load CPU, pinned there.
pub fn command(shape: Shape, duration: Duration, cpus: &CpuList, url: &str) -> Command {
    let mut cmd = cpus.taskset("h2load");
    cmd.args(["-t", &cpus.len().min(shape.connections).to_string()])
        .args(["-c", &shape.connections.to_string()])
        .args(["-m", &shape.streams.to_string()])
        .args(["-D", &duration.as_secs().to_string()])
        .arg(url);
    cmd
}

/// Runs it; fails if h2load fails, saw no request, or any request failed or was not 2xx.
pub fn run(shape: Shape, duration: Duration, cpus: &CpuList, url: &str) -> Result<H2loadResult> {
    let mut cmd = command(shape, duration, cpus, url);
    announce(&cmd);
    let out = capture(&mut cmd)?;
    let result = parse(&out).with_context(|| format!("cannot read h2load's output:\n{out}"))?;
    if result.requests == 0 || result.failed > 0 {
        bail!(
            "h2load against {url}: {} requests succeeded, {} failed or not 2xx:\n{out}",
            result.requests,
            result.failed
        );
    }
    Ok(result)
}

pub(in crate::bench) fn parse(out: &str) -> Result<H2loadResult> {
    let (mut rps, mut requests, mut failed, mut non_2xx) = (None, None, 0, None);
    let mut tls: Vec<&str> = Vec::new();
    // "requests: 200 total, 200 started, 200 done, 198 succeeded, 2 failed, 2 errored, 0 timeout"
    let count = |line: &str, name: &str| -> Option<u64> {
        line.split(',').find_map(|part| part.trim().strip_suffix(name)?.trim().parse().ok())
    };
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "finished in 5.00s, 40123.40 req/s, 1.23MB/s"
            rps = rest.split(',').nth(1).and_then(|r| r.trim().strip_suffix(" req/s")).and_then(|r| r.parse().ok());
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            requests = count(rest, "succeeded");
            failed = ["failed", "errored", "timeout"].iter().filter_map(|n| count(rest, n)).sum();
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            // "200 2xx, 0 3xx, 0 4xx, 0 5xx"
            non_2xx = Some(["3xx", "4xx", "5xx"].iter().filter_map(|n| count(rest, n)).sum::<u64>());
        } else if let Some(rest) = line.strip_prefix("TLS Protocol: ").or_else(|| line.strip_prefix("Cipher: ")) {
            tls.push(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Server Temp Key: ") {
            // "X25519 253 bits": the group's name.
            tls.extend(rest.split_whitespace().next());
        }
    }
    let non_2xx = non_2xx.context("no `status codes:` line")?;
    Ok(H2loadResult {
        requests: requests.context("no `requests:` line")?,
        rps: rps.context("no `finished in` line with req/s")?,
        failed: failed + non_2xx,
        tls: (!tls.is_empty()).then(|| tls.join(" ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration for measurements.
Warm-up phase is over for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 5.00s, 40123.40 req/s, 1.23MB/s
requests: 200617 total, 200633 started, 200617 done, 200610 succeeded, 7 failed, 7 errored, 0 timeout
status codes: 200610 2xx, 0 3xx, 0 4xx, 3 5xx
traffic: 6.16MB (6458432) total, 1.15MB (1204050) headers (space savings 95.74%), 391.83KB (401234) data
";

    #[test]
    fn h2load_output_is_read() {
        let expected = H2loadResult { requests: 200_610, rps: 40123.40, failed: 17, tls: None };
        assert_eq!(parse(OUT).ok(), Some(expected));
        let tls = OUT.replace(
            "\nfinished",
            "\nTLS Protocol: TLSv1.3\nCipher: TLS_AES_256_GCM_SHA384\nServer Temp Key: X25519 253 bits\n\
             Application protocol: h2\nfinished",
        );
        assert_eq!(parse(&tls).ok().and_then(|r| r.tls).as_deref(), Some("TLSv1.3 TLS_AES_256_GCM_SHA384 X25519"));
        assert!(parse("connect to 127.0.0.1:1 failed").is_err());
    }

    #[test]
    fn command_is_pinned_and_complete() {
        let shape = Shape { connections: 16, streams: 16 };
        let cmd = command(shape, Duration::from_secs(5), &CpuList(vec![0]), "http://x/");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args.join(" "), "-c 0 h2load -t 1 -c 16 -m 16 -D 5 http://x/");
    }
}
