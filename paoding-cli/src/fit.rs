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
use paoding_core::fit::{self, Resource, Schedule, Shortfall, Usage};
use paoding_core::ir::Graph;
use paoding_core::plan::MemoryPlan;
use paoding_core::profile::{Budget, Constraint, Profile};
use paoding_core::prune::{LayerChange, Method, PruneOptions, Pruner, Scope};
use serde::Serialize;

use crate::check::{DataArgs, FidelityReport, LazyCheckSet};
use crate::error::CliError;
use crate::probes::ProbeSettings;
use crate::progress::Progress;

/// Version tag of the JSON layout (2: fidelity on the check set, with its interval,
/// robustness and warnings).
pub const FIT_SCHEMA: &str = "paoding.fit/2";

/// Version tag of the JSON object `fit` prints for several boards (one [`FIT_SCHEMA`] report
/// per board).
pub const FLEET_SCHEMA: &str = "paoding.fit-fleet/2";

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
    /// Keep widths multiples of this.
    pub round_to: usize,
    /// Largest fraction of one layer global allocation removes.
    pub max_layer_ratio: f64,
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
            round_to: 1,
            max_layer_ratio: 0.9,
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

/// The budget a profile leaves, with command-line overrides applied.
pub fn budget(profile: &Profile, o: &BudgetOverrides) -> Result<Budget, CliError> {
    let mut b = profile.budget()?;
    if let Some(f) = o.flash_bytes {
        b.flash_bytes = f;
    }
    if let Some(r) = o.ram_bytes {
        b.ram_bytes = r;
    }
    if let Some(ms) = o.latency_ms {
        let (Some(cpm), Some(hz)) = (profile.cycles_per_mac, profile.clock_hz) else {
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
    let check = LazyCheckSet::new(&imported.graph, &options.probes, DataArgs::default());
    fit_graph(
        &model.display().to_string(),
        &imported.graph,
        &profile,
        &options,
        &check,
        &Progress::hidden(),
    )
}

/// Fit an imported graph to one profile, showing each phase (the search's size evaluations,
/// probe synthesis, the refit, the fidelity check) on `progress`. Fidelity is measured on
/// `check` (built only if the model must be pruned).
pub fn fit_graph(
    model: &str,
    graph: &Graph,
    profile: &Profile,
    options: &FitOptions,
    check: &LazyCheckSet<'_>,
    progress: &Progress,
) -> Result<Fitted, CliError> {
    let budget = budget(profile, &options.overrides)?;
    let min_agreement = options.min_agreement.or(profile.min_agreement);
    let task = paoding_core::estimate::task(graph);
    if min_agreement.is_some() && !task.is_classifier() {
        return Err(CliError::Usage(format!(
            "{model}: a minimum agreement (--min-agreement, or min_agreement in profile {}) needs a classifier,              and this model's output is {task:?}: top-1 agreement means nothing for it",
            profile.name
        )));
    }
    let original = Usage::of(graph)?;
    let prune_options = PruneOptions {
        method: options.method,
        scope: options.scope,
        refit: options.refit,
        min_units: options.min_units,
        round_to: options.round_to.max(1),
        max_layer_ratio: options.max_layer_ratio,
        input_range: options.probes.input_range,
        ..Default::default()
    };
    let mut report = FitReport {
        schema: FIT_SCHEMA,
        model: model.to_string(),
        profile: profile.name.clone(),
        budget,
        status: Status::FitsUnpruned,
        message: String::new(),
        original,
        fitted: original,
        constraints: original.check(&budget),
        binding: Resource::binding(&original, &budget),
        options: options.clone(),
        step: 0,
        total_steps: 0,
        evaluations: 1,
        one_step_less: None,
        layers: Vec::new(),
        fidelity: None,
        probe_description: String::new(),
        shortfalls: Vec::new(),
        needed_for_agreement: None,
    };
    if original.fits(&budget) {
        report.message = format!("{model} fits {} as it is: left unpruned", profile.name);
        let blob = blob::write_blob(graph, &MemoryPlan::new(graph))?;
        return Ok(Fitted {
            report,
            graph: Some(graph.clone()),
            blob: Some(blob),
        });
    }

    let pruner = Pruner::new(graph, &prune_options);
    let schedule = Schedule::for_scope(&pruner, options.scope, report.binding)?;
    let found = fit::search(
        &pruner,
        &schedule,
        &budget,
        &mut |done: usize, total: usize| {
            // A bisection over `total` steps takes about log2(total) + 2 evaluations.
            let expected = (usize::BITS - total.leading_zeros()) as usize + 2;
            progress.steps("searching: size evaluations", done, expected.max(done));
        },
    )?;
    report.total_steps = found.total_steps;
    report.evaluations = found.evaluations;
    let Some(step) = found.step else {
        let smallest = pruner.preview_sizes(&schedule.counts(found.total_steps))?;
        report.status = Status::CannotFit;
        report.fitted = found.usage;
        report.constraints = found.usage.check(&budget);
        report.step = found.total_steps;
        report.shortfalls = fit::explain(&smallest, &budget)?;
        report.message = cannot_fit_message(model, profile, &report.shortfalls);
        return Ok(Fitted {
            report,
            graph: None,
            blob: None,
        });
    };

    let mut resolved = crate::probes::resolve(
        graph,
        &options.probes.source,
        &options.probes,
        options.probes.cache_dir.as_deref(),
        progress,
    )?;
    if pruner.selects_by_probes() {
        resolved.add_selection(graph, &options.probes, progress)?;
    }
    progress.phase("pruning and refitting");
    let pruned = pruner.apply_with(
        &schedule.counts(step),
        &resolved.probes,
        resolved.selection(),
    )?;
    report.probe_description = resolved.description.clone();
    let usage = Usage::of(&pruned.graph)?;
    let check = check.get(progress)?;
    progress.phase("measuring fidelity");
    let fidelity = check.measure(&pruned.graph)?;
    report.status = Status::Pruned;
    report.fitted = usage;
    report.constraints = usage.check(&budget);
    report.step = step;
    report.one_step_less = found.usage_one_step_less;
    report.layers = pruned.layers;
    report.message = format!(
        "{model} pruned to fit {}: {} of {} removable units removed, {}",
        profile.name,
        step,
        found.total_steps,
        if task.is_classifier() {
            fidelity.agreement_text()
        } else {
            format!(
                "relative L2 error {:.4}{}",
                fidelity.fidelity.relative_l2,
                if fidelity.data_free {
                    " (estimated)"
                } else {
                    ""
                }
            )
        }
    );
    let agreement = fidelity.fidelity.agreement;
    report.fidelity = Some(fidelity);
    if let Some(min) = min_agreement {
        if agreement < min {
            progress.phase("searching for the pruning that keeps the agreement");
            let needed =
                least_pruning_keeping(&pruner, &schedule, step, min, &resolved, graph, check)?;
            report.status = Status::FidelityTooLow;
            report.message = match needed {
                Some(u) => format!(
                    "{model}: fitting {} needs {step} removals, which keep only {:.2} % agreement (< {:.2} %); \
                     keeping it needs flash {} B (+{} B), RAM {} B (+{} B), {} MACs",
                    profile.name,
                    100.0 * agreement,
                    100.0 * min,
                    u.flash_bytes,
                    u.flash_bytes.saturating_sub(budget.flash_bytes),
                    u.ram_bytes,
                    u.ram_bytes.saturating_sub(budget.ram_bytes),
                    u.macs
                ),
                None => format!(
                    "{model}: fitting {} keeps only {:.2} % agreement (< {:.2} %), and no pruning keeps it",
                    profile.name,
                    100.0 * agreement,
                    100.0 * min
                ),
            };
            report.needed_for_agreement = needed;
            return Ok(Fitted {
                report,
                graph: None,
                blob: None,
            });
        }
    }
    let blob = blob::write_blob(&pruned.graph, &MemoryPlan::new(&pruned.graph))?;
    Ok(Fitted {
        report,
        graph: Some(pruned.graph),
        blob: Some(blob),
    })
}

/// The use of the most pruned model (fewest steps below `step`) that still keeps `min`
/// agreement on the check set, found by bisection (agreement falls as pruning grows).
fn least_pruning_keeping(
    pruner: &Pruner,
    schedule: &Schedule,
    step: usize,
    min: f64,
    probes: &crate::probes::ResolvedProbes,
    graph: &Graph,
    check: &crate::check::CheckSet,
) -> Result<Option<Usage>, CliError> {
    let keeps = |k: usize| -> Result<(bool, Usage), CliError> {
        let p = pruner.apply_with(&schedule.counts(k), &probes.probes, probes.selection())?;
        let f = check.fidelity(&p.graph)?;
        Ok((f.agreement >= min, Usage::of(&p.graph)?))
    };
    // Invariant: `lo` keeps the agreement (step 0 is the original), `hi` does not.
    let (mut lo, mut hi) = (0usize, step);
    let mut best = Usage::of(graph)?;
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
    Ok(Some(best))
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
