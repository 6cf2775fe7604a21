//! Client-facing listeners: a worker's accept loops, and serving one connection (protocol
//! choice, limits, idle and slow-header watchdog, graceful shutdown).

mod conn;
pub mod handover;
mod local;
pub mod occupant;
mod parse_refusal;

use std::{io, rc::Rc, time::Duration};

use tokio::{net::TcpListener, sync::watch};

pub use conn::{Proto, h1_builder, serve_connection};
pub use local::WorkerLocal;

use crate::{
    config::ListenerSpec,
    metrics::{LabelValue, Labels},
};

/// A listener's accept loop on one worker.
pub async fn accept_loop(
    listener: TcpListener,
    spec: ListenerSpec,
    worker: Rc<WorkerLocal>,
    shutdown: watch::Receiver<bool>,
) {
    let labels = Labels([("listener", LabelValue::Shared(spec.name.clone()))]);
    let accepted = worker.metrics.shared().connections_total.get_or_create(&labels).clone();
    let worker_label = Labels([("worker", LabelValue::Int(worker.id as u64))]);
    let by_worker = worker.metrics.shared().worker_connections.get_or_create(&worker_label).clone();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                accepted.inc();
                by_worker.inc();
                let worker = worker.clone();
                let spec = spec.clone();
                let shutdown = shutdown.clone();
                // The future itself, not an async block around it: a block would hold the
                // arguments beside the future they are moved into, for the connection's life.
                tokio::task::spawn_local(conn::serve_tcp(stream, peer, spec, worker, shutdown));
            }
            Err(e) => accept_error(&e).await,
        }
    }
}

/// Out of file descriptors or memory: back off instead of spinning; the connection waits in the
/// backlog. Other errors (a client reset while queued) are per-connection and ignored.
async fn accept_error(e: &io::Error) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
            tracing::error!(error = %e, "accept failed: out of resources; backing off");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        _ => tracing::debug!(error = %e, "accept failed"),
    }
}
