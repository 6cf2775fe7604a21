//! Host metrics: CPU time, utilisation, temperatures, frequencies and thermal throttling.
//!
//! Everything is read from procfs and sysfs when Prometheus scrapes, never on the request path.
//! The roots are configurable so tests can point the collector at fixture trees. Hosts differ
//! widely in which sensors they expose, so a missing file means "no such metric", and a file that
//! cannot be read or parsed is skipped (logged at debug): a scrape never fails for host reasons.

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use procfs::{ExplicitSystemInfo, FromRead, FromReadSI, KernelStats, process::Stat};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

#[cfg(test)]
mod tests;

/// Thread ids of the worker threads, registered by each worker at start.
///
/// A worker registers `nix::unistd::gettid()` once it runs; registering the same index again
/// (a restarted worker) replaces the old thread id.
#[derive(Debug, Default)]
pub struct WorkerThreads {
    threads: Mutex<Vec<(usize, i32)>>,
}

impl WorkerThreads {
    pub fn register(&self, worker: usize, tid: i32) {
        let mut threads = self.lock();
        threads.retain(|&(w, _)| w != worker);
        threads.push((worker, tid));
    }

    pub fn unregister(&self, worker: usize) {
        self.lock().retain(|&(w, _)| w != worker);
    }

    fn snapshot(&self) -> Vec<(usize, i32)> {
        let mut threads = self.lock().clone();
        threads.sort_unstable();
        threads
    }

    // The list stays consistent whatever a panicking holder was doing, so poisoning is ignored
    // rather than propagated into the scrape.
    fn lock(&self) -> MutexGuard<'_, Vec<(usize, i32)>> {
        self.threads.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Prometheus collector for host CPU and thermal state.
///
/// Metric names carry the `gateway_` prefix already: register it on the root registry.
#[derive(Debug)]
pub struct HostCollector {
    proc_root: PathBuf,
    sys_root: PathBuf,
    workers: Arc<WorkerThreads>,
    ticks_per_second: u64,
    /// Per CPU: the ticks seen at the previous scrape, for utilisation since then.
    previous: Mutex<BTreeMap<u32, Baseline>>,
}

impl HostCollector {
    pub fn new(proc_root: impl Into<PathBuf>, sys_root: impl Into<PathBuf>, workers: Arc<WorkerThreads>) -> Self {
        Self {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            workers,
            ticks_per_second: procfs::ticks_per_second(),
            previous: Mutex::default(),
        }
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_family(&mut encoder, &WORKER_CPU, &self.worker_cpu_seconds())?;
        let cpus = self.cpu_times();
        encode_family(&mut encoder, &CPU_SECONDS, &self.cpu_seconds(&cpus))?;
        encode_family(&mut encoder, &CPU_UTILIZATION, &self.cpu_utilization(&cpus))?;
        encode_family(&mut encoder, &THERMAL_ZONE, &self.thermal_zones())?;
        encode_family(&mut encoder, &HWMON, &self.hwmon_temperatures())?;
        encode_family(&mut encoder, &CPU_FREQUENCY, &self.cpu_frequencies())?;
        encode_family(&mut encoder, &CPU_THROTTLE, &self.cpu_throttles())
    }
}

type Labels = Vec<(&'static str, String)>;

/// One metric family's metadata; the encoder appends the unit and, for counters, `_total`.
struct Family {
    name: &'static str,
    help: &'static str,
    unit: Option<&'static str>,
}

const WORKER_CPU: Family =
    Family { name: "gateway_worker_cpu", help: "CPU time consumed by each worker thread.", unit: Some("seconds") };
const CPU_SECONDS: Family =
    Family { name: "gateway_cpu", help: "CPU time spent in each mode, per CPU, since boot.", unit: Some("seconds") };
const CPU_UTILIZATION: Family = Family {
    name: "gateway_cpu_utilization",
    help: "Busy share of each CPU (all but idle and iowait) since the previous scrape.",
    unit: Some("ratio"),
};
const THERMAL_ZONE: Family = Family {
    name: "gateway_thermal_zone_temperature",
    help: "Temperature of each thermal zone.",
    unit: Some("celsius"),
};
const HWMON: Family = Family {
    name: "gateway_hwmon_temperature",
    help: "Temperature reported by each hwmon sensor.",
    unit: Some("celsius"),
};
const CPU_FREQUENCY: Family = Family {
    name: "gateway_cpu_frequency",
    help: "Current frequency of each CPU as set by cpufreq.",
    unit: Some("hertz"),
};
const CPU_THROTTLE: Family = Family {
    name: "gateway_cpu_thermal_throttle",
    help: "Thermal throttling events seen by each CPU, at core or package scope.",
    unit: None,
};

/// Writes one family; an empty family writes nothing, not even its HELP and TYPE.
fn encode_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    family: &Family,
    samples: &[(Labels, M)],
) -> Result<(), fmt::Error> {
    let Some((_, first)) = samples.first() else {
        return Ok(());
    };
    let unit = family.unit.map(|u| Unit::Other(u.to_owned()));
    let mut metric = encoder.encode_descriptor(family.name, family.help, unit.as_ref(), first.metric_type())?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

// Worker threads.
impl HostCollector {
    fn worker_cpu_seconds(&self) -> Vec<(Labels, ConstCounter<f64>)> {
        let mut samples = Vec::new();
        for (worker, tid) in self.workers.snapshot() {
            let path = self.proc_root.join(format!("self/task/{tid}/stat"));
            let Some(stat) = read_thread_stat(&path) else {
                continue;
            };
            for (mode, ticks) in [("user", stat.utime), ("system", stat.stime)] {
                let labels = vec![("worker", worker.to_string()), ("mode", mode.to_owned())];
                samples.push((labels, ConstCounter::new(self.seconds(ticks))));
            }
        }
        samples
    }

    fn seconds(&self, ticks: u64) -> f64 {
        ticks as f64 / self.ticks_per_second as f64
    }
}

fn read_thread_stat(path: &Path) -> Option<Stat> {
    // A worker that just exited leaves its entry behind until it unregisters: not worth a log.
    let bytes = fs::read(path).map_err(|e| log_unreadable(path, &e)).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    if !framed_like_stat(&text) {
        tracing::debug!(path = %path.display(), "skipping malformed thread stat");
        return None;
    }
    Stat::from_read(text.as_bytes())
        .map_err(|error| tracing::debug!(path = %path.display(), %error, "skipping thread stat"))
        .ok()
}

/// Whether `text` looks like the kernel's `pid (comm) state ...`.
///
/// `Stat`'s parser slices around the parentheses without checking them and panics on text framed
/// otherwise; a fixture or a future kernel must not be able to take the scrape down.
fn framed_like_stat(text: &str) -> bool {
    let line = text.trim().as_bytes();
    let (Some(open), Some(close)) = (line.iter().position(|&b| b == b'('), line.iter().rposition(|&b| b == b')'))
    else {
        return false;
    };
    open > 0 && close > open && line.get(open - 1) == Some(&b' ') && line.get(close + 1) == Some(&b' ')
}

// CPU time and utilisation, from /proc/stat.

/// One CPU's line of /proc/stat, in ticks. Fields a kernel does not report are `None`.
#[derive(Debug)]
struct CpuTimes {
    cpu: u32,
    modes: [(&'static str, Option<u64>); 8],
}

impl CpuTimes {
    /// Ticks spent on anything but waiting (idle, iowait), and ticks in total.
    ///
    /// guest and guest_nice are left out: the kernel already counts them in user and nice.
    fn ticks(&self) -> Ticks {
        let mut ticks = Ticks::default();
        for (mode, value) in self.modes {
            let value = value.unwrap_or(0);
            ticks.total += value;
            if !matches!(mode, "idle" | "iowait") {
                ticks.busy += value;
            }
        }
        ticks
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ticks {
    busy: u64,
    total: u64,
}

#[derive(Debug, Clone, Copy)]
struct Baseline {
    ticks: Ticks,
    ratio: f64,
}

impl HostCollector {
    fn cpu_times(&self) -> Vec<CpuTimes> {
        let path = self.proc_root.join("stat");
        let content = match fs::read_to_string(&path) {
            Ok(content) => content,
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "skipping /proc/stat");
                return Vec::new();
            }
        };
        parse_proc_stat(&content, self.ticks_per_second).unwrap_or_else(|error| {
            tracing::debug!(path = %path.display(), %error, "skipping /proc/stat");
            Vec::new()
        })
    }

    fn cpu_seconds(&self, cpus: &[CpuTimes]) -> Vec<(Labels, ConstCounter<f64>)> {
        let mut samples = Vec::new();
        for cpu in cpus {
            for (mode, ticks) in cpu.modes {
                let Some(ticks) = ticks else { continue };
                let labels = vec![("cpu", cpu.cpu.to_string()), ("mode", mode.to_owned())];
                samples.push((labels, ConstCounter::new(self.seconds(ticks))));
            }
        }
        samples
    }

    fn cpu_utilization(&self, cpus: &[CpuTimes]) -> Vec<(Labels, ConstGauge<f64>)> {
        let mut previous = self.previous.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = BTreeMap::new();
        let mut samples = Vec::new();
        for cpu in cpus {
            let baseline = utilization(previous.get(&cpu.cpu).copied(), cpu.ticks());
            current.insert(cpu.cpu, baseline);
            samples.push((vec![("cpu", cpu.cpu.to_string())], ConstGauge::new(baseline.ratio)));
        }
        // CPUs that went offline drop out, so one coming back starts again from boot.
        *previous = current;
        samples
    }
}

/// The busy share since `previous` (since boot without one), and the baseline for next time.
fn utilization(previous: Option<Baseline>, now: Ticks) -> Baseline {
    let since = previous.map_or_else(Ticks::default, |p| p.ticks);
    // iowait may go backwards, so the deltas saturate and the ratio is clamped.
    let busy = now.busy.saturating_sub(since.busy);
    let total = now.total.saturating_sub(since.total);
    match previous {
        // No tick has elapsed (back-to-back scrapes): repeat the last ratio and keep the older
        // baseline, so the next scrape measures a real interval.
        Some(previous) if total == 0 => previous,
        _ if total == 0 => Baseline { ticks: now, ratio: 0.0 },
        _ => Baseline { ticks: now, ratio: (busy as f64 / total as f64).clamp(0.0, 1.0) },
    }
}

/// Per-CPU times from /proc/stat, with the CPU numbers.
///
/// `KernelStats` lists per-CPU times without their numbers, and offline CPUs are missing from
/// /proc/stat, so the numbers are read from the same lines, in the same order, alongside.
fn parse_proc_stat(content: &str, ticks_per_second: u64) -> Result<Vec<CpuTimes>, String> {
    // The parser consults only ticks per second, for its millisecond helpers that go unused here.
    let system_info = ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second,
        page_size: 0,
        is_little_endian: cfg!(target_endian = "little"),
    };
    let stats = KernelStats::from_read(content.as_bytes(), &system_info).map_err(|e| e.to_string())?;
    let ids = cpu_ids(content).ok_or("a per-CPU line has no CPU number")?;
    if ids.len() != stats.cpu_time.len() {
        return Err("per-CPU lines and parsed CPU times disagree".to_owned());
    }
    Ok(ids
        .into_iter()
        .zip(stats.cpu_time)
        .map(|(cpu, t)| CpuTimes {
            cpu,
            modes: [
                ("user", Some(t.user)),
                ("nice", Some(t.nice)),
                ("system", Some(t.system)),
                ("idle", Some(t.idle)),
                ("iowait", t.iowait),
                ("irq", t.irq),
                ("softirq", t.softirq),
                ("steal", t.steal),
            ],
        })
        .collect())
}

/// The numbers of the `cpuN` lines, matching how `KernelStats` picks per-CPU lines.
fn cpu_ids(content: &str) -> Option<Vec<u32>> {
    content
        .lines()
        .filter(|line| line.starts_with("cpu") && !line.starts_with("cpu "))
        .map(|line| parse_index(line.split_whitespace().next()?.strip_prefix("cpu")?))
        .collect()
}

// Temperatures, from sysfs.
impl HostCollector {
    fn thermal_zones(&self) -> Vec<(Labels, ConstGauge<f64>)> {
        let mut samples = Vec::new();
        for (zone, dir) in numbered_entries(&self.sys_root.join("class/thermal"), "thermal_zone") {
            let Some(millidegrees) = read_value::<i64>(&dir.join("temp")) else {
                continue;
            };
            let kind = read_string(&dir.join("type")).unwrap_or_default();
            let labels = vec![("zone", zone.to_string()), ("type", kind)];
            samples.push((labels, ConstGauge::new(millidegrees as f64 / 1000.0)));
        }
        samples
    }

    fn hwmon_temperatures(&self) -> Vec<(Labels, ConstGauge<f64>)> {
        let chips = hwmon_chips(&self.sys_root.join("class/hwmon"));
        let mut samples = Vec::new();
        for (chip, dir) in chips {
            for (index, input) in temp_inputs(&dir) {
                let Some(millidegrees) = read_value::<i64>(&input) else {
                    continue;
                };
                let label = read_string(&dir.join(format!("temp{index}_label")));
                let labels = vec![
                    ("chip", chip.clone()),
                    ("sensor", format!("temp{index}")),
                    ("label", label.unwrap_or_default()),
                ];
                samples.push((labels, ConstGauge::new(millidegrees as f64 / 1000.0)));
            }
        }
        samples
    }
}

/// hwmon devices by chip name, in device order.
///
/// Chip names are not unique (one `coretemp` per socket, one `nvme` per drive), and duplicate
/// label sets would break the scrape, so a repeated name gets the device appended: `nvme/hwmon3`.
fn hwmon_chips(class: &Path) -> Vec<(String, PathBuf)> {
    let devices: Vec<(u32, PathBuf, String)> = numbered_entries(class, "hwmon")
        .into_iter()
        .map(|(index, dir)| {
            // Without a name, the device itself is the only stable identity available.
            let name = read_string(&dir.join("name")).unwrap_or_else(|| format!("hwmon{index}"));
            (index, dir, name)
        })
        .collect();
    devices
        .iter()
        .map(|(index, dir, name)| {
            let repeated = devices.iter().filter(|(_, _, other)| other == name).count() > 1;
            let chip = if repeated { format!("{name}/hwmon{index}") } else { name.clone() };
            (chip, dir.clone())
        })
        .collect()
}

/// `temp<N>_input` files of one hwmon device, by N.
fn temp_inputs(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut inputs: Vec<(u32, PathBuf)> = list_dir(dir)
        .into_iter()
        .filter_map(|(name, path)| {
            let index = parse_index(name.strip_prefix("temp")?.strip_suffix("_input")?)?;
            Some((index, path))
        })
        .collect();
    inputs.sort_unstable();
    inputs
}

// CPU frequency and throttling, from sysfs.
impl HostCollector {
    fn cpu_dirs(&self) -> Vec<(u32, PathBuf)> {
        numbered_entries(&self.sys_root.join("devices/system/cpu"), "cpu")
    }

    fn cpu_frequencies(&self) -> Vec<(Labels, ConstGauge<f64>)> {
        let mut samples = Vec::new();
        for (cpu, dir) in self.cpu_dirs() {
            let Some(khz) = read_value::<u64>(&dir.join("cpufreq/scaling_cur_freq")) else {
                continue;
            };
            let labels = vec![("cpu", cpu.to_string())];
            samples.push((labels, ConstGauge::new(khz as f64 * 1000.0)));
        }
        samples
    }

    fn cpu_throttles(&self) -> Vec<(Labels, ConstCounter<u64>)> {
        let mut samples = Vec::new();
        for (cpu, dir) in self.cpu_dirs() {
            for scope in ["core", "package"] {
                let path = dir.join(format!("thermal_throttle/{scope}_throttle_count"));
                let Some(count) = read_value::<u64>(&path) else {
                    continue;
                };
                let labels = vec![("cpu", cpu.to_string()), ("scope", scope.to_owned())];
                samples.push((labels, ConstCounter::new(count)));
            }
        }
        samples
    }
}

// Reading sysfs.

/// Entries of `dir` named `<prefix><N>`, by N; `cpufreq` and the like do not match `cpu`.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let mut entries: Vec<(u32, PathBuf)> = list_dir(dir)
        .into_iter()
        .filter_map(|(name, path)| Some((parse_index(name.strip_prefix(prefix)?)?, path)))
        .collect();
    entries.sort_unstable();
    entries
}

/// A device number: digits only, where `u32::from_str` would also take a sign.
fn parse_index(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn list_dir(dir: &Path) -> Vec<(String, PathBuf)> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) => {
            log_unreadable(dir, &error);
            return Vec::new();
        }
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| Some((entry.file_name().into_string().ok()?, entry.path())))
        .collect()
}

fn read_value<T>(path: &Path) -> Option<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let text = read_string(path)?;
    match text.parse() {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "skipping malformed sysfs value");
            None
        }
    }
}

/// The trimmed content of a sysfs attribute.
fn read_string(path: &Path) -> Option<String> {
    match fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) => {
            log_unreadable(path, &error);
            None
        }
    }
}

// A missing file is an absent sensor, which is normal; anything else (EIO from a sensor that is
// powered down, a permission error) is worth a debug line.
fn log_unreadable(path: &Path, error: &io::Error) {
    if error.kind() != io::ErrorKind::NotFound {
        tracing::debug!(path = %path.display(), %error, "skipping unreadable host metrics file");
    }
}
