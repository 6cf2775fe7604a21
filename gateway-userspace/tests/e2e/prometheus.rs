//! A real Prometheus server (Debian's `prometheus` package, installed by `cargo xtask deps`) on a
//! free loopback port with a temporary storage dir, scraping given targets every second and
//! evaluating given rule files. Fails loudly when the binary is missing.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use super::support::*;

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Scrapes `target` (job `gatewayd`) every second; `rules` are copied in, their groups
    /// evaluated every second too.
    pub fn start(target: SocketAddr, rules: &[&Path]) -> Prometheus {
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
        let addr = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run prometheus ({e}): `cargo xtask deps` installs Debian's prometheus package")
            });
        let prometheus = Prometheus { child, addr, dir };
        let ready = eventually(Duration::from_secs(30), || {
            raw_get(addr, "/-/ready").ok().filter(|r| r.starts_with("HTTP/1.1 200")).map(|_| ())
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", prometheus.log());
        prometheus
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query; panics unless the API answers `success` (so a syntax error fails).
    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let url = format!("http://{}/api/v1/query?query={}", self.addr, url_encode(expr));
        let reply = get(&url).await.json();
        assert_eq!(reply["status"], "success", "query {expr}: {reply}");
        reply["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every rule group's rules as the server reports them (health, lastError, query).
    pub async fn rules(&self) -> Vec<Value> {
        let reply = get(&format!("http://{}/api/v1/rules", self.addr)).await.json();
        assert_eq!(reply["status"], "success", "{reply}");
        let groups = reply["data"]["groups"].as_array().cloned().unwrap_or_default();
        groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect()
    }
}

impl Drop for Prometheus {
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
