//! Per-worker pools of idle HTTP/1.1 keep-alive connections to upstream targets, plain or TLS.
//! Worker-local (`Rc`/`RefCell`): no lock, no atomic, on the request path. Connections are
//! pooled per (address, TLS settings), so plain and TLS connections (or two TLS settings, say
//! before and after a client-certificate change) never mix.

use std::{
    cell::RefCell,
    collections::HashMap,
    io,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;

use super::RequestBody;
use crate::{tls::UpstreamTlsError, upstream::Endpoint};

/// Why a connection to a target could not be made.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[source] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Tls(#[from] UpstreamTlsError),
}

impl ConnectError {
    /// Label for metrics and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Refused => "connect_refused",
            ConnectError::Timeout(_) => "connect_timeout",
            ConnectError::Io(_) => "connect_error",
            ConnectError::Handshake(_) => "upstream_protocol",
            ConnectError::Tls(_) => "upstream_tls",
        }
    }
}

/// Most bytes one upstream connection reads ahead (hyper's default is about 400 KiB). It caps
/// what a slow client pins per upstream connection, whose body chunks are slices of this
/// buffer; response heads must fit in it (nginx's `proxy_buffer_size` is 4-8 KiB; a larger
/// head is a 502, as with nginx).
const UPSTREAM_READ_BUFFER: usize = 32 << 10;

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// A sender for one request, and whether it came from the pool.
pub struct PooledSender {
    pub sender: SendRequest<RequestBody>,
    pub reused: bool,
}

#[derive(Default)]
pub struct UpstreamPool {
    idle: RefCell<HashMap<(SocketAddr, u64), Vec<Idle>>>,
}

impl UpstreamPool {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// A ready pooled connection, or a new one.
    pub async fn get(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<PooledSender, ConnectError> {
        if let Some(sender) = self.checkout(endpoint, idle_timeout) {
            return Ok(PooledSender { sender, reused: true });
        }
        let sender = connect(endpoint, connect_timeout).await?;
        Ok(PooledSender { sender, reused: false })
    }

    fn checkout(&self, endpoint: &Endpoint, idle_timeout: Duration) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&endpoint.key())?;
        // Most recently used first: keeps a few connections warm and lets the rest expire.
        while let Some(c) = list.pop() {
            if c.since.elapsed() < idle_timeout && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    }

    /// Returns a connection whose response was fully read.
    pub fn checkin(&self, endpoint: &Endpoint, sender: SendRequest<RequestBody>, max_idle: usize) {
        if sender.is_closed() || max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(endpoint.key()).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(Idle { sender, since: Instant::now() });
    }

    /// Drops idle connections that expired or were closed by the upstream.
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|c| c.since.elapsed() < idle_timeout && !c.sender.is_closed());
        }
        idle.retain(|_, list| !list.is_empty());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// TCP connect, and the TLS handshake for TLS endpoints, within `timeout` together.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<SendRequest<RequestBody>, ConnectError> {
    let addr = endpoint.addr;
    let connected = async {
        let stream = match TcpStream::connect(addr).await {
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(ConnectError::Refused),
            Err(e) => return Err(ConnectError::Io(e)),
            Ok(s) => s,
        };
        // Small requests and responses: latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        match &endpoint.tls {
            None => Ok(Stream::Plain(stream)),
            Some(tls) => Ok(Stream::Tls(Box::new(crate::tls::connect_upstream(stream, addr, tls).await?))),
        }
    };
    let stream = tokio::time::timeout(timeout, connected).await.map_err(|_| ConnectError::Timeout(timeout))??;
    match stream {
        Stream::Plain(s) => handshake(s).await,
        Stream::Tls(s) => handshake(*s).await,
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn handshake<I>(io: I) -> Result<SendRequest<RequestBody>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
