//! OCSP (RFC 6960): the protocol (requests, verified answers), plain-HTTP fetching, and
//! stapling of our own certificates' status (RFC 6066 `status_request`), as nginx's
//! `ssl_stapling` and HAProxy's `ocsp-update` do: the response is fetched from the responder
//! the certificate names (or read from `ocsp_response_file`), cached, refreshed half way to its
//! nextUpdate, stapled through rustls `CertifiedKey::ocsp`, and no longer stapled once expired.

pub mod fetch;
pub mod protocol;
mod staple;

pub use staple::{StapleSource, StaplingResolver, staple_source};
