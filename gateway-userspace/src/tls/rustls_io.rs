//! A client connection's stream in rustls (tokio-rustls' `TlsStream`), with reads that find
//! nothing new answered without going through rustls.
//!
//! Why: the HTTP codecs read again after every frame or head to see whether more has come,
//! and h2 reads on every poll of its connection (each wake-up, the one that writes a response
//! included). At one request per HTTP/2 connection (`h2load -m1`) that was four reads per
//! request that found nothing, each one through tokio-rustls (`poll_fill_buf`, `read_io`),
//! rustls' `read_tls` into its record buffer, an `io::Error` of kind `WouldBlock` made and
//! dropped, and the socket's readiness check at the bottom (~800 instructions per read with the
//! layers above; bench/results/h2-profile.md, "h2 over TLS at one stream per connection").
//!
//! The shortcut: while rustls holds no plaintext (`wants_read`), nothing but new bytes on the
//! socket can make a read progress (rustls decrypts every whole record as soon as it reads it;
//! writes give it nothing to read; a close or an error on the socket makes it read-ready). So
//! the socket's read readiness is checked first (tokio's own check, which registers the waker as
//! a read would), and only a ready socket is read through rustls. The read itself is
//! tokio-rustls' `poll_read` without its last step: after handing over what rustls had
//! decrypted, it tried the socket once more (a read that finds nothing after nearly every
//! record, and whose error, when it finds one, tokio-rustls keeps for the next call).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

/// tokio-rustls' server stream, with the shortcut for reads that cannot progress.
pub struct RustlsIo(TlsStream<TcpStream>);

impl RustlsIo {
    pub fn new(stream: TlsStream<TcpStream>) -> Self {
        RustlsIo(stream)
    }

    pub fn get_ref(&self) -> &TlsStream<TcpStream> {
        &self.0
    }
}

impl AsyncRead for RustlsIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut stream = Pin::new(&mut self.get_mut().0);
        let (socket, conn) = stream.get_ref();
        if conn.wants_read() && socket.poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        let data = std::task::ready!(stream.as_mut().poll_fill_buf(cx))?;
        let n = data.len().min(buf.remaining());
        buf.put_slice(&data[..n]);
        stream.as_mut().consume(n);
        // Records rustls decrypted from the same read, while there is room.
        while buf.remaining() > 0 && !stream.get_ref().1.wants_read() {
            let Poll::Ready(Ok(data)) = stream.as_mut().poll_fill_buf(cx) else { break };
            if data.is_empty() {
                break;
            }
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            stream.as_mut().consume(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RustlsIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, sync::Arc, time::Duration};

    use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector, client};

    use super::*;
    use crate::tls::provider;

    /// A real TLS 1.3 session over loopback TCP: the server side in `RustlsIo`.
    async fn session() -> (RustlsIo, client::TlsStream<TcpStream>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap().self_signed(&key).unwrap();
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key.serialize_der().try_into().unwrap())
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("a.test").unwrap();
            TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            TlsAcceptor::from(Arc::new(server)).accept(tcp).await.unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (RustlsIo::new(server), client)
    }

    /// Reads, pending ones included, give every byte in order across records and buffer sizes,
    /// wake when more arrives, and end with the client's close_notify.
    #[tokio::test]
    async fn reads_deliver_every_record_and_wake_on_new_bytes() {
        let (mut server, mut client) = session().await;
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        // Nothing sent yet: pending, and woken once bytes arrive.
        let mut small = [0u8; 7];
        let pending = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut small);
            Poll::Ready(Pin::new(&mut server).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        assert!(pending);
        client.write_all(&sent[..10]).await.unwrap();
        client.flush().await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut small)).await.unwrap().unwrap();
        assert!(n > 0 && sent[..n] == small[..n]);

        // The rest in several records (16 KiB each), read with a buffer smaller than a record and
        // one larger than several.
        let writer = tokio::spawn(async move {
            client.write_all(&sent[10..]).await.unwrap();
            client.shutdown().await.unwrap();
            (client, sent)
        });
        let mut got = small[..n].to_vec();
        let mut buf = vec![0u8; 5000];
        loop {
            let size = if got.len() % 2 == 0 { 5000 } else { 1000 };
            let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf[..size])).await.unwrap().unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let (_client, sent) = writer.await.unwrap();
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes differ");
        // After the close_notify: end of stream again, not pending.
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    }
}
