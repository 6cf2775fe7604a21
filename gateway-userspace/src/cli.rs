//! Command line: `gatewayd [--config FILE]` runs the daemon; subcommands are tools around it.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Global options are not `global`: each subcommand lists only those that mean something for it
/// (its `--help` is what an operator reads).
#[derive(Debug, Parser)]
#[command(name = "gatewayd", version, about = "eBPF-accelerated edge API gateway")]
pub struct Cli {
    /// Configuration file (TOML). Without it, gatewayd runs on its embedded defaults.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Admin socket of the running daemon, for the subcommands that use it (also accepted after
    /// them, where their help lists it).
    #[arg(long, value_name = "PATH", hide = true)]
    pub admin_socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How a subcommand finds the running daemon's admin socket.
#[derive(Debug, Default, Clone, Args)]
pub struct AdminArgs {
    /// The running daemon's configuration file: its `admin.socket` is used.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Admin socket of the running daemon. Default: `admin.socket` from --config, else
    /// /run/gatewayd/admin.sock.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Run {
        /// Configuration file (TOML). Without it, gatewayd runs on its embedded defaults.
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; exit 0 if it is valid, 1 with the problems if not.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    Defaults,
    /// Ask the running daemon (through its admin socket) to reload its configuration.
    Reload(AdminArgs),
    /// Show the running daemon's status (through its admin socket).
    Status(AdminArgs),
    /// A live view of the running daemon (through its admin socket): traffic, errors and
    /// latency per route, TLS, limits, XDP drops, Redis/IdP health, CPU. Keys: s sort,
    /// / filter routes, p pause, q quit.
    Top {
        /// Time between refreshes (at least 100ms).
        #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = humantime::parse_duration)]
        interval: Duration,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// The XDP guard: top offenders, run-time blocks, self-test.
    Xdp {
        #[command(subcommand)]
        command: XdpCommand,
    },
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
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A Model Context Protocol server for agents, over stdio (default) or streamable HTTP on
    /// `admin.mcp_listen` (--http). Talks to the running daemon through its admin socket; tools
    /// that change something only create pending changes that a person approves.
    Mcp {
        /// Serve MCP's streamable HTTP transport on `admin.mcp_listen` (from --config) instead of
        /// stdio.
        #[arg(long)]
        http: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Approve and apply a pending change (requested by an agent through `gatewayd mcp`).
    Approve {
        /// The change id (`chg-…`).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Reject a pending change.
    Reject {
        /// The change id (`chg-…`).
        id: String,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List changes requested by agents, with the approval token of each pending one (to hand
    /// to a person approving from elsewhere).
    Changes(AdminArgs),
    /// Certificates for development and tests.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum XdpCommand {
    /// List the sources (and deny entries) with the most drops.
    Top {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        count: usize,
        /// Print the admin endpoint's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Drop everything from CIDR (or an address) at the NIC, until unblocked or for a while.
    Block {
        /// e.g. 203.0.113.0/24, 2001:db8::/48 or 198.51.100.7
        cidr: String,
        /// How long, e.g. 10m, 2h; default: until `gatewayd xdp unblock`.
        #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a run-time block.
    Unblock {
        /// A prefix blocked with `gatewayd xdp block`.
        cidr: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run the guard's programs on crafted frames in this kernel (BPF_PROG_TEST_RUN); needs root.
    /// Exits 1 if any case fails.
    Selftest {
        /// Also attach to this loopback-like interface in every mode and judge real packets sent
        /// to 127.0.0.1, and check connection steering on real sockets.
        #[arg(long, value_name = "IFACE")]
        attach: Option<String>,
        /// With --attach: IFACE is one end of a veth pair and this is the other; test frames are
        /// injected here, and native (driver-mode) XDP must attach.
        #[arg(long, value_name = "PEER", requires = "attach")]
        peer: Option<String>,
    },
    /// Measure ns per packet of the guard's paths with BPF_PROG_TEST_RUN; needs root.
    #[command(hide = true)]
    Bench {
        /// Runs per measurement.
        #[arg(long, default_value_t = 2_000_000)]
        repeat: u32,
        /// Distinct sources for the new-source path.
        #[arg(long, default_value_t = 20_000)]
        sources: u32,
        /// Rounds; the best of each measurement is kept.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Write the Markdown report here (else print it).
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
