use serde_json::json;

use super::*;
use crate::{
    auth::{AuthMetrics, BreakerSpec, RefreshSpec, testkit::TestKey},
    metrics::Readiness,
};

/// An issuer whose keys come from a JWKS URL (no refresh task: tests run without a runtime and
/// drive the fetch outcomes and the clock themselves).
fn fetched_issuer(refresh_interval: u64, grace: u64, on_outage: OutageMode) -> Arc<IssuerKeys> {
    let spec = IssuerSpec {
        name: "idp".into(),
        issuer: "http://127.0.0.1:9".into(),
        audiences: vec!["api".into()],
        algorithms: vec![Algorithm::ES256],
        keys: KeySource::JwksUri { url: "http://127.0.0.1:9/jwks".into() },
        refresh: RefreshSpec {
            max_interval: Duration::from_secs(refresh_interval),
            min_interval: Duration::from_secs(30),
            unknown_kid_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            outage_grace: Duration::from_secs(grace),
            on_outage,
        },
        ca_file: None,
        tls: None,
        user_claim: "sub".into(),
        workspace_claim: "workspace_id".into(),
        introspection: None,
        breaker: BreakerSpec::default(),
    };
    let env = AuthEnv { metrics: AuthMetrics::default(), readiness: Arc::new(Readiness::default()) };
    IssuerKeys::start(&spec, &env)
}

const MIN: u64 = 60_000;

#[test]
fn a_healthy_idp_never_fails_the_issuer_closed_whatever_the_refresh_interval() {
    // The defaults' ratio: refreshed every 10 minutes, 5 minutes of grace.
    let keys = fetched_issuer(600, 300, OutageMode::FailClosed);
    let t0 = 1_800_000_000_000;
    assert_eq!(keys.freshness(t0), Freshness::NotYet);
    keys.record_fetch(true, t0);
    for minute in [1, 5, 6, 9, 10] {
        assert_eq!(keys.freshness(t0 + minute * MIN), Freshness::Usable, "minute {minute} of a healthy cycle");
    }
    keys.record_fetch(true, t0 + 10 * MIN);
    assert_eq!(keys.freshness(t0 + 19 * MIN), Freshness::Usable);
}

#[test]
fn the_grace_counts_from_the_first_failed_refresh_and_a_success_reopens() {
    let keys = fetched_issuer(600, 300, OutageMode::FailClosed);
    let t0 = 1_800_000_000_000;
    keys.record_fetch(true, t0);
    let first_failure = t0 + 10 * MIN;
    keys.record_fetch(false, first_failure);
    // Retries keep failing; the grace does not restart with each of them.
    keys.record_fetch(false, first_failure + 1000);
    keys.record_fetch(false, first_failure + 3 * MIN);
    assert_eq!(keys.freshness(first_failure + 5 * MIN - 1), Freshness::Usable, "within the grace");
    assert_eq!(keys.freshness(first_failure + 5 * MIN + 1), Freshness::FailedClosed, "past the grace");
    keys.record_fetch(true, first_failure + 6 * MIN);
    assert_eq!(keys.freshness(first_failure + 6 * MIN), Freshness::Usable, "a success reopens");
    // A later failure starts a new grace period.
    keys.record_fetch(false, first_failure + 20 * MIN);
    assert_eq!(keys.freshness(first_failure + 24 * MIN), Freshness::Usable);
    assert_eq!(keys.freshness(first_failure + 26 * MIN), Freshness::FailedClosed);

    let open = fetched_issuer(600, 300, OutageMode::FailOpen);
    open.record_fetch(true, t0);
    open.record_fetch(false, t0 + MIN);
    assert_eq!(open.freshness(t0 + 60 * MIN), Freshness::Usable, "fail_open keeps the keys");
}

#[test]
fn failed_refreshes_are_retried_several_times_within_the_smallest_valid_grace() {
    let keys = fetched_issuer(600, 300, OutageMode::FailClosed);
    let r = &keys.spec().refresh;
    let delays: Vec<u64> = (1..=7).map(|n| r.retry_delay(n).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30], "backoff, capped at min_refresh_interval");
    assert_eq!(r.grace_needed(), Duration::from_secs(1 + 2 + 4 + 3 * 5));
}

#[test]
fn unusable_keys_are_skipped_not_fatal() {
    let (r, e, d) = (TestKey::rsa(), TestKey::es384(), TestKey::ed());
    let mut small = r.jwk("small");
    small["n"] = json!(crate::auth::testkit::b64(&[0xff; 128]));
    let mut enc = r.jwk("enc");
    enc["use"] = json!("enc");
    let mut wrong_alg = e.jwk("wrong");
    wrong_alg["alg"] = json!("RS256");
    let mut pinned = r.jwk("pinned");
    pinned["alg"] = json!("PS384");
    let doc = json!({"keys": [
        r.jwk("r"), e.jwk("e"), d.jwk("d"),
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        small, enc, wrong_alg, pinned,
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "r"},
        "not an object"
    ]});
    let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.kids(), ["r", "e", "d", "pinned"]);
    assert_eq!(skipped.len(), 7, "{skipped:?}");
    assert!(skipped.iter().any(|s| s.contains("symmetric")), "{skipped:?}");
    assert!(skipped.iter().any(|s| s.contains("2048")), "{skipped:?}");
    assert_eq!(set.by_kid("pinned").unwrap().algorithms, [Algorithm::PS384]);
    assert_eq!(set.by_kid("e").unwrap().algorithms, [Algorithm::ES384]);
    assert_eq!(set.by_kid("d").unwrap().algorithms, [Algorithm::EdDSA]);
    assert!(parse_jwks(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).is_err());
    assert!(parse_jwks(b"[]").is_err());
}

#[test]
fn pem_public_keys_of_each_type() {
    for (k, alg) in [
        (TestKey::rsa(), Algorithm::RS256),
        (TestKey::es256(), Algorithm::ES256),
        (TestKey::es384(), Algorithm::ES384),
        (TestKey::ed(), Algorithm::EdDSA),
    ] {
        let key = parse_pem_key(k.public_pem().as_bytes(), Some("k")).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert!(key.algorithms.contains(&alg), "{alg:?}: {:?}", key.algorithms);
        // The PEM key and the JWK of the same key are the same material.
        let (set, _) = parse_jwks(json!({"keys": [k.jwk("k")]}).to_string().as_bytes()).unwrap();
        assert!(KeySet::new(vec![key]).same_keys(&set), "{alg:?}");
    }
    assert!(parse_pem_key(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", None).is_err());
    assert!(parse_pem_key(b"hello", None).is_err());
}

#[test]
fn rotation_is_told_from_a_no_op_refresh() {
    let (a, b) = (TestKey::es256(), TestKey::es256());
    let one = parse_jwks(json!({"keys": [a.jwk("a")]}).to_string().as_bytes()).unwrap().0;
    let same = parse_jwks(json!({"keys": [a.jwk("a")]}).to_string().as_bytes()).unwrap().0;
    let rotated = parse_jwks(json!({"keys": [a.jwk("a"), b.jwk("b")]}).to_string().as_bytes()).unwrap().0;
    let reused_kid = parse_jwks(json!({"keys": [b.jwk("a")]}).to_string().as_bytes()).unwrap().0;
    assert!(one.same_keys(&same));
    assert!(!one.same_keys(&rotated));
    assert!(!one.same_keys(&reused_kid), "same kid, other key material");
}
