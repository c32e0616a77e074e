//! int8 models from f32 graphs, without data: activation ranges calibrated on the refit's
//! probes (synthesized by `--probes auto`, or the user's), the data-free corrections the
//! int8 benchmark keeps, and the runtime blob (f32 input and output, quantized on the way in
//! and dequantized on the way out, so a caller feeds it what it fed the f32 model).
//!
//! Used by `fit` and `prune` (`--dtype int8|auto`) and by the int8 benchmark
//! (`cargo bench -p paoding-tests --bench int8`), which measured what the defaults are:
//! [`Int8Options::default`].

use paoding_core::blob::QuantizedBlob;
use paoding_core::fit::Usage;
use paoding_core::ir::{Graph, Op};
use paoding_core::probes::Probes;
use paoding_core::quant::calibrate::RangeEstimator;
use paoding_core::quant::{self, correct, QuantOptions, Quantized};
use paoding_runtime::format::Dtype;
use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// Rounds of cross-layer equalization: the ranges settle within a few.
const EQUALIZE_ROUNDS: usize = 4;

/// How a graph is quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Options {
    /// How activation ranges are estimated from the probes.
    pub estimator: RangeEstimator,
    /// Cross-layer equalization before quantizing the weights.
    pub equalize: bool,
    /// Bias correction of the weights' rounding error, measured on the probes.
    pub correct_bias: bool,
    /// Each weight rounded down or up to minimise its layer's output error on the probes
    /// (AdaRound's objective, solved greedily: `quant::correct::refine_rounding`), instead of
    /// to nearest.
    pub refine_rounding: bool,
    /// Layers that stay f32 (mixed precision), by name: the full node name or a unique
    /// suffix of it (as the short names in reports show them).
    pub keep_f32: Vec<String>,
}

impl Default for Int8Options {
    /// What the int8 benchmark measured best on the nine fixtures (README, "int8"): min/max
    /// ranges with bias correction never lost accuracy (mean +0.02 points, worst agreement
    /// with f32 99.78 %). On probes, which carry no outliers, clipping (percentile, MSE) only
    /// cut real inputs' tails (worst -0.67 points); equalization helped none of these models.
    fn default() -> Self {
        Int8Options {
            estimator: RangeEstimator::MinMax,
            equalize: false,
            correct_bias: true,
            refine_rounding: false,
            keep_f32: Vec::new(),
        }
    }
}

impl Int8Options {
    /// How the options read in a report.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "weights int8 per output channel, activations int8 per tensor ({} ranges)",
            estimator_name(self.estimator)
        );
        if self.equalize {
            out.push_str(", cross-layer equalization");
        }
        if self.refine_rounding {
            out.push_str(", rounding refined on the probes");
        }
        if self.correct_bias {
            out.push_str(", bias correction");
        }
        if !self.keep_f32.is_empty() {
            out.push_str(&format!(
                ", kept f32 on request: {}",
                self.keep_f32.join(", ")
            ));
        }
        out
    }

    /// The nodes of `g` that [`Int8Options::keep_f32`] names, by index: a node's full name,
    /// its short name in reports ([`crate::names::short_names`]), or a unique end of its full
    /// name. A name that matches no node, or several, is a usage error that lists the layers.
    pub fn keep_f32_nodes(&self, g: &Graph) -> Result<Vec<usize>, CliError> {
        let full: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
        let short = crate::names::short_names(&full);
        self.keep_f32
            .iter()
            .map(|name| {
                let matching = |hit: &dyn Fn(usize) -> bool| -> Vec<usize> {
                    (0..full.len()).filter(|&i| hit(i)).collect()
                };
                let mut found = matching(&|i| full[i] == name);
                if found.is_empty() {
                    found = matching(&|i| short[i] == *name);
                }
                if found.is_empty() {
                    found = matching(&|i| full[i].ends_with(name.as_str()));
                }
                if let [i] = found.as_slice() {
                    return Ok(*i);
                }
                let layers: Vec<&str> = g
                    .nodes
                    .iter()
                    .zip(&short)
                    .filter(|(n, _)| matches!(n.op, Op::Dense(_) | Op::Conv2d(_)))
                    .map(|(_, s)| s.as_str())
                    .collect();
                Err(CliError::Usage(format!(
                    "--keep-f32 {name}: {} (dense and convolution layers: {})",
                    if found.is_empty() {
                        "no layer has that name".to_string()
                    } else {
                        format!("{} layers match it", found.len())
                    },
                    layers.join(", ")
                )))
            })
            .collect()
    }
}

/// The name of a range estimator in reports and on the command line.
pub fn estimator_name(e: RangeEstimator) -> &'static str {
    match e {
        RangeEstimator::MinMax => "min/max",
        RangeEstimator::Percentile { .. } => "percentile",
        RangeEstimator::Mse => "MSE-optimal",
    }
}

/// An f32 graph's int8 form, lowered to the runtime's blob.
#[derive(Debug, Clone)]
pub struct Int8Model {
    /// The f32 graph the int8 model quantizes (equalized, when asked: the same function).
    pub graph: Graph,
    /// Its int8 parameters.
    pub quantized: Quantized,
    /// What each node of `graph` runs as on the device.
    pub node_dtypes: Vec<Dtype>,
    /// The blob.
    pub blob: Vec<u8>,
    /// Exact flash (the blob), RAM (its arena) and MACs.
    pub usage: Usage,
    /// How it was quantized, for reports.
    pub calibration: String,
}

impl Int8Model {
    /// Nodes that stay f32 (no int8 form), by name.
    pub fn f32_nodes(&self) -> Vec<String> {
        self.graph
            .nodes
            .iter()
            .zip(&self.node_dtypes)
            .filter(|(_, d)| **d == Dtype::F32)
            .map(|(n, _)| n.name.clone())
            .collect()
    }
}

/// Quantize `g` with ranges from `probes` (described by `probes_text` in reports).
pub fn quantize(
    g: &Graph,
    probes: &Probes,
    probes_text: &str,
    options: &Int8Options,
) -> Result<Int8Model, CliError> {
    quantize_keeping(g, probes, probes_text, options, &[])
}

/// [`quantize`], keeping the int8 weights of a file that quantizes only its weights
/// (`file_layers`, per node, from the import): every output channel whose weights are still
/// the file's takes the file's codes and scale instead of paoding's rounding
/// ([`paoding_core::quant::imported::apply_file_weights`]).
pub fn quantize_keeping(
    g: &Graph,
    probes: &Probes,
    probes_text: &str,
    options: &Int8Options,
    file_layers: &[Option<quant::QLayer>],
) -> Result<Int8Model, CliError> {
    let keep_f32 = options.keep_f32_nodes(g)?;
    let mut graph = g.clone();
    if options.equalize {
        correct::equalize(&mut graph, EQUALIZE_ROUNDS);
    }
    let mut quantized = quant::quantize(
        &graph,
        probes,
        &QuantOptions {
            estimator: options.estimator,
            keep_f32,
        },
    )?;
    let kept = !file_layers.is_empty() && !options.equalize;
    if kept {
        paoding_core::quant::imported::apply_file_weights(&graph, &mut quantized, file_layers);
    } else if options.refine_rounding {
        correct::refine_rounding(&graph, &mut quantized, probes)?;
    }
    if options.correct_bias && !kept {
        correct::correct_biases(&graph, &mut quantized, probes)?;
    }
    let lowered = QuantizedBlob::new(&graph, &quantized, Dtype::F32)?;
    let plan = lowered.plan();
    let blob = lowered.write(&plan)?;
    let usage = Usage {
        flash_bytes: blob.len() as u64,
        ram_bytes: plan.arena_bytes as u64,
        macs: paoding_core::cost::ModelCost::new(&graph, Default::default()).macs,
    };
    let describe = if kept {
        "weights int8 as the file stores them, activations int8 per tensor (min/max ranges)"
            .to_string()
    } else {
        options.describe()
    };
    Ok(Int8Model {
        node_dtypes: lowered.node_dtypes().to_vec(),
        calibration: format!("{describe}; ranges from {probes_text}"),
        graph,
        quantized,
        blob,
        usage,
    })
}

/// The int8 model a quantized (QDQ) file describes, exactly as the file has it: its scales,
/// zero points, int8 weights and int32 biases, its int8 input and output when the file's are
/// integers. A node without an exact int8 form (float weights in a quantized model, a
/// requantizing ReLU, a softmax that does not end the model...) is an error naming it, unless
/// `allow_f32_islands`: it then runs in f32 between an explicit dequantization and
/// quantization, and [`Int8Model::f32_nodes`] lists it.
pub fn from_file(
    path: &std::path::Path,
    g: &Graph,
    file: &crate::import::FileQuant,
    allow_f32_islands: bool,
) -> Result<Int8Model, CliError> {
    lower(
        path,
        g,
        file.quantized.clone(),
        file.io,
        allow_f32_islands,
        "the file's own quantization (scales, zero points, int8 weights and int32 biases as \
         stored)"
            .into(),
    )
}

/// `g` lowered in the int8 form `quantized` with `io` input and output: every node without
/// an exact int8 form an error naming it (the file at `path`), unless `allow_f32_islands`.
pub fn lower(
    path: &std::path::Path,
    g: &Graph,
    quantized: Quantized,
    io: Dtype,
    allow_f32_islands: bool,
    calibration: String,
) -> Result<Int8Model, CliError> {
    let lowered = QuantizedBlob::new(g, &quantized, io)?;
    if !allow_f32_islands {
        if let Some((node, _)) = g
            .nodes
            .iter()
            .zip(lowered.node_dtypes())
            .find(|(_, d)| **d == Dtype::F32)
        {
            let param = |v: usize| match quantized.values[v] {
                Some(p) => format!("int8 (scale {}, zero point {})", p.scale, p.zero_point),
                None => "f32".to_string(),
            };
            let inputs: Vec<String> = node.inputs.iter().map(|&v| param(v)).collect();
            let weights = match node.op {
                paoding_core::ir::Op::Dense(_) | paoding_core::ir::Op::Conv2d(_) => {
                    let i = g.nodes.iter().position(|n| std::ptr::eq(n, node));
                    if i.is_some_and(|i| quantized.layers[i].is_none()) {
                        ", f32 weights"
                    } else {
                        ""
                    }
                }
                _ => "",
            };
            return Err(crate::error::ImportError::Quantization {
                path: path.to_path_buf(),
                node: node.name.clone(),
                op: node.op.kind().to_string(),
                reason: format!(
                    "has no exact int8 form (input {}, output {}{weights}); \
                     --allow-f32-islands runs it in f32 between explicit conversions",
                    inputs.join(", "),
                    param(node.output)
                ),
            }
            .into());
        }
    }
    let plan = lowered.plan();
    let blob = lowered.write(&plan)?;
    let usage = Usage {
        flash_bytes: blob.len() as u64,
        ram_bytes: plan.arena_bytes as u64,
        macs: paoding_core::cost::ModelCost::new(g, Default::default()).macs,
    };
    Ok(Int8Model {
        node_dtypes: lowered.node_dtypes().to_vec(),
        calibration,
        graph: g.clone(),
        quantized,
        blob,
        usage,
    })
}
