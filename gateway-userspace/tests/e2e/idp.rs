//! A real OIDC identity provider for the tests, on loopback: discovery, a JWKS whose keys the
//! test rotates, RFC 7662 introspection with client credentials, and an outage switch. Plus the
//! signing keys and a token minter (tokens assembled by hand, so tests can build every forged
//! variant; signatures by aws-lc-rs).
//!
//! [`Idp`] runs in the test's process; [`IdpProcess`] runs the same server as a process of its
//! own, so faults are real: paused (SIGSTOP: connections are accepted by the kernel and never
//! answered), resumed (SIGCONT), killed (connections refused) and restarted on the same port.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256},
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A signing key.
pub enum Key {
    Rsa(RsaKeyPair),
    Es256(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    pub fn rsa() -> Key {
        Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub fn es256() -> Key {
        Key::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub fn ed() -> Key {
        Key::Ed(Ed25519KeyPair::generate().unwrap())
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Key::Rsa(_) => "RS256",
            Key::Es256(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        }
    }

    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            Key::Rsa(k) => {
                let p = k.public_key();
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                    "n": b64(p.modulus().big_endian_without_leading_zero()),
                    "e": b64(p.exponent().big_endian_without_leading_zero())})
            }
            Key::Es256(k) => {
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..])})
            }
            Key::Ed(k) => json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        }
    }

    /// The public key as PEM (what an attacker would use as an HMAC secret).
    pub fn public_pem(&self) -> String {
        let der = match self {
            Key::Rsa(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Key::Es256(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
        };
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
            Key::Es256(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// A token signed by this key; `header` gets this key's `alg` unless it names one.
    pub fn token(&self, mut header: Value, claims: &Value) -> String {
        if header.get("alg").is_none() {
            header["alg"] = json!(self.alg());
        }
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// A token with any header and signature bytes (alg none, r = s = 0, …).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

/// HS256 keyed with `secret`: the algorithm-confusion attack when `secret` is a public key.
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    format!("{input}.{}", b64(aws_lc_rs::hmac::sign(&key, input.as_bytes()).as_ref()))
}

struct State {
    issuer: String,
    /// The process IdP's state file (keys, introspection answers, delay), read per request.
    file: Option<PathBuf>,
    /// Each answer is held back this long (a slow IdP).
    delay_ms: AtomicU64,
    /// The JWKS served, as JWK values.
    keys: Mutex<Vec<Value>>,
    cache_control: Mutex<Option<String>>,
    /// Opaque token → introspection answer.
    introspection: Mutex<HashMap<String, Value>>,
    client: (String, String),
    down: AtomicBool,
    discovery_hits: AtomicUsize,
    jwks_hits: AtomicUsize,
    introspection_hits: AtomicUsize,
    other_hits: AtomicUsize,
}

/// The test IdP. Issuer: `http://127.0.0.1:<port>/realms/api`.
pub struct Idp {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Idp {
    pub fn start() -> Idp {
        Self::start_with(None)
    }

    /// The IdP over HTTPS with `tls` (issuer `https://localhost:<port>/realms/api`).
    pub fn start_tls(tls: Arc<rustls::ServerConfig>) -> Idp {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind idp");
        let addr = listener.local_addr().expect("addr");
        let issuer = match tls {
            Some(_) => format!("https://localhost:{}/realms/api", addr.port()),
            None => format!("http://{addr}/realms/api"),
        };
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let state = State::new(issuer, None);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(serve(listener, st, acceptor, rx));
        });
        Idp { addr, state, shutdown: Some(tx), thread: Some(thread) }
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.state.client.0
    }

    pub fn client_secret(&self) -> &str {
        &self.state.client.1
    }

    /// Replaces the published keys (a rotation).
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    pub fn set_cache_control(&self, v: Option<&str>) {
        *self.state.cache_control.lock().unwrap() = v.map(str::to_owned);
    }

    /// While down, every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.state.introspection.lock().unwrap().insert(token.to_owned(), answer);
    }

    pub fn discovery_hits(&self) -> usize {
        self.state.discovery_hits.load(Ordering::SeqCst)
    }
    pub fn jwks_hits(&self) -> usize {
        self.state.jwks_hits.load(Ordering::SeqCst)
    }
    pub fn introspection_hits(&self) -> usize {
        self.state.introspection_hits.load(Ordering::SeqCst)
    }
    /// Requests to any other path (e.g. a `jku` an attacker pointed here).
    pub fn other_hits(&self) -> usize {
        self.state.other_hits.load(Ordering::SeqCst)
    }

    /// Standard claims for a token of this issuer.
    pub fn claims(&self, sub: &str) -> Value {
        json!({"iss": self.issuer(), "aud": "api", "sub": sub, "iat": now() - 5, "nbf": now() - 5,
               "exp": now() + 300, "jti": format!("jti-{sub}-{}", now()), "scope": "read write"})
    }
}

impl State {
    fn new(issuer: String, file: Option<PathBuf>) -> Arc<State> {
        Arc::new(State {
            issuer,
            file,
            delay_ms: AtomicU64::new(0),
            keys: Mutex::default(),
            cache_control: Mutex::new(None),
            introspection: Mutex::default(),
            client: ("gatewayd".into(), "s3cret:value".into()),
            down: AtomicBool::new(false),
            discovery_hits: AtomicUsize::new(0),
            jwks_hits: AtomicUsize::new(0),
            introspection_hits: AtomicUsize::new(0),
            other_hits: AtomicUsize::new(0),
        })
    }

    /// The process IdP: takes keys, introspection answers and delay from its state file.
    fn reload(&self) {
        let Some(file) = &self.file else { return };
        let Ok(v) =
            std::fs::read(file).map_err(|_| ()).and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|_| ()))
        else {
            return;
        };
        if let Some(keys) = v["keys"].as_array() {
            *self.keys.lock().unwrap() = keys.clone();
        }
        if let Some(answers) = v["introspection"].as_object() {
            *self.introspection.lock().unwrap() = answers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        self.delay_ms.store(v["delay_ms"].as_u64().unwrap_or(0), Ordering::SeqCst);
    }

    fn stats(&self) -> Value {
        json!({
            "discovery": self.discovery_hits.load(Ordering::SeqCst),
            "jwks": self.jwks_hits.load(Ordering::SeqCst),
            "introspection": self.introspection_hits.load(Ordering::SeqCst),
        })
    }
}

/// Serves the IdP on `listener` until `shutdown` fires (or forever, if its sender is kept).
async fn serve(
    listener: TcpListener,
    st: Arc<State>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req).await) }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(a) => {
                            let Ok(tls) = a.accept(stream).await else { return };
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                });
            }
        }
    }
}

const PROCESS_ADDR: &str = "GATEWAYD_TEST_IDP_ADDR";
const PROCESS_STATE: &str = "GATEWAYD_TEST_IDP_STATE";

/// The entry point of [`IdpProcess`]: this test binary, re-run with only this (ignored) test and
/// the address and state file in its environment, serves the IdP until it is killed.
#[test]
#[ignore = "the IdP process's entry point; IdpProcess runs it"]
fn idp_process() {
    let addr: SocketAddr = std::env::var(PROCESS_ADDR).expect("run by IdpProcess").parse().expect("address");
    let file = PathBuf::from(std::env::var(PROCESS_STATE).expect("run by IdpProcess"));
    // SO_REUSEPORT: the port is also held by the test's IdpProcess (bound, not listening).
    let listener = reuse_port_socket(addr);
    listener.listen(1024).expect("listen on the IdP process's address");
    let listener: TcpListener = listener.into();
    let state = State::new(format!("http://{addr}/realms/api"), Some(file));
    let (_keep, rx) = tokio::sync::oneshot::channel::<()>();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(serve(listener, state, None, rx));
}

/// A TCP socket bound to `addr` with SO_REUSEPORT (port 0: a free one).
fn reuse_port_socket(addr: SocketAddr) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.bind(&addr.into()).expect("bind");
    socket
}

/// The test IdP as a process of its own (see the module documentation). Its keys, introspection
/// answers and answer delay live in a state file it reads on every request; its hit counters are
/// read over HTTP (`/_stats`), so they start again from zero after a restart.
pub struct IdpProcess {
    pub addr: SocketAddr,
    issuer: String,
    state_file: PathBuf,
    state: Mutex<Value>,
    child: Option<Child>,
    /// The IdP's port, bound (SO_REUSEPORT, like the process's listener) and never listening,
    /// for the whole test: while the process is killed the port refuses connections, and no
    /// parallel test can take it before the restart (a port bound and released could be).
    _port: socket2::Socket,
    _dir: tempfile::TempDir,
}

impl IdpProcess {
    pub fn start() -> IdpProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = reuse_port_socket(SocketAddr::from(([127, 0, 0, 1], 0)));
        let addr = port.local_addr().expect("local addr").as_socket().expect("an inet address");
        let mut idp = IdpProcess {
            _port: port,
            addr,
            issuer: format!("http://{addr}/realms/api"),
            state_file: dir.path().join("idp-state.json"),
            state: Mutex::new(json!({"keys": [], "introspection": {}, "delay_ms": 0})),
            child: None,
            _dir: dir,
        };
        idp.write_state();
        idp.spawn();
        idp
    }

    fn spawn(&mut self) {
        let exe = std::env::current_exe().expect("the test binary");
        let child = Command::new(exe)
            .args(["--exact", "e2e::idp::idp_process", "--ignored", "--test-threads=1"])
            .env(PROCESS_ADDR, self.addr.to_string())
            .env(PROCESS_STATE, &self.state_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the IdP process");
        self.child = Some(child);
        super::support::eventually(Duration::from_secs(20), || self.try_stats())
            .expect("the IdP process did not start answering");
    }

    fn write_state(&self) {
        let tmp = self.state_file.with_extension("tmp");
        std::fs::write(&tmp, self.state.lock().unwrap().to_string()).expect("write IdP state");
        std::fs::rename(&tmp, &self.state_file).expect("replace IdP state");
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        f(&mut self.state.lock().unwrap());
        self.write_state();
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        "gatewayd"
    }

    pub fn client_secret(&self) -> &str {
        "s3cret:value"
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        self.edit(|s| s["keys"] = json!(keys));
    }

    /// Makes these opaque tokens active (`answer` for each).
    pub fn set_introspection(&self, tokens: &[String], answer: &Value) {
        self.edit(|s| {
            for t in tokens {
                s["introspection"][t.as_str()] = answer.clone();
            }
        });
    }

    /// Every answer is held back this long (a slow IdP).
    pub fn set_delay(&self, delay: Duration) {
        self.edit(|s| s["delay_ms"] = json!(delay.as_millis() as u64));
    }

    fn try_stats(&self) -> Option<Value> {
        let text = super::support::raw_get(self.addr, "/_stats").ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// Introspection calls received since the process started.
    pub fn introspection_hits(&self) -> u64 {
        self.try_stats().and_then(|s| s["introspection"].as_u64()).expect("IdP process stats")
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal the IdP process");
    }

    /// SIGSTOP: the kernel still accepts connections; nothing answers. Returns once every thread
    /// of the process is stopped (the signal is delivered asynchronously: a thread that was
    /// running could otherwise still answer a request sent right after).
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let pid = self.child.as_ref().expect("running").id();
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
            tasks.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T') || rest.starts_with('t')))
                    .unwrap_or(true)
            })
        };
        assert!(
            super::support::eventually(std::time::Duration::from_secs(10), || stopped().then_some(())).is_some(),
            "the IdP process did not stop"
        );
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    /// SIGKILL: connections are refused until [`IdpProcess::restart`].
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A new process on the same address (counters start from zero).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for IdpProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json_response(status: StatusCode, v: &Value, cache_control: Option<&str>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    if let Some(cc) = cache_control.and_then(|c| http::HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert("cache-control", cc);
    }
    r
}

async fn handle(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/_stats" {
        return json_response(StatusCode::OK, &st.stats(), None);
    }
    st.reload();
    let counter = match path.as_str() {
        "/realms/api/.well-known/openid-configuration" => &st.discovery_hits,
        "/realms/api/jwks" => &st.jwks_hits,
        "/realms/api/introspect" => &st.introspection_hits,
        _ => &st.other_hits,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    let delay = st.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if st.down.load(Ordering::SeqCst) {
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &json!({"error": "down"}), None);
    }
    match path.as_str() {
        "/realms/api/.well-known/openid-configuration" => json_response(
            StatusCode::OK,
            &json!({
                "issuer": st.issuer,
                "jwks_uri": format!("{}/jwks", st.issuer),
                "introspection_endpoint": format!("{}/introspect", st.issuer),
            }),
            None,
        ),
        "/realms/api/jwks" => {
            let keys = st.keys.lock().unwrap().clone();
            let cc = st.cache_control.lock().unwrap().clone();
            json_response(StatusCode::OK, &json!({ "keys": keys }), cc.as_deref())
        }
        "/realms/api/introspect" => {
            let expected =
                format!("Basic {}", STANDARD.encode(format!("{}:{}", st.client.0, st.client.1.replace(':', "%3A"))));
            let authorized = req.headers().get("authorization").is_some_and(|v| v.as_bytes() == expected.as_bytes());
            let form = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if !authorized {
                return json_response(StatusCode::UNAUTHORIZED, &json!({"error": "invalid_client"}), None);
            }
            let token = form_urlencoded::parse(&form).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
            let answer = token
                .and_then(|t| st.introspection.lock().unwrap().get(&t).cloned())
                .unwrap_or_else(|| json!({"active": false}));
            json_response(StatusCode::OK, &answer, None)
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not_found"}), None),
    }
}
