use std::time::Duration;

use crate::{
    auth::{Credential, KeySource, Mode, OutageMode, RoutePolicy, testkit::TestKey},
    config::{Config, ConfigError, Problem},
};

const BASE: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:18080"

[[services]]
name = "s"
targets = ["127.0.0.1:5000"]
"#;

fn load(extra: &str) -> Result<Config, Vec<Problem>> {
    match Config::load_str(&format!("{BASE}{extra}"), "/etc/gatewayd/test.toml") {
        Ok(c) => Ok(c),
        Err(ConfigError::Invalid(p)) => Err(p),
        Err(e) => panic!("{e}"),
    }
}

fn problems(extra: &str) -> Vec<Problem> {
    load(extra).err().unwrap_or_else(|| panic!("expected problems for:\n{extra}"))
}

fn has(p: &[Problem], key: &str, words: &str) -> bool {
    p.iter().any(|p| p.key == key && p.reason.contains(words))
}

#[test]
fn routes_without_a_policy_are_refused_unless_the_config_opens_them() {
    let p = problems("[[routes]]\nname = \"r\"\nservice = \"s\"\n");
    assert!(has(&p, "routes[0]", "auth = \"none\""), "{p:?}");
    assert_eq!(p[0].line, 9, "{p:?}");

    let c = load("[[routes]]\nname = \"r\"\nservice = \"s\"\nauth = \"none\"\n").unwrap();
    assert_eq!(c.auth.route_policies, [RoutePolicy::Open]);
    let c = load("[auth]\ndefault_policy = \"none\"\n[[routes]]\nname = \"r\"\nservice = \"s\"\n").unwrap();
    assert_eq!(c.auth.route_policies, [RoutePolicy::Open]);

    let p = problems("[[routes]]\nname = \"r\"\nservice = \"s\"\nauth = \"nope\"\n");
    assert!(has(&p, "routes[0].auth", "unknown policy \"nope\""), "{p:?}");
    let p = problems("[auth]\ndefault_policy = \"nope\"\n[[routes]]\nname = \"r\"\nservice = \"s\"\n");
    assert!(has(&p, "auth.default_policy", "unknown policy"), "{p:?}");
}

#[test]
fn a_complete_identity_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::es256();
    std::fs::write(dir.path().join("k.pem"), key.public_pem()).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
    let jwks = serde_json::json!({"keys": [TestKey::ed().jwk("ed")]});
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    let text = format!(
        r#"{BASE}
[auth]
leeway = "10s"
uri_param_names = ["jwt"]
cookie_names = ["session-id"]
api_key_header = "X-Key"

[auth.headers]
user = "X-User"

[[auth.issuers]]
name = "idp"
issuer = "http://127.0.0.1:9999/realms/api"
audiences = ["api"]
algorithms = ["RS256", "EdDSA"]
idp_outage_grace = "2s"
on_idp_outage = "fail_open"
[auth.issuers.introspection]
client_id = "gw"
client_secret_file = "secret"

[[auth.issuers]]
name = "static"
issuer = "https://static.example"
audiences = ["api"]
keys = [{{ kid = "k", pem_file = "k.pem" }}]

[[auth.issuers]]
name = "file"
issuer = "https://file.example"
audiences = ["api"]
jwks_file = "{jwks}"

[[auth.policies]]
name = "users"
any_of = ["jwt", "api_key"]
issuers = ["static", "idp"]
scopes = ["read"]

[[auth.policies]]
name = "strict"
all_of = ["mtls", "jwt"]

[[consumers]]
name = "partner"
api_keys = ["sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
scopes = ["read"]
workspace_id = "ws-1"

[[routes]]
name = "a"
service = "s"
paths = ["/a"]
auth = "users"

[[routes]]
name = "b"
service = "s"
paths = ["/b"]
auth = "strict"
"#,
        jwks = dir.path().join("jwks.json").display()
    );
    let file = dir.path().join("gatewayd.toml");
    let c = Config::load_str(&text, &file.display().to_string()).unwrap();
    let a = &c.auth;
    assert_eq!(a.leeway, 10);
    assert_eq!(a.api_key_header, "x-key");
    assert_eq!(a.headers.user, "x-user");
    assert_eq!(a.route_policies, [RoutePolicy::Policy(0), RoutePolicy::Policy(1)]);
    let users = &a.policies[0];
    assert_eq!((users.mode, &users.credentials[..]), (Mode::AnyOf, &[Credential::Jwt, Credential::ApiKey][..]));
    assert_eq!(users.issuers, [1, 0], "in the policy's order, as indices");
    assert_eq!(a.policies[1].issuers, [0, 1, 2], "default: every issuer");
    let idp = &a.issuers[0];
    assert!(
        matches!(&idp.keys, KeySource::Discovery { url } if url == "http://127.0.0.1:9999/realms/api/.well-known/openid-configuration")
    );
    assert_eq!(idp.refresh.on_outage, OutageMode::FailOpen);
    assert_eq!(idp.introspection.as_ref().unwrap().client_secret, "s3cret", "relative to the config file, trimmed");
    assert!(idp.tls.is_none(), "no HTTPS, no TLS setup");
    assert!(matches!(&a.issuers[1].keys, KeySource::Static { keys, .. } if keys.by_kid("k").is_some()));
    assert!(matches!(&a.issuers[2].keys, KeySource::Static { keys, .. } if keys.by_kid("ed").is_some()));
    assert_eq!(a.consumers.by_api_key("abc").map(|c| &*c.name), Some("partner"));
    assert_eq!(&*a.consumers.get(0).unwrap().profile.id.text, "partner", "id defaults to the name");
    assert!(format!("{:?}", c.auth).contains("[redacted]") && !format!("{:?}", c.auth).contains("s3cret"));
}

#[test]
fn issuers_refuse_what_could_be_abused() {
    let p = problems(
        r#"
[[auth.issuers]]
name = "a"
issuer = "http://idp.example.com"
algorithms = ["HS256", "none", "RS256"]

[[auth.issuers]]
name = "b"
issuer = "https://b.example"
audiences = ["x"]
jwks_uri = "https://b.example/jwks"
discovery = true
jwks_file = "/nonexistent"

[[auth.issuers]]
name = "c"
issuer = "https://c.example"
audiences = ["x"]
keys = [{ pem_file = "/nonexistent/key.pem" }]
min_refresh_interval = "1h"
"#,
    );
    assert!(has(&p, "auth.issuers[0].audiences", "at least one"), "{p:?}");
    assert!(has(&p, "auth.issuers[0].algorithms[0]", "HMAC"), "{p:?}");
    assert!(has(&p, "auth.issuers[0].algorithms[1]", "unknown algorithm"), "{p:?}");
    assert!(has(&p, "auth.issuers[0].issuer", "only allowed on loopback"), "{p:?}");
    assert!(has(&p, "auth.issuers[1]", "choose one key source"), "{p:?}");
    assert!(has(&p, "auth.issuers[2].keys[0].pem_file", "cannot read /nonexistent/key.pem"), "{p:?}");
    assert!(has(&p, "auth.issuers[2].min_refresh_interval", "at most refresh_interval"), "{p:?}");
}

#[test]
fn keys_that_do_not_belong_on_the_edge_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.pem");
    std::fs::write(&private, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    let hmac = dir.path().join("hmac.json");
    std::fs::write(&hmac, r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).unwrap();
    let p = problems(&format!(
        "[[auth.issuers]]\nname = \"a\"\nissuer = \"https://a\"\naudiences = [\"x\"]\nkeys = [{{ pem_file = \"{}\" }}]\n\
         [[auth.issuers]]\nname = \"b\"\nissuer = \"https://b\"\naudiences = [\"x\"]\njwks_file = \"{}\"\n",
        private.display(),
        hmac.display()
    ));
    assert!(has(&p, "auth.issuers[0].keys[0].pem_file", "private key"), "{p:?}");
    assert!(has(&p, "auth.issuers[1].jwks_file", "symmetric"), "{p:?}");
}

#[test]
fn policies_consumers_and_headers_are_checked() {
    let p = problems(
        r#"
[auth.headers]
user = "Authorization"
scope = "X-Consumer-Id"

[[auth.policies]]
name = "p"
any_of = ["jwt", "password"]
all_of = ["mtls"]

[[auth.policies]]
name = "q"
any_of = ["jwt"]
issuers = ["ghost"]

[[auth.policies]]
name = "q"
all_of = []

[[consumers]]
name = "a"
api_keys = ["sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "md5:abc"]

[[consumers]]
name = "a"
api_keys = ["sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"]
scopes = ["has space"]
"#,
    );
    assert!(has(&p, "auth.headers.user", "manages"), "{p:?}");
    assert!(has(&p, "auth.headers.scope", "two identity headers"), "{p:?}");
    assert!(has(&p, "auth.policies[0]", "not both"), "{p:?}");
    assert!(has(&p, "auth.policies[1].issuers[0]", "unknown issuer \"ghost\""), "{p:?}");
    assert!(has(&p, "auth.policies[2].name", "used twice"), "{p:?}");
    assert!(has(&p, "auth.policies[2]", "non-empty list"), "{p:?}");
    assert!(has(&p, "consumers[0].api_keys[1]", "sha256:"), "{p:?}");
    assert!(has(&p, "consumers[1].name", "used twice"), "{p:?}");
    assert!(has(&p, "consumers[1].api_keys[0]", "configured twice"), "{p:?}");
    assert!(has(&p, "consumers[1].scopes[0]", "invalid scope"), "{p:?}");

    let p = problems("[[auth.policies]]\nname = \"p\"\nany_of = [\"jwt\", \"password\"]\n");
    assert!(has(&p, "auth.policies[0].any_of[1]", "unknown credential"), "{p:?}");
    assert!(has(&p, "auth.policies[0].any_of", "no [[auth.issuers]]"), "{p:?}");
}

#[test]
fn introspection_needs_an_endpoint_and_a_secret() {
    let p = problems(
        "[[auth.issuers]]\nname = \"a\"\nissuer = \"https://a\"\naudiences = [\"x\"]\ndiscovery = false\n\
         [auth.issuers.introspection]\nclient_id = \"gw\"\nclient_secret_file = \"/nonexistent/secret\"\n",
    );
    assert!(has(&p, "auth.issuers[0].introspection.endpoint", "required"), "{p:?}");
    assert!(has(&p, "auth.issuers[0].introspection.client_secret_file", "cannot read"), "{p:?}");
    let p =
        problems("[[auth.issuers]]\nname = \"a\"\nissuer = \"https://a\"\naudiences = [\"x\"]\ndiscovery = false\n");
    assert!(has(&p, "auth.issuers[0].discovery", "needs keys"), "{p:?}");
}

#[test]
fn a_shared_revocation_store_needs_redis() {
    let p = problems("[auth]\ndefault_policy = \"none\"\n[auth.revocation]\nstore = \"redis\"\ncache_ttl = \"1h\"\n");
    assert!(has(&p, "auth.revocation.store", "[redis]"), "{p:?}");
    assert!(has(&p, "auth.revocation.cache_ttl", "at most 5m"), "{p:?}");
    let c = load("[redis]\nurl = \"redis://127.0.0.1:6379\"\n[auth]\ndefault_policy = \"none\"\n[auth.revocation]\nstore = \"redis\"\non_store_error = \"fail_open\"\n").unwrap();
    assert_eq!(c.auth.revocation.store, crate::auth::RevocationStoreKind::Redis);
    assert_eq!(c.auth.revocation.on_store_error, OutageMode::FailOpen);
}

#[test]
fn a_shared_introspection_cache_needs_redis() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let issuer = |cache: &str| {
        format!(
            "[auth]\ndefault_policy = \"none\"\n[[auth.issuers]]\nname = \"a\"\nissuer = \"https://a\"\n\
             audiences = [\"x\"]\n[auth.issuers.introspection]\nclient_id = \"gw\"\nclient_secret_file = \"{}\"\n{cache}",
            secret.display()
        )
    };
    let p = problems(&issuer("cache = \"redis\"\n"));
    assert!(has(&p, "auth.issuers[0].introspection.cache", "[redis]"), "{p:?}");
    let c = load(&issuer("")).unwrap();
    let memory = c.auth.issuers[0].introspection.as_ref().map(|i| i.cache);
    assert_eq!(memory, Some(crate::auth::IntrospectionCacheKind::Memory), "memory by default");
    let c = load(&format!("[redis]\nurl = \"redis://127.0.0.1:6379\"\n{}", issuer("cache = \"redis\"\n"))).unwrap();
    let redis = c.auth.issuers[0].introspection.as_ref().map(|i| i.cache);
    assert_eq!(redis, Some(crate::auth::IntrospectionCacheKind::Redis));
}

#[test]
fn an_outage_grace_too_short_for_the_retries_is_refused_at_its_line() {
    let issuer = |extra: &str| {
        format!("[[auth.issuers]]\nname = \"i\"\nissuer = \"http://127.0.0.1:9/r\"\naudiences = [\"x\"]\n{extra}\n")
    };
    // 1s + 2s + 4s of backoff and three 5s attempts: 22s.
    let p = problems(&issuer("fetch_timeout = \"5s\"\nidp_outage_grace = \"21s\""));
    assert!(has(&p, "auth.issuers[0].idp_outage_grace", "must be at least 22s"), "{p:?}");
    assert_eq!(p[0].line, 14, "{p:?}");
    // The defaults' ratio (grace shorter than the refresh interval) is fine: the grace counts
    // from the first failed refresh, not from the last success.
    let c = load(&issuer("refresh_interval = \"10m\"\nfetch_timeout = \"5s\"\nidp_outage_grace = \"22s\"")).unwrap();
    assert_eq!(c.auth.issuers[0].refresh.outage_grace, Duration::from_secs(22));
    // A shorter backoff cap (min_refresh_interval) needs less; fail_open and static keys never fail closed.
    load(&issuer("min_refresh_interval = \"1s\"\nfetch_timeout = \"1s\"\nidp_outage_grace = \"6s\""))
        .map(|_| ())
        .unwrap_or_else(|p| panic!("{p:?}"));
    load(&issuer("idp_outage_grace = \"1s\"\non_idp_outage = \"fail_open\"")).map(|_| ()).unwrap();

    let p = problems(&issuer("breaker_failures = 0\nbreaker_cool_down = \"10ms\""));
    assert!(has(&p, "auth.issuers[0].breaker_failures", "between 1 and 100"), "{p:?}");
    assert!(has(&p, "auth.issuers[0].breaker_cool_down", "between 100ms and 10m"), "{p:?}");
    let c = load(&issuer("breaker_failures = 5\nbreaker_cool_down = \"2s\"")).unwrap();
    assert_eq!(c.auth.issuers[0].breaker, crate::auth::BreakerSpec { failures: 5, cool_down: Duration::from_secs(2) });
}

#[test]
fn the_revocation_state_file_is_absolute_or_disabled() {
    let open = "[auth]\ndefault_policy = \"none\"\n[auth.revocation]\n";
    let p = problems(&format!("{open}state_file = \"revocations.json\"\n"));
    assert!(has(&p, "auth.revocation.state_file", "absolute path"), "{p:?}");
    assert_eq!(p[0].line, 12, "{p:?}");
    let c = load(&format!("{open}state_file = \"\"\n")).unwrap();
    assert_eq!(c.auth.revocation.state_file, None);
    let c = load(&format!("{open}state_file = \"/srv/gw/revoked.json\"\n")).unwrap();
    assert_eq!(c.auth.revocation.state_file.as_deref(), Some(std::path::Path::new("/srv/gw/revoked.json")));
    let c = load(open).unwrap();
    assert!(c.auth.revocation.state_file.as_ref().is_some_and(|p| p.ends_with("revocations.json")), "a default");
}
