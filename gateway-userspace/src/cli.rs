//! Command line: `gatewayd [--config FILE]` runs the daemon; subcommands are tools around it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "gatewayd", version, about = "eBPF-accelerated edge API gateway")]
pub struct Cli {
    /// Configuration file (TOML). Without it, gatewayd runs on its embedded defaults.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Admin socket of the running daemon. Default: `admin.socket` from --config, else
    /// /run/gatewayd/admin.sock.
    #[arg(long, global = true, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a configuration file; exit 0 if it is valid, 1 with the problems if not.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    Defaults,
    /// Ask the running daemon (through its admin socket) to reload its configuration.
    Reload,
    /// Show the running daemon's status (through its admin socket).
    Status,
    /// Revoke a token by its `jti` until it expires (through the admin socket; with a shared
    /// revocation store, every node refuses it).
    Revoke {
        /// The token's `jti` claim.
        #[arg(long)]
        jti: String,
        /// When the revocation may lapse: the token's `exp`, as unix seconds or RFC 3339
        /// (`2026-11-24T12:00:00Z`).
        #[arg(long, value_name = "TIME")]
        until: String,
    },
}
