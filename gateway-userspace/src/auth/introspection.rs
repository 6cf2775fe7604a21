//! RFC 7662 token introspection, for opaque (non-JWT) bearer tokens: `POST token=…` to the IdP's
//! introspection endpoint, authenticated with the gateway's client credentials (HTTP Basic,
//! RFC 6749 2.3.1). The identify phase caches answers per worker: active ones up to
//! `cache_ttl` (never past the token's `exp`), inactive ones for `negative_cache_ttl`; with
//! `cache = "redis"` the answers are also shared by the fleet (`shared`).

pub mod shared;

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value};

use super::{IntrospectionSpec, idp_http::IdpClient};

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

/// Asks the IdP about `token`. Errors (unreachable, timeout, non-200, not JSON) say why, without
/// the token.
pub async fn introspect(
    client: &IdpClient,
    endpoint: &str,
    spec: &IntrospectionSpec,
    token: &str,
) -> Result<Introspected, String> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("token", token)
        .append_pair("token_type_hint", "access_token")
        .finish();
    let answer = client
        .post_form(endpoint, &basic_auth(spec), form, spec.timeout)
        .await
        .map_err(|e| format!("introspection {endpoint}: {e}"))?;
    if !answer.status.is_success() {
        return Err(format!("introspection {endpoint}: answered {}", answer.status));
    }
    match serde_json::from_slice::<Value>(&answer.body) {
        Ok(Value::Object(map)) => match map.get("active") {
            Some(Value::Bool(true)) => Ok(Introspected::Active(map)),
            Some(Value::Bool(false)) => Ok(Introspected::Inactive),
            _ => Err(format!("introspection {endpoint}: the answer has no boolean \"active\"")),
        },
        _ => Err(format!("introspection {endpoint}: the answer is not a JSON object")),
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
