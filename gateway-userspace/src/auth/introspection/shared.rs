//! The fleet-wide introspection cache (`[auth.issuers.introspection] cache = "redis"`).
//!
//! A worker's token-cache miss for an opaque token looks up
//! `<key_prefix>:auth:introspection:<hex SHA-256(iss ‖ 0 ‖ SHA-256(token))>` before asking the
//! IdP (the issuer in the key: two issuers' answers for the same opaque string never meet; one `GET`,
//! bounded by `[redis] timeout`). An IdP answer is stored there with `SET … PX ttl` (active: up
//! to `cache_ttl`, never past `exp`; inactive: `negative_cache_ttl`) off the request path, on the
//! control runtime ([`Kv::spawn_detached`]): the request already paid for the IdP round trip and
//! does not wait for a write that only helps later requests. Redis down, slow, or holding an
//! unusable value only means asking the IdP: this cache is an optimisation, never a reason to
//! refuse.
//!
//! The value is `<tag>.<json>`. The JSON is `{"t":<unix seconds introspected at>,"a":<answer>}`
//! with only the answer members the identify phase reads ([`KEPT`], plus the issuer's user and
//! workspace claims), so a node that reads it applies its own claim checks and reuses it no
//! longer than `cache_ttl` after `t`. The tag is HMAC-SHA256, keyed by the issuer's client
//! secret, over the client id, the Redis key and the JSON: Redis never holds the token, and write
//! access to Redis is not enough to mint an identity (a forged or copied value fails the tag and
//! is ignored like a miss, counted as an error). Nodes share entries when they share the
//! issuer's client credentials.

use std::{fmt::Write, sync::Arc, time::Duration};

use aws_lc_rs::hmac;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use thiserror::Error;

use super::Introspected;
use crate::{
    auth::{IntrospectionSpec, IssuerSpec, cache::TokenHash},
    kv::{Kv, KvError},
};

/// The members of an active answer kept in the shared cache (besides the issuer's user and
/// workspace claims): what claim checks, identity headers, scopes, revocation and certificate
/// binding read, and the usual identifiers.
pub const KEPT: [&str; 14] = [
    "active",
    "exp",
    "nbf",
    "iat",
    "iss",
    "aud",
    "sub",
    "client_id",
    "username",
    "scope",
    "scp",
    "scopes",
    "jti",
    "cnf",
];

/// Why the shared cache gave no answer (the caller asks the IdP).
#[derive(Debug, Error)]
pub enum SharedCacheError {
    #[error(transparent)]
    Store(#[from] KvError),
    #[error(
        "the stored introspection answer is unusable (malformed, or not authenticated by this issuer's client secret)"
    )]
    Unusable,
}

/// An IdP answer and when it was given.
#[derive(Debug)]
pub struct Stored {
    /// Unix seconds.
    pub at: u64,
    pub answer: Introspected,
}

/// One issuer's view of the shared cache.
#[derive(Debug)]
pub struct SharedAnswers {
    kv: Kv,
    codec: Codec,
    /// The issuer's `iss`, which scopes the keys.
    issuer: Arc<str>,
}

impl SharedAnswers {
    pub fn new(kv: Kv, issuer: &IssuerSpec, spec: &IntrospectionSpec) -> Self {
        SharedAnswers { kv, codec: Codec::new(issuer, spec), issuer: issuer.issuer.clone() }
    }

    /// `<key_prefix>:auth:introspection:<hex SHA-256(iss ‖ 0 ‖ SHA-256(token))>`.
    fn key(&self, digest: &TokenHash) -> String {
        self.kv.key(format_args!("auth:introspection:{}", hex(&scoped(&self.issuer, digest))))
    }

    /// The answer another node (or this one) stored for the token with this digest.
    pub async fn get(&self, digest: &TokenHash) -> Result<Option<Stored>, SharedCacheError> {
        let key = self.key(digest);
        let value: Option<Vec<u8>> = self.kv.query("auth_introspection_get", redis::cmd("GET").arg(&key)).await?;
        match value {
            None => Ok(None),
            Some(v) => self.codec.decode(&key, &v).map(Some).ok_or(SharedCacheError::Unusable),
        }
    }

    /// Stores an IdP answer for `ttl`, without waiting: the write runs on the control runtime,
    /// bounded by `[redis] timeout`; its failures are counted by the Redis metrics
    /// (`gateway_redis_errors_total{command="auth_introspection_set"}`).
    pub fn put(&self, digest: &TokenHash, stored: &Stored, ttl: Duration) {
        let key = self.key(digest);
        let value = self.codec.encode(&key, stored);
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set = redis::cmd("SET").arg(&key).arg(value).arg("PX").arg(ms).clone();
        let kv = self.kv.clone();
        self.kv.spawn_detached("auth_introspection_set", async move {
            let _ = kv.query::<()>("auth_introspection_set", &set).await;
        });
    }
}

/// The token's digest bound to its issuer.
fn scoped(issuer: &str, digest: &TokenHash) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(issuer.as_bytes());
    ctx.update(&[0]);
    ctx.update(digest);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn hex(digest: &[u8; 32]) -> String {
    let mut hex = String::with_capacity(64);
    for b in digest {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The stored-answer encoding, authenticated with the issuer's client secret.
struct Codec {
    mac: hmac::Key,
    client_id: String,
    /// The issuer's user and workspace claims (kept besides [`KEPT`]).
    claims: [String; 2],
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

impl Codec {
    fn new(issuer: &IssuerSpec, spec: &IntrospectionSpec) -> Self {
        Codec {
            mac: hmac::Key::new(hmac::HMAC_SHA256, spec.client_secret.as_bytes()),
            client_id: spec.client_id.clone(),
            claims: [issuer.user_claim.clone(), issuer.workspace_claim.clone()],
        }
    }

    fn keeps(&self, member: &str) -> bool {
        KEPT.contains(&member) || self.claims.iter().any(|c| c == member)
    }

    fn tag(&self, key: &str, json: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.mac);
        for part in [b"gatewayd introspection cache v1".as_slice(), self.client_id.as_bytes(), key.as_bytes()] {
            ctx.update(part);
            ctx.update(&[0]);
        }
        ctx.update(json.as_bytes());
        ctx.sign()
    }

    /// `<tag>.<json>` (see the module documentation).
    fn encode(&self, key: &str, stored: &Stored) -> String {
        let answer = match &stored.answer {
            Introspected::Active(map) => {
                Value::Object(map.iter().filter(|(k, _)| self.keeps(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            Introspected::Inactive => json!({"active": false}),
        };
        let json = json!({"t": stored.at, "a": answer}).to_string();
        format!("{}.{json}", URL_SAFE_NO_PAD.encode(self.tag(key, &json).as_ref()))
    }

    /// The stored answer, if its tag is authentic and it is well formed.
    fn decode(&self, key: &str, value: &[u8]) -> Option<Stored> {
        let (tag, json) = std::str::from_utf8(value).ok()?.split_once('.')?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        aws_lc_rs::constant_time::verify_slices_are_equal(self.tag(key, json).as_ref(), &tag).ok()?;
        let Value::Object(mut outer) = serde_json::from_str::<Value>(json).ok()? else { return None };
        let at = outer.get("t")?.as_u64()?;
        let Some(Value::Object(answer)) = outer.remove("a") else { return None };
        let answer = match answer.get("active") {
            Some(Value::Bool(true)) => Introspected::Active(answer),
            Some(Value::Bool(false)) => Introspected::Inactive,
            _ => return None,
        };
        Some(Stored { at, answer })
    }
}

/// How long an active answer may be shared: `cache_ttl`, never past `exp` (unix seconds).
/// `None` when the token expires before a write could be of use.
pub fn active_ttl(cache_ttl: Duration, exp: Option<u64>, now_ms: u64) -> Option<Duration> {
    let ttl = match exp {
        Some(exp) => cache_ttl.min(Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms))),
        None => cache_ttl,
    };
    (ttl.as_millis() > 0).then_some(ttl)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Map;

    use super::*;
    use crate::auth::{KeySource, OutageMode, RefreshSpec, cache::hash};

    fn codec(secret: &str) -> Codec {
        let spec = IntrospectionSpec {
            endpoint: None,
            client_id: "gw".into(),
            client_secret: secret.into(),
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            cache: crate::auth::IntrospectionCacheKind::Redis,
        };
        let issuer = IssuerSpec {
            name: Arc::from("idp"),
            issuer: Arc::from("https://idp.example"),
            audiences: vec!["api".into()],
            algorithms: Vec::new(),
            keys: KeySource::None,
            refresh: RefreshSpec {
                max_interval: Duration::from_secs(60),
                min_interval: Duration::from_secs(1),
                unknown_kid_interval: Duration::from_secs(60),
                fetch_timeout: Duration::from_secs(1),
                outage_grace: Duration::from_secs(60),
                on_outage: OutageMode::FailClosed,
            },
            ca_file: None,
            tls: None,
            user_claim: "sub".into(),
            workspace_claim: "workspace_id".into(),
            introspection: Some(spec.clone()),
            breaker: crate::auth::BreakerSpec::default(),
        };
        Codec::new(&issuer, &spec)
    }

    fn key(token: &str) -> String {
        format!("gatewayd:auth:introspection:{}", hex(&scoped("https://idp.example", &hash(token))))
    }

    fn active() -> Map<String, Value> {
        let v = json!({"active": true, "sub": "svc-1", "scope": "read write", "client_id": "app", "exp": 2_000_000_000u64,
                       "aud": "api", "workspace_id": "ws-2", "cnf": {"x5t#S256": "abc"}, "jti": "j-1",
                       "big_private_claim": "x".repeat(100), "token": "never-stored"});
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn keys_hold_the_token_digest_not_the_token() {
        let k = key("opaque-1");
        assert_eq!(k.len(), "gatewayd:auth:introspection:".len() + 64, "{k}");
        assert!(!k.contains("opaque-1"));
        assert_ne!(k, key("opaque-2"));
        let other_issuer =
            format!("gatewayd:auth:introspection:{}", hex(&scoped("https://other.example", &hash("opaque-1"))));
        assert_ne!(k, other_issuer, "issuers never share an entry");
    }

    #[test]
    fn answers_round_trip_with_only_the_members_identify_reads() {
        let c = codec("s3cret");
        let k = key("opaque-1");
        let value = c.encode(&k, &Stored { at: 1_700_000_000, answer: Introspected::Active(active()) });
        assert!(!value.contains("never-stored") && !value.contains("big_private_claim") && !value.contains("s3cret"));
        let back = c.decode(&k, value.as_bytes()).unwrap();
        assert_eq!(back.at, 1_700_000_000);
        let Introspected::Active(m) = back.answer else { panic!("not active") };
        for member in ["active", "sub", "scope", "client_id", "exp", "aud", "workspace_id", "cnf", "jti"] {
            assert_eq!(m.get(member), active().get(member), "{member}");
        }
        assert_eq!(m.len(), 9, "{m:?}");

        let value = c.encode(&k, &Stored { at: 5, answer: Introspected::Inactive });
        assert!(value.ends_with(r#".{"a":{"active":false},"t":5}"#), "{value}");
        assert!(matches!(c.decode(&k, value.as_bytes()), Some(Stored { at: 5, answer: Introspected::Inactive })));
    }

    #[test]
    fn forged_copied_or_foreign_values_are_refused() {
        let c = codec("s3cret");
        let k = key("opaque-1");
        let value = c.encode(&k, &Stored { at: 5, answer: Introspected::Active(active()) });
        assert!(c.decode(&key("opaque-2"), value.as_bytes()).is_none(), "copied to another token's key");
        assert!(codec("other").decode(&k, value.as_bytes()).is_none(), "another client secret");
        let (tag, json) = value.split_once('.').unwrap();
        let forged = format!("{tag}.{}", json.replace("svc-1", "admin"));
        assert!(c.decode(&k, forged.as_bytes()).is_none(), "edited claims");
        assert!(c.decode(&k, format!("AAAA.{json}").as_bytes()).is_none(), "made-up tag");
        for bad in [&b""[..], &b"no-dot"[..], &b"\xff\xfe.{}"[..], &b"!!.{}"[..]] {
            assert!(c.decode(&k, bad).is_none());
        }
        // Authentic but malformed: no boolean "active", no time, not objects.
        for json in [r#"{"t":1,"a":{"active":"yes"}}"#, r#"{"a":{"active":true}}"#, r#"{"t":1,"a":[]}"#, "[]"] {
            let v = format!("{}.{json}", URL_SAFE_NO_PAD.encode(c.tag(&k, json).as_ref()));
            assert!(c.decode(&k, v.as_bytes()).is_none(), "{json}");
        }
    }

    #[test]
    fn active_answers_are_shared_up_to_cache_ttl_never_past_exp() {
        let ttl = Duration::from_secs(60);
        let now_ms = 1_000_000_500;
        assert_eq!(active_ttl(ttl, None, now_ms), Some(ttl));
        assert_eq!(active_ttl(ttl, Some(1_000_000 + 600), now_ms), Some(ttl));
        assert_eq!(active_ttl(ttl, Some(1_000_000 + 10), now_ms), Some(Duration::from_millis(9_500)));
        assert_eq!(active_ttl(ttl, Some(1_000_000), now_ms), None, "already expired");
        assert_eq!(active_ttl(ttl, Some(0), now_ms), None);
    }
}
