//! Redis, the store for state that spans gateway nodes (rate-limit counters, token budgets; later
//! jti revocations and introspection results). One [`Kv`] per configured `[redis]`: a single
//! node or a Redis Cluster behind one handle.
//!
//! The contract every caller gets:
//! - **Bounded waits.** Every command has the configured `timeout`; a worker never waits longer.
//! - **Fail fast while down.** Connection errors (and three timeouts in a row) mark Redis down:
//!   later calls fail at once with [`KvError::Unavailable`] instead of waiting, and the caller
//!   applies its explicit [`FailMode`].
//! - **Reconnects off the request path.** A supervisor task on the control runtime (`gw-control`)
//!   reconnects with exponential backoff and jitter, pings every second while up, and keeps
//!   `gateway_redis_up` true. Outages and recoveries are logged once each.
//! - **One round trip per decision.** Callers send one command or one Lua script (EVALSHA; the
//!   script is loaded on the first NOSCRIPT only) whose keys share a hash tag, so in a cluster it
//!   touches one slot.
//!
//! - **Worker-owned connections.** Worker threads talk to Redis over connections of their own
//!   (`local`), so a command costs no cross-thread wakeups; the shared connection decides up/down.
//!
//! Adding an operation: build a `redis::Cmd` or a `redis::ScriptInvocation` and call
//! [`Kv::query`] or [`Kv::script`] with a short static `op` name (the metrics' `command` label).
//! Fire-and-forget writes go through [`Kv::spawn_detached`] so they run on the control runtime.

mod cluster;
mod conn;
mod local;
mod metrics;
mod pubsub;
mod supervisor;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use redis::FromRedisValue;
use thiserror::Error;
use tokio::sync::{Notify, watch};

pub use conn::Conn;
pub use local::use_worker_connections;
pub use metrics::KvMetrics;
pub use pubsub::Subscription;
use supervisor::{backoff, supervise};

/// How often the supervisor pings a connected Redis (and so how fast an idle outage shows).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Timeouts in a row that count as an outage.
const TIMEOUTS_BEFORE_DOWN: u32 = 3;
/// Commands whose first argument is a key (the ones gatewayd sends), for Cluster routing.
const KEYED: [&str; 10] = ["GET", "SET", "PTTL", "TTL", "INCR", "INCRBY", "DEL", "EXISTS", "EXPIRE", "PEXPIRE"];
/// Detached commands in flight beyond which new ones are dropped (and counted).
const MAX_DETACHED: usize = 10_000;

/// The validated `[redis]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSpec {
    pub servers: KvServers,
    /// Per command; past it the caller's fail mode applies.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Prepended to every key (`<prefix>:rl:…`), so fleets can share a Redis.
    pub key_prefix: Arc<str>,
    /// CA and client certificate for `rediss://` servers; `None`: the system's roots, no client
    /// certificate.
    pub tls: Option<KvTls>,
}

/// TLS material for `rediss://` (PEM, read at validation).
#[derive(Clone, PartialEq, Eq)]
pub struct KvTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for KvTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("KvTls").field("ca", &self.ca.is_some()).field("client", &self.client.is_some()).finish()
    }
}

impl KvTls {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: self.ca.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvServers {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` (TLS) or `redis+unix:///path`.
    Single(String),
    /// Seed nodes of a Redis Cluster (`redis://host:port`).
    Cluster(Vec<String>),
}

impl KvServers {
    /// For logs and the `target` metric label: addresses without credentials.
    pub fn redacted(&self) -> String {
        match self {
            KvServers::Single(url) => redact(url),
            KvServers::Cluster(nodes) => {
                format!("cluster:{}", nodes.iter().map(|n| redact(n)).collect::<Vec<_>>().join(","))
            }
        }
    }
}

/// `redis://user:secret@host:6379/0` → `redis://host:6379/0`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{rest}")
        }
        None => url.to_owned(),
    }
}

/// What a caller does when Redis cannot answer: chosen per policy, never implied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Let the request through (and count it as `result="error"`).
    Open,
    /// Refuse the request with 503.
    Closed,
}

#[derive(Debug, Clone, Error)]
pub enum KvError {
    #[error("redis is unreachable")]
    Unavailable,
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis command failed: {0}")]
    Command(String),
}

impl KvError {
    /// The `kind` label of `gateway_redis_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            KvError::Unavailable => "unavailable",
            KvError::Timeout(_) => "timeout",
            KvError::Command(_) => "command",
        }
    }
}

/// A handle on one Redis deployment. Cheap to clone; `Send + Sync`, usable from any worker.
#[derive(Clone)]
pub struct Kv {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv").field("target", &self.inner.target).field("up", &self.is_up()).finish()
    }
}

struct Inner {
    spec: KvSpec,
    target: String,
    /// Redis Cluster: the slot map and a verdict per master.
    cluster: Option<cluster::Cluster>,
    /// When the handle started; `last_attempt_ms` counts from it.
    epoch: Instant,
    /// The supervisor's last connect or probe, so requests seen while down wake it at most once
    /// per `reconnect_min`.
    last_attempt_ms: AtomicU64,
    /// `None` while down.
    conn: ArcSwapOption<Conn>,
    /// Bumped by every (re)connect of `conn`; retires the workers' own connections.
    generation: AtomicU64,
    /// Wakes the supervisor (a connection was lost).
    wake: Arc<Notify>,
    /// Flips to true once the first connection attempt has finished, either way.
    settled: watch::Sender<bool>,
    timeouts_in_a_row: AtomicU32,
    detached: AtomicUsize,
    runtime: tokio::runtime::Handle,
    metrics: KvMetrics,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.metrics.forget(&self.target)
            && let Some(cluster) = &self.cluster
        {
            cluster.forget();
        }
    }
}

impl Kv {
    /// Starts the supervisor (which connects) on the current runtime: call this on the control
    /// runtime. Never blocks; see [`Kv::settled`].
    pub fn start(spec: KvSpec, metrics: KvMetrics) -> Kv {
        let target = spec.servers.redacted();
        if metrics.adopt(&target) {
            metrics.set_up(&target, false);
        }
        let cluster = match &spec.servers {
            KvServers::Cluster(seeds) => Some(cluster::Cluster::new(seeds.clone(), target.clone(), metrics.clone())),
            KvServers::Single(_) => None,
        };
        let inner = Arc::new(Inner {
            spec,
            target,
            cluster,
            epoch: Instant::now(),
            last_attempt_ms: AtomicU64::new(0),
            conn: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            settled: watch::Sender::new(false),
            timeouts_in_a_row: AtomicU32::new(0),
            detached: AtomicUsize::new(0),
            runtime: tokio::runtime::Handle::current(),
            metrics,
        });
        inner.runtime.spawn(supervise(Arc::downgrade(&inner)));
        Kv { inner }
    }

    pub fn spec(&self) -> &KvSpec {
        &self.inner.spec
    }

    pub fn is_up(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// Waits (at most `within`) until the first connection attempt has finished, so a starting
    /// daemon does not apply fail modes to its first requests for nothing. True when up.
    pub async fn settled(&self, within: Duration) -> bool {
        let mut rx = self.inner.settled.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
        self.is_up()
    }

    /// `<key_prefix>:<rest>`.
    pub fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}:{rest}", self.inner.spec.key_prefix)
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T, KvError> {
        let node = self.route(key_of(cmd));
        let mut conn = self.conn(op, node.as_deref())?;
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.spec.timeout, cmd.query_async(&mut conn)).await;
        self.finish(op, node.as_deref(), started, result)
    }

    /// Runs one Lua script: EVALSHA, loading the script only when Redis answers NOSCRIPT. `key`
    /// is one of its keys (they share a slot), for the Cluster node's health.
    pub async fn script<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, KvError> {
        let node = self.route(Some(key.as_bytes()));
        let mut conn = self.conn(op, node.as_deref())?;
        let started = Instant::now();
        let result = tokio::time::timeout(self.inner.spec.timeout, invocation.invoke_async(&mut conn)).await;
        self.finish(op, node.as_deref(), started, result)
    }

    /// In a Cluster, the master owning `key`'s slot.
    fn route(&self, key: Option<&[u8]>) -> Option<Arc<cluster::Node>> {
        self.inner.cluster.as_ref().zip(key).and_then(|(c, k)| c.node_for(k))
    }

    /// Runs `work` on the control runtime, off the worker (for writes nobody waits for). Dropped
    /// and counted when too many are already in flight.
    pub fn spawn_detached(&self, op: &'static str, work: impl Future<Output = ()> + Send + 'static) {
        let inner = &self.inner;
        if inner.detached.fetch_add(1, Ordering::Relaxed) >= MAX_DETACHED {
            inner.detached.fetch_sub(1, Ordering::Relaxed);
            inner.metrics.error(op, "dropped");
            return;
        }
        let guard = DetachedGuard(self.inner.clone());
        inner.runtime.spawn(async move {
            work.await;
            drop(guard);
        });
    }

    /// The worker's own connection when it has one (see `local`), else the shared one; none
    /// while the shared one (or, in a Cluster, the node owning the command's slot) is down.
    fn conn(&self, op: &'static str, node: Option<&cluster::Node>) -> Result<Conn, KvError> {
        match &*self.inner.conn.load() {
            Some(_) if node.is_some_and(cluster::Node::is_down) => {}
            Some(c) => return Ok(local::get(&self.inner).unwrap_or_else(|| Conn::clone(c))),
            None => {}
        }
        self.inner.demand();
        self.inner.metrics.error(op, KvError::Unavailable.kind());
        Err(KvError::Unavailable)
    }

    fn finish<T>(
        &self,
        op: &'static str,
        node: Option<&cluster::Node>,
        started: Instant,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, KvError> {
        let inner = &self.inner;
        inner.metrics.observe(op, started.elapsed());
        let in_cluster = inner.cluster.as_ref().zip(node);
        let error = match result {
            Ok(Ok(v)) => {
                inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                if let Some((c, n)) = in_cluster {
                    c.answered(n);
                }
                return Ok(v);
            }
            Err(_) => {
                match (in_cluster, &inner.cluster) {
                    (Some((c, n)), _) => c.timed_out(n),
                    // Keyless, in a Cluster: as for errors below, the supervisor decides.
                    (None, Some(_)) => {}
                    (None, None) => {
                        if inner.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_DOWN {
                            inner.mark_down(&format!("{TIMEOUTS_BEFORE_DOWN} commands in a row timed out"));
                        }
                    }
                }
                KvError::Timeout(inner.spec.timeout)
            }
            Ok(Err(e)) if conn::is_connection_error(&e) || (in_cluster.is_some() && conn::is_node_down(&e)) => {
                match (in_cluster, &inner.cluster) {
                    (Some((c, n)), _) => {
                        if c.mark_down(n, &e.to_string()) {
                            inner.wake.notify_one();
                        }
                    }
                    // A keyless command in a Cluster went to some node; the supervisor's slot-map
                    // reads decide whether the cluster as a whole is down.
                    (None, Some(_)) => {}
                    (None, None) => inner.mark_down(&e.to_string()),
                }
                KvError::Unavailable
            }
            Ok(Err(e)) => KvError::Command(e.to_string()),
        };
        inner.metrics.error(op, error.kind());
        Err(error)
    }
}

struct DetachedGuard(Arc<Inner>);

impl Drop for DetachedGuard {
    fn drop(&mut self) {
        self.0.detached.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// A request found Redis (or its slot's node) down: wake the supervisor to try now, at most
    /// once per `reconnect_min`, so recovery follows traffic instead of the backoff.
    fn demand(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.last_attempt_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.spec.reconnect_min.as_millis() as u64
            && self.last_attempt_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn attempted(&self) {
        self.last_attempt_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Installs a new connection; retires the workers' own ones.
    fn install(&self, c: Conn) {
        self.timeouts_in_a_row.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
        self.conn.store(Some(Arc::new(c)));
    }

    /// How long the supervisor waits before its next check: short while a Cluster node is down.
    fn check_interval(&self) -> Duration {
        match &self.cluster {
            Some(c) if c.any_down() => self.spec.reconnect_min.max(Duration::from_millis(10)),
            _ => HEALTH_INTERVAL,
        }
    }

    /// Drops the connection (once per outage: logs, gauge, wakes the supervisor).
    fn mark_down(&self, why: &str) {
        if self.conn.swap(None).is_some() {
            self.metrics.set_up(&self.target, false);
            tracing::warn!(target_addr = %self.target, reason = why, "redis unreachable; policies that use it apply their on_redis_error mode until it is back");
            self.wake.notify_one();
        }
    }
}

/// The key of a single-key command (`GET k`, `SET k v`), else `None`.
fn key_of(cmd: &redis::Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter();
    let redis::Arg::Simple(name) = args.next()? else { return None };
    if !KEYED.iter().any(|k| name.eq_ignore_ascii_case(k.as_bytes())) {
        return None;
    }
    match args.next()? {
        redis::Arg::Simple(key) => Some(key),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
