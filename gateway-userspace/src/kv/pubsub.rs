//! Pub/sub, for state that must reach every node at once (jti revocations). A subscribed Redis
//! connection takes no other commands, so each subscription has its own connection, supervised
//! like the command connection: reconnect with the same backoff, a ping every second so a
//! silently dead connection is noticed, and `live` so subscribers know when messages may have
//! been missed (and must ask Redis directly meanwhile). In a Redis Cluster a PUBLISH reaches
//! every node, so subscribing to one seed node is enough; each reconnect tries the next seed, so
//! a dead master does not keep the subscription down.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{HEALTH_INTERVAL, Kv, KvError, KvServers, KvSpec, backoff};

/// Messages buffered between the subscriber connection and its consumer.
const QUEUE: usize = 4096;

/// A subscription: its messages, and whether the connection is subscribed right now. Dropping
/// `messages` ends it.
pub struct Subscription {
    pub messages: mpsc::Receiver<Vec<u8>>,
    pub live: watch::Receiver<bool>,
}

impl Kv {
    /// Subscribes to `channel` (a full channel name, e.g. from [`Kv::key`]) on the control
    /// runtime.
    pub fn subscribe(&self, channel: String) -> Subscription {
        let (tx, messages) = mpsc::channel(QUEUE);
        let (live_tx, live) = watch::channel(false);
        let spec = self.inner.spec.clone();
        self.inner.runtime.spawn(run(spec, channel, tx, live_tx));
        Subscription { messages, live }
    }

    /// PUBLISH; the number of subscribers that received it.
    pub async fn publish(&self, channel: &str, message: &[u8]) -> Result<i64, KvError> {
        self.query("publish", redis::cmd("PUBLISH").arg(channel).arg(message)).await
    }

    /// Whether two handles are the same connection (a reload kept `[redis]` unchanged).
    pub fn same(&self, other: &Kv) -> bool {
        std::sync::Arc::ptr_eq(&self.inner, &other.inner)
    }
}

/// The nodes a subscription may use: the one Redis, or every seed of a Cluster (tried in turn,
/// so one dead master does not silence revocations).
fn nodes(spec: &KvSpec) -> &[String] {
    match &spec.servers {
        KvServers::Single(url) => std::slice::from_ref(url),
        KvServers::Cluster(nodes) => nodes,
    }
}

async fn run(spec: KvSpec, channel: String, tx: mpsc::Sender<Vec<u8>>, live: watch::Sender<bool>) {
    let urls = nodes(&spec).to_vec();
    if urls.is_empty() {
        return;
    }
    let target = spec.servers.redacted();
    let mut failures: u32 = 0;
    let mut attempts: usize = 0;
    loop {
        let url = &urls[attempts % urls.len()];
        attempts += 1;
        let connect = async {
            let mut ps = redis::Client::open(url.as_str())?.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let connected = tokio::time::timeout(spec.connect_timeout, connect).await;
        match connected {
            Ok(Ok(ps)) => {
                if failures > 0 {
                    tracing::info!(target_addr = %target, channel, "redis subscription restored");
                }
                failures = 0;
                live.send_replace(true);
                let (mut sink, mut stream) = ps.split();
                let mut ping = tokio::time::interval(HEALTH_INTERVAL);
                let why = loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        msg = stream.next() => match msg {
                            Some(m) => {
                                if tx.send(m.get_payload_bytes().to_vec()).await.is_err() {
                                    return;
                                }
                            }
                            None => break "connection closed".to_owned(),
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(spec.timeout.max(Duration::from_millis(500)), sink.ping::<redis::Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                break "no answer to ping".to_owned();
                            }
                        }
                    }
                };
                live.send_replace(false);
                tracing::warn!(target_addr = %target, channel, reason = why, "redis subscription lost; reconnecting");
            }
            Ok(Err(e)) => {
                if failures == 0 {
                    tracing::warn!(target_addr = %target, channel, error = %e, "cannot subscribe on redis; retrying with backoff");
                }
            }
            Err(_) => {
                if failures == 0 {
                    tracing::warn!(target_addr = %target, channel, "redis subscribe timed out; retrying with backoff");
                }
            }
        }
        failures += 1;
        let delay = backoff(&spec, failures);
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
