//! The supervisor: one task per [`Kv`] on the control runtime that connects, reconnects and
//! checks health, so no request ever waits for a connect.

use std::{
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use super::{Inner, Kv, KvSpec, conn};
use crate::kv::conn::Conn;

/// Connects, reconnects with backoff (or sooner, when requests find Redis down: see
/// [`Inner::demand`]), and checks health while connected: a PING every second for one node; for
/// a Cluster, the slot map every second and each down master every `reconnect_min`. Holds only a
/// weak reference between steps, so it ends soon after the last [`Kv`] handle is dropped (e.g. a
/// reload that changed `[redis]`).
pub(super) async fn supervise(weak: Weak<Inner>) {
    let mut failures = 0u32;
    let mut ever_up = false;
    let mut down_since: Option<Instant> = None;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let mut wait = inner.check_interval();
        if inner.conn.load().is_none() {
            if ever_up {
                down_since.get_or_insert_with(Instant::now);
            }
            inner.attempted();
            let started = Instant::now();
            let connected = connect_and_map(&inner).await;
            inner.metrics.observe("connect", started.elapsed());
            match connected {
                Ok(c) => {
                    inner.install(c);
                    inner.metrics.set_up(&inner.target, true);
                    match down_since.take() {
                        Some(since) => {
                            tracing::info!(target_addr = %inner.target, down_for = ?since.elapsed(), "redis reachable again")
                        }
                        None => tracing::info!(target_addr = %inner.target, "redis connected"),
                    }
                    failures = 0;
                    ever_up = true;
                    wait = inner.check_interval();
                }
                Err(e) => {
                    // An outage was logged when it was noticed; only a first connect warns here.
                    if failures == 0 && !ever_up {
                        tracing::warn!(target_addr = %inner.target, error = %e, "cannot connect to redis; retrying with backoff");
                    } else {
                        tracing::debug!(target_addr = %inner.target, error = %e, attempt = failures + 1, "redis connect failed");
                    }
                    failures += 1;
                    wait = backoff(&inner.spec, failures);
                }
            }
            inner.settled.send_replace(true);
        }
        let wake = inner.wake.clone();
        drop(inner);
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        if inner.conn.load().is_some() {
            check(&inner).await;
        }
    }
}

/// A new connection; for a Cluster, with the slot map read.
async fn connect_and_map(inner: &Inner) -> Result<Conn, redis::RedisError> {
    let c = conn::connect(&inner.spec).await?;
    if let Some(cluster) = &inner.cluster {
        cluster.refresh(&inner.spec).await?;
    }
    Ok(c)
}

/// One health check while connected. Errors mark Redis (or a node) down.
async fn check(inner: &Arc<Inner>) {
    let Some(cluster) = &inner.cluster else {
        // A timeout counts towards an outage; an error marks it at once (in `finish`).
        let kv = Kv { inner: inner.clone() };
        let _ = kv.query::<String>("ping", &redis::cmd("PING")).await;
        return;
    };
    inner.attempted();
    let recovered = cluster.probe_down(&inner.spec).await;
    match cluster.refresh(&inner.spec).await {
        Err(e) => inner.mark_down(&format!("no cluster node answers: {e}")),
        Ok(changed) if changed || !recovered.is_empty() => {
            // A fresh connection learns the new masters and connects to the recovered ones, so
            // the first command routed to them does not meet a stale route.
            match conn::connect(&inner.spec).await {
                Ok(c) => {
                    inner.install(c);
                    for node in &recovered {
                        cluster.mark_up(node);
                    }
                }
                Err(e) => tracing::debug!(target_addr = %inner.target, error = %e, "redis cluster reconnect failed"),
            }
        }
        Ok(_) => {}
    }
}

/// `reconnect_min · 2^(n-1)`, capped at `reconnect_max`, minus up to 20 % jitter so a fleet does
/// not reconnect in lockstep.
pub(super) fn backoff(spec: &KvSpec, failures: u32) -> Duration {
    use std::hash::BuildHasher;
    let base = spec.reconnect_min.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(spec.reconnect_max);
    let noise = std::collections::hash_map::RandomState::new().hash_one(failures) % 1000;
    base.saturating_sub(base.mul_f64(noise as f64 / 5000.0))
}
