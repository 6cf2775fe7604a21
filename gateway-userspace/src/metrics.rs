//! Prometheus metrics (`gateway_<subsystem>_<thing>_<unit>`), the :9090 endpoint with /healthz
//! and /readyz, and the request-metrics log phase.
//!
//! Request counters and latency histograms are sharded per worker (see `sharded`): each worker
//! caches its shard handles, so recording a request takes no lock and touches no shared line.

mod consumer_label;
pub mod exposition;
pub mod host;
pub mod server;
mod sharded;

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use http::Method;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabel, EncodeLabelSet, EncodeMetric, LabelSetEncoder},
    metrics::{MetricType, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge},
    registry::Registry,
};

use consumer_label::ConsumerLabels;
pub use sharded::{CounterShard, HistogramShard, ShardedFamily};

/// Latency buckets (seconds) for request and upstream durations.
static LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Finer buckets for the gateway's own overhead.
static OVERHEAD_BUCKETS: [f64; 12] =
    [0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1];

/// Worker loop lag buckets (seconds, `worker/loop_lag.rs`): a healthy loop answers in
/// microseconds; a stall is milliseconds.
pub static LOOP_LAG_BUCKETS: [f64; 14] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0];

/// Labels built from static strings or shared names (no allocation to encode).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Labels<const N: usize>(pub [(&'static str, LabelValue); N]);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelValue {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
    Int(u64),
}

impl<const N: usize> EncodeLabelSet for Labels<N> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        for (k, v) in &self.0 {
            match v {
                LabelValue::Static(s) => (*k, *s).encode(encoder.encode_label())?,
                LabelValue::Shared(s) => (*k, &**s).encode(encoder.encode_label())?,
                LabelValue::Owned(s) => (*k, s.as_str()).encode(encoder.encode_label())?,
                LabelValue::Int(n) => (*k, *n).encode(encoder.encode_label())?,
            }
        }
        Ok(())
    }
}

/// Route, service, method, status, and the opt-in `consumer_id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    base: Labels<4>,
    consumer: Option<LabelValue>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.base.encode(encoder)?;
        match &self.consumer {
            Some(consumer) => Labels([("consumer_id", consumer.clone())]).encode(encoder),
            None => Ok(()),
        }
    }
}

pub type RouteLabels = Labels<2>;
pub type OneLabel = Labels<1>;

/// Process-wide metric families owned by the core (other modules register their own).
pub struct Metrics {
    requests: ShardedFamily<RequestLabels, CounterShard>,
    /// `Some` with `[metrics] consumer_label`.
    consumer_labels: Option<ConsumerLabels>,
    request_duration: ShardedFamily<RouteLabels, HistogramShard>,
    upstream_duration: ShardedFamily<RouteLabels, HistogramShard>,
    proxy_overhead: ShardedFamily<RouteLabels, HistogramShard>,
    pub refusals: Family<OneLabel, Counter>,
    pub dropped_headers: Family<OneLabel, Counter>,
    pub connections_active: Family<OneLabel, Gauge>,
    pub connections_total: Family<OneLabel, Counter>,
    pub worker_connections: Family<OneLabel, Counter>,
    pub connections_parked: Family<OneLabel, Counter>,
    pub http2_flood_closes: Family<OneLabel, Counter>,
    /// Per worker: how long a ready task waits for its event loop (`worker/loop_lag.rs`).
    pub worker_loop_lag: ShardedFamily<OneLabel, HistogramShard>,
    pub config_reloads: Family<OneLabel, Counter>,
    /// Responses read through the response buffer (`proxy/spool.rs`).
    pub buffered_responses: Counter,
    /// Response bytes written to temp files.
    pub spooled_bytes: Counter,
}

impl Metrics {
    /// `consumer_label_limit`: `Some(N)` adds the `consumer_id` label (N values, then `other`).
    pub fn register(registry: &mut Registry, consumer_label_limit: Option<usize>) -> Arc<Metrics> {
        let m = Arc::new(Metrics {
            requests: ShardedFamily::new(&[]),
            consumer_labels: consumer_label_limit.map(ConsumerLabels::new),
            request_duration: ShardedFamily::new(&LATENCY_BUCKETS),
            upstream_duration: ShardedFamily::new(&LATENCY_BUCKETS),
            proxy_overhead: ShardedFamily::new(&OVERHEAD_BUCKETS),
            refusals: Family::default(),
            dropped_headers: Family::default(),
            connections_active: Family::default(),
            connections_total: Family::default(),
            worker_connections: Family::default(),
            connections_parked: Family::default(),
            http2_flood_closes: Family::default(),
            worker_loop_lag: ShardedFamily::new(&LOOP_LAG_BUCKETS),
            config_reloads: Family::default(),
            buffered_responses: Counter::default(),
            spooled_bytes: Counter::default(),
        });
        registry.register(
            "gateway_http_requests",
            "Requests by route, service, method and status (and consumer_id when enabled)",
            m.requests.clone(),
        );
        registry.register(
            "gateway_request_duration_seconds",
            "Whole request, first byte in to last byte out",
            m.request_duration.clone(),
        );
        registry.register(
            "gateway_upstream_duration_seconds",
            "From forwarding (connect included) to the upstream's response head",
            m.upstream_duration.clone(),
        );
        registry.register(
            "gateway_proxy_overhead_seconds",
            "Time the gateway itself spent on a request",
            m.proxy_overhead.clone(),
        );
        registry.register(
            "gateway_http_refusals",
            "Requests the gateway answered itself, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "gateway_http_dropped_headers",
            "Client request headers dropped before routing: `_` spellings of headers the gateway sets, or any `_` name (underscores_in_headers = false), by reason",
            m.dropped_headers.clone(),
        );
        registry.register(
            "gateway_connections_active",
            "Open client connections, by listener",
            m.connections_active.clone(),
        );
        registry.register(
            "gateway_connections",
            "Accepted client connections, by listener",
            m.connections_total.clone(),
        );
        registry.register(
            "gateway_worker_connections",
            "Accepted client connections, by worker",
            m.worker_connections.clone(),
        );
        registry.register(
            "gateway_connections_parked",
            "Idle HTTP/1 connections parked: their HTTP state released until the next request",
            m.connections_parked.clone(),
        );
        registry.register(
            "gateway_http2_flood_closes",
            "HTTP/2 connections closed (GOAWAY ENHANCE_YOUR_CALM) for too many frames carrying no request, by frame type",
            m.http2_flood_closes.clone(),
        );
        registry.register(
            "gateway_worker_loop_lag_seconds",
            "How long a task that became ready waited for its worker's event loop, by worker (sampled about 20 times a second)",
            m.worker_loop_lag.clone(),
        );
        registry.register("gateway_config_reloads", "Configuration reloads, by result", m.config_reloads.clone());
        registry.register(
            "gateway_proxy_buffered_responses",
            "Responses read ahead of the client through the response buffer",
            m.buffered_responses.clone(),
        );
        registry.register(
            "gateway_proxy_spooled_bytes",
            "Response bytes written to temp files by the response buffer",
            m.spooled_bytes.clone(),
        );
        m
    }

    /// Counts a refusal that never reached the pipeline (e.g. hyper's own 431).
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Labels([("reason", LabelValue::Static(reason))])).inc();
    }
}

/// (route name address, service name address, method, status, consumer id address).
type RequestKey = (usize, usize, &'static str, u16, usize);

/// One finished request, as the request metrics count it.
pub struct RequestSample<'a> {
    pub route: Option<&'a Arc<str>>,
    pub service: Option<&'a Arc<str>>,
    pub method: &'a Method,
    pub status: u16,
    /// The consumer's id (counted only with the opt-in consumer label).
    pub consumer: Option<&'a Arc<str>>,
    pub total: std::time::Duration,
    pub upstream: Option<std::time::Duration>,
    pub gateway: std::time::Duration,
    /// The refusal reason, when the gateway answered itself.
    pub refused: Option<&'static str>,
}

/// A worker's handles on its shards, found once per label set and then used lock-free.
pub struct WorkerMetrics {
    shared: Arc<Metrics>,
    // Keys are the gateway's own (name addresses, method, status), never a client's bytes:
    // a fixed-seed fast hash instead of SipHash, which was most of a lookup's cost.
    requests: RefCell<HashMap<RequestKey, Arc<CounterShard>, foldhash::fast::FixedState>>,
    durations: RefCell<HashMap<(usize, usize), Arc<RouteDurations>, foldhash::fast::FixedState>>,
    /// Keeps the names whose addresses key the maps above alive (so no address is reused).
    _names: RefCell<Vec<Arc<str>>>,
}

struct RouteDurations {
    request: Arc<HistogramShard>,
    upstream: Arc<HistogramShard>,
    overhead: Arc<HistogramShard>,
}

static NO_NAME: &str = "";

fn name_key(name: Option<&Arc<str>>) -> usize {
    name.map_or(NO_NAME.as_ptr() as usize, |n| Arc::as_ptr(n) as *const u8 as usize)
}

fn name_label(name: Option<&Arc<str>>) -> LabelValue {
    name.map_or(LabelValue::Static(""), |n| LabelValue::Shared(n.clone()))
}

impl WorkerMetrics {
    pub fn new(shared: Arc<Metrics>) -> Self {
        WorkerMetrics {
            shared,
            requests: RefCell::default(),
            durations: RefCell::default(),
            _names: RefCell::default(),
        }
    }

    pub fn shared(&self) -> &Arc<Metrics> {
        &self.shared
    }

    /// Counts one finished request into this worker's shards.
    pub fn record(&self, r: &RequestSample<'_>) {
        let (route, service) = (r.route, r.service);
        let method = method_label(r.method);
        let consumer = self.shared.consumer_labels.as_ref().and(r.consumer);
        let key = (name_key(route), name_key(service), method, r.status, name_key(consumer));
        // Counted through the maps' borrows: cloning each shard's `Arc` out (an atomic increment
        // and decrement, twice per request) bought nothing, nothing here touches the maps again.
        let mut requests = self.requests.borrow_mut();
        let counter =
            requests.entry(key).or_insert_with(|| self.new_request_shard([route, service, consumer], method, r.status));
        counter.inc();
        let dkey = (key.0, key.1);
        let mut durations = self.durations.borrow_mut();
        let d = durations.entry(dkey).or_insert_with(|| self.new_duration_shards(route, service));
        d.request.observe(r.total.as_secs_f64());
        if let Some(up) = r.upstream {
            d.upstream.observe(up.as_secs_f64());
        }
        d.overhead.observe(r.gateway.as_secs_f64());
        if let Some(reason) = r.refused {
            self.shared.refused(reason);
        }
    }

    fn keep<const N: usize>(&self, names: [Option<&Arc<str>>; N]) {
        self._names.borrow_mut().extend(names.into_iter().flatten().cloned());
    }

    /// `names`: route, service and (with the consumer label) the consumer's id.
    fn new_request_shard(&self, names: [Option<&Arc<str>>; 3], method: &'static str, status: u16) -> Arc<CounterShard> {
        self.keep(names);
        let [route, service, consumer] = names;
        let labels = RequestLabels {
            base: Labels([
                ("route", name_label(route)),
                ("service", name_label(service)),
                ("method", LabelValue::Static(method)),
                ("status", LabelValue::Int(status.into())),
            ]),
            consumer: self.shared.consumer_labels.as_ref().map(|c| c.value(consumer)),
        };
        self.shared.requests.new_shard(&labels)
    }

    fn new_duration_shards(&self, route: Option<&Arc<str>>, service: Option<&Arc<str>>) -> Arc<RouteDurations> {
        self.keep([route, service]);
        let labels = Labels([("route", name_label(route)), ("service", name_label(service))]);
        Arc::new(RouteDurations {
            request: self.shared.request_duration.new_shard(&labels),
            upstream: self.shared.upstream_duration.new_shard(&labels),
            overhead: self.shared.proxy_overhead.new_shard(&labels),
        })
    }
}

/// Bounded label values for methods.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

/// What /readyz reports besides "listeners up and config loaded": named checks set by
/// subsystems (e.g. an identity provider that is unreachable).
#[derive(Debug, Default)]
pub struct Readiness {
    ready: std::sync::atomic::AtomicBool,
    details: Mutex<std::collections::BTreeMap<String, String>>,
}

/// `gateway_ready`: what /readyz answers, as a gauge, so an alert can tell "up but not ready".
#[derive(Debug)]
pub struct ReadinessCollector(pub Arc<Readiness>);

impl Collector for ReadinessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let help = "1 while /readyz answers 200 (listeners up, config loaded), 0 while starting or draining";
        let family = encoder.encode_descriptor("gateway_ready", help, None, MetricType::Gauge)?;
        ConstGauge::new(i64::from(self.0.is_ready())).encode(family)
    }
}

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sets (or with `None` clears) a named detail shown by /readyz.
    pub fn set_detail(&self, name: &str, value: Option<String>) {
        let mut d = self.details.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match value {
            Some(v) => d.insert(name.to_owned(), v),
            None => d.remove(name),
        };
    }

    pub fn details(&self) -> std::collections::BTreeMap<String, String> {
        self.details.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
