//! Read-only views for operators and agents (`gatewayd mcp`): routes and services with their
//! targets' health (`GET /v1/routes`), and recent refusals read back from the audit log
//! (`GET /v1/refusals`).

use std::io::{Read, Seek, SeekFrom};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;

use super::{AdminServer, json};

/// How much of the audit log's end `GET /v1/refusals` reads.
const REFUSALS_TAIL_BYTES: u64 = 8 * 1024 * 1024;

/// Filters for `GET /v1/refusals` (query string).
#[derive(Debug, Default, Clone)]
pub struct RefusalFilter {
    pub route: Option<String>,
    pub consumer: Option<String>,
    /// An exact status (`429`) or a class (`4xx`, `5xx`).
    pub status: Option<String>,
    /// Only lines at or after this RFC 3339 time.
    pub since: Option<std::time::SystemTime>,
    pub limit: usize,
}

impl RefusalFilter {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut f = RefusalFilter { limit: 50, ..Default::default() };
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "route" => f.route = Some(v.into_owned()),
                "consumer" => f.consumer = Some(v.into_owned()),
                "status" => f.status = Some(v.into_owned()),
                "since" => {
                    f.since = Some(humantime::parse_rfc3339_weak(&v).map_err(|e| format!("since: {e}"))?);
                }
                "limit" => f.limit = v.parse::<usize>().map_err(|e| format!("limit: {e}"))?.clamp(1, 1000),
                other => return Err(format!("unknown filter {other:?} (route, consumer, status, since, limit)")),
            }
        }
        Ok(f)
    }

    fn matches(&self, line: &serde_json::Value) -> bool {
        let Some(status) = line["status_code"].as_u64() else { return false };
        if status < 400 {
            return false;
        }
        let status_ok = match self.status.as_deref() {
            None => true,
            Some(class) if class.len() == 3 && class.ends_with("xx") => {
                class.as_bytes()[0].is_ascii_digit() && u64::from(class.as_bytes()[0] - b'0') == status / 100
            }
            Some(exact) => exact.parse::<u64>().ok() == Some(status),
        };
        let field_ok = |want: &Option<String>, key: &str| want.as_deref().is_none_or(|w| line[key].as_str() == Some(w));
        let since_ok = self.since.is_none_or(|since| {
            line["timestamp"].as_str().and_then(|t| humantime::parse_rfc3339_weak(t).ok()).is_some_and(|t| t >= since)
        });
        status_ok && field_ok(&self.route, "route") && field_ok(&self.consumer, "consumer") && since_ok
    }
}

/// The newest refusals (status ≥ 400) in the last `REFUSALS_TAIL_BYTES` of the audit log.
pub fn read_refusals(path: &std::path::Path, filter: &RefusalFilter) -> std::io::Result<Vec<serde_json::Value>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(REFUSALS_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    // Bytes, then lossy text: the cut may split a multi-byte character (that line is dropped).
    let mut bytes = Vec::new();
    file.take(REFUSALS_TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // a partial line
    }
    Ok(lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| filter.matches(v))
        .take(filter.limit)
        .collect())
}

impl AdminServer {
    pub(super) fn routes(&self) -> Response<Full<Bytes>> {
        let s = self.shared.snapshot.load();
        let services: Vec<_> = s
            .services
            .iter()
            .map(|svc| {
                let targets: Vec<_> = svc
                    .targets
                    .iter()
                    .map(|t| {
                        serde_json::json!({
                            "target": &*t.label,
                            "up": t.state.is_up(),
                            "drained": t.state.is_drained(),
                            "in_flight": t.state.active(),
                        })
                    })
                    .collect();
                serde_json::json!({"name": &*svc.spec.name, "lb": format!("{:?}", svc.spec.lb), "targets": targets})
            })
            .collect();
        let routes: Vec<_> = s
            .config
            .routes
            .routes()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": &*r.name,
                    "hosts": r.hosts.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>(),
                    "paths": r.paths,
                    "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                    "service": s.services.get(r.service).map(|svc| &*svc.spec.name),
                })
            })
            .collect();
        json(StatusCode::OK, &serde_json::json!({"routes": routes, "services": services}))
    }

    pub(super) async fn refusals(&self, query: Option<&str>) -> Response<Full<Bytes>> {
        let filter = match RefusalFilter::parse(query) {
            Ok(f) => f,
            Err(message) => return super::bad_request(&message),
        };
        let Some(sink) = self.shared.parts.audit() else {
            return json(
                StatusCode::CONFLICT,
                &serde_json::json!({"error": "audit_disabled", "message": "the audit log is not enabled ([audit])"}),
            );
        };
        let path = sink.path().to_owned();
        match tokio::task::spawn_blocking(move || read_refusals(&path, &filter)).await {
            Ok(Ok(lines)) => json(StatusCode::OK, &serde_json::json!({"refusals": lines})),
            Ok(Err(e)) => json(StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!({"error": e.to_string()})),
            Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({"error": "shutting_down"})),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_filtered_newest_first() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("audit.log");
        let lines = [
            r#"{"timestamp":"2026-12-05T01:00:00Z","status_code":200,"route":"a","consumer":null}"#,
            r#"{"timestamp":"2026-12-05T01:00:01Z","status_code":429,"route":"a","consumer":"acme"}"#,
            r#"{"timestamp":"2026-12-05T01:00:02Z","event":"change_requested"}"#,
            r#"{"timestamp":"2026-12-05T01:00:03Z","status_code":503,"route":"b","consumer":null}"#,
            r#"{"timestamp":"2026-12-05T01:00:04Z","status_code":401,"route":"a","consumer":null}"#,
        ];
        std::fs::write(&path, lines.join("\n") + "\n").unwrap_or_else(|e| panic!("{e}"));
        let read = |q: &str| {
            let f = RefusalFilter::parse(Some(q)).unwrap_or_else(|e| panic!("{e}"));
            read_refusals(&path, &f)
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .map(|v| v["status_code"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(read(""), [401, 503, 429]);
        assert_eq!(read("route=a"), [401, 429]);
        assert_eq!(read("status=4xx"), [401, 429]);
        assert_eq!(read("status=503"), [503]);
        assert_eq!(read("consumer=acme"), [429]);
        assert_eq!(read("since=2026-12-05T01:00:02Z"), [401, 503]);
        assert_eq!(read("limit=1"), [401]);
        assert!(RefusalFilter::parse(Some("colour=red")).is_err());
    }
}
