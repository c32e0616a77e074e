//! The `paoding` command. A thin layer over the library: parse arguments, call, print, and
//! turn errors into one message and a documented exit code.

use std::process::ExitCode;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use paoding_cli::check::{CheckSet, DataArgs, LazyCheckSet};
use paoding_cli::error::CliError;
use paoding_cli::fit::{self as fit_cmd, BudgetOverrides, FitOptions};
use paoding_cli::probes::{ProbeArgs, ProbeSource};
use paoding_cli::progress::Progress;
use paoding_cli::prune as prune_cmd;
use paoding_cli::{export, import, output, profile, report::InspectReport};
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
    about = "Data-free pruning of neural networks to fit microcontrollers",
    after_help = "Exit codes: 0 success (the model fits, or nothing was checked), 1 the model \
does not fit, 2 bad usage or bad input (nothing is written). A closed standard output \
(paoding ... | head) ends quietly with 0."
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
        /// Print the report as JSON (schema paoding.inspect/2).
        #[arg(long)]
        json: bool,
    },
    /// Prune a model by a ratio, write it as ONNX, and report sizes and fidelity.
    /// Exit 0 on success, 2 on bad arguments or an unprunable model (no output is written).
    Prune(PruneArgs),
    /// Prune a model the least it must to fit one or more boards' flash, RAM and compute
    /// budgets, and write the runtime model (-o). Exit 0 if every board fits, 1 if one cannot
    /// (each explained), 2 on bad input.
    Fit(FitArgs),
    /// Run a .pdg model (or an .onnx one, lowered as fit would store it unpruned: a
    /// quantized file as its own int8 model) with the runtime over a batch of inputs: .npy of
    /// shape [N, model input without its batch axis], int8 for a model with int8 input and
    /// output, else float32. Exit 0 on success, 2 on a corrupted blob or bad input.
    Run {
        /// The runtime model (.pdg), or an ONNX model.
        model: PathBuf,
        /// Inputs (.npy, C order): [N, the model's input dims without its batch axis], in the
        /// model's layout (`paoding inspect` shows it); int8 codes for an int8 model (float
        /// values are quantized with its input's parameters), else float32 or float64.
        #[arg(long)]
        input: PathBuf,
        /// Write the outputs here (.npy: int8 for an int8 model) instead of printing them.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Compare the outputs with this .npy (e.g. TFLite's): how many values differ, the
        /// largest difference and where, and on how many samples the top-1 agrees.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// For a quantized ONNX model: run nodes without an exact int8 form in f32 (between
        /// explicit conversions) instead of refusing the model.
        #[arg(long)]
        allow_f32_islands: bool,
    },
    /// Accuracy, agreement, KL and FGSM robustness of a candidate (.onnx or .pdg) against
    /// the original. Exit 0, or 2 on bad input.
    Eval(paoding_cli::eval::EvalArgs),
    /// Prune by every method and ratio: size against accuracy/agreement and FGSM
    /// robustness; SVG chart and CSV. Exit 0 on success, 2 on bad input (nothing is written).
    Sweep(paoding_cli::sweep::SweepArgs),
    /// One self-contained HTML page from a fit report JSON (and optionally a sweep of the
    /// same model). Exit 0 on success, 2 on bad input (nothing is written).
    Report(paoding_cli::html::ReportArgs),
    /// List the built-in hardware profiles and their budgets. Exit 0.
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
    /// The refit's probes: uniform, invert (class-conditional inversion), bn (BatchNorm
    /// statistics), auto (the best the model allows), or a .npy file of inputs (as --data).
    #[arg(long, default_value = "auto", value_parser = paoding_cli::probes::source_parser())]
    probes: ProbeSource,
    #[command(flatten)]
    probe_args: ProbeArgs,
    #[command(flatten)]
    data: DataArgs,
    /// How the pruned model is stored in --pdg and judged: f32, or int8 (calibrated on the
    /// refit's probes; the fidelity is the int8 model's). `auto` needs a budget: use `fit`.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: prune_cmd::PruneDtype,
    #[command(flatten)]
    int8: Int8Args,
    /// Where to write the pruned ONNX model (f32 weights, whatever --dtype).
    #[arg(short, long)]
    output: PathBuf,
    /// Also write the runtime model (.pdg), in --dtype.
    #[arg(long)]
    pdg: Option<PathBuf>,
    /// Print the report as JSON (schema paoding.prune/3).
    #[arg(long)]
    json: bool,
    /// For a quantized file: run nodes without an exact int8 form in f32 between explicit
    /// conversions instead of refusing the model.
    #[arg(long)]
    allow_f32_islands: bool,
}

#[derive(Args)]
struct FitArgs {
    /// The ONNX model.
    model: PathBuf,
    /// A profile file or built-in name; repeat for a fleet (then -o needs {profile}).
    #[arg(long, required = true)]
    profile: Vec<OsString>,
    /// Where to write the runtime model (.pdg); `{profile}` is replaced by the profile name.
    /// Without it, nothing but the report is written (and stderr says so).
    #[arg(short, long)]
    output: Option<OsString>,
    /// Also write the pruned model as ONNX (`{profile}` allowed).
    #[arg(long)]
    onnx: Option<OsString>,
    /// Write the report as JSON (schema paoding.fit/3).
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
    /// Refuse a result whose top-1 agreement with the original falls below this (0..1),
    /// measured on --data, else estimated on the data-free check set.
    #[arg(long)]
    min_agreement: Option<f64>,
    /// How the model is stored: f32, int8 (calibrated on the refit's probes), or auto (the
    /// most faithful that fits: f32 unpruned, else int8 unpruned, else the better pruned one).
    /// Default: the profile's weight_dtype; int8 for a quantized file (its own int8 model,
    /// or its int8 weights).
    #[arg(long, value_enum)]
    dtype: Option<paoding_cli::fit::DtypeChoice>,
    /// For a quantized file: run nodes without an exact int8 form in f32 between explicit
    /// conversions instead of refusing the model.
    #[arg(long)]
    allow_f32_islands: bool,
    #[command(flatten)]
    int8: Int8Args,
    #[command(flatten)]
    widths: WidthArgs,
    /// The refit's probes: uniform, invert (class-conditional inversion), bn (BatchNorm
    /// statistics), auto (the best the model allows), or a .npy file of inputs (as --data).
    #[arg(long, default_value = "auto", value_parser = paoding_cli::probes::source_parser())]
    probes: ProbeSource,
    #[command(flatten)]
    probe_args: ProbeArgs,
    #[command(flatten)]
    data: DataArgs,
}

/// How an int8 model is made, shared by `prune` and `fit`.
#[derive(Args)]
struct Int8Args {
    /// Keep this layer f32 in an int8 model (mixed precision), with conversions around it:
    /// its full name or a unique end of it; repeat, or separate by commas.
    #[arg(long, value_name = "LAYER", value_delimiter = ',')]
    keep_f32: Vec<String>,
}

impl Int8Args {
    fn options(&self) -> paoding_cli::quantize::Int8Options {
        paoding_cli::quantize::Int8Options {
            keep_f32: self.keep_f32.clone(),
            ..Default::default()
        }
    }
}

/// How far pruning may go in each layer, shared by `prune` and `fit`.
#[derive(Args)]
struct WidthArgs {
    /// Skip the least-squares refit.
    #[arg(long)]
    no_refit: bool,
    /// Keep every layer's width a multiple of N, so that each runs in the kernels' blocks
    /// (fit: default the profile's `round_to`, else 1; prune: 1).
    #[arg(long)]
    round_to: Option<usize>,
    /// Fewest units any layer keeps.
    #[arg(long, default_value_t = 1)]
    min_units: usize,
    /// Largest fraction of one layer global allocation may remove.
    #[arg(long, default_value_t = 0.9)]
    max_layer_ratio: f64,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    paoding_core::profile::parse_quantity(s, 1024)
}

fn parse_count(s: &str) -> Result<u64, String> {
    paoding_core::profile::parse_quantity(s, 1000)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`paoding ... | head`): nothing left to say to anyone.
        Err(CliError::Stdout(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INPUT_ERROR)
        }
    }
}

/// `serde_json`'s text of a report (which cannot fail for these types, but is not a panic).
fn json_text(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Usage(e.to_string()))
}

fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Inspect {
            model,
            profile,
            json,
        } => {
            let profile = profile.map(profile::load).transpose()?;
            let imported = import::import_onnx(&model)?;
            let report =
                InspectReport::new(&model.display().to_string(), &imported, profile.as_ref())?;
            if json {
                output::print(&(json_text(&report)? + "\n"))?;
            } else {
                output::print(&report.to_text())?;
            }
            Ok(if report.fits == Some(false) {
                EXIT_DOES_NOT_FIT
            } else {
                EXIT_OK
            })
        }
        Command::Prune(args) => prune(args),
        Command::Fit(args) => fit(args),
        Command::Eval(args) => paoding_cli::eval::run_eval(args),
        Command::Sweep(args) => paoding_cli::sweep::run_sweep(args),
        Command::Report(args) => paoding_cli::html::run_report(args),
        Command::Run {
            model,
            input,
            output,
            reference,
            allow_f32_islands,
        } => {
            let out = paoding_cli::run::run(
                &model,
                &input,
                output.as_deref(),
                paoding_cli::run::RunOptions {
                    reference: reference.as_deref(),
                    allow_f32_islands,
                },
            )?;
            let mut text = match output {
                Some(path) => format!("wrote {}\n", path.display()),
                None => out.to_text(),
            };
            if let Some(c) = &out.comparison {
                text += &c.to_text();
            }
            output::print(&text)?;
            Ok(EXIT_OK)
        }
        Command::Profiles { json } => {
            let profiles = profile::built_in()?;
            let mut text = String::new();
            if json {
                let list: Vec<_> = profiles
                    .iter()
                    .map(|p| serde_json::json!({"profile": p, "budget": p.budget().ok()}))
                    .collect();
                text = json_text(&list)? + "\n";
            } else {
                text += &format!(
                    "{:<16} {:>10} {:>10} {:>12}  description\n",
                    "name", "flash B", "ram B", "MACs"
                );
                for p in &profiles {
                    let b = p.budget()?;
                    let macs = b.macs.map_or("-".to_string(), |m| m.to_string());
                    text += &format!(
                        "{:<16} {:>10} {:>10} {:>12}  {}\n",
                        p.name, b.flash_bytes, b.ram_bytes, macs, p.description
                    );
                }
                text += "\n(budgets are what is left for the model after the firmware's reserved shares)\n";
            }
            output::print(&text)?;
            Ok(EXIT_OK)
        }
    }
}

fn fit(a: FitArgs) -> Result<u8, CliError> {
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
        .map(profile::load)
        .collect::<Result<Vec<_>, _>>()?;
    // Every output location is checked before any work: a run writes all its files or none.
    let name = |template: &OsString, p: &paoding_core::profile::Profile| {
        fit_cmd::output_path(template, &p.name)
    };
    for p in &profiles {
        for template in [&a.output, &a.onnx].into_iter().flatten() {
            output::check_writable(&name(template, p))?;
        }
    }
    if let Some(path) = &a.report {
        output::check_writable(path)?;
    }
    let progress = Progress::on_stderr(!a.json);
    progress.phase("importing");
    let imported = import::import_onnx(&a.model)?;
    let model_name = a.model.display().to_string();
    let g = &imported.graph;
    let probes = a.probe_args.settings(&imported, a.probes.clone())?;
    let original = fit_cmd::original_model(&a.model, &imported, a.allow_f32_islands)?;
    let check = LazyCheckSet::new(g, &probes, a.data.clone()).for_original(original);
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
        probes: probes.clone(),
        min_units: a.widths.min_units,
        round_to: a.widths.round_to,
        max_layer_ratio: a.widths.max_layer_ratio,
        dtype: a.dtype,
        int8: a.int8.options(),
        allow_f32_islands: a.allow_f32_islands,
    };
    let mut reports = Vec::new();
    let mut files = Vec::new();
    let mut text = String::new();
    let mut all_ok = true;
    for p in &profiles {
        progress.set_prefix(&p.name);
        let fitted = fit_cmd::fit_graph_with(
            &model_name,
            g,
            imported.quant.as_ref(),
            p,
            &options,
            &check,
            &progress,
        )?;
        if let (Some(out), Some(blob)) = (&a.output, &fitted.blob) {
            files.push((name(out, p), blob.clone()));
        }
        if let (Some(onnx), Some(graph)) = (&a.onnx, &fitted.graph) {
            let note = format!("fitted to {} by paoding fit", p.name);
            files.push((name(onnx, p), export::write_onnx(graph, &note)?));
        }
        all_ok &= fitted.ok();
        text += &fitted.report.to_text();
        if fleet {
            text.push('\n');
        }
        reports.push(fitted.report);
    }
    if fleet {
        text += &format!(
            "{:<16} {:<16} {:>10} {:>10} {:>12}\n",
            "board", "status", "flash B", "RAM B", "MACs"
        );
        for r in &reports {
            let status = serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            text += &format!(
                "{:<16} {:<16} {:>10} {:>10} {:>12}\n",
                r.profile, status, r.fitted.flash_bytes, r.fitted.ram_bytes, r.fitted.macs
            );
        }
    }
    let json = if fleet {
        serde_json::json!({ "schema": fit_cmd::FLEET_SCHEMA, "all_fit": all_ok, "boards": reports })
    } else {
        serde_json::to_value(&reports[0]).map_err(|e| CliError::Usage(e.to_string()))?
    };
    let json = json_text(&json)?;
    if let Some(path) = &a.report {
        files.push((path.clone(), json.clone().into_bytes()));
    }
    drop(progress);
    output::write_all(&files)?;
    if a.json {
        output::print(&(json + "\n"))?;
    } else {
        if !files.is_empty() {
            text += "\n";
        }
        for (path, _) in &files {
            text += &format!("wrote {}\n", path.display());
        }
        output::print(&text)?;
    }
    if a.output.is_none() {
        eprintln!("note: no -o given: the runtime model (.pdg) was not written");
    }
    Ok(if all_ok { EXIT_OK } else { EXIT_DOES_NOT_FIT })
}

fn prune(a: PruneArgs) -> Result<u8, CliError> {
    output::check_writable(&a.output)?;
    if let Some(pdg) = &a.pdg {
        output::check_writable(pdg)?;
    }
    let progress = Progress::on_stderr(!a.json);
    progress.phase("importing");
    let imported = import::import_onnx(&a.model)?;
    let model_name = a.model.display().to_string();
    let g = &imported.graph;
    let probes = a.probe_args.settings(&imported, a.probes.clone())?;
    let options = PruneOptions {
        method: a.method,
        scope: a.scope,
        ratio: a.ratio,
        refit: a.widths.no_refit.then_some(false),
        min_units: a.widths.min_units,
        round_to: a.widths.round_to.unwrap_or(1).max(1),
        max_layer_ratio: a.widths.max_layer_ratio,
        input_range: probes.input_range,
        ..Default::default()
    };
    let original = fit_cmd::original_model(&a.model, &imported, a.allow_f32_islands)?;
    let check = CheckSet::build_for(g, original.as_ref(), &probes, &a.data, &progress)?;
    let int8 = a.int8.options();
    let pruned = prune_cmd::prune(
        &model_name,
        g,
        imported.quant.as_ref().map(|q| (q, a.allow_f32_islands)),
        &options,
        &probes,
        (a.dtype, &int8),
        &check,
        &progress,
    )?;
    drop(progress);
    let onnx = export::write_onnx(
        &pruned.graph,
        &format!("pruned from {model_name} by paoding prune"),
    )?;
    let mut files = vec![(a.output.clone(), onnx)];
    if let Some(pdg) = &a.pdg {
        files.push((pdg.clone(), pruned.blob.clone()));
    }
    output::write_all(&files)?;
    let report = &pruned.report;
    if a.json {
        output::print(&(json_text(report)? + "\n"))?;
    } else {
        let written: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        output::print(&format!(
            "{}\nwrote {}\n",
            report.to_text(),
            written.join(", ")
        ))?;
    }
    Ok(EXIT_OK)
}
