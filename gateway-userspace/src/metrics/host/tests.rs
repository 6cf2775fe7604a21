use std::{
    fs,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use prometheus_client::{encoding::text::encode, registry::Registry};

use super::*;

/// A temporary procfs + sysfs tree, removed on drop.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("gatewayd-host-metrics-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let root = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("proc")).expect("create proc root");
        fs::create_dir_all(root.join("sys")).expect("create sys root");
        Self { root }
    }

    fn write(&self, relative: &str, content: &str) {
        let path = self.root.join(relative);
        fs::create_dir_all(path.parent().expect("fixture path has a parent")).expect("mkdir");
        fs::write(&path, content).expect("write fixture file");
    }

    fn mkdir(&self, relative: &str) {
        fs::create_dir_all(self.root.join(relative)).expect("mkdir");
    }

    /// A collector over this tree, registered the way the daemon does it, with USER_HZ pinned
    /// so expected seconds do not depend on the machine.
    fn registry(&self, workers: Arc<WorkerThreads>) -> Registry {
        let mut collector = HostCollector::new(self.root.join("proc"), self.root.join("sys"), workers);
        collector.ticks_per_second = 100;
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        registry
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn scrape(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).expect("scrape succeeds");
    out
}

/// Sample lines (no HELP/TYPE/UNIT) of one metric.
fn samples<'a>(out: &'a str, metric: &str) -> Vec<&'a str> {
    out.lines().filter(|line| line.strip_prefix(metric).is_some_and(|rest| rest.starts_with(['{', ' ']))).collect()
}

fn proc_stat(cpu_lines: &[&str]) -> String {
    let mut stat = String::from("cpu  0 0 0 0 0 0 0 0 0 0\n");
    for line in cpu_lines {
        stat.push_str(line);
        stat.push('\n');
    }
    stat.push_str("intr 12345 0 0\nctxt 987654\nbtime 1700000000\nprocesses 4321\n");
    stat.push_str("procs_running 2\nprocs_blocked 0\nsoftirq 5555 1 2 3 4 5 6 7 8 9 10\n");
    stat
}

/// A task stat line as the kernel writes it, with the given utime and stime ticks.
fn thread_stat(tid: i32, comm: &str, utime: u64, stime: u64) -> String {
    format!(
        "{tid} ({comm}) S 1 {tid} {tid} 0 -1 4194368 812 0 0 0 {utime} {stime} 0 0 20 0 4 0 \
         5151 104857600 2048 18446744073709551615 1 1 0 0 0 0 0 4096 17475 0 0 0 -1 3 0 0 0 0 0 \
         0 0 0 0 0 0 0\n"
    )
}

const HOST_TREE: &[(&str, &str)] = &[
    ("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n"),
    ("sys/class/thermal/thermal_zone0/temp", "45000\n"),
    ("sys/class/thermal/thermal_zone1/type", "acpitz\n"),
    ("sys/class/thermal/thermal_zone1/temp", "-2500\n"),
    ("sys/class/thermal/cooling_device0/cur_state", "0\n"),
    ("sys/class/hwmon/hwmon0/name", "coretemp\n"),
    ("sys/class/hwmon/hwmon0/temp1_input", "52000\n"),
    ("sys/class/hwmon/hwmon0/temp1_label", "Package id 0\n"),
    ("sys/class/hwmon/hwmon0/temp2_input", "48500\n"),
    ("sys/class/hwmon/hwmon0/temp2_crit", "100000\n"),
    ("sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "2400000\n"),
    ("sys/devices/system/cpu/cpu1/cpufreq/scaling_cur_freq", "800000\n"),
    ("sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", "3\n"),
    ("sys/devices/system/cpu/cpu0/thermal_throttle/package_throttle_count", "7\n"),
    ("sys/devices/system/cpu/cpufreq/boost", "1\n"),
];

fn host_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.write("proc/stat", &proc_stat(&["cpu0 100 2 50 790 50 3 4 1 0 0", "cpu1 0 0 0 1000 0 0 0 0 0 0"]));
    fixture.write("proc/self/task/4242/stat", &thread_stat(4242, "gw worker (0)", 250, 75));
    fixture.write("proc/self/task/4243/stat", &thread_stat(4243, "gw-worker-1", 10, 0));
    for (path, content) in HOST_TREE {
        fixture.write(path, content);
    }
    fixture
}

fn two_workers() -> Arc<WorkerThreads> {
    let workers = Arc::new(WorkerThreads::default());
    workers.register(1, 4243);
    workers.register(0, 4242);
    workers
}

#[test]
fn full_tree_exposes_every_family() {
    let fixture = host_fixture();
    let out = scrape(&fixture.registry(two_workers()));

    let expected = r#"# HELP gateway_worker_cpu_seconds CPU time consumed by each worker thread.
# TYPE gateway_worker_cpu_seconds counter
# UNIT gateway_worker_cpu_seconds seconds
gateway_worker_cpu_seconds_total{worker="0",mode="user"} 2.5
gateway_worker_cpu_seconds_total{worker="0",mode="system"} 0.75
gateway_worker_cpu_seconds_total{worker="1",mode="user"} 0.1
gateway_worker_cpu_seconds_total{worker="1",mode="system"} 0.0
# HELP gateway_cpu_seconds CPU time spent in each mode, per CPU, since boot.
# TYPE gateway_cpu_seconds counter
# UNIT gateway_cpu_seconds seconds
gateway_cpu_seconds_total{cpu="0",mode="user"} 1.0
gateway_cpu_seconds_total{cpu="0",mode="nice"} 0.02
gateway_cpu_seconds_total{cpu="0",mode="system"} 0.5
gateway_cpu_seconds_total{cpu="0",mode="idle"} 7.9
gateway_cpu_seconds_total{cpu="0",mode="iowait"} 0.5
gateway_cpu_seconds_total{cpu="0",mode="irq"} 0.03
gateway_cpu_seconds_total{cpu="0",mode="softirq"} 0.04
gateway_cpu_seconds_total{cpu="0",mode="steal"} 0.01
gateway_cpu_seconds_total{cpu="1",mode="user"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="nice"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="system"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="idle"} 10.0
gateway_cpu_seconds_total{cpu="1",mode="iowait"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="irq"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="softirq"} 0.0
gateway_cpu_seconds_total{cpu="1",mode="steal"} 0.0
# HELP gateway_cpu_utilization_ratio Busy share of each CPU (all but idle and iowait) since the previous scrape.
# TYPE gateway_cpu_utilization_ratio gauge
# UNIT gateway_cpu_utilization_ratio ratio
gateway_cpu_utilization_ratio{cpu="0"} 0.16
gateway_cpu_utilization_ratio{cpu="1"} 0.0
# HELP gateway_thermal_zone_temperature_celsius Temperature of each thermal zone.
# TYPE gateway_thermal_zone_temperature_celsius gauge
# UNIT gateway_thermal_zone_temperature_celsius celsius
gateway_thermal_zone_temperature_celsius{zone="0",type="x86_pkg_temp"} 45.0
gateway_thermal_zone_temperature_celsius{zone="1",type="acpitz"} -2.5
# HELP gateway_hwmon_temperature_celsius Temperature reported by each hwmon sensor.
# TYPE gateway_hwmon_temperature_celsius gauge
# UNIT gateway_hwmon_temperature_celsius celsius
gateway_hwmon_temperature_celsius{chip="coretemp",sensor="temp1",label="Package id 0"} 52.0
gateway_hwmon_temperature_celsius{chip="coretemp",sensor="temp2",label=""} 48.5
# HELP gateway_cpu_frequency_hertz Current frequency of each CPU as set by cpufreq.
# TYPE gateway_cpu_frequency_hertz gauge
# UNIT gateway_cpu_frequency_hertz hertz
gateway_cpu_frequency_hertz{cpu="0"} 2400000000.0
gateway_cpu_frequency_hertz{cpu="1"} 800000000.0
# HELP gateway_cpu_thermal_throttle Thermal throttling events seen by each CPU, at core or package scope.
# TYPE gateway_cpu_thermal_throttle counter
gateway_cpu_thermal_throttle_total{cpu="0",scope="core"} 3
gateway_cpu_thermal_throttle_total{cpu="0",scope="package"} 7
# EOF
"#;
    assert_eq!(out, expected);
}

#[test]
fn absent_sensors_yield_no_families() {
    let fixture = Fixture::new();
    fixture.write("proc/stat", &proc_stat(&["cpu0 1 0 1 8 0 0 0 0 0 0"]));
    // Present but empty: a VM or container without thermal drivers or cpufreq.
    fixture.mkdir("sys/class/thermal");
    fixture.mkdir("sys/devices/system/cpu/cpu0");
    let out = scrape(&fixture.registry(Arc::default()));

    for absent in [
        "gateway_worker_cpu",
        "gateway_thermal_zone",
        "gateway_hwmon",
        "gateway_cpu_frequency",
        "gateway_cpu_thermal_throttle",
    ] {
        assert!(!out.contains(absent), "{absent} in:\n{out}");
    }
    assert_eq!(samples(&out, "gateway_cpu_seconds_total").len(), 8, "{out}");
    assert_eq!(samples(&out, "gateway_cpu_utilization_ratio"), [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.2"#]);
}

#[test]
fn missing_roots_scrape_empty() {
    let collector = HostCollector::new("/nonexistent/proc", "/nonexistent/sys", Arc::default());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    assert_eq!(scrape(&registry), "# EOF\n");
}

#[test]
fn malformed_sysfs_files_are_skipped() {
    let fixture = host_fixture();
    let broken = [
        ("sys/class/thermal/thermal_zone0/temp", "hot\n"),
        ("sys/class/hwmon/hwmon0/temp1_input", ""),
        ("sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq", "<unsupported>\n"),
        ("sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", "-1\n"),
        ("sys/class/hwmon/hwmon7/name", "ghost\n"),
        ("sys/class/hwmon/hwmon7/temp+1_input", "1000\n"),
    ];
    for (path, content) in broken {
        fixture.write(path, content);
    }
    let out = scrape(&fixture.registry(two_workers()));

    assert_eq!(
        samples(&out, "gateway_thermal_zone_temperature_celsius"),
        [r#"gateway_thermal_zone_temperature_celsius{zone="1",type="acpitz"} -2.5"#]
    );
    assert_eq!(
        samples(&out, "gateway_hwmon_temperature_celsius"),
        [r#"gateway_hwmon_temperature_celsius{chip="coretemp",sensor="temp2",label=""} 48.5"#]
    );
    assert_eq!(samples(&out, "gateway_cpu_frequency_hertz"), [r#"gateway_cpu_frequency_hertz{cpu="1"} 800000000.0"#]);
    assert_eq!(
        samples(&out, "gateway_cpu_thermal_throttle_total"),
        [r#"gateway_cpu_thermal_throttle_total{cpu="0",scope="package"} 7"#]
    );
}

#[test]
fn malformed_proc_files_are_skipped() {
    let fixture = host_fixture();
    fixture.write("proc/stat", "cpu  1 2 3\ncpu0 1 2 banana 4\nctxt 1\nbtime 1\nprocesses 1\n");
    fixture.write("proc/self/task/4242/stat", "4242 (gw");
    let out = scrape(&fixture.registry(two_workers()));

    assert!(!out.contains("gateway_cpu_seconds"), "{out}");
    assert!(!out.contains("gateway_cpu_utilization"), "{out}");
    assert_eq!(
        samples(&out, "gateway_worker_cpu_seconds_total"),
        [
            r#"gateway_worker_cpu_seconds_total{worker="1",mode="user"} 0.1"#,
            r#"gateway_worker_cpu_seconds_total{worker="1",mode="system"} 0.0"#,
        ]
    );
    // The rest of the scrape is unaffected.
    assert_eq!(samples(&out, "gateway_cpu_frequency_hertz").len(), 2, "{out}");
}

#[test]
fn thread_stat_framing_that_would_panic_the_parser_is_refused() {
    // Each of these panics inside procfs-core's `Stat` parser if handed to it.
    let fixture = Fixture::new();
    let path = fixture.root.join("stat");
    for text in ["4242 (gw)", "(gw) S 1", "4242 )gw( S 1", "4242\u{e9}(gw) S 1", ""] {
        fs::write(&path, text).expect("write stat");
        assert!(read_thread_stat(&path).is_none(), "{text:?}");
    }
    fs::write(&path, thread_stat(1, "a (b) c", 1, 2)).expect("write stat");
    let stat = read_thread_stat(&path).expect("well-formed stat parses");
    assert_eq!((stat.comm.as_str(), stat.utime, stat.stime), ("a (b) c", 1, 2));
}

#[test]
fn per_cpu_lines_without_an_id_skip_per_cpu_metrics() {
    let fixture = Fixture::new();
    fixture.write("proc/stat", &proc_stat(&["cpu0 1 0 1 8", "cpuX 1 0 1 8"]));
    let out = scrape(&fixture.registry(Arc::default()));
    assert!(!out.contains("gateway_cpu"), "{out}");
}

#[test]
fn utilization_covers_the_interval_since_the_previous_scrape() {
    let fixture = host_fixture();
    let registry = fixture.registry(Arc::default());
    let first = scrape(&registry);
    assert_eq!(
        samples(&first, "gateway_cpu_utilization_ratio"),
        [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.16"#, r#"gateway_cpu_utilization_ratio{cpu="1"} 0.0"#,]
    );

    // cpu0: +60 user, +10 system, +2 softirq, +8 steal busy (80); +100 idle, +20 iowait.
    // cpu1: +50 user, +50 idle.
    fixture.write("proc/stat", &proc_stat(&["cpu0 160 2 60 890 70 3 6 9 0 0", "cpu1 50 0 0 1050 0 0 0 0 0 0"]));
    let second = scrape(&registry);
    assert_eq!(
        samples(&second, "gateway_cpu_utilization_ratio"),
        [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.4"#, r#"gateway_cpu_utilization_ratio{cpu="1"} 0.5"#,]
    );
}

#[test]
fn scrape_without_elapsed_ticks_repeats_the_last_ratio() {
    let fixture = host_fixture();
    let registry = fixture.registry(Arc::default());
    scrape(&registry);
    fixture.write("proc/stat", &proc_stat(&["cpu0 130 2 50 860 50 3 4 1 0 0"]));
    let second = scrape(&registry);
    assert_eq!(samples(&second, "gateway_cpu_utilization_ratio"), [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.3"#]);

    // Same counters again: nothing elapsed, so the ratio holds and the baseline stays put.
    let third = scrape(&registry);
    assert_eq!(samples(&third, "gateway_cpu_utilization_ratio"), [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.3"#]);
    fixture.write("proc/stat", &proc_stat(&["cpu0 130 2 50 970 50 3 4 1 0 0"]));
    let fourth = scrape(&registry);
    assert_eq!(samples(&fourth, "gateway_cpu_utilization_ratio"), [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.0"#]);
}

#[test]
fn utilization_stays_within_bounds_when_iowait_goes_backwards() {
    let previous = Baseline { ticks: Ticks { busy: 100, total: 1000 }, ratio: 0.1 };
    // 10 busy ticks elapsed, but iowait dropped by 50: the total went backwards.
    let now = utilization(Some(previous), Ticks { busy: 110, total: 960 });
    assert_eq!(now.ratio, 0.1);
    assert_eq!(now.ticks, previous.ticks);

    // 10 busy ticks while the total moved by only 5.
    let now = utilization(Some(previous), Ticks { busy: 110, total: 1005 });
    assert_eq!(now.ratio, 1.0);
    assert_eq!(now.ticks, Ticks { busy: 110, total: 1005 });
}

#[test]
fn offline_cpus_keep_their_numbers_and_old_kernels_their_modes() {
    let fixture = Fixture::new();
    // cpu1 is offline, so it has no line; a pre-2.6 kernel stops after idle.
    fixture.write("proc/stat", &proc_stat(&["cpu0 1 0 1 8", "cpu2 3 0 1 6"]));
    let out = scrape(&fixture.registry(Arc::default()));
    assert_eq!(
        samples(&out, "gateway_cpu_seconds_total"),
        [
            r#"gateway_cpu_seconds_total{cpu="0",mode="user"} 0.01"#,
            r#"gateway_cpu_seconds_total{cpu="0",mode="nice"} 0.0"#,
            r#"gateway_cpu_seconds_total{cpu="0",mode="system"} 0.01"#,
            r#"gateway_cpu_seconds_total{cpu="0",mode="idle"} 0.08"#,
            r#"gateway_cpu_seconds_total{cpu="2",mode="user"} 0.03"#,
            r#"gateway_cpu_seconds_total{cpu="2",mode="nice"} 0.0"#,
            r#"gateway_cpu_seconds_total{cpu="2",mode="system"} 0.01"#,
            r#"gateway_cpu_seconds_total{cpu="2",mode="idle"} 0.06"#,
        ]
    );
    assert_eq!(
        samples(&out, "gateway_cpu_utilization_ratio"),
        [r#"gateway_cpu_utilization_ratio{cpu="0"} 0.2"#, r#"gateway_cpu_utilization_ratio{cpu="2"} 0.4"#,]
    );
}

#[test]
fn cpu_numbers_sort_numerically() {
    let fixture = Fixture::new();
    for cpu in [10, 9, 2] {
        fixture.write(&format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_cur_freq"), "1\n");
    }
    let out = scrape(&fixture.registry(Arc::default()));
    assert_eq!(
        samples(&out, "gateway_cpu_frequency_hertz"),
        [
            r#"gateway_cpu_frequency_hertz{cpu="2"} 1000.0"#,
            r#"gateway_cpu_frequency_hertz{cpu="9"} 1000.0"#,
            r#"gateway_cpu_frequency_hertz{cpu="10"} 1000.0"#,
        ]
    );
}

#[test]
fn repeated_hwmon_chip_names_stay_distinct() {
    let fixture = Fixture::new();
    for (hwmon, name) in [(0, "nvme"), (1, "acpitz"), (2, "nvme")] {
        fixture.write(&format!("sys/class/hwmon/hwmon{hwmon}/name"), &format!("{name}\n"));
        fixture.write(&format!("sys/class/hwmon/hwmon{hwmon}/temp1_input"), "30000\n");
    }
    fixture.write("sys/class/hwmon/hwmon3/temp1_input", "31000\n");
    let out = scrape(&fixture.registry(Arc::default()));
    assert_eq!(
        samples(&out, "gateway_hwmon_temperature_celsius"),
        [
            r#"gateway_hwmon_temperature_celsius{chip="nvme/hwmon0",sensor="temp1",label=""} 30.0"#,
            r#"gateway_hwmon_temperature_celsius{chip="acpitz",sensor="temp1",label=""} 30.0"#,
            r#"gateway_hwmon_temperature_celsius{chip="nvme/hwmon2",sensor="temp1",label=""} 30.0"#,
            r#"gateway_hwmon_temperature_celsius{chip="hwmon3",sensor="temp1",label=""} 31.0"#,
        ]
    );
}

#[test]
fn worker_registration_replaces_and_unregisters() {
    let fixture = host_fixture();
    let workers = two_workers();
    let registry = fixture.registry(Arc::clone(&workers));

    // Worker 1 restarted on a new thread, worker 0 stopped.
    fixture.write("proc/self/task/5000/stat", &thread_stat(5000, "gw-worker-1", 3, 1));
    workers.register(1, 5000);
    workers.unregister(0);
    assert_eq!(workers.snapshot(), [(1, 5000)]);

    let out = scrape(&registry);
    assert_eq!(
        samples(&out, "gateway_worker_cpu_seconds_total"),
        [
            r#"gateway_worker_cpu_seconds_total{worker="1",mode="user"} 0.03"#,
            r#"gateway_worker_cpu_seconds_total{worker="1",mode="system"} 0.01"#,
        ]
    );
}

#[test]
fn worker_whose_thread_is_gone_is_skipped() {
    let fixture = host_fixture();
    let workers = two_workers();
    workers.register(2, 999_999);
    let out = scrape(&fixture.registry(workers));
    assert_eq!(samples(&out, "gateway_worker_cpu_seconds_total").len(), 4, "{out}");
}

#[test]
fn scrapes_this_machine() {
    let workers = Arc::new(WorkerThreads::default());
    workers.register(0, nix::unistd::gettid().as_raw());
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HostCollector::new("/proc", "/sys", Arc::clone(&workers))));

    let out = scrape(&registry);
    assert!(!samples(&out, "gateway_cpu_seconds_total").is_empty(), "{out}");
    assert!(!samples(&out, "gateway_cpu_utilization_ratio").is_empty(), "{out}");
    assert_eq!(samples(&out, "gateway_worker_cpu_seconds_total").len(), 2, "{out}");
    // A second scrape exercises the since-previous-scrape path on real counters.
    let again = scrape(&registry);
    for line in samples(&again, "gateway_cpu_utilization_ratio") {
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
        assert!((0.0..=1.0).contains(&value), "{line}");
    }
}
