//! `cargo xtask`: the project's build and test pipeline. `run` and `test` are the README's contract
//! and CI runs `test` (`.ci/run`) on fresh machines, so every command installs what it needs first
//! (see `deps`).

mod bench;
mod build;
mod cmd;
mod deps;
mod dist;
mod fuzz;
mod gwconf;
mod layers;
mod run;
mod test;
mod vm;
mod vm_cpusteer;
mod vm_systemd;
mod vm_test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test gatewayd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the other commands need: Debian packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz.
    Deps,
    /// Build the default workspace members (the eBPF programs included).
    Build(build::Options),
    /// Build and run gatewayd (release by default) until Ctrl-C.
    Run(run::Options),
    /// What CI runs: fmt check, clippy, all tests (eBPF ones included; needs root), every fuzz
    /// target for a bounded time, the qemu tests.
    Test,
    /// Run the fuzz targets (all, or one) for a bounded time each from their seed corpus.
    Fuzz(fuzz::Options),
    /// Kernel-dependent tests (kTLS, old kernels) inside qemu.
    VmTest {
        /// Run only this scenario.
        #[arg(long)]
        scenario: Option<String>,
    },
    /// The daemon's module import graph: cycles and imports that point up a layer (fails on any).
    Layers(layers::Options),
    /// Build the Debian package target/dist/gatewayd_<version>_amd64.deb (checked with lintian).
    Dist(dist::Options),
    /// Run a benchmark and write bench/results/<TARGET>.md.
    Bench(bench::Options),
    /// The c100k benchmark's client, run inside its guest.
    #[command(hide = true)]
    C100kClient {
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
    /// The ktls-idle benchmark's client, run inside its guest.
    #[command(hide = true)]
    KtlsIdleClient(bench::ktls_idle::client::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // While still single-threaded (it changes the environment): children such as aya-build look
    // for bpf-linker in ~/.cargo/bin.
    match cmd::put_cargo_bin_on_path().and_then(|()| dispatch(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            // The whole context chain, without a backtrace: these errors name the failing command.
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Deps => deps::ensure()?,
        Command::Build(opts) => build::run(&opts)?,
        Command::Run(opts) => return run::run(&opts),
        Command::Test => test::run()?,
        Command::VmTest { scenario } => {
            deps::ensure()?;
            vm_test::run(cmd::workspace_root(), scenario.as_deref())?
        }
        Command::Fuzz(opts) => fuzz::run(&opts)?,
        Command::Layers(opts) => layers::run(&opts)?,
        Command::Dist(opts) => {
            dist::run(&opts)?;
        }
        Command::Bench(opts) => bench::run(&opts)?,
        Command::C100kClient { connections, port } => bench::c100k::client(connections, port)?,
        Command::KtlsIdleClient(opts) => bench::ktls_idle::client::run(&opts)?,
    }
    Ok(ExitCode::SUCCESS)
}
