//! One login in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven over
//! WebDriver): the gateway sends it to the provider, it fills the provider's login form, and it
//! ends on the protected page with the user the form named.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};

use super::{Provider, config};
use crate::e2e::support::*;

struct Driver {
    child: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let r = send(&client(), req).await;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert!(r.status.is_success(), "WebDriver {method} {url}: {} {v}", r.status);
    v["value"].clone()
}

impl Driver {
    async fn start() -> Driver {
        let addr = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver) is needed: run `cargo xtask deps`");
        let base = format!("http://{addr}");
        let up = eventually(Duration::from_secs(15), || raw_get(addr, "/status").ok().filter(|r| r.contains("ready")));
        assert!(up.is_some(), "chromedriver did not start");
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let v = call("POST", &format!("{base}/session"), Some(caps)).await;
        let session = v["sessionId"].as_str().expect("a WebDriver session").to_owned();
        Driver { child, base, session, _profile: profile }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}/session/{}{rest}", self.base, self.session)
    }

    async fn element(&self, css: &str) -> String {
        for _ in 0..100 {
            let req = Request::post(self.url("/element"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(json!({"using": "css selector", "value": css}).to_string())))
                .unwrap();
            let r = send(&client(), req).await;
            if r.status.is_success() {
                let v: Value = r.json();
                let id = v["value"].as_object().and_then(|o| o.values().next()).and_then(Value::as_str);
                return id.expect("element id").to_owned();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no element {css} on the page");
    }
}

#[tokio::test]
async fn oidc_login_in_headless_chromium() {
    let provider = Provider::start();
    let up = Upstream::start("app");
    let gw = Gateway::start(|p| config(p, &provider, &up, "", ""));
    let d = Driver::start().await;
    call("POST", &d.url("/url"), Some(json!({"url": gw.url("/protected/page")}))).await;
    // The provider's login form, reached through the gateway's redirect.
    let user = d.element("#username").await;
    call("POST", &d.url(&format!("/element/{user}/value")), Some(json!({"text": "frank"}))).await;
    let button = d.element("#login").await;
    call("POST", &d.url(&format!("/element/{button}/click")), Some(json!({}))).await;
    let mut source = String::new();
    for _ in 0..100 {
        source = call("GET", &d.url("/source"), None).await.as_str().unwrap_or("").to_owned();
        if source.contains("x-forwarded-user") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = call("GET", &d.url("/url"), None).await;
    assert_eq!(url.as_str(), Some(gw.url("/protected/page").as_str()), "{source}");
    assert!(source.contains("\"x-forwarded-user\":[\"frank\"]"), "not the protected page as frank: {source}");
    assert_eq!(gw.series("gateway_oidc_logins_total", &[("login", "web")]), 1.0);
    call("DELETE", &d.url(""), None).await;
}
