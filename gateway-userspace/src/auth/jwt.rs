//! JWT parsing and validation. The order is fixed and deliberate:
//!
//! 1. structure: size, three base64url segments (JWE and JSON serialization refused);
//! 2. header: `alg` must be an asymmetric algorithm we support (`none` and HMAC refused), no
//!    `crit` (we implement no extension), no key or key URL supplied by the token (`jwk`, `jku`,
//!    `x5u`, `x5c`: never followed, always refused);
//! 3. issuer: `iss` (read before the signature, only to choose the keys) must be one the route
//!    accepts, and `alg` one that issuer allows;
//! 4. key: by `kid` from the issuer's key set (`unknown_kid` otherwise), of the algorithm's family;
//! 5. signature (jsonwebtoken on aws-lc-rs; invalid ECDSA values such as r = s = 0 fail there);
//! 6. claims: `exp` (required), `nbf`, `iat` with leeway; `aud` contains a configured audience;
//!    identity claims representable as header values.
//!
//! So a forged token learns nothing about claim checks: it fails at its signature.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, crypto};
use serde_json::{Map, Value};

use super::{AuthError, IssuerSpec, KeySet};

/// A token that passed the structural and header checks; nothing about it is trusted yet.
#[derive(Debug)]
pub struct Token<'t> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: &'t str,
}

/// Two dots: a compact JWS. Anything else is an opaque token (introspection).
pub fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

fn is_b64url(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn decode_json(segment: &str, what: &'static str) -> Result<Map<String, Value>, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| AuthError::Malformed(what))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed(what)),
    }
}

/// Header parameters that make the token supply its own key (or where to fetch one).
const KEY_BEARING_HEADERS: [&str; 4] = ["jwk", "jku", "x5u", "x5c"];

/// Structure and header checks (steps 1 and 2).
pub fn parse(token: &str, max_size: usize) -> Result<Token<'_>, AuthError> {
    if token.len() > max_size {
        return Err(AuthError::Malformed("the token is too large"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(AuthError::Malformed("not a compact JWS (encrypted tokens are not accepted)"));
    };
    if h.is_empty() || p.is_empty() || !is_b64url(h) || !is_b64url(p) || !is_b64url(s) {
        return Err(AuthError::Malformed("token segments must be non-empty base64url"));
    }
    let header = decode_json(h, "the token header is not a base64url JSON object")?;
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(AuthError::Malformed("the token header has no alg")),
    };
    let alg = match alg {
        a if a.eq_ignore_ascii_case("none") => return Err(AuthError::BadSignature("unsigned tokens are not accepted")),
        "HS256" | "HS384" | "HS512" => {
            return Err(AuthError::BadSignature("symmetric (HMAC) algorithms are not accepted"));
        }
        a => a.parse::<Algorithm>().map_err(|_| AuthError::BadSignature("unsupported algorithm"))?,
    };
    if header.contains_key("crit") {
        return Err(AuthError::Malformed("critical header extensions are not supported"));
    }
    if KEY_BEARING_HEADERS.iter().any(|k| header.contains_key(*k)) {
        return Err(AuthError::Malformed("keys supplied by the token (jwk, jku, x5u, x5c) are never used"));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(AuthError::Malformed("the token header kid is not a string")),
    };
    if s.is_empty() {
        return Err(AuthError::BadSignature("the token has no signature"));
    }
    let claims = decode_json(p, "the token payload is not a base64url JSON object")?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    Ok(Token { alg, kid, claims, signing_input, signature: s })
}

impl Token<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    /// Steps 3 (algorithm) to 5: finds the key and checks the signature.
    pub fn verify(&self, keys: &KeySet, allowed: &[Algorithm]) -> Result<(), AuthError> {
        if !allowed.contains(&self.alg) {
            return Err(AuthError::BadSignature("algorithm not allowed for this issuer"));
        }
        let check = |key: &DecodingKey| {
            matches!(crypto::verify(self.signature, self.signing_input.as_bytes(), key, self.alg), Ok(true))
        };
        match self.kid.as_deref() {
            Some(kid) => {
                let key = keys.by_kid(kid).ok_or(AuthError::UnknownKid)?;
                if !key.algorithms.contains(&self.alg) {
                    return Err(AuthError::BadSignature("algorithm does not match the key"));
                }
                if check(&key.decoding) { Ok(()) } else { Err(AuthError::BadSignature("signature mismatch")) }
            }
            None => {
                // No kid: every key of the right algorithm may be the one (few keys per issuer).
                let mut candidates = keys.for_algorithm(self.alg).peekable();
                if candidates.peek().is_none() {
                    return Err(AuthError::UnknownKid);
                }
                if candidates.any(|k| check(&k.decoding)) {
                    Ok(())
                } else {
                    Err(AuthError::BadSignature("signature mismatch"))
                }
            }
        }
    }
}

pub use crate::consumer::Named;

impl Named {
    /// Identity values go upstream as header values: one that cannot be is refused rather than
    /// silently dropped.
    pub fn new(s: &str) -> Result<Named, AuthError> {
        if s.is_empty() || s.len() > 1024 {
            return Err(AuthError::Malformed("an identity claim is empty or too long"));
        }
        let header = HeaderValue::from_str(s)
            .map_err(|_| AuthError::Malformed("an identity claim has characters not allowed in headers"))?;
        Ok(Named { text: s.into(), header })
    }
}

/// What a validated token (or an active introspection answer) says about the client.
#[derive(Debug, Clone)]
pub struct Claims {
    /// Unix seconds after which (plus leeway) the token is no longer accepted.
    pub expires: Option<u64>,
    pub user: Option<Named>,
    pub workspace: Option<Named>,
    pub scopes: Vec<Arc<str>>,
    /// Scopes joined by spaces (`X-Authenticated-Scope`).
    pub scope_header: Option<HeaderValue>,
    pub jti: Option<Box<str>>,
    /// RFC 8705 `cnf.x5t#S256`: the SHA-256 of the client certificate the token is bound to.
    pub cert_thumbprint: Option<[u8; 32]>,
}

/// How strictly [`check_claims`] treats missing claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimsOf {
    /// A JWT: `exp` and `aud` are required, `iss` was matched already.
    Jwt,
    /// An introspection answer: claims the IdP omits are not required, but present ones must
    /// agree with the issuer's configuration.
    Introspection,
}

/// Step 6.
pub fn check_claims(
    claims: &Map<String, Value>,
    issuer: &IssuerSpec,
    now: u64,
    leeway: u64,
    of: ClaimsOf,
) -> Result<Claims, AuthError> {
    let jwt = of == ClaimsOf::Jwt;
    let expires = numeric_date(claims, "exp")?;
    match expires {
        None if jwt => return Err(AuthError::Malformed("the token has no exp claim")),
        Some(exp) if now >= exp.saturating_add(leeway) => return Err(AuthError::Expired),
        _ => {}
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(AuthError::NotYetValid);
    }
    if numeric_date(claims, "iat")?.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(AuthError::NotYetValid);
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if **iss == *issuer.issuer => {}
        None if !jwt => {}
        _ => return Err(AuthError::BadIssuer),
    }
    match claims.get("aud") {
        None if !jwt => {}
        Some(Value::String(a)) if issuer.audiences.iter().any(|w| w == a) => {}
        Some(Value::Array(list))
            if list.iter().any(|a| a.as_str().is_some_and(|a| issuer.audiences.iter().any(|w| w == a))) => {}
        _ => return Err(AuthError::BadAudience),
    }
    let scopes = scopes(claims)?;
    let scope_header = if scopes.is_empty() {
        None
    } else {
        let joined = scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ");
        let ok = joined.len() <= 4096;
        Some(
            HeaderValue::from_str(&joined)
                .ok()
                .filter(|_| ok)
                .ok_or(AuthError::Malformed("the scopes cannot be sent as a header"))?,
        )
    };
    let user = string_claim(claims, &issuer.user_claim)?.map(Named::new).transpose()?;
    let workspace = string_claim(claims, &issuer.workspace_claim)?.map(Named::new).transpose()?;
    let jti = string_claim(claims, "jti")?.map(Box::from);
    Ok(Claims { expires, user, workspace, scopes, scope_header, jti, cert_thumbprint: cert_thumbprint(claims)? })
}

fn string_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, AuthError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AuthError::Malformed("an identity claim is not a string")),
    }
}

/// RFC 7519 NumericDate: seconds, possibly fractional; negative or non-numeric is malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(AuthError::Malformed("a time claim is not a valid NumericDate")),
        },
        Some(_) => Err(AuthError::Malformed("a time claim is not a number")),
    }
}

/// `scope` (space-separated, RFC 8693/9068), `scp` and `scopes` (arrays or strings), merged.
fn scopes(claims: &Map<String, Value>) -> Result<Vec<Arc<str>>, AuthError> {
    let mut out: Vec<Arc<str>> = Vec::new();
    let mut add = |s: &str| {
        if !s.is_empty() && !out.iter().any(|o| &**o == s) {
            out.push(s.into());
        }
    };
    for name in ["scope", "scp", "scopes"] {
        match claims.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => s.split(' ').for_each(&mut add),
            Some(Value::Array(items)) => {
                for item in items {
                    add(item.as_str().ok_or(AuthError::Malformed("a scope is not a string"))?);
                }
            }
            Some(_) => return Err(AuthError::Malformed("the scope claim is neither a string nor an array")),
        }
    }
    Ok(out)
}

fn cert_thumbprint(claims: &Map<String, Value>) -> Result<Option<[u8; 32]>, AuthError> {
    let Some(cnf) = claims.get("cnf") else { return Ok(None) };
    let bad = AuthError::Malformed("the cnf claim is not a valid x5t#S256 confirmation");
    let Some(cnf) = cnf.as_object() else { return Err(bad) };
    match cnf.get("x5t#S256") {
        // Other confirmation methods (jkt for DPoP, …) are not implemented: refuse rather than
        // accept a token whose holder we cannot check.
        None => Err(AuthError::Malformed("unsupported cnf confirmation method")),
        Some(Value::String(t)) => {
            let bytes = URL_SAFE_NO_PAD.decode(t).map_err(|_| bad.clone())?;
            <[u8; 32]>::try_from(bytes.as_slice()).map(Some).map_err(|_| bad)
        }
        Some(_) => Err(bad),
    }
}

#[cfg(test)]
mod tests;
