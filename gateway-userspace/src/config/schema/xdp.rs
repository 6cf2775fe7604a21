//! `[xdp]` and `[server] steering`: the eBPF data plane as written by users.

use std::time::Duration;

use serde::Deserialize;

use crate::ebpf::{NicSteeringPolicy, SynCookiePolicy};

/// `[xdp]`: the XDP/TC guard in front of the kernel stack. Off by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// Load the guard and attach it to `interfaces`. Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Network interfaces to attach to. Required when enabled.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// `"auto"` (native XDP, else generic XDP, else TC, saying which took), `"xdp-driver"`,
    /// `"xdp-skb"` or `"tc"`. Default: `"auto"`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// bpffs directory for pinned maps and links (buckets and counters survive restarts; a second
    /// instance on the same directory is refused). Default: `/sys/fs/bpf/gatewayd`.
    #[serde(default = "default_pin_path")]
    pub pin_path: String,
    /// Leave the guard attached (and enforcing) when the daemon stops, so a restart leaves no gap;
    /// the next start adopts it. Default: false (detach on stop).
    #[serde(default)]
    pub keep_attached_on_restart: bool,
    /// Sources tracked at once (4-way sets, see `gateway_common::sources`). Default: 262144.
    #[serde(default = "default_max_sources")]
    pub max_sources: u32,
    /// IPv4 sources share a bucket per prefix of this length. Default: 32.
    #[serde(default = "default_ipv4_prefix")]
    pub ipv4_prefix: u8,
    /// IPv6 sources share a bucket per prefix of this length (an attacker rotates addresses
    /// inside its /64). Default: 64.
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
    /// Busy evictions (resetting buckets that are not full) each CPU may make per second;
    /// beyond it new sources share one overflow bucket instead. Default: 10000.
    #[serde(default = "default_new_sources")]
    pub new_sources_per_cpu: u64,
    /// CIDRs (or addresses) that bypass every check. Default: none.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs (or addresses) that are dropped. Default: none.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Per-source limit on all packets. Default: on, 20000 packets/s, burst 40000.
    #[serde(default)]
    pub rate_limit: XdpRateSection,
    /// Per-source limit on TCP SYNs (new connections). Default: on, 200/s, burst 400.
    #[serde(default)]
    pub syn_limit: XdpRateSection,
    #[serde(default)]
    pub feedback: XdpFeedbackSection,
    /// Drop UDP to the ports of gatewayd's listeners (it serves TCP only there: such UDP is a
    /// flood or junk). Turn off if another program on this host serves UDP on one of those ports.
    /// Default: true.
    #[serde(default = "default_true")]
    pub drop_udp_to_listeners: bool,
    /// `"off"` or `"cpumap"`: steer each client's TCP packets to its worker's CPU in XDP (native
    /// XDP only; needs `server.steering = "client_hash"` and `server.pin_workers`). Default: off.
    #[serde(default)]
    pub steering: NicSteeringPolicy,
    /// `"auto"`, `"always"` or `"off"`: answer SYNs to listeners with the kernel's SYN cookie in
    /// XDP or TC (a spoofed SYN flood then never reaches the TCP stack). `"auto"` asks once a CPU
    /// sees more than `syn_cookie_threshold_per_cpu` SYNs a second; the kernel still decides
    /// whether a cookie is due (SYN queue full, or `net.ipv4.tcp_syncookies = 2`). Default: "auto".
    #[serde(default)]
    pub syn_cookies: SynCookiePolicy,
    /// See `syn_cookies`. Default: 1000.
    #[serde(default = "default_syn_cookie_threshold")]
    pub syn_cookie_threshold_per_cpu: u64,
}

fn default_syn_cookie_threshold() -> u64 {
    1000
}

impl Default for XdpSection {
    fn default() -> Self {
        Self {
            enabled: false,
            interfaces: Vec::new(),
            mode: default_mode(),
            pin_path: default_pin_path(),
            keep_attached_on_restart: false,
            max_sources: default_max_sources(),
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            new_sources_per_cpu: default_new_sources(),
            allow: Vec::new(),
            deny: Vec::new(),
            rate_limit: XdpRateSection::default(),
            syn_limit: XdpRateSection::default(),
            feedback: XdpFeedbackSection::default(),
            drop_udp_to_listeners: true,
            steering: NicSteeringPolicy::default(),
            syn_cookies: SynCookiePolicy::default(),
            syn_cookie_threshold_per_cpu: default_syn_cookie_threshold(),
        }
    }
}

/// `[xdp.rate_limit]`, `[xdp.syn_limit]`: a per-source token bucket. Defaults depend on which.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpRateSection {
    /// Default: true.
    pub enabled: Option<bool>,
    /// Sustained packets per second per source.
    pub rate: Option<u64>,
    /// Packets a source may send at once after being quiet. Default: twice the rate.
    pub burst: Option<u64>,
}

/// `[xdp.feedback]`: sources the L7 layers keep refusing are put in the deny list for a while,
/// so repeat offenders stop costing TLS handshakes. Off by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpFeedbackSection {
    /// Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Refusals within `window` that get a source blocked. Default: 20.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// Connections closed without a complete request (reason `"empty_connection"`) within
    /// `window` that get a source blocked: a connection flood of real handshakes. Default: 50
    /// (a TCP health check every 1.2 s or slower stays below it; put checkers in `xdp.allow`).
    #[serde(default = "default_empty_connection_threshold")]
    pub empty_connection_threshold: u32,
    /// Default: 60s.
    #[serde(default = "default_window", with = "humantime_serde")]
    pub window: Duration,
    /// How long a repeat offender stays blocked. Default: 10m.
    #[serde(default = "default_block_for", with = "humantime_serde")]
    pub block_for: Duration,
    /// Which refusals count: `"auth"` (401/403), `"rate_limit"` (429), `"not_found"` (the
    /// gateway's own 404), `"empty_connection"` (closed before a complete request). Default: all four.
    #[serde(default = "default_reasons")]
    pub reasons: Vec<String>,
    /// Sources counted at once; beyond it new ones are not counted until old windows expire.
    /// Default: 65536.
    #[serde(default = "default_max_tracked")]
    pub max_tracked: usize,
}

impl Default for XdpFeedbackSection {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: default_threshold(),
            empty_connection_threshold: default_empty_connection_threshold(),
            window: default_window(),
            block_for: default_block_for(),
            reasons: default_reasons(),
            max_tracked: default_max_tracked(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_mode() -> String {
    "auto".into()
}
fn default_pin_path() -> String {
    "/sys/fs/bpf/gatewayd".into()
}
fn default_max_sources() -> u32 {
    gateway_common::xdp::DEFAULT_MAX_SOURCES
}
fn default_ipv4_prefix() -> u8 {
    32
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_new_sources() -> u64 {
    10_000
}
fn default_threshold() -> u32 {
    20
}
fn default_empty_connection_threshold() -> u32 {
    50
}
fn default_window() -> Duration {
    Duration::from_secs(60)
}
fn default_block_for() -> Duration {
    Duration::from_secs(600)
}
fn default_reasons() -> Vec<String> {
    vec!["auth".into(), "rate_limit".into(), "not_found".into(), "empty_connection".into()]
}
fn default_max_tracked() -> usize {
    65_536
}
