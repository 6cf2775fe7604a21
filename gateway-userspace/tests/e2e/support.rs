//! Starts and stops the pieces end-to-end tests need: gatewayd with a temporary config,
//! upstream HTTP servers with observable behaviour, and clients. Readiness is awaited by
//! polling, never by fixed sleeps.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatewayd");

/// A free loopback port, reserved for the rest of the test run: a socket stays bound to it
/// (SO_REUSEADDR and SO_REUSEPORT, never listening), so no other bind to port 0 and no outgoing
/// connection's ephemeral port can take it before the process it is meant for binds it. (A port
/// bound and released is handed out again at once: gatewayd then failed to start under load.)
/// gatewayd and the servers tests start (pebble, openssl, node, chromedriver, prometheus) bind
/// with SO_REUSEADDR, which a bound, non-listening socket allows; a server binding without it
/// would get EADDRINUSE. Connecting to the port is refused until its server listens.
pub fn free_port() -> SocketAddr {
    static RESERVED: std::sync::Mutex<Vec<socket2::Socket>> = std::sync::Mutex::new(Vec::new());
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind :0");
    let addr = socket.local_addr().expect("local addr").as_socket().expect("an inet address");
    RESERVED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(socket);
    addr
}

/// A loopback port that refuses connections for as long as this lives: bound, not listening,
/// so no other test can take it meanwhile (a port bound and released could be).
pub struct DeadPort {
    socket: socket2::Socket,
    pub addr: SocketAddr,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind :0");
        let addr = socket.local_addr().expect("local addr").as_socket().expect("an inet address");
        DeadPort { socket, addr }
    }

    /// Starts listening on the same socket: the target comes back, with no window in which
    /// the port was free.
    pub fn revive(self, name: &'static str) -> Upstream {
        self.socket.listen(128).expect("listen");
        Upstream::start_with(name, self.socket.into(), None)
    }
}

/// Addresses and paths a config template can use.
pub struct Ports {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: PathBuf,
}

/// A running gatewayd.
pub struct Gateway {
    child: Option<Child>,
    pub ports: Ports,
    pub config_path: PathBuf,
    stderr_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Writes the config produced by `config` and starts gatewayd; panics if it does not become
    /// ready within 20 s (with its stderr in the message).
    pub fn start(config: impl Fn(&Ports) -> String) -> Gateway {
        Self::start_with_env(config, &[])
    }

    /// Like `start`, with extra environment variables for the daemon.
    pub fn start_with_env(config: impl Fn(&Ports) -> String, env: &[(&str, String)]) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = Ports { listen: free_port(), metrics: free_port(), dir: dir.path().to_owned() };
        let config_path = dir.path().join("gatewayd.toml");
        std::fs::write(&config_path, config(&ports)).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "debug")
            // The revocation state file (and anything else kept across restarts) in the test's dir.
            .env("STATE_DIRECTORY", dir.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn gatewayd");
        let mut gw = Gateway { child: Some(child), ports, config_path, stderr_path, _dir: dir };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("gatewayd exited early with {status}:\n{}", self.stderr());
            }
            if raw_get(self.ports.metrics, "/readyz").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("gatewayd not ready in time:\n{}", self.stderr());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ports.listen, path)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).expect("kill");
    }

    pub fn metrics(&self) -> String {
        raw_get(self.ports.metrics, "/metrics").expect("scrape metrics")
    }

    /// Sum of every sample of `name` whose labels include all of `labels` (0 when none).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// The exported value of a series that must exist (zero included); panics when it does not:
    /// an assertion that a count is 0 must not pass because the metric is gone.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics();
        series_value(&text, name, labels).unwrap_or_else(|| panic!("no series {name} {labels:?} exported:\n{text}"))
    }

    /// Rewrites the config, sends SIGHUP and waits for the reload to be counted.
    pub fn reload(&self, config: &str) -> bool {
        let ok_before = self.metric("gateway_config_reloads_total", &[("result", "ok")]);
        let err_before = self.metric("gateway_config_reloads_total", &[("result", "error")]);
        std::fs::write(&self.config_path, config).expect("write config");
        self.signal(nix::sys::signal::Signal::SIGHUP);
        let ok = eventually(Duration::from_secs(10), || {
            let ok = self.metric("gateway_config_reloads_total", &[("result", "ok")]);
            let err = self.metric("gateway_config_reloads_total", &[("result", "error")]);
            (ok > ok_before || err > err_before).then_some(ok > ok_before)
        });
        ok.unwrap_or_else(|| panic!("reload was not counted:\n{}", self.stderr()))
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("gatewayd did not exit in time:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn audit_lines(&self, path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or gives up after `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sum of every sample of `name` whose labels include all of `labels`; 0 when there is none (a
/// labelled family has no sample, and no `# TYPE` line either, until its first count). For a
/// value that must be exported, zero included, use [`series_value`]: "0" from here proves
/// nothing unless another test shows the same series move.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series_value(text, name, labels).unwrap_or(0.0)
}

/// Like [`metric_value`], but `None` when no sample of `name` has all of `labels`.
pub fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for v in text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse::<f64>().ok()).flatten()
    }) {
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// A one-shot HTTP/1.1 GET over a plain socket; returns the raw response text.
pub fn raw_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    raw_request(addr, format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
}

/// Sends raw bytes and reads until the server closes (or 10 s pass).
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A simple response as tests see it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

pub async fn get(url: &str) -> Reply {
    send(&client(), Request::get(url).body(Full::default()).expect("request")).await
}

/// A request builder shortcut with a Host header.
pub fn req(method: &str, url: &str, host: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url).header("host", host)
}

/// An upstream HTTP server with observable behaviour:
/// - `/slow/<ms>`: waits, then echoes;
/// - `/status/<code>`: answers that status;
/// - `/bytes/<n>`: n bytes of body;
/// - `/pattern/<n>`: n bytes of body, byte i being `i % 251` (order and loss show);
/// - anything else: JSON echo of the request (method, path, query, headers, body length, name).
///
/// It counts accepted connections and requests, and the requests in flight.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start(name: &'static str) -> Upstream {
        Self::start_on(name, "127.0.0.1:0".parse().expect("an address"))
    }

    pub fn start_on(name: &'static str, addr: SocketAddr) -> Upstream {
        Self::start_with(name, TcpListener::bind(addr).expect("bind upstream"), None)
    }

    /// An HTTPS upstream (its server config may require client certificates).
    pub fn start_tls(name: &'static str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::start_with(name, TcpListener::bind("127.0.0.1:0").expect("bind upstream"), Some(tls))
    }

    fn start_with(name: &'static str, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let counters = (connections.clone(), requests.clone(), in_flight.clone());
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            counters.0.fetch_add(1, Ordering::SeqCst);
                            let c = counters.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| {
                                    let c = c.clone();
                                    async move { Ok::<_, Infallible>(upstream_handle(name, req, &c).await) }
                                });
                                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                                match tls {
                                    None => {
                                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                                    }
                                    Some(config) => {
                                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(stream).await else {
                                            return;
                                        };
                                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        Upstream { addr, connections, requests, in_flight, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Counters = (Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>);

async fn upstream_handle(name: &'static str, req: Request<Incoming>, c: &Counters) -> Response<Full<Bytes>> {
    c.1.fetch_add(1, Ordering::SeqCst);
    c.2.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let mut seg = path.trim_start_matches('/').splitn(2, '/');
    let resp = match (seg.next().unwrap_or(""), seg.next()) {
        ("status", Some(code)) => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"status\n")));
            *r.status_mut() =
                code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST);
            r
        }
        ("bytes", Some(n)) => Response::new(Full::new(Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]))),
        ("pattern", Some(n)) => Response::new(Full::new(pattern(n.parse().unwrap_or(0)))),
        (first, rest) => {
            if let ("slow", Some(ms)) = (first, rest) {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            }
            echo(name, req).await
        }
    };
    c.2.fetch_sub(1, Ordering::SeqCst);
    resp
}

/// `n` bytes, byte i being `i % 251`.
pub fn pattern(n: usize) -> Bytes {
    static CYCLE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let cycle = CYCLE.get_or_init(|| (0..=250u8).collect());
    let mut out = Vec::with_capacity(n + cycle.len());
    while out.len() < n {
        out.extend_from_slice(cycle);
    }
    out.truncate(n);
    Bytes::from(out)
}

async fn echo(name: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let headers: HashMap<String, Vec<String>> = parts
        .headers
        .keys()
        .map(|k| {
            (
                k.to_string(),
                parts.headers.get_all(k).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect(),
            )
        })
        .collect();
    let v = serde_json::json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body.len(),
    });
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    r.headers_mut().insert("connection", http::HeaderValue::from_static("keep-alive, x-upstream-private"));
    r.headers_mut().insert("x-upstream-private", http::HeaderValue::from_static("secret"));
    r
}

mod config;

pub use config::ConfigBuilder;

// ---------------------------------------------------------------------------------------------
// Redis: a real redis-server (and a real three-master Redis Cluster) on free loopback ports.
// They fail loudly when redis-server is missing: `cargo xtask deps` installs it.

#[path = "../support/redis_server.rs"]
mod redis_server;

pub use redis_server::{ClusterOptions, RedisCluster, RedisServer, raw_command as redis_command};

/// The TOML list of a cluster's seed nodes.
pub fn toml_nodes(cluster: &RedisCluster) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", nodes.join(", "))
}

// ---------------------------------------------------------------------------------------------
// A fake LLM / MCP upstream, OpenAI-compatible:
// - `POST /v1/chat/completions`: JSON with `usage`, or server-sent events when the request
//   body has `"stream": true` (the last data event carries `usage`, then `[DONE]`);
// - `POST /mcp`: a JSON-RPC result.
// - `GET /v1/models`: JSON without usage.
// Request headers steer it: `x-fake-tokens` (total tokens in the body's usage, default 150),
// `x-fake-tools` (comma-separated tool calls in the response), `x-fake-usage-header: N` (report N
// tokens in an `x-usage-tokens` response header), `x-fake-hold` (stream: send the first event,
// then wait for `FakeLlm::release` before the rest).

/// A response body fed through a channel, so the fake upstream can stream with pauses.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    hold: Arc<tokio::sync::Notify>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeLlm {
    pub fn start() -> FakeLlm {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake llm");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let hold = Arc::new(tokio::sync::Notify::new());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (count, gate) = (requests.clone(), hold.clone());
        let thread = std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => return,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let (count, gate) = (count.clone(), gate.clone());
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| {
                                    count.fetch_add(1, Ordering::SeqCst);
                                    let gate = gate.clone();
                                    async move { Ok::<_, Infallible>(fake_llm(req, gate).await) }
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        FakeLlm { addr, requests, hold, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Lets a held stream (`x-fake-hold`) finish.
    pub fn release(&self) {
        self.hold.notify_one();
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.hold.notify_one();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn fake_llm(req: Request<Incoming>, hold: Arc<tokio::sync::Notify>) -> Response<ChannelBody> {
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let tokens: u64 = header("x-fake-tokens").and_then(|t| t.parse().ok()).unwrap_or(150);
    let tools: Vec<String> =
        header("x-fake-tools").map(|t| t.split(',').map(str::to_owned).collect()).unwrap_or_default();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = request["model"].as_str().unwrap_or("fake-model").to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let mut resp = Response::new(ChannelBody(rx));
    if let Some(reported) = header("x-fake-usage-header") {
        resp.headers_mut().insert("x-usage-tokens", http::HeaderValue::from_str(&reported).expect("header value"));
    }
    if parts.uri.path() == "/v1/models" {
        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
        let _ = tx.send(Bytes::from_static(b"{\"object\":\"list\",\"data\":[]}")).await;
        return resp;
    }
    if parts.uri.path() == "/mcp" {
        let result = serde_json::json!({"jsonrpc": "2.0", "id": request["id"], "result": {"content": []}});
        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
        let _ = tx.send(Bytes::from(result.to_string())).await;
        return resp;
    }
    let calls: Vec<serde_json::Value> = tools
        .iter()
        .map(|t| serde_json::json!({"type": "function", "function": {"name": t, "arguments": "{}"}}))
        .collect();
    let usage = serde_json::json!({"prompt_tokens": tokens / 3, "completion_tokens": tokens - tokens / 3, "total_tokens": tokens});
    if request["stream"].as_bool() == Some(true) {
        resp.headers_mut().insert("content-type", http::HeaderValue::from_static("text/event-stream"));
        let held = header("x-fake-hold").is_some();
        tokio::spawn(async move {
            let event = |v: serde_json::Value| Bytes::from(format!("data: {v}\n\n"));
            let first =
                serde_json::json!({"model": model, "choices": [{"delta": {"role": "assistant", "content": "Hel"}}]});
            let _ = tx.send(event(first)).await;
            if held {
                hold.notified().await;
            }
            let second =
                serde_json::json!({"model": model, "choices": [{"delta": {"content": "lo", "tool_calls": calls}}]});
            let _ = tx.send(event(second)).await;
            let last = serde_json::json!({"model": model, "choices": [], "usage": usage});
            let _ = tx.send(event(last)).await;
            let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
        });
        return resp;
    }
    let full = serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello", "tool_calls": calls}}],
        "usage": usage,
    });
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    let _ = tx.send(Bytes::from(full.to_string())).await;
    resp
}
