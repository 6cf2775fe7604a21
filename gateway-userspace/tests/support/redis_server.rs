//! Real Redis servers for tests: a single node and a three-master cluster on held loopback
//! ports, in temporary directories. Shared by the unit tests (`kv::testing`) and the end-to-end
//! tests (`tests/e2e/support.rs`), which include this file by path. They fail loudly when
//! redis-server is missing (`cargo xtask deps` installs it): a test that cannot run must not pass.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A loopback port held for as long as this lives: bound with SO_REUSEADDR, never listening.
/// redis-server (which sets SO_REUSEADDR too) still binds and listens on it, while the port of a
/// killed server refuses connections and cannot go to a parallel test before the restart: the
/// kernel hands out no port that is bound (one bound and released could be taken).
struct HeldPort(socket2::Socket);

impl HeldPort {
    fn new() -> HeldPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind :0");
        HeldPort(socket)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().ok().and_then(|a| a.as_socket()).expect("an inet address").port()
    }
}

/// A new [`HeldPort`], kept in `held`; returns its number.
fn hold_port(held: &mut Vec<HeldPort>) -> u16 {
    let port = HeldPort::new();
    let n = port.port();
    held.push(port);
    n
}

/// Sends one inline command and returns the raw reply (enough for PING and CLUSTER INFO).
pub fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = vec![0u8; 8192];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn spawn_redis(dir: &Path, port: u16, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server (install it with `cargo xtask deps`)")
}

/// Waits until `command` on `port` answers with something containing `reply`.
fn wait_redis(port: u16, reply: &str, command: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !raw_command(port, command).is_ok_and(|r| r.contains(reply)) {
        assert!(Instant::now() < deadline, "redis on port {port} did not answer {command} with {reply}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One redis-server; `kill` and `restart` keep its port.
pub struct RedisServer {
    pub port: u16,
    /// The TLS port, for servers started with [`RedisServer::start_tls`].
    #[allow(dead_code)] // not every test binary speaks TLS to Redis
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    _held: Vec<HeldPort>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(None, Vec::new(), Vec::new())
    }

    /// Also listening with TLS (certificate `cert`/`key`, clients must present a certificate
    /// issued by `ca`); the plain port stays for readiness checks and raw commands.
    #[allow(dead_code)] // not every test binary speaks TLS to Redis
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let mut held = Vec::new();
        let tls_port = hold_port(&mut held);
        let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(cert),
            "--tls-key-file".into(),
            path(key),
            "--tls-ca-cert-file".into(),
            path(ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ];
        RedisServer::start_with(Some(tls_port), extra, held)
    }

    fn start_with(tls_port: Option<u16>, extra: Vec<String>, mut held: Vec<HeldPort>) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = hold_port(&mut held);
        let mut s = RedisServer { port, tls_port, child: None, dir, extra, _held: held };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: connections drop at once, as when a Redis host dies.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_redis(self.dir.path(), self.port, &self.extra));
        wait_redis(self.port, "+PONG", "PING");
    }

    /// SIGSTOP / SIGCONT: a server that accepts but never answers.
    #[allow(dead_code)] // not every test binary hangs a server
    pub fn pause(&self, paused: bool) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        let sig = if paused { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::kill(pid, sig).expect("signal redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process would not die of SIGKILL until continued.
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        }
        self.kill();
    }
}

/// A Redis Cluster's shape and timings.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    pub masters: usize,
    /// Replicas per master (`--cluster-replicas`).
    pub replicas: usize,
    /// `cluster-node-timeout`: how long until a silent master is failed over (or the cluster
    /// marked down).
    pub node_timeout_ms: u64,
    /// `cluster-require-full-coverage`: with `false`, slots of live masters keep being served
    /// while another master is down.
    pub full_coverage: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { masters: 3, replicas: 0, node_timeout_ms: 5000, full_coverage: true }
    }
}

/// Masters (and replicas) on loopback, slots split by `redis-cli --cluster create`. Nodes can be
/// killed, restarted (same port and `nodes.conf`, so they rejoin) and paused.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    extra: Vec<Vec<String>>,
    dir: tempfile::TempDir,
    _held: Vec<HeldPort>,
}

#[allow(dead_code)] // not every test binary injects faults into a cluster
impl RedisCluster {
    /// Three masters, no replicas.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(ClusterOptions::default())
    }

    pub fn start_with(o: ClusterOptions) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = Vec::new();
        let mut children = Vec::new();
        let mut extras = Vec::new();
        let mut held = Vec::new();
        for i in 0..o.masters * (1 + o.replicas) {
            let (port, bus) = (hold_port(&mut held), hold_port(&mut held));
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir(&node_dir).expect("node dir");
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                &o.node_timeout_ms.to_string(),
                "--cluster-require-full-coverage",
                if o.full_coverage { "yes" } else { "no" },
                // A replica may take over however long ago it last heard its master.
                "--cluster-replica-validity-factor",
                "0",
            ]
            .map(String::from)
            .into();
            children.push(Some(spawn_redis(&node_dir, port, &extra)));
            extras.push(extra);
            ports.push(port);
        }
        for &p in &ports {
            wait_redis(p, "+PONG", "PING");
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &o.replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("cannot run redis-cli (install redis-server with `cargo xtask deps`)");
        assert!(out.status.success(), "redis-cli --cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { ports, children, extra: extras, dir, _held: held };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and every replica has synced
    /// with its master (a replica that never did cannot take over).
    pub fn wait_ok(&self) {
        for (i, &p) in self.ports.iter().enumerate() {
            if self.children[i].is_some() {
                wait_redis(p, "cluster_state:ok", "CLUSTER INFO");
                if raw_command(p, "ROLE").is_ok_and(|r| r.contains("slave")) {
                    wait_redis(p, "master_link_status:up", "INFO replication");
                }
            }
        }
    }

    /// `redis://` URLs of the seed nodes.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")).collect()
    }

    /// The index of the running master that serves `key`'s slot (it answers a GET; the others
    /// redirect).
    pub fn owner_of(&self, key: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, &p) in self.ports.iter().enumerate() {
                if self.children[i].is_none() {
                    continue;
                }
                let role = raw_command(p, "ROLE").unwrap_or_default();
                let reply = raw_command(p, &format!("GET {key}")).unwrap_or_default();
                if role.contains("master") && (reply.starts_with('$') || reply.starts_with('+')) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no master serves {key}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL one node.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again (same port, same `nodes.conf`: it rejoins the cluster).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let node_dir = self.dir.path().join(format!("n{i}"));
        self.children[i] = Some(spawn_redis(&node_dir, self.ports[i], &self.extra[i]));
        wait_redis(self.ports[i], "+PONG", "PING");
    }

    /// SIGSTOP / SIGCONT one node.
    pub fn pause(&self, i: usize, paused: bool) {
        let pid = nix::unistd::Pid::from_raw(self.children[i].as_ref().expect("running").id() as i32);
        let sig = if paused { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::kill(pid, sig).expect("signal redis-server");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
