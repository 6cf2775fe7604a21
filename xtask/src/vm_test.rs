//! `cargo xtask vm-test`: scenarios that need a kernel the host does not have. Each scenario is a
//! function that builds what it needs on the host and returns the guests to boot; add yours here.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{cargo, exec, seconds, timed},
    vm::{self, Guest, Suite},
};

type Scenario = fn(&Path) -> Result<Vec<(String, Guest)>>;

/// Every scenario, in order.
const SCENARIOS: &[(&str, Scenario)] = &[("boot", boot), ("proxy", proxy), ("xdp", xdp)];

pub fn run(root: &Path, only: Option<&str>) -> Result<()> {
    let mut failures = Vec::new();
    for (name, scenario) in SCENARIOS {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        for (label, guest) in scenario(root).with_context(|| format!("preparing vm scenario {name}"))? {
            let (elapsed, result) = timed(&format!("vm-test {label}"), || vm::run(root, &label, &guest));
            match result {
                Ok(console) => {
                    let lines: Vec<&str> =
                        console.lines().filter(|l| l.starts_with("vm:") || l.starts_with("ok:")).collect();
                    eprintln!("{}\n  ({})", lines.join("\n"), seconds(elapsed));
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    failures.push(label);
                }
            }
        }
    }
    if !failures.is_empty() {
        anyhow::bail!("vm-test failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Every kernel boots, mounts bpffs, and (where it exists) loads the kTLS module.
fn boot(_root: &Path) -> Result<Vec<(String, Guest)>> {
    Ok(Suite::ALL
        .iter()
        .map(|&suite| {
            let (modules, check) = match suite {
                Suite::Bullseye => (vec![], "true"),
                _ => (vec!["tls".to_owned()], "test -e /proc/net/tls_stat && echo ok: kTLS module loaded"),
            };
            let script = format!("set -e\ntest -d /sys/fs/bpf\n{check}\necho ok: booted $(uname -r)\n");
            (
                format!("boot-{}", suite.name()),
                Guest { suite, modules, files: vec![], script, timeout: Duration::from_secs(120) },
            )
        })
        .collect())
}

/// The debug `gatewayd` (built by the test step already; cheap to rebuild here).
pub fn gatewayd(root: &Path) -> Result<std::path::PathBuf> {
    exec(cargo().args(["build", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]))?;
    Ok(root.join("target/debug/gatewayd"))
}

/// gatewayd starts on its embedded defaults and proxies to its demo upstream on every kernel.
fn proxy(root: &Path) -> Result<Vec<(String, Guest)>> {
    let bin = gatewayd(root)?;
    let script = r#"set -e
/usr/bin/gatewayd > /tmp/gw.log 2>&1 &
i=0
until wget -q -O /tmp/hello http://127.0.0.1:8080/demo/hello 2>/dev/null; do
  i=$((i+1)); [ $i -lt 100 ] || { cat /tmp/gw.log; exit 1; }; sleep 0.2
done
grep -q "Hello from the gatewayd demo upstream" /tmp/hello
wget -q -O - http://127.0.0.1:9090/metrics | grep -q 'gateway_http_requests_total{route="demo"'
echo "ok: proxied through gatewayd on $(uname -r)"
"#;
    Ok(Suite::ALL
        .iter()
        .map(|&suite| {
            let guest = Guest {
                suite,
                modules: vec![],
                files: vec![(bin.clone(), "/usr/bin/gatewayd".into())],
                script: script.into(),
                timeout: Duration::from_secs(180),
            };
            (format!("proxy-{}", suite.name()), guest)
        })
        .collect())
}

/// The eBPF data plane on every kernel: the guard's XDP and TC programs load and pass every
/// BPF_PROG_TEST_RUN case (`gatewayd xdp selftest`), attach to `lo` in generic XDP and TC mode
/// and judge real packets, and steering loads and picks sockets on a real SO_REUSEPORT group.
/// On 5.10 this is what proves the programs avoid what that verifier refuses (fetching atomics).
fn xdp(root: &Path) -> Result<Vec<(String, Guest)>> {
    let bin = gatewayd(root)?;
    let script = r#"set -e
if ! /usr/bin/gatewayd xdp selftest --attach lo > /tmp/selftest.log 2>&1; then
  cat /tmp/selftest.log; exit 1
fi
grep -E '^(FAIL|ok +(xdp|tc|sk) +(attach|steering))' /tmp/selftest.log | sed 's/^/vm: /'
echo "ok: xdp selftest on $(uname -r): $(tail -n 1 /tmp/selftest.log)"
"#;
    Ok(Suite::ALL
        .iter()
        .map(|&suite| {
            // clsact and cls_bpf are modules on Debian's kernels (6.12 attaches through TCX and
            // needs neither, but loading them does no harm).
            let guest = Guest {
                suite,
                modules: vec!["sch_ingress".into(), "cls_bpf".into()],
                files: vec![(bin.clone(), "/usr/bin/gatewayd".into())],
                script: script.into(),
                timeout: Duration::from_secs(300),
            };
            (format!("xdp-{}", suite.name()), guest)
        })
        .collect())
}
