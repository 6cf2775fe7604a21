//! What an operator meets first: the CLI's help and its refusals, the log bytes journald
//! stores, and the daemon's error when it lacks privileges for the XDP guard.

use std::process::{Command, Output};

use super::support::*;

fn gatewayd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run gatewayd")
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `gatewayd xdp block 10.0.7.5/24` is refused before anything is blocked, with the words
/// `check-config` uses for the same entry in `xdp.deny` (one parser for both).
#[test]
fn xdp_block_refuses_host_bits_as_the_config_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = Ports { listen: free_port(), metrics: free_port(), dir: dir.path().into() };
    let config = dir.path().join("c.toml");
    std::fs::write(&config, ConfigBuilder::new(&p).table("[xdp]", "deny = [\"10.0.7.5/24\"]").build()).unwrap();
    let checked = Command::new(BIN).arg("check-config").arg(&config).output().unwrap();
    assert_eq!(checked.status.code(), Some(1));
    let want = "\"10.0.7.5/24\" has host bits set; did you mean \"10.0.7.0/24\"?";
    assert!(stderr_of(&checked).contains(want), "{}", stderr_of(&checked));

    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();
    for args in [
        &["xdp", "block", "10.0.7.5/24", "--admin-socket", socket][..],
        &["xdp", "block", "10.0.7.5/24", "--for", "10m", "--admin-socket", socket],
        &["xdp", "unblock", "10.0.7.5/24", "--admin-socket", socket],
    ] {
        let out = gatewayd(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr_of(&out).contains(want), "{args:?}: {}", stderr_of(&out));
    }
}

/// Each subcommand's help lists the options that mean something for it, and no others.
#[test]
fn subcommand_help_lists_only_options_that_apply() {
    let help = |args: &[&str]| {
        let out = gatewayd(args);
        assert!(out.status.success(), "{args:?}: {}", stderr_of(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [&["--help"][..], &["run", "--help"]] {
        let h = help(args);
        assert!(h.contains("--config"), "{args:?}:\n{h}");
        assert!(!h.contains("--admin-socket"), "{args:?}:\n{h}");
    }
    for args in [
        &["status", "--help"][..],
        &["reload", "--help"],
        &["top", "--help"],
        &["revoke", "--help"],
        &["xdp", "top", "--help"],
        &["xdp", "block", "--help"],
        &["xdp", "unblock", "--help"],
    ] {
        let h = help(args);
        assert!(h.contains("--admin-socket") && h.contains("--config"), "{args:?}:\n{h}");
    }
    for args in [
        &["check-config", "--help"][..],
        &["defaults", "--help"],
        &["xdp", "selftest", "--help"],
        &["certs", "init", "--help"],
    ] {
        let h = help(args);
        assert!(!h.contains("--admin-socket") && !h.contains("--config"), "{args:?}:\n{h}");
    }
    // The options still work before the subcommand (scripts written that way keep working).
    let out = gatewayd(&["--admin-socket", "/nonexistent/admin.sock", "status"]);
    assert!(stderr_of(&out).contains("/nonexistent/admin.sock"), "{}", stderr_of(&out));
    let out = gatewayd(&["status", "--admin-socket", "/nonexistent/admin.sock"]);
    assert!(stderr_of(&out).contains("/nonexistent/admin.sock"), "{}", stderr_of(&out));
}

/// stderr is a file here, as under journald: no colour escape codes in the text logs.
#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let gw = Gateway::start(|p| ConfigBuilder::new(p).build());
    raw_get(gw.ports.listen, "/nowhere").expect("request");
    let log = gw.stderr();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in the log: {log:?}");
}

/// Makes sure bpffs is mounted (as the daemon would, with the privileges the test has), so the
/// daemon without privileges gets as far as creating maps.
fn ensure_bpffs() {
    let fs = Command::new("stat").args(["-f", "-c", "%T", "/sys/fs/bpf"]).output().expect("stat");
    if String::from_utf8_lossy(&fs.stdout).trim() != "bpf_fs" {
        let out = Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]).output().expect("mount");
        assert!(out.status.success(), "cannot mount bpffs: {}", stderr_of(&out));
    }
}

/// Without CAP_BPF, CAP_NET_ADMIN (and CAP_SYS_ADMIN), the guard cannot create its maps: the
/// daemon says what it needs and leaves no pin directory behind.
#[test]
fn xdp_without_privileges_says_what_is_needed_and_leaves_no_pin_directory() {
    ensure_bpffs();
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/gatewayd-test-unprivileged-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin);
    let dir = tempfile::tempdir().unwrap();
    let p = Ports { listen: free_port(), metrics: free_port(), dir: dir.path().into() };
    let config = dir.path().join("c.toml");
    let xdp = format!("enabled = true\ninterfaces = [\"lo\"]\npin_path = \"{}\"", pin.display());
    std::fs::write(&config, ConfigBuilder::new(&p).table("[xdp]", &xdp).build()).unwrap();
    // Root without the capabilities eBPF needs (util-linux's setpriv; the bounding set caps what
    // root gets at exec): none of them (maps cannot be created), or CAP_BPF alone (XDP and TC
    // programs cannot be loaded).
    for dropped in ["-bpf,-net_admin,-sys_admin,-perfmon", "-net_admin,-sys_admin"] {
        let out = Command::new("setpriv")
            .args(["--bounding-set", dropped, "--", BIN, "--config"])
            .arg(&config)
            .output()
            .expect("setpriv (util-linux) must be installed");
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{dropped}: {err}");
        assert!(err.contains("needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN"), "{dropped}: {err}");
        assert!(!pin.exists(), "{dropped}: the failed start left {} behind", pin.display());
    }
}
