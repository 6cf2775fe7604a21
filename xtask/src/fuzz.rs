//! `cargo xtask fuzz`: runs the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz: libFuzzer
//! with AddressSanitizer, nightly) for a bounded time each, starting from the seed corpus kept in
//! `fuzz/corpus/<target>/`. `cargo xtask test` runs every target this way.
//!
//! Inputs a run finds go to a scratch corpus under `fuzz/target/`, never into the repository's
//! seeds (libFuzzer writes new inputs only to the first corpus directory it is given). A crash,
//! a failed assertion, a leak or a hang fails the run, naming the reproducer libFuzzer saved.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cmd::{capture, exec, workspace_root},
    deps,
};

/// Seconds each target runs for in `cargo xtask test`.
pub const DEFAULT_SECONDS: u64 = 30;

/// An input that takes longer than this is reported as a hang (libFuzzer `-timeout`). Generous:
/// the machine may be busy with other builds, and the slowest target parses a whole config.
const INPUT_TIMEOUT_SECONDS: u64 = 20;

#[derive(clap::Args)]
pub struct Options {
    /// Run only this target (default: every target in fuzz/Cargo.toml).
    #[arg(long)]
    target: Option<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    seconds: u64,
}

/// `cargo xtask fuzz`.
pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    run_targets(opts.target.as_deref(), opts.seconds)
}

/// Builds every target once, then runs `only` (or every target) for `seconds` each. Every
/// target runs even after one failed, so one CI run reports every crash.
pub fn run_targets(only: Option<&str>, seconds: u64) -> Result<()> {
    if seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let all = targets()?;
    let selected: Vec<&str> = match only {
        Some(name) if all.contains(name) => vec![name],
        Some(name) => bail!("no fuzz target `{name}`; the targets are: {}", join(&all)),
        None => all.iter().map(String::as_str).collect(),
    };
    // One build for all targets: `fuzz run` below then finds them up to date.
    exec(&mut cargo_fuzz("build")).context("building the fuzz targets failed")?;
    let failed: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|target| match run_target(target, seconds) {
            Ok(()) => false,
            Err(error) => {
                eprintln!("xtask: fuzz target `{target}` FAILED: {error:#}");
                true
            }
        })
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (reproducers above)", failed.join(", "));
    }
    Ok(())
}

/// The targets in fuzz/Cargo.toml, as cargo-fuzz lists them.
fn targets() -> Result<BTreeSet<String>> {
    let listing = capture(&mut cargo_fuzz("list"))?;
    let targets: BTreeSet<String> =
        listing.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` names no target in {}", fuzz_dir().display());
    }
    Ok(targets)
}

fn run_target(target: &str, seconds: u64) -> Result<()> {
    let seeds = fuzz_dir().join("corpus").join(target);
    if !has_files(&seeds)? {
        bail!("no seed corpus in {}: every target needs a few seed inputs there", seeds.display());
    }
    let scratch = fuzz_dir().join("target").join("xtask-corpus").join(target);
    if scratch.exists() {
        fs::remove_dir_all(&scratch).with_context(|| format!("cannot clear {}", scratch.display()))?;
    }
    fs::create_dir_all(&scratch).with_context(|| format!("cannot create {}", scratch.display()))?;
    let artifacts = fuzz_dir().join("artifacts").join(target);
    fs::create_dir_all(&artifacts).with_context(|| format!("cannot create {}", artifacts.display()))?;
    let before = files(&artifacts)?;

    let mut prefix = artifacts.clone().into_os_string();
    prefix.push("/");
    let mut artifact_prefix = std::ffi::OsString::from("-artifact_prefix=");
    artifact_prefix.push(prefix);
    let result = exec(
        cargo_fuzz("run")
            .arg(target)
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
            .arg(artifact_prefix)
            .arg("-print_final_stats=1"),
    );
    if result.is_ok() {
        return Ok(());
    }
    let found: Vec<PathBuf> = files(&artifacts)?.difference(&before).cloned().collect();
    if found.is_empty() {
        return result.context("no reproducer was saved (the build or the fuzzer itself failed)");
    }
    for input in &found {
        let input = input.strip_prefix(workspace_root()).unwrap_or(input).display();
        eprintln!(
            "xtask: reproducer: {input}\n  replay:   cargo +nightly fuzz run {target} {input}\n  \
             minimise: cargo +nightly fuzz tmin {target} {input}"
        );
    }
    let names: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
    result.with_context(|| format!("reproducer: {}", names.join(", ")))
}

/// `cargo +nightly fuzz <subcommand>` on the fuzz/ project (cargo-fuzz needs nightly's -Z flags),
/// from the workspace root so the paths it prints replay from there.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).arg(format!("+{}", deps::NIGHTLY)).args(["fuzz", subcommand]);
    cmd.arg("--fuzz-dir").arg(fuzz_dir());
    // The fuzz workspace has its own target dir (fuzz/target), whatever the caller's is; and
    // `cargo xtask` runs under the stable cargo, whose path cargo puts in $CARGO.
    cmd.env_remove("CARGO_TARGET_DIR").env_remove("CARGO");
    cmd
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

fn has_files(dir: &Path) -> Result<bool> {
    Ok(dir.is_dir() && !files(dir)?.is_empty())
}

fn files(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let mut files = BTreeSet::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            files.insert(entry.path());
        }
    }
    Ok(files)
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}
