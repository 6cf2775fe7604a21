//! The OIDC part of `cargo xtask bench auth`: the e2e tests' provider (npm oauth2-mock-server via
//! `provider.mjs`, logging a fixed user in without a form), a login route, and one real login
//! (with curl, step by step) whose session cookie the load generators then send.

use std::{fs, net::SocketAddr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::super::{
    free_port,
    harness::{Harness, Ready},
};
use crate::cmd::workspace_root;

const CLIENT_ID: &str = "gatewayd-bench";
const CLIENT_SECRET: &str = "bench-secret";
pub const COOKIE: &str = "__Host-gatewayd-session";

/// Starts the provider on the load CPUs; returns its address.
pub fn start_provider(h: &mut Harness) -> Result<SocketAddr> {
    let module = workspace_root().join("target/npm/node_modules/oauth2-mock-server");
    if !module.join("package.json").exists() {
        bail!("{} is missing: `cargo xtask deps` installs it", module.display());
    }
    let script = workspace_root().join("gateway-userspace/tests/e2e/oidc/provider.mjs");
    let addr = free_port()?;
    let mut cmd = h.plan.load.taskset("node");
    cmd.arg(script).arg(addr.port().to_string()).arg(module).args([CLIENT_ID, CLIENT_SECRET, "bench-user"]);
    h.start_ready("OIDC provider", cmd, Ready::Http(addr, "/.well-known/openid-configuration"))?;
    Ok(addr)
}

/// The issuer, policy, login and route (`/session`, same upstream) for gatewayd's config.
pub fn config(provider: SocketAddr, listen: SocketAddr, dir: &Path) -> Result<String> {
    let secret = dir.join("oidc-client-secret");
    fs::write(&secret, CLIENT_SECRET)?;
    Ok(format!(
        r#"
[[routes]]
name = "session"
service = "upstream"
paths = ["/session"]
auth = "browser"

[[auth.issuers]]
name = "idp"
issuer = "http://{provider}"
audiences = ["gateway-api"]

[[auth.policies]]
name = "browser"
any_of = ["jwt"]
issuers = ["idp"]
login = "web"

[[auth.logins]]
name = "web"
issuer = "idp"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
redirect_uri = "http://{listen}/session/oauth2/callback"
"#,
        secret = secret.display()
    ))
}

fn head(args: &[&str]) -> Result<String> {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-D", "-"]).args(args).output()?;
    if !out.status.success() {
        bail!("curl {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn header<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn cookie(head: &str, name: &str) -> Option<String> {
    header(head, "set-cookie").into_iter().find_map(|c| {
        let pair = c.split(';').next()?;
        pair.starts_with(&format!("{name}=")).then(|| pair.to_owned())
    })
}

/// Logs in the way a browser does (gateway → provider → callback); returns the `Cookie` value.
pub fn log_in(gw: SocketAddr) -> Result<String> {
    let start = head(&["-H", "Accept: text/html", &format!("http://{gw}/session/")])?;
    let authorize = header(&start, "location").first().context("no redirect to the provider")?.to_string();
    let state = cookie(&start, &format!("{COOKIE}-state")).context("no state cookie")?;
    let code = head(&[&authorize])?;
    let callback = header(&code, "location").first().context("no redirect from the provider")?.to_string();
    let done = head(&["-H", &format!("Cookie: {state}"), &callback])?;
    cookie(&done, COOKIE).with_context(|| format!("no session after the callback:\n{done}"))
}
