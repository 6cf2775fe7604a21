//! The validated `[xdp]` section and `[server] steering`: the guard's own config spec (the
//! config module parses the file and builds these).

use std::{path::PathBuf, time::Duration};

use ipnet::IpNet;

use serde::Deserialize;

use super::AttachMode;

/// The guard's settings. `enabled = false` leaves the rest at its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpSpec {
    pub enabled: bool,
    pub interfaces: Vec<String>,
    /// `None`: automatic (native XDP, generic XDP, TC).
    pub mode: Option<AttachMode>,
    pub pin_path: PathBuf,
    pub keep_attached: bool,
    pub max_sources: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub new_sources_per_cpu: u64,
    /// Normalized (host bits cleared), without duplicates.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// `None`: that limit is off.
    pub rate_limit: Option<RateSpec>,
    pub syn_limit: Option<RateSpec>,
    pub feedback: Option<FeedbackSpec>,
    pub steering: NicSteeringPolicy,
    /// UDP destination ports dropped in the guard: the TCP listeners' ports (gatewayd serves no
    /// UDP; a future UDP listener's ports must be left out), unless `drop_udp_to_listeners = false`.
    pub closed_udp_ports: Vec<u16>,
    /// `[xdp] syn_cookies`: whether SYNs to listeners are answered with cookies in XDP.
    pub syn_cookies: SynCookiePolicy,
    /// SYNs per CPU and second beyond which `Auto` answers them in XDP (at least 1).
    pub syn_cookie_threshold: u64,
}

/// `[xdp] syn_cookies`: SYN cookies answered by the guard (XDP native or generic, or TC).
/// Either way the kernel decides whether a cookie is due (its SYN queue is full, or
/// `net.ipv4.tcp_syncookies = 2`); this decides whether XDP asks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SynCookiePolicy {
    /// Never: every SYN goes to the kernel.
    Off,
    /// Once a CPU sees more than `syn_cookie_threshold_per_cpu` SYNs in a second (a flood);
    /// below it SYNs cost no socket lookup.
    #[default]
    Auto,
    /// Every SYN to a listener.
    Always,
}

impl SynCookiePolicy {
    /// As written in the config.
    pub const fn label(self) -> &'static str {
        match self {
            SynCookiePolicy::Off => "off",
            SynCookiePolicy::Auto => "auto",
            SynCookiePolicy::Always => "always",
        }
    }
}

/// `[xdp] steering`: whether the XDP program steers each client's packets to its worker's CPU.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicSteeringPolicy {
    /// Packets are processed on the CPU the NIC picked; workers are chosen at accept.
    #[default]
    Off,
    /// A `BPF_MAP_TYPE_CPUMAP` redirect to the CPU of the client's worker (native XDP only).
    Cpumap,
}

impl NicSteeringPolicy {
    /// As written in the config.
    pub const fn label(self) -> &'static str {
        match self {
            NicSteeringPolicy::Off => "off",
            NicSteeringPolicy::Cpumap => "cpumap",
        }
    }
}

/// A token bucket: `rate` per second, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSpec {
    pub rate: u64,
    pub burst: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackSpec {
    pub threshold: u32,
    /// Connections closed without a request within `window` that get a source blocked (counted
    /// apart from the refusals: see [`FeedbackReason::EmptyConnection`]).
    pub empty_connection_threshold: u32,
    pub window: Duration,
    pub block_for: Duration,
    pub reasons: Vec<FeedbackReason>,
    pub max_tracked: usize,
}

/// Which L7 refusals count against a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeedbackReason {
    /// 401 and 403 answered by the gateway (failed or missing authentication).
    Auth,
    /// 429 answered by the gateway.
    RateLimit,
    /// The gateway's own 404 (no route: scanners).
    NotFound,
    /// A connection that ended (reset, closed, timed out, failed its TLS handshake) before a
    /// complete request: a connection flood of real handshakes costs the gateway an accept and
    /// a task per connection and never shows an L7 refusal. Counted against its own threshold.
    EmptyConnection,
}

impl FeedbackReason {
    pub const ALL: [FeedbackReason; 4] =
        [FeedbackReason::Auth, FeedbackReason::RateLimit, FeedbackReason::NotFound, FeedbackReason::EmptyConnection];

    pub const fn label(self) -> &'static str {
        match self {
            FeedbackReason::Auth => "auth",
            FeedbackReason::RateLimit => "rate_limit",
            FeedbackReason::NotFound => "not_found",
            FeedbackReason::EmptyConnection => "empty_connection",
        }
    }

    /// The reason behind a refusal status, if it is one that counts.
    pub const fn of_status(status: u16) -> Option<FeedbackReason> {
        match status {
            401 | 403 => Some(FeedbackReason::Auth),
            429 => Some(FeedbackReason::RateLimit),
            404 => Some(FeedbackReason::NotFound),
            _ => None,
        }
    }
}

/// `[server] steering`: how new connections are spread over workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SteeringPolicy {
    /// The kernel's SO_REUSEPORT hash of the 4-tuple.
    #[default]
    None,
    /// The worker of the CPU that received the connection (pair with `pin_workers`).
    Cpu,
    /// A hash of the client address: reconnects land on the worker holding the client's state.
    ClientHash,
}

impl SteeringPolicy {
    /// As written in the config.
    pub const fn label(self) -> &'static str {
        match self {
            SteeringPolicy::None => "none",
            SteeringPolicy::Cpu => "cpu",
            SteeringPolicy::ClientHash => "client_hash",
        }
    }
}
