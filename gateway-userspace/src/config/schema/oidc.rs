//! `[[auth.logins]]`: OIDC login at the edge (authorization code with PKCE) for browsers. Shape
//! and defaults; meaning is checked in `validate/auth/oidc.rs`.

use std::time::Duration;

use serde::Deserialize;

/// `[[auth.logins]]`: gatewayd as the OAuth client (relying party) of an `[[auth.issuers]]`
/// entry. A policy names it with `login = "<name>"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSection {
    /// Unique name, referenced by policies' `login`. Required.
    pub name: String,
    /// The `[[auth.issuers]]` entry whose discovery document gives the endpoints and whose keys
    /// verify the ID token. Required.
    pub issuer: String,
    /// The gateway's client id at the IdP (also the ID token's required `aud`). Required.
    pub client_id: String,
    /// File holding the client secret. Required.
    pub client_secret_file: String,
    /// `"client_secret_basic"` or `"client_secret_post"`. Default: `"client_secret_basic"`.
    #[serde(default = "default_client_auth")]
    pub client_auth: String,
    /// Scopes asked for; `openid` is always sent. Default: `["openid"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The absolute callback URL registered at the IdP; its path is answered by the gateway on
    /// routes with this login, its origin is the only one return URLs may name. Required.
    pub redirect_uri: String,
    /// Path that starts a login (`?return_to=/path`). Default: `"/oauth2/start"`.
    #[serde(default = "default_login_path")]
    pub login_path: String,
    /// Path that ends the session. Default: `"/oauth2/logout"`.
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the IdP sends the browser after logout. Default: the redirect URI's origin + `/`.
    pub post_logout_redirect_uri: Option<String>,
    /// Session cookie name; must start with `__Host-`. Default: `"__Host-gatewayd-session"`.
    #[serde(default = "default_cookie_name")]
    pub cookie_name: String,
    /// Absolute session lifetime (the cookie's Max-Age too). Default: 12h.
    #[serde(default = "default_session_lifetime", with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// `"memory"` (this process) or `"redis"` (shared through `[redis]`, encrypted). Default: memory.
    #[serde(default = "default_session_store")]
    pub session_store: String,
    /// File with the 32-byte session encryption key as 64 hex digits. Required with redis.
    pub session_key_file: Option<String>,
    /// Refresh the access token this long before it expires. Default: 30s.
    #[serde(default = "default_refresh_before", with = "humantime_serde")]
    pub refresh_before: Duration,
    /// Send the session's access token upstream as `Authorization: Bearer`. Default: true.
    #[serde(default = "default_true")]
    pub forward_access_token: bool,
    /// Deadline of one token endpoint call. Default: 5s.
    #[serde(default = "default_token_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_client_auth() -> String {
    "client_secret_basic".into()
}
fn default_login_path() -> String {
    "/oauth2/start".into()
}
fn default_logout_path() -> String {
    "/oauth2/logout".into()
}
fn default_cookie_name() -> String {
    "__Host-gatewayd-session".into()
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_session_store() -> String {
    "memory".into()
}
fn default_refresh_before() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_token_timeout() -> Duration {
    Duration::from_secs(5)
}
