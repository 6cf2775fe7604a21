use std::process::Command;

use super::support::*;

#[test]
fn check_config_accepts_good_and_locates_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        ConfigBuilder::new(&Ports { listen: free_port(), metrics: free_port(), dir: dir.path().into() }).build(),
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config"]).arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\n\n[[services]]\nname = \"s\"\ntargets = [\"127.0.0.1:1\"]\nlb = \"fastest\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:8:"), "no file:line in {err}");
    assert!(err.contains("fastest"), "{err}");

    let dup = dir.path().join("dup.toml");
    std::fs::write(
        &dup,
        "[[listeners]]\nname = \"a\"\nbind = \"0.0.0.0:80\"\n[[services]]\nname = \"s\"\ntargets = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"first\"\nservice = \"s\"\npaths = [\"/p\"]\n[[routes]]\nname = \"second\"\nservice = \"s\"\npaths = [\"/p\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check-config"]).arg(&dup).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dup.toml:11:") && err.contains("\"first\"") && err.contains("\"second\""), "{err}");
}

#[test]
fn a_config_that_cannot_start_exits_non_zero_with_the_reason() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let p = Ports { listen: free_port(), metrics: taken.local_addr().unwrap(), dir: dir.path().into() };
    std::fs::write(&path, ConfigBuilder::new(&p).build()).unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metrics endpoint"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 10 item 2: a grace that cannot hold the retries of a failed key refresh is refused,
/// located at its line.
#[test]
fn check_config_refuses_an_idp_outage_grace_too_short_for_the_retries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grace.toml");
    let p = Ports { listen: free_port(), metrics: free_port(), dir: dir.path().into() };
    let issuer = "name = \"corp\"\nissuer = \"http://127.0.0.1:9/realms/api\"\naudiences = [\"api\"]\nidp_outage_grace = \"10s\"";
    let text = ConfigBuilder::new(&p).auth("default_policy = \"none\"").table("[[auth.issuers]]", issuer).build();
    let line = 1 + text.lines().position(|l| l.starts_with("idp_outage_grace")).unwrap();
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).args(["check-config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("grace.toml:{line}:")), "no file:line in {err}");
    assert!(err.contains("auth.issuers[0].idp_outage_grace: must be at least 22s"), "{err}");
}
