//! The only module that talks to aya: loads the XDP guard built from `gateway-ebpf`, attaches it to
//! interfaces and reads its verdict counters. The rest of the daemon sees [`XdpGuard`] only.

use std::{io, path::Path, sync::Mutex};

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode, xdp::XdpLinkId},
};
use gateway_common::xdp::{VERDICT_COUNT, VERDICTS_MAP};
use nix::{
    mount::{MsFlags, mount},
    sys::{
        resource::{RLIM_INFINITY, Resource, setrlimit},
        statfs::{BPF_FS_MAGIC, statfs},
    },
};

/// The object `build.rs` (aya-build) compiled from `gateway-ebpf`; aya needs it 8-byte aligned.
static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

/// The `#[xdp]` entry point in `gateway-ebpf/src/main.rs`.
const XDP_PROGRAM: &str = "gateway_xdp";

/// Where the daemon pins its maps and links; mounted by [`XdpGuard::load`] when missing.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Linux `IFNAMSIZ` minus the trailing NUL.
const MAX_IFACE_LEN: usize = 15;

/// Verdict counters, indexed by [`gateway_common::xdp::Verdict`].
pub type VerdictCounts = [u64; VERDICT_COUNT as usize];

/// Where in the receive path the program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Native XDP in the driver, before an skb exists; fails on drivers without XDP support.
    Driver,
    /// Generic XDP on the skb; works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// Everything that can go wrong between the embedded object and a running, attached program.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The embedded object could not be parsed, or its maps could not be created.
    #[error("cannot load the eBPF object: {0}")]
    Object(#[source] aya::EbpfError),
    /// The object lacks a program this module expects (gateway-ebpf and this file disagree).
    #[error("program {0:?} is missing from the eBPF object")]
    MissingProgram(&'static str),
    /// The object lacks a map this module expects (gateway-ebpf and gateway-common disagree).
    #[error("map {0:?} is missing from the eBPF object")]
    MissingMap(&'static str),
    /// The kernel verifier refused the program; the log says which instruction and why.
    #[error("the kernel rejected program {program:?}: {source}\nverifier log:\n{verifier_log}")]
    Verifier {
        program: &'static str,
        #[source]
        source: io::Error,
        verifier_log: String,
    },
    /// Any other failure of a program operation (wrong type, syscall error, ...).
    #[error("cannot {action} program {program:?}: {source}")]
    Program {
        action: &'static str,
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The interface name cannot be a Linux interface name.
    #[error("invalid interface name {0:?}: expected 1 to 15 characters, no '/', ':', NUL or whitespace")]
    InterfaceName(String),
    /// Attaching failed: unknown interface, or no native XDP support in driver mode.
    #[error("cannot attach XDP to {iface} in {mode:?} mode: {source}")]
    Attach {
        iface: String,
        mode: AttachMode,
        #[source]
        source: ProgramError,
    },
    /// A map had an unexpected shape or could not be read.
    #[error("map {map:?}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// bpffs is not mounted and could not be mounted.
    #[error("cannot mount bpffs at {path}: {source}")]
    Bpffs {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The loaded XDP guard. Attachments are removed when it is dropped.
pub struct XdpGuard {
    ebpf: Ebpf,
    verdicts: PerCpuArray<MapData, u64>,
    links: Vec<(String, XdpLinkId)>,
}

impl XdpGuard {
    /// Loads the embedded program into the kernel (verified, not yet attached).
    pub fn load() -> Result<Self, EbpfError> {
        raise_memlock_limit();
        ensure_bpffs()?;
        let mut ebpf = Ebpf::load(XDP_OBJECT).map_err(EbpfError::Object)?;
        program(&mut ebpf)?.load().map_err(|e| program_error("load", e))?;
        let map = ebpf.take_map(VERDICTS_MAP).ok_or(EbpfError::MissingMap(VERDICTS_MAP))?;
        let verdicts = PerCpuArray::try_from(map).map_err(|source| EbpfError::Map { map: VERDICTS_MAP, source })?;
        Ok(XdpGuard { ebpf, verdicts, links: Vec::new() })
    }

    /// Attaches to `iface` in the calling thread's network namespace.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), EbpfError> {
        validate_iface(iface)?;
        let link = program(&mut self.ebpf)?.attach(iface, mode.xdp_mode()).map_err(|source| EbpfError::Attach {
            iface: iface.to_owned(),
            mode,
            source,
        })?;
        self.links.push((iface.to_owned(), link));
        Ok(())
    }

    /// Verdict counters summed over all CPUs since load.
    pub fn verdict_counts(&self) -> Result<VerdictCounts, EbpfError> {
        let mut counts = [0; VERDICT_COUNT as usize];
        for (index, count) in (0u32..).zip(counts.iter_mut()) {
            let per_cpu =
                self.verdicts.get(&index, 0).map_err(|source| EbpfError::Map { map: VERDICTS_MAP, source })?;
            *count = per_cpu.iter().sum();
        }
        Ok(counts)
    }
}

impl Drop for XdpGuard {
    fn drop(&mut self) {
        // aya would detach silently when the program is dropped; doing it here lets a failure be seen.
        let links = std::mem::take(&mut self.links);
        let Ok(xdp) = program(&mut self.ebpf) else { return };
        for (iface, link) in links {
            if let Err(error) = xdp.detach(link) {
                tracing::warn!(%iface, %error, "cannot detach XDP program");
            }
        }
    }
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, EbpfError> {
    let program = ebpf.program_mut(XDP_PROGRAM).ok_or(EbpfError::MissingProgram(XDP_PROGRAM))?;
    program.try_into().map_err(|e| program_error("use as XDP", e))
}

fn program_error(action: &'static str, error: ProgramError) -> EbpfError {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            EbpfError::Verifier { program: XDP_PROGRAM, source: io_error, verifier_log: verifier_log.to_string() }
        }
        source => EbpfError::Program { action, program: XDP_PROGRAM, source },
    }
}

/// aya would panic on an interior NUL, and the kernel rejects the rest with a vaguer error.
fn validate_iface(iface: &str) -> Result<(), EbpfError> {
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

/// Mounts bpffs at [`BPFFS`] unless it is already there (it is not mounted at boot everywhere).
fn ensure_bpffs() -> Result<(), EbpfError> {
    // Two loads racing would stack two bpffs mounts on the same directory.
    static MOUNT: Mutex<()> = Mutex::new(());
    let _serialized = MOUNT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = Path::new(BPFFS);
    if statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC) {
        return Ok(());
    }
    let bpffs_error = |source| EbpfError::Bpffs { path: BPFFS, source };
    std::fs::create_dir_all(path).map_err(bpffs_error)?;
    mount(Some("bpf"), path, Some("bpf"), MsFlags::empty(), None::<&str>).map_err(|e| bpffs_error(e.into()))?;
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
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
}
