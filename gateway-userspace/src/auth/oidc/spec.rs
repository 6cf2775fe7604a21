//! The validated `[[auth.logins]]` entry.

use std::{sync::Arc, time::Duration};

/// How the gateway authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (RFC 6749 2.3.1, the default).
    SecretBasic,
    /// `client_id` and `client_secret` in the form body.
    SecretPost,
}

/// Where sessions live.
#[derive(Clone, PartialEq, Eq)]
pub enum SessionStoreKind {
    Memory,
    /// Shared through `[redis]`, sealed with this 256-bit key.
    Redis {
        key: [u8; 32],
    },
}

impl std::fmt::Debug for SessionStoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionStoreKind::Memory => f.write_str("Memory"),
            // Never the key.
            SessionStoreKind::Redis { .. } => f.write_str("Redis"),
        }
    }
}

#[derive(Clone)]
pub struct LoginSpec {
    pub name: Arc<str>,
    /// Index into `AuthSpec::issuers`.
    pub issuer: usize,
    pub client_id: String,
    pub client_secret: String,
    pub client_auth: ClientAuth,
    /// Space-separated, `openid` first.
    pub scope: String,
    pub redirect_uri: String,
    /// `scheme://authority` of `redirect_uri`: the one origin return URLs may name.
    pub origin: String,
    pub callback_path: String,
    pub login_path: String,
    pub logout_path: String,
    pub post_logout_redirect_uri: String,
    pub cookie_name: String,
    pub session_lifetime: Duration,
    pub store: SessionStoreKind,
    pub refresh_before: Duration,
    pub forward_access_token: bool,
    pub timeout: Duration,
}

impl std::fmt::Debug for LoginSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client secret.
        f.debug_struct("LoginSpec")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
