//! The daemon's life: load config, start the control runtime (metrics, signals, reloads),
//! start workers, tell systemd we are ready, reload on SIGHUP, drain on SIGTERM.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use crate::{
    admin::{AdminCommand, AdminError, AdminServer},
    audit::AuditMetrics,
    auth::{AuthEnv, AuthMetrics},
    config::{Config, ConfigError, SteeringPolicy},
    ebpf::{EbpfCollector, EbpfError, Steering, XdpService},
    limits::LimitState,
    listener::{handover::Handover, occupant},
    logging,
    metrics::{
        Metrics, Readiness, ReadinessCollector, host::HostCollector, host::WorkerThreads, server::MetricsServer,
    },
    snapshot::Snapshot,
    socket,
    state::{PartsHolder, SharedState, StateError},
    systemd,
    tls::{KtlsSupport, TlsMetrics, TlsParts},
    worker::{self, WorkerEvent, WorkerSettings, liveness::WorkerLiveness},
};

const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("listener {listener}: {source}")]
    Listener { listener: String, source: std::io::Error },
    #[error(
        "listener {listener}: {addr} is already served by {occupant}; refusing to share it (stop that \
         process first; only a restart through systemd hands the listening sockets over)"
    )]
    AddressTaken { listener: String, addr: std::net::SocketAddr, occupant: Box<occupant::Occupant> },
    #[error("workers did not bind their listeners within {0:?}")]
    StartTimeout(Duration),
    #[error("worker {0} stopped unexpectedly")]
    WorkerDied(usize),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("eBPF: {0}")]
    Ebpf(#[from] EbpfError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Loads the config named on the command line, or the embedded defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config, ConfigError> {
    match path {
        Some(p) => Config::load_file(p),
        None => Config::embedded(),
    }
}

/// Runs until SIGTERM/SIGINT and a drain, or a fatal error.
pub fn run(config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let config = load_config(config_path.as_deref())?;
    logging::init(config.server.log_format, &config.server.log_level);
    let handover = Arc::new(Handover::from_env());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gw-control")
        .enable_all()
        .build()
        .map_err(io("cannot start the control runtime"))?;
    rt.block_on(async move {
        let mut daemon = Daemon::start(config, config_path, handover).await?;
        let result = daemon.serve().await;
        daemon.drain().await;
        result
    })
}

struct Daemon {
    shared: Arc<SharedState>,
    config_path: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    liveness: Arc<WorkerLiveness>,
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    admin: mpsc::Receiver<AdminCommand>,
    handover: Arc<Handover>,
}

/// Starts the XDP guard and steering as configured (or clears what a guard kept attached by an
/// earlier run left behind when the guard is now disabled).
type EbpfParts = (Option<Arc<XdpService>>, Option<Arc<Steering>>);

fn start_ebpf(config: &Config) -> Result<EbpfParts, DaemonError> {
    let xdp = if config.xdp.enabled {
        Some(XdpService::start(&config.xdp, &config.server.trusted_proxies)?)
    } else {
        match crate::ebpf::remove_stale_pins(&config.xdp.pin_path) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(path = %config.xdp.pin_path.display(), pins = n, "xdp is disabled: removed the guard an earlier run left attached")
            }
            Err(EbpfError::Busy(path)) => {
                tracing::debug!(path = %path.display(), "pin directory in use by another process")
            }
            Err(error) => tracing::warn!(%error, "cannot remove stale xdp pins"),
        }
        None
    };
    let steering = match config.server.steering {
        SteeringPolicy::None => None,
        policy => match Steering::new(policy, config.server.workers) {
            Ok(s) => Some(s),
            Err(e) => {
                if let Some(x) = &xdp {
                    x.shutdown();
                }
                return Err(e.into());
            }
        },
    };
    Ok((xdp, steering))
}

impl Daemon {
    async fn start(
        config: Config,
        config_path: Option<PathBuf>,
        handover: Arc<Handover>,
    ) -> Result<Daemon, DaemonError> {
        // Before anything else (the XDP guard included): a second instance must not touch the
        // first one's data plane on its way out.
        refuse_taken_addresses(&config)?;
        let (xdp, steering) = start_ebpf(&config)?;
        let started = Self::start_with(config, config_path, xdp.clone(), steering, handover).await;
        if started.is_err()
            && let Some(xdp) = xdp
        {
            xdp.shutdown();
        }
        started
    }

    async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        xdp: Option<Arc<XdpService>>,
        steering: Option<Arc<Steering>>,
        handover: Arc<Handover>,
    ) -> Result<Daemon, DaemonError> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(EbpfCollector { xdp: xdp.clone(), steering: steering.clone() }));
        let audit_metrics = AuditMetrics::register(&mut registry);
        let readiness = Arc::new(Readiness::default());
        crate::tls::revocation::service().attach(&mut registry, readiness.clone());
        let limits = LimitState::register(&mut registry);
        let ktls = KtlsSupport::probe().await;
        tracing::info!(supported = ktls.supported(), "{}", ktls.describe());
        let parts = PartsHolder::new(
            TlsParts::new(ktls, TlsMetrics::register(&mut registry))?,
            AuthEnv { metrics: AuthMetrics::register(&mut registry), readiness: readiness.clone() },
        )
        .with_limits(limits.clone());
        parts.set_offenders(xdp.as_ref().map(|x| x.offenders().clone()));
        let phase_parts = parts.phase_parts(&config, &audit_metrics)?;
        let metrics_spec = config.metrics.clone();
        let demo = config.demo;
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::build(1, config, phase_parts, None)));
        let metrics = Metrics::register(&mut registry, metrics_spec.consumer_label_limit);
        registry.register_collector(Box::new(crate::snapshot::ExpiryCollector(snapshot.clone())));
        registry.register_collector(Box::new(crate::snapshot::UpstreamCollector(snapshot.clone())));
        registry.register_collector(Box::new(ReadinessCollector(readiness.clone())));
        let worker_threads = Arc::new(WorkerThreads::default());
        registry.register_collector(Box::new(HostCollector::new(
            &metrics_spec.proc_root,
            &metrics_spec.sys_root,
            worker_threads.clone(),
        )));
        let shared =
            Arc::new(SharedState::new(snapshot, metrics, audit_metrics, readiness.clone(), worker_threads, parts));
        if let Some(x) = xdp {
            let _ = shared.ebpf.xdp.set(x);
        }
        if let Some(s) = steering {
            tracing::info!(policy = s.policy().label(), "connection steering on");
            let _ = shared.ebpf.steering.set(s);
        }

        let registry = Arc::new(registry);
        MetricsServer::new(registry.clone(), readiness)
            .bind(metrics_spec.addr)
            .await
            .map_err(io(format!("metrics endpoint {}", metrics_spec.addr)))?;
        if let Some(addr) = demo {
            let bound = crate::demo::start(addr).await.map_err(io(format!("demo upstream {addr}")))?;
            tracing::info!(addr = %bound, "demo upstream listening");
        }

        let (admin_tx, admin) = mpsc::channel(8);
        if let Some(path) = &shared.snapshot.load().config.admin_socket {
            AdminServer::start(path, shared.clone(), registry, admin_tx)?;
            tracing::info!(socket = %path.display(), "admin endpoint listening");
        }
        // Redis-backed policies should not start on their fail mode just because the first
        // connection attempt is still in flight.
        limits.settled().await;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events_tx, events) = mpsc::unbounded_channel();
        let liveness = Arc::new(WorkerLiveness::new(shared.snapshot.load().config.server.workers));
        let mut daemon =
            Daemon { shared, config_path, shutdown, workers: Vec::new(), liveness, events, admin, handover };
        daemon.spawn_workers(&shutdown_rx, &events_tx)?;
        daemon.await_listening(1).await?;
        daemon.handover.release_unclaimed();
        daemon.shared.readiness.set_ready(true);
        let snapshot = daemon.shared.snapshot.load();
        for l in &snapshot.config.listeners {
            tracing::info!(listener = %l.name, addr = %l.addr, http2 = l.http2, "listening");
        }
        tracing::info!(workers = daemon.workers.len(), config = %snapshot.config.source, metrics = %metrics_spec.addr, "gatewayd ready");
        systemd::ready("serving");
        Ok(daemon)
    }

    fn spawn_workers(
        &mut self,
        shutdown: &watch::Receiver<bool>,
        events: &mpsc::UnboundedSender<WorkerEvent>,
    ) -> Result<(), DaemonError> {
        let server = self.shared.snapshot.load().config.server.clone();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for id in 0..server.workers {
            let settings = WorkerSettings {
                id,
                pin_cpu: server.pin_workers.then_some(id % cpus),
                shared: self.shared.clone(),
                events: events.clone(),
                shutdown: shutdown.clone(),
                liveness: self.liveness.clone(),
                handover: self.handover.clone(),
            };
            self.workers.push(worker::spawn(settings).map_err(io(format!("cannot start worker {id}")))?);
        }
        Ok(())
    }

    /// Waits until every worker listens for `generation`, failing on the first bind error.
    async fn await_listening(&mut self, generation: u64) -> Result<(), DaemonError> {
        let mut ready = vec![false; self.workers.len()];
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while !ready.iter().all(|r| *r) {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) | Ok(None) => return Err(DaemonError::StartTimeout(START_TIMEOUT)),
                Ok(Some(WorkerEvent::BindFailed { listener, error, .. })) => {
                    return Err(DaemonError::Listener { listener, source: error });
                }
                Ok(Some(WorkerEvent::Listening { worker, generation: g })) if g >= generation => ready[worker] = true,
                Ok(Some(_)) => {}
            }
        }
        Ok(())
    }

    async fn serve(&mut self) -> Result<(), DaemonError> {
        let mut hup = signal(SignalKind::hangup()).map_err(io("SIGHUP handler"))?;
        let mut term = signal(SignalKind::terminate()).map_err(io("SIGTERM handler"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(io("SIGINT handler"))?;
        let mut usr1 = signal(SignalKind::user_defined1()).map_err(io("SIGUSR1 handler"))?;
        let watchdog = systemd::watchdog_interval();
        let mut tick =
            tokio::time::interval(watchdog.map_or(Duration::from_secs(1), |w| (w / 2).min(Duration::from_secs(1))));
        let mut withholding = false;
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    // Logged and counted inside; nobody to answer for a signal.
                    let _ = self.reload().await;
                }
                Some(cmd) = self.admin.recv() => match cmd {
                    AdminCommand::Reload(reply) => {
                        let _ = reply.send(self.reload().await);
                    }
                },
                _ = term.recv() => return Ok(()),
                _ = int.recv() => return Ok(()),
                _ = usr1.recv() => {
                    tracing::info!("reopening the audit log");
                    self.shared.parts.reopen_audit();
                }
                _ = tick.tick() => {
                    if let Some(dead) = self.workers.iter().position(JoinHandle::is_finished) {
                        return Err(DaemonError::WorkerDied(dead));
                    }
                    if let Some(interval) = watchdog {
                        self.ping_watchdog(interval, &mut withholding);
                    }
                }
            }
        }
    }

    /// Pings systemd's watchdog only while every worker's runtime is running: a wedged worker
    /// (silent for half the watchdog interval) withholds the pings, so systemd restarts us once
    /// the interval passes. Logged once when pings stop and once when they resume.
    fn ping_watchdog(&self, interval: Duration, withholding: &mut bool) {
        match self.liveness.stalled(interval / 2) {
            None => {
                if std::mem::take(withholding) {
                    tracing::warn!("every worker is running again; watchdog pings resume");
                    systemd::status("serving");
                }
                systemd::watchdog();
            }
            Some((worker, silent)) => {
                if !std::mem::replace(withholding, true) {
                    tracing::error!(worker, silent = ?silent, "a worker has stopped running; withholding watchdog pings (systemd restarts gatewayd when its WatchdogSec passes)");
                    systemd::status(&format!("worker {worker} is not running; watchdog pings withheld"));
                }
            }
        }
    }

    /// Reloads the config file; on any error the running configuration stays in place.
    async fn reload(&mut self) -> Result<u64, String> {
        systemd::reloading();
        match self.try_reload().await {
            Ok(generation) => {
                self.shared.metrics.config_reloads.get_or_create(&result_label("ok")).inc();
                tracing::info!(generation, "configuration reloaded");
                systemd::ready("serving");
                Ok(generation)
            }
            Err(e) => {
                self.shared.metrics.config_reloads.get_or_create(&result_label("error")).inc();
                tracing::error!("configuration reload failed; the running configuration stays in place:\n{e}");
                systemd::ready("serving (last reload failed)");
                systemd::status("serving; last reload failed, see the journal");
                Err(e.to_string())
            }
        }
    }

    async fn try_reload(&mut self) -> Result<u64, DaemonError> {
        let config = load_config(self.config_path.as_deref())?;
        let current = self.shared.snapshot.load_full();
        refuse_taken_addresses(&config)?;
        for l in &config.listeners {
            if !current.config.listeners.iter().any(|c| c.addr == l.addr) {
                socket::probe_bind(l.addr)
                    .map_err(|source| DaemonError::Listener { listener: l.name.to_string(), source })?;
            }
        }
        if config.server.workers != current.config.server.workers
            || config.metrics.addr != current.config.metrics.addr
            || config.server.steering != current.config.server.steering
            || config.metrics.consumer_label_limit != current.config.metrics.consumer_label_limit
        {
            tracing::warn!(
                "changes to server.workers, server.steering, metrics.bind and metrics.consumer_label(_limit) \
                 take effect at the next restart"
            );
        }
        match self.shared.ebpf.xdp.get() {
            Some(xdp) => xdp.apply(&config.xdp, &config.server.trusted_proxies)?,
            None if config.xdp.enabled => tracing::warn!("xdp.enabled takes effect at the next restart"),
            None => {}
        }
        let snapshot = self.shared.install(config)?;
        self.await_listening(snapshot.generation).await?;
        Ok(snapshot.generation)
    }

    async fn drain(&mut self) {
        self.shared.readiness.set_ready(false);
        systemd::stopping();
        let timeout = self.shared.snapshot.load().config.server.drain_timeout;
        tracing::info!(?timeout, "draining: no new connections, finishing in-flight requests");
        self.shutdown.send_replace(true);
        let workers = std::mem::take(&mut self.workers);
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(timeout + Duration::from_secs(5), joined).await.is_err() {
            tracing::warn!("workers did not stop in time");
        }
        if let Some(xdp) = self.shared.ebpf.xdp.get() {
            xdp.shutdown();
        }
        tracing::info!("stopped");
    }
}

/// Refuses listener addresses another process listens on (SO_REUSEPORT would let us join it).
/// Our own sockets, handed-over ones included, do not count.
fn refuse_taken_addresses(config: &Config) -> Result<(), DaemonError> {
    for l in &config.listeners {
        if let Some(occupant) = occupant::foreign_listener(l.addr) {
            return Err(DaemonError::AddressTaken {
                listener: l.name.to_string(),
                addr: l.addr,
                occupant: Box::new(occupant),
            });
        }
    }
    Ok(())
}

fn result_label(result: &'static str) -> crate::metrics::OneLabel {
    crate::metrics::Labels([("result", crate::metrics::LabelValue::Static(result))])
}
