//! `cargo xtask deps`: installs what the other commands need on a fresh Debian machine. Run first by
//! `build`, `run` and `test`, so it has to be idempotent and fast when everything is there.

use std::{collections::BTreeSet, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{capture, cargo, exec, succeeds, workspace_root};

mod mcp_sdk;

/// Debian packages the pipeline uses, installed with apt when missing.
const APT_PACKAGES: &[&str] = &[
    // Rate-limit and jti revocation tests run a real redis-server (and redis-cli builds a
    // Redis Cluster from three of them).
    "redis-server",
    "redis-tools",
    // Token budget days in IANA time zones (jiff reads the system's zoneinfo).
    "tzdata",
    // Tests that cross a wall-clock boundary (a budget's midnight) move the daemon's clock with
    // libfaketime instead of racing the real one.
    "faketime",
    // Benchmarks (and their self-test): nginx as upstream and as the reference proxy; wrk, h2load
    // (nghttp2-client) and hey as load generators.
    "nginx",
    "wrk",
    "nghttp2-client",
    "hey",
    // `bench callgrind` (instructions per request under valgrind's callgrind) and `bench
    // cpu-compare` (perf's software counters: context switches, syscalls per request).
    "valgrind",
    "linux-perf",
    // ACME tests: Let's Encrypt's test CA (RFC 8555, both challenge types, short lifetimes).
    "pebble",
    // `bench proxy`'s third subject: HAProxy 2.6 as users run it next to nginx.
    "haproxy",
    // `bench flood`: the nftables defence (per-source meters at the netdev ingress hook) that
    // the XDP guard is compared with.
    "nftables",
    // `bench flood`: reads every request's latency from oha's `--db-url` file (p99 over pooled reps).
    "sqlite3",
    // TLS fixtures and manual checks (`cargo xtask run` suggests curl).
    "curl",
    "openssl",
    // vm-test: Debian kernels under qemu (TCG) with a busybox initramfs (kTLS, kernel 5.10).
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "kmod",
    // Debug info is stripped (objcopy) from binaries copied into a guest: a debug gatewayd is
    // ~230 MB, and every vm-test scenario would otherwise pack it into its initramfs.
    "binutils",
    // eBPF tests: netns and veth (ip), pings across the veth, inspecting programs and maps.
    "iproute2",
    "iputils-ping",
    "bpftool",
    "xdp-tools",
    // The cpumap steering test turns off TX checksum offload on its veth peer: a redirected
    // frame loses the skb's "checksum to be filled in" state, so it needs a real checksum.
    "ethtool",
    // The `gatewayd top` e2e test drives the terminal view in a tmux pane and reads the screen.
    "tmux",
    // Fuzzing: libfuzzer-sys compiles libFuzzer's C++ sources.
    "g++",
    // Dashboards and alerts: promtool (check/test rules, check metrics) and a real Prometheus
    // server that evaluates every dashboard and rule expression against a live gatewayd.
    "prometheus",
    // `gatewayd mcp` e2e test: a venv for the official MCP Python SDK (deps/mcp_sdk.rs).
    "python3-venv",
    // dist: dpkg-shlibdeps (the package's library dependencies) and lintian (the package's checks).
    "dpkg-dev",
    "lintian",
    // vm-test systemd: a bookworm root file system from Debian's packages (mmdebstrap), made into
    // an ext4 image with the run's files written in (mke2fs -d, debugfs).
    "mmdebstrap",
    "e2fsprogs",
    // OIDC login tests: node runs the npm OIDC provider (oauth2-mock-server, see `npm_tools`);
    // one login runs in a real headless Chromium driven over WebDriver by chromedriver.
    "nodejs",
    "chromium",
    "chromium-driver",
];

/// Services apt starts on install (prometheus brings prometheus-node-exporter, which takes
/// :9100). Tests and benchmarks start their own instances on their own ports; system-wide ones
/// would only take ports and memory.
const SYSTEM_SERVICES: &[&str] = &["redis-server", "nginx", "haproxy", "prometheus", "prometheus-node-exporter"];

/// aya-build builds the eBPF programs with this toolchain (`rustup run nightly`); cargo-fuzz
/// needs it too (sanitizer and coverage flags).
pub const NIGHTLY: &str = "nightly";

/// The bpf-linker release known to work with the pinned aya crates (see /work/shared/toolchain.md).
const BPF_LINKER_VERSION: &str = "^0.13";

/// cargo-fuzz, pinned: `cargo xtask fuzz` (and `test`) rely on its flags and defaults.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn ensure() -> Result<()> {
    apt_packages()?;
    npm_tools()?;
    rust_components()?;
    bpf_linker()?;
    cargo_fuzz()?;
    mcp_sdk::ensure()
}

/// npm tools of the e2e tests, pinned with their dependencies by `xtask/npm/package-lock.json`:
/// `oauth2-mock-server`, a maintained OIDC provider (discovery, JWKS, authorization code with PKCE
/// S256 verified at the token endpoint, refresh, end_session) whose hooks let a test steer token
/// lifetimes and refusals. Installed with `npm ci` into `target/npm` (the tests look there),
/// again only when the lock file changed.
fn npm_tools() -> Result<()> {
    let source = workspace_root().join("xtask/npm");
    let target = workspace_root().join("target/npm");
    let lock = fs::read(source.join("package-lock.json")).context("xtask/npm/package-lock.json")?;
    let stamp = target.join(".installed-lock.json");
    if fs::read(&stamp).is_ok_and(|installed| installed == lock) {
        return Ok(());
    }
    if !succeeds(Command::new("npm").arg("--version")) {
        // Debian's nodejs does not bring npm (NodeSource's does).
        exec(as_root("apt-get").args(["install", "-y", "npm"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    fs::create_dir_all(&target)?;
    for file in ["package.json", "package-lock.json"] {
        fs::copy(source.join(file), target.join(file)).with_context(|| format!("copying xtask/npm/{file}"))?;
    }
    exec(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--prefix"]).arg(&target))
        .context("npm ci for the test tools failed")?;
    fs::write(&stamp, lock)?;
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing missing Debian packages: {}", missing.join(" "));
    exec(as_root("apt-get").arg("update"))?;
    exec(as_root("apt-get").args(["install", "-y"]).args(&missing).env("DEBIAN_FRONTEND", "noninteractive"))?;
    // All of them, not only those of the packages named: a dependency may bring one.
    for service in SYSTEM_SERVICES {
        stop_service(service);
    }
    Ok(())
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when it knows nothing about some package; the output still lists the others.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(APT_PACKAGES)
        .output()
        .context("cannot run dpkg-query: xtask expects a Debian-based machine")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let installed: BTreeSet<&str> = listing
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| *status == "install ok installed")
        .map(|(package, _)| package)
        .collect();
    Ok(APT_PACKAGES.iter().copied().filter(|p| !installed.contains(p)).collect())
}

/// Best effort: without systemd (containers) apt usually does not start services at all.
fn stop_service(service: &str) {
    if succeeds(as_root("systemctl").args(["disable", "--now", service])) {
        return;
    }
    if !succeeds(as_root("service").args([service, "stop"])) {
        eprintln!("xtask: could not stop the system {service} service (it may not be running)");
    }
}

/// `program` directly as root, through sudo otherwise.
fn as_root(program: &str) -> Command {
    if nix::unistd::geteuid().is_root() {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

fn rust_components() -> Result<()> {
    // The workspace's own toolchain needs rustfmt and clippy for `cargo xtask test`; a minimal
    // rustup profile has neither.
    let installed = capture(rustup().args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = ["rustfmt", "clippy"].into_iter().filter(|c| !has_component(&installed, c)).collect();
    if !missing.is_empty() {
        exec(rustup().args(["component", "add"]).args(&missing))?;
    }

    if !nightly_installed()? {
        bail!(
            "no `{NIGHTLY}` Rust toolchain: the eBPF programs are built with it (-Z build-std).\n\
             Install it with: rustup toolchain install {NIGHTLY} --profile minimal"
        );
    }
    let installed = capture(rustup().args([&format!("+{NIGHTLY}"), "component", "list", "--installed"]))?;
    if !has_component(&installed, "rust-src") {
        exec(rustup().args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    // In the workspace root, so a toolchain file there would be honoured.
    cmd.current_dir(workspace_root());
    cmd
}

/// Installed components are listed as `clippy-x86_64-unknown-linux-gnu` or `rust-src`.
fn has_component(listing: &str, component: &str) -> bool {
    listing.lines().any(|line| line == component || line.strip_prefix(component).is_some_and(|r| r.starts_with('-')))
}

/// Looks, rather than running `rustup +nightly`, because newer rustup would silently install it.
fn nightly_installed() -> Result<bool> {
    let listing = capture(rustup().args(["toolchain", "list"]))?;
    // `nightly-x86_64-unknown-linux-gnu`, but not a dated `nightly-2026-05-01-...`.
    Ok(listing.lines().filter_map(|line| line.split_whitespace().next()).any(|name| {
        name == NIGHTLY
            || name
                .strip_prefix(NIGHTLY)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    }))
}

fn bpf_linker() -> Result<()> {
    // Probed by running it: a nightly update removes the libLLVM it was linked against.
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    install_bpf_linker()?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails");
    }
    Ok(())
}

/// Installs the pinned cargo-fuzz unless `cargo fuzz --version` already names it.
fn cargo_fuzz() -> Result<()> {
    let wanted = format!("cargo-fuzz {CARGO_FUZZ_VERSION}");
    let installed = || capture(cargo().args(["fuzz", "--version"])).is_ok_and(|v| v.trim() == wanted);
    if installed() {
        return Ok(());
    }
    eprintln!("xtask: installing {wanted}");
    exec(
        cargo()
            .args(["install", "cargo-fuzz", "--locked", "--force", "--version", &format!("={CARGO_FUZZ_VERSION}")])
            // Keep this build out of the workspace's target dir and its fingerprints.
            .env_remove("CARGO_TARGET_DIR"),
    )
    .context("installing cargo-fuzz failed")?;
    if !installed() {
        bail!("cargo-fuzz was installed but `cargo fuzz --version` does not say `{wanted}`");
    }
    Ok(())
}

/// The default build links a system LLVM that Debian does not ship; link the nightly's own
/// libLLVM instead, with an rpath so it is found at run time.
fn install_bpf_linker() -> Result<()> {
    let sysroot = capture(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = llvm_dylib(&lib_dir)?;
    let version = capture(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))?;
    let major = llvm_major(&version)?;
    let lib_dir = lib_dir.to_str().context("nightly sysroot path is not UTF-8")?;
    // Unit-separated so a path with spaces stays one argument.
    let rustflags =
        ["-L", lib_dir, "-l", &format!("dylib={llvm}"), "-C", &format!("link-arg=-Wl,-rpath,{lib_dir}")].join("\x1f");
    let features = format!("llvm-{major},no-llvm-linking");
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} against {llvm} (takes a minute or two)");
    exec(
        cargo()
            .args(["install", "bpf-linker", "--locked", "--force", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", &features])
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env_remove("RUSTFLAGS")
            // Keep this build out of the workspace's target dir and its fingerprints.
            .env_remove("CARGO_TARGET_DIR"),
    )
    .with_context(|| format!("installing bpf-linker for LLVM {major} (the nightly's LLVM) failed"))
}

/// The file name stem `LLVM-22-rust-1.97.0-nightly` of `libLLVM-22-rust-1.97.0-nightly.so`.
fn llvm_dylib(lib_dir: &Path) -> Result<String> {
    let entries = fs::read_dir(lib_dir).with_context(|| format!("cannot list {}", lib_dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some(name.strip_prefix("lib")?.strip_suffix(".so")?.to_owned()))
        .filter(|stem| stem.starts_with("LLVM-"))
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| format!("no libLLVM-*.so in {}", lib_dir.display()))
}

/// The major version from the `LLVM version: 22.1.4` line of `rustc -vV`.
fn llvm_major(rustc_version: &str) -> Result<u32> {
    rustc_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next()?.trim().parse().ok())
        .with_context(|| format!("no LLVM version in `rustc +{NIGHTLY} -vV` output:\n{rustc_version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_is_read_from_rustc_version() {
        let out = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(out).ok(), Some(22));
        assert!(llvm_major("rustc 1.97.0-nightly\n").is_err());
    }

    #[test]
    fn components_match_with_or_without_target_suffix() {
        let listing = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n";
        assert!(has_component(listing, "rust-src"));
        assert!(has_component(listing, "cargo"));
        assert!(!has_component(listing, "clippy"));
        assert!(!has_component("rust-std-x86_64-unknown-linux-gnu\n", "rust-src"));
    }
}
