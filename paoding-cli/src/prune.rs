//! `paoding prune`: prune an imported model by a ratio and report what changed — sizes before
//! and after, per-layer widths, and fidelity on the check set (real data, or estimated on a
//! held-out data-free set).

use std::fmt::Write as _;

use paoding_core::cost::ModelCost;
use paoding_core::ir::Graph;
use paoding_core::prune::{LayerChange, Method, PruneOptions, Pruner, Scope};
use serde::Serialize;

use crate::check::{CheckSet, FidelityReport};
use crate::error::CliError;
use crate::probes::ProbeSettings;
use crate::progress::Progress;

/// Version tag of the JSON layout (2: fidelity on the check set, with its interval,
/// robustness and warnings).
pub const PRUNE_SCHEMA: &str = "paoding.prune/2";

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
    /// For a quantized file: how the pruned model was judged in int8.
    pub int8: Option<String>,
}

/// Prune `graph` and measure the result on `check`, showing each phase on `progress`.
pub fn prune(
    model: &str,
    graph: &Graph,
    options: &PruneOptions,
    probes: &ProbeSettings,
    check: &CheckSet,
    progress: &Progress,
) -> Result<(Graph, PruneReport), CliError> {
    prune_with(model, graph, None, options, probes, check, progress)
}

/// [`prune`] of an imported model with the file's own quantization, when it has one
/// (activations quantized): the result is judged in int8 — its layers that surgery changed
/// quantized again, everything else as the file has it
/// ([`paoding_core::quant::imported::for_pruned`]) — against `check`, which should hold the
/// file's int8 model's outputs ([`crate::fit::original_model`]). The graph returned (and
/// written as ONNX) is the pruned model's f32 form; `fit` writes its int8 blob.
pub fn prune_with(
    model: &str,
    graph: &Graph,
    file: Option<(&crate::import::FileQuant, bool)>,
    options: &PruneOptions,
    probes: &ProbeSettings,
    check: &CheckSet,
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
        let mut resolved = crate::probes::resolve(
            graph,
            &probes.source,
            probes,
            probes.cache_dir.as_deref(),
            progress,
        )?;
        if pruner.selects_by_probes() {
            resolved.add_selection(graph, probes, progress)?;
        }
        resolved
    } else {
        crate::probes::ResolvedProbes::given(
            probes.refit_probes(graph),
            "none (no refit)".into(),
            "none",
        )
    };
    progress.phase(if refit {
        "pruning and refitting"
    } else {
        "pruning"
    });
    let pruned = pruner.apply_with(
        &pruner.counts_for_ratio(options.ratio),
        &resolved.probes,
        resolved.selection(),
    )?;
    progress.phase("measuring fidelity");
    let (fidelity, int8) = match file.filter(|(f, _)| !f.weights_only()) {
        Some((f, islands)) => {
            let (quantized, changed) =
                paoding_core::quant::imported::for_pruned(graph, &f.quantized, &pruned.graph)
                    .ok_or_else(|| {
                        CliError::Usage(format!(
                            "{model}: the pruned model does not match the file's"
                        ))
                    })?;
            let calibration = format!(
                "judged in int8: the file's own quantization, except the channels pruning \
                 changed in {changed} layer(s), quantized again; the ONNX written is the f32 \
                 form (paoding fit writes the int8 blob)"
            );
            let m = crate::quantize::lower(
                std::path::Path::new(model),
                &pruned.graph,
                quantized,
                f.io,
                islands,
                calibration,
            )?;
            let blob = crate::eval::Model::Blob(crate::run::BlobBytes::new(&m.blob));
            (
                check.measure_model(&blob, &pruned.graph)?,
                Some(m.calibration),
            )
        }
        None => (check.measure(&pruned.graph)?, None),
    };
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
        int8,
    };
    Ok((pruned.graph, report))
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
        out.push('\n');
        if let Some(q) = &self.int8 {
            let _ = writeln!(out, "{q}; against the file's own int8 model:");
        }
        out.push_str(&self.fidelity.to_text(""));
        out
    }
}
