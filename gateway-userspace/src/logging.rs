//! Logs to stderr (journald picks them up), as text or JSON. `RUST_LOG` overrides the level.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

use serde::Deserialize;

pub fn init(format: LogFormat, level: &str) {
    // redis-rs logs every failed reconnect to a Cluster node (thousands per outage); the `kv`
    // module logs each outage and recovery once instead. A `RUST_LOG` naming `redis` decides.
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("redis")) {
        filter = filter.add_directive("redis=error".parse().expect("a valid directive"));
    }
    // rustls warns once per refused ClientHello (e.g. an illegal server name): a log line per
    // connection any client can cause. The handshake module counts and logs each failure itself
    // (`gateway_tls_handshakes_total{result}`); a `RUST_LOG` naming `rustls` decides.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("rustls")) {
        filter = filter.add_directive("rustls=error".parse().expect("a valid directive"));
    }
    // Colours only for a person at a terminal: journald and log files would store the escape codes.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests, or a re-exec) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `[server] log_format`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
