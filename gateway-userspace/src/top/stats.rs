//! What `gatewayd top` shows, computed from two scrapes: counter increases over the time
//! between them as rates, and latency quantiles from the histogram buckets' increases (as
//! Prometheus' `histogram_quantile(rate(…))` does), so each refresh shows the last interval,
//! not the average since the daemon started.

use std::collections::BTreeMap;

use super::scrape::{Sample, Scrape};

/// A counter's increase between two scrapes; a counter that went down was reset (the daemon
/// restarted), and has counted its current value since.
pub fn increase(prev: Option<f64>, cur: f64) -> f64 {
    match prev {
        Some(p) if cur >= p => cur - p,
        Some(_) => cur,
        None => cur,
    }
}

/// The `q` quantile of a histogram given as cumulative counts per upper bound (`le`, sorted,
/// `+Inf` last), interpolated linearly inside the bucket it falls in, like Prometheus'
/// `histogram_quantile`. `None` without observations. A quantile in the `+Inf` bucket is the
/// highest finite bound (nothing better is known).
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let in_bucket = count - below;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower + (le - lower) * (rank - below) / in_bucket);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One route's line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteRow {
    pub route: String,
    /// Requests since the daemon started.
    pub requests: f64,
    /// The rates and quantiles are `None` on the first scrape (nothing to compare with);
    /// quantiles also when the interval saw no request.
    pub rate: Option<f64>,
    pub error_ratio: Option<f64>,
    pub limited_rate: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub overhead_p99: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub routes: Vec<RouteRow>,
    pub rate: Option<f64>,
    pub error_ratio: Option<f64>,
    pub limited_rate: Option<f64>,
    pub connections: f64,
    /// Requests per second by consumer (present when the daemon labels requests by consumer).
    pub consumers: Vec<(String, f64)>,
    pub tls_handshake_rate: Option<f64>,
    /// Failed handshakes since start, by reason.
    pub tls_failures: Vec<(String, f64)>,
    pub xdp_drop_rate: Option<f64>,
    /// Redis targets and whether each is up.
    pub redis: Vec<(String, bool)>,
    /// Issuers and their state: `ok`, `open`, `half-open` or `failed closed`.
    pub idps: Vec<(String, &'static str)>,
    /// Busy share of all CPUs, and the softirq share, over the interval.
    pub cpu_busy: Option<f64>,
    pub cpu_softirq: Option<f64>,
    /// Hottest sensor (thermal zones and hwmon).
    pub temperature: Option<f64>,
}

/// Two scrapes and the seconds between them.
pub struct Window<'a> {
    pub prev: Option<&'a Scrape>,
    pub cur: &'a Scrape,
    pub secs: f64,
}

impl Window<'_> {
    fn increase(&self, s: &Sample) -> Option<f64> {
        let prev = self.prev?;
        Some(increase(prev.value_of(&s.series), s.value))
    }

    /// Sum of the increases of the samples of `name` that `keep` accepts.
    fn increase_of(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        self.prev?;
        Some(self.cur.samples(name).filter(|s| keep(s)).filter_map(|s| self.increase(s)).fold(0.0, add))
    }

    fn rate_of(&self, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
        self.increase_of(name, keep).map(|n| n / self.secs.max(f64::EPSILON))
    }

    /// Per route, the quantile of the increase of histogram `name` over the interval.
    fn route_quantile(&self, name: &str, route: &str, q: f64) -> Option<f64> {
        let bucket = format!("{name}_bucket");
        let mut by_le: BTreeMap<Bound, f64> = BTreeMap::new();
        for s in self.cur.samples(&bucket).filter(|s| s.label("route") == Some(route)) {
            let le = s.label("le").and_then(|v| v.parse::<f64>().ok())?;
            *by_le.entry(Bound(le)).or_default() += self.increase(s)?;
        }
        let buckets: Vec<(f64, f64)> = by_le.into_iter().map(|(Bound(le), n)| (le, n)).collect();
        quantile(q, &buckets)
    }

    pub fn figures(&self) -> Figures {
        const REQUESTS: &str = "gateway_http_requests_total";
        let is_5xx = |s: &Sample| s.label("status").is_some_and(|v| v.starts_with('5'));
        let is_429 = |s: &Sample| s.label("status") == Some("429");
        let ratio = |part: Option<f64>, all: Option<f64>| match (part, all) {
            (Some(p), Some(a)) if a > 0.0 => Some(p / a),
            _ => None,
        };
        let mut routes: BTreeMap<&str, f64> = BTreeMap::new();
        for s in self.cur.samples(REQUESTS) {
            *routes.entry(s.label("route").unwrap_or("")).or_default() += s.value;
        }
        let routes = routes
            .into_iter()
            .map(|(route, requests)| {
                let mine = |s: &Sample| s.label("route").unwrap_or("") == route;
                let all = self.increase_of(REQUESTS, mine);
                RouteRow {
                    route: if route.is_empty() { "(no route)".to_owned() } else { route.to_owned() },
                    requests,
                    rate: all.map(|n| n / self.secs.max(f64::EPSILON)),
                    error_ratio: ratio(self.increase_of(REQUESTS, |s| mine(s) && is_5xx(s)), all),
                    limited_rate: self.rate_of(REQUESTS, |s| mine(s) && is_429(s)),
                    p50: self.route_quantile("gateway_request_duration_seconds", route, 0.5),
                    p99: self.route_quantile("gateway_request_duration_seconds", route, 0.99),
                    overhead_p99: self.route_quantile("gateway_proxy_overhead_seconds", route, 0.99),
                }
            })
            .collect();
        Figures {
            routes,
            rate: self.rate_of(REQUESTS, |_| true),
            error_ratio: ratio(self.increase_of(REQUESTS, is_5xx), self.increase_of(REQUESTS, |_| true)),
            limited_rate: self.rate_of(REQUESTS, is_429),
            connections: self.cur.samples("gateway_connections_active").map(|s| s.value).fold(0.0, add),
            consumers: self.consumers(REQUESTS),
            tls_handshake_rate: self.rate_of("gateway_tls_handshakes_total", |_| true),
            tls_failures: sum_by(self.cur.samples("gateway_tls_handshakes_total"), "result", |r| r != "ok"),
            xdp_drop_rate: self
                .rate_of("gateway_xdp_packets_total", |s| s.label("verdict").is_some_and(|v| v.starts_with("drop"))),
            redis: self
                .cur
                .samples("gateway_redis_up")
                .map(|s| (s.label("target").unwrap_or("?").to_owned(), s.value > 0.0))
                .collect(),
            idps: self.idps(),
            cpu_busy: self.cpu_share(|mode| mode != "idle" && mode != "iowait"),
            cpu_softirq: self.cpu_share(|mode| mode == "softirq"),
            temperature: self
                .cur
                .samples("gateway_thermal_zone_temperature_celsius")
                .chain(self.cur.samples("gateway_hwmon_temperature_celsius"))
                .map(|s| s.value)
                .reduce(f64::max),
        }
    }

    /// Request rates by the consumer label (`consumer` or `consumer_id`), busiest first.
    fn consumers(&self, requests: &str) -> Vec<(String, f64)> {
        let mut by: BTreeMap<&str, f64> = BTreeMap::new();
        for s in self.cur.samples(requests) {
            if let (Some(c), Some(n)) = (s.label("consumer").or(s.label("consumer_id")), self.increase(s)) {
                *by.entry(c).or_default() += n / self.secs.max(f64::EPSILON);
            }
        }
        let mut v: Vec<(String, f64)> = by.into_iter().map(|(c, r)| (c.to_owned(), r)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }

    fn idps(&self) -> Vec<(String, &'static str)> {
        let mut state: BTreeMap<String, &'static str> = BTreeMap::new();
        for s in self.cur.samples("gateway_auth_idp_breaker_state") {
            let label = match s.value as u8 {
                0 => "ok",
                1 => "open",
                _ => "half-open",
            };
            state.insert(s.label("issuer").unwrap_or("?").to_owned(), label);
        }
        for s in self.cur.samples("gateway_auth_issuer_failed_closed").filter(|s| s.value > 0.0) {
            state.insert(s.label("issuer").unwrap_or("?").to_owned(), "failed closed");
        }
        state.into_iter().collect()
    }

    /// Share of CPU time (all CPUs) spent in the modes `count` accepts over the interval.
    fn cpu_share(&self, count: impl Fn(&str) -> bool) -> Option<f64> {
        let all = self.increase_of("gateway_cpu_seconds_total", |_| true)?;
        let part = self.increase_of("gateway_cpu_seconds_total", |s| s.label("mode").is_some_and(&count))?;
        (all > 0.0).then(|| part / all)
    }
}

/// Sums start from +0.0 with this: `Iterator::sum` of no floats is -0.0, shown as "-0.0".
fn add(a: f64, b: f64) -> f64 {
    a + b
}

/// Current values of `name` summed by `label`, for the label values `keep` accepts; largest
/// first, zeros left out.
fn sum_by<'a>(
    samples: impl Iterator<Item = &'a Sample>,
    label: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, f64)> {
    let mut by: BTreeMap<&str, f64> = BTreeMap::new();
    for s in samples {
        if let Some(v) = s.label(label).filter(|v| keep(v)) {
            *by.entry(v).or_default() += s.value;
        }
    }
    let mut v: Vec<(String, f64)> = by.into_iter().filter(|(_, n)| *n > 0.0).map(|(k, n)| (k.to_owned(), n)).collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// A bucket bound, ordered (bounds are never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound(f64);

impl Eq for Bound {}

impl PartialOrd for Bound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests;
