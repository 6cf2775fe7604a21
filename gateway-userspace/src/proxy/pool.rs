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

use thiserror::Error;
use tokio::net::TcpStream;

use super::h1::{Conn, Stream};
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
            ConnectError::Tls(_) => "upstream_tls",
        }
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// A connection for one request, and whether it came from the pool.
pub struct PooledConn {
    pub conn: Box<Conn>,
    pub reused: bool,
}

#[derive(Default)]
pub struct UpstreamPool {
    // Keyed by configured upstream endpoints, never by a client's bytes: a fixed-seed fast hash
    // (two look-ups per request) instead of SipHash.
    idle: RefCell<HashMap<(SocketAddr, u64), Vec<Idle>, foldhash::fast::FixedState>>,
}

impl UpstreamPool {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// A ready pooled connection, or a new one. `now`: the caller's clock reading (idle
    /// connections older than `idle_timeout` at `now` are dropped).
    pub async fn get(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        idle_timeout: Duration,
        now: Instant,
    ) -> Result<PooledConn, ConnectError> {
        if let Some(conn) = self.checkout(endpoint, idle_timeout, now) {
            return Ok(PooledConn { conn, reused: true });
        }
        // Boxed: the connect (and TLS handshake) future is large, and inline it made every
        // future that awaits this one as large, so that each request copied it about (as the
        // request path's futures are moved into place) although most requests take a pooled
        // connection above. Only new connections pay for the box.
        let conn = Box::pin(connect(endpoint, connect_timeout)).await?;
        Ok(PooledConn { conn, reused: false })
    }

    fn checkout(&self, endpoint: &Endpoint, idle_timeout: Duration, now: Instant) -> Option<Box<Conn>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&endpoint.key())?;
        // Most recently used first: keeps a few connections warm and lets the rest expire.
        while let Some(mut c) = list.pop() {
            if now.saturating_duration_since(c.since) < idle_timeout && c.conn.is_reusable() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Returns a connection whose response was fully read, idle since `now`.
    pub fn checkin(&self, endpoint: &Endpoint, conn: Box<Conn>, max_idle: usize, now: Instant) {
        if max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(endpoint.key()).or_default();
        if list.len() >= max_idle {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
    }

    /// Drops idle connections that expired or were closed by the upstream, and makes the ones
    /// kept let go of the client task that last used them (`Conn::forget_response_waker`: here,
    /// every few seconds, rather than at each check-in, where it cost ~300 instructions per
    /// request; a connection reused at once is polled by its next client anyway).
    pub fn sweep(&self, idle_timeout: Duration) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain_mut(|c| {
                let keep = c.since.elapsed() < idle_timeout && c.conn.is_reusable();
                if keep {
                    c.conn.forget_response_waker();
                }
                keep
            });
        }
        idle.retain(|_, list| !list.is_empty());
    }

    pub fn idle_count(&self) -> usize {
        self.idle.borrow().values().map(Vec::len).sum()
    }
}

/// TCP connect, and the TLS handshake for TLS endpoints, within `timeout` together.
async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Box<Conn>, ConnectError> {
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
    Ok(Conn::new(stream))
}
