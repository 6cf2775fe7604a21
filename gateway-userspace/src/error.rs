//! How a refusal becomes a response, in one place: every feature's error enum implements
//! [`Refusal`] (its status, its metric reason, whether it was already logged, when to retry), and
//! [`GatewayError::response`] turns any of them into the one JSON body, with the headers that
//! status needs. This module knows no feature; features know it.

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// A refusal a feature answers a request with. The status table of each feature lives next to
/// its error enum, in its `impl Refusal`.
pub trait Refusal: std::error::Error + Send + Sync + 'static {
    /// The status the client gets.
    fn status(&self) -> StatusCode;

    /// A stable, low-cardinality reason: the `reason` metric label and the audit log's `error`.
    fn reason(&self) -> &'static str;

    /// Server errors whose cause is already logged once where it happened (a Redis or IdP
    /// outage), so a refusal per request would only flood the log.
    fn logged_at_source(&self) -> bool {
        false
    }

    /// When the client may try again (`Retry-After`, and `retry_after` in the body).
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Headers this refusal adds (e.g. `WWW-Authenticate`).
    fn add_headers(&self, _headers: &mut HeaderMap) {}
}

/// Any refusal, as the pipeline carries it.
pub struct GatewayError(Box<dyn Refusal>);

impl<E: Refusal> From<E> for GatewayError {
    fn from(e: E) -> Self {
        GatewayError(Box::new(e))
    }
}

impl fmt::Debug for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }

    pub fn reason(&self) -> &'static str {
        self.0.reason()
    }

    pub fn logged_at_source(&self) -> bool {
        self.0.logged_at_source()
    }

    /// `Retry-After` in whole seconds, at least one.
    pub fn retry_after(&self) -> Option<u64> {
        self.0.retry_after().map(|after| after.as_millis().div_ceil(1000).max(1) as u64)
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
        self.0.add_headers(resp.headers_mut());
        resp
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        auth::AuthError,
        budget::BudgetError,
        pipeline::RequestError,
        proxy::{ConnectError, ProxyError},
        ratelimit::RateLimitError,
        tls::ClientCertError,
    };

    #[test]
    fn statuses_and_reasons() {
        let cases: Vec<(GatewayError, u16, &str)> = vec![
            (RequestError::NoRoute.into(), 404, "no_route"),
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
