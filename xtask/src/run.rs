//! `cargo xtask run`: builds gatewayd and runs it in the foreground, says when it is ready and what
//! to try, forwards Ctrl-C/SIGTERM to it and exits with its status.

use std::{
    env,
    ffi::OsString,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use nix::{
    sys::signal::{SigSet, Signal, kill},
    unistd::Pid,
};

use crate::{
    cmd::{announce, cargo, exec, workspace_root},
    deps,
};

/// Where the embedded default config serves metrics and readiness.
const METRICS_ADDR: &str = "127.0.0.1:9090";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile (the default).
    #[arg(long, conflicts_with = "debug")]
    release: bool,
    /// Build with the dev profile instead: quicker to build, slower to run.
    #[arg(long)]
    debug: bool,
    /// Arguments for gatewayd, after `--`. None: its embedded defaults (HTTP on 127.0.0.1:8080,
    /// metrics on 127.0.0.1:9090, a demo route).
    #[arg(last = true)]
    args: Vec<OsString>,
}

impl Options {
    fn release(&self) -> bool {
        self.release || !self.debug
    }
}

pub fn run(opts: &Options) -> Result<ExitCode> {
    deps::ensure()?;
    let mut build = cargo();
    build.args(["build", "--package", "gateway-userspace", "--bin", "gatewayd"]);
    if opts.release() {
        build.arg("--release");
    }
    exec(&mut build)?;

    let binary = target_dir().join(if opts.release() { "release" } else { "debug" }).join("gatewayd");
    // Blocked before the forwarding thread exists so that it inherits the mask, and before the
    // child exists so that no signal is missed.
    let signals = forwarded_signals();
    signals.thread_block().context("cannot block SIGINT/SIGTERM/SIGHUP")?;
    let mut child = spawn(&binary, &opts.args, signals)?;
    let pid = Pid::from_raw(i32::try_from(child.id()).context("child pid out of range")?);
    thread::spawn(move || forward_signals(signals, pid));

    if let Some(status) = wait_until_ready(&mut child)? {
        eprintln!("xtask: gatewayd exited before it was ready: {status}");
        return Ok(exit_code(status));
    }
    let status = child.wait().context("cannot wait for gatewayd")?;
    eprintln!("xtask: gatewayd exited: {status}");
    Ok(exit_code(status))
}

fn spawn(binary: &Path, args: &[OsString], blocked: SigSet) -> Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.args(args);
    // Its own process group: a terminal Ctrl-C reaches only xtask, which forwards it once.
    cmd.process_group(0);
    // std leaves the signal mask as it is. SAFETY: only pthread_sigmask runs between fork and
    // exec, and it is async-signal-safe.
    unsafe { cmd.pre_exec(move || Ok(blocked.thread_unblock()?)) };
    announce(&cmd);
    cmd.spawn().with_context(|| format!("cannot start {}", binary.display()))
}

pub fn target_dir() -> PathBuf {
    // Cargo resolves a relative CARGO_TARGET_DIR against its cwd, the workspace root here.
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), |dir| workspace_root().join(dir))
}

fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set
}

fn forward_signals(signals: SigSet, pid: Pid) {
    loop {
        let Ok(signal) = signals.wait() else { continue };
        // SIGHUP to xtask means its terminal went away; to gatewayd it means "reload", so stop it.
        let forwarded = if signal == Signal::SIGHUP { Signal::SIGTERM } else { signal };
        if let Err(e) = kill(pid, forwarded) {
            eprintln!("xtask: cannot forward {forwarded} to gatewayd: {e}");
        }
    }
}

/// Polls /readyz until it answers 200. Returns the exit status if gatewayd stops first.
fn wait_until_ready(child: &mut Child) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().context("cannot check on gatewayd")? {
            return Ok(Some(status));
        }
        if readyz_answers_200() {
            print_next_steps(child.id());
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
    eprintln!(
        "xtask: no 200 from http://{METRICS_ADDR}/readyz after {}s; gatewayd keeps running \
         (a custom config may serve metrics elsewhere)",
        READY_TIMEOUT.as_secs()
    );
    Ok(None)
}

fn readyz_answers_200() -> bool {
    let Ok(addr) = METRICS_ADDR.parse::<SocketAddr>() else { return false };
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, POLL_INTERVAL) else { return false };
    if stream.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
        return false;
    }
    let request = format!("GET /readyz HTTP/1.0\r\nHost: {METRICS_ADDR}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // Read the whole (small) response: closing with unread data would reset the connection. A
    // timeout after the status line arrived still leaves enough to judge.
    let mut response = Vec::new();
    let _eof_or_timeout = (&mut stream).take(4096).read_to_end(&mut response);
    // "HTTP/1.1 200 OK": the status code is the second word.
    String::from_utf8_lossy(&response).split_whitespace().nth(1) == Some("200")
}

fn print_next_steps(pid: u32) {
    eprintln!(
        "\ngatewayd is ready (pid {pid}). Try:\n\
         \x20 curl http://127.0.0.1:8080/demo/hello     # proxied to the built-in demo upstream\n\
         \x20 curl http://{METRICS_ADDR}/metrics        # Prometheus metrics\n\
         \x20 kill -HUP {pid}                          # reload the configuration\n\
         \x20 Ctrl-C                                   # stop\n"
    );
}

/// gatewayd's status as ours; killed by a signal becomes 128 + signal, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
