//! `cargo xtask build`: the default workspace members (the eBPF object comes along through
//! gateway-userspace's build script).

use anyhow::Result;

use crate::{
    cmd::{cargo, exec},
    deps,
};

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    deps::ensure()?;
    let mut cmd = cargo();
    cmd.arg("build");
    if opts.release {
        cmd.arg("--release");
    }
    exec(&mut cmd)
}
