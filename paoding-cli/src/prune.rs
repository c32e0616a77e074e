//! `paoding prune`: prune an imported model by a ratio and report what changed — sizes before
//! and after, per-layer widths, and fidelity on the check set (real data, or estimated on a
//! held-out data-free set).

use std::fmt::Write as _;

use paoding_core::cost::{ModelCost, WeightDtype};
use paoding_core::ir::Graph;
use paoding_core::prune::{LayerChange, Method, PruneOptions, Pruner, Scope};
use serde::Serialize;

use crate::check::{CheckSet, FidelityReport};
use crate::error::CliError;
use crate::eval::Model;
use crate::fit::QuantizationReport;
use crate::probes::ProbeSettings;
use crate::progress::Progress;
use crate::quantize::{Int8Model, Int8Options};
use crate::run::BlobBytes;

/// Version tag of the JSON layout (2: fidelity on the check set, with its interval,
/// robustness and warnings; 3: `dtype`, `quantization`, and `blob_bytes` in each size).
pub const PRUNE_SCHEMA: &str = "paoding.prune/3";

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
    /// The runtime blob (`.pdg`): weights, description and header (the flash it takes).
    pub blob_bytes: u64,
}

impl Size {
    /// Size of a checked graph stored as f32.
    pub fn of(g: &Graph) -> Result<Self, CliError> {
        let c = ModelCost::new(g, WeightDtype::F32);
        Ok(Size {
            params: c.params,
            weight_bytes: c.weight_bytes,
            macs: c.macs,
            arena_bytes: c.arena_bytes,
            blob_bytes: paoding_core::blob::blob_size(g, &paoding_core::plan::MemoryPlan::new(g))?
                as u64,
        })
    }

    /// Size of an int8 model: int8 weights (f32 where a layer stays f32), its blob and the
    /// arena of the plan the runtime executes.
    pub fn of_int8(q: &Int8Model) -> Self {
        let c = ModelCost::new(&q.graph, WeightDtype::Int8);
        Size {
            params: c.params,
            weight_bytes: c.weight_bytes,
            macs: c.macs,
            arena_bytes: q.usage.ram_bytes,
            blob_bytes: q.usage.flash_bytes,
        }
    }
}

/// How `prune` stores the pruned model's runtime form (`--pdg`) and judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PruneDtype {
    /// f32, as pruned.
    F32,
    /// int8 (TFLite's scheme), calibrated on the refit's probes: the fidelity is the int8
    /// model's, run by the runtime.
    Int8,
}

/// The runtime form of a pruned model and what it is.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The pruned f32 graph (what the ONNX output holds).
    pub graph: Graph,
    /// Its runtime blob in the asked dtype.
    pub blob: Vec<u8>,
    /// The report.
    pub report: PruneReport,
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
    /// How the pruned model is stored: `after`, `fidelity` and the `.pdg` are of this form.
    pub dtype: PruneDtype,
    /// For int8: the calibration, the layers left f32, and what quantizing the unpruned model
    /// alone costs on the check set (so quantization and pruning are told apart).
    pub quantization: Option<QuantizationReport>,
    /// Size before: the original, f32 (a quantized file: its own int8 model).
    pub before: Size,
    /// Size after (pruned, in `dtype`).
    pub after: Size,
    /// Per prunable layer.
    pub layers: Vec<LayerChange>,
    /// How close the pruned model stays.
    pub fidelity: FidelityReport,
    /// For a quantized file: how the pruned model was judged in int8.
    pub int8: Option<String>,
}

/// Prune `graph`, store it as `dtype` and measure the result on `check`, showing each phase on
/// `progress`.
///
/// `file` is the imported model's own quantization, if it has one, and whether nodes without
/// an exact int8 form may run in f32. A file that quantizes its activations is judged in int8
/// whatever `dtype` says — the layers surgery changed quantized again, everything else as the
/// file has it ([`paoding_core::quant::imported::for_pruned`]) — against `check`, which should
/// hold the file's int8 model's outputs ([`crate::fit::original_model`]); a file that
/// quantizes only its weights keeps its int8 weights under `--dtype int8`. The graph returned
/// (written as ONNX) is the pruned model's f32 form.
#[allow(clippy::too_many_arguments)]
pub fn prune(
    model: &str,
    graph: &Graph,
    file: Option<(&crate::import::FileQuant, bool)>,
    options: &PruneOptions,
    probes: &ProbeSettings,
    (dtype, int8): (PruneDtype, &Int8Options),
    check: &CheckSet,
    progress: &Progress,
) -> Result<Pruned, CliError> {
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
    // int8 calibrates on the refit's probes, so it needs them even without a refit.
    let resolved = if refit || dtype == PruneDtype::Int8 {
        let mut resolved = crate::probes::resolve(
            graph,
            &probes.source,
            probes,
            probes.cache_dir.as_deref(),
            progress,
        )?;
        if refit && pruner.selects_by_probes() {
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
    let file_model = file.filter(|(f, _)| !f.weights_only());
    let dtype = if file_model.is_some() {
        PruneDtype::Int8
    } else {
        dtype
    };
    let (blob, after, fidelity, quantization, judged) = match (file_model, dtype) {
        (Some((f, islands)), _) => {
            progress.phase("quantizing");
            let (quantized, changed) =
                paoding_core::quant::imported::for_pruned(graph, &f.quantized, &pruned.graph)
                    .ok_or_else(|| {
                        CliError::Usage(format!(
                            "{model}: the pruned model does not match the file's"
                        ))
                    })?;
            let calibration = format!(
                "judged in int8: the file's own quantization, except the channels pruning \
                 changed in {changed} layer(s), quantized again"
            );
            let m = crate::quantize::lower(
                std::path::Path::new(model),
                &pruned.graph,
                quantized,
                f.io,
                islands,
                calibration,
            )?;
            progress.phase("measuring fidelity");
            let fidelity =
                check.measure_model(&Model::Blob(BlobBytes::new(&m.blob)), &pruned.graph)?;
            let after = Size::of_int8(&m);
            (m.blob, after, fidelity, None, Some(m.calibration))
        }
        (None, PruneDtype::F32) => {
            progress.phase("measuring fidelity");
            let blob = paoding_core::blob::write_blob(
                &pruned.graph,
                &paoding_core::plan::MemoryPlan::new(&pruned.graph),
            )?;
            let fidelity = check.measure(&pruned.graph)?;
            (blob, Size::of(&pruned.graph)?, fidelity, None, None)
        }
        (None, PruneDtype::Int8) => {
            progress.phase("quantizing");
            // A file that quantizes only its weights keeps its codes where pruning left them.
            let file_layers = file.map(|(f, _)| f.quantized.layers.as_slice());
            let calibrate = |g: &Graph| {
                crate::quantize::quantize_keeping(
                    g,
                    &resolved.probes,
                    &resolved.description,
                    int8,
                    file_layers.unwrap_or_default(),
                )
            };
            let unpruned = calibrate(graph)?;
            let q = calibrate(&pruned.graph)?;
            progress.phase("measuring fidelity");
            let cost = check.fidelity_of(&Model::Blob(BlobBytes::new(&unpruned.blob)))?;
            let quantization = QuantizationReport::new(&q, cost);
            let fidelity =
                check.measure_model(&Model::Blob(BlobBytes::new(&q.blob)), &pruned.graph)?;
            let after = Size::of_int8(&q);
            (q.blob, after, fidelity, Some(quantization), None)
        }
    };
    let report = PruneReport {
        schema: PRUNE_SCHEMA,
        model: model.to_string(),
        options: options.clone(),
        probes: probes.clone(),
        refitted: pruned.refitted,
        probes_used: if refit { resolved.probes.count() } else { 0 },
        probe_description: resolved.description,
        dtype,
        quantization,
        before: match file_model {
            Some((f, islands)) => Size::of_int8(&crate::quantize::from_file(
                std::path::Path::new(model),
                graph,
                f,
                islands,
            )?),
            None => Size::of(graph)?,
        },
        after,
        layers: pruned.layers,
        fidelity,
        int8: judged,
    };
    Ok(Pruned {
        graph: pruned.graph,
        blob,
        report,
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
        let after = match self.dtype {
            PruneDtype::F32 => "after",
            PruneDtype::Int8 => "after, int8",
        };
        let _ = writeln!(
            out,
            "\n{:<14} {:>12} {:>12} {:>9}",
            "", "before", after, "removed"
        );
        for (name, x, y) in [
            ("params", b.params, a.params),
            ("weight bytes", b.weight_bytes, a.weight_bytes),
            ("blob bytes", b.blob_bytes, a.blob_bytes),
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
        if let Some(q) = &self.quantization {
            let _ = writeln!(out, "int8: {}", q.calibration);
            let _ = writeln!(out, "  dtype per layer: {}", q.per_layer_text());
            let _ = writeln!(
                out,
                "  quantizing the unpruned model alone: top-1 agreement {:.2} %, relative L2 error {:.4}\n",
                100.0 * q.cost.agreement,
                q.cost.relative_l2
            );
        }
        if let Some(q) = &self.int8 {
            let _ = writeln!(out, "{q}; against the file's own int8 model:");
        }
        out.push_str(&self.fidelity.to_text(""));
        out
    }
}
