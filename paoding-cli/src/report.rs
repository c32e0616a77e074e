//! The `inspect` report: per-layer costs, totals, and a verdict per constraint against a
//! profile's budget. One struct, printed as a table for people or as JSON for scripts.

use std::fmt::Write as _;

use paoding_core::cost::{ModelCost, WeightDtype};
use paoding_core::fit::Usage;
use paoding_core::plan::MemoryPlan;
use paoding_core::profile::{self, Budget, Constraint, Profile};
use paoding_runtime::format::Dtype;
use serde::Serialize;

use crate::import::Imported;

/// Version tag of the JSON layout; bumped on any incompatible change.
pub const INSPECT_SCHEMA: &str = "paoding.inspect/2";

/// Everything `paoding inspect` says about a model.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// [`INSPECT_SCHEMA`].
    pub schema: &'static str,
    /// The model file.
    pub model: String,
    /// Producer recorded in the file.
    pub producer: String,
    /// ONNX operator set.
    pub opset: i64,
    /// Input shape (batch 1).
    pub input_shape: Vec<usize>,
    /// Output shape (batch 1).
    pub output_shape: Vec<usize>,
    /// Costs per layer and in total, in the profile's `weight_dtype` (f32 without a profile).
    pub cost: ModelCost,
    /// Flash the model needs on the device in that dtype, in bytes (the exact blob).
    pub flash_bytes: u64,
    /// The same per layer in the other dtype, for the side-by-side table.
    pub other_cost: ModelCost,
    /// Exact use (blob, arena, MACs) stored as f32.
    pub f32: paoding_core::fit::Usage,
    /// Exact use stored as int8 (f32 input and output, quantized inside).
    pub int8: paoding_core::fit::Usage,
    /// The profile checked against, if any.
    pub profile: Option<ProfileSummary>,
    /// One verdict per constrained resource (empty without a profile).
    pub constraints: Vec<Constraint>,
    /// Whether every constraint holds (`None` without a profile).
    pub fits: Option<bool>,
    /// What the file itself quantizes, for a quantized (QDQ) file.
    pub quantization: Option<FileQuantSummary>,
}

/// What a quantized file quantizes (`inspect`'s `quantization`).
#[derive(Debug, Clone, Serialize)]
pub struct FileQuantSummary {
    /// Always `file`: the parameters are the file's own.
    pub source: &'static str,
    /// `int8`: the file's weights.
    pub weights: &'static str,
    /// `int8` when the file quantizes its activations, else `f32` (weights-only file).
    pub activations: &'static str,
    /// The input's and output's dtype.
    pub io: &'static str,
    /// Nodes with no exact int8 form (run in f32 only with `--allow-f32-islands`).
    pub f32_nodes: Vec<String>,
}

/// The part of a profile a report repeats.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileSummary {
    /// Profile name.
    pub name: String,
    /// Board description.
    pub description: String,
    /// What the model may use.
    pub budget: Budget,
}

impl InspectReport {
    /// Build the report for an imported model, optionally against a profile.
    pub fn new(
        model_path: &str,
        imported: &Imported,
        profile: Option<&Profile>,
    ) -> Result<Self, paoding_core::Error> {
        let g = &imported.graph;
        // A quantized file is an int8 model: it costs as int8.
        let file = imported.quant.as_ref().filter(|q| !q.weights_only());
        let dtype = match file {
            Some(_) => WeightDtype::Int8,
            None => profile.map(|p| p.weight_dtype).unwrap_or_default(),
        };
        let other = match dtype {
            WeightDtype::F32 => WeightDtype::Int8,
            WeightDtype::Int8 => WeightDtype::F32,
        };
        let lowered = match file {
            Some(q) => Some(paoding_core::blob::QuantizedBlob::new(
                g,
                &q.quantized,
                q.io,
            )?),
            None => None,
        };
        let f32 = Usage::of(g)?;
        let int8 = match &lowered {
            Some(l) => {
                let plan = l.plan();
                Usage {
                    flash_bytes: l.size(&plan)? as u64,
                    ram_bytes: plan.arena_bytes as u64,
                    macs: f32.macs,
                }
            }
            None => Usage::of_dtype(g, WeightDtype::Int8)?,
        };
        let used = if dtype == WeightDtype::Int8 {
            int8
        } else {
            f32
        };
        // The arena of the plan the runtime executes in that dtype (conversions included).
        let plan = |d: WeightDtype| match d {
            WeightDtype::F32 => Ok(MemoryPlan::new(g)),
            WeightDtype::Int8 => match &lowered {
                Some(l) => Ok(l.plan()),
                None => MemoryPlan::quantized(g, &paoding_core::quant::nominal(g), Dtype::F32),
            },
        };
        let cost = ModelCost::with_plan(g, dtype, &plan(dtype)?);
        // The exact blob the runtime would load: weights plus the format's overhead.
        let flash_bytes = used.flash_bytes;
        let (summary, constraints) = match profile {
            Some(p) => {
                let budget = p.budget()?;
                let constraints = profile::check(&budget, flash_bytes, used.ram_bytes, cost.macs);
                let summary = ProfileSummary {
                    name: p.name.clone(),
                    description: p.description.clone(),
                    budget,
                };
                (Some(summary), constraints)
            }
            None => (None, Vec::new()),
        };
        Ok(InspectReport {
            schema: INSPECT_SCHEMA,
            model: model_path.to_string(),
            producer: imported.producer.clone(),
            opset: imported.opset,
            input_shape: g.shape(g.input).to_vec(),
            output_shape: g.shape(g.output).to_vec(),
            fits: summary.as_ref().map(|_| constraints.iter().all(|c| c.fits)),
            profile: summary,
            constraints,
            cost,
            flash_bytes,
            other_cost: ModelCost::with_plan(g, other, &plan(other)?),
            f32,
            int8,
            quantization: imported.quant.as_ref().map(|q| FileQuantSummary {
                source: "file",
                weights: "int8",
                activations: if q.weights_only() { "f32" } else { "int8" },
                io: match q.io {
                    Dtype::I8 => "int8",
                    Dtype::F32 => "f32",
                },
                f32_nodes: lowered
                    .as_ref()
                    .map(|l| {
                        g.nodes
                            .iter()
                            .zip(l.node_dtypes())
                            .filter(|(_, d)| **d == Dtype::F32)
                            .map(|(n, _)| n.name.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
        })
    }

    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let c = &self.cost;
        let _ = writeln!(
            out,
            "{} ({}, opset {}): input {:?} -> output {:?}\n",
            self.model, self.producer, self.opset, self.input_shape, self.output_shape
        );
        let names =
            crate::names::short_names(&c.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>());
        // f32 then int8, whichever the profile stores.
        let (f, i) = match c.weight_dtype {
            WeightDtype::F32 => (c, &self.other_cost),
            WeightDtype::Int8 => (&self.other_cost, c),
        };
        let rows: Vec<[String; 9]> = f
            .nodes
            .iter()
            .zip(&i.nodes)
            .zip(names)
            .map(|((n, q), name)| {
                [
                    name,
                    n.op.clone(),
                    format!("{:?}", n.output_shape),
                    n.params.to_string(),
                    n.weight_bytes.to_string(),
                    q.weight_bytes.to_string(),
                    n.macs.to_string(),
                    n.activation_bytes.to_string(),
                    q.activation_bytes.to_string(),
                ]
            })
            .collect();
        let header = [
            "layer",
            "op",
            "output",
            "params",
            "weight B f32",
            "int8",
            "MACs",
            "act B f32",
            "int8",
        ];
        let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
                if i < 3 {
                    let _ = write!(s, "{cell:<w$}  ");
                } else {
                    let _ = write!(s, "{cell:>w$}  ");
                }
            }
            s.trim_end().to_string()
        };
        let _ = writeln!(out, "{}", line(&header.map(String::from)));
        for r in &rows {
            let _ = writeln!(out, "{}", line(r));
        }
        let _ = writeln!(
            out,
            "\ntotal: {} params, {} weight bytes ({}), {} MACs; runtime model (flash) {} bytes",
            c.params,
            c.weight_bytes,
            c.weight_dtype.name(),
            c.macs,
            self.flash_bytes
        );
        let _ = writeln!(
            out,
            "activation arena: {} bytes (lower bound {} bytes, plan overhead {:.1} %)",
            c.arena_bytes,
            c.arena_lower_bound_bytes,
            overhead(c.arena_bytes, c.arena_lower_bound_bytes)
        );
        let _ = writeln!(
            out,
            "stored as f32: flash {} B, RAM {} B; as int8: flash {} B ({:.1} %), RAM {} B ({:.1} %)",
            self.f32.flash_bytes,
            self.f32.ram_bytes,
            self.int8.flash_bytes,
            100.0 * self.int8.flash_bytes as f64 / self.f32.flash_bytes.max(1) as f64,
            self.int8.ram_bytes,
            100.0 * self.int8.ram_bytes as f64 / self.f32.ram_bytes.max(1) as f64
        );
        if let Some(q) = &self.quantization {
            let _ = if q.activations == "f32" {
                writeln!(
                    out,
                    "quantized file: int8 weights, f32 activations (fit --dtype int8 keeps the \
                     file's weights and calibrates the activations)"
                )
            } else {
                writeln!(
                    out,
                    "quantized file: int8 weights and activations as the file quantizes them, \
                     {} input and output; costs above as int8",
                    q.io
                )
            };
            if !q.f32_nodes.is_empty() {
                let _ = writeln!(
                    out,
                    "  no exact int8 form (f32 islands only with --allow-f32-islands): {}",
                    q.f32_nodes.join(", ")
                );
            }
        }
        if let Some(p) = &self.profile {
            let _ = match p.description.as_str() {
                "" => writeln!(out, "\nprofile {}", p.name),
                d => writeln!(out, "\nprofile {}: {d}", p.name),
            };
            for k in &self.constraints {
                let verdict = if k.fits { "fits" } else { "DOES NOT FIT" };
                let margin = if k.fits {
                    format!("headroom {}", k.headroom)
                } else {
                    format!("over by {}", -k.headroom)
                };
                let unit = if k.resource == "macs" {
                    "MACs"
                } else {
                    "bytes"
                };
                let _ = writeln!(
                    out,
                    "  {:<5} {:>10} / {:>10} {unit:<5}  {verdict} ({margin}, {:.1} % used)",
                    k.resource,
                    k.used,
                    k.budget,
                    100.0 * k.used as f64 / k.budget.max(1) as f64
                );
            }
        }
        out
    }
}

fn overhead(arena: u64, bound: u64) -> f64 {
    if bound == 0 {
        0.0
    } else {
        100.0 * (arena as f64 / bound as f64 - 1.0)
    }
}
