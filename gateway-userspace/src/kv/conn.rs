//! One live connection to a single Redis node or to a Redis Cluster, behind one type.

use redis::{
    AsyncConnectionConfig, Cmd, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};

use super::{KvServers, KvSpec};

/// A multiplexed connection: clones share it, concurrent commands are pipelined on it. Its I/O
/// is driven by a task on the runtime that connected it (the control runtime).
#[derive(Clone)]
pub enum Conn {
    Single(MultiplexedConnection),
    /// Routes each command to the node owning its keys' slot; follows MOVED/ASK.
    Cluster(ClusterConnection),
}

pub(super) async fn connect(spec: &KvSpec) -> Result<Conn, RedisError> {
    match &spec.servers {
        KvServers::Single(url) => {
            let client = match &spec.tls {
                Some(tls) => redis::Client::build_with_tls(url.as_str(), tls.certificates())?,
                None => redis::Client::open(url.as_str())?,
            };
            // Our own timeout wraps every command; the connection's would only race with it.
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(spec.connect_timeout))
                .set_response_timeout(None);
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
            // Proves the server answers (not just accepts) before we call it up.
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(Conn::Single(conn))
        }
        KvServers::Cluster(nodes) => {
            let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str));
            if let Some(tls) = &spec.tls {
                builder = builder.certs(tls.certificates());
            }
            let client = builder
                .connection_timeout(spec.connect_timeout)
                .response_timeout(spec.timeout)
                // Redirections (MOVED/ASK) are retries too; the outer timeout bounds the total.
                .retries(3)
                .min_retry_wait(5)
                .max_retry_wait(50)
                .build()?;
            let mut conn = client.get_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(Conn::Cluster(conn))
        }
    }
}

/// Errors that mean the connection (or the server) is gone, as opposed to a command failing.
pub(super) fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), redis::ErrorKind::ClusterConnectionNotFound)
}

/// Cluster errors that mean the slot's master cannot serve (the cluster lost it, or it lost its
/// link to the cluster), as opposed to a command failing.
pub(super) fn is_node_down(e: &RedisError) -> bool {
    matches!(e.code(), Some("CLUSTERDOWN" | "MASTERDOWN"))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
