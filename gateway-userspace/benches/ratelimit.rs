//! The memory rate limiter's decision cost: ns per decision (a clock read and
//! `ratelimit::decide_memory`: SipHash of layer, window and key, the shard lock, the sliding
//! window arithmetic and the count), for one hot key, for many keys (a working set larger than
//! the CPU caches), for keys new to the store (an insert each), and for one hot key shared by
//! two threads (two workers meeting on one shard lock).
//!
//! `cargo bench -p gateway-userspace --bench ratelimit [-- --json]`; `cargo xtask bench
//! ratelimit` runs it and writes `bench/results/ratelimit.md`. Measures, never asserts (beyond
//! the decisions being admissions). Decisions are timed in batches of [`BATCH`] so that the
//! clock reads around them (tens of ns) do not swamp a decision of tens of ns; the percentiles
//! are over batches (ns per decision within a batch). Each batch is timed twice: the thread's
//! CPU time (`CLOCK_THREAD_CPUTIME_ID`: what a decision costs, not counting the time other
//! processes on a shared machine held the CPU) and wall time (what a caller waits, preemption
//! and lock waits included).

use std::{
    collections::HashMap,
    hint::black_box,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Barrier},
    time::Instant,
};

use gateway_userspace::{
    kv::KvMetrics,
    limits::{Backend, Clock, Key, KeySource, LimitMetrics, LimitState, SystemClock, key::Value},
    ratelimit::{LayerSpec, Window, decide_memory},
};
use serde_json::json;

/// Decisions per timed batch.
const BATCH: usize = 1_000;
/// Distinct keys of the "many keys" case: 100k slots and their map entries, several MB, more
/// than the caches hold.
const MANY_KEYS: usize = 100_000;
/// So high that nothing is ever refused: the cost of deciding, not of refusing.
const LIMIT: u64 = 1_000_000_000;

struct Stats {
    decisions: usize,
    mean_ns: f64,
    p50_ns: f64,
    p99_ns: f64,
    wall_mean_ns: f64,
    wall_p50_ns: f64,
}

/// Per batch: ns per decision, (CPU, wall).
fn stats(per_batch: Vec<(f64, f64)>, decisions: usize) -> Stats {
    let sorted = |f: fn(&(f64, f64)) -> f64| {
        let mut v: Vec<f64> = per_batch.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (cpu, wall) = (sorted(|b| b.0), sorted(|b| b.1));
    let q = |v: &[f64], p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)];
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Stats {
        decisions,
        mean_ns: mean(&cpu),
        p50_ns: q(&cpu, 0.5),
        p99_ns: q(&cpu, 0.99),
        wall_mean_ns: mean(&wall),
        wall_p50_ns: q(&wall, 0.5),
    }
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock id and a valid pointer to a timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn layer() -> LayerSpec {
    LayerSpec {
        name: "per-ip".into(),
        routes: None,
        key: vec![KeySource::Ip],
        ipv6_prefix: 64,
        limit: LIMIT,
        window: Window::Minute,
        backend: Backend::Memory,
        overrides: HashMap::new(),
    }
}

fn state() -> LimitState {
    LimitState::new(Arc::new(SystemClock), Arc::new(LimitMetrics::default()), KvMetrics::default())
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32))
}

/// What the phase does per request and layer: read the clock, decide.
fn decide(state: &LimitState, layer: &LayerSpec, source: &KeySource, addr: IpAddr) -> bool {
    let key = Key { source, value: Value::Ip(addr), consumer: None };
    let now = SystemClock.now_ms();
    decide_memory(state, layer, black_box(&key), layer.limit_for(&key), now).allowed
}

/// `batches` timed batches; `addr(i)` is the key of the i-th decision overall.
fn run(state: &LimitState, batches: usize, addr: impl Fn(usize) -> IpAddr) -> Vec<(f64, f64)> {
    let (layer, source) = (layer(), KeySource::Ip);
    let mut per_batch = Vec::with_capacity(batches);
    for b in 0..batches {
        let (cpu, wall) = (thread_cpu_ns(), Instant::now());
        for i in b * BATCH..(b + 1) * BATCH {
            let allowed = decide(state, &layer, &source, addr(i));
            assert!(allowed, "a decision refused under a limit of {LIMIT}");
        }
        let wall = wall.elapsed().as_nanos() as f64 / BATCH as f64;
        per_batch.push(((thread_cpu_ns() - cpu) as f64 / BATCH as f64, wall));
    }
    per_batch
}

fn main() {
    let json_out = std::env::args().any(|a| a == "--json");
    let mut rows = Vec::new();

    let hot = state();
    run(&hot, 100, |_| ip(1));
    let batches = 2_000;
    rows.push(("one hot key", stats(run(&hot, batches, |_| ip(1)), batches * BATCH)));

    // New keys first (every decision inserts), then the same keys again, round robin.
    let many = state();
    let batches = MANY_KEYS / BATCH;
    rows.push((
        "new keys (each decision inserts one; store empty → 100k keys)",
        stats(run(&many, batches, ip), batches * BATCH),
    ));
    let batches = 2_000;
    rows.push((
        "100k keys, round robin (working set beyond the caches)",
        stats(run(&many, batches, |i| ip(i % MANY_KEYS)), batches * BATCH),
    ));

    // Two workers on one hot key: they meet on its shard lock.
    let shared = Arc::new(state());
    let barrier = Arc::new(Barrier::new(2));
    let batches = 1_000;
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                run(&shared, batches, |_| ip(1))
            })
        })
        .collect();
    let per_batch: Vec<(f64, f64)> = threads.into_iter().flat_map(|t| t.join().expect("bench thread")).collect();
    rows.push(("one hot key, two threads at once", stats(per_batch, 2 * batches * BATCH)));

    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(case, s)| {
                json!({"case": case, "decisions": s.decisions, "mean_ns": s.mean_ns, "p50_ns": s.p50_ns,
                    "p99_ns": s.p99_ns, "wall_mean_ns": s.wall_mean_ns, "wall_p50_ns": s.wall_p50_ns, "batch": BATCH})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("CPU time and wall time per decision, ns; percentiles over batches of {BATCH}.");
        println!("| Case | decisions | CPU mean | CPU p50 | CPU p99 | wall mean | wall p50 |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (case, s) in &rows {
            println!(
                "| {case} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                s.decisions, s.mean_ns, s.p50_ns, s.p99_ns, s.wall_mean_ns, s.wall_p50_ns
            );
        }
    }
}
