//! `paoding sweep MODEL.onnx`: prune by every method and ratio (each time from the original),
//! and measure size (parameters, exact flash bytes of the runtime blob, RAM, MACs) against
//! accuracy (with labels) or top-1 agreement with the original, and FGSM robustness at one ε
//! (white-box, on each pruned graph; see [`crate::eval`]), all on the check set
//! ([`crate::check`]: the data, or estimated on the held-out data-free set). Writes an SVG
//! chart ([`crate::chart`]), a CSV file and/or JSON.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use paoding_core::fidelity;
use paoding_core::fit::Usage;
use paoding_core::ir::Graph;
use paoding_core::prune::{Method, PruneOptions, Pruner, Scope};
use serde::{Deserialize, Serialize};

use crate::check::{CheckSet, DataArgs};
use crate::error::CliError;
use crate::eval::{self, Attack, Model};
use crate::probes::{ProbeArgs, ProbeSettings, ProbeSource};
use crate::progress::Progress;

/// Version tag of the JSON layout of `paoding sweep --json` (2: measured on the check set,
/// with the relative L2 error of every point).
pub const SWEEP_SCHEMA: &str = "paoding.sweep/2";

/// Header of the CSV file; one row per point, the original first (method `original`).
pub const CSV_HEADER: &str = "method,ratio,params,params_removed_pct,flash_bytes,ram_bytes,macs,\
accuracy_pct,agreement_pct,fgsm_eps,robustness_pct,robustness_retention_pct,attacked,relative_l2";

/// One pruned model (or the original) of a sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// `merge`, `paoding`, `magnitude`, or `original`.
    pub method: String,
    /// Fraction of units (neurons, channels) removed, as asked.
    pub ratio: f64,
    /// Parameters left.
    pub params: u64,
    /// Fraction of the original's parameters removed.
    pub params_removed: f64,
    /// Exact bytes of the runtime blob.
    pub flash_bytes: u64,
    /// Activation arena of the static memory plan.
    pub ram_bytes: u64,
    /// MACs per inference.
    pub macs: u64,
    /// Accuracy on the labelled data.
    pub accuracy: Option<f64>,
    /// Top-1 agreement with the original (1 for the original).
    pub agreement: f64,
    /// FGSM robustness at the sweep's ε (classifiers only).
    pub robustness: Option<f64>,
    /// Robustness as a fraction of the original's.
    pub robustness_retention: Option<f64>,
    /// Samples attacked by FGSM.
    pub attacked: usize,
    /// ‖outputs − original's‖ / ‖original's‖ (0 for the original).
    pub relative_l2: f64,
}

/// Everything `paoding sweep` measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReport {
    /// [`SWEEP_SCHEMA`].
    pub schema: String,
    /// The model file.
    pub model: String,
    /// What accuracy/agreement and robustness were measured on.
    pub inputs: String,
    /// Whether those are probes, not data.
    pub data_free: bool,
    /// How ratios are spread over layers.
    pub scope: Scope,
    /// The refit's probes.
    pub refit_probes: String,
    /// FGSM ε.
    pub fgsm_eps: f64,
    /// Range FGSM clips to.
    pub input_range: (f32, f32),
    /// The unpruned model.
    pub original: SweepPoint,
    /// One per method and ratio, method by method.
    pub points: Vec<SweepPoint>,
    /// Wall time of the sweep.
    pub seconds: f64,
    /// What makes the figures doubtful (a degenerate check set).
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl SweepReport {
    /// Whether the quality measure is accuracy (labels given) rather than agreement.
    pub fn has_accuracy(&self) -> bool {
        self.original.accuracy.is_some()
    }

    /// The methods, in the order they were swept.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.points {
            if !out.contains(&p.method) {
                out.push(p.method.clone());
            }
        }
        out
    }

    /// The CSV text: [`CSV_HEADER`], the original, then every point.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(CSV_HEADER);
        out.push('\n');
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{:.4}", 100.0 * v));
        for p in std::iter::once(&self.original).chain(&self.points) {
            let _ = writeln!(
                out,
                "{},{},{},{:.4},{},{},{},{},{:.4},{},{},{},{},{:.6}",
                p.method,
                p.ratio,
                p.params,
                100.0 * p.params_removed,
                p.flash_bytes,
                p.ram_bytes,
                p.macs,
                opt(p.accuracy),
                100.0 * p.agreement,
                self.fgsm_eps,
                opt(p.robustness),
                opt(p.robustness_retention),
                p.attacked,
                p.relative_l2
            );
        }
        out
    }

    /// Read back a CSV written by [`Self::to_csv`] (what the CSV does not hold — the model,
    /// the inputs — is left empty).
    pub fn from_csv(text: &str) -> Result<Self, String> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().ok_or("empty file")?;
        if header.trim() != CSV_HEADER {
            return Err(format!(
                "not a paoding sweep CSV (expected the header '{CSV_HEADER}')"
            ));
        }
        let mut original = None;
        let mut points = Vec::new();
        let mut eps = 0.0;
        for (n, line) in lines.enumerate() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = |what: &str| format!("row {}: bad {what}: '{line}'", n + 2);
            if f.len() != 14 {
                return Err(bad("number of fields"));
            }
            let num = |i: usize, what: &str| f[i].parse::<f64>().map_err(|_| bad(what));
            let int = |i: usize, what: &str| f[i].parse::<u64>().map_err(|_| bad(what));
            let pct = |i: usize, what: &str| -> Result<Option<f64>, String> {
                if f[i].is_empty() {
                    Ok(None)
                } else {
                    f[i].parse::<f64>()
                        .map(|v| Some(v / 100.0))
                        .map_err(|_| bad(what))
                }
            };
            eps = num(9, "fgsm_eps")?;
            let p = SweepPoint {
                method: f[0].to_string(),
                ratio: num(1, "ratio")?,
                params: int(2, "params")?,
                params_removed: num(3, "params_removed_pct")? / 100.0,
                flash_bytes: int(4, "flash_bytes")?,
                ram_bytes: int(5, "ram_bytes")?,
                macs: int(6, "macs")?,
                accuracy: pct(7, "accuracy_pct")?,
                agreement: num(8, "agreement_pct")? / 100.0,
                robustness: pct(10, "robustness_pct")?,
                robustness_retention: pct(11, "robustness_retention_pct")?,
                attacked: int(12, "attacked")? as usize,
                relative_l2: num(13, "relative_l2")?,
            };
            if p.method == "original" {
                original = Some(p);
            } else {
                points.push(p);
            }
        }
        Ok(SweepReport {
            schema: SWEEP_SCHEMA.into(),
            model: String::new(),
            inputs: String::new(),
            data_free: false,
            scope: Scope::Uniform,
            refit_probes: String::new(),
            fgsm_eps: eps,
            input_range: (0.0, 1.0),
            original: original.ok_or("no 'original' row")?,
            points,
            seconds: 0.0,
            warnings: Vec::new(),
        })
    }

    /// Read a sweep from a `.json` (`paoding sweep --json`) or `.csv` file.
    pub fn read(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |e: String| CliError::Usage(format!("{}: {e}", path.display()));
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            let r: SweepReport = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            if r.schema != SWEEP_SCHEMA {
                return Err(bad(format!(
                    "schema '{}', expected {SWEEP_SCHEMA}",
                    r.schema
                )));
            }
            Ok(r)
        } else {
            Self::from_csv(&text).map_err(bad)
        }
    }

    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {} methods x {} ratios ({:?} scope) in {:.1} s",
            self.model,
            self.methods().len(),
            self.points.len() / self.methods().len().max(1),
            self.scope,
            self.seconds
        );
        let _ = writeln!(
            out,
            "{} on {}",
            if self.data_free {
                "estimated without data"
            } else {
                "measured"
            },
            self.inputs
        );
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        let _ = writeln!(out, "refit on {}", self.refit_probes);
        let quality = if self.has_accuracy() {
            "accuracy"
        } else {
            "agreement"
        };
        let _ = writeln!(
            out,
            "\n{:<10} {:>5} {:>8} {:>8} {:>9} {:>8} {:>9} {:>9} {:>12} {:>9}",
            "method",
            "ratio",
            "params",
            "removed",
            "flash B",
            "RAM B",
            "MACs",
            quality,
            format!("FGSM@{}", self.fgsm_eps),
            "retained"
        );
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1} %", 100.0 * v));
        for p in std::iter::once(&self.original).chain(&self.points) {
            let q = if self.has_accuracy() {
                p.accuracy
            } else {
                Some(p.agreement)
            };
            let _ = writeln!(
                out,
                "{:<10} {:>5} {:>8} {:>7.1}% {:>9} {:>8} {:>9} {:>9} {:>12} {:>9}",
                p.method,
                p.ratio,
                p.params,
                100.0 * p.params_removed,
                p.flash_bytes,
                p.ram_bytes,
                p.macs,
                pct(q),
                pct(p.robustness),
                pct(p.robustness_retention)
            );
        }
        out
    }
}

/// Parse `--ratios`: `start:stop:step` (inclusive, `0.1:0.9:0.1` = nine ratios) or a
/// comma-separated list.
pub fn parse_ratios(s: &str) -> Result<Ratios, String> {
    let num = |p: &str| {
        p.trim()
            .parse::<f64>()
            .map_err(|_| format!("'{p}' is not a number"))
    };
    let ratios: Vec<f64> = if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        let [a, b, step] = parts[..] else {
            return Err(format!("'{s}' is not start:stop:step"));
        };
        let (a, b, step) = (num(a)?, num(b)?, num(step)?);
        if step <= 0.0 || b < a {
            return Err(format!("'{s}': need start <= stop and step > 0"));
        }
        let n = ((b - a) / step + 1e-9).floor() as usize;
        (0..=n)
            .map(|i| ((a + i as f64 * step) * 1e9).round() / 1e9)
            .collect()
    } else {
        s.split(',').map(num).collect::<Result<_, _>>()?
    };
    if ratios.is_empty() {
        return Err("no ratio".into());
    }
    if let Some(r) = ratios.iter().find(|r| !(0.0..1.0).contains(*r)) {
        return Err(format!("ratio {r} is not in [0, 1)"));
    }
    Ok(Ratios(ratios))
}

/// The ratios of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratios(pub Vec<f64>);

/// Arguments of `paoding sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Methods to compare, comma-separated (merge, paoding, magnitude).
    #[arg(long, value_delimiter = ',', default_value = "merge,paoding,magnitude", value_parser = crate::prune::parse_method)]
    pub methods: Vec<Method>,
    /// Fractions of units to remove: start:stop:step (inclusive) or a list (0.25,0.5).
    #[arg(long, default_value = "0.1:0.9:0.1", value_parser = parse_ratios)]
    pub ratios: Ratios,
    /// uniform (the same ratio per layer, the default) or global.
    #[arg(long, default_value = "uniform", value_parser = crate::prune::parse_scope)]
    pub scope: Scope,
    /// FGSM perturbation size (L∞, in input units).
    #[arg(long, default_value_t = 0.05, value_parser = eval::parse_epsilon)]
    pub fgsm_eps: f64,
    #[command(flatten)]
    pub data: DataArgs,
    /// The refit's probes: auto (the best the model allows, the default, as for prune and
    /// fit), uniform, invert, bn, or a .npy file.
    #[arg(long, default_value = "auto", value_parser = crate::probes::source_parser())]
    pub probes: ProbeSource,
    #[command(flatten)]
    pub probe_args: ProbeArgs,
    /// Write the chart here (SVG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the measurements here (CSV, one row per point, the original first).
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Print the measurements as JSON (schema paoding.sweep/2) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of [`sweep`] (what [`SweepArgs`] holds, minus the outputs).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// Methods, in order.
    pub methods: Vec<Method>,
    /// Ratios, in order.
    pub ratios: Vec<f64>,
    /// Scope.
    pub scope: Scope,
    /// FGSM ε.
    pub fgsm_eps: f64,
    /// Refit probe settings (count, range, seed, source, cache).
    pub probes: ProbeSettings,
}

/// What every point is measured against.
struct Bench<'a> {
    set: &'a CheckSet,
    original_params: u64,
    original_rate: Option<f64>,
    eps: f64,
}

fn point(b: &Bench<'_>, method: &str, ratio: f64, g: &Graph) -> Result<SweepPoint, CliError> {
    let Bench {
        set,
        original_params,
        original_rate,
        eps,
    } = b;
    let (original_params, eps, range) = (*original_params, *eps, set.input_range);
    let usage = Usage::of(g)?;
    let params = paoding_core::cost::ModelCost::new(g, Default::default()).params;
    let per = g.values[g.output].len();
    let out = eval::outputs(g, &set.inputs.data)?;
    let preds = eval::predictions(&out, per);
    let fidelity = fidelity::compare(&set.reference, &out, per);
    let labels = set.labels.as_deref();
    let robustness = if set.task.is_classifier() {
        let attack = Attack::prepare(g, &set.inputs, &preds, labels)?;
        let model = Model::Graph(g.clone());
        Some(attack.robustness(&model, &set.inputs, eps, range)?)
    } else {
        None
    };
    let rate = robustness.map(|r| r.rate);
    Ok(SweepPoint {
        method: method.into(),
        ratio,
        params,
        params_removed: if original_params == 0 {
            0.0
        } else {
            1.0 - params as f64 / original_params as f64
        },
        flash_bytes: usage.flash_bytes,
        ram_bytes: usage.ram_bytes,
        macs: usage.macs,
        accuracy: labels.map(|l| fidelity::accuracy(&out, per, l)),
        agreement: fidelity.agreement,
        robustness: rate,
        robustness_retention: match (rate, *original_rate) {
            (Some(r), Some(o)) if o > 0.0 => Some(r / o),
            _ => None,
        },
        attacked: robustness.map_or(0, |r| r.attacked),
        relative_l2: fidelity.relative_l2,
    })
}

/// Method name as the CLI spells it.
pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::Merge => "merge",
        Method::Paoding => "paoding",
        Method::Magnitude => "magnitude",
    }
}

/// Run the sweep, showing probe synthesis and the points done on `progress`.
pub fn sweep(
    model: &str,
    g: &Graph,
    options: &SweepOptions,
    set: &CheckSet,
    progress: &Progress,
) -> Result<SweepReport, CliError> {
    let start = Instant::now();
    progress.phase("measuring the original model");
    let range = set.input_range;
    let eps = options.fgsm_eps;
    let original_params = paoding_core::cost::ModelCost::new(g, Default::default()).params;
    let mut bench = Bench {
        set,
        original_params,
        original_rate: None,
        eps,
    };
    let mut original = point(&bench, "original", 0.0, g)?;
    original.robustness_retention = original.robustness.map(|_| 1.0);
    bench.original_rate = original.robustness;
    let mut resolved = crate::probes::resolve(
        g,
        &options.probes.source,
        &options.probes,
        options.probes.cache_dir.as_deref(),
        progress,
    )?;
    let total = options.methods.len() * options.ratios.len();
    progress.steps("pruning and measuring: models", 0, total);
    let mut points = Vec::with_capacity(total);
    for &method in &options.methods {
        let pruner = Pruner::new(
            g,
            &PruneOptions {
                method,
                scope: options.scope,
                input_range: range,
                ..Default::default()
            },
        );
        if pruner.structure().items.iter().all(|i| i.frozen) {
            return Err(CliError::Usage(format!(
                "{model}: nothing to prune: no layer has a channel that can be removed (the output layer never is)"
            )));
        }
        if pruner.selects_by_probes() {
            resolved.add_selection(g, &options.probes, progress)?;
        }
        for &ratio in &options.ratios {
            let pruned = pruner.apply_with(
                &pruner.counts_for_ratio(ratio),
                &resolved.probes,
                resolved.selection(),
            )?;
            points.push(point(&bench, method_name(method), ratio, &pruned.graph)?);
            progress.steps("pruning and measuring: models", points.len(), total);
        }
    }
    Ok(SweepReport {
        schema: SWEEP_SCHEMA.into(),
        model: model.into(),
        inputs: set.description.clone(),
        data_free: set.data_free,
        scope: options.scope,
        refit_probes: resolved.description,
        fgsm_eps: eps,
        input_range: range,
        original,
        points,
        seconds: start.elapsed().as_secs_f64(),
        warnings: set.warnings.clone(),
    })
}

/// `paoding sweep`: run, print a table (or JSON), write the chart and CSV; exit code 0.
pub fn run_sweep(args: SweepArgs) -> Result<u8, CliError> {
    if args.methods.is_empty() {
        return Err(CliError::Usage("--methods: no method".into()));
    }
    // Every output location is checked before any work.
    for path in [&args.plot, &args.csv].into_iter().flatten() {
        crate::output::check_writable(path)?;
    }
    let progress = Progress::on_stderr(!args.json);
    progress.phase("importing");
    let imported = crate::import::import_onnx(&args.model)?;
    let probes = args.probe_args.settings(&imported, args.probes.clone())?;
    let g = imported.graph;
    let set = CheckSet::build(&g, &probes, &args.data, &progress)?;
    let options = SweepOptions {
        methods: args.methods.clone(),
        ratios: args.ratios.0.clone(),
        scope: args.scope,
        fgsm_eps: args.fgsm_eps,
        probes,
    };
    let report = sweep(
        &args.model.display().to_string(),
        &g,
        &options,
        &set,
        &progress,
    )?;
    drop(progress);
    let mut files = Vec::new();
    if let Some(path) = &args.plot {
        files.push((path.clone(), crate::chart::sweep_svg(&report)?.into_bytes()));
    }
    if let Some(path) = &args.csv {
        files.push((path.clone(), report.to_csv().into_bytes()));
    }
    crate::output::write_all(&files)?;
    if args.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Usage(e.to_string()))?;
        crate::output::print(&(json + "\n"))?;
    } else {
        let mut text = report.to_text();
        for (path, _) in &files {
            text += &format!("wrote {}\n", path.display());
        }
        crate::output::print(&text)?;
    }
    Ok(0)
}
