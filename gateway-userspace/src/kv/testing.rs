//! Test helpers for the Redis paths: real servers (the file shared with the end-to-end tests)
//! and specs with test-friendly timings.

use std::time::{Duration, Instant};

#[path = "../../tests/support/redis_server.rs"]
mod redis_server;

pub use redis_server::{ClusterOptions, RedisCluster, RedisServer, raw_command};

use super::{KvServers, KvSpec};

/// The spec a test's [`super::Kv`] uses to reach a server.
pub trait SpecOf {
    fn spec(&self) -> KvSpec;
}

impl SpecOf for RedisServer {
    fn spec(&self) -> KvSpec {
        spec(KvServers::Single(self.url()))
    }
}

impl SpecOf for RedisCluster {
    fn spec(&self) -> KvSpec {
        spec(KvServers::Cluster(self.urls()))
    }
}

/// A spec with test-friendly timings.
pub fn spec(servers: KvServers) -> KvSpec {
    KvSpec {
        servers,
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        key_prefix: "test".into(),
        tls: None,
    }
}

/// Polls `f` every 10 ms (async) until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
