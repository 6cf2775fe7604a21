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
    /// Certificates for development and tests.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA, a server certificate and a client certificate (ca.crt/ca.key,
    /// server.crt/server.key, client.crt/client.key and client.pem with both).
    Init {
        /// Directory to write the files to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Common name of the server certificate.
        #[arg(long, default_value = "localhost")]
        cn: String,
        /// Names of the server certificate (DNS names or IP addresses); repeat the option or
        /// separate with commas.
        #[arg(long, value_delimiter = ',', default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()])]
        san: Vec<String>,
        /// Validity of the server and client certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Common name of the client certificate.
        #[arg(long, default_value = "gatewayd-client")]
        client_cn: String,
        /// Key algorithm.
        #[arg(long, value_enum, default_value_t = crate::tls::certs::KeyType::EcdsaP256)]
        key_type: crate::tls::certs::KeyType,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}
