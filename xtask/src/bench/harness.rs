//! The steps every subject-vs-subject benchmark repeats, in one place: build gatewayd, check the
//! tools, pin xtask to the load CPUs, start subjects (pinned, logged, awaited by a readiness
//! check, stopped on drop), run a measurement interleaved over the subjects (or over the routes
//! of one subject) with their CPU time and the background load on their CPUs, pick the fixed
//! rate, and keep the command lines and configs for the report.

use std::{fs, net::SocketAddr, path::Path, path::PathBuf, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};

use super::{
    Background, Subject,
    cpus::{CpuList, CpuPlan},
    gatewayd_binary, idle, interleave,
    process::Service,
    procfs::Tree,
    report::{self, Machine},
    run_dir,
};
use crate::{
    cmd::{cargo, exec},
    deps,
};

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

/// What a run is measured on: a subject, or one route of a subject (several routes share one
/// process tree).
pub trait Measurable {
    /// The processes whose CPU time the run costs.
    fn tree(&self) -> Tree;
}

impl Measurable for Subject {
    fn tree(&self) -> Tree {
        self.tree
    }
}

/// When a started process counts as ready.
pub enum Ready<'a> {
    /// `GET path` on the address answers 200.
    Http(SocketAddr, &'a str),
    /// The probe returns `Ok` (a TLS handshake, a Redis `PING`).
    Probe(Box<dyn FnMut() -> Result<()> + 'a>),
}

/// Builds the release gatewayd (every benchmark measures that build); returns its path.
pub fn release_gatewayd() -> Result<PathBuf> {
    exec(cargo().args(["build", "--release", "--locked", "--package", "gateway-userspace", "--bin", "gatewayd"]))?;
    Ok(gatewayd_binary())
}

/// Half the lowest of `max_rps` (the highest rates the subjects or routes sustained), rounded
/// down to hundreds: a rate every one of them sustains, the same for all. Fails under 200/s.
pub fn fixed_rate(max_rps: &[f64]) -> Result<u64> {
    let lowest = max_rps.iter().copied().fold(f64::INFINITY, f64::min);
    let rate = if lowest.is_finite() { ((lowest * 0.5) / 100.0).floor() as u64 * 100 } else { 0 };
    if rate == 0 {
        bail!("the subjects sustained under 200 requests/s ({max_rps:?}); something is wrong");
    }
    Ok(rate)
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
    /// How long a started process may take to become ready.
    pub ready_timeout: Duration,
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
            ready_timeout: READY_TIMEOUT,
        })
    }

    /// Starts `cmd` (already pinned), waits until `GET /` on `addr` answers 200; returns its
    /// process tree.
    pub fn start(&mut self, name: &str, cmd: Command, addr: SocketAddr) -> Result<Tree> {
        self.start_ready(name, cmd, Ready::Http(addr, "/"))
    }

    /// Starts `cmd` (already pinned) and waits until it is `ready`; returns its process tree.
    pub fn start_ready(&mut self, name: &str, cmd: Command, ready: Ready<'_>) -> Result<Tree> {
        self.commands.push(report::shell_line(&cmd));
        let log = self.dir.join(format!("{}.log", name.replace(' ', "-")));
        let mut service = Service::start(name, cmd, &log)?;
        let timeout = self.ready_timeout;
        match ready {
            Ready::Http(addr, path) => service.wait_http_ok(addr, path, timeout)?,
            Ready::Probe(mut probe) => {
                let deadline = std::time::Instant::now() + timeout;
                loop {
                    service.check_alive()?;
                    match probe() {
                        Ok(()) => break,
                        Err(e) if std::time::Instant::now() > deadline => {
                            return Err(e.context(format!("{name} was not ready within {timeout:?}")));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
        let tree = service.tree();
        self.services.push(service);
        Ok(tree)
    }

    /// Writes `conf` to `<dir>/<prefix>/nginx.conf` (kept for the report as "`name`:
    /// nginx.conf") and starts nginx with that prefix on `cpus`.
    pub fn start_nginx(
        &mut self,
        name: &str,
        prefix: &str,
        cpus: &CpuList,
        conf: String,
        ready: Ready<'_>,
    ) -> Result<Tree> {
        let prefix = self.dir.join(prefix);
        self.config(&format!("{name}: nginx.conf"), "nginx", &prefix.join("nginx.conf"), conf)?;
        self.start_ready(name, super::proxy::nginx_command(cpus, &prefix), ready)
    }

    /// `bench proxy`'s upstream on the load CPUs: nginx answering `GET /` with 200 "ok",
    /// keep-alive. Returns its address and tree.
    pub fn start_upstream(&mut self) -> Result<(SocketAddr, Tree)> {
        let addr = super::free_port()?;
        let load = self.plan.load.clone();
        let conf = super::proxy::nginx_upstream_conf(&self.dir.join("upstream"), addr, load.len(), self.nofile)?;
        let tree = self.start_nginx("upstream", "upstream", &load, conf, Ready::Http(addr, "/"))?;
        Ok((addr, tree))
    }

    /// Writes `conf` to `<dir>/<name>.toml` (kept for the report) and starts the binary
    /// `gatewayd` with it on the subject CPUs.
    pub fn start_gatewayd(&mut self, name: &str, gatewayd: &Path, conf: String, ready: Ready<'_>) -> Result<Tree> {
        let file = format!("{name}.toml");
        let path = self.dir.join(&file);
        self.config(&file, "toml", &path, conf)?;
        let mut cmd = self.plan.subject.taskset(gatewayd.to_str().context("gatewayd path is not UTF-8")?);
        cmd.arg("--config").arg(&path);
        self.start_ready(name, cmd, ready)
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

    /// The text of the config kept under `title` (for a report that quotes one).
    pub fn config_text(&self, title: &str) -> &str {
        self.configs.iter().find(|(t, _, _)| t == title).map_or("", |(_, _, text)| text)
    }

    /// Fails if any started process has exited (a crash during a run must not go unnoticed).
    pub fn check_alive(&mut self) -> Result<()> {
        self.services.iter_mut().try_for_each(Service::check_alive)
    }

    /// Runs `f` `reps` times per item (subject or route), interleaved; measures each run's CPU
    /// time of the item's tree and the background on the subject CPUs (`own`: the trees pinned
    /// there).
    pub fn interleave<S: Measurable, T>(
        &mut self,
        reps: u32,
        items: &[S],
        own: &[Tree],
        mut f: impl FnMut(&CpuList, &S) -> Result<T>,
    ) -> Result<Vec<Vec<Measured<T>>>> {
        self.interleave_around(reps, items, own, |_, _| Ok(()), |cpus, s, ()| f(cpus, s), |_, value| Ok(value))
    }

    /// As `interleave`, with a step before and one after each measured run, both outside its
    /// CPU and background window: `before` prepares (client threads, a counter reading) and
    /// hands its result to `measure`; `after` turns the measured value into the run's (reading
    /// counters once in-flight work has settled).
    pub fn interleave_around<S: Measurable, P, T, U>(
        &mut self,
        reps: u32,
        items: &[S],
        own: &[Tree],
        mut before: impl FnMut(&CpuList, &S) -> Result<P>,
        mut measure: impl FnMut(&CpuList, &S, P) -> Result<T>,
        mut after: impl FnMut(&S, T) -> Result<U>,
    ) -> Result<Vec<Vec<Measured<U>>>> {
        let subject_cpus = self.plan.subject.clone();
        let load = self.plan.load.clone();
        let background = Background { cpus: &subject_cpus, own: own.to_vec() };
        let services = &mut self.services;
        interleave(reps, items, |_, s| {
            let prepared = before(&load, s)?;
            let cpu = s.tree().cpu_time()?;
            let (value, background) = background.measure(|| measure(&load, s, prepared))?;
            let cpu = s.tree().cpu_time()? - cpu;
            services.iter_mut().try_for_each(Service::check_alive)?;
            Ok(Measured { value: after(s, value)?, cpu, background })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_rate_is_half_the_slowest() {
        assert_eq!(fixed_rate(&[20_000.0, 15_050.0, 9_999.0]).ok(), Some(4_900));
        assert!(fixed_rate(&[150.0]).is_err());
        assert!(fixed_rate(&[]).is_err());
    }
}
