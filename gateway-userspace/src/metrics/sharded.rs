//! Metric families whose every label set is split into one shard per worker, summed at scrape.
//! A worker only ever writes its own shard, so the request path touches no shared cache line
//! and takes no lock (prometheus-client's own histogram takes a lock per observation).

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};

/// One shard of a metric; `merge` sums a set of shards for encoding.
pub trait Shard: Send + Sync + 'static {
    fn new(buckets: &'static [f64]) -> Self;
    fn encode_merged(shards: &[Arc<Self>], encoder: MetricEncoder<'_>) -> fmt::Result;
    const TYPE: MetricType;
}

/// Cheap to clone: clones share the same shards.
pub struct ShardedFamily<L, M> {
    buckets: &'static [f64],
    shards: Arc<Mutex<HashMap<L, Vec<Arc<M>>>>>,
}

impl<L, M> Clone for ShardedFamily<L, M> {
    fn clone(&self) -> Self {
        ShardedFamily { buckets: self.buckets, shards: self.shards.clone() }
    }
}

impl<L, M> ShardedFamily<L, M>
where
    L: Clone + Eq + Hash,
    M: Shard,
{
    pub fn new(buckets: &'static [f64]) -> Self {
        ShardedFamily { buckets, shards: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// A new shard for `labels`. Workers call this once per label set and keep the result.
    pub fn new_shard(&self, labels: &L) -> Arc<M> {
        let shard = Arc::new(M::new(self.buckets));
        let mut map = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(labels.clone()).or_default().push(shard.clone());
        shard
    }
}

impl<L, M> fmt::Debug for ShardedFamily<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ShardedFamily")
    }
}

impl<L: Send + Sync + 'static, M: Shard> TypedMetric for ShardedFamily<L, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<L, M> EncodeMetric for ShardedFamily<L, M>
where
    L: EncodeLabelSet + Send + Sync + 'static,
    M: Shard,
{
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let map = self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (labels, shards) in map.iter() {
            M::encode_merged(shards, encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct CounterShard(AtomicU64);

impl CounterShard {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Shard for CounterShard {
    const TYPE: MetricType = MetricType::Counter;

    fn new(_: &'static [f64]) -> Self {
        Self::default()
    }

    fn encode_merged(shards: &[Arc<Self>], mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let total: u64 = shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum();
        encoder.encode_counter::<NoLabelSet, _, u64>(&total, None)
    }
}

/// A histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct HistogramShard {
    bounds: &'static [f64],
    /// Non-cumulative counts; the last slot is +Inf.
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// f64 bits; single writer (the owning worker), so load+store is enough.
    sum: AtomicU64,
}

impl HistogramShard {
    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

impl Shard for HistogramShard {
    const TYPE: MetricType = MetricType::Histogram;

    fn new(bounds: &'static [f64]) -> Self {
        HistogramShard {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    fn encode_merged(shards: &[Arc<Self>], mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let Some(first) = shards.first() else { return Ok(()) };
        let bounds = first.bounds;
        let mut per_bucket = vec![0u64; bounds.len() + 1];
        let (mut sum, mut count) = (0.0, 0);
        for s in shards {
            for (acc, c) in per_bucket.iter_mut().zip(s.counts.iter()) {
                *acc += c.load(Ordering::Relaxed);
            }
            sum += f64::from_bits(s.sum.load(Ordering::Relaxed));
            count += s.count.load(Ordering::Relaxed);
        }
        // Per-bucket (not cumulative) counts: the encoder accumulates.
        let buckets: Vec<(f64, u64)> =
            bounds.iter().copied().chain(std::iter::once(f64::INFINITY)).zip(per_bucket).collect();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};

    use super::*;

    #[derive(Clone, PartialEq, Eq, Hash, Debug)]
    struct L(&'static str);
    impl EncodeLabelSet for L {
        fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>) -> fmt::Result {
            use prometheus_client::encoding::EncodeLabel;
            ("route", self.0).encode(encoder.encode_label())
        }
    }

    static BOUNDS: [f64; 2] = [0.1, 1.0];

    #[test]
    fn shards_are_summed() {
        let mut registry = Registry::default();
        let counters: ShardedFamily<L, CounterShard> = ShardedFamily::new(&[]);
        let histos: ShardedFamily<L, HistogramShard> = ShardedFamily::new(&BOUNDS);
        registry.register("t_requests", "r", counters.clone());
        registry.register("t_seconds", "s", histos.clone());
        let (a, b) = (counters.new_shard(&L("x")), counters.new_shard(&L("x")));
        a.inc();
        b.inc();
        b.inc();
        let (h1, h2) = (histos.new_shard(&L("x")), histos.new_shard(&L("x")));
        h1.observe(0.05);
        h2.observe(0.5);
        h2.observe(5.0);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(out.contains("t_requests_total{route=\"x\"} 3"), "{out}");
        assert!(
            out.contains("t_seconds_bucket{le=\"0.1\",route=\"x\"} 1")
                || out.contains("t_seconds_bucket{route=\"x\",le=\"0.1\"} 1"),
            "{out}"
        );
        assert!(out.contains("t_seconds_count{route=\"x\"} 3"), "{out}");
    }
}
