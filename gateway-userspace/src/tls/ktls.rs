//! Kernel TLS: after the handshake, the session keys move into the kernel (`setsockopt
//! TCP_ULP "tls"`, then TLS_TX/TLS_RX) and the socket carries plaintext for us; the kernel
//! encrypts, and can `sendfile` without copies.
//!
//! Support is probed once at startup: the `ktls` crate consumes the stream when offload fails,
//! so trying per connection would lose connections on a kernel without `CONFIG_TLS`. Per
//! connection, only cipher suites the probe proved are offloaded; others stay in rustls.
//!
//! Limit: the kernel (6.1) cannot take new keys, so a TLS 1.3 KeyUpdate from the client ends
//! that connection (clients reconnect). Clients rarely send one.

use std::{
    io,
    net::{Ipv4Addr, TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use rustls::SupportedCipherSuite;

/// What the kernel can do, decided once.
#[derive(Debug)]
pub struct KtlsSupport {
    ciphers: Option<ktls::CompatibleCiphers>,
    /// Why not, when not.
    reason: String,
}

impl KtlsSupport {
    /// Probes the TLS upper-layer protocol on a loopback socket, then each cipher suite.
    pub async fn probe() -> KtlsSupport {
        if let Err(e) = probe_ulp() {
            let reason = match e.raw_os_error() {
                Some(libc::ENOENT) => "the kernel has no TLS support (setsockopt TCP_ULP \"tls\": ENOENT; CONFIG_TLS not set or the tls module cannot be loaded)".to_owned(),
                _ => format!("setsockopt TCP_ULP \"tls\" failed: {e}"),
            };
            return KtlsSupport { ciphers: None, reason };
        }
        match ktls::CompatibleCiphers::new().await {
            Ok(c) if any(&c) => KtlsSupport { ciphers: Some(c), reason: String::new() },
            Ok(_) => KtlsSupport { ciphers: None, reason: "the kernel accepts no TLS cipher suite for offload".into() },
            Err(e) => KtlsSupport { ciphers: None, reason: format!("probing cipher suites failed: {e}") },
        }
    }

    /// No offload (tests, or when probing is not wanted).
    pub fn unsupported(reason: &str) -> KtlsSupport {
        KtlsSupport { ciphers: None, reason: reason.to_owned() }
    }

    pub fn supported(&self) -> bool {
        self.ciphers.is_some()
    }

    pub fn is_compatible(&self, suite: SupportedCipherSuite) -> bool {
        self.ciphers.as_ref().is_some_and(|c| c.is_compatible(suite))
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        match &self.ciphers {
            None => format!("kTLS unavailable: {}; TLS stays in userspace (rustls)", self.reason),
            Some(c) => {
                let list = |v: &ktls::CompatibleCiphersForVersion| {
                    [
                        (v.aes_gcm_128, "AES-128-GCM"),
                        (v.aes_gcm_256, "AES-256-GCM"),
                        (v.chacha20_poly1305, "CHACHA20-POLY1305"),
                    ]
                    .iter()
                    .filter(|(ok, _)| *ok)
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(" ")
                };
                format!(
                    "kTLS available (TLS 1.3: {}; TLS 1.2 ECDSA: {}); TLS connections are offloaded to the kernel after the handshake",
                    list(&c.tls13),
                    list(&c.tls12)
                )
            }
        }
    }
}

fn any(c: &ktls::CompatibleCiphers) -> bool {
    [&c.tls12, &c.tls13].iter().any(|v| v.aes_gcm_128 || v.aes_gcm_256 || v.chacha20_poly1305)
}

/// `setsockopt(TCP_ULP, "tls")` on a connected loopback socket (the ULP needs an established
/// connection).
fn probe_ulp() -> io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let _server = listener.accept()?;
    let name = b"tls";
    // SAFETY: a valid socket and a valid buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_gives_a_decision_and_a_reason() {
        let support = KtlsSupport::probe().await;
        let line = support.describe();
        // The kernel's answer, independent of the probe: /proc/net/tls_stat exists once the tls
        // module is loaded, which the probe's setsockopt does where the kernel has one.
        let kernel_has_tls = std::path::Path::new("/proc/net/tls_stat").exists();
        assert_eq!(support.supported(), kernel_has_tls, "{line}");
        if kernel_has_tls {
            assert!(line.starts_with("kTLS available"), "{line}");
        } else {
            assert!(line.starts_with("kTLS unavailable: "), "{line}");
            assert!(!support.is_compatible(rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256));
        }
    }
}
