//! `cargo xtask vm-test`: scenarios that need a kernel the host does not have. Each scenario is a
//! function that builds what it needs on the host and returns the guests to boot; add yours here.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{capture, cargo, exec, seconds, timed},
    gwconf::GwConf,
    vm::{self, Guest, Suite},
};

type Scenario = fn(&Path) -> Result<Vec<(String, Guest)>>;

/// Every scenario, in order.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("boot", boot),
    ("proxy", proxy),
    ("ktls", ktls),
    ("xdp", xdp),
    ("steering", steering),
    ("cpusteer", crate::vm_cpusteer::cpusteer),
];

pub fn run(root: &Path, only: Option<&str>) -> Result<()> {
    let mut failures = Vec::new();
    for (name, scenario) in SCENARIOS {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        for (label, guest) in scenario(root).with_context(|| format!("preparing vm scenario {name}"))? {
            report(&label, || vm::run(root, &label, &guest), &mut failures);
        }
    }
    // Booted with systemd as PID 1 from a full root file system, not a busybox initramfs.
    if only.is_none_or(|o| o == "systemd") {
        report("systemd-bookworm", || crate::vm_systemd::run(root), &mut failures);
    }
    if !failures.is_empty() {
        anyhow::bail!("vm-test failed: {}", failures.join(", "));
    }
    Ok(())
}

/// Runs one guest; prints its `vm:`/`ok:` lines and time, or its error (counted in `failures`).
fn report(label: &str, guest: impl FnOnce() -> Result<String>, failures: &mut Vec<String>) {
    let (elapsed, result) = timed(&format!("vm-test {label}"), guest);
    match result {
        Ok(console) => {
            let lines: Vec<&str> = console.lines().filter(|l| l.starts_with("vm:") || l.starts_with("ok:")).collect();
            eprintln!("{}\n  ({})", lines.join("\n"), seconds(elapsed));
        }
        Err(e) => {
            eprintln!("{e:#}");
            failures.push(label.to_owned());
        }
    }
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
                Guest { suite, modules, files: vec![], script, timeout: Duration::from_secs(120), cpus: 2 },
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
  # Under TCG on a busy host a debug build takes a while to come up: 60 s.
  i=$((i+1)); [ $i -lt 300 ] || { echo "no answer from gatewayd within 60 s"; cat /tmp/gw.log; exit 1; }; sleep 0.2
done
grep -q "Hello from the gatewayd demo upstream" /tmp/hello || { echo "unexpected body:"; cat /tmp/hello; exit 1; }
# A request is counted in its log phase, which may run just after the client has its last byte:
# a scrape right after the response can precede it, as with any Prometheus counter.
i=0
until wget -q -O /tmp/metrics http://127.0.0.1:9090/metrics && grep -q 'gateway_http_requests_total{route="demo"' /tmp/metrics; do
  i=$((i+1)); [ $i -lt 50 ] || { echo "request not counted within 10 s"; grep gateway_http /tmp/metrics; cat /tmp/gw.log; exit 1; }; sleep 0.2
done
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
                cpus: 2,
            };
            (format!("proxy-{}", suite.name()), guest)
        })
        .collect())
}

/// kTLS for real (the host kernel has none): on Debian 12's 6.1 kernel with the `tls` module,
/// gatewayd (certificates from its own `certs init`) serves a 16 MiB body over TLS 1.3 and over
/// TLS 1.2 to curl, with a second request on each connection; the kernel's TLS counters must
/// rise for both directions, the bodies must arrive intact, and gatewayd must say it offloaded
/// (`gateway_ktls_supported 1`, `gateway_tls_connections_total{mode="ktls"}`); then a kTLS
/// connection parked by idleness must serve its next request.
fn ktls(root: &Path) -> Result<Vec<(String, Guest)>> {
    let bin = gatewayd(root)?;
    let guest = Guest {
        suite: Suite::Bookworm,
        modules: vec!["tls".into()],
        files: vec![
            (bin, "/usr/bin/gatewayd".into()),
            ("/usr/bin/curl".into(), "/usr/bin/curl".into()),
            ("/usr/bin/openssl".into(), "/usr/bin/openssl".into()),
        ],
        script: ktls_script(),
        timeout: Duration::from_secs(300),
        cpus: 2,
    };
    Ok(vec![("ktls-bookworm".into(), guest)])
}

/// The guest's script: certificates, gatewayd on a TLS listener (TLS 1.2 allowed) in front of
/// its demo upstream, then the checks.
fn ktls_script() -> String {
    let conf = GwConf::new(2)
        .tls_listener("tls", "127.0.0.1:8443", "/tmp/pki/server.crt", "/tmp/pki/server.key", "min_version = \"1.2\"\n")
        .metrics("127.0.0.1:9090")
        .no_admin()
        .demo()
        .build();
    format!(
        "set -e\ngatewayd certs init --out /tmp/pki --san 127.0.0.1 > /dev/null\ncat > /tmp/gw.toml <<'EOF'\n{conf}{KTLS_CHECKS}"
    )
}

const KTLS_CHECKS: &str = r#"EOF
gatewayd --config /tmp/gw.toml > /tmp/gw.log 2>&1 &
i=0
until wget -q -O /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; do
  i=$((i+1)); [ $i -lt 300 ] || { cat /tmp/gw.log; exit 1; }; sleep 0.2
done
counter() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }
tx0=$(counter TlsTxSw); rx0=$(counter TlsRxSw)
N=16777216
want=$(head -c $N /dev/zero | tr '\000' x | sha256sum | cut -d' ' -f1)
fetch() {
  # Two requests on one connection: the second one arrives through the kernel's RX path.
  curl -sS --fail --cacert /tmp/pki/ca.crt "$@" \
    -o /tmp/body https://127.0.0.1:8443/demo/bytes/$N -o /tmp/hello https://127.0.0.1:8443/demo/hello
  got=$(wc -c < /tmp/body)
  [ "$got" -eq $N ] || { echo "short body: $got bytes"; cat /tmp/gw.log; exit 1; }
  [ "$(sha256sum /tmp/body | cut -d' ' -f1)" = "$want" ] || { echo "body corrupted"; exit 1; }
  grep -q "Hello" /tmp/hello
}
fetch --tlsv1.3
echo "ok: TLS 1.3: $N bytes intact"
fetch --tlsv1.2 --tls-max 1.2
echo "ok: TLS 1.2: $N bytes intact"
tx1=$(counter TlsTxSw); rx1=$(counter TlsRxSw)
cat /proc/net/tls_stat
[ $((tx1 - tx0)) -ge 2 ] || { echo "TlsTxSw did not rise: $tx0 -> $tx1"; cat /tmp/gw.log; exit 1; }
[ $((rx1 - rx0)) -ge 2 ] || { echo "TlsRxSw did not rise: $rx0 -> $rx1"; cat /tmp/gw.log; exit 1; }
echo "ok: kernel TLS counters rose (TlsTxSw $tx0 -> $tx1, TlsRxSw $rx0 -> $rx1)"
wget -q -O /tmp/metrics http://127.0.0.1:9090/metrics
grep -q '^gateway_ktls_supported 1' /tmp/metrics || { grep ktls /tmp/metrics; exit 1; }
grep 'gateway_tls_connections_total' /tmp/metrics | grep 'mode="ktls"' | grep -q ' 2$' \
  || { grep gateway_tls_connections_total /tmp/metrics; exit 1; }
grep -q "kTLS available" /tmp/gw.log
echo "ok: gatewayd offloaded both connections to kTLS on $(uname -r)"
# A parked kTLS connection (idle past park_after, 1 s: gatewayd dropped hyper's state and holds
# only the socket) serves its next request; openssl keeps the connection open across the pause.
rx2=$(counter TlsRxSw)
{ printf 'GET /demo/hello HTTP/1.1\r\nHost: a\r\n\r\n'; sleep 3
  printf 'GET /demo/hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n'; } \
  | openssl s_client -quiet -tls1_3 -CAfile /tmp/pki/ca.crt -connect 127.0.0.1:8443 > /tmp/parked 2> /tmp/parked.err \
  || { cat /tmp/parked.err; exit 1; }
[ "$(grep -c '^Hello from' /tmp/parked)" -eq 2 ] || { echo "parked connection:"; cat /tmp/parked /tmp/parked.err; exit 1; }
[ $(($(counter TlsRxSw) - rx2)) -ge 1 ] || { echo "the parked connection was not kTLS"; exit 1; }
echo "ok: a parked kTLS connection served its second request"
"#;

/// The eBPF data plane on every kernel: the guard's XDP and TC programs load and pass every
/// BPF_PROG_TEST_RUN case (`gatewayd xdp selftest`), attach to `lo` in generic XDP and TC mode
/// and judge real packets, attach to a veth pair in every mode (native XDP required: veth has a
/// driver-mode path) and judge frames that crossed the pair, and steering loads and picks
/// sockets on a real SO_REUSEPORT group. On 5.10 this is what proves the programs avoid what
/// that verifier refuses (fetching atomics).
fn xdp(root: &Path) -> Result<Vec<(String, Guest)>> {
    let bin = gatewayd(root)?;
    let script = r#"set -e
if ! /usr/bin/gatewayd xdp selftest --attach lo > /tmp/selftest.log 2>&1; then
  cat /tmp/selftest.log; exit 1
fi
grep -E '^(FAIL|ok +(xdp|tc|sk) +(attach|steering))' /tmp/selftest.log | sed 's/^/vm: /'
echo "ok: xdp selftest on $(uname -r): $(tail -n 1 /tmp/selftest.log)"
# iproute2's ip: busybox's applet cannot make a veth pair.
ip=/usr/bin/iproute2-ip
$ip link add gw0 type veth peer name gw1
$ip link set gw0 up
$ip link set gw1 up
if ! /usr/bin/gatewayd xdp selftest --attach gw0 --peer gw1 > /tmp/veth.log 2>&1; then
  cat /tmp/veth.log; exit 1
fi
grep -E '^(FAIL|ok +(xdp|tc) +attach)' /tmp/veth.log | sed 's/^/vm: /'
grep -qE '^ok +xdp +attach to gw0 in xdp-driver mode' /tmp/veth.log || { cat /tmp/veth.log; exit 1; }
echo "ok: native XDP on a veth pair on $(uname -r): $(tail -n 1 /tmp/veth.log)"
"#;
    Ok(Suite::ALL
        .iter()
        .map(|&suite| {
            // clsact and cls_bpf are modules on Debian's kernels (6.12 attaches through TCX and
            // needs neither, but loading them does no harm).
            let guest = Guest {
                suite,
                modules: vec!["sch_ingress".into(), "cls_bpf".into(), "veth".into()],
                files: vec![
                    (bin.clone(), "/usr/bin/gatewayd".into()),
                    ("/usr/sbin/ip".into(), "/usr/bin/iproute2-ip".into()),
                ],
                script: script.into(),
                timeout: Duration::from_secs(300),
                cpus: 2,
            };
            (format!("xdp-{}", suite.name()), guest)
        })
        .collect())
}

/// CPU steering where there are more CPUs than the host's two: the eBPF steering tests (the
/// `ebpf` test binary, which loads the real `sk_reuseport` program) in a 4-vCPU guest. The `cpu`
/// policy must land each CPU's connections on that CPU's worker, all four of them (the test is
/// told to expect four workers, so a guest seen with fewer CPUs fails); on one CPU the test
/// refuses to run rather than pass trivially.
fn steering(root: &Path) -> Result<Vec<(String, Guest)>> {
    let tests = ebpf_test_binary(root)?;
    let script = r#"set -e
n=$(nproc)
[ "$n" -eq 4 ] || { echo "expected 4 CPUs, the guest has $n"; exit 1; }
if ! GATEWAYD_STEERING_WORKERS=4 /usr/bin/gateway-ebpf-tests --test-threads 1 ebpf::steering:: > /tmp/steering.log 2>&1; then
  cat /tmp/steering.log; exit 1
fi
grep -E '^test .* ok$' /tmp/steering.log | sed 's/^/vm: /'
grep -q 'cpu_policy_steers_to_the_receiving_cpus_worker ... ok' /tmp/steering.log
echo "ok: steering spread over $n CPUs' workers on $(uname -r): $(grep '^test result' /tmp/steering.log)"
"#;
    let guest = Guest {
        suite: Suite::Bookworm,
        modules: vec![],
        files: vec![(tests, "/usr/bin/gateway-ebpf-tests".into())],
        script: script.into(),
        timeout: Duration::from_secs(300),
        cpus: 4,
    };
    Ok(vec![("steering-bookworm".into(), guest)])
}

/// Builds the `ebpf` integration-test binary and returns its path (cargo names it with a hash).
fn ebpf_test_binary(root: &Path) -> Result<std::path::PathBuf> {
    let out = capture(cargo().args([
        "test",
        "--locked",
        "-p",
        "gateway-userspace",
        "--test",
        "ebpf",
        "--no-run",
        "--message-format=json",
    ]))?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "ebpf")
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .context("cargo test --no-run named no executable for the ebpf tests")
}
