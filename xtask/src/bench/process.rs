//! Long-running processes a benchmark starts (the subject, upstreams), pinned to CPUs, with their
//! output in log files, stopped when dropped.

use std::{
    fs::{self, File},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::{http, procfs::Tree};
use crate::cmd::announce;

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A started process. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` (usually `CpuList::taskset`, which execs the program in place, so the pid
    /// is the program's) with stdout and stderr going to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        announce(&cmd);
        let child = cmd.spawn().with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The process and its children, for CPU and memory readings.
    pub fn tree(&self) -> Tree {
        Tree(self.pid())
    }

    /// Polls `GET path` on `addr` until it answers 200; fails (with the end of the log) if the
    /// process exits first or `timeout` passes.
    pub fn wait_http_ok(&mut self, addr: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{} exited before it was ready ({status}); its log ends with:\n{}", self.name, self.log_tail());
            }
            match http::get(addr, path) {
                Ok(response) if response.status == 200 => return Ok(()),
                Ok(response) => last = format!("status {}", response.status),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "{} did not answer 200 on http://{addr}{path} within {timeout:?} (last: {last}); its log ends with:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// Fails if the process has exited (a crash during a run must not go unnoticed).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited during the benchmark ({status}); its log ends with:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after a while; the process (and, for nginx, its workers) is gone
    /// when this returns.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        // nginx: SIGTERM is its fast shutdown (workers exit, then the master).
        let _gone = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("xtask: {} did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it", self.name);
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("xtask: stopping {}: {e:#}", self.name);
        }
    }
}
