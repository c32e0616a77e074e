//! The `paoding` command. A thin layer over the library: parse arguments, call, print, and
//! turn errors into one message and a documented exit code.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use paoding_cli::{import, profile, report::InspectReport};

/// Exit code: success (the model fits, or nothing was checked).
const EXIT_OK: u8 = 0;
/// Exit code: the model does not fit the profile.
const EXIT_DOES_NOT_FIT: u8 = 1;
/// Exit code: bad usage or bad input (unreadable model, bad profile, ...).
const EXIT_INPUT_ERROR: u8 = 2;

#[derive(Parser)]
#[command(
    name = "paoding",
    version,
    about = "Data-free pruning of neural networks to fit microcontrollers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Per-layer parameters, weight bytes, MACs and activation memory; with a profile, a
    /// verdict per constraint. Exit 0 fits (or no profile), 1 does not fit, 2 error.
    Inspect {
        /// The ONNX model.
        model: String,
        /// A profile file or the name of a built-in one (see `paoding profiles`).
        #[arg(long)]
        profile: Option<String>,
        /// Print the report as JSON (schema paoding.inspect/1).
        #[arg(long)]
        json: bool,
    },
    /// List the built-in hardware profiles and their budgets.
    Profiles {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(EXIT_INPUT_ERROR)
        }
    }
}

fn run(command: Command) -> Result<u8, String> {
    match command {
        Command::Inspect {
            model,
            profile,
            json,
        } => {
            let profile = profile
                .map(|p| profile::load(&p))
                .transpose()
                .map_err(|e| e.to_string())?;
            let imported = import::import_onnx(model.as_ref()).map_err(|e| e.to_string())?;
            let report = InspectReport::new(&model, &imported, profile.as_ref())
                .map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", report.to_text());
            }
            Ok(if report.fits == Some(false) {
                EXIT_DOES_NOT_FIT
            } else {
                EXIT_OK
            })
        }
        Command::Profiles { json } => {
            let profiles = profile::built_in().map_err(|e| e.to_string())?;
            if json {
                let list: Vec<_> = profiles
                    .iter()
                    .map(|p| serde_json::json!({"profile": p, "budget": p.budget().ok()}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "{:<16} {:>10} {:>10} {:>12}  description",
                    "name", "flash B", "ram B", "MACs"
                );
                for p in &profiles {
                    let b = p.budget().map_err(|e| e.to_string())?;
                    let macs = b.macs.map_or("-".to_string(), |m| m.to_string());
                    println!(
                        "{:<16} {:>10} {:>10} {:>12}  {}",
                        p.name, b.flash_bytes, b.ram_bytes, macs, p.description
                    );
                }
                println!("\n(budgets are what is left for the model after the firmware's reserved shares)");
            }
            Ok(EXIT_OK)
        }
    }
}
