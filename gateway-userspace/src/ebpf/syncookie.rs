//! `[xdp] syn_cookies`: what the kernel's own setting means for it, said once at start and reload.
//!
//! The guard (XDP or TC) asks the kernel for each cookie (`bpf_tcp_gen_syncookie`), and the
//! kernel hands one out only when it would send one itself: `net.ipv4.tcp_syncookies = 1` (the default) while
//! the listener's SYN queue is full, `2` always, `0` never. So "auto" under a flood works with the
//! default, "always" needs 2 to answer every SYN, and 0 turns the feature off whatever it says.

use super::{SynCookiePolicy, XdpSpec};

const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// Logs the effective behaviour (a warning where the setting cannot do what it says).
pub(super) fn log_policy(spec: &XdpSpec) {
    let policy = spec.syn_cookies;
    if policy == SynCookiePolicy::Off {
        return;
    }
    let kernel = std::fs::read_to_string(SYSCTL).ok().and_then(|s| s.trim().parse::<u8>().ok());
    match (policy, kernel) {
        (_, Some(0)) => tracing::warn!(
            policy = policy.label(),
            "xdp syn cookies: net.ipv4.tcp_syncookies = 0, the kernel hands out no cookies: every SYN goes to the kernel"
        ),
        (SynCookiePolicy::Always, Some(1)) => tracing::warn!(
            "xdp syn cookies \"always\": net.ipv4.tcp_syncookies = 1 gives cookies only while a listener's SYN queue is full; set it to 2 to answer every SYN in XDP or TC"
        ),
        (_, None) => tracing::warn!(path = SYSCTL, "xdp syn cookies: cannot read the kernel's setting"),
        _ => tracing::info!(
            policy = policy.label(),
            threshold_per_cpu = spec.syn_cookie_threshold,
            kernel = kernel.unwrap_or_default(),
            "xdp syn cookies: SYNs to listeners answered by the guard (XDP or TC) when the kernel would send a cookie"
        ),
    }
}
