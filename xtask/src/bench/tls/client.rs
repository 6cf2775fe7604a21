//! The TLS load generator of `bench tls`: blocking threads, each with one connection at a time,
//! on rustls with the workspace's aws-lc-rs provider (built optimized even in dev builds: see the
//! workspace's `[profile.dev.package.*]`).
//!
//! The client offers exactly one TLS 1.3 suite (`TLS_AES_128_GCM_SHA256`), one group (X25519) and
//! the signature schemes of the certificate under test, so every subject negotiates the same
//! thing; each exchange checks what was negotiated. It checks that the server presented the
//! benchmark's certificate (byte for byte) but does not verify the CertificateVerify signature:
//! the server still computes it, and the client's CPU goes to generating load instead.
//!
//! Work kinds:
//! - [`Work::Full`]: connect, full handshake (no resumption offered), `GET /` with
//!   `Connection: close`, read the answer, wait for the server's close.
//! - [`Work::Resumed`]: the same, every connection resuming with a ticket from the thread's own
//!   session store (primed by one full handshake before the measured window); a connection that
//!   did not resume fails the run.
//! - [`Work::Download`]: one keep-alive connection per thread, `GET path` again and again.

use std::{
    io::{BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, NamedGroup, SignatureScheme, StreamOwned,
    client::{
        Resumption, Tls12Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::super::http::{self, Response};

/// The name the client sends (SNI) and puts in `Host`.
pub const SERVER_NAME: &str = "localhost";
/// The one suite the client offers.
pub const SUITE: &str = "TLS13_AES_128_GCM_SHA256";
/// The one key-exchange group the client offers.
pub const GROUP: &str = "X25519";
/// Tickets each thread may keep (a server sends a few per connection, each is used once).
const SESSIONS: usize = 32;

/// The certificate's key: what the client offers to verify, so the server signs with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

impl KeyKind {
    fn schemes(self) -> Vec<SignatureScheme> {
        match self {
            Self::EcdsaP256 => vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            // TLS 1.3 signs with RSA-PSS only.
            Self::Rsa2048 => {
                vec![SignatureScheme::RSA_PSS_SHA256, SignatureScheme::RSA_PSS_SHA384, SignatureScheme::RSA_PSS_SHA512]
            }
        }
    }
}

/// A TLS endpoint of a subject and the certificate it must present.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub leaf: CertificateDer<'static>,
    pub key: KeyKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Work {
    Full,
    Resumed,
    /// Keep-alive `GET path`, each answer `len` bytes.
    Download {
        path: String,
        len: usize,
    },
}

/// What all threads did in the measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Connections (handshakes) or responses completed.
    pub exchanges: u64,
    /// Response body bytes received.
    pub bytes: u64,
    /// From the start signal until the last thread finished.
    pub seconds: f64,
}

/// Threads that have connected or primed what they need and wait for the start signal.
pub struct Prepared {
    go: Arc<Barrier>,
    threads: Vec<JoinHandle<Result<(u64, u64)>>>,
}

/// Starts `threads` threads for `work` against `target`, each running `duration` once started;
/// returns when all are ready (a thread that failed to get ready reports it from `run`).
pub fn prepare(target: &Target, work: &Work, threads: usize, duration: Duration) -> Result<Prepared> {
    let ready = Arc::new(Barrier::new(threads + 1));
    let go = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (ready, go, target, work) = (ready.clone(), go.clone(), target.clone(), work.clone());
        let handle = thread::Builder::new().name("tls-load".into()).spawn(move || {
            let state = Worker::new(&target, &work);
            ready.wait();
            go.wait();
            state?.run(duration)
        });
        // The threads already started stay blocked; the benchmark (the process) ends on this error.
        handles.push(handle.context("cannot start a load thread")?);
    }
    ready.wait();
    Ok(Prepared { go, threads: handles })
}

impl Prepared {
    /// Starts the measured window and waits for every thread; the first error fails the run.
    pub fn run(self) -> Result<Outcome> {
        self.go.wait();
        let start = Instant::now();
        let mut outcome = Outcome { exchanges: 0, bytes: 0, seconds: 0.0 };
        let mut first_error = None;
        for handle in self.threads {
            match handle.join() {
                Ok(Ok((exchanges, bytes))) => {
                    outcome.exchanges += exchanges;
                    outcome.bytes += bytes;
                }
                Ok(Err(e)) => first_error = first_error.or(Some(e)),
                Err(_) => first_error = first_error.or_else(|| Some(anyhow::anyhow!("a load thread panicked"))),
            }
        }
        outcome.seconds = start.elapsed().as_secs_f64();
        match first_error {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// One thread's state between preparing and running.
enum Worker {
    Handshakes { target: Target, config: Arc<ClientConfig>, expect: HandshakeKind },
    Download { stream: Box<BufReader<StreamOwned<ClientConnection, TcpStream>>>, path: String, len: usize },
}

impl Worker {
    fn new(target: &Target, work: &Work) -> Result<Self> {
        match work {
            Work::Full => Ok(Self::Handshakes {
                target: target.clone(),
                config: config(target, false)?,
                expect: HandshakeKind::Full,
            }),
            Work::Resumed => {
                let config = config(target, true)?;
                // The first handshake is full and leaves tickets in this thread's store.
                exchange_and_close(target, &config, HandshakeKind::Full).context("priming the session store")?;
                Ok(Self::Handshakes { target: target.clone(), config, expect: HandshakeKind::Resumed })
            }
            Work::Download { path, len } => {
                let mut stream =
                    Box::new(BufReader::with_capacity(64 * 1024, connect(target, &config(target, false)?)?));
                download(&mut stream, path, *len)?;
                check_session(stream.get_ref(), HandshakeKind::Full)?;
                Ok(Self::Download { stream, path: path.clone(), len: *len })
            }
        }
    }

    /// Exchanges until `duration` has passed; returns (exchanges, body bytes).
    fn run(self, duration: Duration) -> Result<(u64, u64)> {
        let deadline = Instant::now() + duration;
        let (mut exchanges, mut bytes) = (0, 0);
        match self {
            Self::Handshakes { target, config, expect } => {
                while Instant::now() < deadline {
                    exchange_and_close(&target, &config, expect)
                        .with_context(|| format!("after {exchanges} connections to {}", target.addr))?;
                    exchanges += 1;
                }
            }
            Self::Download { mut stream, path, len } => {
                while Instant::now() < deadline {
                    download(&mut stream, &path, len).with_context(|| format!("after {exchanges} responses"))?;
                    exchanges += 1;
                    bytes += len as u64;
                }
            }
        }
        Ok((exchanges, bytes))
    }
}

/// The client configuration for `target`: TLS 1.3, one suite, one group, the certificate's
/// signature schemes, ALPN `http/1.1`; with a session store for resumption or without.
fn config(target: &Target, resume: bool) -> Result<Arc<ClientConfig>> {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![aws_lc_rs::kx_group::X25519];
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { leaf: target.leaf.clone(), schemes: target.key.schemes() }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = if resume {
        Resumption::in_memory_sessions(SESSIONS).tls12_resumption(Tls12Resumption::Disabled)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

/// A TCP connection (with the benchmark's timeouts) and a TLS client on it; the handshake runs
/// with the first write.
fn connect(target: &Target, config: &Arc<ClientConfig>) -> Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = http::connect(target.addr)?;
    let name = ServerName::try_from(SERVER_NAME)?;
    Ok(StreamOwned::new(ClientConnection::new(config.clone(), name)?, tcp))
}

/// One full handshake and `GET /` (readiness).
pub fn probe(target: &Target) -> Result<()> {
    exchange_and_close(target, &config(target, false)?, HandshakeKind::Full)
}

/// One connection: handshake, `GET /` (`Connection: close`), the answer must be 200 "ok", then
/// the server's close is awaited (so the TIME_WAIT state stays on the server's side, as with
/// real clients, and the client's ports are not used up).
fn exchange_and_close(target: &Target, config: &Arc<ClientConfig>, expect: HandshakeKind) -> Result<()> {
    let mut stream = connect(target, config)?;
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n").as_bytes())
        .context("handshake and request")?;
    let response = http::read_response(&mut BufReader::new(&mut stream)).context("reading the response")?;
    check_response(&response, Some(b"ok"))?;
    check_session(&stream, expect)?;
    // The server closes (close_notify or not); anything else is ignored.
    let mut sink = [0u8; 512];
    while let Ok(n) = stream.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// A keep-alive connection with its full handshake done (for the idle-memory measurement).
pub struct KeepAlive(BufReader<StreamOwned<ClientConnection, TcpStream>>);

/// `KeepAlive`s to one target, sharing one client configuration.
pub struct KeepAlives {
    target: Target,
    config: Arc<ClientConfig>,
}

impl KeepAlives {
    pub fn new(target: &Target) -> Result<KeepAlives> {
        Ok(KeepAlives { target: target.clone(), config: config(target, false)? })
    }

    /// Connects and completes the handshake (TLS 1.3, the benchmark's suite and group).
    pub fn open(&self) -> Result<KeepAlive> {
        let mut stream = connect(&self.target, &self.config)?;
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).context("handshake")?;
        }
        check_session(&stream, HandshakeKind::Full)?;
        Ok(KeepAlive(BufReader::new(stream)))
    }
}

impl KeepAlive {
    /// `GET /` on the open connection; the answer must be 200 "ok".
    pub fn get_ok(&mut self) -> Result<()> {
        self.get("/", b"ok")
    }

    /// `GET path` on the open connection; the answer must be 200 with `body`.
    pub fn get(&mut self, path: &str, body: &[u8]) -> Result<()> {
        self.0.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes())?;
        let response = http::read_response(&mut self.0).context("reading the response")?;
        check_response(&response, Some(body))
    }
}

/// One keep-alive `GET path`; the answer must be 200 with `len` bytes.
fn download(stream: &mut BufReader<StreamOwned<ClientConnection, TcpStream>>, path: &str, len: usize) -> Result<()> {
    stream.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n").as_bytes())?;
    let response = http::read_response(stream).context("reading the response")?;
    check_response(&response, None)?;
    if response.body.len() != len {
        bail!("the answer to GET {path} has {} bytes instead of {len}", response.body.len());
    }
    Ok(())
}

fn check_response(response: &Response, body: Option<&[u8]>) -> Result<()> {
    if response.status != 200 || body.is_some_and(|b| response.body != b) {
        bail!(
            "answer {} {:?} instead of 200{}",
            response.status,
            String::from_utf8_lossy(&response.body[..response.body.len().min(200)]),
            body.map(|b| format!(" {:?}", String::from_utf8_lossy(b))).unwrap_or_default()
        );
    }
    Ok(())
}

/// The handshake was of the expected kind and negotiated TLS 1.3, the suite and the group.
fn check_session(stream: &StreamOwned<ClientConnection, TcpStream>, expect: HandshakeKind) -> Result<()> {
    let conn = &stream.conn;
    let kind = conn.handshake_kind();
    if kind != Some(expect) {
        bail!("a {expect:?} handshake was expected, the connection had {kind:?}");
    }
    let suite = conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()));
    let group = conn.negotiated_key_exchange_group().map(|g| g.name());
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
        || suite.as_deref() != Some(SUITE)
        || group != Some(NamedGroup::X25519)
    {
        bail!("negotiated {:?} {suite:?} {group:?}, not TLS 1.3 {SUITE} {GROUP}", conn.protocol_version());
    }
    Ok(())
}

/// Accepts exactly the benchmark's certificate; see the module comment on signatures.
#[derive(Debug)]
struct Pinned {
    leaf: CertificateDer<'static>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server presented another certificate than the benchmark's".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not benchmarked".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_kind_decides_the_offered_schemes() {
        assert_eq!(KeyKind::EcdsaP256.schemes(), [SignatureScheme::ECDSA_NISTP256_SHA256]);
        assert!(KeyKind::Rsa2048.schemes().iter().all(|s| format!("{s:?}").starts_with("RSA_PSS")));
    }

    #[test]
    fn the_client_offers_one_suite_and_one_group() -> Result<()> {
        let target =
            Target { addr: "127.0.0.1:1".parse()?, leaf: CertificateDer::from(vec![1, 2, 3]), key: KeyKind::EcdsaP256 };
        let config = config(&target, true)?;
        let suites: Vec<String> =
            config.crypto_provider().cipher_suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        assert_eq!(suites, [SUITE]);
        let groups: Vec<NamedGroup> = config.crypto_provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, [NamedGroup::X25519]);
        Ok(())
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted() -> Result<()> {
        let pinned = Pinned { leaf: CertificateDer::from(vec![1, 2, 3]), schemes: vec![] };
        let name = ServerName::try_from(SERVER_NAME)?;
        let ok = pinned.verify_server_cert(&CertificateDer::from(vec![1, 2, 3]), &[], &name, &[], UnixTime::now());
        assert!(ok.is_ok());
        let other = pinned.verify_server_cert(&CertificateDer::from(vec![1, 2, 4]), &[], &name, &[], UnixTime::now());
        assert!(other.is_err());
        Ok(())
    }
}
