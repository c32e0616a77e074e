//! `paoding prune`: prune an imported model by a ratio and report what changed — sizes before
//! and after, per-layer widths, and fidelity on probe inputs (or real data).

use std::fmt::Write as _;

use paoding_core::cost::ModelCost;
use paoding_core::fidelity::{self, Fidelity};
use paoding_core::interp;
use paoding_core::ir::Graph;
use paoding_core::probes::Probes;
use paoding_core::prune::{LayerChange, Method, PruneOptions, Pruner, Scope};
use serde::Serialize;

use crate::error::CliError;
use crate::progress::Progress;

/// Version tag of the JSON layout.
pub const PRUNE_SCHEMA: &str = "paoding.prune/1";

/// Most probe inputs by default, for every command (`prune`, `fit`, `sweep`, `eval`), so that
/// a sweep point reproduces `prune --ratio`.
pub const DEFAULT_PROBE_COUNT: usize = 512;

/// Where probe inputs come from, and how many.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSettings {
    /// Most probes (fewer on large models, see [`ProbeSettings::count_for`]).
    pub count: usize,
    /// Input range the probes are drawn from (and synthesized probes clamped to).
    pub input_range: (f32, f32),
    /// Seed of the draws.
    pub seed: u64,
    /// What the refit's probes are.
    pub source: crate::probes::ProbeSource,
    /// Where synthesized probes are cached (`None`: not cached).
    pub cache_dir: Option<std::path::PathBuf>,
    /// The model with its batch norms and their running statistics
    /// ([`crate::import::Imported::with_bn_stats`]): synthesis runs on it, so `bn` and `auto`
    /// can match the statistics the folded graph no longer has.
    #[serde(skip)]
    pub with_bn_stats: Option<std::sync::Arc<Graph>>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            count: DEFAULT_PROBE_COUNT,
            input_range: (0.0, 1.0),
            seed: 0,
            source: crate::probes::ProbeSource::Auto,
            cache_dir: crate::probes::default_cache_dir(),
            with_bn_stats: None,
        }
    }
}

/// Model evaluations (in MACs) one pass over the probes may cost: beyond it, fewer probes
/// are used, so that pruning a large model stays interactive. Convolutions see many
/// observations per probe (one per output position), so they need far fewer probes.
const PROBE_WORK_MACS: u64 = 400_000_000;
/// Fewest probes used, whatever the model costs.
const MIN_PROBES: usize = 16;

impl ProbeSettings {
    /// How many probes a model of this cost gets: the requested count, capped by the work budget.
    pub fn count_for(&self, g: &Graph) -> usize {
        let macs = ModelCost::new(g, Default::default()).macs.max(1);
        let affordable = (PROBE_WORK_MACS / macs) as usize;
        self.count.min(affordable.max(MIN_PROBES)).max(1)
    }

    /// The probes the refit uses.
    pub fn refit_probes(&self, g: &Graph) -> Probes {
        self.uniform(g, self.seed)
    }

    /// Fresh probes (another seed) to measure fidelity on inputs the refit never saw.
    pub fn check_probes(&self, g: &Graph) -> Probes {
        self.uniform(g, self.seed ^ 0x5EED_F1DE)
    }

    fn uniform(&self, g: &Graph, seed: u64) -> Probes {
        let (lo, hi) = self.input_range;
        Probes::uniform(g.values[g.input].len(), self.count_for(g), lo, hi, seed)
    }
}

/// Real inputs (and optionally labels) to evaluate on.
#[derive(Debug, Clone)]
pub struct EvalData {
    /// Inputs, sample after sample.
    pub inputs: Probes,
    /// Class labels, one per sample.
    pub labels: Option<Vec<usize>>,
    /// Where they came from, for the report.
    pub source: String,
}

/// Size of a model, as every report states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size {
    /// Parameters.
    pub params: u64,
    /// Bytes of weights.
    pub weight_bytes: u64,
    /// MACs per inference.
    pub macs: u64,
    /// Activation arena of the static memory plan (peak RAM).
    pub arena_bytes: u64,
}

impl Size {
    /// Size of a checked graph.
    pub fn of(g: &Graph) -> Self {
        let c = ModelCost::new(g, Default::default());
        Size {
            params: c.params,
            weight_bytes: c.weight_bytes,
            macs: c.macs,
            arena_bytes: c.arena_bytes,
        }
    }
}

/// Fidelity of the pruned model, and accuracy when labels were given.
#[derive(Debug, Clone, Serialize)]
pub struct FidelityReport {
    /// What the comparison ran on (`uniform probes ...` or the data file).
    pub inputs: String,
    /// Agreement, KL and relative L2 against the original.
    pub fidelity: Fidelity,
    /// Accuracy of the original, with labels.
    pub accuracy_before: Option<f64>,
    /// Accuracy of the pruned model, with labels.
    pub accuracy_after: Option<f64>,
}

/// Everything `paoding prune` says.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// [`PRUNE_SCHEMA`].
    pub schema: &'static str,
    /// The input model.
    pub model: String,
    /// The options used.
    pub options: PruneOptions,
    /// Probes the refit used (when it ran).
    pub probes: ProbeSettings,
    /// Whether layers were refitted.
    pub refitted: bool,
    /// Probes the refit actually used (the request, capped for large models).
    pub probes_used: usize,
    /// What they were (uniform, synthesized and how, or a file; cached where).
    pub probe_description: String,
    /// Size before.
    pub before: Size,
    /// Size after.
    pub after: Size,
    /// Per prunable layer.
    pub layers: Vec<LayerChange>,
    /// How close the pruned model stays.
    pub fidelity: FidelityReport,
}

/// Prune `graph` and measure the result, showing each phase on `progress`.
pub fn prune(
    model: &str,
    graph: &Graph,
    options: &PruneOptions,
    probes: &ProbeSettings,
    data: Option<&EvalData>,
    progress: &Progress,
) -> Result<(Graph, PruneReport), CliError> {
    if !(0.0..1.0).contains(&options.ratio) {
        return Err(CliError::Usage(format!(
            "--ratio must be in [0, 1), got {}",
            options.ratio
        )));
    }
    let pruner = Pruner::new(graph, options);
    let s = pruner.structure();
    if s.items.iter().all(|i| i.frozen) {
        return Err(CliError::Usage(format!(
            "{model}: nothing to prune: no layer has a channel that can be removed (the output layer never is)"
        )));
    }
    let refit = options.refit.unwrap_or(options.method.refits_by_default());
    let resolved = if refit {
        crate::probes::resolve(
            graph,
            &probes.source,
            probes,
            probes.cache_dir.as_deref(),
            progress,
        )?
    } else {
        crate::probes::ResolvedProbes {
            probes: probes.refit_probes(graph),
            description: "none (no refit)".into(),
            method: "none".into(),
        }
    };
    progress.phase(if refit {
        "pruning and refitting"
    } else {
        "pruning"
    });
    let pruned = pruner.apply(&pruner.counts_for_ratio(options.ratio), &resolved.probes)?;
    progress.phase("measuring fidelity");
    let fidelity = measure(graph, &pruned.graph, probes, data)?;
    let report = PruneReport {
        schema: PRUNE_SCHEMA,
        model: model.to_string(),
        options: options.clone(),
        probes: probes.clone(),
        refitted: pruned.refitted,
        probes_used: if refit { resolved.probes.count() } else { 0 },
        probe_description: resolved.description,
        before: Size::of(graph),
        after: Size::of(&pruned.graph),
        layers: pruned.layers,
        fidelity,
    };
    Ok((pruned.graph, report))
}

/// Compare two models on real data (with accuracy when labelled) or on fresh probes.
pub fn measure(
    original: &Graph,
    pruned: &Graph,
    probes: &ProbeSettings,
    data: Option<&EvalData>,
) -> Result<FidelityReport, CliError> {
    let (inputs, source) = match data {
        Some(d) => (d.inputs.clone(), d.source.clone()),
        None => (
            probes.check_probes(original),
            format!(
                "{} uniform probes in [{}, {}] (no data given)",
                probes.count_for(original),
                probes.input_range.0,
                probes.input_range.1
            ),
        ),
    };
    let a = interp::run_batch(original, &inputs.data)?;
    let b = interp::run_batch(pruned, &inputs.data)?;
    let per_sample = original.values[original.output].len();
    let labels = data.and_then(|d| d.labels.as_ref());
    Ok(FidelityReport {
        inputs: source,
        fidelity: fidelity::compare(&a, &b, per_sample),
        accuracy_before: labels.map(|l| fidelity::accuracy(&a, per_sample, l)),
        accuracy_after: labels.map(|l| fidelity::accuracy(&b, per_sample, l)),
    })
}

/// Parse `--method`.
pub fn parse_method(s: &str) -> Result<Method, String> {
    match s {
        "merge" => Ok(Method::Merge),
        "paoding" => Ok(Method::Paoding),
        "magnitude" => Ok(Method::Magnitude),
        _ => Err(format!("unknown method '{s}' (merge, paoding, magnitude)")),
    }
}

/// Parse `--scope`.
pub fn parse_scope(s: &str) -> Result<Scope, String> {
    match s {
        "uniform" => Ok(Scope::Uniform),
        "global" => Ok(Scope::Global),
        _ => Err(format!("unknown scope '{s}' (uniform, global)")),
    }
}

/// Parse `lo,hi`.
pub fn parse_range(s: &str) -> Result<(f32, f32), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("'{s}' is not lo,hi"))?;
    let (lo, hi): (f32, f32) = (
        a.trim()
            .parse()
            .map_err(|_| format!("'{a}' is not a number"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("'{b}' is not a number"))?,
    );
    if lo >= hi || lo.is_nan() || hi.is_nan() || !lo.is_finite() || !hi.is_finite() {
        return Err(format!("input range {lo},{hi} is empty"));
    }
    Ok((lo, hi))
}

impl PruneReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let (b, a) = (&self.before, &self.after);
        let pct = |x: u64, y: u64| {
            if x == 0 {
                0.0
            } else {
                100.0 * (1.0 - y as f64 / x as f64)
            }
        };
        let _ = writeln!(
            out,
            "{}: method {:?}, scope {:?}, ratio {}{}",
            self.model,
            self.options.method,
            self.options.scope,
            self.options.ratio,
            if self.refitted {
                format!(", refit on {}", self.probe_description)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "\n{:<14} {:>12} {:>12} {:>9}",
            "", "before", "after", "removed"
        );
        for (name, x, y) in [
            ("params", b.params, a.params),
            ("weight bytes", b.weight_bytes, a.weight_bytes),
            ("MACs", b.macs, a.macs),
            ("peak RAM B", b.arena_bytes, a.arena_bytes),
        ] {
            let _ = writeln!(out, "{name:<14} {x:>12} {y:>12} {:>8.1}%", pct(x, y));
        }
        let _ = writeln!(out, "\nlayer widths:");
        let names = crate::names::short_names(
            &self
                .layers
                .iter()
                .map(|l| l.layer.as_str())
                .collect::<Vec<_>>(),
        );
        let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
        for (l, name) in self.layers.iter().zip(&names) {
            let _ = writeln!(out, "  {name:<width$} {:>5} -> {}", l.before, l.after);
        }
        let f = &self.fidelity;
        let _ = writeln!(out, "\nfidelity on {}:", f.inputs);
        let _ = writeln!(
            out,
            "  top-1 agreement {:.2} %, KL mean {:.4} max {:.4}, relative L2 error {:.4}",
            100.0 * f.fidelity.agreement,
            f.fidelity.mean_kl,
            f.fidelity.max_kl,
            f.fidelity.relative_l2
        );
        if let (Some(x), Some(y)) = (f.accuracy_before, f.accuracy_after) {
            let _ = writeln!(out, "  accuracy {:.2} % -> {:.2} %", 100.0 * x, 100.0 * y);
        }
        out
    }
}
