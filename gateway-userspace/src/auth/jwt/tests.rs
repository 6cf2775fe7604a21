use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};

use super::*;
use crate::auth::{
    IssuerSpec, KeySource, OutageMode, RefreshSpec, parse_jwks,
    testkit::{TestKey, b64, hs256, raw_token},
};

const NOW: u64 = 1_800_000_000;
const LEEWAY: u64 = 30;

fn issuer_with(keys: &[(&TestKey, &str)]) -> (IssuerSpec, KeySet) {
    let doc = json!({"keys": keys.iter().map(|(k, kid)| k.jwk(kid)).collect::<Vec<_>>()});
    let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let spec = IssuerSpec {
        name: "corp".into(),
        issuer: "https://idp.test".into(),
        audiences: vec!["api".into()],
        algorithms: vec![Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA],
        keys: KeySource::Static { keys: Arc::new(set.clone()), files: vec![] },
        refresh: RefreshSpec {
            max_interval: Duration::from_secs(600),
            min_interval: Duration::from_secs(30),
            unknown_kid_interval: Duration::from_secs(10),
            fetch_timeout: Duration::from_secs(5),
            outage_grace: Duration::from_secs(300),
            on_outage: OutageMode::FailClosed,
        },
        ca_file: None,
        tls: None,
        user_claim: "sub".into(),
        workspace_claim: "workspace_id".into(),
        introspection: None,
        breaker: crate::auth::BreakerSpec::default(),
    };
    (spec, set)
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": "user-1", "exp": NOW + 300, "iat": NOW - 10,
           "nbf": NOW - 10, "jti": "t-1", "scope": "read write", "workspace_id": "ws-9"})
}

/// Full validation as the identify phase does it.
fn validate(token: &str, spec: &IssuerSpec, keys: &KeySet) -> Result<Claims, AuthError> {
    let t = parse(token, 8192)?;
    if t.issuer() != Some(&*spec.issuer) {
        return Err(AuthError::BadIssuer);
    }
    t.verify(keys, &spec.algorithms)?;
    check_claims(&t.claims, spec, NOW, LEEWAY, ClaimsOf::Jwt)
}

#[test]
fn every_supported_algorithm_validates() {
    let keys = [TestKey::rsa(), TestKey::es256(), TestKey::es384(), TestKey::ed()];
    let (spec, set) = issuer_with(&[(&keys[0], "r"), (&keys[1], "e256"), (&keys[2], "e384"), (&keys[3], "ed")]);
    for (k, kid) in keys.iter().zip(["r", "e256", "e384", "ed"]) {
        let token = k.token(json!({"kid": kid, "typ": "JWT"}), &claims());
        let c = validate(&token, &spec, &set).unwrap_or_else(|e| panic!("{}: {e}", k.alg()));
        assert_eq!(&*c.user.unwrap().text, "user-1");
        assert_eq!(&*c.workspace.unwrap().text, "ws-9");
        assert_eq!(c.scopes.iter().map(|s| &**s).collect::<Vec<_>>(), ["read", "write"]);
        assert_eq!(c.jti.as_deref(), Some("t-1"));
        assert_eq!(c.expires, Some(NOW + 300));
    }
    let pss = keys[0].token(json!({"kid": "r", "alg": "PS256"}), &claims());
    validate(&pss, &spec, &set).unwrap();
}

#[test]
fn unsigned_and_symmetric_tokens_are_refused() {
    let k = TestKey::rsa();
    let (spec, set) = issuer_with(&[(&k, "r")]);
    for alg in ["none", "None", "NONE"] {
        let t = raw_token(&json!({"alg": alg, "kid": "r"}), &claims(), b"");
        assert!(matches!(validate(&t, &spec, &set), Err(AuthError::BadSignature(_))), "{alg}");
        let t = format!("{}.", &t[..t.len() - 1].trim_end_matches('.'));
        assert!(validate(&t, &spec, &set).is_err());
    }
    // Algorithm confusion: HS256 keyed with the issuer's public key (PEM and JWK forms).
    for secret in [k.public_pem().into_bytes(), k.jwk("r").to_string().into_bytes()] {
        let t = hs256(&json!({"alg": "HS256", "kid": "r"}), &claims(), &secret);
        assert_eq!(
            validate(&t, &spec, &set).unwrap_err(),
            AuthError::BadSignature("symmetric (HMAC) algorithms are not accepted")
        );
    }
}

#[test]
fn token_supplied_keys_and_crit_are_refused() {
    let k = TestKey::rsa();
    let attacker = TestKey::rsa();
    let (spec, set) = issuer_with(&[(&k, "r")]);
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("jwk", attacker.jwk("r")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("x5c", json!(["MIIB"])),
    ] {
        let mut header = json!({"kid": "r"});
        header[name] = value;
        // Signed by the attacker, or even by the right key: the header alone refuses it.
        for signer in [&attacker, &k] {
            let t = signer.token(header.clone(), &claims());
            assert_eq!(
                validate(&t, &spec, &set).unwrap_err(),
                AuthError::Malformed("keys supplied by the token (jwk, jku, x5u, x5c) are never used"),
                "{name}"
            );
        }
    }
    let t = k.token(json!({"kid": "r", "crit": ["exp"], "exp": 1}), &claims());
    assert_eq!(
        validate(&t, &spec, &set).unwrap_err(),
        AuthError::Malformed("critical header extensions are not supported")
    );
}

#[test]
fn keys_are_chosen_by_kid_and_type() {
    let (r, e) = (TestKey::rsa(), TestKey::es256());
    let (spec, set) = issuer_with(&[(&r, "r"), (&e, "e")]);
    let forged = TestKey::rsa().token(json!({"kid": "r"}), &claims());
    assert_eq!(validate(&forged, &spec, &set).unwrap_err(), AuthError::BadSignature("signature mismatch"));
    let unknown = r.token(json!({"kid": "nope"}), &claims());
    assert_eq!(validate(&unknown, &spec, &set).unwrap_err(), AuthError::UnknownKid);
    // An RSA signature presented under the EC key's kid.
    let wrong_type = r.token(json!({"kid": "e"}), &claims());
    assert_eq!(
        validate(&wrong_type, &spec, &set).unwrap_err(),
        AuthError::BadSignature("algorithm does not match the key")
    );
    // No kid: every key of the algorithm is tried.
    let no_kid = e.token(json!({}), &claims());
    validate(&no_kid, &spec, &set).unwrap();
    let no_kid_forged = TestKey::es256().token(json!({}), &claims());
    assert!(matches!(validate(&no_kid_forged, &spec, &set), Err(AuthError::BadSignature(_))));
    // An algorithm the issuer does not allow, even with the right key.
    let mut strict = spec.clone();
    strict.algorithms = vec![Algorithm::ES256];
    let rs = r.token(json!({"kid": "r"}), &claims());
    assert_eq!(
        validate(&rs, &strict, &set).unwrap_err(),
        AuthError::BadSignature("algorithm not allowed for this issuer")
    );
}

#[test]
fn ecdsa_zero_signatures_are_refused() {
    // CVE-2022-21449: r = s = 0 "verified" any message on some Java versions.
    let e = TestKey::es256();
    let (spec, set) = issuer_with(&[(&e, "e")]);
    for sig in [vec![0u8; 64], vec![], vec![0u8; 1], {
        let mut n = vec![0u8; 64];
        // r = s = n (the curve order) is as invalid as zero.
        let order = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        n[..32].copy_from_slice(&order);
        n[32..].copy_from_slice(&order);
        n
    }] {
        let t = raw_token(&json!({"alg": "ES256", "kid": "e"}), &claims(), &sig);
        assert!(matches!(validate(&t, &spec, &set), Err(AuthError::BadSignature(_))), "{sig:?}");
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn tampering_breaks_the_signature() {
    let k = TestKey::ed();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let t = k.token(json!({"kid": "k"}), &claims());
    let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    parts[1] = b64(c.to_string().as_bytes());
    let tampered = parts.join(".");
    assert!(matches!(validate(&tampered, &spec, &set), Err(AuthError::BadSignature(_))));
}

#[test]
fn time_claims_use_the_leeway() {
    let k = TestKey::es256();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let with = |name: &str, v: Value| {
        let mut c = claims();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(name);
        } else {
            c[name] = v;
        }
        validate(&k.token(json!({"kid": "k"}), &c), &spec, &set)
    };
    assert_eq!(with("exp", json!(NOW - LEEWAY)).unwrap_err(), AuthError::Expired);
    assert!(with("exp", json!(NOW - LEEWAY + 1)).is_ok(), "inside the leeway");
    assert!(with("exp", json!((NOW + 10) as f64 + 0.5)).is_ok(), "fractional NumericDate");
    assert_eq!(with("exp", Value::Null).unwrap_err(), AuthError::Malformed("the token has no exp claim"));
    assert_eq!(with("exp", json!("tomorrow")).unwrap_err(), AuthError::Malformed("a time claim is not a number"));
    assert_eq!(with("exp", json!(-5)).unwrap_err(), AuthError::Malformed("a time claim is not a valid NumericDate"));
    assert_eq!(with("nbf", json!(NOW + LEEWAY + 1)).unwrap_err(), AuthError::NotYetValid);
    assert!(with("nbf", json!(NOW + LEEWAY)).is_ok());
    assert_eq!(with("iat", json!(NOW + LEEWAY + 1)).unwrap_err(), AuthError::NotYetValid);
}

#[test]
fn issuer_and_audience_must_match() {
    let k = TestKey::rsa();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let with = |name: &str, v: Value| {
        let mut c = claims();
        if v.is_null() {
            c.as_object_mut().unwrap().remove(name);
        } else {
            c[name] = v;
        }
        let token = k.token(json!({"kid": "k"}), &c);
        let t = parse(&token, 8192).unwrap();
        t.verify(&set, &spec.algorithms).unwrap();
        check_claims(&t.claims, &spec, NOW, LEEWAY, ClaimsOf::Jwt)
    };
    assert_eq!(with("iss", json!("https://idp.test/")).unwrap_err(), AuthError::BadIssuer, "exact match");
    assert_eq!(with("iss", Value::Null).unwrap_err(), AuthError::BadIssuer);
    assert_eq!(with("aud", json!("other")).unwrap_err(), AuthError::BadAudience);
    assert_eq!(with("aud", Value::Null).unwrap_err(), AuthError::BadAudience);
    assert_eq!(with("aud", json!(["x", "y"])).unwrap_err(), AuthError::BadAudience);
    assert!(with("aud", json!(["x", "api"])).is_ok());
}

#[test]
fn scopes_and_identity_claims() {
    let k = TestKey::ed();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let with = |c: Value| validate(&k.token(json!({"kid": "k"}), &c), &spec, &set);
    let mut c = claims();
    c.as_object_mut().unwrap().remove("scope");
    c["scp"] = json!(["a", "b"]);
    c["scopes"] = json!("b c");
    let got = with(c.clone()).unwrap();
    assert_eq!(got.scopes.iter().map(|s| &**s).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(got.scope_header.unwrap(), "a b c");
    c["scp"] = json!([1]);
    assert!(matches!(with(c.clone()), Err(AuthError::Malformed(_))));
    let mut c = claims();
    c["sub"] = json!("evil\r\nX-Admin: 1");
    assert!(matches!(with(c), Err(AuthError::Malformed(_))), "header injection through a claim");
    let mut c = claims();
    c["sub"] = json!(42);
    assert!(matches!(with(c), Err(AuthError::Malformed(_))));
}

#[test]
fn certificate_confirmation() {
    let k = TestKey::ed();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let mut c = claims();
    c["cnf"] = json!({"x5t#S256": b64(&[7u8; 32])});
    let got = validate(&k.token(json!({"kid": "k"}), &c), &spec, &set).unwrap();
    assert_eq!(got.cert_thumbprint, Some([7u8; 32]));
    c["cnf"] = json!({"x5t#S256": b64(&[7u8; 20])});
    assert!(matches!(validate(&k.token(json!({"kid": "k"}), &c), &spec, &set), Err(AuthError::Malformed(_))));
    c["cnf"] = json!({"jkt": "abc"});
    assert!(matches!(validate(&k.token(json!({"kid": "k"}), &c), &spec, &set), Err(AuthError::Malformed(_))));
}

#[test]
fn structure_is_checked_first() {
    let k = TestKey::rsa();
    let (spec, set) = issuer_with(&[(&k, "k")]);
    let good = k.token(json!({"kid": "k"}), &claims());
    assert!(looks_like_jwt(&good));
    assert!(!looks_like_jwt("opaque-token"));
    let cases = [
        "a.b".to_owned(),
        "a.b.c.d.e".to_owned(),
        ".b.c".to_owned(),
        format!("{good}="),
        good.replacen('.', ".!", 1),
        format!("{}.{}.{}", b64(b"[1,2]"), b64(b"{}"), "sig"),
        format!("{}.{}.{}", b64(br#"{"alg":"RS256"}"#), b64(b"not json"), "sig"),
    ];
    for t in &cases {
        assert!(matches!(validate(t, &spec, &set), Err(AuthError::Malformed(_))), "{t}");
    }
    assert_eq!(parse(&good, 100).unwrap_err(), AuthError::Malformed("the token is too large"));
    let t = raw_token(&json!({"alg": "RS1"}), &claims(), b"x");
    assert_eq!(validate(&t, &spec, &set).unwrap_err(), AuthError::BadSignature("unsupported algorithm"));
    let t = raw_token(&json!({"alg": "RS256", "kid": 5}), &claims(), b"x");
    assert!(matches!(validate(&t, &spec, &set), Err(AuthError::Malformed(_))));
}
