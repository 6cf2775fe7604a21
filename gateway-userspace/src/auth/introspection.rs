//! RFC 7662 token introspection, for opaque (non-JWT) bearer tokens: `POST token=…` to the IdP's
//! introspection endpoint, authenticated with the gateway's client credentials (HTTP Basic,
//! RFC 6749 2.3.1). The identify phase caches answers per worker: active ones up to
//! `cache_ttl` (never past the token's `exp`), inactive ones for `negative_cache_ttl`; with
//! `cache = "redis"` the answers are also shared by the fleet (`shared`). Concurrent
//! introspections of one token make one call (`single_flight`); every call goes through the
//! issuer's circuit breaker.

pub mod shared;
pub mod single_flight;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value};

use thiserror::Error;

use super::{
    IntrospectionSpec,
    breaker::{Breaker, BreakerError},
    idp_http::IdpClient,
};

#[derive(Debug)]
pub enum Introspected {
    /// `active: true`, with the other members (claims) of the answer.
    Active(Map<String, Value>),
    Inactive,
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
pub fn basic_auth(spec: &IntrospectionSpec) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", STANDARD.encode(format!("{}:{}", enc(&spec.client_id), enc(&spec.client_secret))))
}

/// Why the IdP gave no usable answer (never with the token).
#[derive(Debug, Error)]
pub enum IntrospectionError {
    /// The issuer's breaker is open: the IdP was not asked.
    #[error("introspection: {0}")]
    CircuitOpen(BreakerError),
    #[error("{0}")]
    Failed(String),
}

/// Asks the IdP about `token`, through the issuer's circuit breaker. Errors (unreachable,
/// timeout, non-200, not JSON) say why, without the token.
pub async fn introspect(
    client: &IdpClient,
    breaker: &Breaker,
    endpoint: &str,
    spec: &IntrospectionSpec,
    token: &str,
) -> Result<Introspected, IntrospectionError> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let failed = |why: String| IntrospectionError::Failed(format!("introspection {endpoint}: {why}"));
    let answer = match breaker.call(client.post_form(endpoint, Some(&basic_auth(spec)), form, spec.timeout)).await {
        Ok(answer) => answer,
        Err(open @ BreakerError::Open(_)) => return Err(IntrospectionError::CircuitOpen(open)),
        Err(e) => return Err(failed(e.to_string())),
    };
    if !answer.status.is_success() {
        return Err(failed(format!("answered {}", answer.status)));
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(Value::Object(map)) => match map.get("active") {
            Some(Value::Bool(true)) => Ok(Introspected::Active(map)),
            Some(Value::Bool(false)) => Ok(Introspected::Inactive),
            _ => Err(failed("the answer has no boolean \"active\"".into())),
        },
        _ => Err(failed("the answer is not a JSON object".into())),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn client_credentials_are_form_encoded_then_base64() {
        let spec = IntrospectionSpec {
            endpoint: None,
            client_id: "gate way".into(),
            client_secret: "s:cr%t".into(),
            cache_ttl: Duration::from_secs(1),
            negative_cache_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            cache: crate::auth::IntrospectionCacheKind::Memory,
        };
        let header = basic_auth(&spec);
        let decoded = STANDARD.decode(header.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "gate+way:s%3Acr%25t");
    }
}
