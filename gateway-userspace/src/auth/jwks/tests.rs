use serde_json::json;

use super::*;
use crate::auth::testkit::TestKey;

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
