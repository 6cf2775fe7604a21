//! `gatewayd`: a thin script over the library.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use gateway_userspace::{
    admin,
    cli::{AdminArgs, CertsCommand, Cli, Command, XdpCommand},
    config::{Config, EMBEDDED_DEFAULTS},
    daemon, ebpf, mcp,
    tls::certs,
    top,
};
use http::Method;

/// mimalloc: per-thread free lists suit thread-per-core workers, and it returns freed pages to
/// the system (glibc's malloc kept hundreds of MB after 10k idle connections closed; see
/// bench/results/proxy-idle-memory.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_ADMIN_SOCKET: &str = "/run/gatewayd/admin.sock";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = Command::Run { config: None };
    let result = match cli.command.as_ref().unwrap_or(&run) {
        Command::Run { config } => {
            gateway_userspace::worker::huge_pages::disable();
            daemon::run(config.clone().or(cli.config.clone())).map_err(|e| e.to_string())
        }
        Command::CheckConfig { file } => check_config(file),
        Command::Defaults => {
            print!("{EMBEDDED_DEFAULTS}");
            Ok(())
        }
        Command::Reload(admin) => admin_call(&cli, admin, Method::POST, "/v1/reload"),
        Command::Status(admin) => admin_call(&cli, admin, Method::GET, "/v1/status"),
        Command::Top { interval, admin } => live_view(&cli, admin, *interval),
        Command::Xdp { command } => xdp(&cli, command),
        Command::Revoke { jti, until, admin } => revoke(&cli, admin, jti, until),
        Command::Mcp { http, admin } => run_mcp(&cli, admin, *http),
        Command::Approve { id, admin } => {
            change_id(id).and_then(|id| admin_call(&cli, admin, Method::POST, &format!("/v1/changes/{id}/approve")))
        }
        Command::Reject { id, reason, admin } => change_id(id).and_then(|id| {
            let body = serde_json::json!({"reason": reason});
            admin_call_with(&cli, admin, Method::POST, &format!("/v1/changes/{id}/reject"), Some(body))
        }),
        Command::Changes(admin) => admin_call(&cli, admin, Method::GET, "/v1/changes?tokens=1"),
        Command::Certs(CertsCommand::Init { out, cn, san, days, client_cn, key_type, force }) => {
            let options = certs::InitOptions {
                out: out.clone(),
                cn: cn.clone(),
                sans: san.clone(),
                days: *days,
                client_cn: client_cn.clone(),
                key_type: *key_type,
                force: *force,
            };
            certs_init(&options)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn certs_init(options: &certs::InitOptions) -> Result<(), String> {
    let files = certs::init(options).map_err(|e| e.to_string())?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}

fn check_config(file: &std::path::Path) -> Result<(), String> {
    let c = Config::load_file(file).map_err(|e| e.to_string())?;
    println!(
        "{}: ok ({} listeners, {} services, {} routes)",
        file.display(),
        c.listeners.len(),
        c.services.len(),
        c.routes.routes().len()
    );
    Ok(())
}

/// The admin socket: --admin-socket, else the one --config names, else the default (each option
/// after the subcommand, or before it).
fn admin_socket(cli: &Cli, admin: &AdminArgs) -> Result<PathBuf, String> {
    if let Some(p) = admin.admin_socket.as_ref().or(cli.admin_socket.as_ref()) {
        return Ok(p.clone());
    }
    match admin.config.as_ref().or(cli.config.as_ref()) {
        Some(file) => {
            let c = Config::load_file(file).map_err(|e| e.to_string())?;
            c.admin_socket
                .ok_or_else(|| format!("{}: the admin socket is disabled (admin.socket = \"\")", file.display()))
        }
        None => Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET)),
    }
}

fn admin_call(cli: &Cli, admin: &AdminArgs, method: Method, path: &str) -> Result<(), String> {
    admin_call_with(cli, admin, method, path, None)
}

fn admin_call_with(
    cli: &Cli,
    admin: &AdminArgs,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(), String> {
    let socket = admin_socket(cli, admin)?;
    let answer = admin::call_blocking(&socket, method, path, body).map_err(|e| e.to_string())?;
    println!("{answer:#}");
    Ok(())
}

/// A change id as typed (`chg-` and hex digits): nothing else goes into the admin path.
fn change_id(id: &str) -> Result<&str, String> {
    match id.strip_prefix("chg-") {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(id),
        _ => Err(format!("{id:?}: a change id looks like chg-0123abcd4567")),
    }
}

fn run_mcp(cli: &Cli, admin: &AdminArgs, http: bool) -> Result<(), String> {
    let socket = admin_socket(cli, admin)?;
    let transport = if http {
        let file = admin
            .config
            .as_ref()
            .or(cli.config.as_ref())
            .ok_or("--http serves on admin.mcp_listen: give the daemon's --config")?;
        let c = Config::load_file(file).map_err(|e| e.to_string())?;
        let addr = c.mcp_listen.ok_or_else(|| {
            format!("{}: admin.mcp_listen is not set (streamable HTTP is off by default)", file.display())
        })?;
        mcp::Transport::Http(addr)
    } else {
        mcp::Transport::Stdio
    };
    mcp::run(mcp::McpOptions { socket, transport }).map_err(|e| e.to_string())
}

fn live_view(cli: &Cli, admin: &AdminArgs, interval: std::time::Duration) -> Result<(), String> {
    if interval < std::time::Duration::from_millis(100) {
        return Err(format!("--interval {interval:?}: at least 100ms"));
    }
    let socket = admin_socket(cli, admin)?;
    top::run(&top::TopOptions { socket, interval }).map_err(|e| e.to_string())
}

fn xdp(cli: &Cli, command: &XdpCommand) -> Result<(), String> {
    match command {
        XdpCommand::Top { count, json, admin } => {
            let socket = admin_socket(cli, admin)?;
            let answer = admin::call_blocking(&socket, Method::GET, &format!("/v1/xdp/top?n={count}"), None)
                .map_err(|e| e.to_string())?;
            if *json {
                println!("{answer:#}");
            } else {
                print!("{}", admin::format_top(&answer));
            }
            Ok(())
        }
        XdpCommand::Block { cidr, duration, admin } => {
            let net = ebpf::parse_list_entry(cidr)?;
            let body = serde_json::json!({"cidr": net.to_string(), "for_secs": duration.map(|d| d.as_secs())});
            admin_call_with(cli, admin, Method::POST, "/v1/xdp/block", Some(body))
        }
        XdpCommand::Unblock { cidr, admin } => {
            let net = ebpf::parse_list_entry(cidr)?;
            let body = serde_json::json!({"cidr": net.to_string()});
            admin_call_with(cli, admin, Method::POST, "/v1/xdp/unblock", Some(body))
        }
        XdpCommand::Selftest { attach, peer } => {
            let mut report = ebpf::selftest::run().map_err(|e| e.to_string())?;
            if let Some(iface) = attach {
                let attached = ebpf::selftest::run_attach(iface, peer.as_deref()).map_err(|e| e.to_string())?;
                report.cases.extend(attached.cases);
            }
            println!("{report}");
            if report.passed() { Ok(()) } else { Err("self-test failed".into()) }
        }
        XdpCommand::Bench { repeat, sources, rounds, out } => {
            let report = ebpf::bench::run(*repeat, *sources, *rounds).map_err(|e| e.to_string())?;
            let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let markdown = report.markdown(&date[..10]);
            match out {
                Some(path) => std::fs::write(path, &markdown).map_err(|e| format!("{}: {e}", path.display()))?,
                None => print!("{markdown}"),
            }
            Ok(())
        }
    }
}

/// `--until` as unix seconds or an RFC 3339 time.
fn revoke(cli: &Cli, admin: &AdminArgs, jti: &str, until: &str) -> Result<(), String> {
    let until = match until.parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_rfc3339_weak(until)
            .map_err(|e| format!("--until {until:?}: expected unix seconds or an RFC 3339 time ({e})"))?
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("--until {until:?} is before 1970"))?
            .as_secs(),
    };
    let socket = admin_socket(cli, admin)?;
    let body = serde_json::json!({"jti": jti, "until": until});
    let answer = admin::call_blocking(&socket, Method::POST, "/v1/revoke", Some(body)).map_err(|e| e.to_string())?;
    println!("{answer:#}");
    if answer["queued"] == true {
        // Still a success (exit 0): the node refuses the token now and publishes it itself.
        eprintln!(
            "revoked on this node; redis is unreachable, so the revocation is queued and published when it is back"
        );
    }
    Ok(())
}
