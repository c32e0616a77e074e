//! `paoding fit`: the least pruning, with the highest fidelity, that makes a model fit a
//! board's flash, RAM and compute budget — or exactly why it cannot.
//!
//! This is also the library entry point for firmware build scripts:
//!
//! ```no_run
//! // build.rs
//! use paoding_cli::fit::{fit, FitOptions};
//!
//! let fitted = fit("model.onnx".as_ref(), "cortex-m7", &FitOptions::default())?;
//! if let Some(blob) = &fitted.blob {
//!     let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("model.pdg");
//!     paoding_cli::output::write_atomic(&out, blob)?;
//! }
//! println!("cargo:rerun-if-changed=model.onnx");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use paoding_core::blob;
use paoding_core::cost::WeightDtype;
use paoding_core::fidelity::Fidelity;
use paoding_core::fit::{self, Resource, Schedule, Shortfall, Usage};
use paoding_core::ir::Graph;
use paoding_core::plan::MemoryPlan;
use paoding_core::probes::Probes;
use paoding_core::profile::{Budget, Constraint, Profile};
use paoding_core::prune::{LayerChange, Method, PruneOptions, Pruner, Scope};
use serde::Serialize;

use crate::check::{CheckSet, DataArgs, FidelityReport, LazyCheckSet};
use crate::error::CliError;
use crate::eval::Model;
use crate::import::FileQuant;
use crate::probes::ProbeSettings;
use crate::progress::Progress;
use crate::quantize::{Int8Model, Int8Options};
use crate::run::BlobBytes;

/// Version tag of the JSON layout (2: fidelity on the check set, with its interval,
/// robustness and warnings; 3: the dtype, how it was chosen, and the quantization).
pub const FIT_SCHEMA: &str = "paoding.fit/3";

/// Version tag of the JSON object `fit` prints for several boards (one [`FIT_SCHEMA`] report
/// per board).
pub const FLEET_SCHEMA: &str = "paoding.fit-fleet/3";

/// Budgets set on the command line: what the model itself may use (after the profile's
/// reserved shares).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BudgetOverrides {
    /// Flash for the model blob.
    pub flash_bytes: Option<u64>,
    /// RAM for the activation arena.
    pub ram_bytes: Option<u64>,
    /// MACs per inference.
    pub macs: Option<u64>,
    /// Latency per inference in milliseconds (turned into MACs with the profile's clock and
    /// cycles per MAC).
    pub latency_ms: Option<f64>,
}

/// Options of a fit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FitOptions {
    /// Budget overrides.
    pub overrides: BudgetOverrides,
    /// Pruning method.
    pub method: Method,
    /// Allocation across layers (global by default).
    pub scope: Scope,
    /// Refit (default: the method's choice).
    pub refit: Option<bool>,
    /// Least top-1 agreement with the original (overrides the profile's).
    pub min_agreement: Option<f64>,
    /// Probe inputs for the refit and the fidelity check.
    pub probes: ProbeSettings,
    /// Fewest units a layer keeps.
    pub min_units: usize,
    /// Keep widths multiples of this (`None`: the profile's `round_to`, else 1; a report
    /// states the one used).
    pub round_to: Option<usize>,
    /// Largest fraction of one layer global allocation removes.
    pub max_layer_ratio: f64,
    /// How the model is stored (`None`: the profile's `weight_dtype`).
    pub dtype: Option<DtypeChoice>,
    /// How an int8 model is quantized.
    pub int8: Int8Options,
    /// For a quantized file: nodes without an exact int8 form run in f32 (else they are an
    /// error naming them).
    pub allow_f32_islands: bool,
}

/// The dtype a fit stores the model in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    /// f32 weights and activations.
    F32,
    /// int8 weights and activations (TFLite's scheme), calibrated without data.
    Int8,
    /// The highest-fidelity model that fits: unpruned f32, else unpruned int8, else the
    /// pruned f32 or int8 model (whichever keeps more agreement on the check set).
    Auto,
}

impl From<WeightDtype> for DtypeChoice {
    fn from(d: WeightDtype) -> Self {
        match d {
            WeightDtype::F32 => DtypeChoice::F32,
            WeightDtype::Int8 => DtypeChoice::Int8,
        }
    }
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            overrides: BudgetOverrides::default(),
            method: Method::Merge,
            scope: Scope::Global,
            refit: None,
            min_agreement: None,
            probes: ProbeSettings::default(),
            min_units: 1,
            round_to: None,
            max_layer_ratio: 0.9,
            dtype: None,
            int8: Int8Options::default(),
            allow_f32_islands: false,
        }
    }
}

/// How a fit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The model fits as it is: left unpruned.
    FitsUnpruned,
    /// Pruned to fit.
    Pruned,
    /// Even the most pruning allowed does not fit.
    CannotFit,
    /// It fits only below the required agreement.
    FidelityTooLow,
}

/// Everything `paoding fit` says about one board.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    /// [`FIT_SCHEMA`].
    pub schema: &'static str,
    /// The model file.
    pub model: String,
    /// The profile's name.
    pub profile: String,
    /// The budget searched against.
    pub budget: Budget,
    /// How it ended.
    pub status: Status,
    /// One line for people.
    pub message: String,
    /// Use before pruning.
    pub original: Usage,
    /// Use of the result (the most pruned model tried, when nothing fits).
    pub fitted: Usage,
    /// Each constraint of the result, with its headroom.
    pub constraints: Vec<Constraint>,
    /// The resource global allocation saved on.
    pub binding: Resource,
    /// Options used.
    pub options: FitOptions,
    /// Single-item removals the result took, out of how many the schedule allows.
    pub step: usize,
    /// Steps in the schedule.
    pub total_steps: usize,
    /// Size evaluations the search made.
    pub evaluations: usize,
    /// Use one removal less than the result (which does not fit).
    pub one_step_less: Option<Usage>,
    /// Per prunable layer.
    pub layers: Vec<LayerChange>,
    /// Fidelity of the result.
    pub fidelity: Option<FidelityReport>,
    /// The refit's probes: kind, count, cache.
    pub probe_description: String,
    /// For a model that cannot fit: each failing constraint and what dominates it.
    pub shortfalls: Vec<Shortfall>,
    /// For a result below the required agreement: the use of the least pruned model that
    /// keeps it, i.e. how far the budget would have to grow.
    pub needed_for_agreement: Option<Usage>,
    /// The dtype the result is stored in.
    pub dtype: WeightDtype,
    /// Why that dtype: `--dtype`, the profile's `weight_dtype`, or what `auto` compared.
    pub dtype_reason: String,
    /// For an int8 result: how it was quantized, what stays f32, what quantization alone cost.
    pub quantization: Option<QuantizationReport>,
}

/// What quantizing took and cost.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizationReport {
    /// Scheme, range estimator, corrections and the calibration probes.
    pub calibration: String,
    /// Layers that run in f32 (no int8 form, or kept on request), with conversions around
    /// them.
    pub f32_layers: Vec<String>,
    /// What every layer of the model runs as, in execution order.
    pub layers: Vec<LayerDtype>,
    /// The unpruned model quantized, against the f32 original on the check set: what
    /// quantization alone costs, before any pruning.
    pub cost: Fidelity,
    /// Whether the quantization is the file's own (a quantized file: the original is the
    /// file's int8 model, and `cost` compares it with itself).
    pub from_file: bool,
}

/// The dtype one layer runs in.
#[derive(Debug, Clone, Serialize)]
pub struct LayerDtype {
    /// The layer's full name.
    pub layer: String,
    /// `int8` or `f32`.
    pub dtype: WeightDtype,
}

impl QuantizationReport {
    /// The report of the int8 model `q`, whose quantization alone costs `cost`.
    pub fn new(q: &Int8Model, cost: Fidelity) -> Self {
        let layers = q
            .graph
            .nodes
            .iter()
            .zip(&q.node_dtypes)
            .map(|(n, d)| LayerDtype {
                layer: n.name.clone(),
                dtype: match d {
                    paoding_runtime::format::Dtype::I8 => WeightDtype::Int8,
                    paoding_runtime::format::Dtype::F32 => WeightDtype::F32,
                },
            })
            .collect();
        QuantizationReport {
            calibration: q.calibration.clone(),
            f32_layers: q.f32_nodes(),
            layers,
            cost,
            from_file: false,
        }
    }

    /// Every layer's short name and dtype, for a text report: `conv1 int8, pool f32, ...`.
    pub fn per_layer_text(&self) -> String {
        let full: Vec<&str> = self.layers.iter().map(|l| l.layer.as_str()).collect();
        crate::names::short_names(&full)
            .iter()
            .zip(&self.layers)
            .map(|(name, l)| format!("{name} {}", l.dtype.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A fit's report and, when it succeeded, the model.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The report.
    pub report: FitReport,
    /// The fitted graph (also when unpruned), `None` when it cannot fit.
    pub graph: Option<Graph>,
    /// The runtime blob of the fitted graph.
    pub blob: Option<Vec<u8>>,
}

impl Fitted {
    /// Whether the result may ship.
    pub fn ok(&self) -> bool {
        matches!(self.report.status, Status::FitsUnpruned | Status::Pruned)
    }
}

/// The budget a profile leaves for a model stored as `dtype` (a latency limit allows the MACs
/// that dtype's kernels run in it), with command-line overrides applied.
pub fn budget(
    profile: &Profile,
    o: &BudgetOverrides,
    dtype: WeightDtype,
) -> Result<Budget, CliError> {
    let mut b = profile.budget_for(dtype)?;
    if let Some(f) = o.flash_bytes {
        b.flash_bytes = f;
    }
    if let Some(r) = o.ram_bytes {
        b.ram_bytes = r;
    }
    if let Some(ms) = o.latency_ms {
        let (Some(cpm), Some(hz)) = (profile.cycles_per_mac_for(dtype), profile.clock_hz) else {
            return Err(CliError::Usage(format!(
                "--latency-ms needs clock_hz and cycles_per_mac in profile {}",
                profile.name
            )));
        };
        if !(ms > 0.0 && ms.is_finite()) {
            return Err(CliError::Usage(format!(
                "--latency-ms must be positive, got {ms}"
            )));
        }
        b.macs = Some(paoding_core::profile::latency_to_macs(ms, hz, cpm));
    }
    if let Some(m) = o.macs {
        b.macs = Some(m);
    }
    Ok(b)
}

/// `template` (an output path given to `fit`) with every `{profile}` replaced by a profile's
/// name. Any OS path: on Unix, bytes that are not UTF-8 are kept as they are.
///
/// ```
/// use paoding_cli::fit::output_path;
/// assert_eq!(output_path("out/{profile}.pdg".as_ref(), "cortex-m7"), std::path::Path::new("out/cortex-m7.pdg"));
/// ```
pub fn output_path(template: &OsStr, profile: &str) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::{OsStrExt, OsStringExt};
        let mut rest = template.as_bytes();
        let mut out = Vec::with_capacity(rest.len() + profile.len());
        while let Some(i) = rest
            .windows(PLACEHOLDER.len())
            .position(|w| w == PLACEHOLDER.as_bytes())
        {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(profile.as_bytes());
            rest = &rest[i + PLACEHOLDER.len()..];
        }
        out.extend_from_slice(rest);
        PathBuf::from(std::ffi::OsString::from_vec(out))
    }
    #[cfg(not(unix))]
    PathBuf::from(template.to_string_lossy().replace(PLACEHOLDER, profile))
}

/// Whether an output path template names each profile's file apart (contains `{profile}`).
pub fn names_each_profile(template: &OsStr) -> bool {
    output_path(template, "") != Path::new(template)
}

/// What `output_path` replaces.
const PLACEHOLDER: &str = "{profile}";

/// Fit an ONNX file to a profile (a path or a built-in name): the build-script entry point.
pub fn fit(
    model: &Path,
    profile: impl AsRef<OsStr>,
    options: &FitOptions,
) -> Result<Fitted, CliError> {
    let profile = crate::profile::load(profile).map_err(|e| CliError::Usage(e.to_string()))?;
    let imported = crate::import::import_onnx(model)?;
    let mut options = options.clone();
    let given = (options.probes.range_source == crate::probes::RangeSource::Given)
        .then_some(options.probes.input_range);
    options.probes = ProbeSettings::for_model(&imported, given, options.probes)?;
    let original = original_model(model, &imported, options.allow_f32_islands)?;
    let check = LazyCheckSet::new(&imported.graph, &options.probes, DataArgs::default())
        .for_original(original);
    fit_graph_with(
        &model.display().to_string(),
        &imported.graph,
        imported.quant.as_ref(),
        &profile,
        &options,
        &check,
        &Progress::hidden(),
    )
}

/// The model every candidate of an imported model is judged against: a quantized file's own
/// int8 model (its runtime blob, [`crate::quantize::from_file`]), else `None` (the f32
/// graph itself).
pub fn original_model(
    path: &Path,
    imported: &crate::import::Imported,
    allow_f32_islands: bool,
) -> Result<Option<crate::eval::Model>, CliError> {
    match &imported.quant {
        Some(q) if !q.weights_only() => {
            let m = crate::quantize::from_file(path, &imported.graph, q, allow_f32_islands)?;
            Ok(Some(crate::eval::Model::Blob(BlobBytes::new(&m.blob))))
        }
        _ => Ok(None),
    }
}

/// Fit an imported graph to one profile, showing each phase (the search's size evaluations,
/// probe synthesis, the refit, quantization, the fidelity check) on `progress`. Fidelity is
/// measured on `check` (built only when a result must be judged).
pub fn fit_graph(
    model: &str,
    graph: &Graph,
    profile: &Profile,
    options: &FitOptions,
    check: &LazyCheckSet<'_>,
    progress: &Progress,
) -> Result<Fitted, CliError> {
    fit_graph_with(model, graph, None, profile, options, check, progress)
}

/// [`fit_graph`] of an imported model with the file's own quantization, when it has one: a
/// quantized file is stored in int8 unless `--dtype f32` asks otherwise — its own int8 model
/// when it fits, else pruned with only the layers surgery changed quantized again (the file's
/// scales kept everywhere else, [`paoding_core::quant::imported::for_pruned`]); a file that
/// quantizes only its weights keeps its int8 weights. `check` should judge against the
/// file's int8 model ([`original_model`]).
pub fn fit_graph_with(
    model: &str,
    graph: &Graph,
    file: Option<&FileQuant>,
    profile: &Profile,
    options: &FitOptions,
    check: &LazyCheckSet<'_>,
    progress: &Progress,
) -> Result<Fitted, CliError> {
    let budgets = [
        budget(profile, &options.overrides, WeightDtype::F32)?,
        budget(profile, &options.overrides, WeightDtype::Int8)?,
    ];
    let min_agreement = options.min_agreement.or(profile.min_agreement);
    let task = paoding_core::estimate::task(graph);
    if min_agreement.is_some() && !task.is_classifier() {
        return Err(CliError::Usage(format!(
            "{model}: a minimum agreement (--min-agreement, or min_agreement in profile {}) needs a classifier, \
             and this model's output is {task:?}: top-1 agreement means nothing for it",
            profile.name
        )));
    }
    let fit = Fit {
        model,
        graph,
        profile,
        options,
        check,
        progress,
        budgets,
        min_agreement,
        probes: std::cell::OnceCell::new(),
        selection: std::cell::OnceCell::new(),
        file,
    };
    if let Some(f) = file {
        let what = if f.weights_only() {
            "the file stores its weights as int8"
        } else {
            "the file is an int8 model"
        };
        match options.dtype {
            None | Some(DtypeChoice::Auto) => {
                return fit.run(WeightDtype::Int8, format!("{what}: stored as int8"))
            }
            Some(DtypeChoice::Int8) => {
                return fit.run(WeightDtype::Int8, format!("as --dtype asks ({what})"))
            }
            Some(DtypeChoice::F32) => {}
        }
    }
    match options.dtype {
        Some(DtypeChoice::Auto) => fit.auto(),
        Some(choice) => fit.run(stored_as(choice), "as --dtype asks".into()),
        None => fit.run(
            profile.weight_dtype,
            format!("profile {}'s weight_dtype", profile.name),
        ),
    }
}

/// The dtype of a choice that is not `auto`.
fn stored_as(choice: DtypeChoice) -> WeightDtype {
    match choice {
        DtypeChoice::Int8 => WeightDtype::Int8,
        _ => WeightDtype::F32,
    }
}

/// One fit in progress: what every dtype tried shares (the refit's probes, the check set).
struct Fit<'a> {
    model: &'a str,
    graph: &'a Graph,
    profile: &'a Profile,
    options: &'a FitOptions,
    check: &'a LazyCheckSet<'a>,
    progress: &'a Progress,
    /// The budget for an f32 model and for an int8 one (a latency limit allows each dtype the
    /// MACs its kernels run in it).
    budgets: [Budget; 2],
    min_agreement: Option<f64>,
    probes: std::cell::OnceCell<crate::probes::ResolvedProbes>,
    /// Probes of their own that choose the units no merge compensates, and what the report
    /// says of them ([`crate::probes::ResolvedProbes::selection_probes`]); made only when a
    /// pruning needs them.
    selection: std::cell::OnceCell<Option<(Probes, String)>>,
    /// The file's own quantization, for a quantized file.
    file: Option<&'a FileQuant>,
}

/// A candidate result: the model a runtime would run, and the f32 graph behind it.
struct Candidate {
    graph: Graph,
    blob: Vec<u8>,
    usage: Usage,
    int8: Option<Int8Model>,
}

impl Candidate {
    /// The model the check set judges: the blob for int8 (its integer arithmetic is the
    /// result), the graph for f32 (the blob computes it exactly).
    fn judged(&self) -> Model {
        match &self.int8 {
            Some(q) => Model::Blob(BlobBytes::new(&q.blob)),
            None => Model::Graph(self.graph.clone()),
        }
    }

    /// Fidelity on `check`, without copying an f32 candidate's graph.
    fn fidelity(&self, check: &CheckSet) -> Result<Fidelity, CliError> {
        match &self.int8 {
            Some(_) => check.fidelity_of(&self.judged()),
            None => check.fidelity(&self.graph),
        }
    }
}

impl Fit<'_> {
    /// The refit's probes, which also calibrate int8 ranges; resolved once.
    fn probes(&self) -> Result<&crate::probes::ResolvedProbes, CliError> {
        if let Some(p) = self.probes.get() {
            return Ok(p);
        }
        let o = &self.options.probes;
        let resolved = crate::probes::resolve(
            self.graph,
            &o.source,
            o,
            o.cache_dir.as_deref(),
            self.progress,
        )?;
        Ok(self.probes.get_or_init(|| resolved))
    }

    /// The probes that refit and the probes that choose units for `pruner`, and their
    /// description for the report.
    fn pruning_probes(&self, pruner: &Pruner) -> Result<(&Probes, &Probes, String), CliError> {
        let resolved = self.probes()?;
        if !pruner.selects_by_probes() {
            return Ok((
                &resolved.probes,
                &resolved.probes,
                resolved.description.clone(),
            ));
        }
        if self.selection.get().is_none() {
            let made =
                resolved.selection_probes(self.graph, &self.options.probes, self.progress)?;
            let _ = self.selection.set(made);
        }
        Ok(match self.selection.get().and_then(Option::as_ref) {
            Some((select, said)) => (
                &resolved.probes,
                select,
                format!("{}{said}", resolved.description),
            ),
            None => (
                &resolved.probes,
                &resolved.probes,
                resolved.description.clone(),
            ),
        })
    }

    fn budget(&self, dtype: WeightDtype) -> &Budget {
        match dtype {
            WeightDtype::F32 => &self.budgets[0],
            WeightDtype::Int8 => &self.budgets[1],
        }
    }

    fn check(&self) -> Result<&CheckSet, CliError> {
        self.check.get(self.progress)
    }

    /// `g` stored as `dtype`: its blob and exact use.
    fn candidate(&self, g: Graph, dtype: WeightDtype) -> Result<Candidate, CliError> {
        match dtype {
            WeightDtype::F32 => Ok(Candidate {
                blob: blob::write_blob(&g, &MemoryPlan::new(&g))?,
                usage: Usage::of(&g)?,
                graph: g,
                int8: None,
            }),
            WeightDtype::Int8 => {
                let q = match self.file {
                    Some(f) if !f.weights_only() => self.file_int8(&g, f)?,
                    _ => {
                        let probes = self.probes()?;
                        self.progress.phase("quantizing");
                        let file_layers = self.file.map(|f| f.quantized.layers.as_slice());
                        crate::quantize::quantize_keeping(
                            &g,
                            &probes.probes,
                            &probes.description,
                            &self.options.int8,
                            file_layers.unwrap_or_default(),
                        )?
                    }
                };
                Ok(Candidate {
                    blob: q.blob.clone(),
                    usage: q.usage,
                    graph: g,
                    int8: Some(q),
                })
            }
        }
    }

    /// `g` (the imported graph, or a pruning of it) in the file's own int8 form: exactly the
    /// file's for the imported graph; for a pruning, the layers surgery changed quantized
    /// again and the file's parameters everywhere else.
    fn file_int8(&self, g: &Graph, f: &FileQuant) -> Result<Int8Model, CliError> {
        let path = Path::new(self.model);
        let islands = self.options.allow_f32_islands;
        if g == self.graph {
            return crate::quantize::from_file(path, g, f, islands);
        }
        let (quantized, changed) =
            paoding_core::quant::imported::for_pruned(self.graph, &f.quantized, g).ok_or_else(
                || {
                    CliError::Usage(format!(
                        "{}: the pruned model does not match the file's",
                        self.model
                    ))
                },
            )?;
        let calibration = format!(
            "the file's own quantization, except the channels pruning changed in {changed} \
             layer(s), quantized again (per channel, symmetric); every other weight and every \
             activation as the file has it"
        );
        crate::quantize::lower(path, g, quantized, f.io, islands, calibration)
    }

    /// What quantizing the unpruned model costs, on the check set.
    fn quantization_report(&self, unpruned: &Candidate) -> Result<QuantizationReport, CliError> {
        let q = unpruned
            .int8
            .as_ref()
            .ok_or_else(|| CliError::Usage("not an int8 candidate".into()))?;
        let mut report = QuantizationReport::new(q, unpruned.fidelity(self.check()?)?);
        report.from_file = self.file.is_some_and(|f| !f.weights_only());
        Ok(report)
    }

    /// `auto`: unpruned f32 if it fits; else unpruned int8 if it fits; else whichever of
    /// the pruned f32 and pruned int8 results keeps more agreement on the check set.
    fn auto(&self) -> Result<Fitted, CliError> {
        let f32_use = Usage::of(self.graph)?;
        let f32_budget = self.budget(WeightDtype::F32);
        if f32_use.fits(f32_budget) {
            return self.run(
                WeightDtype::F32,
                "auto: the model fits unpruned in f32, its most faithful form".into(),
            );
        }
        let int8 = self.run(WeightDtype::Int8, String::new())?;
        if int8.report.status == Status::FitsUnpruned || int8.report.status == Status::CannotFit {
            let mut int8 = int8;
            int8.report.dtype_reason = if int8.report.status == Status::CannotFit {
                "auto: the model fits neither in f32 nor in int8, at any pruning allowed".into()
            } else {
                format!(
                    "auto: f32 needs pruning ({}), int8 fits unpruned",
                    over_text(&f32_use, f32_budget)
                )
            };
            return Ok(int8);
        }
        let f32 = self.run(WeightDtype::F32, String::new())?;
        let score = |f: &Fitted| {
            f.report.fidelity.as_ref().map(|r| {
                if r.task.is_classifier() {
                    r.fidelity.agreement
                } else {
                    -r.fidelity.relative_l2
                }
            })
        };
        let text = |f: &Fitted| match &f.report.fidelity {
            Some(r) if r.task.is_classifier() => {
                format!("{:.2} % agreement", 100.0 * r.fidelity.agreement)
            }
            Some(r) => format!("relative L2 error {:.4}", r.fidelity.relative_l2),
            None => "no figure".into(),
        };
        let why = format!(
            "auto: neither fits unpruned; pruned to fit, int8 keeps {} and f32 {}",
            text(&int8),
            text(&f32)
        );
        let int8_wins = match (int8.ok(), f32.ok()) {
            (true, false) => true,
            (false, true) => false,
            _ => score(&int8) >= score(&f32),
        };
        let mut chosen = if int8_wins { int8 } else { f32 };
        chosen.report.dtype_reason =
            format!("{why}: {} kept", if int8_wins { "int8" } else { "f32" });
        Ok(chosen)
    }

    /// Fit storing the model as `dtype`.
    fn run(&self, dtype: WeightDtype, reason: String) -> Result<Fitted, CliError> {
        let (graph, budget, model) = (self.graph, self.budget(dtype), self.model);
        let options = self.options;
        // Widths in the kernels' blocks: the command line's, else the board's.
        let round_to = options
            .round_to
            .or(self.profile.round_to)
            .unwrap_or(1)
            .max(1);
        let task = paoding_core::estimate::task(graph);
        let as_stored = Usage::of_dtype(graph, dtype)?;
        // A quantized file's original is its own int8 model.
        let file_model = match self.file.filter(|f| !f.weights_only()) {
            Some(f) if dtype == WeightDtype::Int8 => Some(self.file_int8(graph, f)?),
            _ => None,
        };
        let original = match &file_model {
            Some(m) => m.usage,
            None => Usage::of(graph)?,
        };
        let mut report = FitReport {
            schema: FIT_SCHEMA,
            model: model.to_string(),
            profile: self.profile.name.clone(),
            budget: *budget,
            status: Status::FitsUnpruned,
            message: String::new(),
            original,
            fitted: as_stored,
            constraints: as_stored.check(budget),
            binding: Resource::binding(&as_stored, budget),
            options: FitOptions {
                round_to: Some(round_to),
                ..options.clone()
            },
            step: 0,
            total_steps: 0,
            evaluations: 1,
            one_step_less: None,
            layers: Vec::new(),
            fidelity: None,
            probe_description: String::new(),
            shortfalls: Vec::new(),
            needed_for_agreement: None,
            dtype,
            dtype_reason: reason,
            quantization: None,
        };
        let in_dtype = match dtype {
            WeightDtype::F32 => String::new(),
            WeightDtype::Int8 => " in int8".to_string(),
        };

        let unpruned = if as_stored.fits(budget) || dtype == WeightDtype::Int8 {
            Some(self.candidate(graph.clone(), dtype)?)
        } else {
            None
        };
        if let Some(q) = unpruned.as_ref().filter(|c| c.int8.is_some()) {
            report.probe_description = self.probes()?.description.clone();
            // Left unpruned, the result is this model: its own measurement below says what
            // quantization costs, without running it over the check set twice.
            if !q.usage.fits(budget) {
                report.quantization = Some(self.quantization_report(q)?);
            }
        }
        if let Some(c) = unpruned.filter(|c| c.usage.fits(budget)) {
            report.fitted = c.usage;
            report.constraints = c.usage.check(budget);
            report.message = format!(
                "{model} fits {}{in_dtype} as it is: left unpruned",
                self.profile.name
            );
            if c.int8.is_some() {
                self.progress.phase("measuring fidelity");
                let fidelity = self.check()?.measure_model(&c.judged(), &c.graph)?;
                if let Some(q) = &c.int8 {
                    let mut quantization = QuantizationReport::new(q, fidelity.fidelity);
                    quantization.from_file = self.file.is_some_and(|f| !f.weights_only());
                    report.quantization = Some(quantization);
                }
                report
                    .message
                    .push_str(&format!(", {}", result_text(&fidelity)));
                let agreement = fidelity.fidelity.agreement;
                report.fidelity = Some(fidelity);
                if let Some(min) = self.min_agreement.filter(|&m| agreement < m) {
                    report.status = Status::FidelityTooLow;
                    report.message = format!(
                        "{model}: int8 without pruning keeps only {:.2} % agreement (< {:.2} %): \
                         quantization alone costs too much; try --dtype f32",
                        100.0 * agreement,
                        100.0 * min
                    );
                    return Ok(Fitted {
                        report,
                        graph: None,
                        blob: None,
                    });
                }
            }
            return Ok(Fitted {
                report,
                graph: Some(c.graph),
                blob: Some(c.blob),
            });
        }

        let prune_options = PruneOptions {
            method: options.method,
            scope: options.scope,
            refit: options.refit,
            min_units: options.min_units,
            round_to,
            max_layer_ratio: options.max_layer_ratio,
            input_range: options.probes.input_range,
            ..Default::default()
        };
        let pruner = Pruner::new(graph, &prune_options);
        let schedule = Schedule::for_scope(&pruner, options.scope, report.binding)?;
        let progress = self.progress;
        let found = fit::search(
            &pruner,
            &schedule,
            budget,
            dtype,
            &mut |done: usize, total: usize| {
                // A bisection over `total` steps takes about log2(total) + 2 evaluations.
                let expected = (usize::BITS - total.leading_zeros()) as usize + 2;
                progress.steps("searching: size evaluations", done, expected.max(done));
            },
        )?;
        report.total_steps = found.total_steps;
        report.evaluations = found.evaluations;
        let Some(mut step) = found.step else {
            let smallest = pruner.preview_sizes(&schedule.counts(found.total_steps))?;
            report.status = Status::CannotFit;
            report.fitted = found.usage;
            report.constraints = found.usage.check(budget);
            report.step = found.total_steps;
            report.shortfalls = fit::explain(&smallest, budget, dtype)?;
            report.message = cannot_fit_message(model, self.profile, &report.shortfalls);
            return Ok(Fitted {
                report,
                graph: None,
                blob: None,
            });
        };

        let (refit, select, description) = self.pruning_probes(&pruner)?;
        report.probe_description = description;
        progress.phase("pruning and refitting");
        let mut pruned = pruner.apply_with(&schedule.counts(step), refit, select)?;
        let mut result = self.candidate(pruned.graph.clone(), dtype)?;
        // The search sized int8 candidates with placeholder parameters; a calibration whose
        // multipliers TFLite's scheme cannot represent keeps a layer f32 and may not fit.
        while !result.usage.fits(budget) && step < found.total_steps {
            step += 1;
            pruned = pruner.apply_with(&schedule.counts(step), refit, select)?;
            result = self.candidate(pruned.graph.clone(), dtype)?;
        }
        let check = self.check()?;
        progress.phase("measuring fidelity");
        let fidelity = check.measure_model(&result.judged(), &result.graph)?;
        if let (Some(q), Some(r)) = (report.quantization.as_mut(), &result.int8) {
            // What the stored result's quantization is (for a quantized file: which layers
            // pruning made it quantize again).
            q.calibration.clone_from(&r.calibration);
        }
        report.status = Status::Pruned;
        report.fitted = result.usage;
        report.constraints = result.usage.check(budget);
        report.step = step;
        report.one_step_less = found.usage_one_step_less;
        report.layers = pruned.layers;
        report.message = format!(
            "{model} pruned to fit {}{in_dtype}: {} of {} removable units removed, {}",
            self.profile.name,
            step,
            found.total_steps,
            if task.is_classifier() {
                fidelity.agreement_text()
            } else {
                result_text(&fidelity)
            }
        );
        let agreement = fidelity.fidelity.agreement;
        report.fidelity = Some(fidelity);
        if let Some(min) = self.min_agreement {
            if agreement < min {
                progress.phase("searching for the pruning that keeps the agreement");
                let needed = self.least_pruning_keeping(&pruner, &schedule, step, min, dtype)?;
                report.status = Status::FidelityTooLow;
                report.message = format!(
                    "{model}: fitting {}{in_dtype} needs {step} removals, which keep only {:.2} % agreement (< {:.2} %); \
                     keeping it needs flash {} B (+{} B), RAM {} B (+{} B), {} MACs",
                    self.profile.name,
                    100.0 * agreement,
                    100.0 * min,
                    needed.flash_bytes,
                    needed.flash_bytes.saturating_sub(budget.flash_bytes),
                    needed.ram_bytes,
                    needed.ram_bytes.saturating_sub(budget.ram_bytes),
                    needed.macs
                );
                report.needed_for_agreement = Some(needed);
                return Ok(Fitted {
                    report,
                    graph: None,
                    blob: None,
                });
            }
        }
        Ok(Fitted {
            report,
            graph: Some(result.graph),
            blob: Some(result.blob),
        })
    }

    /// The use of the most pruned model (fewest steps below `step`) that still keeps `min`
    /// agreement on the check set, found by bisection (agreement falls as pruning grows).
    fn least_pruning_keeping(
        &self,
        pruner: &Pruner,
        schedule: &Schedule,
        step: usize,
        min: f64,
        dtype: WeightDtype,
    ) -> Result<Usage, CliError> {
        let (refit, select, _) = self.pruning_probes(pruner)?;
        let check = self.check()?;
        let keeps = |k: usize| -> Result<(bool, Usage), CliError> {
            let p = pruner.apply_with(&schedule.counts(k), refit, select)?;
            let c = self.candidate(p.graph, dtype)?;
            let f = c.fidelity(check)?;
            Ok((f.agreement >= min, c.usage))
        };
        // Invariant: `lo` keeps the agreement (step 0 is the original), `hi` does not.
        let (mut lo, mut hi) = (0usize, step);
        let mut best = Usage::of_dtype(self.graph, dtype)?;
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let (ok, u) = keeps(mid)?;
            if ok {
                lo = mid;
                best = u;
            } else {
                hi = mid;
            }
        }
        Ok(best)
    }
}

/// A result's figure for a message: agreement for a classifier, else relative L2 error.
fn result_text(f: &FidelityReport) -> String {
    if f.task.is_classifier() {
        f.agreement_text()
    } else {
        format!(
            "relative L2 error {:.4}{}",
            f.fidelity.relative_l2,
            if f.data_free { " (estimated)" } else { "" }
        )
    }
}

/// What a use exceeds of a budget, for a message.
fn over_text(u: &Usage, b: &Budget) -> String {
    let over: Vec<String> = u
        .check(b)
        .iter()
        .filter(|c| !c.fits)
        .map(|c| format!("{} {} > {}", c.resource, c.used, c.budget))
        .collect();
    over.join(", ")
}

fn cannot_fit_message(model: &str, profile: &Profile, shortfalls: &[Shortfall]) -> String {
    // The layers and tensors by their short names (the report's `shortfalls` has them in full).
    let full: Vec<&str> = shortfalls
        .iter()
        .flat_map(|s| s.dominated_by.iter().map(|(n, _)| n.as_str()))
        .collect();
    let mut short = crate::names::short_names(&full).into_iter();
    let mut parts = Vec::new();
    for s in shortfalls {
        let what = match s.resource {
            Resource::Flash => "flash",
            Resource::Ram => "RAM",
            Resource::Macs => "MACs",
        };
        let unit = if s.resource == Resource::Macs {
            ""
        } else {
            " B"
        };
        let top: Vec<String> = s
            .dominated_by
            .iter()
            .map(|(_, b)| format!("{} ({b}{unit})", short.next().unwrap_or_default()))
            .collect();
        let floor = s
            .floor
            .as_ref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        parts.push(format!(
            "{what}: {}{unit} at maximum pruning > budget {}{unit} (over by {}{unit}){floor}; dominated by {}",
            s.used,
            s.budget,
            s.used - s.budget,
            top.join(", ")
        ));
    }
    format!("{model} cannot fit {}: {}", profile.name, parts.join("; "))
}

impl FitReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.message);
        let why = match self.dtype_reason.as_str() {
            "" => String::new(),
            r => format!(" ({r})"),
        };
        let _ = writeln!(out, "  stored as {}{why}", self.dtype.name());
        if let Some(q) = self.quantization.as_ref().filter(|q| q.from_file) {
            let _ = writeln!(out, "  quantization: {}", q.calibration);
            let _ = writeln!(
                out,
                "  the original is the file's own int8 model: sizes and fidelity are against it"
            );
        } else if let Some(q) = &self.quantization {
            let _ = writeln!(out, "  quantization: {}", q.calibration);
            let _ = writeln!(
                out,
                "  quantization alone (unpruned int8 vs the f32 original, same check set): agreement {:.2} %, KL mean {:.4}, relative L2 error {:.4}",
                100.0 * q.cost.agreement,
                q.cost.mean_kl,
                q.cost.relative_l2
            );
            let _ = writeln!(out, "  dtype per layer: {}", q.per_layer_text());
        }
        let _ = writeln!(
            out,
            "\n  {:<6} {:>12} {:>12} {:>12}  verdict",
            "", "original", "result", "budget"
        );
        for c in &self.constraints {
            let before = match c.resource.as_str() {
                "flash" => self.original.flash_bytes,
                "ram" => self.original.ram_bytes,
                _ => self.original.macs,
            };
            let verdict = if c.fits {
                format!("fits, headroom {}", c.headroom)
            } else {
                format!("OVER by {}", -c.headroom)
            };
            let _ = writeln!(
                out,
                "  {:<6} {:>12} {:>12} {:>12}  {verdict}",
                c.resource, before, c.used, c.budget
            );
        }
        if !self.layers.is_empty() {
            let _ = writeln!(out, "\n  layer widths:");
            let names = crate::names::short_names(
                &self
                    .layers
                    .iter()
                    .map(|l| l.layer.as_str())
                    .collect::<Vec<_>>(),
            );
            let changed: Vec<_> = self
                .layers
                .iter()
                .zip(&names)
                .filter(|(l, _)| l.before != l.after)
                .collect();
            let width = changed
                .iter()
                .map(|(_, n)| n.chars().count())
                .max()
                .unwrap_or(0);
            for (l, name) in changed {
                let _ = writeln!(out, "    {name:<width$} {:>5} -> {}", l.before, l.after);
            }
        }
        if let Some(f) = &self.fidelity {
            out.push('\n');
            out.push_str(&f.to_text("  "));
        }
        out
    }
}
