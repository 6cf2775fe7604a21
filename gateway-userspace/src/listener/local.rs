//! A worker's thread-local context: what every connection and request on that worker shares
//! (its snapshot handle, upstream pool, metric shards, connection counts). The worker module
//! creates it; connections only read it.

use std::{
    cell::{Cell, RefCell},
    rc::Rc,
    sync::Arc,
};

use crate::{
    metrics::WorkerMetrics,
    proxy::UpstreamPool,
    snapshot::{LocalSnapshot, SnapshotArc},
    state::SharedState,
};

/// A worker's thread-local context, shared by its tasks.
pub struct WorkerLocal {
    pub id: usize,
    pub shared: Arc<SharedState>,
    pub pool: Rc<UpstreamPool>,
    pub metrics: Rc<WorkerMetrics>,
    pub tls_metrics: crate::tls::WorkerTlsMetrics,
    cached: RefCell<Option<LocalSnapshot>>,
    pub open_connections: Cell<usize>,
    /// Connections parked or closed since the allocator last returned free pages (see
    /// `sweep_pool`).
    pub released_connections: Cell<u64>,
    /// Requests begun on this worker, ever (counted by the connections' service): tells
    /// `sweep_pool` a busy worker from an idle one.
    pub requests_started: Cell<u64>,
}

impl WorkerLocal {
    pub fn new(id: usize, shared: Arc<SharedState>) -> Self {
        WorkerLocal {
            id,
            pool: UpstreamPool::new(),
            metrics: Rc::new(WorkerMetrics::new(shared.metrics.clone())),
            tls_metrics: crate::tls::WorkerTlsMetrics::new(shared.parts.tls().metrics.clone()),
            shared,
            cached: RefCell::new(None),
            open_connections: Cell::new(0),
            released_connections: Cell::new(0),
            requests_started: Cell::new(0),
        }
    }

    /// The current snapshot. Re-wrapped only when a reload swapped it, so per request this is
    /// one arc-swap load and a non-atomic `Rc` clone.
    pub fn snapshot(&self) -> LocalSnapshot {
        let current = self.shared.snapshot.load();
        let mut cached = self.cached.borrow_mut();
        match cached.as_ref() {
            Some(s) if Arc::ptr_eq(&s.0, &current) => s.clone(),
            _ => {
                let fresh = Rc::new(SnapshotArc(arc_swap::Guard::into_inner(current)));
                *cached = Some(fresh.clone());
                fresh
            }
        }
    }
}
