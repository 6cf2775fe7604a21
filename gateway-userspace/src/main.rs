//! `gatewayd`: a thin script over the library.

use std::process::ExitCode;

use clap::Parser;
use gateway_userspace::{
    cli::{Cli, Command},
    config::{Config, EMBEDDED_DEFAULTS},
    daemon,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => match daemon::run(cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatewayd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match Config::load_file(&file) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} services, {} routes)",
                    file.display(),
                    c.listeners.len(),
                    c.services.len(),
                    c.routes.routes().len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Defaults => {
            print!("{EMBEDDED_DEFAULTS}");
            ExitCode::SUCCESS
        }
    }
}
