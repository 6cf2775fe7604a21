//! The `systemd` vm-test scenario: the .deb on a booted Debian bookworm with systemd as PID 1 and
//! a virtio NIC, driven by `vm_systemd.sh` (run by a unit at every boot; it reboots the guest
//! once). Install, READY=1, demo route and metrics, JSON journal, reloads good and bad, XDP on the
//! virtio NIC, kTLS and the exposure score under the hardened unit, the watchdog, draining stop,
//! restart and upgrade under steady load with zero failures, reboot, remove, purge.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    dist,
    vm::{self, rootfs},
};

/// Runs `/opt/vmtest/run.sh` once the system is up; `Type=simple` so boot completes around it.
const UNIT: &str = "[Unit]\nDescription=vm-test scenario\nAfter=multi-user.target\n\n\
[Service]\nType=simple\nExecStart=/opt/vmtest/run.sh\n\n[Install]\nWantedBy=multi-user.target\n";

/// Boot, install, two reboots' worth of systemd under TCG, a watchdog timeout, two loaded runs.
const TIMEOUT: Duration = Duration::from_secs(1500);

pub fn run(root: &Path) -> Result<String> {
    let old = dist::version()?;
    let new = format!("{old}+upgrade1");
    let debs = dist::build_packages(dist::Profile::Debug, &[old.as_str(), new.as_str()])?;
    let rootfs = rootfs::bookworm(root)?;
    let (work, guest_files) = rootfs::run_files(root, "systemd-bookworm", UNIT, include_str!("vm_systemd.sh"))?;
    let mut files = vec![
        (debs[0].clone(), "/opt/vmtest/gatewayd_old.deb".to_owned()),
        (debs[1].clone(), "/opt/vmtest/gatewayd_new.deb".to_owned()),
    ];
    files.extend(guest_files);
    let image = work.join("root.img");
    rootfs::image(&rootfs, &image, &files, &rootfs::RUN_UNIT_LINKS)?;
    let console = vm::boot_with(&rootfs::qemu_args(&rootfs, &image), "Loading, please wait", TIMEOUT);
    let _ = std::fs::remove_file(&image);
    let console = console?;
    std::fs::write(work.join("console.log"), &console)?;
    let code = console
        .lines()
        .find_map(|l| l.trim().strip_prefix("VMTEST-EXIT:"))
        .and_then(|c| c.trim().parse::<i32>().ok())
        .with_context(|| format!("systemd: the guest never reported an exit status\n{}", vm::tail(&console)))?;
    if code != 0 {
        bail!("systemd: the scenario failed\n{}", vm::tail(&console));
    }
    Ok(console)
}
