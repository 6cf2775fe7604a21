//! The L7 → L3 feedback loop: sources the gateway keeps refusing (failed authentication, L7
//! rate limits, scans hitting no route) are put in the XDP deny list for a cool-down, so repeat
//! offenders stop costing TLS handshakes and requests. Off unless `[xdp.feedback]` enables it.
//!
//! Other modules report through [`Offenders::report`] (`Send + Sync`, cheap, never blocks on the
//! kernel): the [`FeedbackPhase`] does it for every refusal the gateway answers itself with 401,
//! 403, 429 or 404, so an auth or rate-limit phase needs no code of its own — refusing with the
//! right status is enough. Code outside the request pipeline (a TLS handshake failure, say) calls
//! `report` directly with the TCP peer address.
//!
//! Connections that end before a complete request (`EmptyConnection`, reported by the listener)
//! are counted in windows of their own against `empty_connection_threshold`: a connection flood
//! from a few hundred sources shows no refusal at all, and a client's few preconnects must not
//! add up with its refusals.
//!
//! The peer address is what counts, never `X-Forwarded-For`: the guard sees packets, and
//! blocking a client behind a proxy would block the proxy. Peers in `server.trusted_proxies` and
//! in the allow list are never reported.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::SyncSender,
    },
    time::Instant,
};

use arc_swap::ArcSwapOption;
use ipnet::IpNet;

use super::service::Command;
use crate::{
    ebpf::{FeedbackReason, FeedbackSpec},
    request::{Phase, RequestCtx},
};

const SHARDS: usize = 16;

/// Counts refusals per source and asks the guard to block a source that crosses the threshold.
pub struct Offenders {
    policy: ArcSwapOption<Policy>,
    /// Windows per source and kind of count (refusals, empty connections).
    shards: Box<[Mutex<Windows>]>,
    hasher: RandomState,
    commands: SyncSender<Command>,
    /// Reports counted, by reason (index in `FeedbackReason::ALL`).
    reported: [AtomicU64; FeedbackReason::ALL.len()],
}

type Windows = HashMap<(IpAddr, Count), Window>;

/// What a window counts: each has its own threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Count {
    Refusals,
    EmptyConnections,
}

struct Policy {
    spec: FeedbackSpec,
    /// Never reported: trusted proxies and allow-listed sources.
    exempt: Vec<IpNet>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
    /// A block was asked for in this window (asked again at the next report while the
    /// maintenance thread's queue is full, so a burst of offenders is not forgotten).
    requested: bool,
}

/// A source to block, sent to the guard's maintenance thread.
#[derive(Debug, Clone)]
pub struct Offence {
    pub ip: IpAddr,
    pub reason: FeedbackReason,
    pub count: u32,
}

impl Offenders {
    pub(super) fn new(commands: SyncSender<Command>) -> Offenders {
        Offenders {
            policy: ArcSwapOption::empty(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            commands,
            reported: Default::default(),
        }
    }

    /// Replaces the thresholds (`None`: off; counts so far are forgotten).
    pub fn set_policy(&self, spec: Option<&FeedbackSpec>, exempt: Vec<IpNet>) {
        self.policy.store(spec.map(|spec| Arc::new(Policy { spec: spec.clone(), exempt })));
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        }
    }

    /// Whether reports are being counted.
    pub fn enabled(&self) -> bool {
        self.policy.load().is_some()
    }

    /// Reports counted so far (counted reasons, non-exempt peers), by reason.
    pub fn reported(&self) -> impl Iterator<Item = (FeedbackReason, u64)> + '_ {
        FeedbackReason::ALL.into_iter().zip(self.reported.iter().map(|n| n.load(Ordering::Relaxed)))
    }

    /// One refusal of `peer` (the TCP peer address) for `reason`.
    pub fn report(&self, peer: IpAddr, reason: FeedbackReason) {
        let guard = self.policy.load();
        let Some(policy) = guard.as_deref() else { return };
        if !policy.spec.reasons.contains(&reason) {
            return;
        }
        let ip = peer.to_canonical();
        if policy.exempt.iter().any(|net| net.contains(&ip)) {
            return;
        }
        if let Some(i) = FeedbackReason::ALL.iter().position(|r| *r == reason) {
            self.reported[i].fetch_add(1, Ordering::Relaxed);
        }
        let (count, threshold) = match reason {
            FeedbackReason::EmptyConnection => (Count::EmptyConnections, policy.spec.empty_connection_threshold),
            _ => (Count::Refusals, policy.spec.threshold),
        };
        let now = Instant::now();
        let shard = &self.shards[self.hasher.hash_one(ip) as usize % SHARDS];
        let mut windows = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let per_shard = policy.spec.max_tracked.div_ceil(SHARDS).max(1);
        if !windows.contains_key(&(ip, count)) && windows.len() >= per_shard {
            let window = policy.spec.window;
            windows.retain(|_, w| now.duration_since(w.start) < window);
            if windows.len() >= per_shard {
                // Full of live windows: this source is not counted until some expire.
                return;
            }
        }
        let fresh = Window { start: now, count: 0, requested: false };
        let w = windows.entry((ip, count)).or_insert(fresh);
        if now.duration_since(w.start) >= policy.spec.window {
            *w = Window { start: now, count: 0, requested: false };
        }
        w.count += 1;
        if w.count >= threshold && !w.requested {
            let offence = Offence { ip, reason, count: w.count };
            // Never blocks a request: when the maintenance thread is behind, the source's next
            // report asks again.
            w.requested = self.commands.try_send(Command::Block(offence)).is_ok();
            // Said once per source and window: retries come with every further report, and a
            // flood of them must not become a flood of log lines.
            if !w.requested && w.count == threshold {
                tracing::warn!(%ip, "xdp feedback: block request deferred (maintenance thread busy)");
            }
        }
    }
}

/// The log phase that reports the gateway's own 401/403/429/404 refusals (and client
/// certificates refused with a 400).
pub struct FeedbackPhase(pub Arc<Offenders>);

impl Phase for FeedbackPhase {
    fn name(&self) -> &'static str {
        "xdp_feedback"
    }

    fn on_log(&self, ctx: &RequestCtx) {
        if ctx.error.is_none() {
            // Proxied: the upstream's statuses are not ours to punish.
            return;
        }
        // A client certificate refused with a status (400) is an authentication failure.
        let cert_refused = matches!(ctx.error, Some("client_cert_required" | "client_cert_invalid"));
        let reason = if cert_refused { Some(FeedbackReason::Auth) } else { FeedbackReason::of_status(ctx.status) };
        if let Some(reason) = reason {
            self.0.report(ctx.conn.peer.ip(), reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;

    fn spec(threshold: u32) -> FeedbackSpec {
        FeedbackSpec {
            threshold,
            empty_connection_threshold: threshold + 1,
            window: Duration::from_secs(60),
            block_for: Duration::from_secs(600),
            reasons: vec![FeedbackReason::Auth, FeedbackReason::NotFound],
            max_tracked: 1024,
        }
    }

    #[test]
    fn crossing_the_threshold_asks_for_one_block() {
        let (tx, rx) = mpsc::sync_channel(8);
        let o = Offenders::new(tx);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        o.report(ip, FeedbackReason::Auth);
        assert!(rx.try_recv().is_err(), "off until a policy is set");
        o.set_policy(Some(&spec(3)), vec!["10.0.0.0/8".parse().unwrap()]);
        for _ in 0..2 {
            o.report(ip, FeedbackReason::Auth);
        }
        assert!(rx.try_recv().is_err());
        o.report(ip, FeedbackReason::RateLimit); // not a counted reason
        assert!(rx.try_recv().is_err());
        o.report("::ffff:192.0.2.7".parse().unwrap(), FeedbackReason::NotFound);
        match rx.try_recv() {
            Ok(Command::Block(Offence { ip: got, count: 3, .. })) => assert_eq!(got, ip),
            other => panic!("expected a block request, got {other:?}"),
        }
        o.report(ip, FeedbackReason::Auth);
        assert!(rx.try_recv().is_err(), "one request per window");
        for _ in 0..10 {
            o.report("10.1.2.3".parse().unwrap(), FeedbackReason::Auth);
        }
        assert!(rx.try_recv().is_err(), "exempt sources are never reported");
    }

    #[test]
    fn empty_connections_count_apart_against_their_own_threshold() {
        let (tx, rx) = mpsc::sync_channel(8);
        let o = Offenders::new(tx);
        let mut s = spec(2);
        s.reasons.push(FeedbackReason::EmptyConnection);
        o.set_policy(Some(&s), Vec::new());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        o.report(ip, FeedbackReason::Auth);
        o.report(ip, FeedbackReason::EmptyConnection);
        o.report(ip, FeedbackReason::EmptyConnection);
        assert!(rx.try_recv().is_err(), "one refusal and two empty connections: no threshold crossed");
        o.report(ip, FeedbackReason::EmptyConnection);
        match rx.try_recv() {
            Ok(Command::Block(Offence { reason: FeedbackReason::EmptyConnection, count: 3, .. })) => {}
            other => panic!("expected a block for empty connections, got {other:?}"),
        }
        let reported: Vec<_> = o.reported().filter(|(_, n)| *n > 0).collect();
        assert_eq!(reported, [(FeedbackReason::Auth, 1), (FeedbackReason::EmptyConnection, 3)]);
    }

    #[test]
    fn a_block_request_the_full_queue_refused_is_asked_again() {
        let (tx, rx) = mpsc::sync_channel(1);
        let o = Offenders::new(tx);
        o.set_policy(Some(&spec(1)), Vec::new());
        o.report("192.0.2.1".parse().unwrap(), FeedbackReason::Auth);
        let late: IpAddr = "192.0.2.2".parse().unwrap();
        o.report(late, FeedbackReason::Auth); // the queue is full: deferred
        assert!(matches!(rx.try_recv(), Ok(Command::Block(Offence { count: 1, .. }))));
        o.report(late, FeedbackReason::Auth);
        match rx.try_recv() {
            Ok(Command::Block(Offence { ip, count: 2, .. })) => assert_eq!(ip, late),
            other => panic!("expected the deferred block, got {other:?}"),
        }
    }

    #[test]
    fn tracking_is_bounded() {
        let (tx, _rx) = mpsc::sync_channel(8);
        let o = Offenders::new(tx);
        o.set_policy(Some(&FeedbackSpec { max_tracked: 32, ..spec(100) }), Vec::new());
        for i in 0..10_000u32 {
            o.report(IpAddr::from(i.to_be_bytes()), FeedbackReason::Auth);
        }
        let tracked: usize = o.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(tracked <= 32, "{tracked} sources tracked");
    }
}
