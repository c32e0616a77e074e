//! The `paoding` command. A thin layer over the library: parse arguments, call, print, and
//! turn errors into one message and a documented exit code.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use paoding_cli::error::CliError;
use paoding_cli::prune::{self as prune_cmd, EvalData, ProbeSettings};
use paoding_cli::{export, import, npy, output, profile, report::InspectReport};
use paoding_core::probes::Probes;
use paoding_core::prune::PruneOptions;

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
    /// Prune a model by a ratio, write it as ONNX, and report sizes and fidelity.
    /// Exit 0 on success, 2 on bad arguments or an unprunable model (no output is written).
    Prune(PruneArgs),
    /// List the built-in hardware profiles and their budgets.
    Profiles {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct PruneArgs {
    /// The ONNX model.
    model: String,
    /// Fraction of units (neurons, channels) to remove: per layer with --scope uniform,
    /// overall with --scope global.
    #[arg(long)]
    ratio: f64,
    /// merge (scaled merge + refit, the default), paoding (PAODING's criteria), magnitude (L1 baseline).
    #[arg(long, default_value = "merge", value_parser = prune_cmd::parse_method)]
    method: paoding_core::prune::Method,
    /// uniform (the same ratio per layer) or global (ranked across layers).
    #[arg(long, default_value = "uniform", value_parser = prune_cmd::parse_scope)]
    scope: paoding_core::prune::Scope,
    /// Skip the least-squares refit of the merge method.
    #[arg(long)]
    no_refit: bool,
    /// Keep every layer's width a multiple of N (for SIMD kernels).
    #[arg(long, default_value_t = 1)]
    round_to: usize,
    /// Fewest units any layer keeps.
    #[arg(long, default_value_t = 1)]
    min_units: usize,
    /// Largest fraction of one layer --scope global may remove.
    #[arg(long, default_value_t = 0.9)]
    max_layer_ratio: f64,
    #[command(flatten)]
    probes: ProbeArgs,
    /// Real inputs to measure fidelity on (.npy, first axis = batch).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Labels of --data (.npy of class indices), for accuracy before and after.
    #[arg(long, requires = "data")]
    labels: Option<PathBuf>,
    /// Where to write the pruned ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the report as JSON (schema paoding.prune/1).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ProbeArgs {
    /// Range of the model's inputs, for data-free probes: lo,hi.
    #[arg(long, default_value = "0,1", value_parser = prune_cmd::parse_range)]
    input_range: (f32, f32),
    /// Number of probe inputs.
    #[arg(long, default_value_t = 1000)]
    probe_count: usize,
    /// Seed of the probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
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
        Command::Prune(args) => prune(args).map_err(|e| e.to_string()),
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

fn prune(a: PruneArgs) -> Result<u8, CliError> {
    let imported = import::import_onnx(a.model.as_ref())?;
    let g = &imported.graph;
    let options = PruneOptions {
        method: a.method,
        scope: a.scope,
        ratio: a.ratio,
        refit: a.no_refit.then_some(false),
        min_units: a.min_units,
        round_to: a.round_to.max(1),
        max_layer_ratio: a.max_layer_ratio,
        input_range: a.probes.input_range,
        ..Default::default()
    };
    if a.probes.probe_count == 0 {
        return Err(CliError::Usage("--probe-count must be at least 1".into()));
    }
    let probes = ProbeSettings {
        count: a.probes.probe_count,
        input_range: a.probes.input_range,
        seed: a.probes.seed,
    };
    let data = match &a.data {
        Some(path) => {
            let sample = g.values[g.input].len();
            let (n, xs) = npy::read_batch(path, sample)?;
            let labels = a
                .labels
                .as_deref()
                .map(|l| npy::read_labels(l, n))
                .transpose()?;
            Some(EvalData {
                inputs: Probes::from_batch(xs, sample)?,
                labels,
                source: format!("{} ({n} samples)", path.display()),
            })
        }
        None => None,
    };
    let (pruned, report) = prune_cmd::prune(&a.model, g, &options, &probes, data.as_ref())?;
    let bytes = export::write_onnx(
        &pruned,
        &format!("pruned from {} by paoding prune", a.model),
    )?;
    output::write_atomic(&a.output, &bytes).map_err(|source| CliError::Io {
        path: a.output.clone(),
        source,
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Usage(e.to_string()))?
        );
    } else {
        print!("{}", report.to_text());
        println!("\nwrote {}", a.output.display());
    }
    Ok(EXIT_OK)
}
