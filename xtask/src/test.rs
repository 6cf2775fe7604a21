//! `cargo xtask test`: everything CI checks (`.ci/run`), in order, stopping at the first failure.
//! The eBPF tests attach real programs in private network namespaces, so this runs as root.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result};

use crate::{
    cmd::{cargo, exec, seconds, timed, workspace_root},
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
    step("rules", &prometheus_rules)?;
    // The daemon's module layers: no import cycle, nothing importing a higher layer.
    step("layers", &|| crate::layers::run(&crate::layers::Options::default()))?;
    for (name, args) in STEPS {
        step(name, &|| exec(cargo().args(*args)))?;
    }
    // Every fuzz target, for a bounded time each, from its seed corpus (crashes fail the step).
    step("fuzz", &|| crate::fuzz::run_targets(None, crate::fuzz::DEFAULT_SECONDS))?;
    // Kernel-dependent tests (kTLS, 5.10/6.1/6.12) in qemu guests.
    step("vm-test", &|| crate::vm_test::run(crate::cmd::workspace_root(), None))?;
    Ok(())
}

/// The shipped alert and recording rules, with Prometheus' own promtool: syntax, then the unit
/// test of every alert. (The e2e test `dashboards` evaluates the expressions against a real
/// Prometheus scraping a real gatewayd.)
fn prometheus_rules() -> Result<()> {
    let dir = workspace_root().join("packaging/prometheus");
    exec(Command::new("promtool").args(["check", "rules", "gatewayd-rules.yml"]).current_dir(&dir))?;
    exec(Command::new("promtool").args(["test", "rules", "gatewayd-rules.test.yml"]).current_dir(&dir))
}

fn print_summary(steps: &[(&str, Duration, bool)]) {
    eprintln!("\nxtask test summary:");
    for (name, elapsed, ok) in steps {
        eprintln!("  {:<6}  {:<8}  {:>8}", if *ok { "ok" } else { "FAILED" }, name, seconds(*elapsed));
    }
    let total: Duration = steps.iter().map(|(_, elapsed, _)| *elapsed).sum();
    eprintln!("  total             {:>8}", seconds(total));
}
