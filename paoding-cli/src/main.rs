//! The `paoding` command. A thin layer over the library: parse arguments, call, print, and
//! turn errors into one message and a documented exit code.

use std::process::ExitCode;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use paoding_cli::error::CliError;
use paoding_cli::fit::{self as fit_cmd, BudgetOverrides, FitOptions};
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
        model: PathBuf,
        /// A profile file or the name of a built-in one (see `paoding profiles`).
        #[arg(long)]
        profile: Option<OsString>,
        /// Print the report as JSON (schema paoding.inspect/1).
        #[arg(long)]
        json: bool,
    },
    /// Prune a model by a ratio, write it as ONNX, and report sizes and fidelity.
    /// Exit 0 on success, 2 on bad arguments or an unprunable model (no output is written).
    Prune(PruneArgs),
    /// Prune a model the least it must to fit one or more boards' flash, RAM and compute
    /// budgets, and write the runtime model. Exit 0 if every board fits, 1 if one cannot
    /// (each explained), 2 on bad input.
    Fit(FitArgs),
    /// Run a .pdg model with the runtime over a batch of inputs (first axis = batch).
    /// Exit 2 on a corrupted blob or bad input.
    Run {
        /// The runtime model (.pdg).
        model: PathBuf,
        /// Inputs (.npy).
        #[arg(long)]
        input: PathBuf,
        /// Write the outputs here (.npy) instead of printing them.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Accuracy, agreement, KL and FGSM robustness of a candidate (.onnx or .pdg) against
    /// the original. Exit 0, or 2 on bad input.
    Eval(paoding_cli::eval::EvalArgs),
    /// Prune by every method and ratio: size against accuracy/agreement and FGSM
    /// robustness; SVG chart and CSV.
    Sweep(paoding_cli::sweep::SweepArgs),
    /// One self-contained HTML page from a fit report JSON (and optionally a sweep).
    Report(paoding_cli::html::ReportArgs),
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
    model: PathBuf,
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
    #[command(flatten)]
    widths: WidthArgs,
    #[command(flatten)]
    probes: ProbeArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Where to write the pruned ONNX model.
    #[arg(short, long)]
    output: PathBuf,
    /// Print the report as JSON (schema paoding.prune/1).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct FitArgs {
    /// The ONNX model.
    model: PathBuf,
    /// A profile file or built-in name; repeat for a fleet (then -o needs {profile}).
    #[arg(long, required = true)]
    profile: Vec<OsString>,
    /// Where to write the runtime model (.pdg); `{profile}` is replaced by the profile name.
    #[arg(short, long)]
    output: Option<OsString>,
    /// Also write the pruned model as ONNX (`{profile}` allowed).
    #[arg(long)]
    onnx: Option<OsString>,
    /// Write the report as JSON (schema paoding.fit/1).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Flash budget for the model blob, overriding the profile's (e.g. 256K).
    #[arg(long, value_parser = parse_bytes)]
    flash: Option<u64>,
    /// RAM budget for the activation arena (e.g. 64K).
    #[arg(long, value_parser = parse_bytes)]
    ram: Option<u64>,
    /// MAC budget per inference (e.g. 2M = 2,000,000).
    #[arg(long, value_parser = parse_count)]
    macs: Option<u64>,
    /// Latency budget per inference, turned into MACs with the profile's clock and cycles per MAC.
    #[arg(long)]
    latency_ms: Option<f64>,
    /// merge (default), paoding or magnitude.
    #[arg(long, default_value = "merge", value_parser = prune_cmd::parse_method)]
    method: paoding_core::prune::Method,
    /// global (importance per unit of the binding resource, the default) or uniform.
    #[arg(long, default_value = "global", value_parser = prune_cmd::parse_scope)]
    scope: paoding_core::prune::Scope,
    /// Refuse a result whose top-1 agreement with the original falls below this (0..1).
    #[arg(long)]
    min_agreement: Option<f64>,
    #[command(flatten)]
    widths: WidthArgs,
    #[command(flatten)]
    probes: ProbeArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// How far pruning may go in each layer, shared by `prune` and `fit`.
#[derive(Args)]
struct WidthArgs {
    /// Skip the least-squares refit.
    #[arg(long)]
    no_refit: bool,
    /// Keep every layer's width a multiple of N (for SIMD kernels).
    #[arg(long, default_value_t = 1)]
    round_to: usize,
    /// Fewest units any layer keeps.
    #[arg(long, default_value_t = 1)]
    min_units: usize,
    /// Largest fraction of one layer global allocation may remove.
    #[arg(long, default_value_t = 0.9)]
    max_layer_ratio: f64,
}

/// Real data to measure fidelity on, shared by `prune` and `fit`.
#[derive(Args)]
struct DataArgs {
    /// Real inputs to measure fidelity on (.npy, first axis = batch).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Labels of --data (.npy of class indices), for accuracy before and after.
    #[arg(long, requires = "data")]
    labels: Option<PathBuf>,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    paoding_core::profile::parse_quantity(s, 1024)
}

fn parse_count(s: &str) -> Result<u64, String> {
    paoding_core::profile::parse_quantity(s, 1000)
}

#[derive(Args)]
struct ProbeArgs {
    /// Range of the model's inputs, for data-free probes: lo,hi.
    #[arg(long, default_value = "0,1", value_parser = prune_cmd::parse_range)]
    input_range: (f32, f32),
    /// Most probe inputs (fewer on large models, within a work budget).
    #[arg(long, default_value_t = 512)]
    probe_count: usize,
    /// Seed of the probes.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The refit's probes: uniform, invert (class-conditional inversion), bn (BatchNorm
    /// statistics), auto (the best the model allows), or a .npy file of inputs.
    #[arg(long, default_value = "auto", value_parser = paoding_cli::probes::source_parser())]
    probes: paoding_cli::probes::ProbeSource,
    /// Cache folder for synthesized probes (default: $PAODING_CACHE_DIR, else ~/.cache/paoding).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl ProbeArgs {
    fn settings(&self) -> ProbeSettings {
        ProbeSettings {
            count: self.probe_count.max(1),
            input_range: self.input_range,
            seed: self.seed,
            source: self.probes.clone(),
            cache_dir: self
                .cache_dir
                .clone()
                .or_else(paoding_cli::probes::default_cache_dir),
            with_bn_stats: None,
        }
    }
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
                .map(profile::load)
                .transpose()
                .map_err(|e| e.to_string())?;
            let imported = import::import_onnx(&model).map_err(|e| e.to_string())?;
            let report =
                InspectReport::new(&model.display().to_string(), &imported, profile.as_ref())
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
        Command::Fit(args) => fit(args).map_err(|e| e.to_string()),
        Command::Eval(args) => paoding_cli::eval::run_eval(args).map_err(|e| e.to_string()),
        Command::Sweep(args) => paoding_cli::sweep::run_sweep(args).map_err(|e| e.to_string()),
        Command::Report(args) => paoding_cli::html::run_report(args).map_err(|e| e.to_string()),
        Command::Run {
            model,
            input,
            output,
        } => {
            let out = paoding_cli::run::run(&model, &input, output.as_deref())
                .map_err(|e| e.to_string())?;
            if output.is_none() {
                print!("{}", out.to_text());
            }
            Ok(EXIT_OK)
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

fn load_data(
    g: &paoding_core::ir::Graph,
    data: Option<&PathBuf>,
    labels: Option<&PathBuf>,
) -> Result<Option<EvalData>, CliError> {
    let Some(path) = data else { return Ok(None) };
    let sample = g.values[g.input].len();
    let (n, xs) = npy::read_batch(path, sample)?;
    let labels = labels.map(|l| npy::read_labels(l, n)).transpose()?;
    Ok(Some(EvalData {
        inputs: Probes::from_batch(xs, sample)?,
        labels,
        source: format!("{} ({n} samples)", path.display()),
    }))
}

fn fit(a: FitArgs) -> Result<u8, CliError> {
    use std::io::IsTerminal;
    let fleet = a.profile.len() > 1;
    for path in [&a.output, &a.onnx].into_iter().flatten() {
        if fleet && !fit_cmd::names_each_profile(path) {
            return Err(CliError::Usage(format!(
                "with several --profile, '{}' must contain {{profile}}",
                path.to_string_lossy()
            )));
        }
    }
    if let Some(m) = a.min_agreement {
        if !(0.0..=1.0).contains(&m) {
            return Err(CliError::Usage(format!(
                "--min-agreement must be in [0, 1], got {m}"
            )));
        }
    }
    // Load every profile first: a typo in the third must not leave two boards' files behind.
    let profiles = a
        .profile
        .iter()
        .map(|p| profile::load(p).map_err(|e| CliError::Usage(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let imported = import::import_onnx(&a.model)?;
    let model_name = a.model.display().to_string();
    let g = &imported.graph;
    let data = load_data(g, a.data.data.as_ref(), a.data.labels.as_ref())?;
    let options = FitOptions {
        overrides: BudgetOverrides {
            flash_bytes: a.flash,
            ram_bytes: a.ram,
            macs: a.macs,
            latency_ms: a.latency_ms,
        },
        method: a.method,
        scope: a.scope,
        refit: a.widths.no_refit.then_some(false),
        min_agreement: a.min_agreement,
        probes: ProbeSettings {
            with_bn_stats: imported.with_bn_stats.clone().map(std::sync::Arc::new),
            ..a.probes.settings()
        },
        min_units: a.widths.min_units,
        round_to: a.widths.round_to.max(1),
        max_layer_ratio: a.widths.max_layer_ratio,
    };
    let show_progress = !a.json && std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    let mut all_ok = true;
    for p in &profiles {
        let bar = show_progress.then(|| {
            let bar = indicatif::ProgressBar::new(1);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>16} [{bar:30}] {pos} evaluations {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_prefix(p.name.clone());
            bar
        });
        let mut progress = |done: usize, total: usize| {
            if let Some(b) = &bar {
                // A bisection over `total` steps takes about log2(total) + 2 evaluations.
                b.set_length((usize::BITS - total.leading_zeros()) as u64 + 2);
                b.set_position(done as u64);
            }
        };
        let fitted = fit_cmd::fit_graph(&model_name, g, p, &options, data.as_ref(), &mut progress)?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let name = |template: &OsString| fit_cmd::output_path(template, &p.name);
        if let (Some(out), Some(blob)) = (&a.output, &fitted.blob) {
            let path = name(out);
            output::write_atomic(&path, blob).map_err(|source| CliError::Io { path, source })?;
        }
        if let (Some(onnx), Some(graph)) = (&a.onnx, &fitted.graph) {
            let path = name(onnx);
            export::save_onnx(
                graph,
                &format!("fitted to {} by paoding fit", p.name),
                &path,
            )?;
        }
        all_ok &= fitted.ok();
        if !a.json {
            print!("{}", fitted.report.to_text());
            if fleet {
                println!();
            }
        }
        reports.push(fitted.report);
    }
    if fleet && !a.json {
        println!(
            "{:<16} {:<16} {:>10} {:>10} {:>12}",
            "board", "status", "flash B", "RAM B", "MACs"
        );
        for r in &reports {
            let status = serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            println!(
                "{:<16} {:<16} {:>10} {:>10} {:>12}",
                r.profile, status, r.fitted.flash_bytes, r.fitted.ram_bytes, r.fitted.macs
            );
        }
    }
    let json = if fleet {
        serde_json::json!({ "schema": "paoding.fit-fleet/1", "all_fit": all_ok, "boards": reports })
    } else {
        serde_json::to_value(&reports[0]).map_err(|e| CliError::Usage(e.to_string()))?
    };
    let text = serde_json::to_string_pretty(&json).map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(path) = &a.report {
        output::write_atomic(path, text.as_bytes()).map_err(|source| CliError::Io {
            path: path.clone(),
            source,
        })?;
    }
    if a.json {
        println!("{text}");
    }
    Ok(if all_ok { EXIT_OK } else { EXIT_DOES_NOT_FIT })
}

fn prune(a: PruneArgs) -> Result<u8, CliError> {
    let imported = import::import_onnx(&a.model)?;
    let model_name = a.model.display().to_string();
    let g = &imported.graph;
    let options = PruneOptions {
        method: a.method,
        scope: a.scope,
        ratio: a.ratio,
        refit: a.widths.no_refit.then_some(false),
        min_units: a.widths.min_units,
        round_to: a.widths.round_to.max(1),
        max_layer_ratio: a.widths.max_layer_ratio,
        input_range: a.probes.input_range,
        ..Default::default()
    };
    if a.probes.probe_count == 0 {
        return Err(CliError::Usage("--probe-count must be at least 1".into()));
    }
    let probes = ProbeSettings {
        with_bn_stats: imported.with_bn_stats.clone().map(std::sync::Arc::new),
        ..a.probes.settings()
    };
    let data = load_data(g, a.data.data.as_ref(), a.data.labels.as_ref())?;
    let (pruned, report) = prune_cmd::prune(&model_name, g, &options, &probes, data.as_ref())?;
    export::save_onnx(
        &pruned,
        &format!("pruned from {model_name} by paoding prune"),
        &a.output,
    )?;
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
