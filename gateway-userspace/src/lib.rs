//! gatewayd: an eBPF-accelerated edge gateway. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod budget;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod daemon;
pub mod demo;
pub mod ebpf;
pub mod error;
pub mod kv;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod snapshot;
pub mod state;
pub mod systemd;
pub mod tls;
pub mod top;
pub mod upstream;
pub mod worker;
