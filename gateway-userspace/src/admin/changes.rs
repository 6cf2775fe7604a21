//! Changes asked for by an agent (`gatewayd mcp`) that wait for a person. A change is stored
//! as pending with an id, a summary and a one-time approval token; nothing happens until it is
//! approved on the host (`gatewayd approve ID`, through this socket) or with its token (handed to
//! the person out of band: `gatewayd changes` on the host shows it; compared in constant time).
//! Pending changes expire. Every request, approval, refusal, rejection, expiry and result is an
//! audit log event (and a log line, without the token).

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};

use super::{AdminServer, json};

/// How long a change waits for a person.
pub const PENDING_TTL: Duration = Duration::from_secs(15 * 60);
/// Wrong tokens after which a change is rejected (a token is 122 random bits; this only stops
/// an agent from trying forever).
const MAX_WRONG_TOKENS: u32 = 3;
/// Finished changes kept for `GET /v1/changes`.
const KEEP_FINISHED: usize = 100;

/// What a change does (the admin action it runs once approved).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    Reload,
    XdpBlock { cidr: String, for_secs: Option<u64> },
    XdpUnblock { cidr: String },
    RevokeJti { jti: String, until: u64 },
    DrainTarget { service: String, target: String, drain: bool },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeState {
    Pending,
    /// Approved; its action is running.
    Applying,
    Applied,
    Failed,
    Rejected,
    Expired,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub id: String,
    #[serde(flatten)]
    pub kind: ChangeKind,
    pub summary: String,
    pub requested_by: String,
    pub requested_at: u64,
    pub expires_at: u64,
    pub state: ChangeState,
    /// `host` (the admin socket) or `token`.
    pub approved_by: Option<&'static str>,
    pub result: Option<serde_json::Value>,
    #[serde(skip)]
    token: String,
    #[serde(skip)]
    wrong_tokens: u32,
}

/// Why an approval was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    NotPending(ChangeState),
    WrongToken { rejected: bool },
}

#[derive(Debug, Default)]
pub struct Changes {
    inner: Mutex<BTreeMap<String, Change>>,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Changes {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Change>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores a pending change and returns it with its token.
    pub fn request(&self, kind: ChangeKind, summary: String, requested_by: String, now: u64) -> (Change, String) {
        let id = format!("chg-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let change = Change {
            id: id.clone(),
            kind,
            summary,
            requested_by,
            requested_at: now,
            expires_at: now + PENDING_TTL.as_secs(),
            state: ChangeState::Pending,
            approved_by: None,
            result: None,
            token: token.clone(),
            wrong_tokens: 0,
        };
        let mut all = self.lock();
        all.insert(id, change.clone());
        // Forget the oldest finished ones; pending ones are bounded by their expiry.
        let finished: Vec<String> = all
            .values()
            .filter(|c| !matches!(c.state, ChangeState::Pending | ChangeState::Applying))
            .map(|c| (c.requested_at, c.id.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        for id in finished.iter().take(finished.len().saturating_sub(KEEP_FINISHED)) {
            all.remove(id);
        }
        (change, token)
    }

    /// Marks pending changes past their time as expired and returns them.
    pub fn expire(&self, now: u64) -> Vec<Change> {
        let mut expired = Vec::new();
        for c in self.lock().values_mut() {
            if c.state == ChangeState::Pending && now >= c.expires_at {
                c.state = ChangeState::Expired;
                expired.push(c.clone());
            }
        }
        expired
    }

    /// Every change (tokens only when `with_tokens`: for the host's `gatewayd changes`).
    pub fn list(&self, with_tokens: bool) -> Vec<serde_json::Value> {
        self.lock()
            .values()
            .map(|c| {
                let mut v = serde_json::to_value(c).unwrap_or_default();
                if with_tokens && c.state == ChangeState::Pending {
                    v["approval_token"] = serde_json::Value::String(c.token.clone());
                }
                v
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<Change> {
        self.lock().get(id).cloned()
    }

    /// Takes a pending change for applying: from the host (`token` None) or with its token,
    /// compared in constant time. Only one caller can win a change.
    pub fn approve(&self, id: &str, token: Option<&str>, now: u64) -> Result<Change, Refusal> {
        let mut all = self.lock();
        let c = all.get_mut(id).ok_or(Refusal::NotFound)?;
        if c.state == ChangeState::Pending && now >= c.expires_at {
            c.state = ChangeState::Expired;
        }
        if c.state != ChangeState::Pending {
            return Err(Refusal::NotPending(c.state));
        }
        if let Some(given) = token {
            let ok = aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), c.token.as_bytes()).is_ok();
            if !ok {
                c.wrong_tokens += 1;
                let rejected = c.wrong_tokens >= MAX_WRONG_TOKENS;
                if rejected {
                    c.state = ChangeState::Rejected;
                    c.result = Some(serde_json::json!({"reason": "too many wrong approval tokens"}));
                }
                return Err(Refusal::WrongToken { rejected });
            }
        }
        c.state = ChangeState::Applying;
        c.approved_by = Some(if token.is_some() { "token" } else { "host" });
        Ok(c.clone())
    }

    pub fn reject(&self, id: &str, reason: Option<String>) -> Result<Change, Refusal> {
        let mut all = self.lock();
        let c = all.get_mut(id).ok_or(Refusal::NotFound)?;
        if c.state != ChangeState::Pending {
            return Err(Refusal::NotPending(c.state));
        }
        c.state = ChangeState::Rejected;
        c.result = Some(serde_json::json!({"reason": reason.unwrap_or_else(|| "rejected on the host".into())}));
        Ok(c.clone())
    }

    pub fn finish(&self, id: &str, ok: bool, result: serde_json::Value) -> Option<Change> {
        let mut all = self.lock();
        let c = all.get_mut(id)?;
        c.state = if ok { ChangeState::Applied } else { ChangeState::Failed };
        c.result = Some(result);
        Some(c.clone())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    change: ChangeKind,
    /// Who asks (e.g. `mcp:<client name>`), for the audit log.
    requested_by: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveRequest {
    token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RejectRequest {
    reason: Option<String>,
}

impl AdminServer {
    /// `/v1/changes…`: request, list, show, approve, reject.
    pub(super) async fn changes(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Response<Full<Bytes>> {
        for c in self.changes.expire(unix_now()) {
            self.audit_change("change_expired", &c, None);
        }
        let rest = path.trim_start_matches("/v1/changes").trim_start_matches('/');
        let mut segments = rest.split('/').filter(|s| !s.is_empty());
        match (method, segments.next(), segments.next(), segments.next()) {
            (&Method::GET, None, None, None) => {
                let with_tokens = query.is_some_and(|q| q.split('&').any(|kv| kv == "tokens=1"));
                json(StatusCode::OK, &serde_json::json!({"changes": self.changes.list(with_tokens)}))
            }
            (&Method::POST, None, None, None) => self.request_change(body),
            (&Method::GET, Some(id), None, None) => match self.changes.get(id) {
                Some(c) => json(StatusCode::OK, &serde_json::to_value(&c).unwrap_or_default()),
                None => not_found(id),
            },
            (&Method::POST, Some(id), Some("approve"), None) => {
                let req: ApproveRequest = match parse_optional(body) {
                    Ok(r) => r,
                    Err(resp) => return *resp,
                };
                self.approve_change(id, req.token.as_deref()).await
            }
            (&Method::POST, Some(id), Some("reject"), None) => {
                let req: RejectRequest = match parse_optional(body) {
                    Ok(r) => r,
                    Err(resp) => return *resp,
                };
                match self.changes.reject(id, req.reason) {
                    Ok(c) => {
                        self.audit_change("change_rejected", &c, None);
                        json(StatusCode::OK, &serde_json::to_value(&c).unwrap_or_default())
                    }
                    Err(r) => refusal(id, &r),
                }
            }
            _ => json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found"})),
        }
    }

    fn request_change(&self, body: &[u8]) -> Response<Full<Bytes>> {
        let req: ChangeRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return super::bad_request(&format!(
                    "expected {{\"change\": {{\"kind\": …}}, \"requested_by\": …}}: {e}"
                ));
            }
        };
        let summary = match self.check_change(&req.change) {
            Ok(s) => s,
            Err(message) => return super::bad_request(&message),
        };
        let (change, _token) = self.changes.request(req.change, summary, req.requested_by, unix_now());
        self.audit_change("change_requested", &change, None);
        let mut v = serde_json::to_value(&change).unwrap_or_default();
        v["approve_with"] = serde_json::Value::String(format!("gatewayd approve {}", change.id));
        json(StatusCode::ACCEPTED, &v)
    }

    /// Checks a change can be applied as asked, and describes it for the person approving.
    fn check_change(&self, kind: &ChangeKind) -> Result<String, String> {
        Ok(match kind {
            ChangeKind::Reload => {
                let s = self.shared.snapshot.load();
                format!("reload the configuration from {}", s.config.source)
            }
            ChangeKind::XdpBlock { cidr, for_secs } => {
                let net = crate::ebpf::parse_list_entry(cidr)?;
                if self.shared.ebpf.xdp.get().is_none() {
                    return Err("the XDP guard is not enabled (xdp.enabled)".into());
                }
                match for_secs.filter(|s| *s > 0) {
                    Some(s) => format!(
                        "drop all traffic from {net} at the NIC (XDP) for {}",
                        humantime::format_duration(Duration::from_secs(s))
                    ),
                    None => format!("drop all traffic from {net} at the NIC (XDP) until unblocked"),
                }
            }
            ChangeKind::XdpUnblock { cidr } => {
                let net = crate::ebpf::parse_list_entry(cidr)?;
                format!("remove the XDP block of {net}")
            }
            ChangeKind::RevokeJti { jti, until } => {
                if jti.is_empty() || jti.len() > 256 {
                    return Err("jti: 1 to 256 characters".into());
                }
                if *until <= unix_now() {
                    return Err("until: a unix time in the future (the token's exp)".into());
                }
                let when = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(*until));
                format!("revoke tokens with jti {jti:?} until {when}")
            }
            ChangeKind::DrainTarget { service, target, drain } => {
                self.find_target(service, target)?;
                if *drain {
                    format!("drain target {target} of service {service} (no new requests)")
                } else {
                    format!("return target {target} of service {service} to rotation")
                }
            }
        })
    }

    fn find_target(&self, service: &str, target: &str) -> Result<std::sync::Arc<crate::upstream::TargetState>, String> {
        let s = self.shared.snapshot.load();
        let svc = s
            .services
            .iter()
            .find(|svc| &*svc.spec.name == service)
            .ok_or_else(|| format!("no service named {service:?}"))?;
        svc.targets
            .iter()
            .find(|t| &*t.label == target)
            .map(|t| t.state.clone())
            .ok_or_else(|| format!("service {service:?} has no target {target:?}"))
    }

    async fn approve_change(&self, id: &str, token: Option<&str>) -> Response<Full<Bytes>> {
        let change = match self.changes.approve(id, token, unix_now()) {
            Ok(c) => c,
            Err(r) => {
                if let (Refusal::WrongToken { rejected }, Some(c)) = (&r, self.changes.get(id)) {
                    self.audit_change(
                        "change_approval_refused",
                        &c,
                        Some(serde_json::json!({"reason": "wrong approval token"})),
                    );
                    if *rejected {
                        self.audit_change("change_rejected", &c, None);
                    }
                }
                return refusal(id, &r);
            }
        };
        self.audit_change("change_approved", &change, None);
        let (ok, result) = self.apply(&change.kind).await;
        let change = self.changes.finish(id, ok, result).unwrap_or(change);
        self.audit_change(if ok { "change_applied" } else { "change_failed" }, &change, None);
        json(if ok { StatusCode::OK } else { StatusCode::CONFLICT }, &serde_json::to_value(&change).unwrap_or_default())
    }

    /// Runs the change through the same code as the admin endpoints a person would call.
    async fn apply(&self, kind: &ChangeKind) -> (bool, serde_json::Value) {
        let response = match kind {
            ChangeKind::Reload => self.reload().await,
            ChangeKind::XdpBlock { cidr, for_secs } => {
                self.xdp_block(serde_json::json!({"cidr": cidr, "for_secs": for_secs}).to_string().as_bytes())
            }
            ChangeKind::XdpUnblock { cidr } => {
                self.xdp_unblock(serde_json::json!({"cidr": cidr}).to_string().as_bytes())
            }
            ChangeKind::RevokeJti { jti, until } => {
                self.revoke(serde_json::json!({"jti": jti, "until": until}).to_string().as_bytes()).await
            }
            ChangeKind::DrainTarget { service, target, drain } => match self.find_target(service, target) {
                Ok(state) => {
                    let was = state.set_drained(*drain);
                    tracing::info!(service, target, drained = drain, "upstream target drain set by an approved change");
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"service": service, "target": target, "drained": drain, "was_drained": was}),
                    )
                }
                Err(message) => {
                    json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found", "message": message}))
                }
            },
        };
        let ok = response.status().is_success();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        (ok, serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into()))
    }

    /// One audit event (and log line) about a change; the token never leaves the store.
    fn audit_change(&self, event: &'static str, change: &Change, detail: Option<serde_json::Value>) {
        tracing::info!(event, change_id = %change.id, summary = %change.summary, requested_by = %change.requested_by, state = ?change.state, "change");
        if let Some(sink) = self.shared.parts.audit() {
            sink.send_event(serde_json::json!({
                "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                "event": event,
                "change": change,
                "detail": detail,
            }));
        }
    }
}

fn parse_optional<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Box<Response<Full<Bytes>>>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Box::new(super::bad_request(&e.to_string())))
}

fn not_found(id: &str) -> Response<Full<Bytes>> {
    json(StatusCode::NOT_FOUND, &serde_json::json!({"error": "not_found", "message": format!("no change {id}")}))
}

fn refusal(id: &str, r: &Refusal) -> Response<Full<Bytes>> {
    match r {
        Refusal::NotFound => not_found(id),
        Refusal::NotPending(state) => json(
            StatusCode::CONFLICT,
            &serde_json::json!({"error": "not_pending", "message": format!("change {id} is {state:?}, not pending")}),
        ),
        Refusal::WrongToken { rejected } => json(
            StatusCode::FORBIDDEN,
            &serde_json::json!({"error": "wrong_token", "message": "the approval token does not match", "rejected": rejected}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_applied_once_and_only_when_approved_in_time() {
        let changes = Changes::default();
        let (c, token) = changes.request(ChangeKind::Reload, "reload".into(), "test".into(), 1000);
        assert_eq!(changes.get(&c.id).map(|c| c.state), Some(ChangeState::Pending));
        assert_eq!(changes.approve(&c.id, Some("wrong"), 1001).err(), Some(Refusal::WrongToken { rejected: false }));
        let approved = changes.approve(&c.id, Some(&token), 1002).map(|c| c.approved_by);
        assert_eq!(approved, Ok(Some("token")));
        assert_eq!(changes.approve(&c.id, None, 1003).err(), Some(Refusal::NotPending(ChangeState::Applying)));
    }

    #[test]
    fn pending_changes_expire() {
        let changes = Changes::default();
        let (c, _) = changes.request(ChangeKind::Reload, "reload".into(), "test".into(), 1000);
        let late = 1000 + PENDING_TTL.as_secs();
        assert_eq!(changes.approve(&c.id, None, late).err(), Some(Refusal::NotPending(ChangeState::Expired)));
        let (c2, _) = changes.request(ChangeKind::Reload, "reload".into(), "test".into(), 2000);
        assert!(changes.expire(1999 + PENDING_TTL.as_secs()).is_empty());
        assert_eq!(changes.expire(2000 + PENDING_TTL.as_secs()).first().map(|c| c.id.clone()), Some(c2.id));
    }

    #[test]
    fn wrong_tokens_reject_the_change() {
        let changes = Changes::default();
        let (c, token) = changes.request(ChangeKind::Reload, "reload".into(), "test".into(), 1000);
        for _ in 1..MAX_WRONG_TOKENS {
            assert_eq!(changes.approve(&c.id, Some("x"), 1001).err(), Some(Refusal::WrongToken { rejected: false }));
        }
        assert_eq!(changes.approve(&c.id, Some("x"), 1001).err(), Some(Refusal::WrongToken { rejected: true }));
        assert_eq!(changes.approve(&c.id, Some(&token), 1001).err(), Some(Refusal::NotPending(ChangeState::Rejected)));
    }
}
