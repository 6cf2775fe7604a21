//! vm-test scenario `cpusteer`: `[xdp] steering = "cpumap"` with the real gatewayd on native XDP
//! (a veth whose peer sits in a network namespace) on 5.10, 6.1 and 6.12. Each kernel must either
//! steer (the mode gauge says cpumap, packets are redirected, every worker's connections are
//! processed on its own CPU) or fall back with the one log line; clients are served either way.
//! A second bookworm guest with 4 vCPUs and 4 workers (more CPUs than the host has) must steer,
//! and spread its clients' connections over all four workers, each processed on its worker's CPU
//! (correctness under TCG, not speed).

use std::{path::Path, time::Duration};

use anyhow::Result;

use crate::{
    gwconf::GwConf,
    vm::{Guest, Suite},
    vm_test::gatewayd,
};

const SETUP: &str = r#"set -e
ip=/usr/bin/iproute2-ip
mkdir -p /var/run/netns /run
$ip netns add c
$ip link add gw0 type veth peer name gw1
$ip link set gw1 netns c
$ip addr add 10.9.0.1/24 dev gw0
$ip link set gw0 up
for i in $CLIENTS; do $ip -n c addr add 10.9.0.$i/24 dev gw1; done
$ip -n c link set gw1 up
$ip -n c link set lo up
# Local senders leave TCP checksums to the device; a cpumap-redirected frame needs them filled in.
$ip netns exec c /usr/bin/ethtool -K gw1 tx off >/dev/null
"#;

/// The rest of the script, after the config.
const CHECKS: &str = r#"CONF
RUST_LOG=info /usr/bin/gatewayd --config /tmp/gw.toml > /tmp/gw.log 2>&1 &
i=0
until wget -q -O /dev/null http://127.0.0.1:9090/readyz 2>/dev/null; do
  i=$((i+1)); [ $i -lt 150 ] || { cat /tmp/gw.log; exit 1; }; sleep 0.2
done
grep 'xdp steering' /tmp/gw.log | sed 's/^/vm: /'
for i in $CLIENTS; do
  $ip netns exec c /usr/bin/curl -sf -o /dev/null --max-time 10 --interface 10.9.0.$i http://10.9.0.1:8080/demo/hello \
    || { echo "client 10.9.0.$i not served"; cat /tmp/gw.log; exit 1; }
done
wget -q -O /tmp/metrics http://127.0.0.1:9090/metrics
grep -E '^gateway_(xdp_steer|steering_connections_by_cpu)' /tmp/metrics | sed 's/^/vm: /'
# "worker cpu" of every (worker, CPU that processed its SYN) pair seen.
sed -nE 's/^gateway_steering_connections_by_cpu_total\{worker="([0-9]+)",cpu="([0-9]+)"\} [1-9].*/\1 \2/p' /tmp/metrics > /tmp/pairs
if grep -q 'gateway_xdp_steering_mode{mode="cpumap"} 1' /tmp/metrics; then
  # Co-location: worker w (pinned to CPU w) only ever had connections processed on CPU w.
  if awk '$1 != $2 { bad = 1 } END { exit !bad }' /tmp/pairs; then
    echo "a worker's connection was processed on another CPU:"; cat /tmp/pairs; exit 1
  fi
  grep -qE '^gateway_xdp_steered_packets_total\{result="(redirected|local)".*\} [1-9]' /tmp/metrics
  echo "ok: cpumap steering on $(uname -r), $(nproc) CPUs, workers on their own CPUs: $(awk '{ printf "%s ", $1 }' /tmp/pairs)"
elif [ "$MUST_STEER" = 1 ]; then
  echo "cpumap steering did not start on $(nproc) CPUs"; cat /tmp/gw.log; exit 1
else
  grep -q 'gateway_xdp_steering_mode{mode="reuseport_fallback"} 1' /tmp/metrics
  grep -q 'xdp steering: cpumap unavailable' /tmp/gw.log
  echo "ok: cpumap fell back (logged) on $(uname -r)"
fi
"#;

/// The guest's script: the veth pair and namespace, gatewayd with client-hash steering, `workers`
/// pinned workers and cpumap steering in native XDP on gw0, then the checks; `clients` client
/// addresses (10.9.0.2 on), one connection each. With `spread`, cpumap steering must start and
/// every worker must have had a connection (on its own CPU).
fn script(workers: usize, clients: usize, spread: bool) -> String {
    let conf = GwConf::new(workers)
        .server("steering = \"client_hash\"")
        .server("pin_workers = true")
        .listener("public", "10.9.0.1:8080")
        .metrics("127.0.0.1:9090")
        .demo()
        .raw("[xdp]\nenabled = true\ninterfaces = [\"gw0\"]\nmode = \"xdp-driver\"\nsteering = \"cpumap\"\n")
        .build();
    let list: Vec<String> = (2..2 + clients).map(|i| i.to_string()).collect();
    let mut checks = CHECKS.to_owned();
    if spread {
        checks.push_str(&format!(
            "for w in $(seq 0 {}); do grep -q \"^$w $w$\" /tmp/pairs || {{ echo \"worker $w had no connection on CPU $w\"; cat /tmp/pairs; exit 1; }}; done\n\
             echo \"ok: {workers} workers' connections spread over $(nproc) CPUs, each on its worker's CPU\"\n",
            workers - 1
        ));
    }
    format!(
        "CLIENTS=\"{}\"\nMUST_STEER={}\n[ \"$(nproc)\" -eq {workers} ] || {{ echo \"expected {workers} CPUs, the guest has $(nproc)\"; exit 1; }}\n\
         {SETUP}cat > /tmp/gw.toml <<'CONF'\n{conf}{checks}",
        list.join(" "),
        u8::from(spread)
    )
}

pub fn cpusteer(root: &Path) -> Result<Vec<(String, Guest)>> {
    let bin = gatewayd(root)?;
    let guest = |suite: Suite, cpus: u8, clients: usize, spread: bool| Guest {
        suite,
        modules: vec!["veth".into()],
        files: vec![
            (bin.clone(), "/usr/bin/gatewayd".into()),
            ("/usr/sbin/ip".into(), "/usr/bin/iproute2-ip".into()),
            ("/usr/sbin/ethtool".into(), "/usr/bin/ethtool".into()),
            ("/usr/bin/curl".into(), "/usr/bin/curl".into()),
        ],
        script: script(usize::from(cpus), clients, spread),
        timeout: Duration::from_secs(300),
        cpus,
    };
    let mut guests: Vec<(String, Guest)> =
        Suite::ALL.iter().map(|&suite| (format!("cpusteer-{}", suite.name()), guest(suite, 2, 8, false))).collect();
    // 24 clients over 4 workers: the client hash is fixed, and these addresses reach all four.
    guests.push(("cpusteer-4cpu-bookworm".into(), guest(Suite::Bookworm, 4, 24, true)));
    Ok(guests)
}
