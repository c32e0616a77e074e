//! int8 quantization without data: which tensors run in int8, their ranges from the probes,
//! and each int8 layer's integer weights and biases.
//!
//! The scheme is TFLite's and CMSIS-NN's ([`params`]), so figures compare and imported int8
//! models run unchanged: weights symmetric per output channel, activations asymmetric per
//! tensor, biases int32 at `scale_in * scale_w`, requantization by the fixed-point
//! multiplier and shift of `paoding_runtime::quant` (the one arithmetic the host runtime, the
//! device and the reference evaluation share).
//!
//! An operator with no int8 form (a batch norm that could not be folded, sigmoid, tanh, a
//! softmax that does not end the model) keeps f32, and so does any layer asked to
//! ([`QuantOptions::keep_f32`]): the blob writer puts an explicit quantize or dequantize at
//! every boundary between the two.

pub mod calibrate;
pub mod correct;
pub mod imported;
pub mod params;

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ir::{Activation, Graph, Op, ValueId};
use crate::probes::Probes;
use calibrate::RangeEstimator;
use params::QParams;

/// How to quantize.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantOptions {
    /// How activation ranges are estimated from the probes.
    pub estimator: RangeEstimator,
    /// Nodes that stay f32 (mixed precision), by index.
    pub keep_f32: Vec<usize>,
}

impl Default for QuantOptions {
    /// Min/max ranges: what the int8 benchmark measured best on probes (see paoding-cli's
    /// `quantize::Int8Options`).
    fn default() -> Self {
        QuantOptions {
            estimator: RangeEstimator::MinMax,
            keep_f32: Vec::new(),
        }
    }
}

/// The int8 weights of one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QLayer {
    /// Weights in the graph's order (`[out][in / groups][kh][kw]`), int8 codes.
    pub weights: Vec<i8>,
    /// One scale per output channel.
    pub weight_scales: Vec<f32>,
    /// Biases, int32 at `input scale * weight scale`.
    pub bias: Vec<i32>,
}

/// A graph's int8 form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// Per value: its int8 parameters, or `None` when it stays f32.
    pub values: Vec<Option<QParams>>,
    /// Per node: the integer weights of a dense or convolution layer that runs in int8.
    pub layers: Vec<Option<QLayer>>,
    /// How the activation ranges were estimated.
    pub estimator: RangeEstimator,
}

/// Whether `op` has an int8 form in the runtime.
pub fn has_int8_form(op: &Op, is_last: bool) -> bool {
    match op {
        Op::BatchNorm(_) => false,
        Op::Activation(a) => matches!(
            a,
            Activation::Identity | Activation::Relu | Activation::Clip { .. }
        ),
        Op::Dense(d) => !matches!(d.activation, Activation::Sigmoid | Activation::Tanh),
        Op::Conv2d(c) => !matches!(c.activation, Activation::Sigmoid | Activation::Tanh),
        Op::Softmax { .. } => is_last,
        _ => true,
    }
}

/// Parameters int8 softmax outputs always have: probabilities in steps of 1/256 from 0
/// (TFLite's convention for int8 softmax).
pub const SOFTMAX_OUTPUT: QParams = QParams {
    scale: 1.0 / 256.0,
    zero_point: -128,
};

/// Layout, pooling, padding and clamping operators: they keep their input's dtype and codes
/// (TFLite's pooling, reshape and ReLU keep their input's quantization).
pub(crate) fn passes_through(op: &Op) -> bool {
    matches!(
        op,
        Op::MaxPool(_)
            | Op::AveragePool(_)
            | Op::GlobalAveragePool
            | Op::Reshape { .. }
            | Op::Transpose { .. }
            | Op::Pad { .. }
            | Op::Activation(_)
    )
}

/// Which values run in int8: the outputs of nodes with an int8 form (and not kept f32), and
/// what an int8 dense or convolution layer reads (the graph input, or a value an f32 node
/// wrote: it is converted for the layer, with a range of its own), so a layer kept f32 or
/// without an int8 form costs only itself.
pub fn int8_values(g: &Graph, keep_f32: &[usize]) -> Vec<bool> {
    let mut int8 = alloc::vec![false; g.values.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let last = node.output == g.output;
        int8[node.output] = has_int8_form(&node.op, last)
            && !keep_f32.contains(&i)
            && (!passes_through(&node.op) || int8[node.inputs[0]] || node.inputs[0] == g.input);
    }
    for node in &g.nodes {
        if int8[node.output] && matches!(node.op, Op::Dense(_) | Op::Conv2d(_)) {
            node.inputs.iter().for_each(|&v| int8[v] = true);
        }
    }
    int8[g.input] = g
        .consumers(g.input)
        .iter()
        .any(|&c| int8[g.nodes[c].output]);
    int8
}

/// The value whose parameters `v` shares: a layout, pooling, padding or clamping operator
/// reads and writes the same codes, so its output takes its int8 input's parameters.
fn params_source(g: &Graph, int8: &[bool], v: ValueId) -> ValueId {
    let mut v = v;
    while let Some(p) = g.producer(v) {
        let node = &g.nodes[p];
        if !passes_through(&node.op) || !int8[node.inputs[0]] {
            break;
        }
        v = node.inputs[0];
    }
    v
}

/// The int8 form of `g` with placeholder parameters: every value that would run in int8 gets
/// the range [-1, 1], every int8 layer zero weights at scale 1. It lowers to the same records
/// and arena as any calibration of `g` whose multipliers TFLite's scheme represents, and to a
/// blob within a few bytes of its size (the description's varints encode the parameters'
/// values); the fit search sizes its candidates with it, without probes, and the fit then
/// measures the calibrated blob exactly.
pub fn nominal(g: &Graph) -> Quantized {
    let int8 = int8_values(g, &[]);
    let values: Vec<Option<QParams>> = (0..g.values.len())
        .map(|v| {
            let softmax = g
                .producer(v)
                .is_some_and(|p| matches!(g.nodes[p].op, Op::Softmax { .. }));
            match (int8[v], softmax) {
                (false, _) => None,
                (true, true) => Some(SOFTMAX_OUTPUT),
                (true, false) => Some(QParams::from_range(-1.0, 1.0)),
            }
        })
        .collect();
    let layers = g
        .nodes
        .iter()
        .map(|node| {
            values[node.inputs[0]]?;
            values[node.output]?;
            let (weights, channels) = match &node.op {
                Op::Dense(d) => (d.weights.len(), d.units),
                Op::Conv2d(c) => (c.weights.len(), c.out_channels),
                _ => return None,
            };
            Some(QLayer {
                weights: alloc::vec![0; weights],
                weight_scales: alloc::vec![1.0; channels],
                bias: alloc::vec![0; channels],
            })
        })
        .collect();
    Quantized {
        values,
        layers,
        estimator: RangeEstimator::MinMax,
    }
}

/// Quantize `g`: activation ranges from `probes`, weights per channel, biases at the
/// products of scales.
pub fn quantize(g: &Graph, probes: &Probes, options: &QuantOptions) -> Result<Quantized> {
    let int8 = int8_values(g, &options.keep_f32);
    let sources: Vec<ValueId> = (0..g.values.len())
        .map(|v| {
            if int8[v] {
                params_source(g, &int8, v)
            } else {
                v
            }
        })
        .collect();
    let mut free: Vec<ValueId> = (0..g.values.len())
        .filter(|&v| int8[v] && sources[v] == v)
        .collect();
    // A softmax's int8 output has fixed parameters.
    let softmax_out = |v: ValueId| {
        g.producer(v)
            .is_some_and(|p| matches!(g.nodes[p].op, Op::Softmax { .. }))
    };
    free.retain(|&v| !softmax_out(v));
    let observed = calibrate::observe(g, probes, &free)?;
    let mut values: Vec<Option<QParams>> = alloc::vec![None; g.values.len()];
    for (&v, o) in free.iter().zip(&observed) {
        let (lo, hi) = options.estimator.range(o);
        values[v] = Some(QParams::from_range(lo, hi));
    }
    for v in 0..g.values.len() {
        if int8[v] && softmax_out(v) {
            values[v] = Some(SOFTMAX_OUTPUT);
        }
    }
    for v in 0..g.values.len() {
        if int8[v] && values[v].is_none() {
            values[v] = values[sources[v]];
        }
    }
    let layers = g
        .nodes
        .iter()
        .map(|node| {
            let input = values[node.inputs[0]]?;
            values[node.output]?;
            let (w, b, channels) = match &node.op {
                Op::Dense(d) => (&d.weights, &d.bias, d.units),
                Op::Conv2d(c) => (&c.weights, &c.bias, c.out_channels),
                _ => return None,
            };
            let scales = params::channel_scales(w, channels);
            Some(QLayer {
                weights: params::quantize_weights(w, &scales),
                bias: params::quantize_bias(b, input.scale, &scales),
                weight_scales: scales,
            })
        })
        .collect();
    Ok(Quantized {
        values,
        layers,
        estimator: options.estimator,
    })
}
