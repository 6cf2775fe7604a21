//! Where a cell's receive work ran, per CPU: the proof (or not) that NIC steering puts a
//! connection's packet processing on its worker's CPU. Softirq time per CPU (`/proc/stat`), the
//! CPU time of the cpumap kthreads (`cpumap/<cpu>/map:<id>`: with steering on, the TCP/IP stack
//! runs there, in process context, which `/proc/stat` books as system time, not softirq — left
//! out, steering would look cheaper than it is), and gatewayd's own counters: connections per
//! (worker, CPU that processed them) and packets the XDP program steered per CPU.

use anyhow::{Context as _, Result};

use super::subject;

/// Per-CPU figures of one cell.
#[derive(Debug, Clone, Default)]
pub struct CoLocation {
    /// Softirq seconds per CPU during the cell.
    pub softirq_by_cpu: Vec<f64>,
    /// CPU seconds of the cpumap kthreads at the end of the cell (they live as long as
    /// gatewayd's cpumap: all of it is this cell's).
    pub cpumap_kthreads: f64,
    /// `gateway_steering_connections_by_cpu_total` as `(worker, cpu, connections)`.
    pub connections: Vec<(String, String, f64)>,
    /// `gateway_xdp_steered_packets_total` as `(result, cpu, packets)`.
    pub steered: Vec<(String, String, f64)>,
}

/// Started before a cell's load, finished before gatewayd stops.
pub struct Probe {
    softirq: Vec<u64>,
}

impl Probe {
    pub fn start() -> Result<Probe> {
        Ok(Probe { softirq: softirq_ticks()? })
    }

    pub fn finish(self) -> Result<CoLocation> {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let softirq_by_cpu =
            softirq_ticks()?.iter().zip(&self.softirq).map(|(a, b)| a.saturating_sub(*b) as f64 / hz).collect();
        let metrics = subject::scrape("/metrics").unwrap_or_default();
        Ok(CoLocation {
            softirq_by_cpu,
            cpumap_kthreads: cpumap_kthread_ticks() as f64 / hz,
            connections: series(&metrics, "gateway_steering_connections_by_cpu_total", "worker", "cpu"),
            steered: series(&metrics, "gateway_xdp_steered_packets_total", "result", "cpu"),
        })
    }
}

/// The softirq column of every `cpuN` line of /proc/stat.
fn softirq_ticks() -> Result<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    Ok(parse_softirq_by_cpu(&stat))
}

fn parse_softirq_by_cpu(stat: &str) -> Vec<u64> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .filter_map(|l| l.split_whitespace().nth(7)?.parse().ok())
        .collect()
}

/// utime + stime of every kernel thread named `cpumap/…`.
fn cpumap_kthread_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    dir.flatten()
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            if !comm.starts_with("cpumap/") {
                return None;
            }
            stat_cpu_ticks(&std::fs::read_to_string(e.path().join("stat")).ok()?)
        })
        .sum()
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command may hold spaces, so
/// fields are counted after its closing parenthesis.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Every sample of `name` as (label `a`, label `b`, value).
fn series(metrics: &str, name: &str, a: &str, b: &str) -> Vec<(String, String, f64)> {
    let label = |l: &str, key: &str| {
        let start = l.find(&format!("{key}=\""))? + key.len() + 2;
        Some(l[start..].split('"').next()?.to_owned())
    };
    metrics
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter_map(|l| Some((label(l, a)?, label(l, b)?, l.rsplit(' ').next()?.parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_per_cpu_softirq_kthread_time_and_series() {
        let stat = "cpu  9 9 9 9 9 9 99 9 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\ncpu1 1 2 3 4 5 6 17 8 9 10\nintr 5\n";
        assert_eq!(parse_softirq_by_cpu(stat), vec![7, 17]);
        let pid = "42 (cpumap/1/map:7) S 2 0 0 0 -1 69238880 0 0 0 0 30 12 0 0 20 0 1 0 100 0 0";
        assert_eq!(stat_cpu_ticks(pid), Some(42));
        let m = "# HELP x\ngateway_steering_connections_by_cpu_total{worker=\"0\",cpu=\"1\"} 5\n\
                 gateway_steering_connections_by_cpu_total_other{worker=\"0\",cpu=\"1\"} 6\n";
        let s = series(m, "gateway_steering_connections_by_cpu_total", "worker", "cpu");
        assert_eq!(s, vec![("0".to_owned(), "1".to_owned(), 5.0)]);
    }
}
