//! `gatewayd top` in a real terminal: a tmux pane of 80×24 (what an ssh session usually has)
//! running the binary against a real daemon, read back with `tmux capture-pane`, driven with
//! `tmux send-keys`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use super::support::*;

const WAIT: Duration = Duration::from_secs(20);

/// A private tmux server (its own socket, no user config), killed when dropped.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` in a detached 80×24 session `top`; its exit status is written to
    /// `exit_file` (tmux 3.3's own `pane_dead_status` is sometimes never filled in).
    fn start(dir: &Path, command: &[&str], exit_file: &Path) -> Tmux {
        let tmux = Tmux { socket: dir.join("tmux.sock") };
        let quoted: Vec<String> = command.iter().map(|a| format!("'{a}'")).collect();
        let shell = format!("{}; echo $? > '{}'", quoted.join(" "), exit_file.display());
        let out = tmux.run(&["-f", "/dev/null", "new-session", "-d", "-s", "top", "-x", "80", "-y", "24", &shell]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux is missing: `cargo xtask deps` installs it")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The cells of the routes-table line for `route` (border stripped).
fn row(screen: &str, route: &str) -> Option<Vec<String>> {
    screen.lines().find_map(|line| {
        let cells: Vec<String> =
            line.trim_matches(|c| c == '│' || c == ' ').split_whitespace().map(str::to_owned).collect();
        (cells.first().map(String::as_str) == Some(route)).then_some(cells)
    })
}

/// Line numbers of the routes' rows, in `routes`' order.
fn positions(screen: &str, routes: &[&str]) -> Vec<Option<usize>> {
    routes
        .iter()
        .map(|r| screen.lines().position(|l| l.trim_matches(|c| c == '│' || c == ' ').starts_with(&format!("{r} "))))
        .collect()
}

/// "PAUSED (N held)" → N.
fn held(screen: &str) -> Option<u64> {
    let rest = &screen[screen.find("PAUSED (")? + "PAUSED (".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn traffic(gw: &Gateway, path: &str, times: usize, expect: &str) {
    for _ in 0..times {
        let answer = raw_get(gw.ports.listen, path).expect("request");
        assert!(answer.starts_with(&format!("HTTP/1.1 {expect}")), "{path}: {answer}");
    }
}

#[test]
fn top_shows_routes_and_answers_its_keys_in_80x24() {
    let upstream = Upstream::start("u");
    let gw = Gateway::start(|p| {
        let socket = p.dir.join("admin.sock");
        ConfigBuilder::new(p)
            .admin_socket(&socket)
            .service("s", &[upstream.addr])
            .route("orders", "s", r#"paths = ["/orders"]"#)
            .route("users", "s", r#"paths = ["/users"]"#)
            .route("failing", "s", r#"paths = ["/status"]"#)
            .build()
    });
    traffic(&gw, "/users", 12, "200");
    traffic(&gw, "/orders", 5, "200");
    traffic(&gw, "/status/503", 2, "503");

    let socket = gw.ports.dir.join("admin.sock");
    let exit_file = gw.ports.dir.join("top.exit");
    let top = [BIN, "top", "--admin-socket", socket.to_str().unwrap(), "--interval", "200ms"];
    let tmux = Tmux::start(&gw.ports.dir, &top, &exit_file);
    let counts = |s: &str| ["users", "orders", "failing"].map(|r| row(s, r).and_then(|c| c.get(1).cloned()));
    let want = [Some("12".to_owned()), Some("5".to_owned()), Some("2".to_owned())];
    // The first frame already holds the final counts (top reads them before taking over the
    // terminal), so a capture can catch it half written: wait for its last line, the key line.
    let drawn = |s: &str| s.lines().last().is_some_and(|l| l.contains("q quit"));
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| counts(s) == want && drawn(s)))
        .unwrap_or_else(|| panic!("routes and counts not shown:\n{}\n{}", tmux.screen(), gw.stderr()));
    // All of it fits 80×24: the summary, the table, the three panes and the key line.
    assert_eq!(screen.lines().count(), 24, "{screen}");
    assert!(screen.lines().all(|l| l.chars().count() <= 80), "{screen}");
    for part in
        ["gatewayd top", "req/s", "TLS handshakes/s", "ROUTE", "OVH P99", "consumers", "XDP guard off", "CPU", "q quit"]
    {
        assert!(screen.contains(part), "{part:?} missing:\n{screen}");
    }

    // Fewer than 20 lines: the panes go, the routes and the key line stay.
    assert!(tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "14"]).status.success());
    let small = |s: &String| s.lines().count() == 14 && !s.contains("health") && s.contains("q quit");
    eventually(WAIT, || Some(tmux.screen()).filter(|s| small(s) && counts(s) == want))
        .unwrap_or_else(|| panic!("no smaller layout:\n{}", tmux.screen()));
    assert!(tmux.run(&["resize-window", "-t", "top", "-x", "80", "-y", "24"]).status.success());
    eventually(WAIT, || Some(tmux.screen()).filter(|s| s.contains("health")))
        .unwrap_or_else(|| panic!("panes not back:\n{}", tmux.screen()));

    // s cycles the sort column: by requests, then (four more) by route name.
    tmux.keys(&["s"]);
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| s.contains("sort: requests")))
        .unwrap_or_else(|| panic!("sort key ignored:\n{}", tmux.screen()));
    assert!(positions(&screen, &["users", "orders", "failing"]).iter().map(|p| p.unwrap()).is_sorted(), "{screen}");
    tmux.keys(&["s", "s", "s", "s"]);
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| s.contains("sort: route")))
        .unwrap_or_else(|| panic!("sort did not cycle to route:\n{}", tmux.screen()));
    assert!(positions(&screen, &["failing", "orders", "users"]).iter().map(|p| p.unwrap()).is_sorted(), "{screen}");

    // / then text filters routes by name.
    tmux.keys(&["/"]);
    tmux.keys(&["-l", "ord"]);
    tmux.keys(&["Enter"]);
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| s.contains("filter: ord ")))
        .unwrap_or_else(|| panic!("filter not applied:\n{}", tmux.screen()));
    assert!(
        row(&screen, "orders").is_some() && row(&screen, "users").is_none() && row(&screen, "failing").is_none(),
        "{screen}"
    );

    // p pauses: refreshes go on (counted as held) but the screen keeps its numbers.
    tmux.keys(&["p"]);
    eventually(WAIT, || held(&tmux.screen())).unwrap_or_else(|| panic!("not paused:\n{}", tmux.screen()));
    traffic(&gw, "/orders", 3, "200");
    eventually(WAIT, || (gw.metric("gateway_http_requests_total", &[("route", "orders")]) == 8.0).then_some(()))
        .expect("the three requests counted");
    let before = held(&tmux.screen()).expect("still paused");
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| held(s).is_some_and(|h| h >= before + 2)))
        .unwrap_or_else(|| panic!("no refresh while paused:\n{}", tmux.screen()));
    assert_eq!(row(&screen, "orders").unwrap()[1], "5", "paused screen changed:\n{screen}");
    // p again resumes with the data fetched meanwhile.
    tmux.keys(&["p"]);
    let screen = eventually(WAIT, || Some(tmux.screen()).filter(|s| row(s, "orders").is_some_and(|c| c[1] == "8")))
        .unwrap_or_else(|| panic!("not resumed:\n{}", tmux.screen()));
    assert!(!screen.contains("PAUSED"), "{screen}");

    // q quits, exit status 0.
    tmux.keys(&["q"]);
    let status = eventually(WAIT, || std::fs::read_to_string(&exit_file).ok().filter(|s| s.ends_with('\n')))
        .unwrap_or_else(|| panic!("top did not exit:\n{}", tmux.screen()));
    assert_eq!(status.trim(), "0", "top's exit status");
}

/// Without a daemon, `top` says which socket it tried and exits 1 before touching the
/// terminal (no raw mode left behind in a script).
#[test]
fn top_without_a_daemon_names_the_socket() {
    let out = Command::new(BIN).args(["top", "--admin-socket", "/nonexistent/admin.sock"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/admin.sock"), "{stderr}");
    let out = Command::new(BIN).args(["top", "--admin-socket", "/x", "--interval", "10ms"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 100ms"), "{:?}", out);
}
