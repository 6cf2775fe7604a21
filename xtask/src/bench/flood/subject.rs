//! The four defences compared, each in front of the same gatewayd (with its demo upstream and
//! the same per-IP L7 limit): the kernel's defaults, nftables per-source meters, and the
//! gatewayd guard in native XDP and in TC mode.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::topology::{self, GW_ATTACK_IF, GW_CLIENT_IF, GW_NS};
use crate::{
    bench::{gatewayd_binary, process::Service},
    cmd::capture,
    gwconf::GwConf,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Defence {
    /// Kernel defaults only (SYN cookies on).
    Kernel,
    /// nftables per-source meters and SYN limit in the netdev ingress hook.
    Nftables,
    /// The gatewayd guard in native (driver) XDP mode.
    GuardXdp,
    /// The gatewayd guard as a TC ingress classifier.
    GuardTc,
    /// The guard in native XDP with `client_hash` steering and pinned workers, no cpumap: the
    /// baseline of `bench steering` (only the cpumap differs).
    GuardXdpPinned,
    /// The guard in native XDP with `steering = "cpumap"` (`bench steering` only).
    GuardXdpCpumap,
}

impl Defence {
    pub const ALL: [Defence; 4] = [Defence::Kernel, Defence::Nftables, Defence::GuardXdp, Defence::GuardTc];

    pub fn label(self) -> &'static str {
        match self {
            Defence::Kernel => "kernel",
            Defence::Nftables => "nftables",
            Defence::GuardXdp => "guard-xdp",
            Defence::GuardTc => "guard-tc",
            Defence::GuardXdpPinned => "guard-xdp-pinned",
            Defence::GuardXdpCpumap => "guard-xdp-cpumap",
        }
    }

    pub fn is_guard(self) -> bool {
        self.guard_mode().is_some()
    }

    fn guard_mode(self) -> Option<&'static str> {
        match self {
            Defence::GuardXdp | Defence::GuardXdpPinned | Defence::GuardXdpCpumap => Some("xdp-driver"),
            Defence::GuardTc => Some("tc"),
            Defence::Kernel | Defence::Nftables => None,
        }
    }
}

pub const METRICS: &str = "127.0.0.1:9090";
const PIN_PATH: &str = "/sys/fs/bpf/fl-gatewayd";
const NFT_TABLE: &str = "fl_flood";
/// The per-IP L7 limit (requests per second) the HTTP flood runs into.
pub const L7_LIMIT_PER_SECOND: u32 = 1000;

/// The rules a competent operator would put in front of a service with nftables alone: the
/// earliest hook (netdev ingress, before conntrack and routing), per-source SYN and packet meters
/// with the same rates and bursts as the guard's defaults, IPv6 metered per /64, bounded sets
/// (as many entries as the guard tracks) whose entries time out.
pub fn nft_ruleset() -> String {
    format!(
        r#"table netdev {NFT_TABLE} {{
    set syn4 {{ type ipv4_addr; size 262144; flags dynamic,timeout; timeout 60s; }}
    set syn6 {{ type ipv6_addr; size 262144; flags dynamic,timeout; timeout 60s; }}
    set pkt4 {{ type ipv4_addr; size 262144; flags dynamic,timeout; timeout 60s; }}
    set pkt6 {{ type ipv6_addr; size 262144; flags dynamic,timeout; timeout 60s; }}
    chain ingress {{
        type filter hook ingress devices = {{ "{GW_CLIENT_IF}", "{GW_ATTACK_IF}" }} priority -500; policy accept;
        meta protocol ip tcp flags & (fin|syn|rst|ack) == syn update @syn4 {{ ip saddr limit rate over 200/second burst 400 packets }} counter drop
        meta protocol ip6 tcp flags & (fin|syn|rst|ack) == syn update @syn6 {{ ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over 200/second burst 400 packets }} counter drop
        meta protocol ip update @pkt4 {{ ip saddr limit rate over 20000/second burst 40000 packets }} counter drop
        meta protocol ip6 update @pkt6 {{ ip6 saddr and ffff:ffff:ffff:ffff:: limit rate over 20000/second burst 40000 packets }} counter drop
    }}
}}
"#
    )
}

/// gatewayd's configuration: the same for every defence but for `[xdp]`.
pub fn gatewayd_config(defence: Defence) -> String {
    let port = super::attack::SERVICE_PORT;
    let cpumap = defence == Defence::GuardXdpCpumap;
    let mut conf = GwConf::new(2);
    if matches!(defence, Defence::GuardXdpPinned | Defence::GuardXdpCpumap) {
        conf = conf.server("steering = \"client_hash\"").server("pin_workers = true");
    }
    conf = conf
        .listener("public", format!("0.0.0.0:{port}"))
        .listener("public6", format!("[::]:{port}"))
        .metrics(METRICS)
        .demo()
        .raw(&format!(
            "[[rate_limits]]\nname = \"per-ip\"\nkey = \"ip\"\nlimit = {L7_LIMIT_PER_SECOND}\nwindow = \"second\"\n"
        ));
    if let Some(mode) = defence.guard_mode() {
        let steering = if cpumap { "steering = \"cpumap\"\n" } else { "" };
        conf = conf.raw(&format!(
            r#"[xdp]
enabled = true
interfaces = ["{GW_CLIENT_IF}", "{GW_ATTACK_IF}"]
mode = "{mode}"
pin_path = "{PIN_PATH}"
{steering}
[xdp.feedback]
enabled = true
reasons = ["rate_limit", "empty_connection"]
"#
        ));
    }
    conf.build()
}

/// A defence in place with gatewayd running behind it; taken down on `stop` (or drop).
pub struct Up {
    pub defence: Defence,
    pub gatewayd: Service,
}

impl Up {
    pub fn start(defence: Defence, dir: &Path, tag: &str) -> Result<Up> {
        remove_pins()?;
        let _absent = capture(topology::in_ns(GW_NS, "nft").args(["delete", "table", "netdev", NFT_TABLE]));
        topology::sysctl(GW_NS, "net.ipv4.tcp_syncookies", "1")?;
        if defence == Defence::Nftables {
            let rules = dir.join("nftables.conf");
            std::fs::write(&rules, nft_ruleset()).with_context(|| format!("cannot write {}", rules.display()))?;
            capture(topology::in_ns(GW_NS, "nft").arg("-f").arg(&rules)).context("loading the nftables rules")?;
        }
        let config = dir.join(format!("gatewayd-{}.toml", defence.label()));
        std::fs::write(&config, gatewayd_config(defence))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let mut cmd = topology::in_ns(GW_NS, &gatewayd_binary().to_string_lossy());
        cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
        let mut gatewayd = Service::start("gatewayd", cmd, &dir.join(format!("gatewayd-{tag}.log")))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            gatewayd.check_alive()?;
            if scrape("/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            if Instant::now() > deadline {
                bail!("gatewayd ({}) not ready within 20 s", defence.label());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Up { defence, gatewayd })
    }

    /// Packets the defence itself dropped so far (the guard's drop verdicts, the nftables drop
    /// counters); `None` for the kernel, which filters nothing.
    pub fn dropped(&self) -> Result<Option<u64>> {
        match self.defence {
            Defence::Kernel => Ok(None),
            Defence::Nftables => {
                let out = capture(topology::in_ns(GW_NS, "nft").args(["list", "table", "netdev", NFT_TABLE]))?;
                Ok(Some(nft_dropped(&out)))
            }
            Defence::GuardXdp | Defence::GuardTc | Defence::GuardXdpPinned | Defence::GuardXdpCpumap => {
                // SYNs answered with a cookie in XDP never reach the stack either: counted with the drops.
                let metrics = scrape("/metrics")?;
                let dropped = metric_sum(&metrics, "gateway_xdp_packets_total", "verdict=\"drop_")
                    + metric_sum(&metrics, "gateway_xdp_packets_total", "verdict=\"syn_cookie\"");
                Ok(Some(dropped as u64))
            }
        }
    }

    pub fn stop(self) -> Result<()> {
        self.gatewayd.stop()?;
        let _absent = capture(topology::in_ns(GW_NS, "nft").args(["delete", "table", "netdev", NFT_TABLE]));
        remove_pins()
    }
}

/// Pinned maps keep buckets, deny entries (feedback blocks) and counters across restarts: every
/// cell starts from none.
fn remove_pins() -> Result<()> {
    let pins = PathBuf::from(PIN_PATH);
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("cannot remove {}", pins.display()))?;
    }
    Ok(())
}

/// `GET path` on gatewayd's metrics listener inside fl-gw; the raw response.
pub fn scrape(path: &str) -> Result<String> {
    let path = path.to_owned();
    topology::run_in(GW_NS, move || {
        let addr: SocketAddr = METRICS.parse()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Sum of the samples of `name` whose labels contain `label_part`.
pub fn metric_sum(text: &str, name: &str, label_part: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')) && l.contains(label_part))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The packets of every `counter packets N bytes M drop` in `nft list` output.
fn nft_dropped(listing: &str) -> u64 {
    listing
        .lines()
        .filter(|l| l.trim_end().ends_with("drop"))
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().rposition(|w| *w == "packets")?;
            words.get(at + 1)?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_counters_are_summed() {
        let listing = "\t\tmeta protocol ip update @pkt4 { ip saddr limit rate over 20000/second burst 40000 packets } counter packets 12 bytes 720 drop\n\
                       \t\tmeta protocol ip6 ... counter packets 30 bytes 9 drop\n\t\tcounter packets 5 bytes 1 accept\n";
        assert_eq!(nft_dropped(listing), 42);
        let metrics = "gateway_xdp_packets_total{iface=\"a\",verdict=\"drop_ratelimit\"} 10\n\
                       gateway_xdp_packets_total{iface=\"b\",verdict=\"drop_denylist\"} 5\n\
                       gateway_xdp_packets_total{iface=\"a\",verdict=\"pass\"} 100\n";
        assert_eq!(metric_sum(metrics, "gateway_xdp_packets_total", "verdict=\"drop_"), 15.0);
        assert_eq!(metric_sum(metrics, "gateway_xdp_packets_total", "drop_denylist"), 5.0);
    }

    #[test]
    fn only_guard_configs_have_xdp() {
        assert!(!gatewayd_config(Defence::Nftables).contains("[xdp]"));
        assert!(gatewayd_config(Defence::GuardTc).contains("mode = \"tc\""));
        assert!(nft_ruleset().contains("hook ingress"));
    }
}
