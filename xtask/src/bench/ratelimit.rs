//! `cargo xtask bench ratelimit`: what a rate-limit decision costs. Two parts, one report
//! (`bench/results/ratelimit.md`):
//!
//! 1. ns per decision of the memory backend in process (`cargo bench --bench ratelimit`, a
//!    release build of gateway-userspace's `benches/ratelimit.rs`): the figure for the goal
//!    "the memory backend adds under 1 µs per decision".
//! 2. One gatewayd, three routes to the same nginx upstream: `/open` (no limit), `/mem` (a per-IP
//!    limit in memory) and `/redis` (the same limit in Redis, a redis-server started here on the
//!    load CPUs). The limits are so high that nothing is refused: the benchmark measures the
//!    decision, not 429s (any non-2xx answer fails a run, and gatewayd's counters must show no
//!    `limited` or `error` decision). Highest rate (wrk) and latency at a fixed rate (oha),
//!    interleaved. Around every run, Redis's `INFO commandstats` and gatewayd's `/metrics` are
//!    read: Redis round trips per request, from Redis's side and from gatewayd's.

use std::{collections::BTreeMap, fs, net::SocketAddr, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use super::{
    Options,
    cpus::CpuList,
    free_port,
    harness::{Harness, Measurable, Ready, fixed_rate, release_gatewayd},
    http,
    load::{self, Oha, OhaResult, Wrk},
    procfs::Tree,
    report::{self, Report, median, num},
};
use crate::cmd::{capture, cargo};

const WARMUP: Duration = Duration::from_secs(2);
/// Requests still in flight when a load generator exits are decided a moment later: wait for
/// them before reading the counters.
const SETTLE: Duration = Duration::from_millis(300);
/// Per window: never reached, so every decision admits.
const LIMIT: u64 = 1_000_000_000;
/// The goal for the memory backend.
const MEMORY_GOAL_NS: f64 = 1_000.0;
/// Commands a decision's Lua script runs inside Redis: counted by `INFO commandstats`, but not
/// round trips (the script is one).
const SCRIPT_INTERNAL: &[&str] = &["get", "incr", "pexpire"];
/// Commands that are not caused by requests: gatewayd's health ping (every second) and our own
/// `INFO`.
const NOT_PER_REQUEST: &[&str] = &["ping", "info"];

const OPEN: usize = 0;
const MEM: usize = 1;
const REDIS: usize = 2;

#[derive(Deserialize)]
struct MicroRow {
    case: String,
    decisions: u64,
    mean_ns: f64,
    p50_ns: f64,
    p99_ns: f64,
    wall_mean_ns: f64,
    wall_p50_ns: f64,
    batch: u64,
}

struct Route {
    /// The route's name in gatewayd's config (the `route` metric label).
    config: &'static str,
    label: &'static str,
    url: String,
    tree: Tree,
}

impl Measurable for Route {
    fn tree(&self) -> Tree {
        self.tree
    }
}

struct Run<T> {
    result: T,
    cpu_us_per_request: f64,
    background: f64,
    counters: Counters,
}

/// What gatewayd and Redis counted during one run.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counters {
    /// gatewayd's requests on the run's route, whatever their outcome (client-aborted ones
    /// included: a request whose client left while it waited for Redis still cost a round trip).
    requests: f64,
    /// gatewayd's decisions on the run's route, by result.
    allowed: f64,
    limited: f64,
    errors: f64,
    /// gatewayd's `ratelimit` Redis calls (`gateway_redis_command_duration_seconds`).
    script_calls: f64,
    script_seconds: f64,
    /// Redis's own count of calls, by command.
    redis: BTreeMap<String, u64>,
}

impl Counters {
    /// Client round trips a request caused, by Redis's count: every command but those the
    /// script runs inside Redis and those no request causes.
    fn round_trips(&self) -> u64 {
        self.redis
            .iter()
            .filter(|(c, _)| !SCRIPT_INTERNAL.contains(&c.as_str()) && !NOT_PER_REQUEST.contains(&c.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    fn decisions(&self) -> f64 {
        self.allowed + self.limited + self.errors
    }

    /// `cmd=n` for every command Redis counted (`–` for none).
    fn redis_commands(&self) -> String {
        let parts: Vec<String> = self.redis.iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c}={n}")).collect();
        if parts.is_empty() { "–".to_owned() } else { parts.join(", ") }
    }
}

/// gatewayd's metrics text and Redis's command counts at one moment.
struct Snapshot {
    metrics: String,
    redis: BTreeMap<String, u64>,
}

impl Snapshot {
    fn take(metrics: SocketAddr, redis_port: u16) -> Result<Self> {
        Ok(Snapshot { metrics: scrape(metrics)?, redis: commandstats(redis_port)? })
    }

    /// What happened on `route` between `self` and `later`.
    fn until(&self, later: &Snapshot, route: &str) -> Counters {
        let delta = |name: &str, labels: &[(&str, &str)]| {
            metric_sum(&later.metrics, name, labels) - metric_sum(&self.metrics, name, labels)
        };
        let decisions = |result| delta("gateway_ratelimit_decisions_total", &[("route", route), ("result", result)]);
        let redis = later
            .redis
            .iter()
            .map(|(c, n)| (c.clone(), n.saturating_sub(self.redis.get(c).copied().unwrap_or(0))))
            .collect();
        Counters {
            requests: delta("gateway_http_requests_total", &[("route", route)]),
            allowed: decisions("allowed"),
            limited: decisions("limited"),
            errors: decisions("error"),
            script_calls: delta("gateway_redis_command_duration_seconds_count", &[("command", "ratelimit")]),
            script_seconds: delta("gateway_redis_command_duration_seconds_sum", &[("command", "ratelimit")]),
            redis,
        }
    }
}

pub fn run(opts: &Options) -> Result<()> {
    load::ensure_oha()?;
    let micro = micro()?;
    let gatewayd = release_gatewayd()?;
    let mut h = Harness::new("ratelimit")?;
    let workers = h.plan.subject.len();
    let (load_cpus, dir) = (h.plan.load.clone(), h.dir.clone());
    let machine = h.machine.clone();
    let redis_version = report::version_of(Command::new("redis-server").arg("--version"));

    let (upstream_addr, _) = h.start_upstream()?;

    let redis_port = free_port()?.port();
    let ping = move || -> Result<()> {
        let pong = redis_cli(redis_port).arg("PING").output()?;
        if pong.stdout.starts_with(b"PONG") { Ok(()) } else { bail!("redis-server did not answer PING") }
    };
    let redis_cmd = redis_server(&load_cpus, redis_port, &dir.join("redis"))?;
    h.start_ready("redis-server", redis_cmd, Ready::Probe(Box::new(ping)))?;

    let (gw_addr, metrics_addr) = (free_port()?, free_port()?);
    let gw_conf = gatewayd_conf(gw_addr, metrics_addr, upstream_addr, redis_port, workers);
    let gw = h.start_gatewayd("gatewayd", &gatewayd, gw_conf, Ready::Http(gw_addr, "/open"))?;
    sanity_check(gw_addr, redis_port)?;

    let route = |config, label, path: &str| Route { config, label, url: format!("http://{gw_addr}{path}"), tree: gw };
    let routes = [
        route("open", "/open (no limit)", "/open"),
        route("mem", "/mem (memory backend)", "/mem"),
        route("redis", "/redis (Redis backend)", "/redis"),
    ];
    let warm = Wrk { connections: opts.connections, duration: WARMUP };
    for r in &routes {
        warm.run(&load_cpus, &r.url)?;
    }
    let counters = Counted { metrics: metrics_addr, redis_port, gw };
    let wrk = Wrk { connections: opts.connections, duration: opts.duration(10) };
    let max_runs = counters.runs(&mut h, opts.reps, &routes, |cpus, r| wrk.run(cpus, &r.url), |w| w.requests)?;
    let max_rps: Vec<f64> =
        max_runs.iter().map(|runs| median(&runs.iter().map(|r| r.result.rps).collect::<Vec<_>>())).collect();
    let rate = fixed_rate(&max_rps)?;
    let oha = Oha { connections: opts.connections, duration: opts.duration(10), rate };
    let rate_runs = counters.runs(&mut h, opts.reps, &routes, |cpus, r| oha.run(cpus, &r.url), |o| o.requests)?;
    let metrics = scrape(metrics_addr)?;
    let load_after = h.loadavg();
    let started = h.commands.join("\n");
    let gw_conf = h.config_text("gatewayd.toml").to_owned();
    let plan = h.plan.clone();
    h.stop()?;

    // Nothing may have been refused or left to the fail mode: otherwise the runs measured
    // something else than the decision.
    for route in ["mem", "redis"] {
        for result in ["limited", "error"] {
            let n = metric_sum(&metrics, "gateway_ratelimit_decisions_total", &[("route", route), ("result", result)]);
            if n > 0.0 {
                bail!("route {route}: {n} decisions were `{result}`; the benchmark must not refuse");
            }
        }
    }
    let refused = metric_sum(&metrics, "gateway_http_refusals_total", &[("reason", "rate_limited")])
        + metric_sum(&metrics, "gateway_http_refusals_total", &[("reason", "ratelimit_unavailable")]);
    if refused > 0.0 {
        bail!("gatewayd refused {refused} requests with 429 or 503 during the benchmark");
    }
    let total_decisions =
        |route| metric_sum(&metrics, "gateway_ratelimit_decisions_total", &[("route", route), ("result", "allowed")]);

    let mut rep = Report::new("Benchmark: ratelimit");
    rep.paragraph(&format!(
        "Written by `cargo xtask bench ratelimit` on {} (gatewayd {}, {redis_version}). Machine: {} ({} CPUs, {}), \
         kernel {}; load average {} at the start, {} at the end. A shared machine: the HTTP numbers are \
         indicative (see the spread and the background share in the raw runs); the in-process figures are \
         the precise ones.",
        machine.date,
        report::git_revision(),
        machine.cpu_model,
        machine.cpus,
        machine.memory,
        machine.kernel,
        machine.loadavg,
        load_after,
    ));

    // Goals.
    let worst_memory = micro.iter().map(|m| m.mean_ns).fold(f64::NAN, f64::max);
    let redis_ratios: Vec<f64> = max_runs[REDIS]
        .iter()
        .map(|r| &r.counters)
        .chain(rate_runs[REDIS].iter().map(|r| &r.counters))
        .map(|c| c.round_trips() as f64 / c.requests)
        .collect();
    let worst_redis = redis_ratios.iter().copied().fold(f64::NAN, f64::max);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    rep.heading("Goals");
    rep.table(
        &["goal", "measured", "verdict"],
        &[
            vec![
                "memory backend: under 1 µs per decision (in process)".into(),
                format!(
                    "{} ns CPU per decision (mean) in the worst case ({})",
                    num(worst_memory, 0),
                    micro
                        .iter()
                        .map(|m| format!("{}: {} ns", m.case, num(m.mean_ns, 0)))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                verdict(worst_memory < MEMORY_GOAL_NS).into(),
            ],
            vec![
                "Redis backend: one round trip per request at most".into(),
                format!(
                    "{} round trips per request in the worst of {} runs (median {}), by Redis's own counters",
                    num(worst_redis, 4),
                    redis_ratios.len(),
                    num(median(&redis_ratios), 4)
                ),
                verdict(worst_redis <= 1.0).into(),
            ],
        ],
    );

    rep.heading("Decision cost in process (memory backend)");
    rep.paragraph(&format!(
        "`benches/ratelimit.rs`: a clock read and `LimitState::decide_memory` (SipHash of layer, window and \
         key; the shard lock; the sliding-window arithmetic; the count), per-IP key, limit {LIMIT} per minute \
         (never refused). Timed in batches of {} decisions (the clock reads around a single decision would \
         cost as much as the decision); percentiles are over batches. CPU = the thread's CPU time \
         (`CLOCK_THREAD_CPUTIME_ID`): the decision's cost, which the goal is about, without the time \
         other processes held the CPU; wall = what a caller waits, preemption and lock waits included (on \
         this shared machine the wall mean mostly measures the neighbours; compare the p50s). Not included: \
         finding the key in the request, the decision counter and the `RateLimit` response headers; the \
         HTTP part below includes everything.",
        micro.first().map_or(0, |m| m.batch)
    ));
    let rows: Vec<Vec<String>> = micro
        .iter()
        .map(|m| {
            vec![
                m.case.clone(),
                m.decisions.to_string(),
                num(m.mean_ns, 1),
                num(m.p50_ns, 1),
                num(m.p99_ns, 1),
                num(m.wall_mean_ns, 1),
                num(m.wall_p50_ns, 1),
            ]
        })
        .collect();
    rep.table(&["case", "decisions", "CPU ns mean", "CPU ns p50", "CPU ns p99", "wall ns mean", "wall ns p50"], &rows);

    rep.heading("Limited vs open routes (HTTP, one gatewayd)");
    let wrk_rps = |i: usize| max_runs[i].iter().map(|r| r.result.rps).collect::<Vec<_>>();
    let cpu_max = |i: usize| max_runs[i].iter().map(|r| r.cpu_us_per_request).collect::<Vec<_>>();
    let cpu_rate = |i: usize| rate_runs[i].iter().map(|r| r.cpu_us_per_request).collect::<Vec<_>>();
    let lat = |i: usize, f: fn(&OhaResult) -> f64| rate_runs[i].iter().map(|r| f(&r.result) * 1e3).collect::<Vec<_>>();
    let line = |label: String, v: &dyn Fn(usize) -> Vec<f64>, digits: usize| {
        let (open, mem, redis) = (v(OPEN), v(MEM), v(REDIS));
        vec![
            label,
            spread(&open, digits),
            spread(&mem, digits),
            spread(&redis, digits),
            signed(median(&mem) - median(&open), digits.max(1)),
            signed(median(&redis) - median(&open), digits.max(1)),
        ]
    };
    let table = vec![
        line("max requests/s (wrk)".into(), &wrk_rps, 0),
        line("gatewayd CPU µs/request at max rate".into(), &cpu_max, 1),
        line(format!("p50 latency at {rate} req/s (ms)"), &|i| lat(i, |o| o.p50), 3),
        line(format!("p99 latency at {rate} req/s (ms)"), &|i| lat(i, |o| o.p99), 3),
        line(format!("p99.9 latency at {rate} req/s (ms)"), &|i| lat(i, |o| o.p999), 3),
        line(format!("gatewayd CPU µs/request at {rate} req/s"), &cpu_rate, 1),
    ];
    rep.table(
        &["median (min–max)", routes[OPEN].label, routes[MEM].label, routes[REDIS].label, "mem − open", "redis − open"],
        &table,
    );
    let all_background: Vec<f64> = max_runs
        .iter()
        .flatten()
        .map(|r| r.background)
        .chain(rate_runs.iter().flatten().map(|r| r.background))
        .collect();
    rep.paragraph(&format!(
        "Medians of {} interleaved runs per route (min–max in brackets), {} s each, {} connections, {workers} \
         gatewayd worker(s) pinned to CPUs {} (load generators, the upstream nginx and redis-server on {}). The \
         last two columns are the differences of the medians: \"added\" latency and CPU of a limited route over \
         the open one. Other processes used a median {}% of gatewayd's CPUs during the runs; differences smaller \
         than the min–max spread of the open route are noise.",
        opts.reps,
        opts.duration(10).as_secs(),
        opts.connections,
        plan.subject,
        plan.load,
        num(median(&all_background) * 100.0, 0)
    ));
    let short: Vec<String> = rate_runs
        .iter()
        .zip(&routes)
        .flat_map(|(runs, r)| runs.iter().enumerate().map(move |(i, run)| (i, r, run)))
        .filter(|(_, _, run)| run.result.rps < 0.95 * rate as f64)
        .map(|(i, r, run)| format!("{} (run {}: {} req/s)", r.config, i + 1, num(run.result.rps, 0)))
        .collect();
    if !short.is_empty() {
        rep.paragraph(&format!(
            "**Warning:** some runs did not sustain the fixed rate of {rate} req/s: {}. Their latency is that \
             of an overloaded server.",
            short.join(", ")
        ));
    }

    rep.heading("Redis round trips per request");
    rep.paragraph(&format!(
        "Around every `/redis` run: Redis's `INFO commandstats` (calls per command) and gatewayd's `/metrics` \
         (decisions on the route; `gateway_redis_command_duration_seconds{{command=\"ratelimit\"}}`, one per \
         script call). Round trips = the commands clients sent, i.e. every counted command except those the \
         decision's Lua script runs inside Redis ({}) and those no request causes (gatewayd's health `ping` \
         every second, our `info`). Requests = gatewayd's `gateway_http_requests_total` on the route, \
         client-aborted ones included: when a load generator stops, the requests then waiting for Redis \
         have cost their round trip but are never decided (the client's count misses them too), which is \
         why decisions can fall a few short of round trips under wrk.",
        SCRIPT_INTERNAL.join(", ")
    ));
    let round_trip_row = |run: String, client: u64, c: &Counters| {
        vec![
            run,
            client.to_string(),
            num(c.requests, 0),
            num(c.decisions(), 0),
            c.redis_commands(),
            c.round_trips().to_string(),
            num(c.round_trips() as f64 / c.requests, 4),
            num(c.script_calls / c.decisions(), 4),
            num(c.script_seconds / c.script_calls * 1e6, 0),
        ]
    };
    let rows: Vec<Vec<String>> = (max_runs[REDIS].iter().enumerate())
        .map(|(i, r)| round_trip_row(format!("wrk {}", i + 1), r.result.requests, &r.counters))
        .chain(
            (rate_runs[REDIS].iter().enumerate())
                .map(|(i, r)| round_trip_row(format!("oha {}", i + 1), r.result.requests, &r.counters)),
        )
        .collect();
    rep.table(
        &[
            "run",
            "requests (client)",
            "requests (gatewayd)",
            "decisions (gatewayd)",
            "Redis calls by command",
            "round trips",
            "round trips / request",
            "gatewayd script calls / decision",
            "mean round trip µs (gatewayd)",
        ],
        &rows,
    );
    rep.paragraph(&format!(
        "Whole run, warm-ups included: {} decisions on `/mem`, {} on `/redis`, none `limited` or `error` \
         (checked; any non-2xx answer also fails a run).",
        num(total_decisions("mem"), 0),
        num(total_decisions("redis"), 0)
    ));

    rep.heading("Raw runs: highest rate (wrk, closed loop)");
    let rows: Vec<Vec<String>> = by_run(&routes, &max_runs)
        .map(|(i, r, run)| {
            vec![
                i.to_string(),
                r.config.to_owned(),
                num(run.result.rps, 0),
                run.result.requests.to_string(),
                num(run.counters.decisions(), 0),
                run.result.socket_errors.to_string(),
                num(run.cpu_us_per_request, 1),
                percent(run.background),
            ]
        })
        .collect();
    rep.table(
        &[
            "run",
            "route",
            "requests/s",
            "requests",
            "decisions",
            "socket errors",
            "CPU µs/request",
            "background on gatewayd's CPUs",
        ],
        &rows,
    );
    rep.heading(&format!("Raw runs: fixed rate {rate} req/s (oha, open loop, latency-corrected)"));
    let rows: Vec<Vec<String>> = by_run(&routes, &rate_runs)
        .map(|(i, r, run)| {
            vec![
                i.to_string(),
                r.config.to_owned(),
                num(run.result.rps, 0),
                num(run.result.p50 * 1e3, 3),
                num(run.result.p99 * 1e3, 3),
                num(run.result.p999 * 1e3, 3),
                num(run.cpu_us_per_request, 1),
                percent(run.background),
            ]
        })
        .collect();
    rep.table(
        &[
            "run",
            "route",
            "achieved req/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "CPU µs/request",
            "background on gatewayd's CPUs",
        ],
        &rows,
    );

    rep.heading("Reproduce");
    rep.code(
        "sh",
        &format!(
            "flock /tmp/bench.lock cargo xtask bench ratelimit --reps {} --duration {} --connections {}\n\
             # in-process part alone:\ncargo bench -p gateway-userspace --bench ratelimit\n{}\n{}\n{}",
            opts.reps,
            opts.duration(10).as_secs(),
            opts.connections,
            started,
            report::shell_line(&wrk.command(&plan.load, &routes[REDIS].url)),
            report::shell_line(&oha.command(&plan.load, &routes[REDIS].url)),
        ),
    );
    rep.paragraph(
        "`[redis] timeout` is raised from its 50 ms default to 1 s and the Redis layer fails closed: on a \
         shared two-CPU machine a scheduling stall must not turn into fail-open decisions that skip Redis \
         (which would flatter the round-trip count) — every decision here is a Redis answer.",
    );
    rep.code("toml", &gw_conf);
    let path = rep.write("ratelimit")?;
    eprintln!("xtask: bench ratelimit: wrote {}", path.display());
    Ok(())
}

/// Measured runs with gatewayd's and Redis's counters around each (read outside the run's CPU
/// window; the second reading once the requests still in flight when the load generator exited
/// have been decided).
struct Counted {
    metrics: SocketAddr,
    redis_port: u16,
    gw: Tree,
}

impl Counted {
    fn runs<T>(
        &self,
        h: &mut Harness,
        reps: u32,
        routes: &[Route],
        mut load: impl FnMut(&CpuList, &Route) -> Result<T>,
        requests: fn(&T) -> u64,
    ) -> Result<Vec<Vec<Run<T>>>> {
        let measured = h.interleave_around(
            reps,
            routes,
            &[self.gw],
            |_, r| Snapshot::take(self.metrics, self.redis_port).with_context(|| r.config.to_owned()),
            |cpus, r, before| Ok((before, load(cpus, r)?)),
            |r, (before, result)| {
                std::thread::sleep(SETTLE);
                Ok((result, before.until(&Snapshot::take(self.metrics, self.redis_port)?, r.config)))
            },
        )?;
        Ok(measured
            .into_iter()
            .map(|runs| {
                runs.into_iter()
                    .map(|m| {
                        let cpu_us_per_request = m.cpu_us_per(requests(&m.value.0));
                        let (result, counters) = m.value;
                        Run { result, cpu_us_per_request, background: m.background, counters }
                    })
                    .collect()
            })
            .collect())
    }
}

/// `median (min–max)`.
fn spread(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 {
        return num(median(values), digits);
    }
    format!("{} ({}–{})", num(median(values), digits), num(min, digits), num(max, digits))
}

/// A difference with its sign.
fn signed(value: f64, digits: usize) -> String {
    if value.is_finite() && value >= 0.0 { format!("+{}", num(value, digits)) } else { num(value, digits) }
}

fn percent(share: f64) -> String {
    format!("{}%", num(share * 100.0, 1))
}

fn by_run<'a, T>(routes: &'a [Route], runs: &'a [Vec<T>]) -> impl Iterator<Item = (usize, &'a Route, &'a T)> {
    let reps = runs.iter().map(Vec::len).max().unwrap_or(0);
    (0..reps).flat_map(move |i| routes.iter().zip(runs).filter_map(move |(r, runs)| Some((i + 1, r, runs.get(i)?))))
}

/// Runs `benches/ratelimit.rs` (release) and reads its JSON.
fn micro() -> Result<Vec<MicroRow>> {
    let out = capture(cargo().args([
        "bench",
        "--locked",
        "--package",
        "gateway-userspace",
        "--bench",
        "ratelimit",
        "--",
        "--json",
    ]))?;
    let json =
        out.lines().rev().find(|l| l.trim_start().starts_with('[')).context("no JSON from benches/ratelimit.rs")?;
    serde_json::from_str(json).with_context(|| format!("cannot read benches/ratelimit.rs output: {json}"))
}

/// redis-server on `port`, pinned to `cpus`, nothing persisted (as the unit tests start it).
fn redis_server(cpus: &CpuList, port: u16, dir: &Path) -> Result<Command> {
    fs::create_dir_all(dir)?;
    let mut cmd = cpus.taskset("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    Ok(cmd)
}

fn redis_cli(port: u16) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    cmd
}

/// Calls per command from `INFO commandstats`.
fn commandstats(port: u16) -> Result<BTreeMap<String, u64>> {
    Ok(parse_commandstats(&capture(redis_cli(port).args(["INFO", "commandstats"]))?))
}

/// `cmdstat_evalsha:calls=12,usec=…` → `evalsha → 12`.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn scrape(addr: SocketAddr) -> Result<String> {
    let r = http::get(addr, "/metrics")?;
    if r.status != 200 {
        bail!("/metrics answered {}", r.status);
    }
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// The sum of the samples of `name` (exact name) carrying every label of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            let has = |(k, v): &(&str, &str)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\""));
            labels.iter().all(has).then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `/open` must carry no limit, `/mem` and `/redis` theirs (a misconfigured route would benchmark
/// something else), and the Redis layer must have reached Redis.
fn sanity_check(addr: SocketAddr, redis_port: u16) -> Result<()> {
    for (path, layer) in [("/open", None), ("/mem", Some("mem-per-ip")), ("/redis", Some("redis-per-ip"))] {
        let r = http::get(addr, path)?;
        let policy = r.header("RateLimit-Policy");
        let ok = r.status == 200
            && match layer {
                None => policy.is_none(),
                Some(layer) => policy.is_some_and(|p| p.contains(layer)),
            };
        if !ok {
            bail!("{path} answered {} with RateLimit-Policy {policy:?}; expected 200 and layer {layer:?}", r.status);
        }
    }
    let keys = capture(redis_cli(redis_port).arg("DBSIZE"))?;
    if keys.trim().parse::<u64>().unwrap_or(0) == 0 {
        bail!("a request through /redis left no key in Redis (DBSIZE {keys:?})");
    }
    Ok(())
}

fn gatewayd_conf(
    listen: SocketAddr,
    metrics: SocketAddr,
    upstream: SocketAddr,
    redis_port: u16,
    workers: usize,
) -> String {
    let limit = |name, route, backend: &str| {
        format!(
            "[[rate_limits]]\nname = \"{name}\"\nroutes = [\"{route}\"]\nkey = \"ip\"\nlimit = {LIMIT}\nwindow = \"minute\"\n{backend}"
        )
    };
    super::proxy::gatewayd_server(listen, metrics, workers)
        .raw(&format!("[redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\ntimeout = \"1s\"\n"))
        .service("upstream", upstream, None)
        .route("open", "upstream", &["/open"], "none", "")
        .route("mem", "upstream", &["/mem"], "none", "")
        .route("redis", "upstream", &["/redis"], "none", "")
        .raw(&limit("mem-per-ip", "mem", ""))
        .raw(&limit("redis-per-ip", "redis", "backend = \"redis\"\non_redis_error = \"fail_closed\"\n"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP gateway_ratelimit_decisions_total Rate-limit decisions.
# TYPE gateway_ratelimit_decisions_total counter
gateway_ratelimit_decisions_total{route="redis",layer="redis-per-ip",result="allowed"} 1200
gateway_ratelimit_decisions_total{route="redis",layer="redis-per-ip",result="limited"} 3
gateway_ratelimit_decisions_total{route="mem",layer="mem-per-ip",result="allowed"} 500
gateway_http_requests_total{route="redis",service="upstream",method="GET",status="200"} 1203
gateway_http_requests_total{route="redis",service="upstream",method="GET",status="0"} 2
gateway_redis_command_duration_seconds_sum{command="ratelimit"} 0.06
gateway_redis_command_duration_seconds_count{command="ratelimit"} 1200
gateway_redis_command_duration_seconds_count{command="ping"} 7
gateway_redis_up{target="redis://127.0.0.1:1"} 1
gateway_redis_command_duration_seconds_bucket{le="0.001",command="ratelimit"} 1100
"#;

    #[test]
    fn metric_samples_are_summed_by_label() {
        let sum = |name, labels: &[(&str, &str)]| metric_sum(METRICS, name, labels);
        assert_eq!(sum("gateway_ratelimit_decisions_total", &[("route", "redis")]), 1203.0);
        assert_eq!(sum("gateway_ratelimit_decisions_total", &[("route", "redis"), ("result", "allowed")]), 1200.0);
        assert_eq!(sum("gateway_ratelimit_decisions_total", &[]), 1703.0);
        // An exact name: `_count` is not `_sum`, a bucket is not the count.
        assert_eq!(sum("gateway_redis_command_duration_seconds_count", &[("command", "ratelimit")]), 1200.0);
        assert_eq!(sum("gateway_redis_command_duration_seconds", &[]), 0.0);
        assert_eq!(sum("gateway_ratelimit_decisions_total", &[("route", "red")]), 0.0);
        assert_eq!(metric_sum("gateway_x 4\n", "gateway_x", &[]), 4.0);
    }

    #[test]
    fn commandstats_are_read() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=1000,usec=9000,usec_per_call=9.00,rejected_calls=0,failed_calls=1\r\n\
                    cmdstat_script|load:calls=1,usec=30,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_get:calls=2000,usec=500,usec_per_call=0.25,rejected_calls=0,failed_calls=0\r\n";
        let stats = parse_commandstats(text);
        assert_eq!(stats.get("evalsha"), Some(&1000));
        assert_eq!(stats.get("script|load"), Some(&1));
        assert_eq!(stats.get("get"), Some(&2000));
        assert_eq!(stats.len(), 3);
    }

    fn snapshot(metrics: &str, redis: &[(&str, u64)]) -> Snapshot {
        Snapshot { metrics: metrics.to_owned(), redis: redis.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect() }
    }

    #[test]
    fn round_trips_are_what_clients_sent() {
        let before = snapshot("", &[("ping", 3), ("info", 5), ("evalsha", 10)]);
        let after = snapshot(
            METRICS,
            &[("ping", 13), ("info", 6), ("evalsha", 1209), ("eval", 1), ("get", 2400), ("incr", 1200), ("pexpire", 2)],
        );
        let c = before.until(&after, "redis");
        assert_eq!((c.allowed, c.limited, c.errors), (1200.0, 3.0, 0.0));
        assert_eq!(c.decisions(), 1203.0);
        assert_eq!(c.requests, 1205.0);
        // evalsha 1199 + eval 1; not ping, info or what the script ran inside Redis.
        assert_eq!(c.round_trips(), 1200);
        assert_eq!((c.script_calls, c.script_seconds), (1200.0, 0.06));
        assert_eq!(c.redis_commands(), "eval=1, evalsha=1199, get=2400, incr=1200, info=1, pexpire=2, ping=10");
        assert_eq!(Counters::default().redis_commands(), "–");
    }

    #[test]
    fn spreads_and_signs() {
        assert_eq!(spread(&[3.0, 1.0, 2.0], 1), "2.0 (1.0–3.0)");
        assert_eq!(spread(&[2.5], 1), "2.5");
        assert_eq!(signed(1.234, 2), "+1.23");
        assert_eq!(signed(-0.5, 1), "-0.5");
        assert_eq!(signed(f64::NAN, 1), "–");
    }

    #[test]
    fn every_route_says_its_auth_and_the_limits_never_refuse() {
        let conf = gatewayd_conf(
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
            4,
            1,
        );
        assert_eq!(conf.matches("[[routes]]").count(), 3);
        assert_eq!(conf.matches("auth = \"none\"").count(), 3);
        assert_eq!(conf.matches(&format!("limit = {LIMIT}")).count(), 2);
        assert!(conf.contains("url = \"redis://127.0.0.1:4\""));
    }
}
