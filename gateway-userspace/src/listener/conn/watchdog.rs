//! The connection watchdog: the next deadline of an idle, slow-header or parking connection,
//! and the wait of a parked connection (nothing but its socket) for its next request.

use super::*;

/// Waits, holding only the socket, until the parked connection has bytes to read (true), or its
/// idle time is up or the worker drains (false: close it).
pub(super) async fn wait_parked<I: ClientIo>(
    io: &WatchedIo<I>,
    conn: &ConnInfo,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let Some(socket) = io.inner.park_socket() else { return true };
    let deadline = conn.last_active.get() + limits.idle_timeout;
    loop {
        tokio::select! {
            ready = socket.readable() => return ready.is_ok(),
            () = sleep_until(deadline.into()) => return false,
            changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return false },
        }
    }
}

pub(super) enum Watch {
    Next(Instant),
    SlowHeader,
    Park,
    Idle,
}

pub(super) fn watchdog(conn: &ConnInfo, proto: Proto, limits: &Limits, may_park: bool) -> Watch {
    let now = Instant::now();
    if conn.active.get() > 0 {
        // Requests in flight: their own timeouts apply.
        return Watch::Next(now + limits.idle_timeout);
    }
    if let (Proto::Http1, Some(started)) = (proto, conn.head_started.get()) {
        let deadline = started + limits.header_read_timeout;
        return if now >= deadline { Watch::SlowHeader } else { Watch::Next(deadline) };
    }
    let idle_deadline = conn.last_active.get() + limits.idle_timeout;
    if now >= idle_deadline {
        return Watch::Idle;
    }
    if may_park && !conn.park.get() {
        let park_at = conn.last_active.get() + limits.park_after;
        return if now >= park_at { Watch::Park } else { Watch::Next(park_at.min(idle_deadline)) };
    }
    Watch::Next(idle_deadline)
}
