//! Every refusal the gateway can answer with, and the one table that maps each to its HTTP
//! status, metric reason and response. Modules define their own error enums; this wraps them.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use thiserror::Error;

use crate::{
    auth::{AuthError, OidcError},
    budget::BudgetError,
    pipeline::RequestError,
    proxy::ProxyError,
    ratelimit::RateLimitError,
    tls::ClientCertError,
    upstream::ConnectError,
};

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error("no route matched the request")]
    NoRoute,
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    ClientCert(#[from] ClientCertError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Oidc(#[from] OidcError),
}

impl GatewayError {
    /// The status the client gets. The single source of truth for status mapping.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::Request(e) => match e {
                RequestError::BadPath(_)
                | RequestError::BadHost
                | RequestError::MissingHost
                | RequestError::DuplicateHost
                | RequestError::AuthorityMismatch
                | RequestError::RepeatedTransferEncoding
                | RequestError::Unparseable => StatusCode::BAD_REQUEST,
                RequestError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                RequestError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
                RequestError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                RequestError::UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            },
            GatewayError::Proxy(e) => match e {
                ProxyError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
                ProxyError::Connect(ConnectError::Timeout(_)) | ProxyError::ResponseTimeout(_) => {
                    StatusCode::GATEWAY_TIMEOUT
                }
                ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
                ProxyError::ClientBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
                ProxyError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            },
            GatewayError::Auth(e) => e.status(),
            GatewayError::Oidc(e) => e.status(),
            GatewayError::ClientCert(ClientCertError::Refused { .. }) => StatusCode::BAD_REQUEST,
            GatewayError::ClientCert(_) => StatusCode::FORBIDDEN,
            GatewayError::RateLimit(RateLimitError::Limited { .. })
            | GatewayError::Budget(BudgetError::Exhausted { .. }) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::RateLimit(RateLimitError::Unavailable { .. })
            | GatewayError::Budget(BudgetError::Unavailable { .. }) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable, low-cardinality reason: the `reason` metric label and the audit log's `error`.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "no_route",
            GatewayError::Request(e) => match e {
                RequestError::BadPath(_) => "bad_path",
                RequestError::BadHost => "bad_host",
                RequestError::MissingHost => "missing_host",
                RequestError::DuplicateHost => "duplicate_host",
                RequestError::AuthorityMismatch => "host_mismatch",
                RequestError::BodyTooLarge { .. } => "body_too_large",
                RequestError::UriTooLong { .. } => "uri_too_long",
                RequestError::HeadersTooLarge => "headers_too_large",
                RequestError::UnsupportedTransferCoding(_) => "unsupported_transfer_coding",
                RequestError::RepeatedTransferEncoding => "bad_framing",
                RequestError::Unparseable => "bad_request",
            },
            GatewayError::Proxy(e) => match e {
                ProxyError::NoHealthyUpstream => "no_healthy_upstream",
                ProxyError::Connect(c) => c.reason(),
                ProxyError::ResponseTimeout(_) => "read_timeout",
                ProxyError::Upstream(_) => "upstream_reset",
                ProxyError::ClientBodyTooLarge { .. } => "body_too_large",
                ProxyError::ClientBody(_) => "client_body_error",
                ProxyError::ClientBodyTimeout(_) => "client_body_timeout",
            },
            GatewayError::Auth(e) => e.reason(),
            GatewayError::Oidc(e) => e.reason(),
            GatewayError::ClientCert(e) => match e {
                ClientCertError::Refused { result: "no_client_cert" } => "client_cert_required",
                ClientCertError::Refused { .. } => "client_cert_invalid",
                ClientCertError::Required => "client_cert_required",
                ClientCertError::Invalid => "client_cert_invalid",
                ClientCertError::UnknownConsumer => "unknown_consumer",
            },
            GatewayError::RateLimit(e) => match e {
                RateLimitError::Limited { .. } => "rate_limited",
                RateLimitError::Unavailable { .. } => "ratelimit_unavailable",
            },
            GatewayError::Budget(e) => match e {
                BudgetError::Exhausted { .. } => "token_budget_exhausted",
                BudgetError::Unavailable { .. } => "token_budget_unavailable",
            },
        }
    }

    /// Server errors whose cause is already logged once where it happened (a Redis or IdP
    /// outage), so a refusal per request would only flood the log.
    pub fn logged_at_source(&self) -> bool {
        matches!(
            self,
            GatewayError::RateLimit(RateLimitError::Unavailable { .. })
                | GatewayError::Budget(BudgetError::Unavailable { .. })
                | GatewayError::Auth(AuthError::IdpUnavailable | AuthError::IdpCircuitOpen { .. })
                // The Redis outage behind it is logged once by `kv`.
                | GatewayError::Auth(AuthError::RevocationUnavailable)
        )
    }

    /// When the client may try again (`Retry-After`, whole seconds, at least one).
    pub fn retry_after(&self) -> Option<u64> {
        let after = match self {
            GatewayError::RateLimit(e) => e.retry_after(),
            GatewayError::Budget(e) => e.retry_after(),
            _ => return None,
        };
        Some(after.as_millis().div_ceil(1000).max(1) as u64)
    }

    /// The JSON error response (status, body, and the headers some refusals carry).
    pub fn response(&self, request_id: &str) -> Response<Bytes> {
        let status = self.status();
        let retry_after = self.retry_after();
        let mut body = serde_json::json!({
            "error": self.reason(),
            "message": self.to_string(),
            "status": status.as_u16(),
            "request_id": request_id,
        });
        if let Some(secs) = retry_after {
            body["retry_after"] = secs.into();
        }
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = status;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                | StatusCode::BAD_REQUEST
                | StatusCode::URI_TOO_LONG
                | StatusCode::NOT_IMPLEMENTED
                | StatusCode::REQUEST_TIMEOUT
        ) {
            // The rest of the request may still be on the wire: do not try to parse it.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayError::Oidc(e) = self {
            for (name, value) in e.headers() {
                resp.headers_mut().append(name, value);
            }
        }
        if let GatewayError::Auth(e) = self {
            if let Some(challenge) = e.challenge() {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
            }
            if let Some(secs) = e.retry_after() {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn statuses_and_reasons() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (GatewayError::NoRoute, 404, "no_route"),
            (RequestError::BodyTooLarge { limit: 1 }.into(), 413, "body_too_large"),
            (RequestError::UriTooLong { limit: 1 }.into(), 414, "uri_too_long"),
            (RequestError::HeadersTooLarge.into(), 431, "headers_too_large"),
            (RequestError::MissingHost.into(), 400, "missing_host"),
            (RequestError::DuplicateHost.into(), 400, "duplicate_host"),
            (RequestError::AuthorityMismatch.into(), 400, "host_mismatch"),
            (
                RequestError::UnsupportedTransferCoding("gzip, chunked".into()).into(),
                501,
                "unsupported_transfer_coding",
            ),
            (RequestError::RepeatedTransferEncoding.into(), 400, "bad_framing"),
            (RequestError::Unparseable.into(), 400, "bad_request"),
            (ProxyError::Connect(ConnectError::Refused).into(), 502, "connect_refused"),
            (ProxyError::Connect(ConnectError::Timeout(Duration::from_secs(1))).into(), 504, "connect_timeout"),
            (ProxyError::ResponseTimeout(Duration::from_secs(1)).into(), 504, "read_timeout"),
            (ProxyError::NoHealthyUpstream.into(), 503, "no_healthy_upstream"),
            (ProxyError::ClientBodyTimeout(Duration::from_secs(1)).into(), 408, "client_body_timeout"),
            (AuthError::Expired.into(), 401, "expired"),
            (AuthError::InsufficientScope { required: "read".into() }.into(), 403, "insufficient_scope"),
            (AuthError::IdpUnavailable.into(), 503, "idp_unavailable"),
            (ClientCertError::Required.into(), 403, "client_cert_required"),
            (ClientCertError::Refused { result: "no_client_cert" }.into(), 400, "client_cert_required"),
            (ClientCertError::Refused { result: "revoked" }.into(), 400, "client_cert_invalid"),
            (ClientCertError::Invalid.into(), 403, "client_cert_invalid"),
            (ClientCertError::UnknownConsumer.into(), 403, "unknown_consumer"),
            (
                RateLimitError::Limited {
                    layer: "ip".into(),
                    limit: 100,
                    window: crate::ratelimit::Window::Minute,
                    retry_after: Duration::from_millis(12_001),
                }
                .into(),
                429,
                "rate_limited",
            ),
            (
                RateLimitError::Unavailable { layer: "ip".into(), source: crate::kv::KvError::Unavailable }.into(),
                503,
                "ratelimit_unavailable",
            ),
            (
                BudgetError::Exhausted {
                    budget: "ws".into(),
                    limit: 10,
                    used: 12,
                    zone: "UTC".into(),
                    retry_after: Duration::from_secs(3600),
                }
                .into(),
                429,
                "token_budget_exhausted",
            ),
        ];
        for (err, status, reason) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.reason(), reason);
            let resp = err.response("rid");
            let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
            assert_eq!(v["error"], reason);
            assert_eq!(v["request_id"], "rid");
            if status == 429 {
                let secs = resp.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap();
                assert!(secs == 13 || secs == 3600, "{secs}");
                assert_eq!(v["retry_after"], secs);
            }
        }
        let resp = GatewayError::from(AuthError::BadAudience).response("rid");
        let challenge = resp.headers()[header::WWW_AUTHENTICATE].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"gatewayd\", error=\"invalid_token\""), "{challenge}");
        let resp = GatewayError::from(AuthError::IdpUnavailable).response("rid");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
    }
}
