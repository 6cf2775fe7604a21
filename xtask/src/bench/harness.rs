//! The steps every subject-vs-subject benchmark repeats, in one place: check the tools, pin
//! xtask to the load CPUs, start subjects (pinned, logged, awaited, stopped on drop), run a
//! measurement interleaved over the subjects with their CPU time and the background load on
//! their CPUs, and keep the command lines and configs for the report.

use std::{fs, net::SocketAddr, path::Path, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    Background, Subject,
    cpus::{CpuList, CpuPlan},
    idle, interleave,
    process::Service,
    procfs::Tree,
    report::{self, Machine},
    run_dir,
};
use crate::deps;

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One measured run of one subject: what `f` returned, the subject's CPU time during it, and
/// the share of the subject CPUs other processes used meanwhile.
pub struct Measured<T> {
    pub value: T,
    pub cpu: Duration,
    pub background: f64,
}

impl<T> Measured<T> {
    /// CPU µs per unit of work (`count`: requests, handshakes).
    pub fn cpu_us_per(&self, count: u64) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / count as f64
    }
}

pub struct Harness {
    pub plan: CpuPlan,
    pub dir: PathBuf,
    pub machine: Machine,
    /// The open-file limit (raised to the hard limit; subjects inherit it).
    pub nofile: u64,
    services: Vec<Service>,
    /// Every subject's command line, in start order, for the report.
    pub commands: Vec<String>,
    /// (title, code-block language, text) of every config written, for the report.
    pub configs: Vec<(String, &'static str, String)>,
}

impl Harness {
    /// Installs what is missing, splits the CPUs, pins xtask to the load CPUs and empties
    /// `target/bench/<name>/`.
    pub fn new(name: &str) -> Result<Self> {
        deps::ensure()?;
        let plan = CpuPlan::detect()?;
        let nofile = idle::raise_fd_limit()?;
        plan.pin_self_to_load()?;
        let dir = run_dir(name)?;
        eprintln!(
            "xtask: bench {name}: subject CPUs {}, load CPUs {}; logs in {}",
            plan.subject,
            plan.load,
            dir.display()
        );
        Ok(Harness {
            plan,
            dir,
            machine: Machine::read(),
            nofile,
            services: Vec::new(),
            commands: Vec::new(),
            configs: Vec::new(),
        })
    }

    /// Starts `cmd` (already pinned), waits until `GET /` on `addr` answers 200; returns its
    /// process tree.
    pub fn start(&mut self, name: &str, cmd: Command, addr: SocketAddr) -> Result<Tree> {
        self.commands.push(report::shell_line(&cmd));
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        let mut service = Service::start(name, cmd, &log)?;
        service.wait_http_ok(addr, "/", READY_TIMEOUT)?;
        let tree = service.tree();
        self.services.push(service);
        Ok(tree)
    }

    /// Writes `text` to `path` and keeps it for the report under `title`.
    pub fn config(&mut self, title: &str, lang: &'static str, path: &Path, text: String) -> Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        self.configs.push((title.to_owned(), lang, text));
        Ok(())
    }

    /// Fails if any started process has exited (a crash during a run must not go unnoticed).
    pub fn check_alive(&mut self) -> Result<()> {
        self.services.iter_mut().try_for_each(Service::check_alive)
    }

    /// Runs `f` `reps` times per subject, interleaved; measures each run's CPU time of the
    /// subject and the background on the subject CPUs (`own`: the trees pinned there).
    pub fn interleave<T>(
        &mut self,
        reps: u32,
        subjects: &[Subject],
        own: &[Tree],
        mut f: impl FnMut(&CpuList, &Subject) -> Result<T>,
    ) -> Result<Vec<Vec<Measured<T>>>> {
        let subject_cpus = self.plan.subject.clone();
        let load = self.plan.load.clone();
        let background = Background { cpus: &subject_cpus, own: own.to_vec() };
        let services = &mut self.services;
        interleave(reps, subjects, |_, s| {
            let cpu = s.tree.cpu_time()?;
            let (value, background) = background.measure(|| f(&load, s))?;
            let cpu = s.tree.cpu_time()? - cpu;
            services.iter_mut().try_for_each(Service::check_alive)?;
            Ok(Measured { value, cpu, background })
        })
    }

    /// Stops every started process (in reverse start order).
    pub fn stop(mut self) -> Result<()> {
        while let Some(service) = self.services.pop() {
            service.stop()?;
        }
        Ok(())
    }

    /// The load average now (for the report's "at the end").
    pub fn loadavg(&self) -> String {
        report::loadavg()
    }
}
