//! The worker's event loop: a current-thread tokio runtime whose tasks are `!Send`
//! (`LocalRuntime`: `spawn_local` straight onto the runtime's own run queue).
//!
//! Not a `LocalSet` inside a current-thread runtime, as before: there every wake-up of a task
//! went through two schedulers (the task into the LocalSet's queue, the LocalSet's waker into
//! the runtime's), and every turn of the LocalSet polled `block_on`'s future first (the
//! worker's `select!` on the snapshot generation and the shutdown watch: two `Notified` polls,
//! a coop budget and a random branch order). At a fixed rate, where requests arrive one by one
//! and each pays its own wake-ups, that was ~1,000 instructions per request
//! (`cargo xtask bench callgrind --rate`, bench/results/proxy-cpu.md); the runtime now polls
//! `block_on`'s future only when that future itself was woken.

use tokio::runtime::{Builder, LocalOptions, LocalRuntime};

pub(super) fn build() -> std::io::Result<LocalRuntime> {
    Builder::new_current_thread().enable_all().build_local(LocalOptions::default())
}
