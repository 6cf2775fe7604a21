//! The `jti` denylist. Every token with a `jti` is checked on every request, cached or not.
//!
//! The local denylist is a copy-on-write map read lock-free by the workers (`ArcSwap`): a check
//! is one atomic load and a hash lookup. Revocations are rare, so a write copies the map (and
//! drops entries whose token has expired anyway).
//!
//! - `store = "memory"`: that is the whole story; revocations apply to this process, at once,
//!   and are lost at restart.
//! - `store = "redis"`: a revocation is `SET <prefix>:auth:revoked:<jti> <until> EXAT <until>`
//!   (the key lives exactly as long as the token) and a PUBLISH on `<prefix>:auth:revocations`.
//!   Every node subscribes and adds what it hears to its local denylist, so a revocation made on
//!   one node is refused by all of them within a pub/sub round trip. A jti the local list does
//!   not know is looked up in Redis (`GET`) once per `cache_ttl` per worker; while the
//!   subscription is down those answers are not reused, since a revocation could be missed.
//!   When Redis cannot answer, `on_store_error` decides: 503 or let through, counted.
//!   A revocation made while Redis is down is applied here at once and queued: the queue is
//!   published (SET + PUBLISH) as soon as Redis answers again, so the fleet converges without a
//!   retry by hand.
//! - The list (and the queue) is kept in a state file (`state`), so it survives restarts even
//!   while Redis is down, and a reload that rebuilds the list carries the old one over.

mod state;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::watch;

use super::{AuthMetrics, OutageMode, RevocationSpec, RevocationStoreKind, unix_now};
use crate::kv::Kv;

/// Longest jti accepted for revocation.
const MAX_JTI: usize = 256;
/// How often queued revocations are retried while Redis is up (they are also tried as soon as
/// it comes back).
const PUBLISH_RETRY: Duration = Duration::from_millis(200);

/// `revocations.json` in systemd's `$STATE_DIRECTORY` (its first entry), else in
/// `/var/lib/gatewayd`.
pub fn default_state_file() -> PathBuf {
    let dir = std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| v.to_str().and_then(|s| s.split(':').next()).filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/gatewayd"));
    dir.join("revocations.json")
}

/// Where a revocation stands once `revoke` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// Memory store: this node only.
    Local,
    /// Stored in Redis and published to every node.
    Published,
    /// Applied here; Redis could not take it, so it is queued and published when Redis is back.
    Queued,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RevocationError {
    #[error("invalid jti: {0}")]
    InvalidJti(&'static str),
    #[error("until ({until}) is not in the future: a token expired by then needs no revocation")]
    InThePast { until: u64 },
    #[error("the revocation store failed: {0}")]
    Store(String),
}

/// The shared store (Redis).
struct Remote {
    kv: Kv,
    channel: String,
    /// Whether the pub/sub subscription is up (else cached "not revoked" answers are not reused).
    live: Arc<AtomicBool>,
    /// Unix ms when it last came up: answers cached before then may predate a revocation this
    /// node did not hear.
    live_since_ms: Arc<AtomicU64>,
    /// Dropped with the `Revocations`: ends the subscription task.
    _alive: watch::Sender<()>,
}

pub struct Revocations {
    spec: RevocationSpec,
    /// jti → unix seconds until which it is revoked (the token's expiry).
    denylist: ArcSwap<HashMap<Box<str>, u64>>,
    /// Serialises writes; holds the jtis revoked here that Redis has not taken yet.
    write: Mutex<HashMap<Box<str>, u64>>,
    /// The list changed since the state file was last written (by `insert_local`).
    unsaved: AtomicBool,
    remote: Option<Remote>,
    metrics: AuthMetrics,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations").field("spec", &self.spec).field("local", &self.denylist.load().len()).finish()
    }
}

/// What a lookup in the shared store found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    NotRevoked,
    /// Revoked until then (now also on the local list).
    Revoked(u64),
}

impl Revocations {
    /// A memory store, or with `kv` (required by `store = "redis"`) the shared one, whose
    /// subscription starts on the current runtime (the control runtime). Starts from the state
    /// file and from `previous` (the list a reload replaces), so no revocation is forgotten.
    pub fn new(
        spec: RevocationSpec,
        kv: Option<Kv>,
        metrics: AuthMetrics,
        previous: Option<&Revocations>,
    ) -> Arc<Self> {
        let now = unix_now();
        let mut denylist: HashMap<Box<str>, u64> = HashMap::new();
        let mut pending: HashMap<Box<str>, u64> = HashMap::new();
        if let Some(path) = &spec.state_file {
            match state::load(path) {
                Ok(entries) => {
                    for e in entries.into_iter().filter(|e| e.until > now && validate(&e.jti, e.until).is_ok()) {
                        if e.pending {
                            pending.insert(e.jti.as_str().into(), e.until);
                        }
                        denylist.insert(e.jti.into(), e.until);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the revocation state file; starting without it"),
            }
        }
        if let Some(prev) = previous {
            for (jti, until) in prev.denylist.load().iter().filter(|(_, u)| **u > now) {
                let known = denylist.entry(jti.clone()).or_insert(*until);
                *known = (*known).max(*until);
            }
            pending.extend(prev.pending().into_iter().filter(|(_, u)| *u > now));
        }
        if spec.store == RevocationStoreKind::Memory {
            pending.clear();
        }
        metrics.revocations_pending(pending.len());
        let carried = previous.is_some();
        let list = Arc::new_cyclic(|weak: &Weak<Revocations>| {
            let remote = match (spec.store, kv) {
                (RevocationStoreKind::Redis, Some(kv)) => Some(Remote::start(kv, weak.clone())),
                (RevocationStoreKind::Redis, None) => {
                    // Validation requires [redis]; without it every lookup fails by the fail mode.
                    tracing::error!("revocation store is redis but no [redis] handle exists");
                    None
                }
                (RevocationStoreKind::Memory, _) => None,
            };
            Revocations {
                spec,
                denylist: ArcSwap::from_pointee(denylist),
                write: Mutex::new(pending),
                unsaved: AtomicBool::new(false),
                remote,
                metrics,
            }
        });
        if carried {
            // A reload may have moved the file.
            list.persist(&list.lock());
        }
        list
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, u64>> {
        self.write.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Revocations waiting to be published.
    fn pending(&self) -> Vec<(Box<str>, u64)> {
        self.lock().iter().map(|(j, u)| (j.clone(), *u)).collect()
    }

    /// Writes the list to the state file (under the write lock). A failure is logged: the list
    /// still holds in memory.
    fn persist(&self, pending: &HashMap<Box<str>, u64>) {
        let Some(path) = &self.spec.state_file else { return };
        let now = unix_now();
        let entries = self
            .denylist
            .load()
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(jti, until)| state::Entry {
                jti: jti.to_string(),
                until: *until,
                pending: pending.contains_key(jti),
            })
            .collect();
        if let Err(e) = state::save(path, entries) {
            tracing::error!(error = %e, "cannot write the revocation state file; revocations will not survive a restart");
        }
    }

    pub fn spec(&self) -> &RevocationSpec {
        &self.spec
    }

    /// Whether this list can serve a new config (same settings, same Redis connection).
    pub fn reusable_for(&self, spec: &RevocationSpec, kv: Option<&Kv>) -> bool {
        self.spec == *spec
            && match (&self.remote, kv) {
                (Some(r), Some(kv)) => r.kv.same(kv),
                (None, _) => spec.store == RevocationStoreKind::Memory,
                (Some(_), None) => false,
            }
    }

    /// Whether `jti` is on the local denylist (at unix time `now`).
    pub fn is_revoked_locally(&self, jti: &str, now: u64) -> bool {
        let list = self.denylist.load();
        !list.is_empty() && list.get(jti).is_some_and(|until| *until > now)
    }

    /// Whether jtis must also be looked up in a shared store.
    pub fn shared(&self) -> bool {
        self.spec.store == RevocationStoreKind::Redis
    }

    /// Whether "not revoked" answers of the shared store may be reused (its revocations are
    /// being heard).
    pub fn subscribed(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.live.load(Ordering::Acquire))
    }

    /// Whether a "not revoked" answer cached until `until_ms` is still good at `now_ms`: it must
    /// be unexpired and have been cached while revocations were being heard without a gap.
    pub fn reusable_answer(&self, until_ms: u64, now_ms: u64) -> bool {
        let Some(remote) = self.remote.as_ref().filter(|r| r.live.load(Ordering::Acquire)) else { return false };
        let cached_at = until_ms.saturating_sub(self.spec.cache_ttl.as_millis() as u64);
        until_ms > now_ms && cached_at >= remote.live_since_ms.load(Ordering::Acquire)
    }

    /// Looks `jti` up in the shared store.
    pub async fn lookup(&self, jti: &str) -> Result<Lookup, RevocationError> {
        let Some(remote) = &self.remote else { return Err(RevocationError::Store("no redis".into())) };
        let key = remote.key(jti);
        let until: Option<u64> =
            remote.kv.query("auth_revoked_get", redis::cmd("GET").arg(&key)).await.map_err(store_error)?;
        match until {
            Some(until) => {
                self.insert_local(jti, until);
                Ok(Lookup::Revoked(until))
            }
            None => Ok(Lookup::NotRevoked),
        }
    }

    /// Counts a failed lookup; true when the request may go on (`fail_open`).
    pub fn store_failed(&self) -> bool {
        let open = self.spec.on_store_error == OutageMode::FailOpen;
        self.metrics.revocation_store_error(open);
        open
    }

    /// Revokes `jti` until `until` (unix seconds, normally the token's `exp`): locally at once
    /// (and in the state file), and in the shared store for every node; queued when the shared
    /// store cannot take it now.
    pub async fn revoke(&self, jti: &str, until: u64, source: &'static str) -> Result<Revoked, RevocationError> {
        validate(jti, until)?;
        self.insert(jti, until, self.remote.is_some(), true);
        self.metrics.revoked(source);
        let Some(remote) = &self.remote else {
            tracing::info!(jti, until, source, "token revoked");
            return Ok(Revoked::Local);
        };
        match remote.publish(jti, until).await {
            Ok(()) => {
                self.published(jti);
                tracing::info!(jti, until, source, "token revoked");
                Ok(Revoked::Published)
            }
            Err(e) => {
                tracing::warn!(jti, until, source, error = %e, "token revoked on this node; redis cannot take it now, so it is queued and published when redis is back");
                Ok(Revoked::Queued)
            }
        }
    }

    /// Adds to the local denylist only (revocations found in Redis or heard from other nodes).
    /// Callable from a worker: the state file is written later by the subscription task, never
    /// on the request path.
    pub fn insert_local(&self, jti: &str, until: u64) {
        if self.insert(jti, until, false, false) {
            self.unsaved.store(true, Ordering::Release);
        }
    }

    /// Writes the state file if `insert_local` changed the list since the last write.
    fn save_if_changed(&self) {
        if self.unsaved.swap(false, Ordering::AcqRel) {
            self.persist(&self.lock());
        }
    }

    /// Adds to the local denylist (and, when `pending`, to the queue), saving the state file when
    /// `save`. True when the list changed.
    fn insert(&self, jti: &str, until: u64, pending: bool, save: bool) -> bool {
        let mut queue = self.lock();
        let now = unix_now();
        let current = self.denylist.load();
        let known = current.get(jti).is_some_and(|u| *u >= until);
        if known && (!pending || queue.contains_key(jti)) {
            return false;
        }
        if !known {
            let mut next: HashMap<Box<str>, u64> =
                current.iter().filter(|(_, u)| **u > now).map(|(k, u)| (k.clone(), *u)).collect();
            next.insert(jti.into(), until);
            self.denylist.store(Arc::new(next));
        }
        if pending {
            queue.insert(jti.into(), until);
            self.metrics.revocations_pending(queue.len());
        }
        if save {
            self.persist(&queue);
        }
        true
    }

    /// `jti` reached the shared store: off the queue.
    fn published(&self, jti: &str) {
        let mut queue = self.lock();
        if queue.remove(jti).is_some() {
            self.metrics.revocations_pending(queue.len());
            self.persist(&queue);
        }
    }

    /// Publishes what is queued (when Redis is up); what fails stays queued.
    async fn flush(&self) {
        let Some(remote) = &self.remote else { return };
        if !remote.kv.is_up() {
            return;
        }
        let now = unix_now();
        for (jti, until) in self.pending() {
            if until <= now {
                self.published(&jti);
                continue;
            }
            match remote.publish(&jti, until).await {
                Ok(()) => {
                    self.published(&jti);
                    tracing::info!(jti = &*jti, until, "queued revocation published");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "queued revocations stay queued");
                    return;
                }
            }
        }
    }

    /// A revocation published by some node: `<until> <jti>`.
    fn heard(&self, message: &[u8]) {
        let parsed = std::str::from_utf8(message)
            .ok()
            .and_then(|m| m.split_once(' '))
            .and_then(|(until, jti)| Some((until.parse::<u64>().ok()?, jti)));
        match parsed {
            Some((until, jti)) if validate(jti, until).is_ok() => {
                if !self.is_revoked_locally(jti, unix_now()) {
                    // On the subscription task (not a worker): saved at once.
                    self.insert(jti, until, false, true);
                    self.metrics.revoked("peer");
                    tracing::debug!(jti, until, "revocation heard from another node");
                }
            }
            Some(_) => {}
            None => tracing::warn!("ignoring a malformed message on the revocation channel"),
        }
    }

    /// Entries on the local denylist (expired ones included until the next write).
    pub fn local_len(&self) -> usize {
        self.denylist.load().len()
    }

    /// Revocations made here that Redis has not taken yet.
    pub fn pending_len(&self) -> usize {
        self.lock().len()
    }
}

impl Remote {
    fn start(kv: Kv, revocations: Weak<Revocations>) -> Remote {
        let channel = kv.key(format_args!("auth:revocations"));
        let live = Arc::new(AtomicBool::new(false));
        let live_since_ms = Arc::new(AtomicU64::new(0));
        let since = live_since_ms.clone();
        let (alive, mut dropped) = watch::channel(());
        let mut sub = kv.subscribe(channel.clone());
        let flag = live.clone();
        let listen = async move {
            let mut retry = tokio::time::interval(PUBLISH_RETRY);
            retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = dropped.changed() => return,
                    _ = retry.tick() => {
                        let Some(r) = revocations.upgrade() else { return };
                        r.save_if_changed();
                        if r.pending_len() > 0 {
                            r.flush().await;
                        }
                    }
                    changed = sub.live.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let up = *sub.live.borrow_and_update();
                        if up {
                            since.store(super::unix_now_ms(), Ordering::Release);
                        }
                        flag.store(up, Ordering::Release);
                        if up && let Some(r) = revocations.upgrade() {
                            r.flush().await;
                        }
                    }
                    message = sub.messages.recv() => {
                        let Some(message) = message else { return };
                        let Some(r) = revocations.upgrade() else { return };
                        r.heard(&message);
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(listen);
            }
            Err(_) => tracing::error!(
                "no runtime for the revocation subscription; other nodes' revocations are looked up in redis"
            ),
        }
        Remote { kv, channel, live, live_since_ms, _alive: alive }
    }

    fn key(&self, jti: &str) -> String {
        self.kv.key(format_args!("auth:revoked:{jti}"))
    }

    /// `SET <key> <until> EXAT <until>` (the key lives as long as the token), then PUBLISH.
    async fn publish(&self, jti: &str, until: u64) -> Result<(), RevocationError> {
        let set = redis::cmd("SET").arg(self.key(jti)).arg(until).arg("EXAT").arg(until).clone();
        self.kv.query::<()>("auth_revoke", &set).await.map_err(store_error)?;
        let message = format!("{until} {jti}");
        self.kv.publish(&self.channel, message.as_bytes()).await.map_err(store_error)?;
        Ok(())
    }
}

fn store_error(e: crate::kv::KvError) -> RevocationError {
    RevocationError::Store(e.to_string())
}

/// Checks what `gatewayd revoke` and the admin endpoint accept.
pub fn validate(jti: &str, until: u64) -> Result<(), RevocationError> {
    if jti.is_empty() || jti.len() > MAX_JTI {
        return Err(RevocationError::InvalidJti("must be 1 to 256 bytes"));
    }
    if jti.chars().any(char::is_control) {
        return Err(RevocationError::InvalidJti("must not contain control characters"));
    }
    if until <= unix_now() {
        return Err(RevocationError::InThePast { until });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn revoked_until_expiry() {
        let r = Revocations::new(RevocationSpec::default(), None, AuthMetrics::default(), None);
        let now = unix_now();
        assert!(!r.is_revoked_locally("a", now));
        assert_eq!(block_on(r.revoke("a", now + 60, "admin")), Ok(Revoked::Local));
        assert!(r.is_revoked_locally("a", now));
        assert!(!r.is_revoked_locally("a", now + 61), "an entry lapses with the token");
        assert!(!r.is_revoked_locally("b", now));
        assert_eq!(
            block_on(r.revoke("", now + 60, "admin")),
            Err(RevocationError::InvalidJti("must be 1 to 256 bytes"))
        );
        assert!(matches!(block_on(r.revoke("c", now - 1, "admin")), Err(RevocationError::InThePast { .. })));
        // A shorter revocation never shortens a longer one.
        r.insert_local("a", now + 10);
        assert!(r.is_revoked_locally("a", now + 30));
        assert!(!r.shared() && !r.subscribed());
    }

    #[test]
    fn the_list_survives_a_restart_and_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RevocationSpec { state_file: Some(dir.path().join("r.json")), ..RevocationSpec::default() };
        let until = unix_now() + 60;
        let first = Revocations::new(spec.clone(), None, AuthMetrics::default(), None);
        assert_eq!(block_on(first.revoke("a", until, "admin")), Ok(Revoked::Local));
        // A found-in-Redis entry is saved later, off the request path.
        first.insert_local("b", until);
        first.save_if_changed();
        let restarted = Revocations::new(spec.clone(), None, AuthMetrics::default(), None);
        assert!(restarted.is_revoked_locally("a", unix_now()) && restarted.is_revoked_locally("b", unix_now()));
        // A rebuild (a reload that changed the settings) keeps what the old list held, even
        // without a state file.
        restarted.insert_local("c", until);
        let rebuilt = Revocations::new(RevocationSpec::default(), None, AuthMetrics::default(), Some(&restarted));
        assert!(["a", "b", "c"].iter().all(|j| rebuilt.is_revoked_locally(j, unix_now())));
    }

    #[test]
    fn published_messages_are_parsed_strictly() {
        let r = Revocations::new(RevocationSpec::default(), None, AuthMetrics::default(), None);
        let until = unix_now() + 60;
        r.heard(format!("{until} tok-1").as_bytes());
        assert!(r.is_revoked_locally("tok-1", unix_now()));
        for bad in ["", "x y", "123", "5 old-token", "99999999999 \u{7}"] {
            r.heard(bad.as_bytes());
        }
        assert_eq!(r.local_len(), 1);
    }
}
