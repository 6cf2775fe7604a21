//! `trusted_proxies`: the client is the right-most address of `X-Forwarded-For` that is not a
//! trusted proxy. A client can put anything left of its own address; every consumer of the
//! client address (rate-limit keys, the audit line; the XDP feedback source in `xdp.rs`) must
//! see through a forged left-most hop.

use std::time::Duration;

use http_body_util::Full;

use super::support::*;

/// The peer (127.0.0.1) and 10.0.0.0/8 are trusted proxies; 198.51.100.7 is the real client
/// behind them, and whatever stands left of it is the client's own invention.
const REAL_CLIENT: &str = "198.51.100.7";

fn config(p: &Ports, u: &Upstream) -> String {
    ConfigBuilder::new(p)
        .server(r#"trusted_proxies = ["127.0.0.0/8", "10.0.0.0/8"]"#)
        .table("[audit]", &format!("path = \"{}\"", p.dir.join("audit.log").display()))
        .service("s", &[u.addr])
        .route("r", "s", "")
        .rate_limit("name = \"per-ip\"\nkey = \"ip\"\nlimit = 2\nwindow = \"hour\"")
        .build()
}

async fn get_as(gw: &Gateway, path: &str, xff: &str) -> Reply {
    send(&client(), req("GET", &gw.url(path), "h").header("x-forwarded-for", xff).body(Full::default()).unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_left_most_hop_changes_neither_the_limit_key_nor_the_audit_address() {
    let u = Upstream::start("u");
    let gw = Gateway::start(|p| config(p, &u));
    // Two requests of the real client, each with another forged hop in front, through a
    // trusted proxy (10.1.1.1) on the way.
    assert_eq!(get_as(&gw, "/one", &format!("1.1.1.1, {REAL_CLIENT}, 10.1.1.1")).await.status.as_u16(), 200);
    assert_eq!(get_as(&gw, "/two", &format!("2.2.2.2, {REAL_CLIENT}")).await.status.as_u16(), 200);
    // A third forged hop does not buy a fresh counter: the key is the real client.
    let r = get_as(&gw, "/three", &format!("3.3.3.3, {REAL_CLIENT}, 10.9.9.9")).await;
    assert_eq!(r.status.as_u16(), 429, "the left-most (forged) hop was used as the rate-limit key");
    // Another real client behind the same forged hop has its own counter.
    assert_eq!(get_as(&gw, "/four", "1.1.1.1, 198.51.100.8").await.status.as_u16(), 200);

    let path = gw.ports.dir.join("audit.log");
    let lines = eventually(Duration::from_secs(5), || {
        let lines = gw.audit_lines(&path);
        (lines.len() >= 4).then_some(lines)
    })
    .expect("audit lines written");
    for line in &lines[..3] {
        assert_eq!(line["ip_address"], REAL_CLIENT, "{line}");
    }
    assert_eq!(lines[3]["ip_address"], "198.51.100.8", "{}", lines[3]);
}
