//! The guard inside the daemon: started from the config, updated in place on reload (diffs, never
//! a reattach), runtime blocks with expiry (`gatewayd xdp block`, the feedback loop), `xdp top`,
//! and shutdown. A maintenance thread (`gw-xdp`) applies feedback blocks, removes expired blocks
//! and counts tracked sources, so none of that runs on the control or worker threads.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gateway_common::xdp::{DenyEntry, DenyOrigin, GuardConfig, OVERFLOW_KEY, flags, prefix_mask};
use ipnet::IpNet;
use serde::Serialize;

use super::{
    AttachMode, Counters, EbpfError, LoadOptions, XdpGuard,
    lists::{net_of_key, normalize_net, source_net},
    monotonic_ns,
    offenders::{Offence, Offenders},
};
use super::{SynCookiePolicy, XdpSpec};

/// Feedback block requests waiting for the maintenance thread.
const COMMAND_QUEUE: usize = 1024;
/// How often expired blocks are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often the tracked-sources gauge is refreshed (it walks the whole source table).
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// What the maintenance thread is asked to do.
#[derive(Debug)]
pub enum Command {
    Block(Offence),
    Stop,
}

/// The running guard.
pub struct XdpService {
    guard: Mutex<XdpGuard>,
    spec: Mutex<XdpSpec>,
    offenders: Arc<Offenders>,
    commands: SyncSender<Command>,
    thread: Mutex<Option<JoinHandle<()>>>,
    tracked: AtomicU64,
    /// Blocks added at run time: `[admin, feedback]`.
    blocks: [AtomicU64; 2],
}

/// The answer to `xdp block`.
#[derive(Debug, Serialize)]
pub struct BlockOutcome {
    pub cidr: String,
    /// Seconds until the block ends; `None`: until `xdp unblock`.
    pub expires_in_secs: Option<u64>,
    /// Set when the block cannot take effect (an allow-listed prefix covers it).
    pub warning: Option<String>,
}

/// One line of `xdp top`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TopEntry {
    /// The source prefix (per the configured prefix lengths), or `overflow` for the shared
    /// bucket of sources beyond the new-source budget, or a deny-listed prefix.
    pub source: String,
    /// Packets dropped by the packet bucket, or by the deny entry.
    pub dropped: u64,
    /// SYNs dropped by the SYN bucket.
    pub syn_dropped: u64,
    /// `rate_limit`, or the deny entry's origin (`config`, `admin`, `feedback`).
    pub kind: &'static str,
    /// For deny entries: seconds until it expires (`None`: permanent).
    pub expires_in_secs: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct TopReport {
    pub tracked_sources: u64,
    pub entries: Vec<TopEntry>,
}

/// What the metrics collector reads.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub interfaces: Vec<(String, AttachMode, Counters)>,
    pub tracked_sources: u64,
    pub blocks: [u64; 2],
    pub deny_entries: [u64; 3],
}

impl XdpService {
    /// Loads the guard with `spec` (its pin directory locked), writes the settings and lists,
    /// attaches to every interface and starts the maintenance thread. `exempt` are the trusted
    /// proxies the feedback loop must never block.
    /// A start that fails leaves no trace: a pin directory it created is removed again.
    pub fn start(spec: &XdpSpec, exempt: &[IpNet]) -> Result<Arc<XdpService>, EbpfError> {
        let fresh_dir = !spec.pin_path.exists();
        Self::start_guard(spec, exempt).map_err(|error| {
            // Anything pinned there was pinned by this failed start: nobody else used the directory.
            if fresh_dir
                && spec.pin_path.exists()
                && let Err(e) = std::fs::remove_dir_all(&spec.pin_path)
            {
                tracing::warn!(path = %spec.pin_path.display(), error = %e, "cannot remove the pin directory of a failed start");
            }
            error.or_privileges()
        })
    }

    fn start_guard(spec: &XdpSpec, exempt: &[IpNet]) -> Result<Arc<XdpService>, EbpfError> {
        let opts = LoadOptions { pin_dir: Some(spec.pin_path.clone()), max_sources: spec.max_sources };
        let mut guard = XdpGuard::load(&opts)?;
        guard.write_config(&guard_config(spec))?;
        super::syncookie::log_policy(spec);
        guard.set_closed_udp_ports(&spec.closed_udp_ports)?;
        guard.set_allow(&spec.allow)?;
        sync_config_deny(&mut guard, &spec.deny)?;
        for iface in &spec.interfaces {
            let mode = guard.attach(iface, spec.mode)?;
            let requested = spec.mode.map_or("auto", AttachMode::label);
            tracing::info!(%iface, %mode, requested, "xdp guard attached");
        }
        for iface in guard.remove_foreign_links(&spec.interfaces) {
            tracing::info!(%iface, "xdp guard detached from an interface no longer configured");
        }
        let (commands, rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let offenders = Arc::new(Offenders::new(commands.clone()));
        offenders.set_policy(spec.feedback.as_ref(), exemptions(spec, exempt));
        let service = Arc::new(XdpService {
            guard: Mutex::new(guard),
            spec: Mutex::new(spec.clone()),
            offenders,
            commands,
            thread: Mutex::new(None),
            tracked: AtomicU64::new(0),
            blocks: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        service.refresh_tracked();
        let worker = service.clone();
        let thread = std::thread::Builder::new()
            .name("gw-xdp".into())
            .spawn(move || worker.maintain(&rx))
            .map_err(|source| EbpfError::Pin { path: spec.pin_path.clone(), source })?;
        *lock(&service.thread) = Some(thread);
        Ok(service)
    }

    /// The feedback loop's handle (its policy follows reloads).
    pub fn offenders(&self) -> &Arc<Offenders> {
        &self.offenders
    }

    /// Applies a reloaded `[xdp]` section in place: settings, allow list, the config's deny
    /// entries and the feedback policy. Interfaces, mode, pin path and capacity need a restart
    /// (they would mean reattaching or recreating maps); changing them is logged, not applied.
    pub fn apply(&self, new: &XdpSpec, exempt: &[IpNet]) -> Result<(), EbpfError> {
        let mut spec = lock(&self.spec);
        let restart_only: Vec<&str> = [
            ("interfaces", spec.interfaces != new.interfaces),
            ("mode", spec.mode != new.mode),
            ("pin_path", spec.pin_path != new.pin_path),
            ("max_sources", spec.max_sources != new.max_sources),
            ("enabled", !new.enabled),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        if !restart_only.is_empty() {
            tracing::warn!(keys = ?restart_only, "xdp: these changes take effect at the next restart");
        }
        let mut guard = lock(&self.guard);
        let mut config = guard_config(new);
        if !new.enabled {
            // Disabled by a reload: stop enforcing now, detach at the restart.
            config.flags = 0;
        }
        guard.write_config(&config)?;
        if new.syn_cookies != spec.syn_cookies {
            super::syncookie::log_policy(new);
        }
        guard.set_closed_udp_ports(&new.closed_udp_ports)?;
        let (allow_added, allow_removed) = guard.set_allow(&new.allow)?;
        let (deny_added, deny_removed) = sync_config_deny(&mut guard, &new.deny)?;
        drop(guard);
        self.offenders.set_policy(new.feedback.as_ref(), exemptions(new, exempt));
        tracing::info!(allow_added, allow_removed, deny_added, deny_removed, "xdp: settings and lists updated");
        let (pin_path, max_sources, interfaces, mode) =
            (spec.pin_path.clone(), spec.max_sources, spec.interfaces.clone(), spec.mode);
        *spec = XdpSpec { pin_path, max_sources, interfaces, mode, ..new.clone() };
        Ok(())
    }

    /// Adds `net` to the deny list for `duration` (`None`: until unblocked).
    pub fn block(&self, net: IpNet, duration: Option<Duration>, origin: DenyOrigin) -> Result<BlockOutcome, String> {
        let net = normalize_net(net);
        let spec = lock(&self.spec).clone();
        let mut guard = lock(&self.guard);
        let entries = guard.deny_entries().map_err(|e| e.to_string())?;
        if entries.iter().any(|(n, e)| *n == net && e.origin == DenyOrigin::Config as u32) {
            return Err(format!("{net} is already denied by xdp.deny in the configuration"));
        }
        let expires_ns = duration.map_or(0, |d| monotonic_ns().saturating_add(d.as_nanos() as u64));
        let entry = DenyEntry { expires_ns, hits: 0, origin: origin as u32, _pad: 0 };
        guard.deny_insert(net, entry).map_err(|e| e.to_string())?;
        drop(guard);
        let slot = usize::from(origin == DenyOrigin::Feedback);
        self.blocks[slot].fetch_add(1, Ordering::Relaxed);
        let warning = spec
            .allow
            .iter()
            .find(|a| a.contains(&net.network()))
            .map(|a| format!("{a} is in xdp.allow, which wins: this block has no effect there"));
        let human =
            duration.map_or_else(|| "until unblocked".to_owned(), |d| humantime::format_duration(d).to_string());
        tracing::warn!(cidr = %net, duration = %human, origin = origin.label(), "xdp: blocked");
        Ok(BlockOutcome { cidr: net.to_string(), expires_in_secs: duration.map(|d| d.as_secs()), warning })
    }

    /// Removes a run-time block. Entries from the configuration are refused (edit the file).
    pub fn unblock(&self, net: IpNet) -> Result<bool, String> {
        let net = normalize_net(net);
        let mut guard = lock(&self.guard);
        let entries = guard.deny_entries().map_err(|e| e.to_string())?;
        if entries.iter().any(|(n, e)| *n == net && e.origin == DenyOrigin::Config as u32) {
            return Err(format!("{net} is listed in xdp.deny in the configuration; remove it there and reload"));
        }
        let removed = guard.deny_remove(net).map_err(|e| e.to_string())?;
        if removed {
            guard.refresh_prefilter().map_err(|e| e.to_string())?;
            tracing::warn!(cidr = %net, "xdp: unblocked");
        }
        Ok(removed)
    }

    /// The `n` sources with the most drops, and deny entries with hits.
    pub fn top(&self, n: usize) -> Result<TopReport, EbpfError> {
        let (v4, v6) = {
            let spec = lock(&self.spec);
            (spec.ipv4_prefix, spec.ipv6_prefix)
        };
        let guard = lock(&self.guard);
        let now = monotonic_ns();
        let mut entries = Vec::new();
        let mut tracked = 0;
        guard.for_each_source(|key, state| {
            tracked += 1;
            if state.dropped + state.syn_dropped > 0 {
                let source =
                    if *key == OVERFLOW_KEY { "overflow".to_owned() } else { net_of_key(key, v4, v6).to_string() };
                entries.push(TopEntry {
                    source,
                    dropped: state.dropped,
                    syn_dropped: state.syn_dropped,
                    kind: "rate_limit",
                    expires_in_secs: None,
                });
            }
        })?;
        for (net, entry) in guard.deny_entries()? {
            if entry.hits == 0 || (entry.expires_ns != 0 && entry.expires_ns <= now) {
                continue;
            }
            entries.push(TopEntry {
                source: net.to_string(),
                dropped: entry.hits,
                syn_dropped: 0,
                kind: DenyOrigin::from_u32(entry.origin).map_or("unknown", DenyOrigin::label),
                expires_in_secs: (entry.expires_ns != 0).then(|| (entry.expires_ns - now) / 1_000_000_000),
            });
        }
        drop(guard);
        entries.sort_by_key(|e| std::cmp::Reverse(e.dropped + e.syn_dropped));
        entries.truncate(n);
        self.tracked.store(tracked, Ordering::Relaxed);
        Ok(TopReport { tracked_sources: tracked, entries })
    }

    /// Runs `f` on the loaded guard (NIC steering takes its maps from it).
    pub(super) fn with_guard<R>(&self, f: impl FnOnce(&mut XdpGuard) -> R) -> R {
        f(&mut lock(&self.guard))
    }

    /// `(iface, mode)` of every attachment.
    pub fn attachments(&self) -> Vec<(String, AttachMode)> {
        lock(&self.guard).attachments().into_iter().map(|(iface, _, mode)| (iface, mode)).collect()
    }

    /// Counters and gauges for the metrics endpoint.
    pub fn snapshot(&self) -> Snapshot {
        let guard = lock(&self.guard);
        let mut snap = Snapshot {
            tracked_sources: self.tracked.load(Ordering::Relaxed),
            blocks: [self.blocks[0].load(Ordering::Relaxed), self.blocks[1].load(Ordering::Relaxed)],
            ..Snapshot::default()
        };
        for (iface, ifindex, mode) in guard.attachments() {
            match guard.counters(ifindex) {
                Ok(c) => snap.interfaces.push((iface, mode, c)),
                Err(error) => tracing::warn!(%iface, %error, "cannot read xdp counters"),
            }
        }
        let now = monotonic_ns();
        if let Ok(entries) = guard.deny_entries() {
            for (_, e) in entries.iter().filter(|(_, e)| e.expires_ns == 0 || e.expires_ns > now) {
                if let Some(origin) = DenyOrigin::from_u32(e.origin) {
                    snap.deny_entries[origin as usize - 1] += 1;
                }
            }
        }
        snap
    }

    /// Stops the maintenance thread, then detaches the guard, or with `keep_attached_on_restart`
    /// leaves it attached and enforcing for the next run to adopt.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
        let keep = lock(&self.spec).keep_attached;
        let mut guard = lock(&self.guard);
        if keep {
            let kept = guard.keep_attached();
            tracing::info!(interfaces = ?kept, "xdp guard left attached for the next start (keep_attached_on_restart)");
        } else {
            guard.detach_all();
        }
    }

    fn maintain(&self, rx: &Receiver<Command>) {
        let mut last_count = Instant::now();
        loop {
            match rx.recv_timeout(SWEEP_EVERY) {
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Command::Block(offence)) => self.block_offender(&offence),
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.sweep_expired();
            if last_count.elapsed() >= COUNT_EVERY {
                self.refresh_tracked();
                last_count = Instant::now();
            }
        }
    }

    fn block_offender(&self, offence: &Offence) {
        let spec = lock(&self.spec).clone();
        let Some(feedback) = &spec.feedback else { return };
        let net = source_net(offence.ip, spec.ipv4_prefix, spec.ipv6_prefix);
        if spec.allow.iter().any(|a| a.contains(&offence.ip.to_canonical())) {
            return;
        }
        let already = lock(&self.guard).deny_entries().is_ok_and(|entries| {
            let now = monotonic_ns();
            entries
                .iter()
                .any(|(n, e)| n.contains(&offence.ip.to_canonical()) && (e.expires_ns == 0 || e.expires_ns > now))
        });
        if already {
            return;
        }
        tracing::warn!(
            source = %net,
            refusals = offence.count,
            reason = offence.reason.label(),
            window = %humantime::format_duration(feedback.window),
            "xdp feedback: repeat offender"
        );
        if let Err(error) = self.block(net, Some(feedback.block_for), DenyOrigin::Feedback) {
            tracing::warn!(source = %net, %error, "xdp feedback: cannot block");
        }
    }

    fn sweep_expired(&self) {
        let mut guard = lock(&self.guard);
        let Ok(entries) = guard.deny_entries() else { return };
        let now = monotonic_ns();
        let mut removed = false;
        for (net, entry) in entries {
            if entry.expires_ns != 0 && entry.expires_ns <= now {
                removed = true;
                match guard.deny_remove(net) {
                    Ok(_) => tracing::info!(
                        cidr = %net,
                        origin = DenyOrigin::from_u32(entry.origin).map_or("unknown", DenyOrigin::label),
                        "xdp: block expired"
                    ),
                    Err(error) => tracing::warn!(cidr = %net, %error, "xdp: cannot remove expired block"),
                }
            }
        }
        if removed && let Err(error) = guard.refresh_prefilter() {
            tracing::warn!(%error, "xdp: cannot refresh the list prefilter");
        }
    }

    fn refresh_tracked(&self) {
        match lock(&self.guard).tracked_sources() {
            Ok(n) => self.tracked.store(n, Ordering::Relaxed),
            Err(error) => tracing::warn!(%error, "cannot count tracked sources"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sources the feedback loop leaves alone: trusted proxies and the allow list.
fn exemptions(spec: &XdpSpec, trusted: &[IpNet]) -> Vec<IpNet> {
    trusted.iter().chain(&spec.allow).copied().collect()
}

/// The program's settings for `spec`.
pub fn guard_config(spec: &XdpSpec) -> GuardConfig {
    let mut config = GuardConfig {
        flags: flags::ENABLED,
        mask_v4: prefix_mask(96 + u32::from(spec.ipv4_prefix)),
        mask_v6: prefix_mask(u32::from(spec.ipv6_prefix)),
        new_sources_per_sec: spec.new_sources_per_cpu,
        ..GuardConfig::default()
    };
    if let Some(r) = spec.rate_limit {
        config.flags |= flags::RATE;
        (config.pkt_interval_ns, config.pkt_tolerance_ns) = gcra(r.rate, r.burst);
    }
    if let Some(r) = spec.syn_limit {
        config.flags |= flags::SYN;
        (config.syn_interval_ns, config.syn_tolerance_ns) = gcra(r.rate, r.burst);
    }
    if !spec.closed_udp_ports.is_empty() {
        config.flags |= flags::UDP_CLOSED;
    }
    match spec.syn_cookies {
        SynCookiePolicy::Off => {}
        SynCookiePolicy::Auto => {
            config.flags |= flags::SYN_COOKIES;
            config.syn_cookie_threshold = spec.syn_cookie_threshold.max(1);
        }
        SynCookiePolicy::Always => config.flags |= flags::SYN_COOKIES,
    }
    config
}

/// A token bucket of `rate`/s and `burst` as GCRA: the cost of one packet, and how far ahead of
/// now the bucket's arrival time may run (on an exact clock: the guard adds its tick).
fn gcra(rate: u64, burst: u64) -> (u64, u64) {
    gateway_common::gcra::params(rate, burst, 0)
}

/// Makes the config-origin deny entries equal to `wanted`; run-time blocks are left alone, except
/// that a prefix now in the config becomes a config entry. Returns (added, removed).
fn sync_config_deny(guard: &mut XdpGuard, wanted: &[IpNet]) -> Result<(usize, usize), EbpfError> {
    let current = guard.deny_entries()?;
    let is_config = |e: &DenyEntry| e.origin == DenyOrigin::Config as u32;
    let (mut added, mut removed) = (0, 0);
    for (net, entry) in &current {
        if is_config(entry) && !wanted.contains(net) {
            guard.deny_remove(*net)?;
            removed += 1;
        }
    }
    for net in wanted {
        let present = current.iter().any(|(n, e)| n == net && is_config(e) && e.expires_ns == 0);
        if !present {
            let entry = DenyEntry { expires_ns: 0, hits: 0, origin: DenyOrigin::Config as u32, _pad: 0 };
            guard.deny_insert(*net, entry)?;
            added += 1;
        }
    }
    if removed > 0 {
        guard.refresh_prefilter()?;
    }
    Ok((added, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_buckets_become_gcra_parameters() {
        assert_eq!(gcra(1000, 1), (1_000_000, 0));
        assert_eq!(gcra(1000, 5), (1_000_000, 4_000_000));
        assert_eq!(gcra(2_000_000_000, 3), (1, 2));
    }
}
