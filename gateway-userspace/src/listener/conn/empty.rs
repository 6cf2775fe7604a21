//! Connections that end before a complete request arrived: a TCP handshake and nothing else (a
//! connection flood from real addresses, port scans, a failed TLS handshake, a preconnect never
//! used). They cost an accept and a task each and never meet a phase, so no L7 refusal counts
//! them; `[xdp.feedback]` does, per source (reason `empty_connection`), and blocks a source that
//! keeps doing it in the XDP guard.

use std::{net::SocketAddr, rc::Rc, time::Instant};

use crate::{ebpf::FeedbackReason, request::ConnInfo};

use super::WorkerLocal;

/// Whether a connection saw a request: a request context was made (it counts itself in `active`
/// and stamps `last_active` when it ends), read without a field of its own on `ConnInfo`.
pub(super) struct Served {
    accepted_at: Instant,
}

impl Served {
    pub(super) fn watch(conn: &ConnInfo) -> Served {
        Served { accepted_at: conn.last_active.get() }
    }

    /// Whether a request started on `conn` since `watch`.
    pub(super) fn any(&self, conn: &ConnInfo) -> bool {
        conn.active.get() > 0 || conn.last_active.get() != self.accepted_at
    }
}

/// Counts an empty connection against `peer` (a no-op unless the guard runs with the reason on).
pub(super) fn report(worker: &Rc<WorkerLocal>, peer: SocketAddr) {
    if let Some(xdp) = worker.shared.ebpf.xdp.get() {
        xdp.offenders().report(peer.ip(), FeedbackReason::EmptyConnection);
    }
}
