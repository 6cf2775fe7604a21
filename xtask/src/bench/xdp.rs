//! `cargo xtask bench xdp`: nanoseconds per packet of the XDP guard's paths (known-source pass,
//! drops, new-source insert) next to an empty XDP program measured in the same run, through
//! `BPF_PROG_TEST_RUN` (`gatewayd xdp bench`, release build). Writes `bench/results/xdp.md`.
//! Needs root.

use anyhow::{Context as _, Result};

use crate::{
    cmd::{cargo, exec, workspace_root},
    deps,
};

pub fn run() -> Result<()> {
    deps::ensure()?;
    exec(cargo().args(["build", "--release", "--locked", "-p", "gateway-userspace", "--bin", "gatewayd"]))?;
    let root = workspace_root();
    let results = root.join("bench/results");
    std::fs::create_dir_all(&results).with_context(|| format!("cannot create {}", results.display()))?;
    let out = results.join("xdp.md");
    let gatewayd = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from)
        .join("release/gatewayd");
    exec(std::process::Command::new(gatewayd).args(["xdp", "bench", "--out"]).arg(&out))?;
    print!("{}", std::fs::read_to_string(&out).with_context(|| format!("cannot read {}", out.display()))?);
    Ok(())
}
