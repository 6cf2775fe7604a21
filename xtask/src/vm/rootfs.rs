//! A Debian bookworm root file system that boots with systemd as PID 1, for scenarios that need
//! a real service manager (the package, the unit, restarts, reboot). Built from Debian packages
//! with mmdebstrap once and cached under `target/vm/rootfs/`; each run gets a fresh ext4 image
//! made from it (`mke2fs -d`), with the run's files written in (`debugfs`), so no run sees
//! another's leftovers. The guest boots its own kernel and initramfs from the tree.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::exec;

/// What the guest needs besides the essential set: systemd and a kernel to boot, and the tools
/// the scenarios use as an operator would (curl, hey, jq).
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "kmod",
    "procps",
    "logrotate",
    "curl",
    "hey",
    "jq",
];

const SOURCE: &str =
    "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main";

/// Timers and services that would only compete for the guest's CPU (TCG is slow enough).
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "logrotate.timer",
    "systemd-timesyncd.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
];

pub struct Rootfs {
    pub tree: PathBuf,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
}

/// The cached tree, built when missing or when the package list changed.
pub fn bookworm(root: &Path) -> Result<Rootfs> {
    let dir = root.join("target/vm/rootfs");
    let tree = dir.join("bookworm-systemd");
    let stamp = dir.join("bookworm-systemd.packages");
    let wanted = PACKAGES.join(",");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) || !tree.exists() {
        build(&dir, &tree, &wanted)?;
        fs::write(&stamp, &wanted)?;
    }
    let boot = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(tree.join("boot"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
            .with_context(|| format!("no /boot/{prefix}* in {}", tree.display()))
    };
    Ok(Rootfs { vmlinuz: boot("vmlinuz-")?, initrd: boot("initrd.img-")?, tree })
}

fn build(dir: &Path, tree: &Path, packages: &str) -> Result<()> {
    eprintln!("xtask: vm: building a bookworm root file system with systemd (mmdebstrap; a few minutes, once)");
    let partial = dir.join("bookworm-systemd.partial");
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(tree);
    fs::create_dir_all(&partial)?;
    let setup = format!(
        "echo vmtest > \"$1/etc/hostname\"; \
         echo '/dev/vda / ext4 defaults 0 1' > \"$1/etc/fstab\"; \
         systemctl --root=\"$1\" mask {}",
        MASKED.join(" ")
    );
    exec(
        Command::new("mmdebstrap")
            .args(["--variant=apt", "--mode=root"])
            .arg(format!("--include={packages}"))
            .arg(format!("--customize-hook={setup}"))
            .arg("bookworm")
            .arg(&partial)
            .arg(SOURCE),
    )
    .context("mmdebstrap (Debian's package registry must be reachable)")?;
    fs::rename(&partial, tree)?;
    Ok(())
}

/// Enables the unit of `run_files` (what `systemctl enable` would link).
pub const RUN_UNIT_LINKS: [(&str, &str); 1] =
    [("/etc/systemd/system/multi-user.target.wants/vmtest.service", "/etc/systemd/system/vmtest.service")];

/// A guest run's files: `target/vm/runs/<name>/`, emptied, holding the systemd unit `unit`
/// (which runs `/opt/vmtest/run.sh` at boot) and the executable `script`; returns the directory
/// and what to copy into the image (the unit and the script, at their guest paths).
pub fn run_files(root: &Path, name: &str, unit: &str, script: &str) -> Result<(PathBuf, Vec<(PathBuf, String)>)> {
    let work = root.join("target/vm/runs").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let unit_path = work.join("vmtest.service");
    std::fs::write(&unit_path, unit)?;
    let script_path = work.join("run.sh");
    std::fs::write(&script_path, script)?;
    std::fs::set_permissions(&script_path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let files = vec![
        (script_path, "/opt/vmtest/run.sh".to_owned()),
        (unit_path, "/etc/systemd/system/vmtest.service".to_owned()),
    ];
    Ok((work, files))
}

/// A fresh raw ext4 image of the tree with `files` (host path → guest path, mode kept) and
/// `links` (guest link → target) added.
pub fn image(rootfs: &Rootfs, out: &Path, files: &[(PathBuf, String)], links: &[(&str, &str)]) -> Result<()> {
    let _ = fs::remove_file(out);
    exec(Command::new("mke2fs").args(["-q", "-t", "ext4", "-L", "root", "-d"]).arg(&rootfs.tree).arg(out).arg("4G"))?;
    let mut script = String::new();
    let mut dirs = std::collections::BTreeSet::new();
    let placed = files.iter().map(|(_, guest)| guest.as_str()).chain(links.iter().map(|(link, _)| *link));
    for guest in placed {
        let mut p = Path::new(guest).parent();
        while let Some(d) = p.filter(|d| *d != Path::new("/")) {
            dirs.insert(d.to_owned());
            p = d.parent();
        }
    }
    for d in dirs {
        script.push_str(&format!("mkdir {}\n", d.display()));
    }
    for (host, guest) in files {
        script.push_str(&format!("write {} {guest}\n", host.display()));
    }
    for (link, target) in links {
        script.push_str(&format!("symlink {link} {target}\n"));
    }
    let cmds = out.with_extension("debugfs");
    fs::write(&cmds, script)?;
    let output = Command::new("debugfs").arg("-w").arg("-f").arg(&cmds).arg(out).output().context("debugfs")?;
    let errors = String::from_utf8_lossy(&output.stderr);
    // debugfs reports failures on stderr but exits 0; "mkdir: … exists" is expected.
    let bad: Vec<&str> =
        errors.lines().filter(|l| !l.starts_with("debugfs ") && !l.contains("already exists")).collect();
    if !output.status.success() || !bad.is_empty() {
        bail!("debugfs writing into {}: {}", out.display(), bad.join("\n"));
    }
    Ok(())
}

/// qemu arguments to boot the image with its own kernel, a virtio disk and a virtio NIC whose
/// offloads are off (virtio_net refuses native XDP while the host does GRO/checksum for it).
pub fn qemu_args(rootfs: &Rootfs, image: &Path) -> Vec<OsString> {
    let mut args = crate::vm::qemu_base_args("2048", 2);
    args.push("-kernel".into());
    args.push(rootfs.vmlinuz.clone().into());
    args.push("-initrd".into());
    args.push(rootfs.initrd.clone().into());
    args.push("-append".into());
    args.push("root=/dev/vda rw console=ttyS0 loglevel=4 systemd.show_status=0 net.ifnames=0".into());
    args.push("-drive".into());
    args.push(format!("file={},format=raw,if=virtio", image.display()).into());
    args.extend(
        [
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off,guest_csum=off",
        ]
        .map(Into::into),
    );
    args
}
