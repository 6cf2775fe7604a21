//! `[[auth.logins]]` and the policies' `login` → [`LoginSpec`]s. The client secret and the
//! session key are read here, so a bad one is a located config error.

use super::super::{Validator, root};
use crate::{
    auth::{ClientAuth, IssuerSpec, LoginSpec, Policy, SessionStoreKind},
    config::schema::{AuthSection, LoginSection},
};

impl Validator<'_> {
    pub(super) fn logins(&mut self, a: &AuthSection, issuers: &[IssuerSpec], has_redis: bool) -> Vec<LoginSpec> {
        let mut out = Vec::new();
        for (i, l) in a.logins.iter().enumerate() {
            if let Some(spec) = self.login(i, l, issuers, has_redis) {
                if out.iter().any(|o: &LoginSpec| *o.name == *spec.name) {
                    self.problem(root("auth").key("logins").index(i).key("name"), "login name is used twice");
                }
                out.push(spec);
            }
        }
        out
    }

    /// Resolves each policy's `login` to an index into `logins`.
    pub(super) fn policy_logins(&mut self, a: &AuthSection, policies: &mut [Policy], logins: &[LoginSpec]) {
        for (i, p) in a.policies.iter().enumerate() {
            let Some(name) = p.login.as_deref() else { continue };
            let at = || root("auth").key("policies").index(i).key("login");
            let Some(index) = logins.iter().position(|l| *l.name == *name) else {
                if !a.logins.iter().any(|l| l.name == name) {
                    self.problem(at(), format!("unknown login {name:?} (an [[auth.logins]] name)"));
                }
                continue;
            };
            let Some(policy) = policies.iter_mut().find(|q| *q.name == *p.name) else { continue };
            if !policy.credentials.contains(&crate::auth::Credential::Jwt)
                || !policy.issuers.contains(&logins[index].issuer)
            {
                self.problem(
                    at(),
                    "the policy must accept \"jwt\" from the login's issuer (the session's access token)",
                );
            }
            policy.login = Some(index);
        }
    }

    fn login(&mut self, i: usize, l: &LoginSection, issuers: &[IssuerSpec], has_redis: bool) -> Option<LoginSpec> {
        let at = || root("auth").key("logins").index(i);
        let before = self.problems.len();
        if l.name.is_empty() {
            self.problem(at().key("name"), "must not be empty");
        }
        let issuer = issuers.iter().position(|s| *s.name == *l.issuer);
        if issuer.is_none() {
            self.problem(at().key("issuer"), format!("unknown issuer {:?} (an [[auth.issuers]] name)", l.issuer));
        }
        if l.client_id.is_empty() {
            self.problem(at().key("client_id"), "must not be empty");
        }
        let client_secret = self.secret_file(at().key("client_secret_file"), &l.client_secret_file);
        let client_auth = match l.client_auth.as_str() {
            "client_secret_basic" => ClientAuth::SecretBasic,
            "client_secret_post" => ClientAuth::SecretPost,
            other => {
                self.problem(
                    at().key("client_auth"),
                    format!("unknown method {other:?} (\"client_secret_basic\" or \"client_secret_post\")"),
                );
                ClientAuth::SecretBasic
            }
        };
        let mut scopes = vec!["openid".to_owned()];
        for (j, s) in l.scopes.iter().enumerate() {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
                self.problem(at().key("scopes").index(j), format!("invalid scope {s:?}"));
            } else if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let (origin, callback_path) = match l.redirect_uri.parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("http") && !u.host().is_some_and(super::is_loopback) => {
                self.problem(
                    at().key("redirect_uri"),
                    "plain http only on loopback: the session cookie is Secure (use https)",
                );
                (String::new(), String::new())
            }
            Ok(u) if matches!(u.scheme_str(), Some("https" | "http")) && u.authority().is_some() => {
                let origin =
                    format!("{}://{}", u.scheme_str().unwrap_or("https"), u.authority().map_or("", |a| a.as_str()));
                (origin, u.path().to_owned())
            }
            _ => {
                self.problem(
                    at().key("redirect_uri"),
                    "must be an absolute http(s) URL (the callback registered at the IdP)",
                );
                (String::new(), String::new())
            }
        };
        for (key, path) in [("login_path", &l.login_path), ("logout_path", &l.logout_path)] {
            if !path.starts_with('/') || path.starts_with("//") || *path == callback_path {
                self.problem(at().key(key), "must be an absolute path, distinct from the callback path");
            }
        }
        if !l.cookie_name.starts_with("__Host-")
            || !l.cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            self.problem(
                at().key("cookie_name"),
                "must start with __Host- (Secure, Path=/, no Domain: no subdomain can set or read it) and be a cookie token",
            );
        }
        if l.session_lifetime.as_secs() < 60 {
            self.problem(at().key("session_lifetime"), "must be at least 1m");
        }
        if l.timeout.is_zero() {
            self.problem(at().key("timeout"), "must be greater than zero");
        }
        let store = match l.session_store.as_str() {
            "memory" => SessionStoreKind::Memory,
            "redis" => {
                if !has_redis {
                    self.problem(at().key("session_store"), "\"redis\" needs a [redis] section");
                }
                match l.session_key_file.as_deref() {
                    None => {
                        self.problem(at().key("session_key_file"), "required with session_store = \"redis\"");
                        SessionStoreKind::Redis { key: [0; 32] }
                    }
                    Some(raw) => {
                        let path = self.config_relative(raw);
                        let key = std::fs::read_to_string(&path)
                            .map_err(|e| format!("cannot read {}: {e}", path.display()))
                            .and_then(|s| {
                                parse_key(s.trim()).ok_or_else(|| format!("{}: not 64 hex digits", path.display()))
                            });
                        match key {
                            Ok(key) => SessionStoreKind::Redis { key },
                            Err(reason) => {
                                self.problem(at().key("session_key_file"), reason);
                                SessionStoreKind::Redis { key: [0; 32] }
                            }
                        }
                    }
                }
            }
            other => {
                self.problem(at().key("session_store"), format!("unknown store {other:?} (\"memory\" or \"redis\")"));
                SessionStoreKind::Memory
            }
        };
        let post_logout_redirect_uri = l.post_logout_redirect_uri.clone().unwrap_or_else(|| format!("{origin}/"));
        if self.problems.len() > before {
            return None;
        }
        Some(LoginSpec {
            name: l.name.as_str().into(),
            issuer: issuer?,
            client_id: l.client_id.clone(),
            client_secret,
            client_auth,
            scope: scopes.join(" "),
            redirect_uri: l.redirect_uri.clone(),
            origin,
            callback_path,
            login_path: l.login_path.clone(),
            logout_path: l.logout_path.clone(),
            post_logout_redirect_uri,
            cookie_name: l.cookie_name.clone(),
            session_lifetime: l.session_lifetime,
            store,
            refresh_before: l.refresh_before,
            forward_access_token: l.forward_access_token,
            timeout: l.timeout,
        })
    }
}

fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Problem};

    fn load(dir: &std::path::Path, login: &str, policy: &str, redis: bool) -> Result<Config, Vec<Problem>> {
        load_with(dir, login, policy, redis, "https://app.example/oauth2/callback")
    }

    fn load_with(
        dir: &std::path::Path,
        login: &str,
        policy: &str,
        redis: bool,
        redirect: &str,
    ) -> Result<Config, Vec<Problem>> {
        std::fs::write(dir.join("secret"), "s3cret\n").unwrap();
        std::fs::write(dir.join("key"), "ab".repeat(32)).unwrap();
        let redis = if redis { "[redis]\nurl = \"redis://127.0.0.1:6379\"\n" } else { "" };
        let text = format!(
            r#"{redis}
[[listeners]]
name = "l"
bind = "127.0.0.1:18080"

[[services]]
name = "s"
targets = ["127.0.0.1:5000"]

[[routes]]
name = "r"
service = "s"
auth = "web"

[[auth.issuers]]
name = "idp"
issuer = "https://idp.example"
audiences = ["api"]

[[auth.policies]]
name = "web"
{policy}
login = "web"

[[auth.logins]]
name = "web"
issuer = "idp"
client_id = "gw"
client_secret_file = "secret"
redirect_uri = "{redirect}"
{login}
"#
        );
        let path = dir.join("gatewayd.toml");
        match Config::load_str(&text, path.to_str().unwrap()) {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid(p)) => Err(p),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_login_loads_and_bad_ones_are_located() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path(), "session_store = \"redis\"\nsession_key_file = \"key\"\n", "any_of = [\"jwt\"]", true)
            .unwrap();
        let login = &c.auth.logins[0];
        assert_eq!((login.client_secret.as_str(), login.callback_path.as_str()), ("s3cret", "/oauth2/callback"));
        assert_eq!(login.origin, "https://app.example");
        assert_eq!(login.scope, "openid");
        assert_eq!(c.auth.policies[0].login, Some(0));
        assert!(!format!("{login:?}").contains("s3cret"), "the secret is never printed");

        let cases: [(&str, &str, bool, &str, &str); 6] = [
            ("cookie_name = \"session\"\n", "any_of = [\"jwt\"]", false, "auth.logins[0].cookie_name", "__Host-"),
            ("session_store = \"redis\"\n", "any_of = [\"jwt\"]", false, "auth.logins[0].session_store", "[redis]"),
            ("session_store = \"redis\"\n", "any_of = [\"jwt\"]", true, "auth.logins[0].session_key_file", "required"),
            (
                "client_auth = \"private_key_jwt\"\n",
                "any_of = [\"jwt\"]",
                false,
                "auth.logins[0].client_auth",
                "unknown",
            ),
            ("", "any_of = [\"api_key\"]", false, "auth.policies[0].login", "must accept \"jwt\""),
            (
                "logout_path = \"/oauth2/callback\"\n",
                "any_of = [\"jwt\"]",
                false,
                "auth.logins[0].logout_path",
                "distinct",
            ),
        ];
        for (login, policy, redis, key, words) in cases {
            let p = load(dir.path(), login, policy, redis).unwrap_err();
            assert!(p.iter().any(|p| p.key == key && p.reason.contains(words)), "{login}: {p:?}");
        }
    }

    #[test]
    fn plain_http_callbacks_only_on_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let with = |uri: &str| load_with(dir.path(), "", "any_of = [\"jwt\"]", false, uri);
        assert!(with("http://127.0.0.1:8080/cb").is_ok());
        assert!(with("http://localhost/cb").is_ok());
        let p = with("http://app.example/cb").unwrap_err();
        assert!(p.iter().any(|p| p.key == "auth.logins[0].redirect_uri" && p.reason.contains("loopback")), "{p:?}");
        assert!(with("/relative").is_err());
        assert_eq!(super::parse_key(&"0f".repeat(32)), Some([0x0f; 32]));
        assert_eq!(super::parse_key("0f"), None);
        assert_eq!(super::parse_key(&"zz".repeat(32)), None);
    }
}
