//! `[xdp]` and `[server] steering` → [`XdpSpec`].

use std::path::PathBuf;

use ipnet::IpNet;

use super::{Validator, root};
use crate::{
    config::{
        FeedbackReason, FeedbackSpec, ListenerSpec, RateSpec, XdpSpec,
        schema::{SteeringPolicy, XdpFeedbackSection, XdpRateSection, XdpSection},
    },
    ebpf::NicSteeringPolicy,
    ebpf::{AttachMode, parse_list_entry, validate_iface},
};

/// Packets per second the GCRA arithmetic handles exactly enough (one interval ≥ 1 ns).
const MAX_RATE: u64 = 1_000_000_000;

impl Validator<'_> {
    /// `listeners`: the validated listeners, whose ports the guard closes to UDP.
    pub(super) fn xdp(&mut self, x: &XdpSection, listeners: &[ListenerSpec]) -> XdpSpec {
        let path = |key: &str| root("xdp").key(key);
        if x.enabled && x.interfaces.is_empty() {
            self.problem(path("interfaces"), "at least one interface is required when xdp.enabled is true");
        }
        let mut interfaces: Vec<String> = Vec::new();
        for (i, iface) in x.interfaces.iter().enumerate() {
            if let Err(e) = validate_iface(iface) {
                self.problem(path("interfaces").index(i), e.to_string());
            } else if interfaces.contains(iface) {
                self.problem(path("interfaces").index(i), format!("interface {iface:?} is listed twice"));
            } else {
                interfaces.push(iface.clone());
            }
        }
        let mode = match x.mode.as_str() {
            "auto" => None,
            other => match AttachMode::from_label(other) {
                Some(m) => Some(m),
                None => {
                    self.problem(
                        path("mode"),
                        format!("invalid mode {other:?}: expected \"auto\", \"xdp-driver\", \"xdp-skb\" or \"tc\""),
                    );
                    None
                }
            },
        };
        if x.pin_path.is_empty() || !x.pin_path.starts_with('/') {
            self.problem(
                path("pin_path"),
                "must be an absolute path on a bpf filesystem, e.g. \"/sys/fs/bpf/gatewayd\"",
            );
        }
        if !(1024..=(1 << 24)).contains(&x.max_sources) {
            self.problem(path("max_sources"), "must be between 1024 and 16777216");
        }
        if !(1..=32).contains(&x.ipv4_prefix) {
            self.problem(path("ipv4_prefix"), "must be between 1 and 32");
        }
        if !(1..=128).contains(&x.ipv6_prefix) {
            self.problem(path("ipv6_prefix"), "must be between 1 and 128");
        }
        if x.syn_cookie_threshold_per_cpu == 0 {
            self.problem(
                path("syn_cookie_threshold_per_cpu"),
                "must be at least 1 (for every SYN: syn_cookies = \"always\")",
            );
        }
        if x.new_sources_per_cpu == 0 {
            self.problem(path("new_sources_per_cpu"), "must be at least 1");
        }
        let allow = self.cidrs(&x.allow, "allow");
        let deny = self.cidrs(&x.deny, "deny");
        for (i, net) in x.deny.iter().enumerate() {
            if let Ok(n) = parse_list_entry(net)
                && allow.contains(&n)
            {
                self.problem(
                    path("deny").index(i),
                    format!("{n} is also in xdp.allow (the allow list wins; list it once)"),
                );
            }
        }
        let rate_limit = self.rate(&x.rate_limit, "rate_limit", 20_000);
        let syn_limit = self.rate(&x.syn_limit, "syn_limit", 200);
        let feedback = self.feedback(&x.feedback, x.enabled);
        XdpSpec {
            enabled: x.enabled,
            interfaces,
            mode,
            pin_path: PathBuf::from(&x.pin_path),
            keep_attached: x.keep_attached_on_restart,
            max_sources: x.max_sources.clamp(1024, 1 << 24),
            ipv4_prefix: x.ipv4_prefix.clamp(1, 32),
            ipv6_prefix: x.ipv6_prefix.clamp(1, 128),
            new_sources_per_cpu: x.new_sources_per_cpu.max(1),
            allow,
            deny,
            rate_limit,
            syn_limit,
            feedback,
            steering: x.steering,
            closed_udp_ports: if x.drop_udp_to_listeners { listener_ports(listeners) } else { Vec::new() },
            syn_cookies: x.syn_cookies,
            syn_cookie_threshold: x.syn_cookie_threshold_per_cpu.max(1),
        }
    }

    /// `xdp.steering = "cpumap"` sends a client's packets to the CPU of the worker the
    /// `sk_reuseport` program picks by the client hash: it needs both, and pinned workers.
    pub(super) fn nic_steering(&mut self, xdp: &XdpSpec, server: &crate::config::ServerSettings) {
        if xdp.steering != NicSteeringPolicy::Cpumap {
            return;
        }
        let mut missing = Vec::new();
        if !xdp.enabled {
            missing.push("xdp.enabled = true");
        }
        if server.steering != SteeringPolicy::ClientHash {
            missing.push("server.steering = \"client_hash\"");
        }
        if !server.pin_workers {
            missing.push("server.pin_workers = true");
        }
        if !missing.is_empty() {
            self.problem(root("xdp").key("steering"), format!("\"cpumap\" needs {}", missing.join(", ")));
        }
    }

    fn cidrs(&mut self, raw: &[String], key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let at = || root("xdp").key(key).index(i);
            match parse_list_entry(s) {
                Ok(net) => {
                    if out.contains(&net) {
                        self.problem(at(), format!("{net} is listed twice"));
                    } else {
                        out.push(net);
                    }
                }
                Err(reason) => self.problem(at(), reason),
            }
        }
        out
    }

    fn rate(&mut self, r: &XdpRateSection, key: &str, default_rate: u64) -> Option<RateSpec> {
        let at = |k: &str| root("xdp").key(key).key(k);
        let rate = r.rate.unwrap_or(default_rate);
        let burst = r.burst.unwrap_or(rate.saturating_mul(2));
        if rate == 0 || rate > MAX_RATE {
            self.problem(at("rate"), format!("must be between 1 and {MAX_RATE} packets per second"));
        }
        if burst == 0 || burst > 1_000_000_000 {
            self.problem(at("burst"), "must be between 1 and 1000000000 packets");
        }
        r.enabled.unwrap_or(true).then_some(RateSpec { rate: rate.clamp(1, MAX_RATE), burst: burst.max(1) })
    }

    fn feedback(&mut self, f: &XdpFeedbackSection, xdp_enabled: bool) -> Option<FeedbackSpec> {
        let at = |k: &str| root("xdp").key("feedback").key(k);
        if f.enabled && !xdp_enabled {
            self.problem(
                at("enabled"),
                "the feedback loop blocks sources in the XDP guard: it needs xdp.enabled = true",
            );
        }
        if f.threshold == 0 {
            self.problem(at("threshold"), "must be at least 1");
        }
        if f.empty_connection_threshold == 0 {
            self.problem(at("empty_connection_threshold"), "must be at least 1");
        }
        if f.window.is_zero() {
            self.problem(at("window"), "must be greater than zero");
        }
        if f.block_for.is_zero() {
            self.problem(at("block_for"), "must be greater than zero");
        }
        if f.max_tracked == 0 {
            self.problem(at("max_tracked"), "must be at least 1");
        }
        let mut reasons = Vec::new();
        for (i, r) in f.reasons.iter().enumerate() {
            match FeedbackReason::ALL.into_iter().find(|k| k.label() == r) {
                Some(k) if !reasons.contains(&k) => reasons.push(k),
                Some(_) => self.problem(at("reasons").index(i), format!("{r:?} is listed twice")),
                None => self.problem(
                    at("reasons").index(i),
                    format!(
                        "unknown reason {r:?}: expected \"auth\", \"rate_limit\", \"not_found\" or \"empty_connection\""
                    ),
                ),
            }
        }
        f.enabled.then(|| FeedbackSpec {
            threshold: f.threshold.max(1),
            empty_connection_threshold: f.empty_connection_threshold.max(1),
            window: f.window,
            block_for: f.block_for,
            reasons,
            max_tracked: f.max_tracked.max(1),
        })
    }

    pub(super) fn steering(&mut self, policy: SteeringPolicy, workers: usize) -> SteeringPolicy {
        let max = gateway_common::steer::MAX_WORKERS as usize;
        if policy != SteeringPolicy::None && workers > max {
            self.problem(root("server").key("steering"), format!("steering supports at most {max} workers"));
        }
        policy
    }
}

/// The listeners' ports, sorted, once each.
fn listener_ports(listeners: &[ListenerSpec]) -> Vec<u16> {
    let mut ports: Vec<u16> = listeners.iter().map(|l| l.addr.port()).filter(|p| *p != 0).collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, FeedbackReason, Problem, RateSpec, SteeringPolicy};
    use crate::ebpf::AttachMode;

    const BASE: &str =
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:18080\"\n[metrics]\nbind = \"127.0.0.1:19090\"\n";

    fn load(extra: &str) -> Result<Config, Vec<Problem>> {
        match Config::load_str(&format!("{BASE}{extra}"), "t.toml") {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid(p)) => Err(p),
            Err(e) => panic!("{e}"),
        }
    }

    fn problem(extra: &str, key: &str) -> String {
        let problems = load(extra).expect_err("should be refused");
        problems
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no problem at {key}: {problems:?}"))
            .reason
            .clone()
    }

    #[test]
    fn defaults_are_off_and_documented_values() {
        let c = load("").unwrap();
        let x = &c.xdp;
        assert!(!x.enabled && x.feedback.is_none() && x.mode.is_none());
        assert_eq!(x.pin_path, std::path::PathBuf::from("/sys/fs/bpf/gatewayd"));
        assert_eq!((x.max_sources, x.ipv4_prefix, x.ipv6_prefix, x.new_sources_per_cpu), (262_144, 32, 64, 10_000));
        assert_eq!(x.rate_limit, Some(RateSpec { rate: 20_000, burst: 40_000 }));
        assert_eq!(x.syn_limit, Some(RateSpec { rate: 200, burst: 400 }));
        assert_eq!(c.server.steering, SteeringPolicy::None);
    }

    #[test]
    fn cpumap_steering_needs_client_hash_and_pinned_workers() {
        let why = problem("[xdp]\nenabled = true\ninterfaces = [\"eth0\"]\nsteering = \"cpumap\"\n", "xdp.steering");
        assert!(why.contains("client_hash") && why.contains("pin_workers"), "{why}");
        let c = load(
            "[server]\nsteering = \"client_hash\"\npin_workers = true\n[xdp]\nenabled = true\ninterfaces = [\"eth0\"]\nsteering = \"cpumap\"\n",
        )
        .unwrap();
        assert_eq!(c.xdp.steering, crate::ebpf::NicSteeringPolicy::Cpumap);
        assert_eq!(load("").unwrap().xdp.steering, crate::ebpf::NicSteeringPolicy::Off);
    }

    #[test]
    fn a_full_section_loads() {
        let c = load(
            r#"
[server]
workers = 4
steering = "client_hash"
[xdp]
enabled = true
interfaces = ["eth0", "eth1"]
mode = "tc"
allow = ["10.0.0.0/8", "2001:db8::1"]
deny = ["192.0.2.0/24", "::ffff:198.51.100.0/120"]
ipv6_prefix = 56
[xdp.rate_limit]
rate = 1000
[xdp.syn_limit]
enabled = false
[xdp.feedback]
enabled = true
threshold = 5
window = "30s"
block_for = "1h"
reasons = ["auth"]
"#,
        )
        .unwrap();
        let x = &c.xdp;
        assert_eq!(x.mode, Some(AttachMode::Tc));
        assert_eq!(x.rate_limit, Some(RateSpec { rate: 1000, burst: 2000 }));
        assert_eq!(x.syn_limit, None);
        assert_eq!(x.deny[1].to_string(), "198.51.100.0/24", "IPv4-mapped prefixes become IPv4");
        assert_eq!(x.allow[1].to_string(), "2001:db8::1/128");
        let f = x.feedback.as_ref().unwrap();
        assert_eq!((f.threshold, f.reasons.as_slice()), (5, &[FeedbackReason::Auth][..]));
        assert_eq!(c.server.steering, SteeringPolicy::ClientHash);
        assert!(!x.closed_udp_ports.is_empty(), "listener ports are closed to UDP by default");
    }

    #[test]
    fn syn_cookies_default_to_auto_and_are_checked() {
        let x = load("").unwrap().xdp;
        assert_eq!((x.syn_cookies, x.syn_cookie_threshold), (crate::ebpf::SynCookiePolicy::Auto, 1000));
        let x = load("[xdp]\nsyn_cookies = \"always\"\n").unwrap().xdp;
        assert_eq!(x.syn_cookies, crate::ebpf::SynCookiePolicy::Always);
        assert!(
            problem("[xdp]\nsyn_cookie_threshold_per_cpu = 0\n", "xdp.syn_cookie_threshold_per_cpu").contains("always")
        );
        assert!(load("[xdp]\nsyn_cookies = \"sometimes\"\n").is_err());
    }

    #[test]
    fn mistakes_are_located_and_explained() {
        assert!(problem("[xdp]\nenabled = true\n", "xdp.interfaces").contains("at least one interface"));
        assert!(problem("[xdp]\ninterfaces = [\"eth0\", \"eth0\"]\n", "xdp.interfaces[1]").contains("twice"));
        assert!(problem("[xdp]\ninterfaces = [\"a/b\"]\n", "xdp.interfaces[0]").contains("invalid interface name"));
        assert!(problem("[xdp]\nmode = \"native\"\n", "xdp.mode").contains("xdp-driver"));
        assert!(problem("[xdp]\ndeny = [\"10.1.2.3/8\"]\n", "xdp.deny[0]").contains("did you mean \"10.0.0.0/8\""));
        assert!(problem("[xdp]\ndeny = [\"nonsense\"]\n", "xdp.deny[0]").contains("invalid CIDR"));
        assert!(
            problem("[xdp]\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]\n", "xdp.deny[0]")
                .contains("also in xdp.allow")
        );
        assert!(problem("[xdp]\nipv6_prefix = 0\n", "xdp.ipv6_prefix").contains("between 1 and 128"));
        assert!(problem("[xdp]\nipv4_prefix = 33\n", "xdp.ipv4_prefix").contains("between 1 and 32"));
        assert!(problem("[xdp]\nmax_sources = 10\n", "xdp.max_sources").contains("between 1024"));
        assert!(problem("[xdp.rate_limit]\nrate = 0\n", "xdp.rate_limit.rate").contains("between 1"));
        assert!(problem("[xdp.syn_limit]\nburst = 0\n", "xdp.syn_limit.burst").contains("between 1"));
        assert!(problem("[xdp.feedback]\nenabled = true\n", "xdp.feedback.enabled").contains("needs xdp.enabled"));
        assert!(
            problem("[xdp.feedback]\nreasons = [\"teapot\"]\n", "xdp.feedback.reasons[0]").contains("unknown reason")
        );
        assert!(
            problem("[xdp.feedback]\nempty_connection_threshold = 0\n", "xdp.feedback.empty_connection_threshold")
                .contains("at least 1")
        );
        assert!(problem("[server]\nworkers = 300\nsteering = \"cpu\"\n", "server.steering").contains("at most 256"));
        let unknown = load("[xdp]\nenabeld = true\n").expect_err("unknown key");
        assert_eq!(unknown[0].key, "enabeld");
        assert_eq!(unknown[0].line, 7, "{unknown:?}");
    }
}
