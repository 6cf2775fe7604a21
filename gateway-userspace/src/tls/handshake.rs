//! The server side of a client connection's TLS: handshake (bounded by the listener's
//! header-read timeout), classification and counting of failures, connection facts for the
//! phases, ALPN → protocol, and the kTLS switch.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use rustls::{ProtocolVersion, server::ServerConnection};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use super::{
    ClientAuth, ClientCert, ServerTls, TlsInfo, TlsParts,
    client_auth::{self, Failure, classify_io, classify_tls, describe},
    metrics::WorkerTlsMetrics,
    rustls_io::RustlsIo,
};
use crate::request::Proto;

/// A client connection after its handshake: in rustls, or handed to the kernel.
///
/// The rustls streams (~1.2 KiB each, the session inline) are boxed so that the enum, which
/// every connection keeps for its whole life, is the size of the kernel's variant: an idle kTLS
/// connection then holds a socket and a few words, not room for a rustls session it no longer
/// has (bench/results/tls.md, "kTLS idle memory").
pub enum TlsIo {
    Rustls(Box<RustlsIo>),
    /// In rustls on a stream prepared for kTLS whose suite the kernel cannot take.
    Corked(Box<TlsStream<ktls::CorkStream<TcpStream>>>),
    Kernel(ktls::KtlsStream<TcpStream>),
}

/// A successful handshake.
pub struct Accepted {
    pub io: TlsIo,
    pub info: TlsInfo,
    pub proto: Proto,
}

/// Where a handshake runs: the listener's TLS for the snapshot of `generation`.
pub struct TlsListener<'a> {
    pub name: &'a Arc<str>,
    pub server: &'a ServerTls,
    pub generation: u64,
    pub parts: &'a TlsParts,
}

/// Runs the handshake. Failures are counted (`gateway_tls_handshakes_total{result}`), logged
/// once, and end the connection (`None`).
pub async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    listener: TlsListener<'_>,
    metrics: &WorkerTlsMetrics,
    timeout: Duration,
) -> Option<Accepted> {
    let start = Instant::now();
    let acceptor = TlsAcceptor::from(listener.server.config.clone());
    let handshake = async {
        if listener.server.ktls {
            acceptor.accept(ktls::CorkStream::new(stream)).await.map(Either::Corked)
        } else {
            acceptor.accept(stream).await.map(Either::Plain)
        }
    };
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            fail(&listener, peer, metrics, classify_io(&e));
            return None;
        }
        Err(_) => {
            let detail = format!("no complete handshake within {timeout:?}");
            fail(&listener, peer, metrics, Failure { result: "timeout", detail });
            return None;
        }
    };
    let conn = stream.connection();
    if conn.alpn_protocol() == Some(super::acme::ACME_TLS_ALPN) {
        // A tls-alpn-01 validation: the certificate was the answer; nothing is served on it.
        return None;
    }
    let facts = Facts::of(conn);
    let verified = client_certificate(&listener, conn, facts.resumed);
    let revocation = listener.server.spec.client_trust.as_ref().and_then(|t| t.revocation.as_ref());
    let (client_cert, refusal) = match super::revocation::screen_client_cert(revocation, verified).await {
        Ok(cert) => (cert, None),
        Err(failure) if listener.server.spec.client_trust.as_ref().is_some_and(|t| t.deferred()) => {
            // Refused with a status: counted and logged as a refused handshake would be, and
            // the connection serves nothing but 400s.
            metrics.handshake(listener.name, facts.version, facts.cipher, failure.result);
            // Partners' certificate problems are what operators are asked about: say it at info.
            tracing::info!(listener = %listener.name, %peer, result = %failure.result, reason = %failure.detail,
                "client certificate refused: requests on this connection are answered 400");
            (None, Some(Box::new(failure)))
        }
        Err(failure) => {
            fail(&listener, peer, metrics, failure);
            return None;
        }
    };
    if refusal.is_none() {
        metrics.handshake(listener.name, facts.version, facts.cipher, "ok");
    }
    metrics.handshake_duration(listener.name, facts.version, facts.resumed, start.elapsed().as_secs_f64());

    let suite = conn.negotiated_cipher_suite();
    let io = match stream {
        Either::Plain(s) => TlsIo::Rustls(Box::new(RustlsIo::new(s))),
        Either::Corked(s) if suite.is_some_and(|s| listener.parts.ktls.is_compatible(s)) => {
            match ktls::config_ktls_server(s).await {
                Ok(k) => TlsIo::Kernel(k),
                Err(e) => {
                    // The probe said yes; the stream is gone either way.
                    tracing::warn!(listener = %listener.name, %peer, error = %e, "kTLS offload failed; connection closed");
                    return None;
                }
            }
        }
        Either::Corked(s) => TlsIo::Corked(Box::new(s)),
    };
    let ktls = matches!(io, TlsIo::Kernel(_));
    metrics.connection(listener.name, if ktls { "ktls" } else { "userspace" });
    let proto = if facts.alpn == Some("h2") { Proto::Http2 } else { Proto::Http1 };
    let info = TlsInfo {
        version: facts.version,
        cipher: facts.cipher,
        sni: facts.sni,
        alpn: facts.alpn,
        resumed: facts.resumed,
        ktls,
        client_cert: client_cert.map(Box::new),
        refusal,
    };
    Some(Accepted { io, info, proto })
}

/// The client's certificate once the handshake is done, verified; only listeners with
/// client_auth ask for one. With deferred checks (`Status` refusals) every chain is verified
/// here, and so is the absence of one on a `required` listener. rustls does not re-verify on
/// resumption: a certificate revoked (or expired) since the ticket was issued must not get back
/// in that way, so resumed sessions are verified here too.
fn client_certificate(
    listener: &TlsListener<'_>,
    conn: &ServerConnection,
    resumed: bool,
) -> Result<Option<ClientCert>, Failure> {
    let Some(trust) = &listener.server.spec.client_trust else { return Ok(None) };
    let chain = conn.peer_certificates();
    // With deferred refusals any session without a certificate lands here; with handshake
    // refusals only a resumed one can (rustls takes its certificate from the ticket unchecked).
    if chain.is_none() && listener.server.spec.client_auth == ClientAuth::Required {
        let e = rustls::Error::NoCertificatesPresented;
        return Err(Failure { result: classify_tls(&e), detail: describe(&e) });
    }
    let Some(chain) = chain else { return Ok(None) };
    if (resumed || trust.deferred())
        && let Err(e) = trust.verify(chain)
    {
        return Err(Failure { result: classify_tls(&e), detail: describe(&e) });
    }
    Ok(Some(ClientCert::verified(chain.to_vec(), super::check_stamp(listener.generation))))
}

fn fail(listener: &TlsListener<'_>, peer: SocketAddr, metrics: &WorkerTlsMetrics, failure: Failure) {
    metrics.handshake(listener.name, "", "", failure.result);
    if client_auth::is_client_cert_result(failure.result) {
        // Partners' certificate problems are what operators are asked about: say it at info.
        tracing::info!(listener = %listener.name, %peer, result = %failure.result, reason = %failure.detail, "TLS handshake refused: client certificate");
    } else {
        tracing::debug!(listener = %listener.name, %peer, result = %failure.result, reason = %failure.detail, "TLS handshake failed");
    }
}

enum Either {
    Plain(TlsStream<TcpStream>),
    Corked(TlsStream<ktls::CorkStream<TcpStream>>),
}

impl Either {
    fn connection(&self) -> &ServerConnection {
        match self {
            Either::Plain(s) => s.get_ref().1,
            Either::Corked(s) => s.get_ref().1,
        }
    }
}

struct Facts {
    version: &'static str,
    cipher: &'static str,
    sni: Option<Box<str>>,
    alpn: Option<&'static str>,
    resumed: bool,
}

impl Facts {
    fn of(conn: &ServerConnection) -> Facts {
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        let cipher = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("other");
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some("h2"),
            Some(b"http/1.1") => Some("http/1.1"),
            _ => None,
        };
        Facts {
            version,
            cipher,
            sni: conn.server_name().map(Box::from),
            alpn,
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

impl TlsIo {
    /// Whether an idle connection on this stream may be parked (see `listener/conn.rs`): after
    /// the handshake a kTLS socket is plain to userspace, and a rustls connection keeps only its
    /// own small state (its 4 KiB read buffer shrinks when empty) between requests. A corked
    /// stream (kTLS-prepared, suite refused by the kernel) is rare and not parked.
    pub fn parkable(&self) -> bool {
        !matches!(self, TlsIo::Corked(_))
    }

    /// The socket to wait on while parked, when the stream holds nothing a new hyper
    /// connection would have to be given first: no decrypted bytes waiting to be read, no TLS
    /// records waiting to be written. (A partial record in rustls' buffer is fine: the rest of it
    /// makes the socket readable.) kTLS: its bytes read before the switch are delivered before
    /// a read ever returns pending, so an idle stream has none left.
    pub fn park_socket(&self) -> Option<&TcpStream> {
        match self {
            TlsIo::Rustls(s) => {
                let (socket, conn) = s.get_ref().get_ref();
                (conn.wants_read() && !conn.wants_write()).then_some(socket)
            }
            TlsIo::Kernel(s) => Some(s.get_ref()),
            TlsIo::Corked(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            TlsIo::Rustls($s) => $e,
            TlsIo::Corked($s) => $e,
            TlsIo::Kernel($s) => $e,
        }
    };
}

impl AsyncRead for TlsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            TlsIo::Rustls(s) => s.is_write_vectored(),
            TlsIo::Corked(s) => s.is_write_vectored(),
            TlsIo::Kernel(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection keeps its `TlsIo` while it lives, parked or not: sized for the kernel's
    /// variant, not for an inline rustls session (an idle kTLS connection would carry ~1.2 KiB
    /// for nothing).
    #[test]
    fn a_kernel_tls_stream_does_not_carry_room_for_a_rustls_session() {
        let size = std::mem::size_of::<TlsIo>();
        assert!(size <= std::mem::size_of::<ktls::KtlsStream<TcpStream>>() + 16, "TlsIo is {size} bytes");
        assert!(size <= 128, "TlsIo is {size} bytes");
    }
}
