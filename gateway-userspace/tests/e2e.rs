//! End-to-end tests: the real `gatewayd` binary, real upstream servers and clients on loopback.
//! One test binary (faster to link); each file under `e2e/` is one area.

mod e2e {
    pub mod dashboards;
    pub mod idp;
    pub mod netns;
    pub mod pki;
    pub mod prometheus;
    pub mod support;

    mod acme;
    mod bodies;
    mod body_limits_h2;
    mod budget;
    mod client_address;
    mod config_cli;
    mod conformance;
    mod connflood;
    mod cpusteer;
    mod h1_codec;
    mod h2_flood;
    mod h2_server;
    mod handover;
    mod headers;
    mod identity;
    mod idp_faults;
    mod lifecycle;
    mod limits;
    mod loop_lag;
    mod mcp;
    mod observability;
    mod ocsp;
    mod oidc;
    mod operators;
    mod parking;
    mod ratelimit;
    mod redis_faults;
    mod revocation_faults;
    mod routing;
    mod semantics;
    mod steering;
    mod supervision;
    mod syncookie;
    mod tls;
    mod top;
    mod upstreams;
    mod xdp;
}
