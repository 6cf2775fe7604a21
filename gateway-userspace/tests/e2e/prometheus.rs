//! A real Prometheus server (Debian's `prometheus` package, installed by `cargo xtask deps`) on a
//! loopback port with a temporary storage dir, scraping one target every second (job `gatewayd`)
//! and evaluating given rule files every second. Optionally inside a test's network namespace
//! (beside a gatewayd there). Fails loudly when the binary is missing.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::{netns::Netns, support::*};

pub struct Prometheus<'a> {
    child: Child,
    pub addr: SocketAddr,
    ns: Option<&'a Netns>,
    dir: tempfile::TempDir,
}

impl<'a> Prometheus<'a> {
    /// Scrapes `target`; `rules` are copied in with their group intervals cut to 1 s.
    pub fn start(target: SocketAddr, rules: &[&Path]) -> Prometheus<'static> {
        Prometheus::start_in(None, free_port(), target, rules)
    }

    /// Like `start`, listening on `addr` inside `ns` when given.
    pub fn start_in(ns: Option<&'a Netns>, addr: SocketAddr, target: SocketAddr, rules: &[&Path]) -> Prometheus<'a> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rule_files = Vec::new();
        for (i, rule_file) in rules.iter().enumerate() {
            let text = std::fs::read_to_string(rule_file).expect("read rules");
            let fast = dir.path().join(format!("rules-{i}.yml"));
            std::fs::write(&fast, text.replace("interval: 30s", "interval: 1s")).expect("write rules");
            rule_files.push(format!("\"{}\"", fast.display()));
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
                 scrape_configs:\n  - job_name: gatewayd\n    static_configs:\n      - targets: [\"{target}\"]\n",
                rule_files.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = ns
            .map_or_else(|| Command::new("prometheus"), |ns| ns.command("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): `cargo xtask deps` installs Debian's prometheus package")
            });
        let prometheus = Prometheus { child, addr, ns, dir };
        let ready = eventually(Duration::from_secs(30), || {
            prometheus.get("/-/ready").ok().filter(|(s, _)| *s == 200).map(|_| ())
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", prometheus.log());
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET over HTTP/1.0 (the server then neither chunks nor keeps the connection open): the
    /// status and body.
    fn get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        let request = format!("GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let addr = self.addr;
        let raw = match self.ns {
            Some(ns) => ns.run(|| raw_request(addr, request.as_bytes()))?,
            None => raw_request(addr, request.as_bytes())?,
        };
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((status, body.to_owned()))
    }

    fn api(&self, path_and_query: &str) -> Value {
        let (status, body) = self.get(path_and_query).expect("prometheus API");
        let reply: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path_and_query}: {status} not JSON ({e}): {body}"));
        assert_eq!(reply["status"], "success", "{path_and_query}: {reply}");
        reply
    }

    /// An instant query's result; panics unless the API answers `success` (a syntax error fails).
    pub fn query(&self, expr: &str) -> Vec<Value> {
        let reply = self.api(&format!("/api/v1/query?query={}", url_encode(expr)));
        reply["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every rule as the server reports it (health, lastError, state, query).
    pub fn rules(&self) -> Vec<Value> {
        let groups = self.api("/api/v1/rules")["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }

    pub fn targets(&self) -> Value {
        self.api("/api/v1/targets")
    }

    /// Scrapes of the target so far (over the last five minutes).
    pub fn scrapes(&self) -> f64 {
        let count = self.query("count_over_time(up{job=\"gatewayd\"}[5m])");
        count.first().and_then(|s| s["value"][1].as_str()?.parse().ok()).unwrap_or(0.0)
    }

    /// Waits until the target has been scraped `n` more times (so rates see the load since).
    pub fn wait_scrapes(&self, n: f64) {
        let before = self.scrapes();
        let done = eventually(Duration::from_secs(20), || (self.scrapes() >= before + n).then_some(()));
        assert!(done.is_some(), "prometheus does not scrape: {}\n{}", self.targets(), self.log());
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
