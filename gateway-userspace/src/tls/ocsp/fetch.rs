//! Plain-HTTP fetches for revocation data: an OCSP POST (RFC 6960 appendix A) or a CRL GET.
//! Responders and distribution points are `http://` by design (their answers are signed; TLS
//! to them would need revocation checking of its own). One connection per fetch, a deadline
//! over the whole exchange, a body limit, no redirects.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

/// Largest OCSP response or CRL read.
const MAX_BODY: usize = 8 << 20;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("invalid or non-http:// URL {0}")]
    Url(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// POSTs an OCSP request (`body`) to `url`, or GETs `url` when `body` is `None`.
pub async fn fetch(url: &str, body: Option<&[u8]>, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(timeout, exchange(url, body)).await.map_err(|_| FetchError::Timeout(timeout))?
}

async fn exchange(url: &str, body: Option<&[u8]>) -> Result<Vec<u8>, FetchError> {
    let uri: Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
    let (Some("http"), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(FetchError::Url(url.to_owned()));
    };
    let authority = format!("{}:{}", host.trim_start_matches('[').trim_end_matches(']'), uri.port_u16().unwrap_or(80));
    let host_header = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let tcp =
        TcpStream::connect(&authority).await.map_err(|e| FetchError::Connect(authority.clone(), e.to_string()))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| FetchError::Http(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = match body {
        Some(b) => Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::HOST, host_header)
            .header(header::CONTENT_TYPE, "application/ocsp-request")
            .body(Full::new(Bytes::copy_from_slice(b))),
        None => {
            Request::builder().method(Method::GET).uri(path).header(header::HOST, host_header).body(Full::default())
        }
    }
    .map_err(|e| FetchError::Http(e.to_string()))?;
    let result = async {
        let response = send.send_request(request).await.map_err(|e| FetchError::Http(e.to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Http(format!("body: {e}")))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}
