//! Running external commands with enough context in errors to act on them.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root, wherever `cargo xtask` was started from.
pub fn workspace_root() -> &'static Path {
    // xtask/ sits directly under the root; fixed at compile time, so the cwd never matters.
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir)
}

/// `cargo` in the workspace root, with the toolchain that runs xtask (rustup's proxy picks it).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Runs `cmd` with inherited stdio, printing it first; fails unless it exits with 0.
pub fn exec(cmd: &mut Command) -> Result<()> {
    announce(cmd);
    let status = cmd.status().with_context(|| format!("failed to run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; fails with its stderr unless it exits with 0.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8 output"))
}

/// Whether `cmd` can be run and exits with 0 (output discarded): for "is X usable?" probes.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|out| out.status.success())
}

/// Runs `f` and prints its outcome and how long it took.
pub fn timed<T>(label: &str, f: impl FnOnce() -> Result<T>) -> (Duration, Result<T>) {
    let start = Instant::now();
    let result = f();
    let elapsed = start.elapsed();
    let outcome = if result.is_ok() { "ok" } else { "FAILED" };
    eprintln!("xtask: {label}: {outcome} in {}", seconds(elapsed));
    (elapsed, result)
}

/// `1.2s`
pub fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `$CARGO_HOME/bin`, where rustup's proxies and `cargo install`ed tools (bpf-linker) live.
pub fn cargo_bin_dir() -> Result<PathBuf> {
    let home = match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?).join(".cargo"),
    };
    Ok(home.join("bin"))
}

/// Makes sure `$CARGO_HOME/bin` is on PATH for every child (aya-build looks up bpf-linker there).
///
/// Must be called before any thread is started: it changes the process environment.
pub fn put_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_bin_dir()?;
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return Ok(());
    }
    let joined: OsString = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .context("cannot put $CARGO_HOME/bin on PATH")?;
    // SAFETY: called first thing in main, while the process is single-threaded.
    unsafe { env::set_var("PATH", joined) };
    Ok(())
}

/// Prints `+ cargo clippy --all-targets` (shell style, like `set -x`) before a command runs.
pub fn announce(cmd: &Command) {
    let mut line = format!("+ {}", cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    eprintln!("{line}");
}
