//! `ConnWake`: how events on a connection (a head starts, the last request ends, a handshake
//! phase asks it to close) wake the task that drives the connection.
//!
//! A connection is one task on one thread, so `tokio::sync::Notify` (a mutex-guarded waiter
//! list, made for many tasks on many threads) did more than needed: polling its `Notified`
//! on every wake-up of the connection cost ~200 instructions, twice per HTTP/2 request. Here a
//! poll is a flag read and a waker comparison.

use std::{
    cell::Cell,
    task::{Context, Poll, Waker},
};

/// A wake-up for the one task driving a connection. Like `Notify::notify_one`, a `notify`
/// while the task is not waiting is kept for its next poll.
#[derive(Default)]
pub struct ConnWake {
    notified: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl ConnWake {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Ready once after each `notify`; otherwise keeps `cx`'s waker to wake.
    pub fn poll_notified(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.notified.replace(false) {
            return Poll::Ready(());
        }
        let waker = match self.waker.take() {
            Some(kept) if kept.will_wake(cx.waker()) => kept,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_notify_wakes_the_waiting_task_once_and_one_before_waiting_is_kept() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let wake = ConnWake::default();
        assert!(wake.poll_notified(&mut cx).is_pending());
        wake.notify();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(wake.poll_notified(&mut cx).is_ready());
        assert!(wake.poll_notified(&mut cx).is_pending(), "one notify, one wake-up");
        // Not waiting: kept for the next poll, which is ready without a wake.
        let idle = ConnWake::default();
        idle.notify();
        assert!(idle.poll_notified(&mut cx).is_ready());
        assert!(idle.poll_notified(&mut cx).is_pending());
    }
}
