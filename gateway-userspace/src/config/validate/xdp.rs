//! `[xdp]` and `[server] steering` → [`XdpSpec`].

use std::path::PathBuf;

use ipnet::IpNet;

use super::{Validator, parse_cidr, root};
use crate::{
    config::{
        FeedbackReason, FeedbackSpec, RateSpec, XdpSpec,
        schema::{SteeringPolicy, XdpFeedbackSection, XdpRateSection, XdpSection},
    },
    ebpf::{AttachMode, normalize_net, validate_iface},
};

/// Packets per second the GCRA arithmetic handles exactly enough (one interval ≥ 1 ns).
const MAX_RATE: u64 = 1_000_000_000;

impl Validator<'_> {
    pub(super) fn xdp(&mut self, x: &XdpSection) -> XdpSpec {
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
        if x.new_sources_per_cpu == 0 {
            self.problem(path("new_sources_per_cpu"), "must be at least 1");
        }
        let allow = self.cidrs(&x.allow, "allow");
        let deny = self.cidrs(&x.deny, "deny");
        for (i, net) in x.deny.iter().enumerate() {
            if let Ok(n) = parse_cidr(net).map(normalize_net)
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
        }
    }

    fn cidrs(&mut self, raw: &[String], key: &str) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let at = || root("xdp").key(key).index(i);
            match parse_cidr(s) {
                Ok(net) if net.trunc() != net => {
                    self.problem(at(), format!("{s:?} has host bits set; did you mean \"{}\"?", net.trunc()));
                }
                Ok(net) => {
                    let net = normalize_net(net);
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
                    format!("unknown reason {r:?}: expected \"auth\", \"rate_limit\" or \"not_found\""),
                ),
            }
        }
        f.enabled.then(|| FeedbackSpec {
            threshold: f.threshold.max(1),
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
