//! Per-route policies: which credentials a route accepts, from which issuers, with which scopes.

use std::{fmt, sync::Arc};

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutePolicy {
    /// Open (the config said so explicitly: `auth = "none"`).
    Open,
    /// Index into `AuthSpec::policies`.
    Policy(usize),
}

/// A kind of credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A bearer token: a JWT validated locally, or an opaque token through introspection.
    Jwt,
    /// An API key in the configured header.
    ApiKey,
    /// A verified client certificate on the connection.
    Mtls,
}

impl Credential {
    pub fn parse(s: &str) -> Option<Credential> {
        match s {
            "jwt" => Some(Credential::Jwt),
            "api_key" => Some(Credential::ApiKey),
            "mtls" => Some(Credential::Mtls),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Jwt => "jwt",
            Credential::ApiKey => "api_key",
            Credential::Mtls => "mtls",
        }
    }

    /// What the client is told is missing.
    pub fn wanted(self) -> &'static str {
        match self {
            Credential::Jwt => "a bearer token",
            Credential::ApiKey => "an API key",
            Credential::Mtls => "a client certificate",
        }
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One of the credentials suffices. Every credential that is presented must be valid: a bad
    /// token is refused even when a good API key comes with it.
    AnyOf,
    /// Every credential is required.
    AllOf,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Arc<str>,
    pub mode: Mode,
    pub credentials: Vec<Credential>,
    /// Indices into `AuthSpec::issuers` whose tokens are accepted.
    pub issuers: Vec<usize>,
    /// Every one of these must be granted (token scopes, or the consumer's for API keys).
    pub scopes: Vec<Arc<str>>,
    /// `scopes` joined by spaces, for the 403 challenge.
    pub scopes_joined: Arc<str>,
    /// What a client without credentials is told it needs ("a bearer token or an API key").
    pub wanted: Arc<str>,
    /// Index into `AuthSpec::logins`: browsers without a session are sent to log in.
    pub login: Option<usize>,
}

impl Policy {
    pub fn new(
        name: &str,
        mode: Mode,
        credentials: Vec<Credential>,
        issuers: Vec<usize>,
        scopes: Vec<Arc<str>>,
    ) -> Policy {
        let joined = scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ");
        let sep = if mode == Mode::AnyOf { " or " } else { " and " };
        let wanted = credentials.iter().map(|c| c.wanted()).collect::<Vec<_>>().join(sep);
        Policy {
            name: name.into(),
            mode,
            credentials,
            issuers,
            scopes,
            scopes_joined: joined.into(),
            wanted: wanted.into(),
            login: None,
        }
    }

    pub fn accepts(&self, c: Credential) -> bool {
        self.credentials.contains(&c)
    }

    /// The first required scope that `granted` lacks.
    pub fn missing_scope<'a>(&'a self, granted: &[Arc<str>]) -> Option<&'a str> {
        self.scopes.iter().find(|s| !granted.iter().any(|g| g == *s)).map(|s| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_must_all_be_granted() {
        let p = Policy::new("p", Mode::AnyOf, vec![Credential::Jwt], vec![0], vec!["read".into(), "write".into()]);
        assert_eq!(p.missing_scope(&["read".into(), "write".into(), "x".into()]), None);
        assert_eq!(p.missing_scope(&["read".into()]), Some("write"));
        assert_eq!(p.missing_scope(&[]), Some("read"));
        assert_eq!(&*p.scopes_joined, "read write");
        let any = Policy::new("p", Mode::AnyOf, vec![Credential::Jwt, Credential::ApiKey], vec![], vec![]);
        assert_eq!(&*any.wanted, "a bearer token or an API key");
        assert_eq!(Credential::parse("api_key"), Some(Credential::ApiKey));
        assert_eq!(Credential::parse("basic"), None);
    }
}
