//! Debian cloud kernels for the guests: fetched once with `apt-get download` from a private
//! sources list (the host's apt configuration is never touched), unpacked with `dpkg -x`, and
//! cached under `target/vm/kernels/<suite>`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{capture, exec};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian 11, Linux 5.10: the oldest kernel we support (BTF, no kTLS in the cloud flavour).
    Bullseye,
    /// Debian 12, Linux 6.1: has the `tls` module.
    Bookworm,
    /// Debian 13, Linux 6.12.
    Trixie,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Bullseye, Suite::Bookworm, Suite::Trixie];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Bullseye => "bullseye",
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
        }
    }
}

pub struct Kernel {
    /// `uname -r` of the guest, e.g. `6.1.0-50-cloud-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// Where the package was unpacked.
    unpacked: PathBuf,
}

pub fn fetch(root: &Path, suite: Suite) -> Result<Kernel> {
    let dir = root.join("target/vm/kernels").join(suite.name());
    let unpacked = dir.join("unpacked");
    if let Some(k) = find_unpacked(&unpacked)? {
        return Ok(k);
    }
    fs::create_dir_all(&dir)?;
    let apt = AptDir::new(root, suite)?;
    let package = apt.cloud_kernel_package()?;
    eprintln!("xtask: vm: fetching {package} ({})", suite.name());
    exec(apt.command("apt-get").arg("download").arg(&package).current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", dir.display()))?;
    let staging = dir.join("unpacking");
    let _ = fs::remove_dir_all(&staging);
    exec(Command::new("dpkg").arg("-x").arg(&deb).arg(&staging))?;
    // Packages ship without modules.dep (depmod makes it at install): make it here. Newer suites
    // keep modules under /usr/lib only; depmod looks under <base>/lib.
    if !staging.join("lib").exists() && staging.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", staging.join("lib"))?;
    }
    let kernel = find_unpacked(&staging)?.with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    exec(Command::new("depmod").arg("-b").arg(&staging).arg(&kernel.version))?;
    fs::rename(&staging, &unpacked)?;
    let _ = fs::remove_file(&deb);
    find_unpacked(&unpacked)?.with_context(|| format!("{package} has no /boot/vmlinuz-*"))
}

fn find_unpacked(unpacked: &Path) -> Result<Option<Kernel>> {
    let boot = unpacked.join("boot");
    let Ok(entries) = fs::read_dir(&boot) else { return Ok(None) };
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            return Ok(Some(Kernel { version: version.to_owned(), vmlinuz: e.path(), unpacked: unpacked.to_owned() }));
        }
    }
    Ok(None)
}

/// A private apt state directory with one suite in its sources list.
struct AptDir {
    dir: PathBuf,
}

impl AptDir {
    fn new(root: &Path, suite: Suite) -> Result<Self> {
        let dir = root.join("target/vm/apt").join(suite.name());
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("cache/archives/partial"))?;
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {} main\n",
                suite.name()
            ),
        )?;
        let apt = AptDir { dir };
        exec(apt.command("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let d = self.dir.display();
        cmd.arg(format!("-oDir::Etc::SourceList={d}/sources.list"))
            .arg("-oDir::Etc::SourceParts=-")
            .arg(format!("-oDir::State::Lists={d}/lists"))
            .arg(format!("-oDir::Cache={d}/cache"))
            .arg("-oAPT::Sandbox::User=root");
        cmd
    }

    /// `linux-image-<version>-cloud-amd64-unsigned` of the suite's current cloud kernel.
    fn cloud_kernel_package(&self) -> Result<String> {
        let show = capture(self.command("apt-cache").args(["show", "linux-image-cloud-amd64"]))?;
        let depends =
            show.lines().find_map(|l| l.strip_prefix("Depends:")).context("linux-image-cloud-amd64 has no Depends")?;
        let image = depends
            .split(',')
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
            .with_context(|| format!("no linux-image dependency in {depends:?}"))?;
        Ok(format!("{}-unsigned", image.trim_end_matches("-unsigned")))
    }
}

impl Kernel {
    fn modules_dir(&self) -> Result<PathBuf> {
        for base in ["lib/modules", "usr/lib/modules"] {
            let d = self.unpacked.join(base).join(&self.version);
            if d.is_dir() {
                return Ok(d);
            }
        }
        bail!("no modules directory for {} in {}", self.version, self.unpacked.display())
    }

    /// Copies `modules`, what they depend on, and the crypto modules the kernel may request at run
    /// time (kTLS asks for gcm/aes/chacha implementations by name), decompressed, into the guest
    /// tree; the guest's init runs `depmod`.
    pub fn install_modules(&self, tree: &Path, modules: &[String]) -> Result<()> {
        if modules.is_empty() {
            return Ok(());
        }
        let src = self.modules_dir()?;
        // A tree unpacked by an older xtask may lack modules.dep: make it now.
        if !src.join("modules.dep").exists() {
            exec(Command::new("depmod").arg("-b").arg(&self.unpacked).arg(&self.version))?;
        }
        let dest = tree.join("lib/modules").join(&self.version);
        let deps = parse_modules_dep(&fs::read_to_string(src.join("modules.dep")).context("reading modules.dep")?);
        let mut wanted = BTreeSet::new();
        for m in modules {
            let key = m.replace('-', "_");
            let path = deps
                .keys()
                .find(|p| module_name(p) == key)
                .with_context(|| format!("kernel {} has no module {m}", self.version))?;
            closure(path, &deps, &mut wanted);
        }
        for dir in ["kernel/crypto", "kernel/arch/x86/crypto", "kernel/lib/crypto"] {
            for p in deps.keys().filter(|p| p.starts_with(dir)) {
                closure(p, &deps, &mut wanted);
            }
        }
        for rel in &wanted {
            copy_module(&src.join(rel), &dest.join(strip_compression(rel)))?;
        }
        for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
            if src.join(f).exists() {
                fs::copy(src.join(f), dest.join(f))?;
            }
        }
        Ok(())
    }
}

fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((m.trim().to_owned(), d.split_whitespace().map(str::to_owned).collect()))
        })
        .collect()
}

fn closure(path: &str, deps: &BTreeMap<String, Vec<String>>, out: &mut BTreeSet<String>) {
    if !out.insert(path.to_owned()) {
        return;
    }
    for d in deps.get(path).into_iter().flatten() {
        closure(d, deps, out);
    }
}

/// `kernel/net/tls/tls.ko.xz` → `tls`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn strip_compression(rel: &str) -> String {
    rel.trim_end_matches(".xz").trim_end_matches(".zst").trim_end_matches(".gz").to_owned()
}

fn copy_module(src: &Path, dest: &Path) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    let ext = src.extension().and_then(|e| e.to_str()).unwrap_or("");
    let tool = match ext {
        "xz" => Some("xz"),
        "zst" => Some("zstd"),
        "gz" => Some("gzip"),
        _ => None,
    };
    match tool {
        None => {
            fs::copy(src, dest)?;
        }
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(src)
                .output()
                .with_context(|| format!("{tool} -dc {}", src.display()))?;
            if !out.status.success() {
                bail!("{tool} -dc {} failed", src.display());
            }
            fs::write(dest, out.stdout)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_and_closures() {
        let deps = parse_modules_dep(
            "kernel/net/tls/tls.ko.xz: kernel/lib/a.ko.xz\nkernel/lib/a.ko.xz: kernel/lib/b-c.ko.xz\nkernel/lib/b-c.ko.xz:\n",
        );
        assert_eq!(module_name("kernel/lib/b-c.ko.xz"), "b_c");
        let mut out = BTreeSet::new();
        closure("kernel/net/tls/tls.ko.xz", &deps, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(strip_compression("x/tls.ko.xz"), "x/tls.ko");
    }
}
