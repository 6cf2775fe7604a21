//! What a limit counts by: the client address, who the client is (consumer, user), its
//! workspace, its API key, or any request header. A layer lists one or more sources; the first
//! one present in the request is its key.

use std::{
    collections::HashMap,
    fmt::Write as _,
    hash::Hasher,
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use http::{HeaderName, request};

use crate::{consumer::Consumer, request::RequestCtx};

/// `X-Workspace-Id`: the workspace when no identity phase set one (the seed's header).
pub static WORKSPACE_HEADER: HeaderName = HeaderName::from_static("x-workspace-id");

/// Longest key value taken from a request; longer values are treated as absent.
const MAX_VALUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The client address (after `trusted_proxies`); IPv6 by prefix (see `ipv6_prefix`).
    Ip,
    /// The `[[consumers]]` entry the credentials map to (`RequestCtx::identity.consumer`).
    Consumer,
    /// The authenticated user (`RequestCtx::identity.user_id`, e.g. a JWT `sub`).
    User,
    /// `RequestCtx::identity.workspace_id` (a token claim), else the `X-Workspace-Id` header.
    Workspace,
    /// The `X-API-Key` header (never stored in clear: hashed in Redis keys).
    ApiKey,
    /// Any request header, e.g. `header:x-tenant` (hashed in Redis keys).
    Header(HeaderName),
}

impl FromStr for KeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ip" => KeySource::Ip,
            "consumer" => KeySource::Consumer,
            "user" => KeySource::User,
            "workspace" => KeySource::Workspace,
            "api_key" => KeySource::ApiKey,
            _ => match s.strip_prefix("header:") {
                Some(name) => KeySource::Header(
                    HeaderName::from_str(name).map_err(|_| format!("invalid header name {name:?} in key {s:?}"))?,
                ),
                None => {
                    return Err(format!(
                        "unknown key {s:?}: use \"ip\", \"consumer\", \"user\", \"workspace\", \"api_key\" or \"header:<name>\""
                    ));
                }
            },
        })
    }
}

impl KeySource {
    /// One letter per source in Redis keys, so equal values from different sources differ.
    fn tag(&self) -> u8 {
        match self {
            KeySource::Ip => b'i',
            KeySource::Consumer => b'c',
            KeySource::User => b'u',
            KeySource::Workspace => b'w',
            KeySource::ApiKey => b'k',
            KeySource::Header(_) => b'h',
        }
    }

    /// Values that may be secrets never appear in clear outside the process.
    fn secret(&self) -> bool {
        matches!(self, KeySource::ApiKey | KeySource::Header(_))
    }
}

/// A key found in a request, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub source: &'a KeySource,
    pub value: Value<'a>,
    /// The `[[consumers]]` entry the value stands for, when it stands for one (a consumer key,
    /// an API key, or the user of a request authenticated as a consumer): overrides may name
    /// the consumer by name or id whichever of them the counter is keyed by.
    pub consumer: Option<&'a Consumer>,
}

#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Masked to the configured IPv6 prefix.
    Ip(IpAddr),
    Text(&'a [u8]),
}

/// The first of `sources` present in the request.
/// `api_key_header`: where API keys arrive (`[auth] api_key_header`).
pub fn find<'a>(
    sources: &'a [KeySource],
    ipv6_prefix: u8,
    api_key_header: &HeaderName,
    ctx: &'a RequestCtx,
    head: &'a request::Parts,
) -> Option<Key<'a>> {
    sources.iter().find_map(|source| {
        let mut consumer = None;
        let value = match source {
            KeySource::Ip => Value::Ip(mask(ctx.client_ip, ipv6_prefix)),
            KeySource::Consumer => {
                consumer = ctx.identity.consumer.as_ref();
                Value::Text(consumer?.name.as_bytes())
            }
            KeySource::User => {
                let user = ctx.identity.user_id.as_deref()?;
                consumer = user_consumer(ctx, user);
                Value::Text(user.as_bytes())
            }
            KeySource::Workspace => Value::Text(ctx.identity.workspace_id.as_deref()?.as_bytes()),
            KeySource::ApiKey => match header(head, api_key_header) {
                Some(v) => Value::Text(v),
                // The identify phase removes a verified key before proxying: its consumer stands
                // for it (one consumer, one budget, whichever of its keys was used).
                None if ctx.identity.credential == Some("api_key") => {
                    consumer = ctx.identity.consumer.as_ref();
                    Value::Text(consumer?.name.as_bytes())
                }
                None => return None,
            },
            KeySource::Header(name) => Value::Text(header(head, name)?),
        };
        match value {
            Value::Text(t) if t.is_empty() || t.len() > MAX_VALUE => None,
            v => Some(Key { source, value: v, consumer }),
        }
    })
}

/// The consumer a `user` value stands for: a request authenticated as a consumer (API key,
/// client certificate) has the consumer's id as its user. A token's subject never does, even
/// one spelled like a consumer id: it must not borrow that consumer's overrides.
fn user_consumer<'a>(ctx: &'a RequestCtx, user: &str) -> Option<&'a Consumer> {
    let consumer = ctx.identity.consumer.as_ref()?;
    let as_consumer = matches!(ctx.identity.credential, Some("api_key" | "mtls"));
    (as_consumer && *consumer.id == *user).then_some(consumer)
}

fn header<'a>(head: &'a request::Parts, name: &HeaderName) -> Option<&'a [u8]> {
    head.headers.get(name).map(|v| v.as_bytes())
}

/// Takes the workspace from `X-Workspace-Id` when no identity phase set one, so limits, budgets
/// and the audit log all see it. The identify phase removes client-supplied copies of its own
/// workspace header (by default this one), so this only applies when `[auth.headers] workspace`
/// names another header: the operator's explicit choice to trust a client-sent workspace.
pub fn adopt_workspace_header(ctx: &mut RequestCtx, head: &request::Parts) {
    if ctx.identity.workspace_id.is_some() {
        return;
    }
    let value = head.headers.get(&WORKSPACE_HEADER).and_then(|v| v.to_str().ok());
    if let Some(v) = value.filter(|v| !v.is_empty() && v.len() <= MAX_VALUE) {
        ctx.identity.workspace_id = Some(v.to_owned());
    }
}

/// Keeps the first `prefix` bits of IPv6 addresses (a client usually holds a whole /64).
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6);
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

impl Key<'_> {
    /// Feeds the key into a digest (the memory backend's map key).
    pub fn hash_into(&self, h: &mut dyn Hasher) {
        h.write_u8(self.source.tag());
        match self.value {
            Value::Ip(IpAddr::V4(a)) => h.write(&a.octets()),
            Value::Ip(IpAddr::V6(a)) => h.write(&a.octets()),
            Value::Text(t) => h.write(t),
        }
    }

    /// The override in `overrides` for this key: by its value (`"partner-a"`, `"192.0.2.1"`,
    /// `"2001:db8::"`), else, for a consumer's key, by the consumer's name or id (the README's
    /// per-consumer overrides name consumers, while a `user` key counts an API consumer by id).
    pub fn override_in(&self, overrides: &HashMap<String, u64>) -> Option<u64> {
        if overrides.is_empty() {
            return None;
        }
        let by_consumer = || {
            let c = self.consumer?;
            overrides.get(&*c.name).or_else(|| overrides.get(&*c.id))
        };
        overrides.get(self.display().as_ref()).or_else(by_consumer).copied()
    }

    /// The value as overrides name it (`"partner-a"`, `"192.0.2.1"`, `"2001:db8::"`).
    pub fn display(&self) -> std::borrow::Cow<'_, str> {
        match self.value {
            Value::Ip(ip) => ip.to_string().into(),
            Value::Text(t) => String::from_utf8_lossy(t),
        }
    }

    /// The key's part of a Redis key: `<tag>:<value>` in clear when it is harmless (no secret,
    /// printable, no hash-tag braces), else `<tag>#<sha256 prefix>`.
    pub fn redis_part(&self, out: &mut String) {
        out.push(char::from(self.source.tag()));
        match self.value {
            Value::Ip(ip) => {
                let _ = write!(out, ":{ip}");
            }
            Value::Text(t) if !self.source.secret() && t.iter().all(|b| b.is_ascii_graphic() && !b"{}".contains(b)) => {
                out.push(':');
                // All ASCII, checked above.
                out.push_str(std::str::from_utf8(t).unwrap_or_default());
            }
            Value::Text(t) => {
                out.push('#');
                let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t);
                for b in &digest.as_ref()[..16] {
                    let _ = write!(out, "{b:02x}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!("ip".parse::<KeySource>(), Ok(KeySource::Ip));
        assert_eq!("header:X-Tenant".parse::<KeySource>(), Ok(KeySource::Header(HeaderName::from_static("x-tenant"))));
        assert!("header:bad name".parse::<KeySource>().is_err());
        assert!("cookie".parse::<KeySource>().unwrap_err().contains("unknown key"));
    }

    #[test]
    fn ipv6_is_keyed_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(mask(a, 64), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(mask(a, 128), a);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(mask(mapped, 64), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn secrets_never_reach_redis_in_clear() {
        let api = KeySource::ApiKey;
        let user = KeySource::User;
        let mut out = String::new();
        Key { source: &api, value: Value::Text(b"sk-live-123"), consumer: None }.redis_part(&mut out);
        assert!(out.starts_with("k#") && !out.contains("sk-live"), "{out}");
        assert_eq!(out.len(), 2 + 32);
        out.clear();
        Key { source: &user, value: Value::Text(b"user-123"), consumer: None }.redis_part(&mut out);
        assert_eq!(out, "u:user-123");
        out.clear();
        Key { source: &user, value: Value::Text(b"we{ird}"), consumer: None }.redis_part(&mut out);
        assert!(out.starts_with("u#"), "braces would break the hash tag: {out}");
    }
}
