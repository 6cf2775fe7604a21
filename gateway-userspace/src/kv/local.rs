//! Connections owned by worker threads. The shared connection's I/O runs on the control runtime,
//! so a worker asking it costs two cross-thread wakeups per command (worker → control thread to
//! write, control thread → worker with the answer). A worker that opted in with
//! [`use_worker_connections`] gets its own connection per Redis, driven by its own runtime: the
//! command is written and its answer read by the thread that waits for it.
//!
//! The shared connection stays the source of truth for up/down: while it is down every call fails
//! fast whatever the worker holds, and each (re)connect of it bumps a generation that retires the
//! workers' connections, so they reconnect after an outage too. Until a worker's own connection
//! is ready, its commands use the shared one: a request never waits for a connect.

use std::{
    cell::{Cell, RefCell},
    sync::{Arc, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{Inner, conn::Conn};

/// After a failed connect a worker uses the shared connection this long before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static SLOTS: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
}

/// Called once by each worker thread (a single-threaded runtime): Redis commands issued on this
/// thread from now on use a connection of its own.
pub fn use_worker_connections() {
    ENABLED.set(true);
}

struct Slot {
    owner: Weak<Inner>,
    /// The shared connection's generation this slot belongs to.
    generation: u64,
    state: State,
}

enum State {
    Connecting,
    Ready(Conn),
    Failed { retry_at: Instant },
}

/// This thread's connection to `inner`'s Redis, if it has a current one; otherwise starts
/// connecting (at most one attempt in flight) and returns `None`: use the shared connection.
pub(super) fn get(inner: &Arc<Inner>) -> Option<Conn> {
    if !ENABLED.get() {
        return None;
    }
    let generation = inner.generation.load(Ordering::Acquire);
    SLOTS.with_borrow_mut(|slots| {
        let found = slots.iter_mut().find(|s| std::ptr::eq(s.owner.as_ptr(), Arc::as_ptr(inner)));
        let slot = match found {
            Some(slot) if slot.generation == generation => match &slot.state {
                State::Ready(conn) => return Some(conn.clone()),
                State::Connecting => return None,
                State::Failed { retry_at } if Instant::now() < *retry_at => return None,
                State::Failed { .. } => slot,
            },
            Some(slot) => slot,
            None => {
                // A reload that replaced `[redis]` leaves slots of dropped handles behind.
                slots.retain(|s| s.owner.strong_count() > 0);
                slots.push(Slot { owner: Arc::downgrade(inner), generation, state: State::Connecting });
                slots.last_mut().expect("just pushed")
            }
        };
        slot.generation = generation;
        slot.state = State::Connecting;
        tokio::spawn(connect(Arc::downgrade(inner), generation));
        None
    })
}

/// Runs on the worker's own (single-threaded) runtime, so the slot it fills is this thread's.
async fn connect(weak: Weak<Inner>, generation: u64) {
    let Some(inner) = weak.upgrade() else { return };
    let spec = inner.spec.clone();
    drop(inner);
    let connected = tokio::time::timeout(spec.connect_timeout, super::conn::connect(&spec)).await;
    let state = match connected {
        Ok(Ok(conn)) => State::Ready(conn),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "worker redis connection failed; using the shared one");
            State::Failed { retry_at: Instant::now() + RETRY_AFTER }
        }
        Err(_) => State::Failed { retry_at: Instant::now() + RETRY_AFTER },
    };
    SLOTS.with_borrow_mut(|slots| {
        let slot = slots.iter_mut().find(|s| s.owner.ptr_eq(&weak) && s.generation == generation);
        if let Some(slot) = slot {
            slot.state = state;
        }
    });
}
