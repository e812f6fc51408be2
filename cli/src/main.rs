//! `hull`: see the crate documentation of `hull_cli`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hull_config::Config;

#[derive(Debug, Parser)]
#[command(name = "hull", version = hull_cli::version(), about = "Hull: VM-isolated containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check whether Hull can run pods on this host, and with which backend.
    /// Exits non-zero when it cannot.
    Check {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// The configuration file (default: $HULL_CONFIG, else /etc/hull/config.toml).
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// The guest image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the guest kernel and initramfs with guest-image/build.sh (from
    /// $HULL_SOURCE, else the source tree hull was built from).
    Build {
        /// Passed to build.sh: an agent binary to use instead of building one.
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Printed here rather than returned, so that an operator sees the
    // message without a backtrace whatever RUST_BACKTRACE says.
    run(cli).unwrap_or_else(|err| {
        eprintln!("hull: error: {err:#}");
        ExitCode::FAILURE
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { json, config } => {
            let path = config.unwrap_or_else(|| Config::path(None));
            let report = hull_cli::check::run(&path);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                );
            } else {
                print!("{}", hull_cli::check::render(&report));
            }
            Ok(if report.verdict.can_run {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Image {
            command: ImageCommand::Build { args },
        } => {
            hull_cli::image::build(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("hull {}", hull_cli::version());
            Ok(ExitCode::SUCCESS)
        }
    }
}
