//! End-to-end tests: the real `gatewayd` binary, real upstream servers and clients on loopback.
//! One test binary (faster to link); each file under `e2e/` is one area.

mod e2e {
    pub mod idp;
    pub mod netns;
    pub mod pki;
    pub mod support;

    mod budget;
    mod config_cli;
    mod handover;
    mod headers;
    mod identity;
    mod lifecycle;
    mod limits;
    mod observability;
    mod ratelimit;
    mod routing;
    mod steering;
    mod tls;
    mod upstreams;
    mod xdp;
}
