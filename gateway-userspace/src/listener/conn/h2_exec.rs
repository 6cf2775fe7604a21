//! HTTP/2 streams run inside their connection's task, not in a tokio task each.
//!
//! The connection (`h2_serve::H2Conn`) starts a stream future for every request h2 accepts
//! (`h2_stream::serve_stream`: the request path, then the response body). Spawned with
//! `spawn_local`, each stream cost a task (allocation, `JoinHandle`, its entry in the
//! LocalSet's task list) and every wake-up a round through the LocalSet's queue: the stream task
//! finishes the response and wakes the connection task, which then writes it. Here the
//! connection only queues the stream; `ServeH2` moves it into a slot of its own and polls it
//! beside the connection, in the same wake-up.
//!
//! Slots, not `FuturesUnordered`: each slot keeps its waker (an `Arc` made once) for every
//! stream it holds in turn, so a stream costs no allocation besides its box and no queue
//! operations; at one stream per connection that was ~1,000 instructions per request of
//! `FuturesUnordered`'s task node, ready queue and wakers (`bench/results/h2-profile.md`). A
//! wake-up polls only the streams that were woken (each slot's flag), each at most once per
//! round, and after [`MAX_ROUNDS`] rounds the task yields to the scheduler (one busy stream
//! cannot hold the connection, or the worker, in one poll). Slots are as many as the most
//! streams that ran at once (bounded by `h2_max_concurrent_streams`); a wake-up scans their flags.
//!
//! Lifetimes as for spawned tasks: the connection future ends only once every stream is done
//! with it (h2 holds the connection open while a stream's send half lives), and `ServeH2` keeps
//! polling the streams that remain after that, so a stream finishes as a spawned task did. A
//! connection error resets its streams, which the stream futures see and end on. Only when the
//! connection's future is dropped (the watchdog gives up on an idle connection that did not
//! close, or the worker's runtime goes away) are the streams dropped with it, as HTTP/1's
//! request is.

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Waker,
};

use futures_util::task::{ArcWake, AtomicWaker, waker, waker_ref};

use super::{Context, Future, Pin, Poll, drive::GracefulShutdown};

type Stream = Pin<Box<dyn Future<Output = ()>>>;

/// Rounds of (streams, connection) in one poll while the connection keeps accepting streams
/// or its streams keep waking; past it the task yields (and wakes itself), so a client that
/// keeps sending cannot hold the worker.
const MAX_ROUNDS: usize = 4;

/// Where one connection's new streams wait for that connection's `ServeH2`. The connection
/// pushes them only from inside its poll, after which `ServeH2` empties the queue, so no stream
/// waits in it.
#[derive(Clone, Default)]
pub(super) struct StreamExec(Rc<RefCell<Vec<Stream>>>);

impl StreamExec {
    pub(super) fn push(&self, stream: Stream) {
        self.0.borrow_mut().push(stream);
    }
}

/// The HTTP/2 connection and the streams it started, polled together.
pub(super) struct ServeH2<C: Future> {
    conn: C,
    /// The connection's result, held until its last stream is done.
    ended: Option<C::Output>,
    exec: StreamExec,
    streams: Streams,
    wake: Arc<ConnWake>,
}

/// The streams running, each in a slot.
#[derive(Default)]
struct Streams {
    slots: Vec<Slot>,
    /// Slots without a stream.
    free: Vec<usize>,
}

/// A place for one stream at a time, with the waker its streams are polled with.
struct Slot {
    stream: Option<Stream>,
    flag: Arc<SlotWake>,
    waker: Waker,
}

/// What the connection's wakers share. The connection is polled only when it was woken (by its
/// socket, or by a stream that queued frames for it), a stream only when its own waker fired. A
/// wake-up that comes while `ServeH2::poll` runs is only noted here, not scheduled as another
/// poll of the task: a stream that finishes its response wakes the connection, which is then
/// polled (and writes the response) in the same round.
struct ConnWake {
    /// The connection's waker fired.
    woken: AtomicBool,
    /// Some stream's waker fired (which ones: their slots' flags).
    streams_woken: AtomicBool,
    /// Set while `ServeH2::poll` runs: a wake-up then needs no new poll of the task.
    polling: AtomicBool,
    task: AtomicWaker,
}

impl ConnWake {
    fn wake_task(&self) {
        if !self.polling.load(Ordering::Acquire) {
            self.task.wake();
        }
    }
}

impl ArcWake for ConnWake {
    fn wake_by_ref(wake: &Arc<Self>) {
        wake.woken.store(true, Ordering::Release);
        wake.wake_task();
    }
}

/// One slot's waker.
struct SlotWake {
    woken: AtomicBool,
    conn: Arc<ConnWake>,
}

impl ArcWake for SlotWake {
    fn wake_by_ref(slot: &Arc<Self>) {
        slot.woken.store(true, Ordering::Release);
        slot.conn.streams_woken.store(true, Ordering::Release);
        slot.conn.wake_task();
    }
}

impl<C: Future> ServeH2<C> {
    /// `exec` must be the executor `conn` was built with.
    pub(super) fn new(conn: C, exec: StreamExec) -> Self {
        let wake = Arc::new(ConnWake {
            woken: AtomicBool::new(true),
            streams_woken: AtomicBool::new(false),
            polling: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Self { conn, ended: None, exec, streams: Streams::default(), wake }
    }
}

impl Streams {
    /// Gives each stream the connection started a slot, marked woken so the next round polls it.
    fn start(&mut self, started: &mut Vec<Stream>, wake: &Arc<ConnWake>) {
        if started.is_empty() {
            return;
        }
        for stream in started.drain(..) {
            let at = match self.free.pop() {
                Some(at) => at,
                None => {
                    let flag = Arc::new(SlotWake { woken: AtomicBool::new(false), conn: Arc::clone(wake) });
                    let waker = waker(Arc::clone(&flag));
                    self.slots.push(Slot { stream: None, flag, waker });
                    self.slots.len() - 1
                }
            };
            let slot = &mut self.slots[at];
            slot.stream = Some(stream);
            slot.flag.woken.store(true, Ordering::Release);
        }
        wake.streams_woken.store(true, Ordering::Release);
    }

    /// Polls each stream whose waker fired, once; frees the slots of those that finished.
    fn poll(&mut self, wake: &ConnWake) {
        if !wake.streams_woken.swap(false, Ordering::AcqRel) {
            return;
        }
        for (at, slot) in self.slots.iter_mut().enumerate() {
            let Some(stream) = slot.stream.as_mut() else { continue };
            if !slot.flag.woken.swap(false, Ordering::AcqRel) {
                continue;
            }
            if stream.as_mut().poll(&mut Context::from_waker(&slot.waker)).is_ready() {
                slot.stream = None;
                self.free.push(at);
            }
        }
    }

    fn running(&self) -> bool {
        self.free.len() < self.slots.len()
    }
}

// The connection's result is only stored, never pinned.
impl<C: Future + Unpin> Unpin for ServeH2<C> {}

impl<C: Future + Unpin> Future for ServeH2<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = self.get_mut();
        this.wake.task.register(cx.waker());
        this.wake.polling.store(true, Ordering::Release);
        let conn_waker = waker_ref(&this.wake);
        let mut conn_cx = Context::from_waker(&conn_waker);
        for round in 1.. {
            // Streams first: a response a stream finishes here is written by the connection's
            // poll just below, in this same wake-up.
            this.streams.poll(&this.wake);
            if this.ended.is_none()
                && this.wake.woken.swap(false, Ordering::AcqRel)
                && let Poll::Ready(out) = Pin::new(&mut this.conn).poll(&mut conn_cx)
            {
                this.ended = Some(out);
            }
            let mut started = this.exec.0.borrow_mut();
            // Another round when the connection started streams, or a stream (or the
            // connection itself) was woken during this one.
            let conn_woken = this.ended.is_none() && this.wake.woken.load(Ordering::Acquire);
            if started.is_empty() && !conn_woken && !this.wake.streams_woken.load(Ordering::Acquire) {
                break;
            }
            this.streams.start(&mut started, &this.wake);
            if round == MAX_ROUNDS {
                this.wake.polling.store(false, Ordering::Release);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        this.wake.polling.store(false, Ordering::Release);
        if (this.wake.woken.load(Ordering::Acquire) && this.ended.is_none())
            || this.wake.streams_woken.load(Ordering::Acquire)
        {
            // Woken from another thread between the last round and now.
            cx.waker().wake_by_ref();
        }
        if !this.streams.running()
            && let Some(out) = this.ended.take()
        {
            return Poll::Ready(out);
        }
        Poll::Pending
    }
}

impl<C: Future + GracefulShutdown + Unpin> GracefulShutdown for ServeH2<C> {
    fn shutdown_gracefully(self: Pin<&mut Self>) {
        let this = self.get_mut();
        Pin::new(&mut this.conn).shutdown_gracefully();
        // h2 queues the GOAWAY for its next poll without waking the connection.
        this.wake.woken.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, sync::atomic::AtomicUsize, task::Waker};

    use futures_util::task::waker;

    use super::*;

    /// What the fake connection and the test share: streams for it to start on its next poll
    /// (as the connection does when h2 accepts a request), whether it has ended, its polls, and the
    /// waker of its last poll (a socket or a stream that queued a frame would wake it).
    #[derive(Default)]
    struct Shared {
        start: RefCell<Vec<Stream>>,
        done: Cell<bool>,
        polls: Cell<usize>,
        waker: RefCell<Option<Waker>>,
    }

    impl Shared {
        fn wake_conn(&self) {
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// Stands in for the HTTP/2 connection.
    struct FakeConn {
        exec: StreamExec,
        shared: Rc<Shared>,
    }

    impl Future for FakeConn {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let shared = &self.shared;
            shared.polls.set(shared.polls.get() + 1);
            *shared.waker.borrow_mut() = Some(cx.waker().clone());
            for stream in shared.start.borrow_mut().drain(..) {
                self.exec.push(stream);
            }
            if shared.done.get() { Poll::Ready(()) } else { Poll::Pending }
        }
    }

    impl GracefulShutdown for FakeConn {
        fn shutdown_gracefully(self: Pin<&mut Self>) {
            // Like h2: the GOAWAY goes out on the next poll, and nothing wakes the connection.
            self.shared.done.set(true);
        }
    }

    fn serve() -> (ServeH2<FakeConn>, Rc<Shared>) {
        let exec = StreamExec::default();
        let shared = Rc::new(Shared::default());
        (ServeH2::new(FakeConn { exec: exec.clone(), shared: Rc::clone(&shared) }, exec), shared)
    }

    struct CountWakes(AtomicUsize);
    impl ArcWake for CountWakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Waker, Arc<CountWakes>) {
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        (waker(Arc::clone(&wakes)), wakes)
    }

    fn poll(serve: &mut ServeH2<FakeConn>, waker: &Waker) -> Poll<()> {
        Pin::new(serve).poll(&mut Context::from_waker(waker))
    }

    /// Opens for the streams that wait on it.
    #[derive(Default)]
    struct Gate {
        open: Cell<bool>,
        waiting: RefCell<Vec<Waker>>,
    }

    impl Gate {
        fn open(&self) {
            self.open.set(true);
            self.waiting.borrow_mut().drain(..).for_each(Waker::wake);
        }
    }

    /// A stream that waits until `gate` opens, then answers (wakes the connection) and ends.
    fn gated(gate: &Rc<Gate>, shared: &Rc<Shared>, finished: &Rc<Cell<bool>>) -> Stream {
        let (gate, shared, finished) = (Rc::clone(gate), Rc::clone(shared), Rc::clone(finished));
        Box::pin(futures_util::future::poll_fn(move |cx| {
            if !gate.open.get() {
                gate.waiting.borrow_mut().push(cx.waker().clone());
                return Poll::Pending;
            }
            shared.wake_conn();
            finished.set(true);
            Poll::Ready(())
        }))
    }

    #[test]
    fn a_stream_runs_in_the_wake_up_that_started_it_and_its_answer_is_written_in_it_too() {
        let (mut serve, shared) = serve();
        let (open, finished) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        open.open();
        shared.start.borrow_mut().push(gated(&open, &shared, &finished));
        let (waker, wakes) = counting();
        assert!(poll(&mut serve, &waker).is_pending());
        assert!(finished.get(), "the stream was not polled in the wake-up that started it");
        assert_eq!(shared.polls.get(), 2, "the connection was not polled again for the stream's answer");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "the task was scheduled once more for nothing");
    }

    #[test]
    fn a_wake_up_for_a_stream_alone_does_not_poll_the_connection() {
        let (mut serve, shared) = serve();
        let (gate, finished) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        let idle = Rc::new(Gate::default());
        shared.start.borrow_mut().extend([gated(&gate, &shared, &finished), gated(&idle, &shared, &finished)]);
        assert!(poll(&mut serve, Waker::noop()).is_pending());
        assert_eq!(shared.polls.get(), 1);
        // A stream wakes (its upstream answered) and does not answer yet.
        gate.waiting.borrow_mut().drain(..).for_each(Waker::wake);
        assert!(poll(&mut serve, Waker::noop()).is_pending());
        assert_eq!(shared.polls.get(), 1);
    }

    #[test]
    fn streams_left_when_the_connection_ends_finish_before_it_does() {
        let (mut serve, shared) = serve();
        let (gate, finished) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        shared.start.borrow_mut().push(gated(&gate, &shared, &finished));
        assert!(poll(&mut serve, Waker::noop()).is_pending());
        shared.done.set(true);
        shared.wake_conn();
        assert!(poll(&mut serve, Waker::noop()).is_pending(), "ended with a stream still running");
        gate.open();
        assert!(poll(&mut serve, Waker::noop()).is_ready());
        assert!(finished.get());
    }

    #[test]
    fn a_graceful_shutdown_polls_the_connection_without_a_wake_up() {
        let (mut serve, shared) = serve();
        assert!(poll(&mut serve, Waker::noop()).is_pending());
        Pin::new(&mut serve).shutdown_gracefully();
        assert!(poll(&mut serve, Waker::noop()).is_ready(), "the connection was not polled to send its GOAWAY");
        assert_eq!(shared.polls.get(), 2);
    }

    #[test]
    fn a_waiting_stream_does_not_hold_up_the_others() {
        let (mut serve, shared) = serve();
        let (closed, stuck) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        let (open, finished) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        open.open();
        shared.start.borrow_mut().extend([gated(&closed, &shared, &stuck), gated(&open, &shared, &finished)]);
        assert!(poll(&mut serve, Waker::noop()).is_pending());
        assert!(finished.get() && !stuck.get());
    }

    #[test]
    fn a_finished_stream_s_slot_and_waker_serve_the_next_stream() {
        let (mut serve, shared) = serve();
        let (open, finished) = (Rc::new(Gate::default()), Rc::new(Cell::new(false)));
        open.open();
        for _ in 0..3 {
            finished.set(false);
            shared.start.borrow_mut().push(gated(&open, &shared, &finished));
            shared.wake_conn();
            assert!(poll(&mut serve, Waker::noop()).is_pending());
            assert!(finished.get());
        }
        assert_eq!(serve.streams.slots.len(), 1, "a stream that ran alone took a new slot");
    }

    #[test]
    fn a_stream_that_keeps_waking_itself_yields_to_the_worker() {
        let (mut serve, shared) = serve();
        let polls = Rc::new(Cell::new(0));
        let counted = Rc::clone(&polls);
        shared.start.borrow_mut().push(Box::pin(futures_util::future::poll_fn(move |cx| {
            counted.set(counted.get() + 1);
            // A bounded number of times, so that a missing bound fails here instead of hanging.
            if counted.get() < 100 {
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        })));
        let (waker, wakes) = counting();
        assert!(poll(&mut serve, &waker).is_pending());
        // Started in the first round, polled once in each of the others.
        assert_eq!(polls.get(), MAX_ROUNDS - 1);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "yielded without asking to be polled again");
    }

    #[test]
    fn a_connection_that_keeps_starting_streams_yields_to_the_worker() {
        /// A request whose answer comes with the next request (as on a busy connection).
        struct Restart(Rc<Shared>);
        impl Future for Restart {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                self.0.start.borrow_mut().push(Box::pin(Restart(Rc::clone(&self.0))));
                self.0.wake_conn();
                Poll::Ready(())
            }
        }
        let (mut serve, shared) = serve();
        shared.start.borrow_mut().push(Box::pin(Restart(Rc::clone(&shared))));
        let (waker, wakes) = counting();
        assert!(poll(&mut serve, &waker).is_pending());
        assert_eq!(shared.polls.get(), MAX_ROUNDS);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "yielded without asking to be polled again");
    }
}
