//! `cargo xtask test`: everything CI checks (`.ci/run`), in order, stopping at the first failure.
//! The eBPF tests attach real programs in private network namespaces, so this runs as root.

use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::{
    cmd::{cargo, exec, seconds, timed},
    deps,
};

/// Cargo invocations, run in the workspace root. No `--workspace`: that would take in
/// gateway-ebpf, which only builds for the BPF target (gateway-userspace's build script does
/// that), so these cover the default members.
const STEPS: &[(&str, &[&str])] = &[
    ("fmt", &["fmt", "--all", "--", "--check"]),
    // The fuzz targets are their own workspace (excluded above).
    ("fmt-fuzz", &["fmt", "--manifest-path", "fuzz/Cargo.toml", "--all", "--", "--check"]),
    ("clippy", &["clippy", "--locked", "--all-targets", "--", "-D", "warnings"]),
    // Unit, integration (eBPF in netns included) and doc tests.
    ("test", &["test", "--locked"]),
];

pub fn run() -> Result<()> {
    let mut summary = Vec::new();
    let result = run_steps(&mut summary);
    print_summary(&summary);
    result
}

fn run_steps(summary: &mut Vec<(&'static str, Duration, bool)>) -> Result<()> {
    let mut step = |name: &'static str, f: &dyn Fn() -> Result<()>| {
        let (elapsed, result) = timed(name, f);
        summary.push((name, elapsed, result.is_ok()));
        result.with_context(|| format!("test step `{name}` failed"))
    };
    step("deps", &deps::ensure)?;
    for (name, args) in STEPS {
        step(name, &|| exec(cargo().args(*args)))?;
    }
    // Every fuzz target, for a bounded time each, from its seed corpus (crashes fail the step).
    step("fuzz", &|| crate::fuzz::run_targets(None, crate::fuzz::DEFAULT_SECONDS))?;
    // Kernel-dependent tests (kTLS, 5.10/6.1/6.12) in qemu guests.
    step("vm-test", &|| crate::vm_test::run(crate::cmd::workspace_root(), None))?;
    Ok(())
}

fn print_summary(steps: &[(&str, Duration, bool)]) {
    eprintln!("\nxtask test summary:");
    for (name, elapsed, ok) in steps {
        eprintln!("  {:<6}  {:<8}  {:>8}", if *ok { "ok" } else { "FAILED" }, name, seconds(*elapsed));
    }
    let total: Duration = steps.iter().map(|(_, elapsed, _)| *elapsed).sum();
    eprintln!("  total             {:>8}", seconds(total));
}
