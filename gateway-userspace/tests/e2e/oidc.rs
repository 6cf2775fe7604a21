//! OIDC login at the edge, end to end: the real gatewayd, the real npm `oauth2-mock-server`
//! (installed by `cargo xtask deps`, steered by `oidc/provider.mjs`) and a scripted browser that
//! follows redirects and keeps cookies. The headless-Chromium run is in `oidc/chromium.rs`.

#[path = "oidc/chromium.rs"]
mod chromium;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::support::*;

pub const CLIENT_ID: &str = "gatewayd";
pub const CLIENT_SECRET: &str = "s3cret-for-tests";

/// Where `cargo xtask deps` installs the pinned npm package.
pub fn mock_server_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/npm/node_modules/oauth2-mock-server"))
}

/// The OIDC provider process (node + oauth2-mock-server).
pub struct Provider {
    child: Child,
    pub addr: SocketAddr,
}

impl Provider {
    pub fn start() -> Provider {
        let dir = mock_server_dir();
        assert!(
            dir.join("package.json").exists(),
            "oauth2-mock-server is not installed at {}: run `cargo xtask deps`",
            dir.display()
        );
        let addr = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/oidc/provider.mjs");
        let child = Command::new("node")
            .arg(script)
            .arg(addr.port().to_string())
            .arg(&dir)
            .args([CLIENT_ID, CLIENT_SECRET])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (nodejs) is needed for the OIDC provider: run `cargo xtask deps`");
        let p = Provider { child, addr };
        let up = eventually(Duration::from_secs(15), || {
            raw_get(addr, "/.well-known/openid-configuration")
                .ok()
                .filter(|r| r.starts_with("HTTP/1.1 200"))
                .map(|_| ())
        });
        assert!(up.is_some(), "the OIDC provider did not start");
        p
    }

    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn control(&self, v: Value) {
        let r = send(
            &client(),
            Request::post(format!("{}/test/control", self.issuer()))
                .body(Full::new(Bytes::from(v.to_string())))
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }

    pub async fn stats(&self) -> Value {
        get(&format!("{}/test/stats", self.issuer())).await.json()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// gatewayd config: an upstream behind `/` with policy `web` (jwt from the provider, login
/// `web`), and `extra` appended to the `[[auth.logins]]` entry.
pub fn config(p: &Ports, provider: &Provider, up: &Upstream, extra: &str, top: &str) -> String {
    std::fs::write(p.dir.join("client-secret"), CLIENT_SECRET).unwrap();
    std::fs::write(p.dir.join("session-key"), "0123456789abcdef".repeat(4)).unwrap();
    let login = format!(
        r#"
name = "web"
issuer = "idp"
client_id = "{CLIENT_ID}"
client_secret_file = "{dir}/client-secret"
scopes = ["profile", "offline_access"]
redirect_uri = "http://{listen}/oauth2/callback"
{extra}
"#,
        dir = p.dir.display(),
        listen = p.listen,
    );
    ConfigBuilder::new(p)
        .toml(top)
        .table("[audit]", &format!("path = \"{}/audit.log\"", p.dir.display()))
        .service("app", &[up.addr])
        .route("app", "app", "")
        .auth(r#"default_policy = "web""#)
        .table(
            "[[auth.issuers]]",
            &format!(
                "name = \"idp\"\nissuer = \"{}\"\naudiences = [\"gateway-api\"]\nfetch_timeout = \"2s\"",
                provider.issuer()
            ),
        )
        .table("[[auth.policies]]", "name = \"web\"\nany_of = [\"jwt\"]\nissuers = [\"idp\"]\nlogin = \"web\"")
        .table("[[auth.logins]]", &login)
        .build()
}

/// A scripted browser: follows redirects, keeps cookies (one jar: every server is 127.0.0.1),
/// fills the provider's login form by adding `username` to the authorize URL as the form's GET
/// would.
pub struct Browser {
    pub jar: HashMap<String, String>,
    client: HttpClient,
    pub user: String,
}

impl Browser {
    pub fn new(user: &str) -> Browser {
        Browser { jar: HashMap::new(), client: client(), user: user.into() }
    }

    pub async fn request(&mut self, method: &str, url: &str, accept: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(url).header("accept", accept);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        let r = send(&self.client, req.body(Full::default()).unwrap()).await;
        for c in r.headers.get_all("set-cookie") {
            let c = c.to_str().unwrap();
            let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.into(), value.into());
            }
        }
        r
    }

    /// A navigation, following redirects; returns the final answer and the URLs visited.
    pub async fn navigate(&mut self, url: &str) -> (Reply, Vec<String>) {
        self.navigate_until(url, false).await
    }

    /// Like `navigate`, but stops at the answer that sets the session cookie (the callback's).
    pub async fn login(&mut self, url: &str) -> Reply {
        self.navigate_until(url, true).await.0
    }

    async fn navigate_until(&mut self, url: &str, stop_at_session: bool) -> (Reply, Vec<String>) {
        let mut url = url.to_owned();
        let mut visited = vec![url.clone()];
        for _ in 0..10 {
            let r = self.request("GET", &url, "text/html,application/xhtml+xml").await;
            if !r.status.is_redirection() {
                if r.status == 200 && url.contains("/authorize?") && !url.contains("username=") {
                    // The provider's login form: submit it.
                    url = format!("{url}&username={}", self.user);
                    visited.push(url.clone());
                    continue;
                }
                return (r, visited);
            }
            let location = r.header("location").expect("redirect without Location").to_owned();
            if stop_at_session && self.jar.contains_key(SESSION) {
                return (r, visited);
            }
            url = absolute(&url, &location);
            visited.push(url.clone());
        }
        panic!("too many redirects: {visited:?}");
    }

    /// An API-style call (JSON, no redirects).
    pub async fn api(&mut self, url: &str) -> Reply {
        self.request("GET", url, "application/json").await
    }
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_owned();
    }
    let origin_end =
        base.find("://").map(|i| i + 3).and_then(|s| base[s..].find('/').map(|j| s + j)).unwrap_or(base.len());
    format!("{}{location}", &base[..origin_end])
}

fn param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn echo(r: &Reply) -> Value {
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()
}

const SESSION: &str = "__Host-gatewayd-session";
const STATE: &str = "__Host-gatewayd-session-state";

#[tokio::test]
async fn oidc_login_state_replay_tamper_redirects_and_logout() {
    let provider = Provider::start();
    let up = Upstream::start("app");
    let gw = Gateway::start(|p| config(p, &provider, &up, "", ""));
    let mut b = Browser::new("alice");

    // API clients still get 401, and nothing is sent to the IdP.
    let r = b.api(&gw.url("/data")).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(r.header("www-authenticate").is_some_and(|c| c.starts_with("Bearer")));

    // A browser is sent to the provider with PKCE S256, state and nonce; the state is bound to it.
    let r = b.request("GET", &gw.url("/page?x=1"), "text/html").await;
    assert_eq!(r.status, 303, "{:?}", r.body);
    let authorize = r.header("location").unwrap().to_owned();
    assert!(authorize.starts_with(&format!("{}/authorize?", provider.issuer())), "{authorize}");
    for p in ["state", "nonce", "code_challenge"] {
        assert!(param(&authorize, p).is_some_and(|v| v.len() >= 43), "{p} in {authorize}");
    }
    assert_eq!(param(&authorize, "code_challenge_method").as_deref(), Some("S256"));
    assert_eq!(param(&authorize, "response_type").as_deref(), Some("code"));
    let state_cookie =
        r.headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap()).find(|c| c.starts_with(STATE));
    let state_cookie = state_cookie.expect("state cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(state_cookie.contains(attr), "{state_cookie}");
    }

    // Full login: form, code, callback (code exchanged with the verifier), back to the page.
    let (r, visited) = b.navigate(&authorize).await;
    let v = echo(&r);
    assert!(visited.last().unwrap().ends_with("/page?x=1"), "{visited:?}");
    assert_eq!(v["headers"]["x-forwarded-user"][0], "alice", "{v}");
    let auth = v["headers"]["authorization"][0].as_str().expect("access token forwarded");
    assert!(auth.starts_with("Bearer ey"), "{auth}");
    let upstream_cookie = v["headers"]["cookie"].to_string();
    assert!(!upstream_cookie.contains(SESSION), "the session id reached the upstream: {upstream_cookie}");
    let stats = provider.stats().await;
    assert_eq!(stats["pkce_checked"], 1, "{stats}");
    assert_eq!(stats["token"]["authorization_code"], 1, "{stats}");
    assert_eq!(gw.series("gateway_oidc_logins_total", &[("login", "web")]), 1.0);
    let callback = visited.iter().find(|u| u.contains("/oauth2/callback?")).unwrap().clone();
    let set = b.jar.get(SESSION).expect("session cookie").clone();
    assert!(!b.jar.contains_key(STATE), "the state cookie is cleared after the callback");
    // The browser never sees a token: the cookie is an opaque id.
    assert!(!set.starts_with("ey") && set.len() == 43, "{set}");

    // Logged in: API-style calls of the browser work too, as alice.
    assert_eq!(echo(&b.api(&gw.url("/data")).await)["headers"]["x-forwarded-user"][0], "alice");
    let audit = eventually(Duration::from_secs(5), || {
        gw.audit_lines(&gw.ports.dir.join("audit.log"))
            .into_iter()
            .find(|l| l["path"] == "/data" && l["status_code"] == 200)
    })
    .expect("audit line of the logged-in request");
    assert_eq!(audit["user_id"], "alice", "{audit}");

    // Replayed callback: the state was single use.
    let mut replay = Browser::new("alice");
    let state = param(&callback, "state").unwrap();
    replay.jar.insert(STATE.into(), state.clone());
    let r = replay.request("GET", &callback, "text/html").await;
    assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (400, json!("oidc_bad_state")));

    // Wrong state: not the one this browser was given.
    let mut other = Browser::new("mallory");
    let r = other.request("GET", &gw.url("/"), "text/html").await;
    let their_state = param(r.header("location").unwrap(), "state").unwrap();
    let forged = callback.replace(&state, &their_state);
    let mut victim = Browser::new("alice");
    let r = victim.request("GET", &forged, "text/html").await; // no state cookie at all
    assert_eq!(r.json()["error"], "oidc_bad_state");
    victim.jar.insert(STATE.into(), "x".repeat(43));
    let r = victim.request("GET", &forged, "text/html").await; // another state's cookie
    assert_eq!(r.json()["error"], "oidc_bad_state");

    // Replayed code under a fresh, valid state: the provider refuses it (its PKCE challenge
    // was used up), so no session.
    let refused_before = provider.stats().await["token_refused"].as_u64().unwrap();
    let code = param(&callback, "code").unwrap();
    let fresh = format!("{}?code={code}&state={their_state}", gw.url("/oauth2/callback"));
    let r = other.request("GET", &fresh, "text/html").await;
    assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (401, json!("oidc_code_refused")));
    assert_eq!(provider.stats().await["token_refused"].as_u64().unwrap(), refused_before + 1);
    assert!(!other.jar.contains_key(SESSION));
    assert_eq!(gw.series("gateway_oidc_failures_total", &[("login", "web"), ("reason", "code_refused")]), 1.0);

    // Tampered session cookie: no session; a browser is sent to log in and the cookie cleared.
    let mut tampered = Browser::new("alice");
    let mut bad = set.clone();
    bad.replace_range(0..1, if bad.starts_with('A') { "B" } else { "A" });
    tampered.jar.insert(SESSION.into(), bad);
    let r = tampered.api(&gw.url("/data")).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (401, json!("oidc_no_session")));
    assert!(!tampered.jar.contains_key(SESSION), "the bad cookie is cleared");

    // Open redirects: only same-site return URLs.
    for evil in ["https://evil.example/", "//evil.example/x", "/\\evil.example", "http://127.0.0.1.evil/"] {
        let url = format!(
            "{}?return_to={}",
            gw.url("/oauth2/start"),
            form_urlencoded::byte_serialize(evil.as_bytes()).collect::<String>()
        );
        let r = b.request("GET", &url, "text/html").await;
        assert_eq!((r.status.as_u16(), r.json()["error"].clone()), (400, json!("oidc_bad_return_url")), "{evil}");
    }
    let mut c = Browser::new("carol");
    let start = format!(
        "{}?return_to={}",
        gw.url("/oauth2/start"),
        form_urlencoded::byte_serialize(gw.url("/ok").as_bytes()).collect::<String>()
    );
    let (r, visited) = c.navigate(&start).await;
    assert_eq!(echo(&r)["headers"]["x-forwarded-user"][0], "carol");
    assert!(visited.last().unwrap().ends_with("/ok"), "{visited:?}");

    // Logout: the session ends, the cookie is cleared, the browser goes to end_session.
    let r = b.request("GET", &gw.url("/oauth2/logout"), "text/html").await;
    assert_eq!(r.status, 303);
    let end = r.header("location").unwrap();
    assert!(end.starts_with(&format!("{}/endsession?", provider.issuer())), "{end}");
    assert!(param(end, "id_token_hint").is_some(), "{end}");
    assert!(!b.jar.contains_key(SESSION));
    b.jar.insert(SESSION.into(), set);
    let r = b.api(&gw.url("/data")).await;
    assert_eq!(r.json()["error"], "oidc_no_session", "the old cookie no longer works");
    assert_eq!(gw.series("gateway_oidc_logouts_total", &[("login", "web")]), 1.0);
}

#[tokio::test]
async fn oidc_refresh_is_single_flight_and_a_refused_refresh_ends_the_session() {
    let provider = Provider::start();
    let up = Upstream::start("app");
    let gw = Gateway::start(|p| config(p, &provider, &up, "client_auth = \"client_secret_post\"\n", ""));
    // Access tokens that expire inside refresh_before (30s): every use wants a refresh.
    provider.control(json!({"access_ttl": 20})).await;
    let mut b = Browser::new("dave");
    assert_eq!(b.login(&gw.url("/")).await.status, 303);
    assert_eq!(provider.stats().await["token"]["refresh_token"], Value::Null, "no refresh yet");

    // Now long-lived tokens: eight concurrent requests of the session, one refresh.
    provider.control(json!({"access_ttl": 3600})).await;
    let cookie = format!("{SESSION}={}", b.jar[SESSION]);
    let calls = (0..8).map(|_| {
        let req = Request::get(gw.url("/data")).header("cookie", cookie.clone()).body(Full::default()).unwrap();
        async move { send(&client(), req).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    let tokens: std::collections::HashSet<String> =
        replies.iter().map(|r| echo(r)["headers"]["authorization"][0].as_str().unwrap().to_owned()).collect();
    assert_eq!(tokens.len(), 1, "every request got the one refreshed token");
    assert_eq!(provider.stats().await["token"]["refresh_token"], 1);
    assert_eq!(gw.series("gateway_oidc_refreshes_total", &[("login", "web"), ("result", "ok")]), 1.0);

    // A refused refresh ends the session: a browser is sent to log in again, API calls get 401.
    provider.control(json!({"access_ttl": 20})).await;
    b.jar.clear();
    assert_eq!(b.login(&gw.url("/")).await.status, 303); // a new session with a short-lived token
    provider.control(json!({"fail_refresh": true})).await;
    let stale = b.jar[SESSION].clone();
    let r = b.request("GET", &gw.url("/page"), "text/html").await;
    assert_eq!(r.status, 303);
    assert!(r.header("location").unwrap().starts_with(&format!("{}/authorize?", provider.issuer())));
    assert!(!b.jar.contains_key(SESSION), "the cookie is cleared");
    assert_eq!(gw.series("gateway_oidc_refreshes_total", &[("login", "web"), ("result", "failed")]), 1.0);
    b.jar.insert(SESSION.into(), stale);
    assert_eq!(b.api(&gw.url("/data")).await.json()["error"], "oidc_no_session");
}

#[tokio::test]
async fn oidc_sessions_are_shared_by_two_nodes_through_redis_encrypted() {
    let provider = Provider::start();
    let redis = RedisServer::start();
    let up = Upstream::start("app");
    let shared = "session_store = \"redis\"\nsession_key_file = \"{dir}/session-key\"\n";
    let top = format!("[redis]\nurl = \"{}\"\ntimeout = \"1s\"\n", redis.url());
    let start =
        || Gateway::start(|p| config(p, &provider, &up, &shared.replace("{dir}", &p.dir.display().to_string()), &top));
    let (a, b) = (start(), start());
    let mut browser = Browser::new("erin");
    let (r, _) = browser.navigate(&a.url("/")).await;
    assert_eq!(echo(&r)["headers"]["x-forwarded-user"][0], "erin");
    // The other node knows the session.
    assert_eq!(echo(&browser.api(&b.url("/data")).await)["headers"]["x-forwarded-user"][0], "erin");

    // At rest in Redis: sealed, keyed by a digest, no token or session id in clear.
    let port: u16 = redis.url().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    let keys = redis_command(port, "KEYS *oidc*").unwrap();
    assert!(keys.contains("oidc:web:session:"), "{keys}");
    assert!(!keys.contains(&browser.jar[SESSION]), "{keys}");
    let key = keys.lines().find(|l| l.contains("oidc:web:session:")).unwrap().trim().to_owned();
    let value = redis_command(port, &format!("GET {key}")).unwrap();
    assert!(!value.contains("eyJ") && !value.contains("erin"), "tokens in clear in Redis: {value}");

    // Logout on one node ends the session on both.
    let cookie = browser.jar[SESSION].clone();
    let r = browser.request("GET", &b.url("/oauth2/logout"), "text/html").await;
    assert_eq!(r.status, 303);
    browser.jar.insert(SESSION.into(), cookie);
    assert_eq!(browser.api(&a.url("/data")).await.json()["error"], "oidc_no_session");
}
