//! Test keys and token minting (unit tests only). Tokens are assembled by hand so tests can
//! build every malformed variant; signatures come from aws-lc-rs.

use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
        RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    },
};
use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use serde_json::{Value, json};

pub enum TestKey {
    Rsa(RsaKeyPair),
    Es256(EcdsaKeyPair),
    Es384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

impl TestKey {
    pub fn rsa() -> TestKey {
        TestKey::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub fn es256() -> TestKey {
        TestKey::Es256(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub fn es384() -> TestKey {
        TestKey::Es384(EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    pub fn ed() -> TestKey {
        TestKey::Ed(Ed25519KeyPair::generate().unwrap())
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Rsa(_) => "RS256",
            TestKey::Es256(_) => "ES256",
            TestKey::Es384(_) => "ES384",
            TestKey::Ed(_) => "EdDSA",
        }
    }

    /// The public JWK.
    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            TestKey::Rsa(k) => {
                let p = k.public_key();
                json!({"kty": "RSA", "kid": kid, "use": "sig",
                    "n": b64(p.modulus().big_endian_without_leading_zero()),
                    "e": b64(p.exponent().big_endian_without_leading_zero())})
            }
            TestKey::Es256(k) | TestKey::Es384(k) => {
                let point = k.public_key().as_ref();
                let n = (point.len() - 1) / 2;
                let crv = if n == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..])})
            }
            TestKey::Ed(k) => json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        }
    }

    /// The public key as PEM (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> String {
        let der = match self {
            TestKey::Rsa(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            TestKey::Es256(k) | TestKey::Es384(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
            TestKey::Ed(k) => k.public_key().as_der().unwrap().as_ref().to_vec(),
        };
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    pub fn sign(&self, alg: &str, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                let pad: &'static dyn aws_lc_rs::signature::RsaEncoding =
                    if alg.starts_with("PS") { &RSA_PSS_SHA256 } else { &RSA_PKCS1_SHA256 };
                k.sign(pad, &rng, msg, &mut sig).unwrap();
                sig
            }
            TestKey::Es256(k) | TestKey::Es384(k) => k.sign(&rng, msg).unwrap().as_ref().to_vec(),
            TestKey::Ed(k) => k.sign(msg).as_ref().to_vec(),
        }
    }

    /// A signed token with `header` (alg filled in unless present) and `claims`.
    pub fn token(&self, mut header: Value, claims: &Value) -> String {
        if header.get("alg").is_none() {
            header["alg"] = json!(self.alg());
        }
        let alg = header["alg"].as_str().unwrap_or("").to_owned();
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig = self.sign(&alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }
}

/// An unsigned token with any header (for `alg: none`, HMAC confusion, …).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!("{}.{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()), b64(signature))
}

/// HS256 over the token input with `secret` (the algorithm-confusion attack).
pub fn hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}
