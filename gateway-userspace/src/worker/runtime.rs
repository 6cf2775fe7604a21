//! The worker's event loop: a current-thread tokio runtime whose tasks are `!Send`
//! (`LocalRuntime`: `spawn_local` straight onto the runtime's own run queue).
//!
//! Not a `LocalSet` inside a current-thread runtime, as before: there every wake-up of a task
//! went through two schedulers (the task into the LocalSet's queue, the LocalSet's waker into
//! the runtime's), and every turn of the LocalSet polled `block_on`'s future first (the
//! worker's `select!` on the snapshot generation and the shutdown watch: two `Notified` polls,
//! a coop budget and a random branch order). At a fixed rate, where requests arrive one by one
//! and each pays its own wake-ups, that was ~2,300 instructions per request
//! (`cargo xtask bench callgrind --rate`, bench/results/proxy-cpu.md); the runtime now polls
//! `block_on`'s future only when that future itself was woken.

use std::future::Future;

use tokio::runtime::{Builder, LocalOptions};

/// Runs `future` on a new worker runtime until it completes; the tasks it spawned
/// (`spawn_local`) are dropped with the runtime when it returns.
pub(super) fn block_on<F: Future>(future: F) -> std::io::Result<F::Output> {
    let rt = Builder::new_current_thread().enable_all().build_local(LocalOptions::default())?;
    Ok(rt.block_on(future))
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, pin::pin, rc::Rc, task::Context};

    use super::*;

    /// The worker's own future (its `select!` on reloads and shutdown) is polled when it is
    /// woken, not on every wake-up of a connection's task.
    #[test]
    fn block_on_future_is_not_polled_when_only_tasks_wake() {
        let polls = Rc::new(Cell::new(0u32));
        let counted = polls.clone();
        let finished = block_on(async move {
            let task = tokio::task::spawn_local(async {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
            });
            let mut task = pin!(task);
            std::future::poll_fn(|cx: &mut Context<'_>| {
                counted.set(counted.get() + 1);
                task.as_mut().poll(cx).map(|done| done.is_ok())
            })
            .await
        })
        .expect("runtime");
        assert!(finished, "the task panicked");
        // Once to start, once when the task finished (a LocalSet polled it ~100 times).
        assert!(polls.get() <= 3, "polled {} times", polls.get());
    }
}
