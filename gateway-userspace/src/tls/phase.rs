//! The client-certificate phase: per-route requirements (a verified certificate, or one that
//! belongs to a configured consumer), certificate → consumer mapping, and the identity headers
//! sent upstream. Every client-supplied copy of those headers is removed first, on every
//! request and every listener, so an upstream can trust them.

use std::fmt::Write as _;

use http::{HeaderName, HeaderValue, request};
use serde::Deserialize;
use thiserror::Error;

use std::sync::Arc;

use super::{CertFacts, ClientAuth, TlsRuntime, VerifyStatus};
use crate::{
    consumer::Consumers,
    error::GatewayError,
    request::{Phase, RequestCtx, Step},
};

/// `client_cert` of a route.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertRequirement {
    /// Whatever the listener allows.
    #[default]
    Optional,
    /// A verified client certificate (403 without one), even on an `optional` listener.
    Required,
    /// A verified client certificate that maps to a `[[consumers]]` entry (403 otherwise):
    /// removing the consumer and reloading offboards the partner.
    Consumer,
}

/// Refusals of this phase: 403 (the client is known to the TLS layer, and not allowed), except
/// `Refused`, the listener's own verdict on the certificate (400, as nginx and Kong answer).
#[derive(Debug, Error)]
pub enum ClientCertError {
    /// The listener refuses the connection's certificate (`client_cert_refusal = "status"`);
    /// the `result` of `gateway_tls_handshakes_total` says why.
    #[error("{}", refusal_message(.result))]
    Refused { result: &'static str },
    #[error("this route requires a client certificate")]
    Required,
    #[error("the client certificate does not verify against the current CAs and CRLs")]
    Invalid,
    #[error("the client certificate does not belong to a known consumer")]
    UnknownConsumer,
}

pub static CLIENT_CERT_VERIFY: HeaderName = HeaderName::from_static("x-client-cert-verify");
pub static CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub static CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-client-cert-san");
pub static CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-client-cert-sha256");
pub static CLIENT_CERT_SERIAL: HeaderName = HeaderName::from_static("x-client-cert-serial");
pub static CONSUMER_NAME: HeaderName = HeaderName::from_static("x-consumer-name");
pub static CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");

/// Every header this phase owns; clients' copies never reach an upstream.
pub fn identity_headers() -> [&'static HeaderName; 7] {
    [
        &CLIENT_CERT_VERIFY,
        &CLIENT_CERT_SUBJECT,
        &CLIENT_CERT_SAN,
        &CLIENT_CERT_SHA256,
        &CLIENT_CERT_SERIAL,
        &CONSUMER_NAME,
        &CONSUMER_ID,
    ]
}

impl crate::error::Refusal for ClientCertError {
    fn status(&self) -> http::StatusCode {
        match self {
            ClientCertError::Refused { .. } => http::StatusCode::BAD_REQUEST,
            _ => http::StatusCode::FORBIDDEN,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ClientCertError::Refused { result: "no_client_cert" } | ClientCertError::Required => "client_cert_required",
            ClientCertError::Refused { .. } | ClientCertError::Invalid => "client_cert_invalid",
            ClientCertError::UnknownConsumer => "unknown_consumer",
        }
    }
}

/// See the module documentation. Runs first, so later identity phases (JWT with certificate-
/// bound tokens) see its decision in `ctx.identity` and `ctx.client_cert`.
pub struct ClientCertPhase {
    /// The config generation the listeners' trust belongs to (certificates are re-verified
    /// once per generation).
    pub generation: u64,
    pub tls: Arc<TlsRuntime>,
    /// `client_cert` of each route, indexed by route.
    pub requirements: Vec<ClientCertRequirement>,
    pub consumers: Arc<Consumers>,
}

impl Phase for ClientCertPhase {
    fn name(&self) -> &'static str {
        "client-cert"
    }

    /// A connection whose certificate the listener refused gets 400 whatever it asks for, and
    /// ends after it (HTTP/1: `Connection: close`; HTTP/2: GOAWAY, no more streams).
    ///
    /// Every request also learns its certificate's status here (`ctx.client_cert`), before any
    /// refusal, so the audit log has it for all of them.
    fn before_route(&self, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let conn = ctx.conn.clone();
        if let Some(tls) = conn.tls.as_ref() {
            ctx.client_cert = super::client_status(tls, &self.tls, self.generation, &conn.listener);
        }
        match conn.tls.as_ref().and_then(|t| t.refusal.as_ref()) {
            Some(refusal) => {
                conn.close_requested.set(true);
                conn.watchdog_wake.notify();
                Err(ClientCertError::Refused { result: refusal.result }.into())
            }
            None => Ok(()),
        }
    }

    fn on_request<'a>(&'a self, ctx: &'a mut RequestCtx, head: &'a mut request::Parts) -> Step<'a> {
        crate::request::remove_present(&mut head.headers, &identity_headers());
        let conn = ctx.conn.clone();
        let status = ctx.client_cert.0;
        head.headers.insert(&CLIENT_CERT_VERIFY, HeaderValue::from_static(status.as_str()));
        let mut requirement = ctx.route.and_then(|r| self.requirements.get(r)).copied().unwrap_or_default();
        let listener_auth = self.tls.listener(&conn.listener).map_or(ClientAuth::None, |s| s.spec.client_auth);
        if requirement == ClientCertRequirement::Optional && listener_auth == ClientAuth::Required {
            requirement = ClientCertRequirement::Required;
        }
        if status == VerifyStatus::Failed && listener_auth != ClientAuth::None {
            // A certificate that no longer verifies (revoked by a CRL reload) would be refused in
            // a new handshake on this listener, `optional` too: it keeps no route open, not even
            // one that asks for no certificate.
            return refuse(ClientCertError::Invalid);
        }
        let facts = match status {
            VerifyStatus::Success => conn.tls.as_ref().and_then(|t| t.client_cert.as_ref()).and_then(|c| c.facts()),
            _ => None,
        };
        let Some(facts) = facts else {
            return match (requirement, status) {
                (ClientCertRequirement::Optional, _) => Step::Continue,
                (_, VerifyStatus::Failed) => refuse(ClientCertError::Invalid),
                _ => refuse(ClientCertError::Required),
            };
        };
        set_cert_headers(head, facts);
        match self.consumers.by_certificate(facts) {
            Some(consumer) => {
                head.headers.insert(&CONSUMER_NAME, header_value(&consumer.name));
                head.headers.insert(&CONSUMER_ID, header_value(&consumer.id));
                ctx.identity.consumer = Some(consumer.clone());
                Step::Continue
            }
            None if requirement == ClientCertRequirement::Consumer => {
                tracing::info!(listener = %conn.listener, subject = %facts.subject, sha256 = %facts.sha256_hex(),
                    "client certificate maps to no consumer");
                refuse(ClientCertError::UnknownConsumer)
            }
            None => Step::Continue,
        }
    }
}

/// nginx's wording, which partners' runbooks (and seed 003) quote, plus the precise reason.
fn refusal_message(result: &str) -> &'static str {
    match result {
        "no_client_cert" => "No required SSL certificate was sent",
        "unknown_ca" => "The SSL certificate error: the client certificate is not issued by a trusted CA",
        "expired" => "The SSL certificate error: the client certificate has expired or is not yet valid",
        "revoked" => "The SSL certificate error: the client certificate is revoked",
        "bad_usage" => "The SSL certificate error: the client certificate is not valid for client authentication",
        "revocation_unknown" => "The SSL certificate error: the client certificate's revocation status is unknown",
        "bad_ca" => {
            "The SSL certificate error: the client certificate chain misuses a CA certificate (basicConstraints)"
        }
        "bad_chain" => "The SSL certificate error: no acceptable chain to a trusted CA for the client certificate",
        _ => "The SSL certificate error: the client certificate does not verify",
    }
}

fn refuse(e: ClientCertError) -> Step<'static> {
    Step::refuse(e)
}

fn set_cert_headers(head: &mut request::Parts, facts: &CertFacts) {
    head.headers.insert(&CLIENT_CERT_SUBJECT, header_value(&facts.subject));
    if !facts.sans.is_empty() {
        head.headers.insert(&CLIENT_CERT_SAN, san_list(&facts.sans));
    }
    head.headers.insert(&CLIENT_CERT_SHA256, header_value(&facts.sha256_hex()));
    head.headers.insert(&CLIENT_CERT_SERIAL, header_value(&facts.serial));
}

/// `X-Client-Cert-San`: an RFC 8941 List of Strings (`"DNS:a.example", "URI:spiffe://x"`), so
/// a SAN holding `", URI:…"` stays one item; a SAN with bytes a String cannot hold (controls,
/// non-ASCII) is an RFC 9651 Display String (`%"…"`, percent-encoded UTF-8). Hand-written: two
/// escapes do not justify the `sfv` crate and its decimal dependency.
fn san_list(sans: &[String]) -> HeaderValue {
    let mut out = String::with_capacity(sans.iter().map(|s| s.len() + 4).sum());
    for (i, san) in sans.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if san.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            out.push('"');
            for c in san.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str("%\"");
            for b in san.bytes() {
                if (0x20..0x7f).contains(&b) && b != b'%' && b != b'"' {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02x}");
                }
            }
            out.push('"');
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Visible ASCII and spaces as they are; anything else (UTF-8 in a DN, control characters)
/// percent-encoded, so the value is always a valid header and cannot split one.
pub fn header_value(s: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(s)
        && s.bytes().all(|b| (0x20..0x7f).contains(&b))
    {
        return v;
    }
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_always_safe() {
        assert_eq!(header_value("CN=a,O=b"), "CN=a,O=b");
        assert_eq!(header_value("CN=Müller"), "CN=M%C3%BCller");
        assert_eq!(header_value("CN=a\r\nX-Evil: 1"), "CN=a%0D%0AX-Evil: 1");
    }

    #[test]
    fn sans_are_a_structured_list_of_strings() {
        let sans = |s: &[&str]| san_list(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(sans(&["DNS:a.example", "IP:10.0.0.1"]), r#""DNS:a.example", "IP:10.0.0.1""#);
        assert_eq!(
            sans(&["URI:spiffe://a/b, URI:spiffe://admin", r#"email:"q"\x@y"#]),
            r#""URI:spiffe://a/b, URI:spiffe://admin", "email:\"q\"\\x@y""#
        );
        assert_eq!(sans(&["DNS:m\u{fc}ller\r\n%\""]), r#"%"DNS:m%c3%bcller%0d%0a%25%22""#);
    }
}
