//! The two exposition formats of `/metrics` and how a scraper picks one with `Accept`.
//!
//! prometheus-client only writes OpenMetrics. Prometheus' classic text format 0.0.4 differs in
//! a few lines only, so it is derived from that output (no second registry walk, no second
//! encoder to keep in step): a counter family is named after its samples (`foo_total`, where
//! OpenMetrics says `foo`: a 0.0.4 parser would otherwise see an untyped `foo_total` beside an
//! empty counter `foo`, i.e. every counter twice), `# UNIT` and `# EOF` go, `unknown` is
//! `untyped`, and exemplars are cut off.

use std::fmt::Write as _;

pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// Picks the format as Prometheus' client libraries do (client_golang `expfmt.Negotiate`):
/// media ranges by descending `q` (ties in the client's order), the first one that names
/// OpenMetrics (version 1.0.0, 0.0.1 or none) or `text/plain` (version 0.0.4 or none) wins;
/// anything else (no header, `*/*`, protobuf) gets the classic text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Text };
    let mut ranges: Vec<MediaRange<'_>> = accept.split(',').filter_map(MediaRange::parse).collect();
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    for range in ranges.iter().filter(|r| r.q > 0.0) {
        let version = range.version.unwrap_or("");
        if range.essence.eq_ignore_ascii_case("application/openmetrics-text")
            && matches!(version, "" | "0.0.1" | "1.0.0")
        {
            return Format::OpenMetrics;
        }
        if range.essence.eq_ignore_ascii_case("text/plain") && matches!(version, "" | "0.0.4") {
            return Format::Text;
        }
    }
    Format::Text
}

struct MediaRange<'a> {
    essence: &'a str,
    version: Option<&'a str>,
    q: f64,
}

impl<'a> MediaRange<'a> {
    fn parse(range: &'a str) -> Option<Self> {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().filter(|e| !e.is_empty())?;
        let (mut version, mut q) = (None, 1.0);
        for param in parts {
            let Some((key, value)) = param.split_once('=') else { continue };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "version" => version = Some(value),
                // An unreadable q makes the range unacceptable rather than preferred.
                "q" => q = value.parse().ok().filter(|q: &f64| (0.0..=1.0).contains(q)).unwrap_or(0.0),
                _ => {}
            }
        }
        Some(MediaRange { essence, version, q })
    }
}

/// Rewrites prometheus-client's OpenMetrics output as text format 0.0.4.
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        // The encoder writes HELP then TYPE for each family: read both, then name the family.
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, text) = help.split_once(' ').unwrap_or((help, ""));
            let kind = lines
                .peek()
                .and_then(|next| next.strip_prefix("# TYPE "))
                .and_then(|t| t.strip_prefix(name)?.strip_prefix(' '));
            let Some(kind) = kind else {
                let _ = writeln!(out, "# HELP {name} {text}");
                continue;
            };
            lines.next();
            let (name, kind) = text_family(name, kind);
            let _ = writeln!(out, "# HELP {name} {text}\n# TYPE {name} {kind}");
            continue;
        }
        out.push_str(without_exemplar(line));
        out.push('\n');
    }
    out
}

/// `name{labels} value # {exemplar} value`: 0.0.4 has no exemplars. Label values may hold
/// ` # ` themselves, so the cut is searched after the label set.
fn without_exemplar(line: &str) -> &str {
    let mut labels_end = 0;
    if let Some(open) = line.find('{').filter(|open| !line[..*open].contains(' ')) {
        let (mut quoted, mut escaped) = (false, false);
        for (i, c) in line[open..].char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    labels_end = open + i;
                    break;
                }
                _ => {}
            }
        }
    }
    line[labels_end..].find(" # ").map_or(line, |cut| &line[..labels_end + cut])
}

/// The 0.0.4 family name and type for an OpenMetrics family.
fn text_family<'a>(name: &'a str, kind: &'a str) -> (std::borrow::Cow<'a, str>, &'a str) {
    match kind {
        "counter" if !name.ends_with("_total") => (format!("{name}_total").into(), kind),
        "unknown" => (name.into(), "untyped"),
        // 0.0.4 knows neither; their samples read as gauges.
        "info" | "stateset" | "gaugehistogram" => (name.into(), "gauge"),
        _ => (name.into(), kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_unless_openmetrics_is_asked_for() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("application/openmetrics-text")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text; version=2.0.0")), Format::Text);
        assert_eq!(
            negotiate(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.9"
            )),
            Format::Text
        );
    }

    #[test]
    fn prometheus_scrape_accept_headers_pick_by_q() {
        // Prometheus 2.42's default scrape Accept header.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prometheus)), Format::OpenMetrics);
        let text_first = "text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5";
        assert_eq!(negotiate(Some(text_first)), Format::Text);
        assert_eq!(negotiate(Some("text/plain;q=0.1, application/openmetrics-text;q=0.2")), Format::OpenMetrics);
        assert_eq!(negotiate(Some("application/openmetrics-text;q=0")), Format::Text);
    }

    #[test]
    fn counters_are_named_after_their_samples_and_listed_once() {
        let om = "# HELP gateway_http_requests Requests.\n# TYPE gateway_http_requests counter\n\
                  gateway_http_requests_total{route=\"a\"} 3\n\
                  # HELP gateway_up_seconds Up.\n# TYPE gateway_up_seconds gauge\n# UNIT gateway_up_seconds seconds\n\
                  gateway_up_seconds 1.5\n\
                  # HELP gateway_x_total Already total.\n# TYPE gateway_x_total counter\ngateway_x_total{c=\"d # e\"} 1 # {a=\"b\"} 1.0\n\
                  # HELP gateway_odd Odd.\n# TYPE gateway_odd unknown\ngateway_odd 2\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP gateway_http_requests_total Requests.\n# TYPE gateway_http_requests_total counter\n\
             gateway_http_requests_total{route=\"a\"} 3\n\
             # HELP gateway_up_seconds Up.\n# TYPE gateway_up_seconds gauge\ngateway_up_seconds 1.5\n\
             # HELP gateway_x_total Already total.\n# TYPE gateway_x_total counter\ngateway_x_total{c=\"d # e\"} 1\n\
             # HELP gateway_odd Odd.\n# TYPE gateway_odd untyped\ngateway_odd 2\n"
        );
    }
}
