//! Which CPUs run the subject under test and which run the load (client and upstream), so the
//! two never compete for a core.

use std::{fmt, process::Command};

use anyhow::{Context as _, Result, bail};
use nix::{
    sched::{CpuSet, sched_getaffinity, sched_setaffinity},
    unistd::Pid,
};

/// A split of the CPUs this process may run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    /// For the process under test (a proxy): its worker count is `subject.len()`.
    pub subject: CpuList,
    /// For the load generators, upstreams and xtask itself.
    pub load: CpuList,
}

impl CpuPlan {
    /// Splits the CPUs xtask may use: the upper half (rounded down) for the subject, the rest
    /// for the load, which has both the client and the upstream to run. Needs two CPUs.
    pub fn detect() -> Result<Self> {
        Self::split(&CpuList::allowed()?.0)
    }

    fn split(allowed: &[usize]) -> Result<Self> {
        if allowed.len() < 2 {
            bail!(
                "benchmarks pin the subject apart from the load and need at least 2 CPUs; this process may use {}",
                CpuList(allowed.to_vec())
            );
        }
        let at = allowed.len() - allowed.len() / 2;
        Ok(Self { load: CpuList(allowed[..at].to_vec()), subject: CpuList(allowed[at..].to_vec()) })
    }

    /// Pins the calling thread (and so every thread and child it starts later) to the load
    /// CPUs: xtask's own clients (idle connections, readiness probes) stay off the subject's.
    pub fn pin_self_to_load(&self) -> Result<()> {
        pin(0, &self.load.0)
    }
}

/// Pins thread `tid` (0: the calling thread) to `cpus`.
pub fn pin(tid: u32, cpus: &[usize]) -> Result<()> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu} out of range"))?;
    }
    let pid = i32::try_from(tid).context("thread id")?;
    sched_setaffinity(Pid::from_raw(pid), &set).with_context(|| format!("sched_setaffinity of thread {tid}"))
}

/// CPU numbers, printed the way `taskset -c` reads them (`0,2,3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// Every CPU this process may run on.
    pub fn allowed() -> Result<Self> {
        Ok(Self(allowed_cpus()?))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `taskset -c LIST program`: the program (and every child it forks) runs only there.
    pub fn taskset(&self, program: &str) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", &self.to_string(), program]);
        cmd
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

fn allowed_cpus() -> Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    Ok((0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpus_put_the_subject_on_the_second() {
        let plan = CpuPlan::split(&[0, 1]).ok();
        assert_eq!(plan, Some(CpuPlan { subject: CpuList(vec![1]), load: CpuList(vec![0]) }));
    }

    #[test]
    fn odd_counts_give_the_extra_cpu_to_the_load() {
        let plan = CpuPlan::split(&[0, 1, 2]).ok();
        assert_eq!(plan, Some(CpuPlan { subject: CpuList(vec![2]), load: CpuList(vec![0, 1]) }));
        let plan = CpuPlan::split(&[2, 3, 6, 7]).ok();
        assert_eq!(plan, Some(CpuPlan { subject: CpuList(vec![6, 7]), load: CpuList(vec![2, 3]) }));
    }

    #[test]
    fn one_cpu_is_refused() {
        assert!(CpuPlan::split(&[0]).is_err());
    }

    #[test]
    fn lists_print_for_taskset() {
        assert_eq!(CpuList(vec![0, 2, 3]).to_string(), "0,2,3");
        let cmd = CpuList(vec![1]).taskset("wrk");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["-c", "1", "wrk"]);
    }

    #[test]
    fn this_process_may_use_some_cpu() {
        assert!(!allowed_cpus().unwrap_or_default().is_empty());
    }
}
