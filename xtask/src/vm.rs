//! Runs a script inside a Debian kernel under qemu (TCG), for what the host kernel cannot show:
//! kTLS (no CONFIG_TLS here) and old kernels (5.10). The guest is a busybox initramfs with the
//! files a scenario needs (ELF files bring their shared libraries) and the kernel modules it asks
//! for; the script's exit status is the verdict.

mod cpio;
mod kernel;
pub mod rootfs;

use std::{
    collections::BTreeSet,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub use kernel::Suite;

/// What to run in a guest.
pub struct Guest {
    pub suite: Suite,
    /// Kernel modules to load (with what they depend on), e.g. `"tls"`.
    pub modules: Vec<String>,
    /// Host path → guest path. ELF files bring their shared libraries.
    pub files: Vec<(PathBuf, String)>,
    /// `/bin/sh` script run after the mounts (proc, sys, devtmpfs, bpffs, tmp) with `lo` up.
    pub script: String,
    pub timeout: Duration,
    /// Virtual CPUs (tests of per-CPU behaviour want more than the host's two).
    pub cpus: u8,
}

/// Exit marker the init script prints; everything else on the console is the guest's output.
const EXIT_MARKER: &str = "VMTEST-EXIT:";

/// Boots the guest and returns its console output; fails unless the script exits 0.
pub fn run(root: &Path, name: &str, guest: &Guest) -> Result<String> {
    let kernel = kernel::fetch(root, guest.suite)?;
    let work = root.join("target/vm/runs").join(format!("{name}-{}", guest.suite.name()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cleaning {}", work.display()))?;
    }
    let tree = work.join("root");
    fs::create_dir_all(&tree)?;
    build_tree(&tree, &kernel, guest)?;
    let initramfs = work.join("initramfs.cpio");
    cpio::write_newc(&tree, &initramfs)?;
    // Only the console log outlives a run: trees and images of every scenario on every kernel
    // add up to gigabytes on a CI disk.
    fs::remove_dir_all(&tree).with_context(|| format!("cleaning {}", tree.display()))?;
    let console = boot(&kernel.vmlinuz, &initramfs, guest.cpus, guest.timeout);
    fs::remove_file(&initramfs).with_context(|| format!("removing {}", initramfs.display()))?;
    let console = console?;
    fs::write(work.join("console.log"), &console)?;
    let code = console
        .lines()
        .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
        .and_then(|c| c.trim().parse::<i32>().ok())
        .with_context(|| {
            format!("{name} on {}: the guest never reported an exit status\n{}", guest.suite.name(), tail(&console))
        })?;
    if code != 0 {
        bail!("{name} on {}: script failed with {code}\n{}", guest.suite.name(), tail(&console));
    }
    Ok(console)
}

pub fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

fn build_tree(tree: &Path, kernel: &kernel::Kernel, guest: &Guest) -> Result<()> {
    for dir in ["bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib64", "usr/bin", "usr/lib", "run"] {
        fs::create_dir_all(tree.join(dir))?;
    }
    fs::copy("/bin/busybox", tree.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(tree.join("etc/group"), "root:x:0:\n")?;
    fs::write(tree.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    kernel.install_modules(tree, &guest.modules)?;
    let mut libs = BTreeSet::new();
    for (host, guest_path) in &guest.files {
        let dest = tree.join(guest_path.trim_start_matches('/'));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        copy_into_guest(host, &dest)?;
        libs.extend(shared_libraries(host)?);
    }
    for lib in libs {
        let dest = tree.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        // Follow symlinks: the guest gets the real file under the name the loader asks for.
        fs::copy(&lib, &dest).with_context(|| format!("copying {}", lib.display()))?;
    }
    let init = init_script(&kernel.version, &guest.modules);
    fs::write(tree.join("init"), init)?;
    set_mode(&tree.join("init"), 0o755)?;
    fs::write(tree.join("scenario.sh"), &guest.script)?;
    Ok(())
}

/// Copies a file into the guest tree; ELF files lose their debug info on the way (a debug build
/// of gatewayd is mostly DWARF, which the guest never reads and TCG would have to unpack).
fn copy_into_guest(host: &Path, dest: &Path) -> Result<()> {
    if !is_elf(host) {
        fs::copy(host, dest).with_context(|| format!("copying {} into the guest", host.display()))?;
        return Ok(());
    }
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(host)
        .arg(dest)
        .output()
        .context("running objcopy (binutils)")?;
    if !out.status.success() {
        bail!("objcopy --strip-debug {}: {}", host.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"\x7fELF"
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The shared libraries (and loader) an ELF file needs, from `ldd`; none for static files.
fn shared_libraries(path: &Path) -> Result<Vec<PathBuf>> {
    if !is_elf(path) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd").arg(path).output().with_context(|| format!("ldd {}", path.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let candidate = l.split("=>").nth(1).unwrap_or(l).split_whitespace().next()?;
            candidate.starts_with('/').then(|| PathBuf::from(candidate))
        })
        .collect())
}

fn init_script(kernel_version: &str, modules: &[String]) -> String {
    let modprobes: String =
        modules.iter().map(|m| format!("modprobe {m} || {{ echo \"modprobe {m} failed\"; fail=1; }}\n")).collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
/bin/busybox --install -s /sbin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf
ip link set lo up
echo "vm: kernel $(uname -r)"
depmod -a {kernel_version} 2>/dev/null
fail=0
{modprobes}
if [ "$fail" = 0 ]; then
  sh /scenario.sh
  fail=$?
fi
echo "{EXIT_MARKER}$fail"
sync
poweroff -f
"#
    )
}

/// Boots qemu with the serial console on stdout, killing it after `timeout`. Under TCG on a busy
/// machine a guest occasionally hangs or panics before its kernel starts the init script; a boot
/// that shows no sign of the init script within `BOOT_DEADLINE`, or ends without it, is retried
/// (twice at most).
fn boot(vmlinuz: &Path, initramfs: &Path, cpus: u8, timeout: Duration) -> Result<String> {
    let mut args = qemu_base_args("1536", cpus);
    args.extend(["-no-reboot", "-kernel"].map(Into::into));
    args.push(vmlinuz.into());
    args.push("-initrd".into());
    args.push(initramfs.into());
    // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss its
    // ticks and panic at boot ("IO-APIC + timer doesn't work"); the guests need no such check.
    args.extend(["-append", "console=ttyS0 rdinit=/init panic=-1 loglevel=4 no_timer_check"].map(Into::into));
    boot_with(&args, STARTED_MARKER, timeout)
}

/// qemu under TCG, `cpus` vCPUs, `memory` MiB, the serial console on stdout.
pub fn qemu_base_args(memory: &str, cpus: u8) -> Vec<std::ffi::OsString> {
    let cpus = cpus.to_string();
    [
        "-machine",
        "accel=tcg",
        "-cpu",
        "max",
        "-smp",
        &cpus,
        "-m",
        memory,
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]
    .map(Into::into)
    .to_vec()
}

/// Boots qemu with `args` (retrying a guest that never prints `started`) and returns the console.
pub fn boot_with(args: &[std::ffi::OsString], started: &str, timeout: Duration) -> Result<String> {
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        match boot_once(args, started, timeout)? {
            Boot::Finished(console) => return Ok(console),
            Boot::TimedOut(console) => bail!("the guest did not finish within {timeout:?}\n{}", tail(&console)),
            Boot::NeverStarted(console) if attempt < ATTEMPTS => {
                eprintln!(
                    "xtask: vm: the guest did not reach its init within {BOOT_DEADLINE:?}, or died first (attempt {attempt}); retrying\n{}",
                    tail(&console)
                );
            }
            Boot::NeverStarted(console) => bail!("the guest never started ({ATTEMPTS} attempts)\n{}", tail(&console)),
        }
    }
    unreachable!("the last attempt returns")
}

/// How long the kernel may take to reach our init script.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);
/// Printed by the init script as soon as it runs.
const STARTED_MARKER: &str = "vm: kernel";

enum Boot {
    Finished(String),
    TimedOut(String),
    NeverStarted(String),
}

fn boot_once(args: &[std::ffi::OsString], started: &str, timeout: Duration) -> Result<Boot> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(&buf[..n]);
        }
    });
    let text =
        || String::from_utf8_lossy(&console.lock().unwrap_or_else(std::sync::PoisonError::into_inner)).into_owned();
    let start = Instant::now();
    let mut outcome = None;
    while child.try_wait()?.is_none() {
        if start.elapsed() > BOOT_DEADLINE && !text().contains(started) {
            outcome = Some(Boot::NeverStarted as fn(String) -> Boot);
        } else if start.elapsed() > timeout {
            outcome = Some(Boot::TimedOut as fn(String) -> Boot);
        }
        if outcome.is_some() {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.wait();
    let _ = reader.join();
    let out = text();
    Ok(match outcome {
        Some(make) => make(out),
        // qemu exited (`-no-reboot`, `panic=-1`) before the init script said it started: the
        // guest kernel died while booting (seen once under TCG on a loaded host: an oops in
        // `sched_clock_cpu` during the initcalls), before anything of ours ran. Booted again.
        None if !out.contains(started) => Boot::NeverStarted(out),
        None => Boot::Finished(out),
    })
}
