//! The shared revocation list under Redis faults: a revocation made while Redis is down is
//! queued and reaches the other nodes once it is back; revocations survive a reload that
//! rebuilds the list and a restart while Redis is down (the state file).

use std::{process::Command, time::Duration};

use serde_json::json;

use super::{
    identity::{call, config, idp_auth},
    idp::*,
    support::*,
};

/// `[redis]` on `redis` and a Redis revocation store failing open, so a token passes unless the
/// node knows it is revoked.
fn shared(redis: &RedisServer, idp: &Idp, cache_ttl: &str) -> String {
    format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n{}",
        redis.url(),
        idp_auth(
            idp,
            &format!(
                "[auth.revocation]\nstore = \"redis\"\non_store_error = \"fail_open\"\ncache_ttl = \"{cache_ttl}\""
            ),
            ""
        )
    )
}

/// A Redis, an IdP serving one signing key (`k`), and an upstream.
fn parts() -> (RedisServer, Idp, Key, Upstream) {
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    (RedisServer::start(), idp, key, Upstream::start("u"))
}

fn revoke(gw: &Gateway, jti: &str, until: u64) -> std::process::Output {
    Command::new(BIN)
        .arg("--admin-socket")
        .arg(gw.ports.dir.join("admin.sock"))
        .args(["revoke", "--jti", jti, "--until", &until.to_string()])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_made_while_redis_is_down_is_queued_and_reaches_the_fleet() {
    let (mut redis, idp, key, up) = parts();
    let auth = shared(&redis, &idp, "60s");
    let (a, b) = (Gateway::start(|p| config(p, &up, 2, &auth)), Gateway::start(|p| config(p, &up, 2, &auth)));
    let mut claims = idp.claims("alice");
    claims["jti"] = json!("queued-1");
    let exp = claims["exp"].as_u64().unwrap();
    let token = key.token(json!({"kid": "k"}), &claims);
    for gw in [&a, &b] {
        assert_eq!(call(gw, "/api/x", Some(&token)).await.status, 200);
    }

    redis.kill();
    let out = revoke(&a, "queued-1", exp);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "queued is a success (exit 0): {stdout} {stderr}");
    assert!(stdout.contains("\"queued\": true") && stdout.contains("\"published\": false"), "{stdout}");
    assert!(stderr.contains("queued"), "{stderr}");
    // Applied on this node at once, kept on disk, counted as pending.
    assert_eq!(call(&a, "/api/x", Some(&token)).await.json()["error"], "revoked");
    assert_eq!(a.metric("gateway_auth_revocations_pending", &[]), 1.0);
    let state = std::fs::read_to_string(a.ports.dir.join("revocations.json")).unwrap();
    assert!(state.contains("\"jti\":\"queued-1\"") && state.contains("\"pending\":true"), "{state}");
    // The other node cannot know yet (it fails open, or a worker reuses its cached answer).
    assert_eq!(call(&b, "/api/x", Some(&token)).await.status, 200);
    // A jti it never checked cannot be checked while Redis is down: fail_open serves it, and
    // counts it as such.
    let mut fresh = idp.claims("bob");
    fresh["jti"] = json!("never-seen");
    let failed_open = || b.metric("gateway_auth_revocation_store_errors_total", &[("result", "fail_open")]);
    let before = failed_open();
    let r = call(&b, "/api/x", Some(&key.token(json!({"kid": "k"}), &fresh))).await;
    assert_eq!(r.status, 200, "fail_open refused a token the store could not check: {:?}", r.body);
    assert!(failed_open() > before, "the unchecked token was not counted as failing open");

    // Redis back: the queue is published without a retry by hand, and every node refuses it.
    redis.restart();
    let converged = eventually(Duration::from_secs(10), || {
        (futures_block(call(&b, "/api/x", Some(&token))).status == 401).then_some(())
    });
    assert!(converged.is_some(), "the other node still accepts the token:\n{}", a.stderr());
    assert_eq!(call(&b, "/api/x", Some(&token)).await.json()["error"], "revoked");
    let drained =
        eventually(Duration::from_secs(5), || (a.series("gateway_auth_revocations_pending", &[]) == 0.0).then_some(()));
    assert!(drained.is_some());
    let ttl = redis_command(redis.port, "TTL gatewayd:auth:revoked:queued-1").unwrap();
    assert!(ttl.trim().trim_start_matches(':').parse::<u64>().is_ok_and(|t| t > 0), "{ttl}");
    // A node started now finds it in Redis.
    let c = Gateway::start(|p| config(p, &up, 1, &auth));
    assert_eq!(call(&c, "/api/x", Some(&token)).await.json()["error"], "revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_survive_a_reload_of_the_revocation_settings_and_a_restart_while_redis_is_down() {
    let (mut redis, idp, key, up) = parts();
    // One state directory for both lives of the node.
    let state = tempfile::tempdir().unwrap();
    let env = [("STATE_DIRECTORY", state.path().display().to_string())];
    let gw = Gateway::start_with_env(|p| config(p, &up, 2, &shared(&redis, &idp, "5s")), &env);
    let mut claims = idp.claims("alice");
    claims["jti"] = json!("kept-1");
    let exp = claims["exp"].as_u64().unwrap();
    let token = key.token(json!({"kid": "k"}), &claims);
    let other = key.token(json!({"kid": "k"}), &idp.claims("bob"));
    assert_eq!(call(&gw, "/api/x", Some(&token)).await.status, 200);
    let out = revoke(&gw, "kept-1", exp);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Redis down, and a reload that changes [auth.revocation] (so the list is rebuilt): the
    // node still refuses the token although it fails open and cannot ask Redis.
    redis.kill();
    let changed = config(&gw.ports, &up, 2, &shared(&redis, &idp, "7s"));
    assert!(gw.reload(&changed), "{}", gw.stderr());
    assert_eq!(call(&gw, "/api/x", Some(&token)).await.json()["error"], "revoked");
    assert_eq!(call(&gw, "/api/x", Some(&other)).await.status, 200, "fails open for others");

    // Restarted while Redis is still down: the state file has it.
    drop(gw);
    let gw = Gateway::start_with_env(|p| config(p, &up, 2, &shared(&redis, &idp, "7s")), &env);
    assert_eq!(call(&gw, "/api/x", Some(&token)).await.json()["error"], "revoked");
    assert_eq!(call(&gw, "/api/x", Some(&other)).await.status, 200);
}

fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_while_redis_is_down_are_not_logged_per_request_and_end_when_it_is_back() {
    let (mut redis, idp, key, up) = parts();
    let auth = shared(&redis, &idp, "5s").replace("fail_open", "fail_closed");
    let gw = Gateway::start(|p| config(p, &up, 2, &auth));
    let token = |i: usize| {
        let mut claims = idp.claims("alice");
        claims["jti"] = json!(format!("fresh-{i}"));
        key.token(json!({"kid": "k"}), &claims)
    };
    assert_eq!(call(&gw, "/api/x", Some(&token(0))).await.status, 200);
    let logged = gw.stderr().len();
    redis.kill();
    for i in 1..=20 {
        let r = call(&gw, "/api/x", Some(&token(i))).await;
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (503, Some("revocation_unavailable")));
    }
    redis.restart();
    let back = eventually(Duration::from_millis(1500), || {
        (futures_block(call(&gw, "/api/x", Some(&token(100)))).status == 200).then_some(())
    });
    assert!(back.is_some(), "{}", gw.stderr());
    let log = gw.stderr()[logged..].to_owned();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    // The command connection and the subscription: each outage once, no request.
    assert!(warnings.len() <= 2, "{warnings:#?}");
    assert!(!log.contains("request failed"), "{log}");
}
