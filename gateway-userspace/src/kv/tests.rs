use std::time::Duration;

use super::{
    testing::{RedisServer, SpecOf as _, eventually},
    *,
};

fn kv(server: &RedisServer) -> Kv {
    Kv::start(server.spec(), KvMetrics::default())
}

#[tokio::test]
async fn commands_and_scripts_run_once_connected() {
    let server = RedisServer::start();
    let kv = kv(&server);
    assert!(kv.settled(Duration::from_secs(2)).await, "connects at start");
    let pong: String = kv.query("ping", &redis::cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let mut call = script.prepare_invoke();
    let key = kv.key(format_args!("t:{{a}}"));
    call.key(&key).arg(5);
    // The first call loads the script (NOSCRIPT), later ones only send its hash.
    assert_eq!(kv.script::<i64>("incr", &key, &call).await.unwrap(), 5);
    assert_eq!(kv.script::<i64>("incr", &key, &call).await.unwrap(), 10);
    assert_eq!(kv.key(format_args!("x")), "test:x");
}

#[tokio::test]
async fn an_outage_fails_fast_and_recovery_needs_no_restart() {
    let mut server = RedisServer::start();
    let kv = kv(&server);
    assert!(kv.settled(Duration::from_secs(2)).await);
    server.kill();
    // The first command after the kill notices; the ones after it fail without waiting.
    let _ = kv.query::<String>("ping", &redis::cmd("PING")).await;
    assert!(eventually(Duration::from_secs(3), async || !kv.is_up()).await, "outage detected");
    // Failing fast is an event, not a duration: `Unavailable` is the answer given without
    // sending (a command that was sent and waited would end in `Timeout` or a connection error).
    let err = kv.query::<String>("ping", &redis::cmd("PING")).await.unwrap_err();
    assert!(matches!(err, KvError::Unavailable), "failing fast, not waiting: {err:?}");

    server.restart();
    assert!(eventually(Duration::from_secs(5), async || kv.is_up()).await, "reconnected by the supervisor");
    let pong: String = kv.query("ping", &redis::cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn a_hung_server_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let kv = kv(&server);
    assert!(kv.settled(Duration::from_secs(2)).await);
    server.pause(true);
    // Each command ends by the configured timer (`Timeout`), never by waiting on the server.
    for _ in 0..TIMEOUTS_BEFORE_DOWN {
        let err = kv.query::<String>("ping", &redis::cmd("PING")).await.unwrap_err();
        assert!(matches!(err, KvError::Timeout(_)), "{err:?}");
    }
    assert!(!kv.is_up(), "timeouts in a row count as an outage");
    // Then the next one is not even sent.
    let err = kv.query::<String>("ping", &redis::cmd("PING")).await.unwrap_err();
    assert!(matches!(err, KvError::Unavailable), "{err:?}");
    server.pause(false);
    assert!(eventually(Duration::from_secs(5), async || kv.is_up()).await, "back once it answers again");
}

#[tokio::test]
async fn starting_without_redis_connects_later() {
    let mut server = RedisServer::start();
    server.kill();
    let kv = kv(&server);
    assert!(!kv.settled(Duration::from_secs(2)).await, "first attempt failed");
    server.restart();
    assert!(eventually(Duration::from_secs(5), async || kv.is_up()).await);
}

#[test]
fn credentials_never_reach_logs_or_labels() {
    assert_eq!(KvServers::Single("redis://u:s3cret@10.0.0.1:6379/2".into()).redacted(), "redis://10.0.0.1:6379/2");
    assert_eq!(
        KvServers::Cluster(vec!["redis://:pw@a:1".into(), "redis://b:2".into()]).redacted(),
        "cluster:redis://a:1,redis://b:2"
    );
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let spec = testing::spec(KvServers::Single(String::new()));
    for (failures, nominal) in [(1, 20), (2, 40), (3, 80), (5, 200), (30, 200)] {
        let d = backoff(&spec, failures).as_millis() as u64;
        assert!(d <= nominal && d >= nominal * 4 / 5, "failures={failures}: {d}ms");
    }
}

/// `CLIENT ID` of the connection a command went over.
async fn client_id(kv: &Kv) -> i64 {
    kv.query("client_id", redis::cmd("CLIENT").arg("ID")).await.unwrap()
}

#[tokio::test]
async fn a_worker_thread_gets_its_own_connection_and_replaces_it_after_an_outage() {
    let server = RedisServer::start();
    let kv = kv(&server);
    assert!(kv.settled(Duration::from_secs(2)).await);
    let shared = client_id(&kv).await;
    assert_eq!(client_id(&kv).await, shared, "threads that did not opt in use the shared connection");

    local::use_worker_connections();
    // The first command starts the worker's connect and does not wait for it.
    assert_eq!(client_id(&kv).await, shared);
    let mut own = shared;
    assert!(
        eventually(Duration::from_secs(2), async || {
            own = client_id(&kv).await;
            own != shared
        })
        .await,
        "the worker connected on its own"
    );
    assert_eq!(client_id(&kv).await, own, "and keeps using that connection");

    // Killing the worker's connection is an outage like any other: the shared connection is
    // replaced, and that retires the worker's connection too.
    let killed = testing::raw_command(server.port, &format!("CLIENT KILL ID {own}")).unwrap();
    assert!(killed.starts_with(":1"), "{killed}");
    assert!(kv.query::<i64>("client_id", redis::cmd("CLIENT").arg("ID")).await.is_err());
    assert!(eventually(Duration::from_secs(5), async || kv.is_up()).await, "reconnected");
    let mut again = own;
    assert!(
        eventually(Duration::from_secs(3), async || {
            again = client_id(&kv).await;
            again != own && again != shared
        })
        .await,
        "a new worker connection"
    );
    assert_eq!(client_id(&kv).await, again);
}

#[tokio::test]
async fn rediss_verifies_the_server_and_presents_our_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let options = crate::tls::certs::InitOptions {
        out: pki.path().to_owned(),
        cn: "redis".into(),
        sans: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        client_cn: "gatewayd".into(),
        key_type: crate::tls::certs::KeyType::EcdsaP256,
        force: false,
    };
    crate::tls::certs::init(&options).unwrap();
    let file = |name: &str| std::fs::read(pki.path().join(name)).unwrap();
    let server = RedisServer::start_tls(
        &pki.path().join("server.crt"),
        &pki.path().join("server.key"),
        &pki.path().join("ca.crt"),
    );
    let url = format!("rediss://localhost:{}", server.tls_port.unwrap());
    let tls_spec = |tls: KvTls| KvSpec { tls: Some(tls), ..testing::spec(KvServers::Single(url.clone())) };

    let kv = Kv::start(
        tls_spec(KvTls { ca: Some(file("ca.crt")), client: Some((file("client.crt"), file("client.key"))) }),
        KvMetrics::default(),
    );
    assert!(kv.settled(Duration::from_secs(3)).await, "connects over TLS with our client certificate");
    let pong: String = kv.query("ping", &redis::cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");

    // Redis refuses a client without a certificate; we refuse a server our CA did not issue.
    let no_cert = Kv::start(tls_spec(KvTls { ca: Some(file("ca.crt")), client: None }), KvMetrics::default());
    assert!(!no_cert.settled(Duration::from_secs(3)).await, "Redis requires a client certificate");
    let other = tempfile::tempdir().unwrap();
    crate::tls::certs::init(&crate::tls::certs::InitOptions { out: other.path().to_owned(), ..options }).unwrap();
    let wrong_ca = std::fs::read(other.path().join("ca.crt")).unwrap();
    let untrusted = Kv::start(
        tls_spec(KvTls { ca: Some(wrong_ca), client: Some((file("client.crt"), file("client.key"))) }),
        KvMetrics::default(),
    );
    assert!(!untrusted.settled(Duration::from_secs(3)).await, "the server's certificate is not from our CA");
}

/// A key (with its own hash tag) served by each master of `cluster`, by index.
fn keys_per_master(cluster: &testing::RedisCluster) -> std::collections::HashMap<usize, String> {
    let mut keys = std::collections::HashMap::new();
    for i in 0.. {
        let key = format!("test:{{k{i}}}");
        keys.entry(cluster.owner_of(&key)).or_insert(key);
        if keys.len() == 3 {
            return keys;
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_dead_cluster_master_fails_its_slots_fast_and_only_them() {
    use testing::{ClusterOptions, RedisCluster};
    let mut cluster = RedisCluster::start_with(ClusterOptions { full_coverage: false, ..ClusterOptions::default() });
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = KvMetrics::register(&mut registry);
    // A long timeout: a request that waited for it would show.
    let kv = Kv::start(KvSpec { timeout: Duration::from_secs(5), ..cluster.spec() }, metrics.clone());
    assert!(kv.settled(Duration::from_secs(5)).await);
    let keys = keys_per_master(&cluster);
    let get = |k: &str| {
        let kv = kv.clone();
        let k = k.to_owned();
        async move { kv.query::<Option<String>>("get", redis::cmd("GET").arg(k)).await }
    };
    for k in keys.values() {
        get(k).await.unwrap();
    }
    let (dead, alive): (Vec<_>, Vec<_>) = keys.iter().partition(|(i, _)| **i == 0);
    let dead_key = dead[0].1.clone();
    cluster.kill(0);
    // The first command for the dead master's slot notices; the ones after it do not try.
    assert!(get(&dead_key).await.is_err());
    for _ in 0..50 {
        // `Unavailable`: answered without sending, so without waiting for the 5 s timeout.
        assert!(matches!(get(&dead_key).await, Err(KvError::Unavailable)));
        for (_, k) in &alive {
            get(k).await.expect("the other masters' slots keep working");
        }
    }
    assert!(kv.is_up(), "one master down is not the cluster down");
    let node = format!("127.0.0.1:{}", cluster.ports[0]);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let gauge = |up: u8| format!("gateway_redis_node_up{{target=\"{}\",node=\"{node}\"}} {up}", kv.inner.target);
    assert!(text.contains(&gauge(0)), "{text}");

    cluster.restart(0);
    assert!(
        eventually(Duration::from_secs(10), async || get(&dead_key).await.is_ok()).await,
        "the master's slots are served again once it answers"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains(&gauge(1)), "{text}");
}

#[tokio::test]
async fn a_cluster_subscription_moves_to_another_seed_when_its_node_is_dead() {
    use testing::{ClusterOptions, RedisCluster};
    let mut cluster = RedisCluster::start_with(ClusterOptions { full_coverage: false, ..ClusterOptions::default() });
    let kv = Kv::start(cluster.spec(), KvMetrics::default());
    assert!(kv.settled(Duration::from_secs(5)).await);
    // The first seed, where a subscription starts, is dead.
    cluster.kill(0);
    let mut sub = kv.subscribe("test:chan".into());
    assert!(eventually(Duration::from_secs(5), async || *sub.live.borrow()).await, "subscribed through another seed");
    // PUBLISH goes to some node and reaches every node's subscribers.
    assert!(eventually(Duration::from_secs(5), async || kv.publish("test:chan", b"hi").await.is_ok()).await);
    let message = tokio::time::timeout(Duration::from_secs(5), sub.messages.recv()).await.unwrap();
    assert_eq!(message.as_deref(), Some(&b"hi"[..]));
}
