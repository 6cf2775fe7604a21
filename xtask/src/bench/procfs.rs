//! What a process (with its children: nginx's master and workers) costs, read from /proc: CPU
//! time, memory (RSS and PSS) and open file descriptors.

use std::{collections::HashMap, fs, time::Duration};

use anyhow::{Context as _, Result, bail};

pub mod tcp;

/// A process and its descendants, as they are when measured (nginx forks its workers after the
/// master starts; a reload replaces them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree(pub u32);

impl Tree {
    /// The root and every live descendant.
    pub fn pids(self) -> Result<Vec<u32>> {
        let parents = parent_map()?;
        let mut pids = vec![self.0];
        let mut i = 0;
        while i < pids.len() {
            let parent = pids[i];
            pids.extend(parents.iter().filter(|&(_, &ppid)| ppid == parent).map(|(&pid, _)| pid));
            i += 1;
        }
        Ok(pids)
    }

    /// User + system CPU time of every thread of every process in the tree (dead threads of live
    /// processes included; processes that exited meanwhile are not).
    pub fn cpu_time(self) -> Result<Duration> {
        let tick = clock_tick()?;
        let mut ticks = 0u64;
        for pid in self.pids()? {
            // A worker may exit between listing and reading: count what is still there.
            if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
                ticks += parse_stat(&stat)?.cpu_ticks;
            }
        }
        Ok(Duration::from_secs_f64(ticks as f64 / tick))
    }

    /// Summed `Rss` and `Pss` of the tree. PSS splits pages shared between processes (nginx's
    /// master and workers share most of theirs), so it is the fair sum; RSS is shown beside it.
    pub fn memory(self) -> Result<Memory> {
        let mut total = Memory::default();
        for pid in self.pids()? {
            if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
                let m = parse_smaps_rollup(&rollup).with_context(|| format!("/proc/{pid}/smaps_rollup"))?;
                total.rss_bytes += m.rss_bytes;
                total.pss_bytes += m.pss_bytes;
                total.anon_bytes += m.anon_bytes;
            }
        }
        Ok(total)
    }

    /// Open file descriptors across the tree (sockets included).
    pub fn open_fds(self) -> Result<usize> {
        let mut n = 0;
        for pid in self.pids()? {
            if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
                n += dir.count();
            }
        }
        Ok(n)
    }
}

/// Busy time (everything but idle and iowait; steal included: it was taken from us) of `cpus`,
/// summed, from /proc/stat.
pub fn cpus_busy_time(cpus: &[usize]) -> Result<Duration> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let ticks = parse_cpus_busy(&stat, cpus)?;
    Ok(Duration::from_secs_f64(ticks as f64 / clock_tick()?))
}

fn parse_cpus_busy(stat: &str, cpus: &[usize]) -> Result<u64> {
    let mut total = 0;
    for &cpu in cpus {
        let prefix = format!("cpu{cpu} ");
        let line =
            stat.lines().find(|l| l.starts_with(&prefix)).with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
        if f.len() < 8 {
            bail!("short /proc/stat line {line:?}");
        }
        total += f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    }
    Ok(total)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// The anonymous part of `rss_bytes` (heap, stacks): what the process allocated, as opposed
    /// to pages of its binary and libraries it ran (file-backed: shared, clean, reclaimable, and
    /// resident once per process however many connections use the code).
    pub anon_bytes: u64,
}

struct Stat {
    ppid: u32,
    cpu_ticks: u64,
}

/// `/proc/<pid>/stat`: `pid (comm) state ppid ... utime stime ...`; comm may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Result<Stat> {
    let after = stat.rfind(')').map(|i| &stat[i + 1..]).context("no `)` in /proc/<pid>/stat")?;
    // After comm: state(3) ppid(4) pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime(14) stime(15): indices 0, 1, ... 11, 12 here.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        fields.get(i).and_then(|f| f.parse().ok()).with_context(|| format!("bad field {} in {stat:?}", i + 3))
    };
    Ok(Stat { ppid: u32::try_from(field(1)?)?, cpu_ticks: field(11)? + field(12)? })
}

fn parse_smaps_rollup(text: &str) -> Result<Memory> {
    let kib = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
            .with_context(|| format!("no `{key}:` line"))
    };
    Ok(Memory { rss_bytes: kib("Rss")? * 1024, pss_bytes: kib("Pss")? * 1024, anon_bytes: kib("Anonymous")? * 1024 })
}

fn parent_map() -> Result<HashMap<u32, u32>> {
    let mut map = HashMap::new();
    for entry in fs::read_dir("/proc").context("cannot list /proc")? {
        let Some(pid) = entry.ok().and_then(|e| e.file_name().to_str()?.parse::<u32>().ok()) else { continue };
        // Processes come and go while we look.
        if let Some(stat) = fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_stat(&s).ok()) {
            map.insert(pid, stat.ppid);
        }
    }
    Ok(map)
}

fn clock_tick() -> Result<f64> {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .context("sysconf(_SC_CLK_TCK)")?
        .context("_SC_CLK_TCK is not defined")?;
    Ok(hz as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (nginx: worker) S 4241 4241 4241 0 -1 4194624 1500 0 0 0 731 122 0 0 20 0 1 0 \
                    4096 11288576 900 18446744073709551615";
        let parsed = parse_stat(stat).ok();
        assert_eq!(parsed.as_ref().map(|s| (s.ppid, s.cpu_ticks)), Some((4241, 853)));
        // A name with a `) ` inside does not shift the fields.
        let tricky = "7 (a) b) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0";
        assert_eq!(parse_stat(tricky).ok().map(|s| (s.ppid, s.cpu_ticks)), Some((1, 11)));
        assert!(parse_stat("7 (x) R").is_err());
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 100 1 20 5000 7 0 3 2 0 0\ncpu1 200 0 30 4000 0 1 1 0 0 0\n";
        assert_eq!(parse_cpus_busy(stat, &[0]).ok(), Some(126));
        assert_eq!(parse_cpus_busy(stat, &[0, 1]).ok(), Some(126 + 232));
        assert!(parse_cpus_busy(stat, &[2]).is_err());
    }

    #[test]
    fn smaps_rollup_gives_rss_and_pss_in_bytes() {
        let text = "55d0c0000000-7ffd3b1ff000 ---p 00000000 00:00 0    [rollup]\n\
                    Rss:               12340 kB\nPss:                6170 kB\nPss_Anon:  1 kB\nAnonymous:  2000 kB\n";
        let want = Memory { rss_bytes: 12340 * 1024, pss_bytes: 6170 * 1024, anon_bytes: 2000 * 1024 };
        assert_eq!(parse_smaps_rollup(text).ok(), Some(want));
        assert!(parse_smaps_rollup("Rss: 1 kB\n").is_err());
    }

    #[test]
    fn this_process_is_measurable() -> Result<()> {
        let me = Tree(std::process::id());
        assert!(me.pids()?.contains(&me.0));
        assert!(me.memory()?.rss_bytes > 0);
        assert!(me.open_fds()? >= 3);
        // Burn a little CPU so that the clock moves past a tick.
        let start = me.cpu_time()?;
        let mut x = 0u64;
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0 && me.cpu_time()? > start);
        Ok(())
    }
}
