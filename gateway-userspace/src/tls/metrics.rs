//! TLS metrics. Handshake counters and durations are sharded per worker (a handshake is on the
//! connection path); certificate expiry is read from the live snapshot at scrape time.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::Counter, family::Family, gauge::ConstGauge, gauge::Gauge},
    registry::Registry,
};

use crate::{
    metrics::{CounterShard, HistogramShard, LabelValue, Labels, ShardedFamily},
    snapshot::Snapshot,
};

static HANDSHAKE_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Process-wide TLS metric families.
pub struct TlsMetrics {
    handshakes: ShardedFamily<Labels<4>, CounterShard>,
    handshake_duration: ShardedFamily<Labels<3>, HistogramShard>,
    connections: ShardedFamily<Labels<2>, CounterShard>,
    ktls_supported: Gauge,
    upstream_errors: Family<Labels<2>, Counter>,
    /// `gateway_acme_*`.
    pub acme: Arc<super::acme::AcmeMetrics>,
}

impl fmt::Debug for TlsMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsMetrics")
    }
}

impl TlsMetrics {
    pub fn register(registry: &mut Registry) -> Arc<TlsMetrics> {
        let m = Arc::new(TlsMetrics {
            handshakes: ShardedFamily::new(&[]),
            handshake_duration: ShardedFamily::new(&HANDSHAKE_BUCKETS),
            connections: ShardedFamily::new(&[]),
            ktls_supported: Gauge::default(),
            upstream_errors: Family::default(),
            acme: super::acme::AcmeMetrics::register(registry),
        });
        registry.register(
            "gateway_tls_handshakes",
            "Client TLS handshakes by listener, version, cipher and result",
            m.handshakes.clone(),
        );
        registry.register(
            "gateway_tls_handshake_duration_seconds",
            "Successful client TLS handshakes, from TCP accept to handshake done",
            m.handshake_duration.clone(),
        );
        registry.register(
            "gateway_tls_connections",
            "Client TLS connections by listener and mode (ktls: kernel TLS offload; userspace: rustls)",
            m.connections.clone(),
        );
        registry.register(
            "gateway_ktls_supported",
            "1 when the kernel accepted TLS offload at startup, else 0",
            m.ktls_supported.clone(),
        );
        registry.register(
            "gateway_upstream_tls_errors",
            "TLS handshake failures towards upstream targets, by service and reason",
            m.upstream_errors.clone(),
        );
        m
    }

    pub fn set_ktls_supported(&self, supported: bool) {
        self.ktls_supported.set(i64::from(supported));
    }

    pub fn upstream_error(&self, service: &Arc<str>, reason: &'static str) {
        let labels = Labels([("service", LabelValue::Shared(service.clone())), ("reason", LabelValue::Static(reason))]);
        self.upstream_errors.get_or_create(&labels).inc();
    }
}

type HandshakeKey = (usize, &'static str, &'static str, &'static str);
type DurationKey = (usize, &'static str, bool);

/// A worker's handles on its shards, found once per label set.
pub struct WorkerTlsMetrics {
    shared: Arc<TlsMetrics>,
    handshakes: RefCell<HashMap<HandshakeKey, Arc<CounterShard>>>,
    durations: RefCell<HashMap<DurationKey, Arc<HistogramShard>>>,
    connections: RefCell<HashMap<(usize, &'static str), Arc<CounterShard>>>,
    /// Keeps the listener names whose addresses key the maps alive.
    names: RefCell<Vec<Arc<str>>>,
}

fn key(name: &Arc<str>) -> usize {
    Arc::as_ptr(name) as *const u8 as usize
}

impl WorkerTlsMetrics {
    pub fn new(shared: Arc<TlsMetrics>) -> Self {
        WorkerTlsMetrics {
            shared,
            handshakes: RefCell::default(),
            durations: RefCell::default(),
            connections: RefCell::default(),
            names: RefCell::default(),
        }
    }

    fn keep(&self, name: &Arc<str>) {
        let mut names = self.names.borrow_mut();
        if !names.iter().any(|n| Arc::ptr_eq(n, name)) {
            names.push(name.clone());
        }
    }

    pub fn handshake(&self, listener: &Arc<str>, version: &'static str, cipher: &'static str, result: &'static str) {
        let k = (key(listener), version, cipher, result);
        let shard = self
            .handshakes
            .borrow_mut()
            .entry(k)
            .or_insert_with(|| {
                self.keep(listener);
                self.shared.handshakes.new_shard(&Labels([
                    ("listener", LabelValue::Shared(listener.clone())),
                    ("version", LabelValue::Static(version)),
                    ("cipher", LabelValue::Static(cipher)),
                    ("result", LabelValue::Static(result)),
                ]))
            })
            .clone();
        shard.inc();
    }

    pub fn handshake_duration(&self, listener: &Arc<str>, version: &'static str, resumed: bool, seconds: f64) {
        let shard = self
            .durations
            .borrow_mut()
            .entry((key(listener), version, resumed))
            .or_insert_with(|| {
                self.keep(listener);
                self.shared.handshake_duration.new_shard(&Labels([
                    ("listener", LabelValue::Shared(listener.clone())),
                    ("version", LabelValue::Static(version)),
                    ("resumed", LabelValue::Static(if resumed { "true" } else { "false" })),
                ]))
            })
            .clone();
        shard.observe(seconds);
    }

    pub fn connection(&self, listener: &Arc<str>, mode: &'static str) {
        let shard = self
            .connections
            .borrow_mut()
            .entry((key(listener), mode))
            .or_insert_with(|| {
                self.keep(listener);
                self.shared.connections.new_shard(&Labels([
                    ("listener", LabelValue::Shared(listener.clone())),
                    ("mode", LabelValue::Static(mode)),
                ]))
            })
            .clone();
        shard.inc();
    }
}

/// `gateway_tls_certificate_expiry_timestamp_seconds{listener,name}` (server certificates and
/// client CAs, `name` = `ca:<CN>` for the latter) and
/// `gateway_upstream_tls_certificate_expiry_timestamp_seconds{service,name}` (the client
/// certificates gatewayd presents upstream), from the live snapshot: a reload that replaces a
/// certificate changes the gauge. When two certificates share a name, the earlier expiry is shown.
pub struct ExpiryCollector(pub Arc<ArcSwap<Snapshot>>);

impl fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExpiryCollector")
    }
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let snapshot = self.0.load();
        let mut server: BTreeMap<(String, String), i64> = BTreeMap::new();
        let earliest = |map: &mut BTreeMap<(String, String), i64>, k: (String, String), t: i64| {
            let v = map.entry(k).or_insert(t);
            *v = (*v).min(t);
        };
        for (listener, spec) in &snapshot.config.listener_tls {
            for c in spec.certs.certs() {
                earliest(&mut server, (listener.to_string(), c.facts.display_name().to_owned()), c.facts.not_after);
            }
            for ca in spec.client_trust.iter().flat_map(|t| &t.cas) {
                earliest(&mut server, (listener.to_string(), format!("ca:{}", ca.display_name())), ca.not_after);
            }
        }
        let mut upstream: BTreeMap<(String, String), i64> = BTreeMap::new();
        for s in &snapshot.config.services {
            if let Some(facts) = s.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
                earliest(&mut upstream, (s.name.to_string(), facts.display_name().to_owned()), facts.not_after);
            }
        }
        for (metric, label, help, values) in [
            (
                "gateway_tls_certificate_expiry_timestamp_seconds",
                "listener",
                "notAfter of listener certificates and client CAs (unix seconds)",
                &server,
            ),
            (
                "gateway_upstream_tls_certificate_expiry_timestamp_seconds",
                "service",
                "notAfter of the client certificates presented to upstreams (unix seconds)",
                &upstream,
            ),
        ] {
            let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Gauge)?;
            for ((owner, name), t) in values {
                let labels =
                    Labels([(label, LabelValue::Owned(owner.clone())), ("name", LabelValue::Owned(name.clone()))]);
                ConstGauge::new(*t).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
