//! The cost model: parameters, weight bytes, MACs and activation memory, per node and in total.
//! `inspect`, the fit search and the runtime's format all read their numbers from here.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::ir::{Graph, Op};
use crate::ops;
use crate::plan::MemoryPlan;

/// How weights (and activations) are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float, 4 bytes per parameter and per activation value.
    #[default]
    F32,
    /// TFLite's int8 scheme: 1 byte per weight and per activation value, biases int32, and
    /// per output channel a requantization multiplier and shift (`paoding_core::quant`).
    Int8,
}

impl WeightDtype {
    /// Bytes one weight takes.
    pub fn bytes(self) -> u64 {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Int8 => 1,
        }
    }

    /// Bytes one activation value takes.
    pub fn activation_bytes(self) -> u64 {
        self.bytes()
    }

    /// Name as written in profiles and reports.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::Int8 => "int8",
        }
    }
}

/// The cost of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCost {
    /// Node name.
    pub name: String,
    /// Operator kind, with its fused activation (`Conv2d+relu`).
    pub op: String,
    /// Output shape.
    pub output_shape: Vec<usize>,
    /// Stored parameters.
    pub params: u64,
    /// Bytes the parameters take in flash.
    pub weight_bytes: u64,
    /// Multiply-accumulates per inference.
    pub macs: u64,
    /// Bytes of the output activation.
    pub activation_bytes: u64,
}

/// The cost of a whole model.
///
/// ```
/// use paoding_core::cost::{ModelCost, WeightDtype};
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 3]);
/// g.output = g.push("fc", Op::Dense(Dense {
///     units: 2, inputs: 3, weights: vec![0.5; 6], bias: vec![0.0; 2],
///     activation: Activation::Identity,
/// }), &[g.input])?;
/// let cost = ModelCost::new(&g, WeightDtype::F32);
/// assert_eq!((cost.params, cost.weight_bytes, cost.macs), (8, 32, 6));
/// # Ok::<(), paoding_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCost {
    /// One entry per node, in execution order.
    pub nodes: Vec<NodeCost>,
    /// Total parameters.
    pub params: u64,
    /// Total bytes of parameters.
    pub weight_bytes: u64,
    /// Total multiply-accumulates per inference.
    pub macs: u64,
    /// Bytes of the model input.
    pub input_bytes: u64,
    /// Bytes of the model output.
    pub output_bytes: u64,
    /// Activation arena of the static memory plan (input and output included).
    pub arena_bytes: u64,
    /// The lower bound any plan must reach.
    pub arena_lower_bound_bytes: u64,
    /// The weight storage type assumed.
    pub weight_dtype: WeightDtype,
}

impl ModelCost {
    /// Cost of a checked graph with weights stored as `dtype`.
    pub fn new(graph: &Graph, dtype: WeightDtype) -> Self {
        Self::with_plan(graph, dtype, &MemoryPlan::new(graph))
    }

    /// Cost of a checked graph, given its memory plan.
    pub fn with_plan(graph: &Graph, dtype: WeightDtype, plan: &MemoryPlan) -> Self {
        let nodes: Vec<NodeCost> = graph
            .nodes
            .iter()
            .map(|n| {
                let params = ops::param_count(&n.op) as u64;
                let out = &graph.values[n.output];
                let act = n.op.fused_activation().map(|a| a.name()).unwrap_or("");
                let mut op = String::from(n.op.kind());
                if !act.is_empty() {
                    op.push('+');
                    op.push_str(act);
                }
                NodeCost {
                    name: n.name.clone(),
                    op,
                    output_shape: out.shape.clone(),
                    params,
                    weight_bytes: weight_bytes(&n.op, dtype),
                    macs: ops::macs(&n.op, &graph.values[n.inputs[0]].shape, &out.shape),
                    activation_bytes: out.len() as u64 * activation_dtype(&n.op, dtype).bytes(),
                }
            })
            .collect();
        ModelCost {
            params: nodes.iter().map(|n| n.params).sum(),
            weight_bytes: nodes.iter().map(|n| n.weight_bytes).sum(),
            macs: nodes.iter().map(|n| n.macs).sum(),
            input_bytes: graph.values[graph.input].len() as u64 * 4,
            output_bytes: graph.values[graph.output].len() as u64 * 4,
            arena_bytes: plan.arena_bytes as u64,
            arena_lower_bound_bytes: plan.lower_bound_bytes as u64,
            weight_dtype: dtype,
            nodes,
        }
    }
}

/// Bytes an operator's parameters take stored as `dtype`. In int8, a dense or convolution
/// layer stores int8 weights and per output channel an int32 bias, an int32 requantization
/// multiplier and an int8 shift; an operator with no int8 form (a batch norm left unfolded)
/// stays f32.
fn weight_bytes(op: &Op, dtype: WeightDtype) -> u64 {
    let int8 = |weights: usize, channels: usize| (weights + 9 * channels) as u64;
    match (activation_dtype(op, dtype), op) {
        (WeightDtype::Int8, Op::Dense(d)) => int8(d.weights.len(), d.units),
        (WeightDtype::Int8, Op::Conv2d(c)) => int8(c.weights.len(), c.out_channels),
        _ => ops::param_count(op) as u64 * 4,
    }
}

/// The dtype an operator's output takes in a model stored as `dtype`.
fn activation_dtype(op: &Op, dtype: WeightDtype) -> WeightDtype {
    if crate::quant::has_int8_form(op, true) {
        dtype
    } else {
        WeightDtype::F32
    }
}
