//! Arbitrary bytes as a bearer token through the identify phase's validation (parse, header
//! rules, key lookup, signature, claims, cache): it must refuse, never panic or hang.

#![no_main]

use std::sync::{Arc, OnceLock};

use gateway_userspace::{
    auth::{AuthEnv, AuthHolder, AuthMetrics, IdentifyPhase},
    config::Config,
    metrics::Readiness,
};
use libfuzzer_sys::fuzz_target;

/// An Ed25519 issuer key (RFC 8032 test vector 1's public key).
const KEY: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";

fn phase() -> &'static IdentifyPhase {
    static PHASE: OnceLock<IdentifyPhase> = OnceLock::new();
    PHASE.get_or_init(|| {
        let dir = std::env::temp_dir().join("gatewayd-fuzz-token");
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("k.pem");
        std::fs::write(&pem, KEY).unwrap();
        let config = format!(
            "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[services]]\nname = \"s\"\ntargets = [\"127.0.0.1:2\"]\n\
             [[routes]]\nname = \"r\"\nservice = \"s\"\nauth = \"p\"\n[[auth.issuers]]\nname = \"i\"\n\
             issuer = \"https://idp.fuzz\"\naudiences = [\"api\"]\nkeys = [{{ kid = \"k\", pem_file = \"{}\" }}]\n\
             [[auth.policies]]\nname = \"p\"\nany_of = [\"jwt\"]\n",
            pem.display()
        );
        let config = Config::load_str(&config, "fuzz.toml").unwrap();
        let holder = AuthHolder::new(AuthEnv { metrics: AuthMetrics::default(), readiness: Arc::new(Readiness::default()) });
        holder.phase(config.auth.clone(), None)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = phase().check_bearer(0, token);
    }
});
