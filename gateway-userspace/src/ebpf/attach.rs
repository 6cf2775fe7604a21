//! Attaching the guard to interfaces: native XDP, generic (skb) XDP, or a TC ingress classifier,
//! in that order when the mode is automatic. With a pin directory, links are pinned as
//! `link-<mode>-<iface>`; a later run adopts them (atomically swapping in its own program, so
//! the guard never leaves the interface), and a run that is configured to keep the guard
//! attached across a restart leaves them in place.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    programs::{
        TcAttachType, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, SchedClassifierLink},
        xdp::XdpLink,
    },
    util::KernelVersion,
};
use gateway_common::xdp::{TC_PROGRAM, XDP_NATIVE_PROGRAM, XDP_PROGRAM};

use super::{
    EbpfError,
    guard::{XdpGuard, tc, xdp},
    program_error, validate_iface,
};

/// Where in the receive path the guard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// Native XDP in the driver, before an skb exists: the fastest; needs driver support.
    XdpDriver,
    /// Generic XDP on the skb: works on every interface, slower.
    XdpSkb,
    /// A TC ingress classifier (clsact): for devices where XDP cannot attach at all.
    Tc,
}

impl AttachMode {
    /// The order `mode = "auto"` tries.
    pub const ALL: [AttachMode; 3] = [AttachMode::XdpDriver, AttachMode::XdpSkb, AttachMode::Tc];

    /// As written in the config and the `mode` metric label.
    pub const fn label(self) -> &'static str {
        match self {
            AttachMode::XdpDriver => "xdp-driver",
            AttachMode::XdpSkb => "xdp-skb",
            AttachMode::Tc => "tc",
        }
    }

    pub fn from_label(label: &str) -> Option<AttachMode> {
        AttachMode::ALL.into_iter().find(|m| m.label() == label)
    }
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One interface the guard is attached to.
#[derive(Debug)]
pub(super) struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    link: Link,
}

#[derive(Debug)]
enum Link {
    /// A bpf_link pinned at `path`: stays attached while the pin exists.
    Pinned { fd: FdLink, path: PathBuf },
    /// A bpf_link without a pin: detached when the descriptor closes.
    Fd(FdLink),
    /// XDP through netlink (kernels without XDP links): detached by aya on drop.
    XdpNetlink(XdpLink),
    /// TC through netlink (kernels before 6.6, no TCX): detached by aya on drop.
    TcNetlink(SchedClassifierLink),
}

/// The file name of a pinned link.
fn pin_name(mode: AttachMode, iface: &str) -> String {
    format!("link-{}-{iface}", mode.label())
}

/// `(mode, iface)` of a pinned link's file name.
pub(super) fn parse_pin_name(name: &str) -> Option<(AttachMode, &str)> {
    let rest = name.strip_prefix("link-")?;
    AttachMode::ALL.into_iter().find_map(|m| Some((m, rest.strip_prefix(m.label())?.strip_prefix('-')?)))
}

fn kernel_at_least(major: u8, minor: u8) -> bool {
    static CURRENT: OnceLock<Option<KernelVersion>> = OnceLock::new();
    CURRENT.get_or_init(|| KernelVersion::current().ok()).is_some_and(|k| k >= KernelVersion::new(major, minor, 0))
}

/// Which XDP program a mode attaches: only native mode carries the cpumap steering (see
/// `gateway_common::xdp::XDP_NATIVE_PROGRAM`).
fn xdp_program_for(mode: AttachMode) -> &'static str {
    if mode == AttachMode::XdpDriver { XDP_NATIVE_PROGRAM } else { XDP_PROGRAM }
}

impl XdpGuard {
    /// Attaches to `iface` in the calling thread's network namespace, in `mode`, or with `None`
    /// in the first of [`AttachMode::ALL`] that works. Returns the mode that took. A pinned link
    /// of an acceptable mode left by an earlier run is adopted instead; pinned links of other
    /// modes for the interface are removed.
    pub fn attach(&mut self, iface: &str, mode: Option<AttachMode>) -> Result<AttachMode, EbpfError> {
        validate_iface(iface)?;
        if let Some(existing) = self.attachments.iter().find(|a| a.iface == iface) {
            return Ok(existing.mode);
        }
        let ifindex = ifindex_of(iface)?;
        let candidates: Vec<AttachMode> = match mode {
            Some(m) => vec![m],
            None => AttachMode::ALL.to_vec(),
        };
        if let Some(dir) = self.pin_dir.clone() {
            for m in AttachMode::ALL {
                let path = dir.join(pin_name(m, iface));
                if !path.exists() {
                    continue;
                }
                if candidates.contains(&m) {
                    match self.adopt(&path, m) {
                        Ok(fd) => {
                            tracing::info!(%iface, mode = %m, "adopted the guard's pinned link from an earlier run");
                            self.attachments.push(Attachment {
                                iface: iface.to_owned(),
                                ifindex,
                                mode: m,
                                link: Link::Pinned { fd, path },
                            });
                            return Ok(m);
                        }
                        Err(error) => {
                            tracing::warn!(%iface, mode = %m, %error, "cannot adopt pinned link; attaching afresh");
                        }
                    }
                } else {
                    tracing::info!(%iface, mode = %m, "removing pinned link of a mode no longer configured");
                }
                remove_pin(&path);
            }
        }
        let mut attempts = Vec::new();
        let mut denied = false;
        for m in candidates {
            match self.attach_fresh(iface, ifindex, m) {
                Ok(link) => {
                    self.attachments.push(Attachment { iface: iface.to_owned(), ifindex, mode: m, link });
                    return Ok(m);
                }
                Err(error) => {
                    tracing::debug!(%iface, mode = %m, %error, "attach attempt failed");
                    denied |= super::permission_denied(&error);
                    attempts.push(format!("{m}: {error}"));
                }
            }
        }
        let error = EbpfError::Attach { iface: iface.to_owned(), attempts: attempts.join("; ") };
        // The attempts are joined into one sentence: say here whether privileges were missing.
        Err(if denied { EbpfError::Privileges(Box::new(error)) } else { error })
    }

    /// Swaps this instance's program into a pinned link (bpf_link_update: no moment without a
    /// program) and keeps the link's descriptor.
    fn adopt(&mut self, path: &Path, mode: AttachMode) -> Result<FdLink, EbpfError> {
        let link_error = |source| EbpfError::Link { path: path.to_owned(), source };
        let fd: FdLink = PinnedLink::from_pin(path).map_err(link_error)?.into();
        match mode {
            AttachMode::XdpDriver | AttachMode::XdpSkb => {
                let name = xdp_program_for(mode);
                let program = xdp(&mut self.ebpf, name)?;
                let link = XdpLink::try_from(fd).map_err(link_error)?;
                let id = program.attach_to_link(link).map_err(|e| program_error(name, "update link of", e))?;
                let link = program.take_link(id).map_err(|e| program_error(name, "take link of", e))?;
                FdLink::try_from(link).map_err(link_error)
            }
            AttachMode::Tc => {
                let program = tc(&mut self.ebpf)?;
                let link = SchedClassifierLink::try_from(fd).map_err(link_error)?;
                let id = program.attach_to_link(link).map_err(|e| program_error(TC_PROGRAM, "update link of", e))?;
                let link = program.take_link(id).map_err(|e| program_error(TC_PROGRAM, "take link of", e))?;
                FdLink::try_from(link).map_err(link_error)
            }
        }
    }

    fn attach_fresh(&mut self, iface: &str, ifindex: u32, mode: AttachMode) -> Result<Link, EbpfError> {
        let attach_error = |e| program_error(xdp_program_for(mode), "attach", e);
        let fd = match mode {
            AttachMode::XdpDriver | AttachMode::XdpSkb => {
                let xdp_mode = if mode == AttachMode::XdpDriver { XdpMode::Driver } else { XdpMode::Skb };
                let program = xdp(&mut self.ebpf, xdp_program_for(mode))?;
                let id = program.attach_to_if_index(ifindex, xdp_mode).map_err(attach_error)?;
                let link = program.take_link(id).map_err(attach_error)?;
                if !kernel_at_least(5, 9) {
                    // Attached through netlink: no link to pin.
                    return Ok(Link::XdpNetlink(link));
                }
                FdLink::try_from(link).map_err(|source| EbpfError::Link { path: PathBuf::new(), source })?
            }
            AttachMode::Tc => {
                let tc_error = |e| program_error(TC_PROGRAM, "attach", e);
                // clsact may exist already (EEXIST); a real problem is reported with the attach
                // error it causes (on TCX kernels no qdisc is needed at all).
                let clsact = tc::qdisc_add_clsact(iface).err().map(|e| e.to_string());
                // A netlink filter outlives its process: drop the one an earlier run left.
                let _ = tc::qdisc_detach_program(iface, TcAttachType::Ingress, TC_PROGRAM);
                let program = tc(&mut self.ebpf)?;
                let id = program.attach(iface, TcAttachType::Ingress).map_err(|e| match &clsact {
                    Some(qdisc) if !qdisc.contains("exists") => EbpfError::Attach {
                        iface: iface.to_owned(),
                        attempts: format!(
                            "adding the clsact qdisc failed ({qdisc}; is the sch_ingress module available?), \
                             then: {}",
                            program_error(TC_PROGRAM, "attach", e)
                        ),
                    },
                    _ => tc_error(e),
                })?;
                let link = program.take_link(id).map_err(tc_error)?;
                if !kernel_at_least(6, 6) {
                    return Ok(Link::TcNetlink(link));
                }
                FdLink::try_from(link).map_err(|source: LinkError| EbpfError::Link { path: PathBuf::new(), source })?
            }
        };
        match &self.pin_dir {
            Some(dir) => {
                let path = dir.join(pin_name(mode, iface));
                let pinned = fd
                    .pin(&path)
                    .map_err(|e| EbpfError::Pin { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
                Ok(Link::Pinned { fd: pinned.into(), path })
            }
            None => Ok(Link::Fd(fd)),
        }
    }

    /// `(iface, ifindex, mode)` of every attachment.
    pub fn attachments(&self) -> Vec<(String, u32, AttachMode)> {
        self.attachments.iter().map(|a| (a.iface.clone(), a.ifindex, a.mode)).collect()
    }

    /// Detaches from `iface`; `false` when not attached there.
    pub fn detach(&mut self, iface: &str) -> bool {
        let Some(i) = self.attachments.iter().position(|a| a.iface == iface) else { return false };
        let a = self.attachments.remove(i);
        detach(a);
        true
    }

    /// Detaches from every interface (pins removed).
    pub fn detach_all(&mut self) {
        for a in std::mem::take(&mut self.attachments) {
            detach(a);
        }
    }

    /// Leaves every attachment in place for the next run: pinned links stay pinned, netlink
    /// attachments are simply not removed. Returns the interfaces.
    pub fn keep_attached(&mut self) -> Vec<String> {
        let mut kept = Vec::new();
        for a in std::mem::take(&mut self.attachments) {
            match a.link {
                Link::Pinned { fd, .. } => drop(fd),
                Link::XdpNetlink(link) => std::mem::forget(link),
                Link::TcNetlink(link) => std::mem::forget(link),
                Link::Fd(fd) => {
                    tracing::warn!(iface = %a.iface, "link is not pinned; it goes with this process");
                    drop(fd);
                    continue;
                }
            }
            kept.push(a.iface);
        }
        kept
    }

    /// Removes pinned links for interfaces other than `keep` (configured away since they were
    /// pinned). Returns the interfaces.
    pub fn remove_foreign_links(&self, keep: &[String]) -> Vec<String> {
        let Some(dir) = &self.pin_dir else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((_, iface)) = name.to_str().and_then(parse_pin_name) else { continue };
            if !keep.iter().any(|k| k == iface) {
                remove_pin(&entry.path());
                removed.push(iface.to_owned());
            }
        }
        removed
    }
}

/// The index of `iface` in the calling thread's network namespace.
pub fn ifindex_of(iface: &str) -> Result<u32, EbpfError> {
    let name = std::ffi::CString::new(iface).map_err(|_| EbpfError::InterfaceName(iface.to_owned()))?;
    // SAFETY: a NUL-terminated name that lives across the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(EbpfError::NoInterface(iface.to_owned())),
        index => Ok(index),
    }
}

fn detach(a: Attachment) {
    match a.link {
        Link::Pinned { fd, path } => {
            remove_pin(&path);
            drop(fd);
        }
        Link::Fd(fd) => drop(fd),
        Link::XdpNetlink(link) => drop(link),
        Link::TcNetlink(link) => drop(link),
    }
    tracing::info!(iface = %a.iface, mode = %a.mode, "guard detached");
}

fn remove_pin(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove pinned link"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip() {
        for mode in AttachMode::ALL {
            let name = pin_name(mode, "eth0");
            assert_eq!(parse_pin_name(&name), Some((mode, "eth0")));
        }
        assert_eq!(parse_pin_name("link-xdp-skb-veth-a"), Some((AttachMode::XdpSkb, "veth-a")));
        assert_eq!(parse_pin_name("GW_SOURCES"), None);
        assert_eq!(AttachMode::from_label("tc"), Some(AttachMode::Tc));
        assert_eq!(AttachMode::from_label("auto"), None);
    }
}
