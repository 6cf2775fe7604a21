//! The only module that talks to aya. It loads the programs built from `gateway-ebpf` and owns
//! everything about them:
//!
//! - `guard`: the XDP/TC guard object: load (memlock, bpffs, pinned maps under a pin-lock),
//!   attach with the mode fallback (`attach`), config and list maps written as diffs (`lists`),
//!   counters, per-source state, `BPF_PROG_TEST_RUN`.
//! - `service`: the guard inside the daemon: start, reload (diff and apply), runtime blocks with
//!   expiry, `xdp top`, shutdown (detach, or keep it attached across a restart).
//! - `offenders`: the L7 → L3 feedback loop (repeat offenders into the deny list).
//! - `steering`: the `sk_reuseport` program choosing each new connection's worker.
//! - `cpusteer`: `[xdp] steering = "cpumap"`, the guard sending each client's packets to its
//!   worker's CPU (or the one log line saying why it falls back).
//! - `syncookie`: `[xdp] syn_cookies` against the kernel's `tcp_syncookies` (one log line).
//! - `metrics`: the `gateway_xdp_*` and `gateway_steering_*` families, read at scrape.
//! - `selftest` and `bench`: test_run cases and measurements (`gatewayd xdp selftest|bench`).

mod attach;
pub mod bench;
pub mod cpusteer;
mod guard;
mod lists;
mod metrics;
pub mod offenders;
pub mod selftest;
mod service;
mod spec;
pub mod steering;
mod syncookie;

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, OnceLock},
};

pub use attach::AttachMode;
pub use guard::{GuardProgram, LoadOptions, WalkCost, XdpGuard, remove_stale_pins};
pub use lists::{net_of_key, normalize_net, parse_list_entry};
pub use metrics::EbpfCollector;
pub use offenders::{FeedbackPhase, Offenders};
pub use service::{BlockOutcome, TopEntry, TopReport, XdpService};
pub use spec::{FeedbackReason, FeedbackSpec, NicSteeringPolicy, RateSpec, SteeringPolicy, SynCookiePolicy, XdpSpec};
pub use steering::Steering;

use aya::{
    maps::MapError,
    programs::{ProgramError, links::LinkError},
};
use nix::{
    mount::{MsFlags, mount},
    sys::{
        resource::{RLIM_INFINITY, Resource, setrlimit},
        statfs::{BPF_FS_MAGIC, statfs},
    },
};

/// The usual bpffs mount point; mounted by the daemon when missing (it is not mounted at boot
/// everywhere).
pub const BPFFS: &str = "/sys/fs/bpf";

/// Linux `IFNAMSIZ` minus the trailing NUL.
const MAX_IFACE_LEN: usize = 15;

/// Counters of one interface: the six verdicts, then new sources inserted and over the cap.
pub type Counters = [u64; gateway_common::xdp::COUNTERS_PER_SLOT as usize];

/// The eBPF parts of the running daemon, reachable from the admin endpoint and the workers.
#[derive(Default)]
pub struct EbpfState {
    pub xdp: OnceLock<Arc<XdpService>>,
    pub steering: OnceLock<Arc<Steering>>,
}

/// Everything that can go wrong between the embedded objects and running, attached programs.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The embedded object could not be parsed, or its maps could not be created.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// The object lacks a program this module expects (gateway-ebpf and this module disagree).
    #[error("program {0:?} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The object lacks a map this module expects (gateway-ebpf and gateway-common disagree).
    #[error("map {0:?} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The kernel verifier refused a program; the log says which instruction and why.
    #[error("the kernel rejected program {program:?}: {source}\nverifier log:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        #[source]
        source: io::Error,
        verifier_log: String,
    },
    /// Any other failure of a program operation (wrong type, syscall error, ...).
    #[error("cannot {action} program {program:?}: {}", chain(source))]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The interface name cannot be a Linux interface name.
    #[error("invalid interface name {0:?}: expected 1 to 15 characters, no '/', ':', NUL or whitespace")]
    InterfaceName(String),
    /// No interface of that name in the daemon's network namespace.
    #[error("no network interface {0:?}")]
    NoInterface(String),
    /// Every mode that was tried failed; each attempt's error is listed.
    #[error("cannot attach to {iface}: {attempts}")]
    Attach { iface: String, attempts: String },
    /// The kernel refused a cpumap entry (NIC steering falls back).
    #[error("cannot give CPU {cpu} a cpumap entry: {reason}")]
    CpuMapEntry { cpu: u32, reason: String },
    /// A map had an unexpected shape or could not be read or written.
    #[error("map {map:?}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// A pinned link could not be opened, updated or pinned.
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("{path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// bpffs is not mounted and could not be mounted.
    #[error("cannot mount bpffs at {path}: {source}")]
    Bpffs {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    /// The pin directory is not on a bpffs.
    #[error("{0} is not on a bpf filesystem (pin paths must be under a bpffs mount such as /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// Another process holds the pin directory: a second instance must not attach twice.
    #[error(
        "{0} is in use by another gatewayd (or another process holding its lock); stop it, or give this \
         instance its own xdp.pin_path"
    )]
    Busy(PathBuf),
    /// The kernel or bpffs refused for lack of privileges (EPERM, EACCES somewhere in the cause).
    #[error(
        "the XDP guard needs root, or the capabilities CAP_BPF and CAP_NET_ADMIN (and CAP_SYS_ADMIN to \
         mount bpffs, or on kernels before 5.8): {0}"
    )]
    Privileges(#[source] Box<EbpfError>),
    /// Steering supports a bounded number of workers.
    #[error("steering supports at most {max} workers, not {workers}")]
    TooManyWorkers { workers: usize, max: u32 },
}

impl EbpfError {
    fn map(map: &'static str) -> impl FnOnce(MapError) -> EbpfError {
        move |source| EbpfError::Map { map, source }
    }

    fn pin(path: &Path) -> impl FnOnce(io::Error) -> EbpfError + '_ {
        move |source| EbpfError::Pin { path: path.to_owned(), source }
    }

    /// `self`, or, when the kernel or the filesystem said "not permitted" somewhere in its
    /// causes, the error that says which privileges are missing (aya's own words name only the
    /// first map it could not create).
    pub fn or_privileges(self) -> EbpfError {
        if matches!(self, EbpfError::Privileges(_)) || !permission_denied(&self) {
            return self;
        }
        EbpfError::Privileges(Box::new(self))
    }
}

fn permission_denied(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let errno = e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error);
        if matches!(errno, Some(libc::EPERM | libc::EACCES)) {
            return true;
        }
        next = e.source();
    }
    false
}

/// An error and its sources on one line (aya's syscall errors keep the errno in their source).
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// Turns a program error into the verifier error when it is one.
fn program_error(program: &'static str, action: &'static str, error: ProgramError) -> EbpfError {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            EbpfError::Verifier { program, source: io_error, verifier_log: verifier_log.to_string() }
        }
        source => EbpfError::Program { action, program, source },
    }
}

/// aya would panic on an interior NUL, and the kernel rejects the rest with a vaguer error.
pub fn validate_iface(iface: &str) -> Result<(), EbpfError> {
    let bad_char = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if iface.is_empty() || iface.len() > MAX_IFACE_LEN || iface.contains(bad_char) {
        return Err(EbpfError::InterfaceName(iface.to_owned()));
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK; later ones use memcg and
/// ignore it, so failing to raise it is only worth a debug line.
fn raise_memlock_limit() {
    if let Err(error) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(%error, "cannot raise RLIMIT_MEMLOCK");
    }
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes sure `dir` can hold pins: mounts bpffs at [`BPFFS`] when `dir` is under it and it is not
/// mounted, then creates `dir`.
fn ensure_pin_dir(dir: &Path) -> Result<(), EbpfError> {
    // Two loads racing (threads here, or gatewayd processes starting together) would stack two
    // bpffs mounts, and pins made in the lower one would vanish from view: serialize on a lock
    // of the mount point itself, and look again once holding it.
    static MOUNT: Mutex<()> = Mutex::new(());
    let _serialized = MOUNT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let bpffs = Path::new(BPFFS);
    if dir.starts_with(bpffs) && !is_bpffs(bpffs) {
        let bpffs_error = |source| EbpfError::Bpffs { path: BPFFS, source };
        std::fs::create_dir_all(bpffs).map_err(bpffs_error)?;
        let mount_point = File::open(bpffs).map_err(bpffs_error)?;
        // SAFETY: flock(2) on a descriptor owned here; released when it closes.
        if unsafe { libc::flock(mount_point.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(bpffs_error(io::Error::last_os_error()));
        }
        if !is_bpffs(bpffs) {
            mount(Some("bpf"), bpffs, Some("bpf"), MsFlags::empty(), None::<&str>)
                .map_err(|e| bpffs_error(e.into()))?;
            tracing::info!(path = BPFFS, "mounted bpffs");
        }
    }
    std::fs::create_dir_all(dir).map_err(EbpfError::pin(dir))?;
    if !is_bpffs(dir) {
        return Err(EbpfError::NotBpffs(dir.to_owned()));
    }
    Ok(())
}

/// An exclusive `flock` on the pin directory, held while a guard uses it: a second instance (or
/// a stale-pin cleanup) sees it and keeps its hands off. Released when the process exits, however
/// it exits.
#[derive(Debug)]
struct PinLock {
    _dir: File,
}

impl PinLock {
    fn acquire(dir: &Path) -> Result<PinLock, EbpfError> {
        let file = File::open(dir).map_err(EbpfError::pin(dir))?;
        // SAFETY: a plain flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::EWOULDBLOCK) => EbpfError::Busy(dir.to_owned()),
                _ => EbpfError::Pin { path: dir.to_owned(), source: error },
            });
        }
        Ok(PinLock { _dir: file })
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock `bpf_ktime_get_ns` reads, so deny-entry expiries
/// written here are what the program compares against.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_aya_sees_them() {
        for bad in ["", "a-name-that-is-too-long", "eth0\0", "a/b", "eth0:1", "eth 0"] {
            assert!(matches!(validate_iface(bad), Err(EbpfError::InterfaceName(_))), "{bad:?} accepted");
        }
        for good in ["lo", "eth0", "veth-gw-a", "abcdefghijklmno"] {
            assert!(validate_iface(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn monotonic_clock_advances() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
