//! Token validation cost: µs per validation for RS256 (2048-bit), ES256 and EdDSA tokens, cold
//! (parse, signature, claims, cache insert) and cached (SHA-256 of the token, cache lookup,
//! revocation and scope checks), through the identify phase's own code path.
//!
//! `cargo bench -p gateway-userspace --bench auth [-- --json]`; `cargo xtask bench auth` runs it
//! and writes `bench/results/auth.md`. Measures, never asserts. `-- --mint DIR` instead writes an
//! ES256 public key (`DIR/bench.pem`) and a day-long token signed with it (`DIR/token`), for the
//! HTTP part of `cargo xtask bench auth`.

use std::{hint::black_box, sync::Arc, time::Instant};

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
use gateway_userspace::{
    auth::{AuthEnv, AuthHolder, AuthMetrics},
    config::Config,
    metrics::Readiness,
};
use serde_json::json;

enum Key {
    Rsa(RsaKeyPair),
    Es256(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl Key {
    fn pem(&self) -> String {
        let der = match self {
            Key::Rsa(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Key::Es256(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
        };
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    fn token(&self, kid: &str, sub: usize) -> String {
        let alg = match self {
            Key::Rsa(_) => "RS256",
            Key::Es256(_) => "ES256",
            Key::Ed(_) => "EdDSA",
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"});
        let claims = json!({"iss": "https://idp.bench", "aud": "api", "sub": format!("user-{sub}"), "exp": now + 86400,
            "iat": now, "jti": format!("jti-{sub}"), "scope": "read write", "workspace_id": "ws-1"});
        let b = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b(&header), b(&claims));
        let rng = SystemRandom::new();
        let sig = match self {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).unwrap();
                sig
            }
            Key::Es256(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Key::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

struct Stats {
    mean_us: f64,
    p50_us: f64,
    p99_us: f64,
    n: usize,
}

fn stats(mut ns: Vec<u64>) -> Stats {
    ns.sort_unstable();
    let q = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1e3;
    Stats {
        mean_us: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
        p50_us: q(0.5),
        p99_us: q(0.99),
        n: ns.len(),
    }
}

/// Writes `dir/bench.pem` (public key, kid "bench") and `dir/token` (ES256, issuer
/// `https://idp.bench`, audience `api`, scope `read`, valid for a day).
fn mint(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let key = Key::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap());
    std::fs::write(dir.join("bench.pem"), key.pem()).unwrap();
    std::fs::write(dir.join("token"), key.token("bench", 0)).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(dir) = args.iter().position(|a| a == "--mint").and_then(|i| args.get(i + 1)) {
        mint(std::path::Path::new(dir));
        return;
    }
    let json_out = args.iter().any(|a| a == "--json");
    let dir = std::env::temp_dir().join(format!("gatewayd-auth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = [
        ("RS256-2048", "rsa", Key::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()), 2_000),
        ("ES256", "ec", Key::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap()), 5_000),
        ("EdDSA", "ed", Key::Ed(Ed25519KeyPair::generate().unwrap()), 5_000),
    ];
    let mut key_toml = String::new();
    for (_, kid, key, _) in &keys {
        let path = dir.join(format!("{kid}.pem"));
        std::fs::write(&path, key.pem()).unwrap();
        key_toml.push_str(&format!("{{ kid = \"{kid}\", pem_file = \"{}\" }}, ", path.display()));
    }
    let config = format!(
        r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:1"
[[services]]
name = "s"
targets = ["127.0.0.1:2"]
[[routes]]
name = "r"
service = "s"
auth = "users"
[auth]
token_cache_size = 100000
[[auth.issuers]]
name = "bench"
issuer = "https://idp.bench"
audiences = ["api"]
keys = [{key_toml}]
[[auth.policies]]
name = "users"
any_of = ["jwt"]
scopes = ["read"]
"#
    );
    let config = Config::load_str(&config, "bench.toml").unwrap_or_else(|e| panic!("{e}"));
    let holder =
        AuthHolder::new(AuthEnv { metrics: AuthMetrics::default(), readiness: Arc::new(Readiness::default()) });
    let phase = holder.phase(config.auth.clone(), None);
    let _ = std::fs::remove_dir_all(&dir);

    let mut rows = Vec::new();
    for (name, kid, key, cold_n) in &keys {
        let tokens: Vec<String> = (0..*cold_n).map(|i| key.token(kid, i)).collect();
        // Cold: every token is new to the cache (parse, signature, claims, insert).
        let mut cold = Vec::with_capacity(tokens.len());
        for t in &tokens {
            let start = Instant::now();
            let r = phase.check_bearer(0, black_box(t));
            cold.push(start.elapsed().as_nanos() as u64);
            assert!(r.is_ok(), "{name}: {r:?}");
        }
        // Cached: the same tokens again, round robin over a warm cache.
        let mut cached = Vec::with_capacity(200_000);
        for i in 0..200_000 {
            let t = &tokens[i % tokens.len()];
            let start = Instant::now();
            let r = phase.check_bearer(0, black_box(t));
            cached.push(start.elapsed().as_nanos() as u64);
            debug_assert!(r.is_ok());
        }
        rows.push((*name, stats(cold), stats(cached)));
    }
    if json_out {
        let v: Vec<_> = rows
            .iter()
            .map(|(name, c, h)| {
                json!({"key": name,
                    "cold": {"n": c.n, "mean_us": c.mean_us, "p50_us": c.p50_us, "p99_us": c.p99_us},
                    "cached": {"n": h.n, "mean_us": h.mean_us, "p50_us": h.p50_us, "p99_us": h.p99_us}})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
    } else {
        println!("| Token | cold mean | cold p50 | cold p99 | cached mean | cached p50 | cached p99 |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
        for (name, c, h) in &rows {
            println!(
                "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.2} µs | {:.2} µs | {:.2} µs |",
                c.mean_us, c.p50_us, c.p99_us, h.mean_us, h.p50_us, h.p99_us
            );
        }
    }
}
