//! Workers: one OS thread each, with its own current-thread tokio runtime, its own
//! SO_REUSEPORT listening sockets and its own upstream connection pools. Nothing on a worker's
//! request path is shared with another worker except atomics and the current snapshot.

pub mod collect;
pub mod huge_pages;
pub mod liveness;
pub mod loop_lag;
mod runtime;

use std::{collections::HashMap, rc::Rc, sync::Arc, thread::JoinHandle, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle as TaskHandle};

use crate::{
    config::ListenerSpec,
    listener::{self, handover, handover::Handover},
    socket,
    state::SharedState,
};

/// What a worker reports to the control thread.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The worker's listeners match snapshot `generation`.
    Listening {
        worker: usize,
        generation: u64,
    },
    BindFailed {
        worker: usize,
        listener: String,
        error: std::io::Error,
    },
}

pub use crate::listener::WorkerLocal;

pub struct WorkerSettings {
    pub id: usize,
    pub pin_cpu: Option<usize>,
    pub shared: Arc<SharedState>,
    pub events: tokio::sync::mpsc::UnboundedSender<WorkerEvent>,
    pub shutdown: watch::Receiver<bool>,
    pub liveness: Arc<liveness::WorkerLiveness>,
    /// Listening sockets handed over by the previous process (systemd restart).
    pub handover: Arc<Handover>,
}

pub fn spawn(settings: WorkerSettings) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("gw-worker-{}", settings.id)).spawn(move || run(settings))
}

fn run(s: WorkerSettings) {
    if let Some(cpu) = s.pin_cpu {
        pin_to_cpu(cpu);
    }
    s.shared.worker_threads.register(s.id, nix::unistd::gettid().as_raw());
    crate::kv::use_worker_connections();
    if let Err(e) = runtime::block_on(serve(&s)) {
        tracing::error!(worker = s.id, error = %e, "cannot start worker runtime");
    }
    s.shared.worker_threads.unregister(s.id);
}

async fn serve(s: &WorkerSettings) {
    let worker = Rc::new(WorkerLocal::new(s.id, s.shared.clone()));
    let mut listeners: HashMap<ListenerSpec, TaskHandle<()>> = HashMap::new();
    let mut generations = s.shared.generation.subscribe();
    let mut shutdown = s.shutdown.clone();
    // Connections hear of the shutdown only after the listeners are closed and they had
    // `ACCEPTED_SETTLE` to send their request (see below).
    let (connections_shutdown, connections_rx) = watch::channel(false);
    tokio::task::spawn_local(sweep_pool(worker.clone()));
    tokio::task::spawn_local(liveness::heartbeat(s.liveness.clone(), s.id));
    let lag = s
        .shared
        .metrics
        .worker_loop_lag
        .new_shard(&crate::metrics::Labels([("worker", crate::metrics::LabelValue::Int(s.id as u64))]));
    tokio::task::spawn_local(loop_lag::probe(lag, s.id as u64 + 1));
    loop {
        reconcile(&worker, &mut listeners, s, &connections_rx);
        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
        }
    }
    // Draining: close the listening sockets (out of steering first), then let connections
    // finish (each got the shutdown signal and is shutting down gracefully).
    for (spec, task) in listeners.drain() {
        unsteer(&s.shared, &spec, s.id);
        task.abort();
    }
    // A connection accepted just before the listeners closed may not have sent its request yet;
    // shut down now and hyper would close it as idle: the client sees its connection accepted,
    // then EOF (lost across every restart under load). Connections not yet accepted stay queued
    // on the socket, which systemd's store hands to the next process.
    tokio::time::sleep(ACCEPTED_SETTLE).await;
    connections_shutdown.send_replace(true);
    let deadline = tokio::time::Instant::now() + worker.snapshot().config.server.drain_timeout;
    while worker.open_connections.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if worker.open_connections.get() > 0 {
        tracing::warn!(
            worker = s.id,
            open = worker.open_connections.get(),
            "drain deadline reached; closing remaining connections"
        );
    }
}

/// How long connections accepted before a drain keep running normally before they are told to
/// shut down: time for a just-accepted client's request to arrive.
const ACCEPTED_SETTLE: Duration = Duration::from_secs(1);

/// Makes this worker's listening sockets match the current snapshot; connections they accept
/// watch `connections_shutdown`.
fn reconcile(
    worker: &Rc<WorkerLocal>,
    listeners: &mut HashMap<ListenerSpec, TaskHandle<()>>,
    s: &WorkerSettings,
    connections_shutdown: &watch::Receiver<bool>,
) {
    let snapshot = worker.snapshot();
    let wanted = &snapshot.config.listeners;
    listeners.retain(|spec, task| {
        let keep = wanted.contains(spec);
        if !keep {
            unsteer(&s.shared, spec, s.id);
            handover::forget(spec.addr, s.id);
            task.abort();
        }
        keep
    });
    for spec in wanted {
        if listeners.contains_key(spec) {
            continue;
        }
        match listening_socket(spec, s).inspect(|l| steer(&s.shared, spec, s.id, l)).and_then(TcpListener::from_std) {
            Ok(l) => {
                let task = tokio::task::spawn_local(listener::accept_loop(
                    l,
                    spec.clone(),
                    worker.clone(),
                    connections_shutdown.clone(),
                ));
                listeners.insert(spec.clone(), task);
            }
            Err(error) => {
                tracing::error!(worker = s.id, listener = %spec.name, addr = %spec.addr, %error, "cannot bind listener");
                let _ = s.events.send(WorkerEvent::BindFailed { worker: s.id, listener: spec.name.to_string(), error });
            }
        }
    }
    let _ = s.events.send(WorkerEvent::Listening { worker: s.id, generation: snapshot.generation });
}

/// The socket the previous process handed over for this listener and worker, or a new one (kept
/// in systemd's store for the next restart).
fn listening_socket(spec: &ListenerSpec, s: &WorkerSettings) -> std::io::Result<std::net::TcpListener> {
    if let Some(inherited) = s.handover.take(spec.addr, s.id) {
        return Ok(inherited);
    }
    let socket = socket::bind_reuseport(spec.addr, spec.backlog)?;
    handover::keep(spec.addr, s.id, &socket);
    Ok(socket)
}

/// Hands a new listening socket to connection steering (index = worker id). A failure leaves the
/// socket to the kernel's own SO_REUSEPORT hash, which still serves it.
fn steer(shared: &SharedState, spec: &ListenerSpec, worker: usize, socket: &std::net::TcpListener) {
    if let Some(steering) = shared.ebpf.steering.get()
        && let Err(error) = steering.register(spec.addr, worker, socket)
    {
        tracing::error!(worker, listener = %spec.name, %error, "cannot steer connections to this socket");
    }
}

/// Takes a socket out of steering before it is closed, so no new connection is steered to it.
fn unsteer(shared: &SharedState, spec: &ListenerSpec, worker: usize) {
    if let Some(steering) = shared.ebpf.steering.get() {
        steering.unregister(spec.addr, worker);
    }
}

/// How soon pages freed by parked or closed connections go back to the system (on an idle
/// worker; see `collect`), and the unit of the upstream pool's sweep period.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

async fn sweep_pool(worker: Rc<WorkerLocal>) {
    let mut tick = tokio::time::interval(COLLECT_EVERY);
    let mut policy = collect::CollectPolicy::default();
    loop {
        tick.tick().await;
        let decision = policy.tick(worker.released_connections.replace(0), worker.requests_started.get());
        if policy.sweeps_pool() {
            let idle = worker.snapshot().services.iter().map(|s| s.spec.idle_timeout).min();
            worker.pool.sweep(idle.unwrap_or(Duration::from_secs(60)));
        }
        // Give pages freed by parked and closed connections (hyper's buffers, several KiB each)
        // back to the system soon after they go idle; mimalloc would otherwise keep them until
        // it is busy again, and an idle worker never is.
        //
        // Forced: a normal collect frees the empty pages but leaves their purge (returning them
        // to the OS) to a later allocation once mimalloc's purge delay has passed, and an idle
        // worker makes none, so what a burst of connections touched stayed resident for as long
        // as the worker stayed idle (`bench proxy` read 10–30 KB per idle connection at 2,000,
        // ~3 KB with the purge done). `collect` decides when (not while the worker is busy).
        match decision {
            collect::Collect::Forced => collect::force(),
            // SAFETY: mi_collect only walks this thread's heap (and the OS memory it owns).
            collect::Collect::Normal => unsafe { libmimalloc_sys::mi_collect(false) },
            collect::Collect::None => {}
        }
    }
}

fn pin_to_cpu(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!(cpu, error = %e, "cannot pin worker to its CPU");
    }
}
