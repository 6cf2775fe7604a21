//! What a proxied request asks of the kernel, for `bench cpu-compare`: perf's software counters
//! and syscall tracepoints over a run (exact counts, no hardware counters needed, so they work
//! in VMs and on a busy machine), and the host's TCP counters around it.
//!
//! The TCP counters are read from `/proc/net/snmp` and `/proc/net/netstat`, the files `nstat`
//! reads: `nstat` keeps its baseline in a history file shared by every user of the machine
//! (`/tmp/.nstat.u$UID`), so two runs at once would reset each other's.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::{fs::OpenOptionsExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::{
        signal::{Signal, kill},
        stat::Mode,
    },
    unistd::{Pid, mkfifo},
};

use super::super::report::{median, num};

/// perf's software counters, read on every run (the CPU table's columns).
pub const EVENTS: &[&str] = &[
    "context-switches",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_epoll_wait",
];

/// With `--syscalls`: the counters that show a worker waking, faulting or moving, and the
/// packets sent in its threads (on loopback: its own sends, and ACKs the kernel sends while it
/// runs; unlike the host's TCP counters, no other process's traffic lands there)...
const SOFTWARE: &[&str] = &["context-switches", "cpu-migrations", "page-faults", "net:net_dev_xmit"];
/// ...and every syscall one of the proxies makes per request, or might (allocator returns,
/// timers, thread handoffs, upstream connections).
const SYSCALLS: &[&str] = &[
    "read",
    "write",
    "readv",
    "writev",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "futex",
    "accept4",
    "connect",
    "close",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "ioctl",
    "madvise",
    "mmap",
    "munmap",
    "mprotect",
    "brk",
    "sched_yield",
    "nanosleep",
    "clock_nanosleep",
];
const TRACEPOINT: &str = "syscalls:sys_enter_";
/// How long perf may take to attach to a subject's threads (a busy machine included).
const PERF_ATTACH_TIMEOUT: Duration = Duration::from_secs(20);

/// The events perf counts: the CPU table's, or with `syscalls` the whole list.
pub fn events(syscalls: bool) -> Vec<String> {
    if !syscalls {
        return EVENTS.iter().map(|e| (*e).to_owned()).collect();
    }
    SOFTWARE.iter().map(|e| (*e).to_owned()).chain(SYSCALLS.iter().map(|s| format!("{TRACEPOINT}{s}"))).collect()
}

/// `sys_enter_writev` → `writev`; software counters as they are.
pub fn short_name(event: &str) -> &str {
    event.trim_start_matches(TRACEPOINT)
}

/// `perf stat` attached to every thread of some processes, counting from `start` (its counters
/// on) until `finish`: the window covers the whole run (its idle edges add only the subject's
/// idle timer wakeups), so the counts belong to exactly the requests the load generator counted.
pub struct PerfStat {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl PerfStat {
    /// Starts perf with its counters off (`-D -1`), switches them on through its control FIFO
    /// and waits for its acknowledgement: perf has then attached to every thread of `pids`.
    pub fn start(pids: &[u32], events: &[String], dir: &Path) -> Result<Self> {
        let (ctl, ack, out) = (dir.join("perf-ctl.fifo"), dir.join("perf-ack.fifo"), dir.join("perf.csv"));
        let log = dir.join("perf.log");
        for fifo in [&ctl, &ack] {
            let _stale = fs::remove_file(fifo);
            mkfifo(fifo, Mode::S_IRUSR | Mode::S_IWUSR).with_context(|| format!("mkfifo {}", fifo.display()))?;
        }
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x,", "-D", "-1", "--control"])
            .arg(format!("fifo:{},{}", ctl.display(), ack.display()))
            .args(["-e", &events.join(","), "-p", &pids.join(","), "-o"])
            .arg(&out)
            .stdout(Stdio::null())
            // "Events enabled", and why perf failed.
            .stderr(fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?);
        let mut child = cmd.spawn().context("cannot start perf (linux-perf)")?;
        // Read and write ends both ours: opening never blocks, whether perf has opened its ends
        // yet or not, and an empty FIFO reads as "would block", not as the end.
        let fifo = |path: &Path| OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(path);
        let (mut ctl, mut ack) = (fifo(&ctl)?, fifo(&ack)?);
        ctl.write_all(b"enable\n")?;
        let deadline = Instant::now() + PERF_ATTACH_TIMEOUT;
        let mut reply = Vec::new();
        // perf answers "ack\n" and the string's terminating NUL.
        while !reply.starts_with(b"ack\n") {
            let mut buf = [0u8; 16];
            match ack.read(&mut buf) {
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait()? {
                        bail!("perf stat exited ({status}) before counting; see {}", log.display());
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        bail!("perf stat did not start counting within {PERF_ATTACH_TIMEOUT:?}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e).context("reading perf's acknowledgement"),
            }
        }
        Ok(PerfStat { child, out, log })
    }

    /// Stops counting (SIGINT: perf then writes its counts) and returns the count by event.
    pub fn finish(mut self) -> Result<BTreeMap<String, f64>> {
        kill(Pid::from_raw(i32::try_from(self.child.id())?), Signal::SIGINT).context("cannot stop perf stat")?;
        let status = self.child.wait()?;
        // perf writes its counts, then dies of the signal it handled (as a shell expects).
        if !status.success() && status.signal() != Some(Signal::SIGINT as i32) {
            bail!("perf stat failed ({status}); see {}", self.log.display());
        }
        Ok(parse_perf(&fs::read_to_string(&self.out)?))
    }
}

/// perf stat's CSV (`count,unit,event,...`) → count by event; `<not counted>` rows are left out.
fn parse_perf(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(',');
            let count: f64 = fields.next()?.trim().parse().ok()?;
            let event = fields.nth(1)?.trim();
            Some((event.to_owned(), count))
        })
        .collect()
}

/// The host's TCP counters (every socket in this network namespace: client, proxy and
/// upstream alike, so subjects differ only by what the proxy adds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `Tcp: OutSegs`: segments sent, retransmissions excluded.
    pub out_segs: u64,
    /// `TcpExt: DelayedACKs`: ACKs sent late by the delayed-ACK timer.
    pub delayed_acks: u64,
}

impl TcpCounters {
    pub fn read() -> Result<Self> {
        let snmp = fs::read_to_string("/proc/net/snmp").context("cannot read /proc/net/snmp")?;
        let netstat = fs::read_to_string("/proc/net/netstat").context("cannot read /proc/net/netstat")?;
        Self::parse(&snmp, &netstat)
    }

    fn parse(snmp: &str, netstat: &str) -> Result<Self> {
        Ok(TcpCounters {
            out_segs: proc_net_counter(snmp, "Tcp", "OutSegs")?,
            delayed_acks: proc_net_counter(netstat, "TcpExt", "DelayedACKs")?,
        })
    }

    /// The counts between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        TcpCounters {
            out_segs: self.out_segs.saturating_sub(earlier.out_segs),
            delayed_acks: self.delayed_acks.saturating_sub(earlier.delayed_acks),
        }
    }
}

/// One counter of `/proc/net/snmp` or `/proc/net/netstat`: each group is a line of names
/// (`Tcp: RtoAlgorithm ... OutSegs ...`) followed by a line of values with the same prefix.
fn proc_net_counter(text: &str, group: &str, name: &str) -> Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.split_whitespace().next() == Some(prefix.as_str()));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no `{prefix}` names and values lines");
    };
    let at = names.split_whitespace().position(|n| n == name).with_context(|| format!("no {group} {name}"))?;
    let value = values.split_whitespace().nth(at).with_context(|| format!("no value for {group} {name}"))?;
    value.parse().with_context(|| format!("{group} {name} is {value:?}, not a count"))
}

/// One run's kernel work and the requests it served.
#[derive(Clone)]
pub struct PerRequest {
    /// perf's counts by event.
    pub events: BTreeMap<String, f64>,
    pub tcp: TcpCounters,
    pub requests: u64,
}

impl PerRequest {
    fn event(&self, event: &str) -> f64 {
        self.events.get(event).copied().unwrap_or(0.0) / self.requests as f64
    }
}

/// Per request, median over each subject's runs: one row per counter or syscall that any
/// subject made at least once per 2,000 requests (the rest print as 0.000), then the TCP
/// segments and delayed ACKs of the whole host, the fewest of the runs: other traffic on the
/// host only ever adds to those. Columns: the subjects, in order.
pub fn table(events: &[String], runs: &[Vec<PerRequest>]) -> Vec<Vec<String>> {
    let medians = |f: &dyn Fn(&PerRequest) -> f64| -> Vec<f64> {
        runs.iter().map(|rs| median(&rs.iter().map(f).collect::<Vec<_>>())).collect()
    };
    let mut rows = Vec::new();
    for event in events {
        let values = medians(&|r| r.event(event));
        if values.iter().any(|v| *v >= 0.0005) {
            let mut row = vec![format!("`{}`", short_name(event))];
            row.extend(values.iter().map(|v| num(*v, 3)));
            rows.push(row);
        }
    }
    let row = |label: &str, values: Vec<f64>, digits: usize| {
        let mut row = vec![label.to_owned()];
        row.extend(values.iter().map(|v| num(*v, digits)));
        row
    };
    let fewest = |f: &dyn Fn(&PerRequest) -> f64| -> Vec<f64> {
        runs.iter().map(|rs| rs.iter().map(f).fold(f64::NAN, f64::min)).collect()
    };
    rows.push(row("TCP segments sent (whole host, fewest)", fewest(&|r| r.tcp.out_segs as f64 / r.requests as f64), 2));
    rows.push(row("delayed ACKs (whole host, fewest)", fewest(&|r| r.tcp.delayed_acks as f64 / r.requests as f64), 3));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_csv_is_read() {
        let text = "# started on Sat Dec  5 08:00:00 2026\n\n12345,,context-switches,4000000000,100.00,,\n\
                    80000,,syscalls:sys_enter_writev,4000000000,100.00,,\n<not counted>,,syscalls:sys_enter_read,0,0.00,,\n";
        let counts = parse_perf(text);
        assert_eq!(counts.get("context-switches"), Some(&12345.0));
        assert_eq!(counts.get("syscalls:sys_enter_writev"), Some(&80000.0));
        assert_eq!(counts.len(), 2);
    }

    /// The real perf (linux-perf, installed by `cargo xtask deps`) on this test process: counts
    /// from `start` to `finish` through the control FIFO, and the SIGINT it dies of is no failure.
    #[test]
    fn perf_counts_between_start_and_finish() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-perf-test-{}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let result = (|| {
            let perf = PerfStat::start(&[std::process::id()], &["context-switches".to_owned()], &dir)?;
            // Each sleep switches this thread out at least once.
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(1));
            }
            perf.finish()
        })();
        let _ = fs::remove_dir_all(&dir);
        let switches = result?.get("context-switches").copied().unwrap_or(0.0);
        assert!(switches >= 20.0, "{switches} context switches counted over 20 sleeps");
        Ok(())
    }

    const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives\nIp: 1 64 123\n\
        Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n\
        Tcp: 1 200 120000 -1 5000 4000 3 2 12 900000 888888 7 0 40 0\n\
        Udp: InDatagrams NoPorts\nUdp: 5 6\n";
    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv DelayedACKs DelayedACKLocked\n\
        TcpExt: 0 0 4321 9\nIpExt: InNoRoutes InTruncatedPkts\nIpExt: 0 0\n\
        MPTcpExt: DelayedACKs\nMPTcpExt: 77\n";

    #[test]
    fn tcp_counters_are_read_by_name() {
        let tcp = TcpCounters::parse(SNMP, NETSTAT).ok();
        assert_eq!(tcp, Some(TcpCounters { out_segs: 888_888, delayed_acks: 4321 }));
        let later = TcpCounters { out_segs: 888_988, delayed_acks: 4322 };
        assert_eq!(
            later.since(TcpCounters { out_segs: 888_888, delayed_acks: 4321 }),
            TcpCounters { out_segs: 100, delayed_acks: 1 }
        );
        // A missing group or name, or a value that is no count, is an error, not a zero.
        assert!(TcpCounters::parse("Udp: InDatagrams\nUdp: 5\n", NETSTAT).is_err());
        assert!(proc_net_counter(SNMP, "Tcp", "OutSegments").is_err());
        assert!(proc_net_counter("Tcp: OutSegs\nTcp: many\n", "Tcp", "OutSegs").is_err());
        assert!(proc_net_counter("Tcp: OutSegs\n", "Tcp", "OutSegs").is_err());
    }

    #[test]
    fn the_syscall_list_is_perf_tracepoints_after_the_software_counters() {
        let all = events(true);
        assert_eq!(all[..4], ["context-switches", "cpu-migrations", "page-faults", "net:net_dev_xmit"]);
        assert!(all.contains(&"syscalls:sys_enter_sendto".to_owned()));
        // Every event of the CPU table is counted with --syscalls too.
        assert!(EVENTS.iter().all(|e| all.iter().any(|x| x == e)));
        assert_eq!(events(false).len(), EVENTS.len());
        assert_eq!(short_name("syscalls:sys_enter_epoll_wait"), "epoll_wait");
    }

    #[test]
    fn the_table_has_the_calls_made_and_the_segments() {
        let run = |writev: f64, reads: f64, segs: u64| PerRequest {
            events: [("syscalls:sys_enter_writev".to_owned(), writev), ("syscalls:sys_enter_read".to_owned(), reads)]
                .into(),
            tcp: TcpCounters { out_segs: segs, delayed_acks: 0 },
            requests: 1000,
        };
        let events = ["syscalls:sys_enter_writev".to_owned(), "syscalls:sys_enter_read".to_owned()];
        // Subject one: three runs (median 2000 writev); subject two: none of either call.
        let runs = vec![
            vec![run(2000.0, 0.0, 4000), run(2100.0, 0.0, 4100), run(1900.0, 0.0, 3900)],
            vec![run(0.0, 0.4, 4050)],
        ];
        let rows = table(&events, &runs);
        assert_eq!(rows[0], ["`writev`", "2.000", "0.000"]);
        // `read` below once per 2,000 requests everywhere: left out.
        // The host's segments: the fewest of the runs (others' traffic only adds).
        assert_eq!(rows[1], ["TCP segments sent (whole host, fewest)", "3.90", "4.05"]);
        assert_eq!(rows[2], ["delayed ACKs (whole host, fewest)", "0.000", "0.000"]);
        assert_eq!(rows.len(), 3);
    }
}
