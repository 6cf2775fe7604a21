//! Redis Cluster health per master node. One dead master must not cost every request a connect
//! attempt (and the whole cluster its up/down verdict): the handle keeps the cluster's slot map
//! (`CLUSTER SLOTS`, asked of the nodes directly) and a verdict per master. A command whose key's
//! slot belongs to a master marked down fails at once; commands for other slots go on. The
//! supervisor probes down masters directly (PING, then `CLUSTER INFO` must say `cluster_state:ok`)
//! and re-reads the slot map, so a recovered master, or a replica promoted in its place, is used
//! again without a restart. Each outage and each recovery of a node is logged once.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisError, Value, aio::MultiplexedConnection};

use super::{KvSpec, TIMEOUTS_BEFORE_DOWN, metrics::KvMetrics};

/// Redis Cluster's hash slots.
const SLOTS: u16 = 16384;

/// One master as this handle sees it. Its state outlives slot-map refreshes.
pub(super) struct Node {
    /// `host:port`, as `CLUSTER SLOTS` names it.
    pub(super) addr: String,
    down: AtomicBool,
    timeouts_in_a_row: AtomicU32,
    down_since: Mutex<Option<Instant>>,
}

impl Node {
    pub(super) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

/// Slot ranges and their masters, sorted by first slot.
#[derive(Default)]
struct SlotMap {
    ranges: Vec<(u16, u16, Arc<Node>)>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = self.ranges.partition_point(|(_, end, _)| *end < slot);
        self.ranges.get(i).filter(|(start, _, _)| *start <= slot).map(|(_, _, node)| node)
    }

    fn shape(&self) -> Vec<(u16, u16, &str)> {
        self.ranges.iter().map(|(s, e, n)| (*s, *e, n.addr.as_str())).collect()
    }
}

pub(super) struct Cluster {
    seeds: Vec<String>,
    map: ArcSwap<SlotMap>,
    /// Every master of the current map, plus former ones still down (probed until they answer).
    nodes: Mutex<Vec<Arc<Node>>>,
    target: String,
    metrics: KvMetrics,
}

impl Cluster {
    pub(super) fn new(seeds: Vec<String>, target: String, metrics: KvMetrics) -> Cluster {
        Cluster { seeds, map: ArcSwap::default(), nodes: Mutex::default(), target, metrics }
    }

    /// The master owning `key`'s slot, once the slot map is known.
    pub(super) fn node_for(&self, key: &[u8]) -> Option<Arc<Node>> {
        self.map.load().owner(slot(key)).cloned()
    }

    /// Marks `node` down (once per outage: log, gauge). True when it was up.
    pub(super) fn mark_down(&self, node: &Node, why: &str) -> bool {
        if node.down.swap(true, Ordering::AcqRel) {
            return false;
        }
        *lock(&node.down_since) = Some(Instant::now());
        self.metrics.set_node_up(&self.target, &node.addr, false);
        tracing::warn!(target_addr = %self.target, node = %node.addr, reason = why, "redis cluster node unreachable; requests for its slots apply their on_redis_error mode until it is back");
        true
    }

    /// A command routed to `node` timed out; enough in a row count as an outage.
    pub(super) fn timed_out(&self, node: &Node) {
        if node.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_BEFORE_DOWN {
            self.mark_down(node, &format!("{TIMEOUTS_BEFORE_DOWN} commands in a row timed out"));
        }
    }

    pub(super) fn answered(&self, node: &Node) {
        if node.timeouts_in_a_row.load(Ordering::Relaxed) != 0 {
            node.timeouts_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn any_down(&self) -> bool {
        lock(&self.nodes).iter().any(|n| n.is_down())
    }

    fn down_nodes(&self) -> Vec<Arc<Node>> {
        lock(&self.nodes).iter().filter(|n| n.is_down()).cloned().collect()
    }

    /// Reads the slot map from the first node that answers (masters believed up first, then the
    /// seeds). `Ok(true)` when the masters of some slots changed (a failover, a resharding, a
    /// first read). `Err` when no node answered.
    pub(super) async fn refresh(&self, spec: &KvSpec) -> Result<bool, RedisError> {
        let mut candidates: Vec<String> =
            lock(&self.nodes).iter().filter(|n| !n.is_down()).map(|n| n.addr.clone()).collect();
        candidates.extend(self.seeds.iter().filter_map(|s| host_port(s)));
        candidates.dedup();
        let mut last = None;
        for addr in candidates {
            match slots_of(spec, &addr).await {
                Ok(ranges) => return Ok(self.install(ranges)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no cluster node to ask"))))
    }

    /// Installs a slot map read from the cluster; true when its shape changed.
    fn install(&self, mut ranges: Vec<(u16, u16, String)>) -> bool {
        ranges.sort();
        let mut nodes = lock(&self.nodes);
        let node = |nodes: &mut Vec<Arc<Node>>, addr: &str| match nodes.iter().find(|n| n.addr == addr) {
            Some(n) => n.clone(),
            None => {
                let n = Arc::new(Node {
                    addr: addr.to_owned(),
                    down: AtomicBool::new(false),
                    timeouts_in_a_row: AtomicU32::new(0),
                    down_since: Mutex::new(None),
                });
                self.metrics.set_node_up(&self.target, addr, true);
                nodes.push(n.clone());
                n
            }
        };
        let map = SlotMap { ranges: ranges.iter().map(|(s, e, a)| (*s, *e, node(&mut nodes, a))).collect() };
        let changed = self.map.load().shape() != map.shape();
        // Former masters that answer again (replicas now, or gone) stop being tracked.
        nodes.retain(|n| {
            let keep = n.is_down() || map.ranges.iter().any(|(_, _, m)| Arc::ptr_eq(m, n));
            if !keep {
                self.metrics.forget_node(&self.target, &n.addr);
            }
            keep
        });
        if changed && !self.map.load().ranges.is_empty() {
            tracing::info!(target_addr = %self.target, masters = ?masters(&map), "redis cluster slot map changed");
        }
        self.map.store(Arc::new(map));
        changed
    }

    /// Probes every down master at once; returns those that answer again, cluster state ok.
    pub(super) async fn probe_down(&self, spec: &KvSpec) -> Vec<Arc<Node>> {
        let down = self.down_nodes();
        let probes = down.iter().map(|n| healthy(spec, &n.addr));
        let answers = futures_util::future::join_all(probes).await;
        down.into_iter().zip(answers).filter(|(_, ok)| *ok).map(|(n, _)| n).collect()
    }

    /// Marks `node` up again (logs the recovery once).
    pub(super) fn mark_up(&self, node: &Node) {
        node.timeouts_in_a_row.store(0, Ordering::Relaxed);
        if node.down.swap(false, Ordering::AcqRel) {
            let since = lock(&node.down_since).take();
            self.metrics.set_node_up(&self.target, &node.addr, true);
            tracing::info!(target_addr = %self.target, node = %node.addr, down_for = ?since.map(|s| s.elapsed()), "redis cluster node reachable again");
        }
        let mut nodes = lock(&self.nodes);
        let map = self.map.load();
        if !map.ranges.iter().any(|(_, _, m)| std::ptr::eq(Arc::as_ptr(m), node)) {
            nodes.retain(|n| !std::ptr::eq(Arc::as_ptr(n), node));
            self.metrics.forget_node(&self.target, &node.addr);
        }
    }

    /// Removes this handle's per-node gauges (the last handle for the target went away).
    pub(super) fn forget(&self) {
        for n in lock(&self.nodes).iter() {
            self.metrics.forget_node(&self.target, &n.addr);
        }
    }
}

fn masters(map: &SlotMap) -> Vec<&str> {
    let mut m: Vec<&str> = map.ranges.iter().map(|(_, _, n)| n.addr.as_str()).collect();
    m.sort_unstable();
    m.dedup();
    m
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key's hash tag (`{…}`, when not empty) or of
/// the whole key, modulo 16384.
pub(super) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| key[open + 1..].iter().position(|b| *b == b'}').map(|len| &key[open + 1..open + 1 + len]))
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// `redis://user:pw@host:port/…` → `host:port`.
fn host_port(url: &str) -> Option<String> {
    let info = url.into_connection_info().ok()?;
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => Some(format!("{host}:{port}")),
        _ => None,
    }
}

/// A short-lived connection to one node, with the seeds' credentials and TLS settings.
async fn direct(spec: &KvSpec, addr: &str) -> Result<MultiplexedConnection, RedisError> {
    let invalid = || RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad cluster node address"));
    let seed = match &spec.servers {
        super::KvServers::Cluster(seeds) => seeds.first().ok_or_else(invalid)?,
        super::KvServers::Single(url) => url,
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let info = seed.as_str().into_connection_info()?;
    let addr = match info.addr() {
        ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
            ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: *insecure, tls_params: tls_params.clone() }
        }
        _ => ConnectionAddr::Tcp(host.to_owned(), port),
    };
    let info = info.set_addr(addr);
    let client = match &spec.tls {
        Some(tls) => redis::Client::build_with_tls(info, tls.certificates())?,
        None => redis::Client::open(info)?,
    };
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(spec.connect_timeout))
        .set_response_timeout(Some(probe_timeout(spec)));
    client.get_multiplexed_async_connection_with_config(&config).await
}

/// A probe waits no longer than a command would, and never long enough to stall the others.
fn probe_timeout(spec: &KvSpec) -> Duration {
    spec.timeout.min(spec.connect_timeout).max(Duration::from_millis(50))
}

/// Whether the node at `addr` answers and says its cluster is serving.
async fn healthy(spec: &KvSpec, addr: &str) -> bool {
    let probe = async {
        let mut c = direct(spec, addr).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await?;
        redis::cmd("CLUSTER").arg("INFO").query_async::<String>(&mut c).await
    };
    let wait = spec.connect_timeout + probe_timeout(spec);
    matches!(tokio::time::timeout(wait, probe).await, Ok(Ok(info)) if info.contains("cluster_state:ok"))
}

/// `CLUSTER SLOTS` of the node at `addr`: (first slot, last slot, master `host:port`).
async fn slots_of(spec: &KvSpec, addr: &str) -> Result<Vec<(u16, u16, String)>, RedisError> {
    let ask = async {
        let mut c = direct(spec, addr).await?;
        redis::cmd("CLUSTER").arg("SLOTS").query_async::<Value>(&mut c).await
    };
    let wait = spec.connect_timeout + probe_timeout(spec);
    let reply = tokio::time::timeout(wait, ask)
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::Io, "CLUSTER SLOTS timed out")))??;
    let asked_host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    parse_slots(&reply, asked_host)
        .ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply")))
}

fn parse_slots(reply: &Value, asked_host: &str) -> Option<Vec<(u16, u16, String)>> {
    let Value::Array(entries) = reply else { return None };
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(fields) = entry else { return None };
            let (start, end) = (int(fields.first()?)?, int(fields.get(1)?)?);
            let Value::Array(master) = fields.get(2)? else { return None };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            // An empty host means "the node you asked".
            let host = if host.is_empty() || host == "?" { asked_host.to_owned() } else { host };
            Some((start, end, format!("{host}:{}", int(master.get(1)?)?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_redis_cluster_hashing() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"), "an empty tag hashes the whole key");
        assert_eq!(slot(b"{bar"), slot(b"{bar"));
        assert_eq!(slot(b"a{bar}b"), slot(b"bar"));
    }

    #[test]
    fn the_owner_of_a_slot_is_found_by_range() {
        let c = Cluster::new(Vec::new(), "t".into(), KvMetrics::default());
        c.install(vec![(5461, 10922, "b:2".into()), (0, 5460, "a:1".into()), (10923, 16383, "c:3".into())]);
        let map = c.map.load();
        assert_eq!(map.owner(0).unwrap().addr, "a:1");
        assert_eq!(map.owner(5461).unwrap().addr, "b:2");
        assert_eq!(map.owner(16383).unwrap().addr, "c:3");
        assert!(!c.install(vec![(0, 5460, "a:1".into()), (5461, 10922, "b:2".into()), (10923, 16383, "c:3".into())]));
        assert!(c.install(vec![(0, 5460, "d:4".into()), (5461, 10922, "b:2".into()), (10923, 16383, "c:3".into())]));
        assert_eq!(lock(&c.nodes).len(), 3, "a former master that is up is no longer tracked");
    }
}
