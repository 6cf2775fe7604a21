//! The IdP as the login needs it: endpoints from the issuer's discovery document (fetched on the
//! first login and kept for the snapshot), and the token endpoint (code exchange, refresh).

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::{Engine, engine::general_purpose::STANDARD};
use serde::Deserialize;

use super::{ClientAuth, LoginSpec, OidcError};
use crate::auth::{IssuerSpec, KeySource, idp_http::IdpClient};

#[derive(Debug, Deserialize)]
pub struct Endpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub end_session_endpoint: Option<String>,
}

/// A token endpoint answer (RFC 6749 5.1, OIDC Core 3.1.3.3).
#[derive(Debug, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    pub token_type: Option<String>,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// Why a token endpoint call failed.
#[derive(Debug)]
pub enum TokenFailure {
    /// The IdP answered with an error (invalid_grant, …).
    Refused,
    /// No usable answer (unreachable, timeout, garbage).
    Unavailable,
}

pub struct Provider {
    client: IdpClient,
    discovery_url: Option<String>,
    endpoints: ArcSwapOption<Endpoints>,
}

impl Provider {
    pub fn new(issuer: &IssuerSpec) -> Provider {
        let discovery_url = match &issuer.keys {
            KeySource::Discovery { url } => Some(url.clone()),
            _ => Some(format!("{}/.well-known/openid-configuration", issuer.issuer.trim_end_matches('/'))),
        };
        Provider { client: IdpClient::new(issuer.tls.clone()), discovery_url, endpoints: ArcSwapOption::empty() }
    }

    pub async fn endpoints(&self, spec: &LoginSpec, issuer: &IssuerSpec) -> Result<Arc<Endpoints>, OidcError> {
        if let Some(e) = self.endpoints.load_full() {
            return Ok(e);
        }
        let url = self.discovery_url.as_deref().ok_or(OidcError::IdpUnavailable)?;
        let answer = self.client.get(url, spec.timeout).await.map_err(|e| {
            tracing::warn!(login = %spec.name, error = %e, "OIDC discovery failed");
            OidcError::IdpUnavailable
        })?;
        let doc: Endpoints = serde_json::from_slice(&answer.body)
            .ok()
            .filter(|_| answer.status.is_success())
            .ok_or(OidcError::IdpUnavailable)?;
        if *doc.issuer != *issuer.issuer {
            tracing::warn!(login = %spec.name, "OIDC discovery document names another issuer");
            return Err(OidcError::IdpUnavailable);
        }
        let doc = Arc::new(doc);
        self.endpoints.store(Some(doc.clone()));
        Ok(doc)
    }

    /// One token endpoint call with the client's credentials.
    pub async fn token(
        &self,
        spec: &LoginSpec,
        endpoint: &str,
        params: &[(&str, &str)],
    ) -> Result<Tokens, TokenFailure> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.extend_pairs(params);
        let authorization = match spec.client_auth {
            ClientAuth::SecretBasic => {
                // RFC 6749 2.3.1: both parts form-encoded before Basic.
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                Some(format!(
                    "Basic {}",
                    STANDARD.encode(format!("{}:{}", enc(&spec.client_id), enc(&spec.client_secret)))
                ))
            }
            ClientAuth::SecretPost => {
                form.append_pair("client_id", &spec.client_id);
                form.append_pair("client_secret", &spec.client_secret);
                None
            }
        };
        let answer =
            self.client.post_form(endpoint, authorization.as_deref(), form.finish(), spec.timeout).await.map_err(
                |e| {
                    tracing::warn!(login = %spec.name, error = %e, "token endpoint unreachable");
                    TokenFailure::Unavailable
                },
            )?;
        if answer.status.is_client_error() {
            return Err(TokenFailure::Refused);
        }
        if !answer.status.is_success() {
            return Err(TokenFailure::Unavailable);
        }
        let tokens: Tokens = serde_json::from_slice(&answer.body).map_err(|_| TokenFailure::Unavailable)?;
        if tokens.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(TokenFailure::Refused);
        }
        Ok(tokens)
    }
}
