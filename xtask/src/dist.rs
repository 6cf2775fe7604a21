//! `cargo xtask dist`: `target/dist/gatewayd_<version>_amd64.deb`, built with `dpkg-deb` from a
//! staged tree (see README, "Running it as a service", for why not cargo-deb), then inspected
//! (`dpkg-deb -c` / `-I`: every file, mode, conffile and script where this table says) and
//! checked with lintian (no error; every warning one of `JUSTIFIED_LINTIAN`).

mod scripts;

use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{capture, cargo, exec, workspace_root},
    deps,
};

#[derive(clap::Args)]
pub struct Options {
    /// The Debian version (default: the crate's version with Debian revision 1, e.g. 0.1.0-1).
    #[arg(long)]
    pub version: Option<String>,
}

/// One file of the package: source in the workspace (or generated), path on the target, mode.
pub struct Asset {
    pub source: &'static str,
    pub dest: &'static str,
    pub mode: u32,
}

pub const BINARY: &str = "/usr/bin/gatewayd";
pub const CONFIG: &str = "/etc/gatewayd/gatewayd.toml";

/// Everything the package installs besides the binary and the generated docs.
pub const ASSETS: &[Asset] = &[
    Asset { source: "systemd/gatewayd.service", dest: "/lib/systemd/system/gatewayd.service", mode: 0o644 },
    // 0644 in the archive (lintian: non-standard-file-perm); root:gatewayd 0640 from the postinst on.
    Asset { source: "packaging/gatewayd.toml", dest: CONFIG, mode: 0o644 },
    Asset { source: "packaging/gatewayd.sysusers.conf", dest: "/usr/lib/sysusers.d/gatewayd.conf", mode: 0o644 },
    Asset { source: "packaging/gatewayd.tmpfiles.conf", dest: "/usr/lib/tmpfiles.d/gatewayd.conf", mode: 0o644 },
    Asset { source: "packaging/gatewayd.logrotate", dest: "/etc/logrotate.d/gatewayd", mode: 0o644 },
    Asset {
        source: "packaging/gatewayd.modules-load.conf",
        dest: "/usr/lib/modules-load.d/gatewayd.conf",
        mode: 0o644,
    },
    Asset { source: "README.md", dest: "/usr/share/doc/gatewayd/README.md", mode: 0o644 },
];

/// Files the administrator owns: dpkg keeps their edits on upgrade and removes them on purge.
pub const CONFFILES: &[&str] = &[CONFIG, "/etc/logrotate.d/gatewayd"];

/// Owner, group and mode set at install time (dpkg-statoverride, so upgrades keep them): the
/// service reads its config as group `gatewayd`; a .deb can only carry root-owned files.
pub const STAT_OVERRIDES: &[(&str, &str, &str, &str)] =
    &[("root", "gatewayd", "0750", "/etc/gatewayd"), ("root", "gatewayd", "0640", CONFIG)];

/// Lintian warnings we leave, each explained in the README ("Package").
const JUSTIFIED_LINTIAN: &[&str] = &[
    // A Rust binary links its dependencies statically; Debian's policy wants them packaged.
    "embedded-library",
    // `gatewayd --help` and the README are the manual.
    "no-manual-page",
    // Not uploaded to Debian: the changelog is one generated entry per build, closing no bug.
    "initial-upload-closes-no-bugs",
];

pub fn run(opts: &Options) -> Result<PathBuf> {
    let version = match &opts.version {
        Some(v) => v.clone(),
        None => version()?,
    };
    let deb = build_packages(Profile::Release, &[version.as_str()])?.remove(0);
    eprintln!("xtask: {}", deb.display());
    Ok(deb)
}

/// The default package version: the crate's, Debian revision 1 (`0.1.0-1`).
pub fn version() -> Result<String> {
    Ok(format!("{}-1", crate_version()?))
}

/// Which build of gatewayd goes into the package.
#[derive(Clone, Copy)]
pub enum Profile {
    /// What `cargo xtask dist` ships.
    Release,
    /// For vm-test: the build `cargo xtask test` has made already (a release build would add
    /// minutes of CI time for a package whose contents, not speed, are under test).
    Debug,
}

/// Builds gatewayd once and a checked .deb for each version.
pub fn build_packages(profile: Profile, versions: &[&str]) -> Result<Vec<PathBuf>> {
    deps::ensure()?;
    let mut build_cmd = cargo();
    build_cmd.args(["build", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]);
    let binary = match profile {
        Profile::Release => {
            build_cmd.arg("--release");
            "target/release/gatewayd"
        }
        Profile::Debug => "target/debug/gatewayd",
    };
    exec(&mut build_cmd)?;
    versions
        .iter()
        .map(|version| {
            let deb = build(&workspace_root().join(binary), version)?;
            verify(&deb, version)?;
            lintian(&deb)?;
            Ok(deb)
        })
        .collect()
}

fn crate_version() -> Result<String> {
    let manifest = fs::read_to_string(workspace_root().join("gateway-userspace/Cargo.toml"))?;
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"")?.strip_suffix('"').map(str::to_owned))
        .context("no version in gateway-userspace/Cargo.toml")
}

fn build(gatewayd: &Path, version: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let out = root.join("target/dist");
    let stage = out.join(format!("gatewayd_{version}_amd64"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let binary = put(&stage, BINARY)?;
    // Stripped as dh_strip does (lintian: unstripped-binary-or-object).
    exec(
        Command::new("objcopy")
            .args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"])
            .arg(gatewayd)
            .arg(&binary),
    )?;
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;
    for asset in ASSETS {
        let dest = put(&stage, asset.dest)?;
        fs::copy(root.join(asset.source), &dest).with_context(|| format!("copying {}", asset.source))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(asset.mode))?;
    }
    write_gz(&put(&stage, "/usr/share/doc/gatewayd/changelog.Debian.gz")?, &changelog(version))?;
    write(&put(&stage, "/usr/share/doc/gatewayd/copyright")?, COPYRIGHT, 0o644)?;

    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    let depends = shlib_depends(&out, &binary)?;
    write(&debian.join("control"), &control(version, &depends, installed_kib(&stage)?), 0o644)?;
    write(&debian.join("conffiles"), &(CONFFILES.join("\n") + "\n"), 0o644)?;
    for (name, text) in scripts::all() {
        write(&debian.join(name), &text, 0o755)?;
    }
    let deb = out.join(format!("gatewayd_{version}_amd64.deb"));
    exec(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&stage).arg(&deb))?;
    Ok(deb)
}

/// Creates the parent directories of `dest` under `stage` (0755) and returns the staged path.
fn put(stage: &Path, dest: &str) -> Result<PathBuf> {
    let path = stage.join(dest.trim_start_matches('/'));
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    Ok(path)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n: no name or time stamp in the header (lintian: reproducibility).
fn write_gz(path: &Path, text: &str) -> Result<()> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(path)?)
        .spawn()
        .context("gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(text.as_bytes())?;
    if !child.wait()?.success() {
        bail!("gzip failed for {}", path.display());
    }
    Ok(())
}

/// `libc6 (>= 2.34), libgcc-s1 (>= 4.2)`, from the binary's dynamic symbols (dpkg-shlibdeps wants
/// a debian/control beside it).
fn shlib_depends(out: &Path, binary: &Path) -> Result<String> {
    let scratch = out.join("shlibdeps");
    fs::create_dir_all(scratch.join("debian"))?;
    fs::write(scratch.join("debian/control"), "Source: gatewayd\n\nPackage: gatewayd\nArchitecture: amd64\n")?;
    let out =
        capture(Command::new("dpkg-shlibdeps").arg("-O").arg(format!("-e{}", binary.display())).current_dir(&scratch))?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))
}

fn installed_kib(stage: &Path) -> Result<u64> {
    let out = capture(Command::new("du").args(["-sk", "--exclude=DEBIAN"]).arg(stage))?;
    out.split_whitespace().next().and_then(|n| n.parse().ok()).context("du output")
}

fn control(version: &str, shlibs: &str, installed_kib: u64) -> String {
    format!(
        "Package: gatewayd\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: gatewayd maintainers <gatewayd-maintainers@example.org>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {shlibs}, systemd\n\
         Recommends: logrotate\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF-accelerated edge API gateway\n \
         gatewayd terminates HTTP/1.1, HTTP/2 and TLS (with kernel TLS offload\n \
         where the kernel has it), authenticates clients (JWT, API keys, mTLS),\n \
         rate-limits them and proxies to upstream services, with an XDP guard\n \
         dropping floods at the NIC.\n \
         .\n \
         Runs as the systemd service gatewayd.service; restarts and upgrades hand the\n \
         listening sockets over, so no connection is refused.\n"
    )
}

fn changelog(version: &str) -> String {
    let date = capture(Command::new("date").args(["-R", "-u", "-d", "@0"])).unwrap_or_default();
    format!(
        "gatewayd ({version}) unstable; urgency=medium\n\n  * Built by cargo xtask dist.\n\n -- gatewayd maintainers <gatewayd-maintainers@example.org>  {}\n",
        date.trim()
    )
}

const COPYRIGHT: &str = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
Upstream-Name: gatewayd\n\n\
Files: *\n\
Copyright: 2026 gatewayd authors\n\
License: Apache-2.0\n \
On Debian systems, the full text of the Apache License, Version 2.0 can be\n \
found in the file `/usr/share/common-licenses/Apache-2.0'.\n";

/// Reads the package back: every file with its mode, the conffiles, the scripts, the version.
fn verify(deb: &Path, version: &str) -> Result<()> {
    let listing = capture(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    check_listing(&listing)?;
    let info = capture(Command::new("dpkg-deb").arg("-I").arg(deb))?;
    for needle in [format!("Version: {version}"), "Architecture: amd64".to_owned()] {
        if !info.contains(&needle) {
            bail!("{}: control lacks `{needle}`:\n{info}", deb.display());
        }
    }
    for script in ["postinst", "prerm", "postrm", "conffiles"] {
        if !info.lines().any(|l| l.contains("bytes") && l.split_whitespace().any(|w| w == script)) {
            bail!("{}: no {script} in the control archive:\n{info}", deb.display());
        }
    }
    let conffiles = capture(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"))?;
    if conffiles.lines().collect::<Vec<_>>() != CONFFILES {
        bail!("{}: conffiles are {conffiles:?}, want {CONFFILES:?}", deb.display());
    }
    Ok(())
}

/// Checks a `dpkg-deb -c` listing: every file present, root-owned, with its mode.
pub fn check_listing(listing: &str) -> Result<()> {
    let mut wanted: Vec<(&str, u32)> = ASSETS.iter().map(|a| (a.dest, a.mode)).collect();
    wanted.push((BINARY, 0o755));
    wanted.push(("/usr/share/doc/gatewayd/copyright", 0o644));
    wanted.push(("/usr/share/doc/gatewayd/changelog.Debian.gz", 0o644));
    for (dest, mode) in wanted {
        let line = listing
            .lines()
            .find(|l| l.ends_with(&format!(".{dest}")))
            .with_context(|| format!("{dest} is not in the package"))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (perms, owner) = (fields.first().copied().unwrap_or(""), fields.get(1).copied().unwrap_or(""));
        if perms != mode_string(mode) || owner != "root/root" {
            bail!("{dest}: {perms} {owner}, want {} root/root", mode_string(mode));
        }
    }
    Ok(())
}

/// `-rw-r-----` for 0o640.
fn mode_string(mode: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// No lintian error; a warning only if it is one the README justifies.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian").arg("--no-tag-display-limit").arg(deb).output().context("lintian")?;
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    eprint!("{report}");
    let unjustified: Vec<&str> = report
        .lines()
        .filter(|l| {
            l.starts_with("E: ")
                || (l.starts_with("W: ") && !JUSTIFIED_LINTIAN.iter().any(|t| l.contains(&format!(" {t}"))))
        })
        .collect();
    if !unjustified.is_empty() {
        bail!("lintian: {} error(s) or unjustified warning(s):\n{}", unjustified.len(), unjustified.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(0o640), "-rw-r-----");
        assert_eq!(mode_string(0o755), "-rwxr-xr-x");
    }

    /// The README's manual install list (the fallback to the package) must give every file the
    /// mode, and the config the group, the package gives it: followed literally, the service
    /// must be able to read its config.
    #[test]
    fn readme_manual_install_matches_the_package() {
        let readme = fs::read_to_string(workspace_root().join("README.md")).unwrap();
        let section = readme.split("## Running it as a service").nth(1).unwrap().split("\n## ").next().unwrap();
        let installs: Vec<&str> = section.lines().filter(|l| l.trim_start().starts_with("install ")).collect();
        assert!(!installs.is_empty(), "no install lines in the README section");
        let mut checked = 0;
        for line in installs {
            let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
            let flag = |f: &str| words.iter().position(|w| *w == f).and_then(|i| words.get(i + 1)).copied();
            let Some(source) = words.iter().rev().nth(1) else { continue };
            let Some(asset) = ASSETS.iter().find(|a| a.source == *source) else { continue };
            let mode = flag("-m").map(|m| u32::from_str_radix(m, 8).unwrap());
            let group = STAT_OVERRIDES.iter().find(|o| o.3 == asset.dest).map(|o| o.1);
            let want_mode = STAT_OVERRIDES
                .iter()
                .find(|o| o.3 == asset.dest)
                .map_or(asset.mode, |o| u32::from_str_radix(o.2, 8).unwrap());
            assert_eq!(mode, Some(want_mode), "{line}");
            assert_eq!(flag("-g"), group, "{line}: the group must let the service read it");
            checked += 1;
        }
        assert!(checked >= 3, "too few README install lines matched package files");
    }
}
