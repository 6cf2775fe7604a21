//! A small HTTP/1.1 client for the identity provider: discovery, JWKS and introspection. HTTPS
//! through rustls (aws-lc-rs), with the system's roots or a configured CA file. Every call has a
//! deadline and a body size limit; redirects are not followed. Idle connections are kept for
//! reuse (introspection calls come in bursts).

use std::{sync::Arc, sync::Mutex, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use thiserror::Error;
use tokio::net::TcpStream;

/// Largest IdP response body (discovery, JWKS, introspection) we read.
pub const MAX_BODY: usize = 1 << 20;
/// Idle connections kept per client.
const MAX_IDLE: usize = 4;

#[derive(Debug, Error)]
pub enum IdpHttpError {
    #[error("invalid URL {0}")]
    Url(String),
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("response body larger than {MAX_BODY} bytes or cut short")]
    Body,
    #[error("HTTPS URL but no TLS configuration")]
    NoTls,
}

/// The client's TLS settings, built at config validation (a bad CA file is a config error).
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                // A system store may hold certificates rustls cannot use; skip those.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found; set ca_file".into());
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A response as the callers need it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

pub struct IdpClient {
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<(String, SendRequest<Full<Bytes>>)>>,
}

impl std::fmt::Debug for IdpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpClient").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl IdpClient {
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        IdpClient { tls, idle: Mutex::new(Vec::new()) }
    }

    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, IdpHttpError> {
        let req = Request::get(url)
            .header(header::ACCEPT, "application/json")
            .body(Full::default())
            .map_err(|_| IdpHttpError::Url(url.to_owned()))?;
        self.send(req, timeout).await
    }

    pub async fn post_form(
        &self,
        url: &str,
        authorization: Option<&str>,
        form: String,
        timeout: Duration,
    ) -> Result<Answer, IdpHttpError> {
        let mut req = Request::post(url)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(authorization) = authorization {
            req = req.header(header::AUTHORIZATION, authorization);
        }
        let req = req.body(Full::new(Bytes::from(form))).map_err(|_| IdpHttpError::Url(url.to_owned()))?;
        self.send(req, timeout).await
    }

    /// Sends with a deadline covering connect, TLS, the request and the whole body.
    async fn send(&self, req: Request<Full<Bytes>>, timeout: Duration) -> Result<Answer, IdpHttpError> {
        tokio::time::timeout(timeout, self.send_inner(req)).await.map_err(|_| IdpHttpError::Timeout(timeout))?
    }

    async fn send_inner(&self, mut req: Request<Full<Bytes>>) -> Result<Answer, IdpHttpError> {
        let target = Target::of(req.uri())?;
        *req.uri_mut() = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).parse().unwrap_or_default();
        req.headers_mut().insert(
            header::HOST,
            http::HeaderValue::from_str(&target.authority).map_err(|_| IdpHttpError::Url(target.authority.clone()))?,
        );
        let mut sender = match self.take_idle(&target.key) {
            Some(s) => s,
            None => self.connect(&target).await?,
        };
        let resp = sender.send_request(req).await.map_err(|e| IdpHttpError::Http(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY).collect().await.map_err(|_| IdpHttpError::Body)?.to_bytes();
        let keep = !parts.headers.get(header::CONNECTION).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if keep {
            self.put_idle(target.key, sender);
        }
        Ok(Answer { status: parts.status, headers: parts.headers, body })
    }

    fn take_idle(&self, key: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(i) = idle.iter().position(|(k, _)| k == key) {
            let (_, s) = idle.swap_remove(i);
            if s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, key: String, sender: SendRequest<Full<Bytes>>) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|(_, s)| !s.is_closed());
        if idle.len() < MAX_IDLE {
            idle.push((key, sender));
        }
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<Full<Bytes>>, IdpHttpError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| IdpHttpError::Connect(target.authority.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        if target.https {
            let tls = self.tls.clone().ok_or(IdpHttpError::NoTls)?;
            let name = ServerName::try_from(target.host.clone()).map_err(|_| IdpHttpError::Url(target.host.clone()))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| IdpHttpError::Tls(target.authority.clone(), e))?;
            handshake(stream).await
        } else {
            handshake(tcp).await
        }
    }
}

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, IdpHttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| IdpHttpError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

struct Target {
    https: bool,
    host: String,
    port: u16,
    /// `host[:port]` as in the URL (the Host header).
    authority: String,
    /// Pool key: scheme and authority.
    key: String,
}

impl Target {
    fn of(uri: &Uri) -> Result<Target, IdpHttpError> {
        let bad = || IdpHttpError::Url(uri.to_string());
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target {
            https,
            host,
            port,
            authority: authority.as_str().to_owned(),
            key: format!("{}://{}", if https { "https" } else { "http" }, authority.as_str()),
        })
    }
}

/// `Cache-Control: max-age=N` (or `s-maxage`); `no-cache`/`no-store` mean zero.
pub fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for v in headers.get_all(header::CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { continue };
        for directive in v.split(',') {
            let d = directive.trim().to_ascii_lowercase();
            if d == "no-cache" || d == "no-store" {
                return Some(Duration::ZERO);
            }
            if let Some(n) = d.strip_prefix("max-age=").or_else(|| d.strip_prefix("s-maxage="))
                && let Ok(n) = n.trim_matches('"').parse::<u64>()
            {
                found = Some(Duration::from_secs(n));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(header::CACHE_CONTROL, "public, max-age=3600, must-revalidate".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::from_secs(3600)));
        h.insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
        assert_eq!(max_age(&h), Some(Duration::ZERO));
        h.insert(header::CACHE_CONTROL, "max-age=abc".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn targets() {
        let t = Target::of(&"https://idp.example.com/x".parse().unwrap()).unwrap();
        assert!(t.https && t.port == 443 && t.host == "idp.example.com");
        let t = Target::of(&"http://[::1]:8080/x".parse().unwrap()).unwrap();
        assert!(!t.https && t.port == 8080 && t.host == "::1" && t.authority == "[::1]:8080");
        assert!(Target::of(&"ftp://x/".parse().unwrap()).is_err());
    }
}
