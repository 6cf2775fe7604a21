//! Identity at the edge, end to end: the real gatewayd against the test IdP (discovery, JWKS,
//! introspection) in `idp.rs`. Every refusal the issue lists has a case here.

use std::{process::Command, time::Duration};

use http_body_util::Full;
use serde_json::{Value, json};

use super::{idp::*, pki::*, support::*};

/// Listener, metrics, admin socket, audit log, one upstream, an open route (`/open`) and the
/// routes `/api` (policy `users`), `/both`, `/either`, `/keys`, `/closed`, `/fo` as the `auth`
/// TOML defines the policies they name.
pub(super) fn config(p: &Ports, up: &Upstream, workers: usize, auth: &str) -> String {
    let mut config = ConfigBuilder::new(p)
        .workers(workers)
        .drain_timeout("5s")
        .admin_socket(&p.dir.join("admin.sock"))
        .table("[audit]", &format!("path = \"{}/audit.log\"", p.dir.display()))
        .service("s", &[up.addr])
        .toml(auth)
        .route("open", "s", "paths = [\"/open\"]\nauth = \"none\"");
    let routes = [
        ("api", "users"),
        ("both", "both"),
        ("either", "either"),
        ("keys", "keys"),
        ("closed", "closed"),
        ("fo", "fail-open"),
    ];
    for (name, policy) in routes {
        if auth.contains(&format!("name = \"{policy}\"")) {
            config = config.route(name, "s", &format!("paths = [\"/{name}\"]\nauth = \"{policy}\""));
        }
    }
    config.build()
}

/// `[auth]` with the test IdP as issuer `idp` (discovery) and policy `users` (jwt, scope read).
pub(super) fn idp_auth(idp: &Idp, auth_extra: &str, issuer_extra: &str) -> String {
    format!(
        r#"
[auth]
leeway = "5s"
{auth_extra}

[[auth.issuers]]
name = "idp"
issuer = "{issuer}"
audiences = ["api"]
refresh_interval = "1m"
min_refresh_interval = "1s"
unknown_kid_refetch_interval = "1m"
fetch_timeout = "2s"
{issuer_extra}

[[auth.policies]]
name = "users"
any_of = ["jwt"]
scopes = ["read"]
"#,
        issuer = idp.issuer()
    )
}

pub(super) async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> Reply {
    let mut b = req("GET", &gw.url(path), "api.test");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), b.body(Full::default()).unwrap()).await
}

/// The first value of a header the echo upstream received.
fn header(r: &Reply, name: &str) -> Option<String> {
    r.json()["headers"][name][0].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_tokens_reach_the_upstream_with_identity_headers() {
    let idp = Idp::start();
    let (rsa, ec, ed) = (Key::rsa(), Key::es256(), Key::ed());
    idp.set_keys(vec![rsa.jwk("r1"), ec.jwk("e1"), ed.jwk("d1")]);
    let up = Upstream::start("u");
    // One worker: the token cache is per worker, and the counts below are exact.
    let gw = Gateway::start(|p| config(p, &up, 1, &idp_auth(&idp, "", "")));
    let keep_alive = client();
    for (key, kid) in [(&rsa, "r1"), (&ec, "e1"), (&ed, "d1")] {
        let mut claims = idp.claims("alice");
        claims["workspace_id"] = json!("ws-7");
        let token = key.token(json!({"kid": kid, "typ": "JWT"}), &claims);
        for _ in 0..2 {
            let r = send(
                &keep_alive,
                req("GET", &gw.url("/api/x"), "api.test")
                    .header("authorization", format!("Bearer {token}"))
                    .header("x-forwarded-user", "mallory")
                    .header("x-consumer-id", "admin")
                    .header("x-authenticated-scope", "admin")
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
            assert_eq!(r.status, 200, "{kid}: {:?}", r.body);
            assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("alice"), "{kid}");
            assert_eq!(header(&r, "x-authenticated-scope").as_deref(), Some("read write"));
            assert_eq!(header(&r, "x-workspace-id").as_deref(), Some("ws-7"));
            assert_eq!(header(&r, "x-consumer-id").as_deref(), None, "a client-supplied identity header got through");
            assert_eq!(header(&r, "authorization").as_deref(), None, "credentials are not forwarded by default");
        }
    }
    // On an open route too, identity headers only ever come from the gateway.
    let r = send(
        &client(),
        req("GET", &gw.url("/open/x"), "api.test")
            .header("x-forwarded-user", "mallory")
            .header("x-workspace-id", "ws-victim")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), None);
    assert_eq!(header(&r, "x-workspace-id").as_deref(), None);

    assert_eq!(gw.metric("gateway_auth_successes_total", &[("route", "api"), ("credential", "jwt")]), 6.0);
    assert_eq!(gw.metric("gateway_auth_token_cache_total", &[("result", "hit")]), 3.0);
    assert_eq!(gw.metric("gateway_auth_validation_duration_seconds_count", &[("kind", "jwt")]), 3.0);
    let audit = gw.ports.dir.join("audit.log");
    let lines = eventually(Duration::from_secs(5), || {
        let l = gw.audit_lines(&audit);
        (l.len() >= 7).then_some(l)
    })
    .expect("audit lines");
    let api: Vec<&Value> = lines.iter().filter(|l| l["route"] == "api").collect();
    assert_eq!(api.len(), 6);
    assert!(api.iter().all(|l| l["user_id"] == "alice" && l["workspace_id"] == "ws-7"), "{api:?}");
    let text = std::fs::read_to_string(&audit).unwrap() + &gw.stderr();
    assert!(!text.contains(&rsa.token(json!({"kid": "r1"}), &idp.claims("alice"))[..40]), "a token was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_and_stale_tokens_are_refused() {
    let idp = Idp::start();
    let (good, ec) = (Key::rsa(), Key::es256());
    idp.set_keys(vec![good.jwk("k1"), ec.jwk("e1")]);
    let attacker = Key::rsa();
    let up = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &up, 2, &idp_auth(&idp, "", "")));
    let c = idp.claims("alice");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = idp.claims("alice");
        f(&mut c);
        c
    };
    let jku = format!("http://{}/attacker/jwks.json", idp.addr);
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no credentials", None, 401, "missing"),
        ("opaque garbage", Some("not-a-jwt".into()), 401, "malformed"),
        ("alg none", Some(raw_token(&json!({"alg": "none", "kid": "k1"}), &c, b"")), 401, "bad_signature"),
        (
            "HS256 keyed with the issuer's public key",
            Some(hs256(&json!({"alg": "HS256", "kid": "k1"}), &c, good.public_pem().as_bytes())),
            401,
            "bad_signature",
        ),
        ("forged kid", Some(attacker.token(json!({"kid": "forged"}), &c)), 401, "unknown_kid"),
        ("forged signature under a real kid", Some(attacker.token(json!({"kid": "k1"}), &c)), 401, "bad_signature"),
        ("jku pointing elsewhere", Some(attacker.token(json!({"kid": "k1", "jku": jku}), &c)), 401, "malformed"),
        ("embedded jwk", Some(attacker.token(json!({"kid": "k1", "jwk": attacker.jwk("k1")}), &c)), 401, "malformed"),
        (
            "ECDSA r = s = 0",
            Some(raw_token(&json!({"alg": "ES256", "kid": "e1"}), &c, &[0u8; 64])),
            401,
            "bad_signature",
        ),
        ("expired", Some(good.token(json!({"kid": "k1"}), &with(&|c| c["exp"] = json!(now() - 60)))), 401, "expired"),
        (
            "not yet valid",
            Some(good.token(json!({"kid": "k1"}), &with(&|c| c["nbf"] = json!(now() + 120)))),
            401,
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(good.token(json!({"kid": "k1"}), &with(&|c| c["iss"] = json!("http://evil.example")))),
            401,
            "bad_issuer",
        ),
        (
            "wrong audience",
            Some(good.token(json!({"kid": "k1"}), &with(&|c| c["aud"] = json!("billing")))),
            401,
            "bad_audience",
        ),
        (
            "critical extension",
            Some(good.token(json!({"kid": "k1", "crit": ["b64"], "b64": false}), &c)),
            401,
            "malformed",
        ),
        (
            "insufficient scope",
            Some(good.token(json!({"kid": "k1"}), &with(&|c| c["scope"] = json!("write")))),
            403,
            "insufficient_scope",
        ),
        ("oversized", Some(format!("{}.{}.{}", "a".repeat(6000), "b".repeat(3000), "c")), 401, "malformed"),
    ];
    for (name, token, status, reason) in &cases {
        let r = call(&gw, "/api/x", token.as_deref()).await;
        assert_eq!(r.status, *status, "{name}: {:?}", r.body);
        assert_eq!(r.json()["error"], *reason, "{name}");
        let challenge = r.header("www-authenticate").unwrap_or_default().to_owned();
        match (*status, *reason) {
            (401, "missing") => assert_eq!(challenge, "Bearer realm=\"gatewayd\"", "{name}"),
            (401, _) => assert!(challenge.contains("error=\"invalid_token\""), "{name}: {challenge}"),
            _ => assert!(
                challenge.contains("error=\"insufficient_scope\", error_description=")
                    && challenge.ends_with("scope=\"read\""),
                "{name}: {challenge}"
            ),
        }
        let counted = gw.metric("gateway_auth_failures_total", &[("route", "api"), ("reason", reason)]);
        assert!(counted >= 1.0, "{name}: not counted under {reason}");
    }
    assert_eq!(up.requests(), 0, "a refused request reached the upstream");
    assert_eq!(idp.other_hits(), 0, "the token's jku was fetched");
    // The valid token still works: nothing above poisoned a cache.
    assert_eq!(call(&gw, "/api/x", Some(&good.token(json!({"kid": "k1"}), &c))).await.status, 200);

    // Unknown kids: at most one refetch per unknown_kid_refetch_interval (1m here), however many.
    let before = idp.jwks_hits();
    for i in 0..20 {
        let r = call(&gw, "/api/x", Some(&attacker.token(json!({"kid": format!("garbage-{i}")}), &c))).await;
        assert_eq!(r.json()["error"], "unknown_kid");
    }
    assert!(idp.jwks_hits() - before <= 1, "unknown kids caused {} JWKS fetches", idp.jwks_hits() - before);
    assert!(gw.metric("gateway_auth_jwks_unknown_kid_refetches_total", &[("issuer", "idp")]) <= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_at_the_idp_is_picked_up_without_restart() {
    let idp = Idp::start();
    let (a, b) = (Key::rsa(), Key::es256());
    idp.set_keys(vec![a.jwk("a")]);
    let up = Upstream::start("u");
    let auth = idp_auth(&idp, "", "")
        .replace("refresh_interval = \"1m\"", "refresh_interval = \"3s\"")
        .replace("unknown_kid_refetch_interval = \"1m\"", "unknown_kid_refetch_interval = \"1s\"");
    let gw = Gateway::start(|p| config(p, &up, 1, &auth));
    let token_a = a.token(json!({"kid": "a"}), &idp.claims("alice"));
    let token_b = b.token(json!({"kid": "b"}), &idp.claims("bob"));
    assert_eq!(call(&gw, "/api/x", Some(&token_a)).await.status, 200);

    // New key published: the first token naming it triggers a refetch and waits for it.
    idp.set_keys(vec![a.jwk("a"), b.jwk("b")]);
    let r = call(&gw, "/api/x", Some(&token_b)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("bob"));
    assert!(gw.metric("gateway_auth_jwks_unknown_kid_refetches_total", &[("issuer", "idp")]) >= 1.0);

    // Old key retired: once a refresh sees it, its tokens stop working, cached or not.
    idp.set_keys(vec![b.jwk("b")]);
    let refused = eventually(Duration::from_secs(20), || {
        let r = futures_block(call(&gw, "/api/x", Some(&token_a)));
        (r.status == 401).then_some(r)
    })
    .expect("the retired key's token is still accepted");
    assert_eq!(refused.json()["error"], "unknown_kid");
    assert_eq!(call(&gw, "/api/x", Some(&token_b)).await.status, 200);
    assert!(gw.metric("gateway_auth_jwks_keys", &[("issuer", "idp")]) == 1.0);

    // Cache-Control bounds the refresh period: max-age=1 → about every second (min 1s).
    idp.set_cache_control(Some("public, max-age=1"));
    let before = idp.jwks_hits();
    eventually(Duration::from_secs(15), || (idp.jwks_hits() >= before + 4).then_some(()))
        .expect("max-age=1 did not speed up refreshes");
}

/// Runs a future to completion from synchronous polling code (`eventually` closures).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn idp_outage_past_the_grace_period_fails_closed() {
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let issuer = |name: &str, mode: &str| {
        format!(
            "[[auth.issuers]]\nname = \"{name}\"\nissuer = \"{}\"\naudiences = [\"api\"]\nrefresh_interval = \"1s\"\n\
             min_refresh_interval = \"1s\"\nfetch_timeout = \"1s\"\nidp_outage_grace = \"6s\"\non_idp_outage = \"{mode}\"\n",
            idp.issuer()
        )
    };
    let auth = format!(
        "[auth]\n{}{}[[auth.policies]]\nname = \"closed\"\nany_of = [\"jwt\"]\nissuers = [\"idp-closed\"]\n\
         [[auth.policies]]\nname = \"fail-open\"\nany_of = [\"jwt\"]\nissuers = [\"idp-open\"]\n",
        issuer("idp-closed", "fail_closed"),
        issuer("idp-open", "fail_open")
    );
    let gw = Gateway::start(|p| config(p, &up, 1, &auth));
    let token = key.token(json!({"kid": "k"}), &idp.claims("alice"));
    let fresh = key.token(json!({"kid": "k"}), &idp.claims("carol"));
    let r = call(&gw, "/closed/x", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(call(&gw, "/fo/x", Some(&token)).await.status, 200);

    idp.set_down(true);
    // Within the grace period the cached keys keep working (for new tokens too).
    assert_eq!(call(&gw, "/closed/x", Some(&fresh)).await.status, 200);
    let refused = eventually(Duration::from_secs(20), || {
        let r = futures_block(call(&gw, "/closed/x", Some(&token)));
        (r.status == 503).then_some(r)
    })
    .expect("the issuer never failed closed");
    assert_eq!(refused.json()["error"], "idp_unavailable");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(call(&gw, "/fo/x", Some(&token)).await.status, 200, "fail_open keeps the old keys");
    let ready = raw_get(gw.ports.metrics, "/readyz").unwrap();
    assert!(ready.contains("auth.issuer.idp-closed") && ready.contains("failed closed"), "{ready}");
    assert_eq!(gw.metric("gateway_auth_issuer_failed_closed", &[("issuer", "idp-closed")]), 1.0);
    assert!(gw.metric("gateway_auth_failures_total", &[("route", "closed"), ("reason", "idp_unavailable")]) >= 1.0);
    assert_eq!(gw.stderr().matches("longer than the grace period").count(), 1, "logged once:\n{}", gw.stderr());

    idp.set_down(false);
    eventually(Duration::from_secs(20), || {
        (futures_block(call(&gw, "/closed/x", Some(&token))).status == 200).then_some(())
    })
    .expect("the issuer did not recover");
    assert_eq!(gw.series("gateway_auth_issuer_failed_closed", &[("issuer", "idp-closed")]), 0.0);
}

/// Issue 10 item 2: with a grace shorter than the refresh interval (the defaults' ratio), a
/// healthy IdP must never make the issuer fail closed; the grace counts from the first failed
/// refresh, failed refreshes are retried within it, and a success reopens.
#[tokio::test(flavor = "multi_thread")]
async fn the_outage_grace_counts_from_the_first_failed_refresh_not_from_the_last_success() {
    let idp = Idp::start();
    let (a, b, c) = (Key::es256(), Key::es256(), Key::es256());
    idp.set_keys(vec![a.jwk("a")]);
    let up = Upstream::start("u");
    // Refreshed every 30s; 6s of grace (the least these settings allow: 3 retries of 1s + 1s).
    let auth = format!(
        "[auth]\nleeway = \"5s\"\n[[auth.issuers]]\nname = \"idp\"\nissuer = \"{}\"\naudiences = [\"api\"]\n\
         refresh_interval = \"30s\"\nmin_refresh_interval = \"1s\"\nfetch_timeout = \"1s\"\nidp_outage_grace = \"6s\"\n\
         unknown_kid_refetch_interval = \"1s\"\n[[auth.policies]]\nname = \"closed\"\nany_of = [\"jwt\"]\n",
        idp.issuer()
    );
    let gw = Gateway::start(|p| config(p, &up, 1, &auth));
    let token = a.token(json!({"kid": "a"}), &idp.claims("alice"));
    assert_eq!(call(&gw, "/closed/x", Some(&token)).await.status, 200);
    let fetched = idp.jwks_hits();

    // Time passes beyond the grace with a healthy IdP and no refresh due: the state under test
    // is "the grace has elapsed since the last success", so the wait is the point.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(idp.jwks_hits(), fetched, "no refresh was due yet (refresh_interval 30s)");
    let r = call(&gw, "/closed/x", Some(&token)).await;
    assert_eq!(r.status, 200, "a healthy IdP made the issuer fail closed: {:?}", r.body);
    // An unknown kid in that time triggers a refetch, which finds the new key.
    idp.set_keys(vec![a.jwk("a"), b.jwk("b")]);
    let r = call(&gw, "/closed/x", Some(&b.token(json!({"kid": "b"}), &idp.claims("bob")))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(gw.metric("gateway_auth_jwks_unknown_kid_refetches_total", &[("issuer", "idp")]), 1.0);
    assert_eq!(gw.series("gateway_auth_issuer_failed_closed", &[("issuer", "idp")]), 0.0);

    // The IdP fails: an unknown kid's refetch is the first failed refresh.
    idp.set_down(true);
    let errors = || gw.metric("gateway_auth_jwks_refreshes_total", &[("issuer", "idp"), ("result", "error")]);
    tokio::time::sleep(Duration::from_secs(1)).await; // past unknown_kid_refetch_interval
    let r = call(&gw, "/closed/x", Some(&c.token(json!({"kid": "c"}), &idp.claims("carol")))).await;
    assert_eq!(r.json()["error"], "unknown_kid");
    assert!(errors() >= 1.0);
    // Within the grace (counted from that failure, not from the last success 10s ago) the
    // cached keys still work.
    assert_eq!(call(&gw, "/closed/x", Some(&token)).await.status, 200, "failed closed before the grace");
    let refused = eventually(Duration::from_secs(20), || {
        let r = futures_block(call(&gw, "/closed/x", Some(&token)));
        (r.status == 503).then_some(r)
    })
    .expect("the issuer never failed closed");
    assert_eq!(refused.json()["error"], "idp_unavailable");
    assert!(errors() >= 4.0, "the first failure and at least 3 retries within the grace: {}", errors());
    assert_eq!(gw.metric("gateway_auth_issuer_failed_closed", &[("issuer", "idp")]), 1.0);

    // Recovery: the next retry succeeds and the issuer reopens.
    idp.set_down(false);
    eventually(Duration::from_secs(20), || {
        (futures_block(call(&gw, "/closed/x", Some(&token))).status == 200).then_some(())
    })
    .expect("the issuer did not recover");
    assert_eq!(gw.series("gateway_auth_issuer_failed_closed", &[("issuer", "idp")]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn opaque_tokens_are_introspected_with_client_credentials_and_cached() {
    let idp = Idp::start();
    idp.set_keys(vec![Key::ed().jwk("k")]);
    let exp = now() + 300;
    idp.set_introspection(
        "opaque-good",
        json!({"active": true, "sub": "svc-1", "scope": "read", "exp": exp, "aud": "api", "iss": idp.issuer(),
               "workspace_id": "ws-2"}),
    );
    idp.set_introspection(
        "opaque-elsewhere",
        json!({"active": true, "sub": "svc-2", "scope": "read", "aud": "billing"}),
    );
    let up = Upstream::start("u");
    let gw = Gateway::start(|p| {
        std::fs::write(p.dir.join("idp-secret"), format!("{}\n", idp.client_secret())).unwrap();
        let intro = format!(
            "[auth.issuers.introspection]\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n",
            idp.client_id(),
            p.dir.join("idp-secret").display()
        );
        config(p, &up, 1, &idp_auth(&idp, "", "").replace("[[auth.policies]]", &format!("{intro}\n[[auth.policies]]")))
    });
    let r = call(&gw, "/api/x", Some("opaque-good")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("svc-1"));
    assert_eq!(header(&r, "x-workspace-id").as_deref(), Some("ws-2"));
    assert_eq!(idp.introspection_hits(), 1);
    assert_eq!(call(&gw, "/api/x", Some("opaque-good")).await.status, 200);
    assert_eq!(idp.introspection_hits(), 1, "the active answer was not cached");

    for _ in 0..3 {
        let r = call(&gw, "/api/x", Some("opaque-unknown")).await;
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("inactive_token")));
    }
    assert_eq!(idp.introspection_hits(), 2, "inactive answers are cached briefly too");
    let r = call(&gw, "/api/x", Some("opaque-elsewhere")).await;
    assert_eq!(r.json()["error"], "bad_audience");
    assert_eq!(gw.metric("gateway_auth_introspections_total", &[("result", "active")]), 2.0);

    idp.set_down(true);
    let r = call(&gw, "/api/x", Some("opaque-new")).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (503, Some("idp_unavailable")));
    assert_eq!(call(&gw, "/api/x", Some("opaque-good")).await.status, 200, "cached answers survive an outage");
    assert!(!gw.stderr().contains(idp.client_secret()), "the client secret was logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_identify_consumers() {
    let idp = Idp::start();
    let key = Key::rsa();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    // What `printf %s key-123 | sha256sum` prints.
    let real_digest = {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"key-123");
        format!("sha256:{}", d.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let policies = format!(
        "[[auth.policies]]\nname = \"keys\"\nany_of = [\"api_key\"]\nscopes = [\"read\"]\n\
         [[auth.policies]]\nname = \"both\"\nall_of = [\"jwt\", \"api_key\"]\n\
         [[auth.policies]]\nname = \"either\"\nany_of = [\"jwt\", \"api_key\"]\n\
         [[consumers]]\nname = \"model-citizen\"\nid = \"c-1\"\napi_keys = [\"{real_digest}\"]\nscopes = [\"read\"]\nworkspace_id = \"ws-3\"\n"
    );
    let gw = Gateway::start(|p| config(p, &up, 1, &format!("{}{policies}", idp_auth(&idp, "", ""))));
    let with_key = |path: &str, key: &str| req("GET", &gw.url(path), "api.test").header("x-api-key", key.to_owned());
    let r = send(&client(), with_key("/keys/x", "key-123").body(Full::default()).unwrap()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-consumer-username").as_deref(), Some("model-citizen"));
    assert_eq!(header(&r, "x-consumer-id").as_deref(), Some("c-1"));
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("c-1"));
    assert_eq!(header(&r, "x-authenticated-scope").as_deref(), Some("read"));
    assert_eq!(header(&r, "x-workspace-id").as_deref(), Some("ws-3"));
    assert_eq!(header(&r, "x-api-key").as_deref(), None, "the key went upstream");

    let r = send(&client(), with_key("/keys/x", "key-124").body(Full::default()).unwrap()).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("invalid_api_key")));
    let r =
        send(&client(), with_key("/keys/x", "key-123").header("x-api-key", "key-123").body(Full::default()).unwrap())
            .await;
    assert_eq!(r.json()["error"], "malformed", "two key headers");

    // all_of: the key alone is not enough.
    let r = send(&client(), with_key("/both/x", "key-123").body(Full::default()).unwrap()).await;
    assert_eq!(r.json()["error"], "missing");
    assert!(r.json()["message"].as_str().unwrap().contains("a bearer token"), "{:?}", r.body);
    let token = key.token(json!({"kid": "k"}), &idp.claims("alice"));
    let r = send(
        &client(),
        with_key("/both/x", "key-123")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("alice"), "the token's user wins over the consumer");
    assert_eq!(header(&r, "x-consumer-username").as_deref(), Some("model-citizen"));

    // any_of: a bad token is refused even next to a good key.
    let bad = Key::rsa().token(json!({"kid": "k"}), &idp.claims("alice"));
    let r = send(
        &client(),
        with_key("/either/x", "key-123")
            .header("authorization", format!("Bearer {bad}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["error"], "bad_signature");
    assert_eq!(gw.metric("gateway_auth_successes_total", &[("route", "keys"), ("credential", "api_key")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_tokens_are_refused_at_once_and_revocations_survive_reloads() {
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &up, 2, &idp_auth(&idp, "", "")));
    let mut claims = idp.claims("alice");
    claims["jti"] = json!("t-77");
    let exp = claims["exp"].as_u64().unwrap();
    let token = key.token(json!({"kid": "k"}), &claims);
    let other = key.token(json!({"kid": "k"}), &idp.claims("bob"));
    for _ in 0..4 {
        assert_eq!(call(&gw, "/api/x", Some(&token)).await.status, 200);
    }
    let socket = gw.ports.dir.join("admin.sock");
    let out = Command::new(BIN)
        .arg("--admin-socket")
        .arg(&socket)
        .args(["revoke", "--jti", "t-77", "--until", &exp.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"revoked\": true"));
    for _ in 0..4 {
        let r = call(&gw, "/api/x", Some(&token)).await;
        assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("revoked")));
    }
    assert_eq!(call(&gw, "/api/x", Some(&other)).await.status, 200);
    assert_eq!(gw.metric("gateway_auth_revocations_total", &[("source", "admin")]), 1.0);
    assert!(gw.stderr().contains("token revoked"), "revocations are logged");

    let out = Command::new(BIN)
        .arg("--admin-socket")
        .arg(&socket)
        .args(["revoke", "--jti", "t-78", "--until", "2001-01-01T00:00:00Z"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in the future"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reload keeps the revocation list and the issuer's keys (no new discovery).
    let discoveries = idp.discovery_hits();
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(gw.reload(&text));
    assert_eq!(call(&gw, "/api/x", Some(&token)).await.json()["error"], "revoked");
    assert_eq!(call(&gw, "/api/x", Some(&other)).await.status, 200);
    assert_eq!(idp.discovery_hits(), discoveries, "the reload refetched the issuer's keys");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_read_from_configured_query_parameters_and_cookies() {
    let idp = Idp::start();
    let key = Key::ed();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let gw = Gateway::start(|p| {
        config(p, &up, 1, &idp_auth(&idp, "uri_param_names = [\"jwt\"]\ncookie_names = [\"session-id\"]", ""))
    });
    let t1 = key.token(json!({"kid": "k"}), &idp.claims("alice"));
    let t2 = key.token(json!({"kid": "k"}), &idp.claims("bob"));
    let r = call(&gw, &format!("/api/x?a=1&jwt={t1}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("alice"));
    let r = send(
        &client(),
        req("GET", &gw.url("/api/x"), "api.test")
            .header("cookie", format!("theme=dark; session-id={t2}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("bob"));
    // The same token twice is fine; two different tokens are refused (token smuggling).
    assert_eq!(call(&gw, &format!("/api/x?jwt={t1}"), Some(&t1)).await.status, 200);
    let r = call(&gw, &format!("/api/x?jwt={t1}"), Some(&t2)).await;
    assert_eq!(r.json()["error"], "malformed");
    let r = send(
        &client(),
        req("GET", &gw.url("/api/x"), "api.test")
            .header("authorization", format!("Bearer {t1}"))
            .header("authorization", format!("Bearer {t2}"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(r.json()["error"], "malformed");
}

/// A TLS listener asking for (optional) client certificates from `clients-ca.crt`, the
/// identity config `auth`, and routes `/api` (policy `users`), `/mtls` (`mtls-only`), `/both`.
fn tls_identity_config(p: &Ports, up: &Upstream, auth: &str) -> String {
    ConfigBuilder::new(p)
        .drain_timeout("5s")
        .listener("tls", p.listen)
        .listener_tls(
            r#"
certificates = [{ cert = "server.crt", key = "server.key" }]
client_auth = "optional"
client_ca = ["clients-ca.crt"]
"#,
        )
        .service("s", &[up.addr])
        .toml(auth)
        .route("api", "s", "paths = [\"/api\"]\nauth = \"users\"")
        .route("mtls", "s", "paths = [\"/mtls\"]\nauth = \"mtls-only\"")
        .route("both", "s", "paths = [\"/both\"]\nauth = \"both\"")
        .build()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_bound_tokens_are_accepted_only_with_their_certificate() {
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let (edge, clients) = (Ca::new("edge CA"), Ca::new("partner CA"));
    let server = edge.server(&["localhost"]);
    let (alice, mallory) = (clients.client("alice-app"), clients.client("mallory-app"));
    let auth = format!(
        "{}\n[[auth.policies]]\nname = \"mtls-only\"\nany_of = [\"mtls\"]\nscopes = [\"read\"]\n\
         [[auth.policies]]\nname = \"both\"\nall_of = [\"mtls\", \"jwt\"]\n\
         [[consumers]]\nname = \"alice-app\"\nid = \"c-alice\"\nclient_certs = [{{ sha256 = \"{}\" }}]\nscopes = [\"read\"]\n",
        idp_auth(&idp, "", ""),
        alice.sha256_hex()
    );
    let gw = Gateway::start(|p| {
        server.write(&p.dir, "server");
        clients.write(&p.dir, "clients-ca");
        tls_identity_config(p, &up, &auth)
    });
    let addr = gw.ports.listen;
    let thumbprint = b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &alice.der).as_ref());
    let mut claims = idp.claims("alice");
    claims["cnf"] = json!({ "x5t#S256": thumbprint });
    let bound = key.token(json!({"kid": "k"}), &claims);
    let unbound = key.token(json!({"kid": "k"}), &idp.claims("bob"));
    let bearer = |t: &str| format!("Bearer {t}");

    let mut as_alice = Https::connect(addr, "localhost", client_config(&edge, Some(&alice), &[])).await.unwrap();
    let mut as_mallory = Https::connect(addr, "localhost", client_config(&edge, Some(&mallory), &[])).await.unwrap();
    let mut anonymous = Https::connect(addr, "localhost", client_config(&edge, None, &[])).await.unwrap();

    let r = as_alice.get("/api/x", &[("authorization", &bearer(&bound))]).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("alice"));
    // The same (now cached) token on another client's certificate, and on none.
    let r = as_mallory.get("/api/x", &[("authorization", &bearer(&bound))]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("cert_mismatch")));
    let r = anonymous.get("/api/x", &[("authorization", &bearer(&bound))]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("cert_required")));
    assert_eq!(as_alice.get("/api/x", &[("authorization", &bearer(&bound))]).await.unwrap().status, 200);
    // Unbound tokens do not care about certificates.
    assert_eq!(anonymous.get("/api/x", &[("authorization", &bearer(&unbound))]).await.unwrap().status, 200);

    // The mtls credential: a verified certificate, its consumer's scopes.
    let r = as_alice.get("/mtls/x", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-consumer-username").as_deref(), Some("alice-app"));
    assert_eq!(header(&r, "x-consumer-id").as_deref(), Some("c-alice"));
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("c-alice"));
    let r = as_mallory.get("/mtls/x", &[]).await.unwrap();
    assert_eq!(r.json()["error"], "insufficient_scope", "a certificate without a consumer has no scopes");
    let r = anonymous.get("/mtls/x", &[]).await.unwrap();
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("missing")));

    // all_of: the certificate alone is not enough; with the bound token it is.
    assert_eq!(as_alice.get("/both/x", &[]).await.unwrap().json()["error"], "missing");
    assert_eq!(as_alice.get("/both/x", &[("authorization", &bearer(&bound))]).await.unwrap().status, 200);
    assert_eq!(gw.metric("gateway_auth_failures_total", &[("route", "api"), ("reason", "cert_mismatch")]), 1.0);
    assert_eq!(gw.metric("gateway_auth_successes_total", &[("route", "mtls"), ("credential", "mtls")]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_idp_is_trusted_through_its_ca_file_only() {
    let ca = Ca::new("IdP CA");
    let idp = Idp::start_tls(server_config(&ca.server(&["localhost"]), None));
    let key = Key::rsa();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let token = key.token(json!({"kid": "k"}), &idp.claims("alice"));
    let gw = Gateway::start(|p| {
        ca.write(&p.dir, "idp-ca");
        config(p, &up, 1, &idp_auth(&idp, "", "ca_file = \"idp-ca.crt\""))
    });
    let r = call(&gw, "/api/x", Some(&token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(idp.jwks_hits() >= 1);

    // Another CA: the IdP's certificate does not verify, so no keys, so no tokens.
    let other = Ca::new("other CA");
    let gw = Gateway::start(|p| {
        other.write(&p.dir, "idp-ca");
        config(p, &up, 1, &idp_auth(&idp, "", "ca_file = \"idp-ca.crt\""))
    });
    let r = call(&gw, "/api/x", Some(&token)).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (503, Some("idp_unavailable")));
    let ready = raw_get(gw.ports.metrics, "/readyz").unwrap();
    assert!(ready.contains("auth.issuer.idp") && ready.contains("no keys yet") && ready.contains("TLS"), "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_on_one_gateway_is_refused_by_another_sharing_redis() {
    let mut redis = RedisServer::start();
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("k")]);
    let up = Upstream::start("u");
    let shared = format!(
        "[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n{}",
        redis.url(),
        idp_auth(
            &idp,
            "[auth.revocation]\nstore = \"redis\"\non_store_error = \"fail_closed\"\ncache_ttl = \"60s\"",
            ""
        )
    );
    let (a, b) = (Gateway::start(|p| config(p, &up, 2, &shared)), Gateway::start(|p| config(p, &up, 2, &shared)));
    let mut claims = idp.claims("alice");
    claims["jti"] = json!("shared-1");
    let exp = claims["exp"].as_u64().unwrap();
    let token = key.token(json!({"kid": "k"}), &claims);
    // Both validated it and cached "not revoked" (for 60 s).
    for gw in [&a, &b] {
        for _ in 0..3 {
            assert_eq!(call(gw, "/api/x", Some(&token)).await.status, 200);
        }
    }
    let out = Command::new(BIN)
        .arg("--admin-socket")
        .arg(a.ports.dir.join("admin.sock"))
        .args(["revoke", "--jti", "shared-1", "--until", &exp.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The other node hears it over pub/sub: refused within a wait far shorter than its 60 s
    // cache of "not revoked", so only the published revocation can explain it (the metric below
    // names the source).
    eventually(Duration::from_secs(10), || {
        (futures_block(call(&b, "/api/x", Some(&token))).status == 401).then_some(())
    })
    .expect("the second gateway still accepts the revoked token");
    assert_eq!(call(&b, "/api/x", Some(&token)).await.json()["error"], "revoked");
    assert_eq!(b.metric("gateway_auth_revocations_total", &[("source", "peer")]), 1.0);
    // The key expires with the token.
    let ttl = redis_command(redis.port, "TTL gatewayd:auth:revoked:shared-1\r\n").unwrap();
    assert!(ttl.trim().trim_start_matches(':').parse::<u64>().is_ok_and(|t| t > 200 && t <= 300), "{ttl}");

    // A gateway started after the revocation finds it in Redis.
    let c = Gateway::start(|p| config(p, &up, 1, &shared));
    assert_eq!(call(&c, "/api/x", Some(&token)).await.json()["error"], "revoked");

    // Redis down: an unknown jti cannot be checked, and fail_closed refuses it (503).
    redis.kill();
    let mut fresh = idp.claims("bob");
    fresh["jti"] = json!("never-seen");
    let r = call(&c, "/api/x", Some(&key.token(json!({"kid": "k"}), &fresh))).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (503, Some("revocation_unavailable")));
    assert!(c.metric("gateway_auth_revocation_store_errors_total", &[("result", "fail_closed")]) >= 1.0);
    assert_eq!(call(&c, "/api/x", Some(&token)).await.json()["error"], "revoked", "the local list still holds");
}

/// `gatewayd:auth:introspection:<hex SHA-256(iss ‖ 0 ‖ SHA-256(token))>`: the shared
/// introspection cache's key.
fn introspection_key(issuer: &str, token: &str) -> String {
    let sha = |b: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref().to_vec();
    let scoped = sha(&[issuer.as_bytes(), &[0], &sha(token.as_bytes())].concat());
    format!("gatewayd:auth:introspection:{}", scoped.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn redis_has(port: u16, key: &str) -> bool {
    redis_command(port, &format!("EXISTS {key}")).is_ok_and(|r| r.trim() == ":1")
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_answers_are_shared_through_redis_and_redis_is_only_an_optimisation() {
    let mut redis = RedisServer::start();
    let idp = Idp::start();
    idp.set_keys(vec![Key::ed().jwk("k")]);
    let exp = now() + 300;
    idp.set_introspection(
        "opaque-shared",
        json!({"active": true, "sub": "svc-1", "scope": "read", "exp": exp, "aud": "api", "iss": idp.issuer(),
               "workspace_id": "ws-2", "private": "not for the cache"}),
    );
    let up = Upstream::start("u");
    let start = || {
        Gateway::start(|p| {
            std::fs::write(p.dir.join("idp-secret"), format!("{}\n", idp.client_secret())).unwrap();
            let intro = format!(
                "[auth.issuers.introspection]\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\ncache = \"redis\"\n\
                 cache_ttl = \"60s\"\nnegative_cache_ttl = \"30s\"\n",
                idp.client_id(),
                p.dir.join("idp-secret").display()
            );
            let auth = format!(
                "[redis]\nurl = \"{}\"\ntimeout = \"200ms\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n{}",
                redis.url(),
                idp_auth(&idp, "", "").replace("[[auth.policies]]", &format!("{intro}\n[[auth.policies]]"))
            );
            config(p, &up, 2, &auth)
        })
    };
    let (a, b) = (start(), start());
    for gw in [&a, &b] {
        let up = eventually(Duration::from_secs(5), || (gw.metric("gateway_redis_up", &[]) == 1.0).then_some(()));
        assert!(up.is_some(), "the gateway did not connect to redis");
    }
    let cache = |gw: &Gateway, result: &str| gw.metric("gateway_auth_introspection_cache_total", &[("result", result)]);

    // Active: introspected once, through A; B takes A's answer from Redis.
    let r = call(&a, "/api/x", Some("opaque-shared")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(idp.introspection_hits(), 1);
    assert_eq!(cache(&a, "miss"), 1.0);
    let key = introspection_key(idp.issuer(), "opaque-shared");
    assert!(eventually(Duration::from_secs(5), || redis_has(redis.port, &key).then_some(())).is_some(), "not stored");
    for _ in 0..4 {
        let r = call(&b, "/api/x", Some("opaque-shared")).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("svc-1"));
        assert_eq!(header(&r, "x-workspace-id").as_deref(), Some("ws-2"));
        assert_eq!(header(&r, "x-authenticated-scope").as_deref(), Some("read"));
    }
    assert_eq!(idp.introspection_hits(), 1, "B asked the IdP again");
    assert!(cache(&b, "hit") >= 1.0 && cache(&b, "miss") == 0.0, "{}", b.metrics());
    assert_eq!(b.metric("gateway_auth_introspections_total", &[]), 0.0);
    // Kept no longer than cache_ttl; the value holds neither the token, the secret nor what
    // identify does not read.
    let pttl = redis_command(redis.port, &format!("PTTL {key}")).unwrap();
    assert!(pttl.trim().trim_start_matches(':').parse::<u64>().is_ok_and(|t| t > 50_000 && t <= 60_000), "{pttl}");
    let value = redis_command(redis.port, &format!("GET {key}")).unwrap();
    assert!(value.contains("svc-1") && value.contains(r#""active":true"#), "{value}");
    for secret in ["opaque-shared", idp.client_secret(), "not for the cache"] {
        assert!(!value.contains(secret), "{value}");
    }

    // Inactive answers are shared too (for negative_cache_ttl).
    let r = call(&a, "/api/x", Some("opaque-dead")).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("inactive_token")));
    assert_eq!(idp.introspection_hits(), 2);
    let key = introspection_key(idp.issuer(), "opaque-dead");
    assert!(eventually(Duration::from_secs(5), || redis_has(redis.port, &key).then_some(())).is_some(), "not stored");
    let r = call(&b, "/api/x", Some("opaque-dead")).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("inactive_token")));
    assert_eq!(idp.introspection_hits(), 2, "B asked the IdP about the inactive token");
    let pttl = redis_command(redis.port, &format!("PTTL {key}")).unwrap();
    assert!(pttl.trim().trim_start_matches(':').parse::<u64>().is_ok_and(|t| t > 20_000 && t <= 30_000), "{pttl}");

    // Write access to Redis does not mint identities: a value without the issuer's tag is
    // ignored (counted), and the IdP decides.
    let forged = format!(r#"AAAA.{{"t":{},"a":{{"active":true,"sub":"mallory","scope":"read"}}}}"#, now());
    let set = redis_command(
        redis.port,
        &format!("SET {} '{forged}' EX 60", introspection_key(idp.issuer(), "opaque-forged")),
    )
    .unwrap();
    assert_eq!(set.trim(), "+OK");
    let r = call(&b, "/api/x", Some("opaque-forged")).await;
    assert_eq!((r.status.as_u16(), r.json()["error"].as_str()), (401, Some("inactive_token")));
    assert_eq!(idp.introspection_hits(), 3);
    assert_eq!(cache(&b, "error"), 1.0);

    // Redis down: the cache is an optimisation, never a reason to refuse.
    redis.kill();
    idp.set_introspection("opaque-later", json!({"active": true, "sub": "svc-3", "scope": "read", "exp": exp}));
    let r = call(&b, "/api/x", Some("opaque-later")).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-forwarded-user").as_deref(), Some("svc-3"));
    assert_eq!(idp.introspection_hits(), 4);
    assert!(cache(&b, "error") >= 2.0);
    for gw in [&a, &b] {
        let logs = gw.stderr();
        assert!(!logs.contains(idp.client_secret()) && !logs.contains("opaque-"), "a token or secret was logged");
    }
}

/// Per-user limits key on the verified identity (the token's `sub`), never on anything the
/// client sends: each user has their own count, a spoofed identity header changes nothing, and
/// a request without a token is refused before it is counted.
#[tokio::test(flavor = "multi_thread")]
async fn per_user_rate_limits_count_the_verified_user() {
    let idp = Idp::start();
    let key = Key::es256();
    idp.set_keys(vec![key.jwk("e1")]);
    let up = Upstream::start("u");
    let limits =
        "\n[[rate_limits]]\nname = \"per-user\"\nroutes = [\"api\"]\nkey = \"user\"\nlimit = 3\nwindow = \"day\"\n";
    let gw = Gateway::start(|p| config(p, &up, 2, &(idp_auth(&idp, "", "") + limits)));
    let token = |user: &str| key.token(json!({"kid": "e1", "typ": "JWT"}), &idp.claims(user));
    let (alice, bob) = (token("alice"), token("bob"));

    assert_eq!(call(&gw, "/api/x", None).await.status, 401, "no token: refused before the limit");
    for i in 1..=3 {
        let r = call(&gw, "/api/x", Some(&alice)).await;
        assert_eq!(r.status, 200, "alice, request {i}");
        assert_eq!(r.header("x-ratelimit-remaining-day"), Some(&*(3 - i).to_string()), "alice, request {i}");
    }
    let r = call(&gw, "/api/x", Some(&alice)).await;
    assert_eq!(r.status, 429, "alice's fourth request");
    assert!(r.header("retry-after").is_some());
    // Claiming to be someone else in a header does not move alice to another bucket.
    let spoofed = send(
        &client(),
        req("GET", &gw.url("/api/x"), "api.test")
            .header("authorization", format!("Bearer {alice}"))
            .header("x-forwarded-user", "carol")
            .header("x-consumer-id", "carol")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(spoofed.status, 429);
    // Bob's count is his own.
    let r = call(&gw, "/api/x", Some(&bob)).await;
    assert_eq!(r.status, 200, "bob: {:?}", r.body);
    assert_eq!(r.header("x-ratelimit-remaining-day"), Some("2"));
    assert_eq!(
        gw.metric(
            "gateway_ratelimit_decisions_total",
            &[("route", "api"), ("layer", "per-user"), ("result", "limited")]
        ),
        2.0
    );
}
