//! The model IR: a small, explicit graph that the cost model, the planner and the pruning
//! engine can reason about.
//!
//! Layout conventions, fixed at import so every later stage can trust them:
//! - every value's shape carries the batch axis first, and the batch is always 1;
//! - image tensors are NCHW; a model whose file is NHWC keeps explicit [`Op::Transpose`] nodes;
//! - dense weights are `[units][inputs]` (one contiguous row per output neuron), conv weights
//!   are `[out_channels][in_channels / groups][kh][kw]`.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ops;

/// Index of a value (a tensor flowing between nodes) in [`Graph::values`].
pub type ValueId = usize;

/// A tensor flowing between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    /// Name from the source model, for reports and errors.
    pub name: String,
    /// Shape, batch axis first (always 1).
    pub shape: Vec<usize>,
}

impl Value {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True if the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An element-wise activation, either fused into a producer or standing alone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// No activation.
    #[default]
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, min), max); ReLU6 is `Clip { min: 0, max: 6 }`.
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// x at and above zero, `alpha x` below.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
}

impl Activation {
    /// Apply the activation to one value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            Activation::Clip { min, max } => x.max(min).min(max),
            Activation::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            Activation::Tanh => libm::tanhf(x),
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    x * alpha
                } else {
                    x
                }
            }
        }
    }

    /// Short name for reports: `relu`, `relu6`, `clip`, `sigmoid`, `tanh`, `leaky_relu` or
    /// empty.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Identity => "",
            Activation::Relu => "relu",
            Activation::Clip { min, max } if min == 0.0 && max == 6.0 => "relu6",
            Activation::Clip { .. } => "clip",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::LeakyRelu { .. } => "leaky_relu",
        }
    }
}

/// Fully connected layer: `y = act(W x + b)` on an input of shape `[1, inputs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dense {
    /// Number of output neurons.
    pub units: usize,
    /// Number of inputs.
    pub inputs: usize,
    /// `[units][inputs]`, row-major.
    pub weights: Vec<f32>,
    /// One per unit.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub activation: Activation,
}

/// 2-D convolution over NCHW; `groups == in_channels == out_channels` is depthwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    /// Output channels.
    pub out_channels: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Dilation along height and width.
    pub dilation: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub padding: [usize; 4],
    /// Channel groups; `in_channels` and `out_channels` are multiples of it.
    pub groups: usize,
    /// `[out_channels][in_channels / groups][kh][kw]`, row-major.
    pub weights: Vec<f32>,
    /// One per output channel.
    pub bias: Vec<f32>,
    /// Fused activation.
    pub activation: Activation,
}

#[cfg(test)]
impl Conv2d {
    /// A 3×3, stride-1, same-padded convolution without bias or activation (unit tests).
    pub(crate) fn same_3x3(cin: usize, cout: usize, groups: usize, weights: Vec<f32>) -> Op {
        Op::Conv2d(Conv2d {
            out_channels: cout,
            in_channels: cin,
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            padding: [1, 1, 1, 1],
            groups,
            weights,
            bias: alloc::vec![0.0; cout],
            activation: Activation::Identity,
        })
    }
}

impl Conv2d {
    /// Input channels seen by each output channel.
    pub fn group_inputs(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Weights of one output channel: `group_inputs * kh * kw` values.
    pub fn filter_len(&self) -> usize {
        self.group_inputs() * self.kernel[0] * self.kernel[1]
    }
}

/// A per-channel affine map `y = x * scale + shift` along axis 1: batch normalisation that no
/// producer could absorb, or a bias/scale the exporter left as its own node.
///
/// When it came from a BatchNormalization node its running statistics are kept, so that
/// data-free probe synthesis can match them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm {
    /// Per-channel multiplier (`gamma / sqrt(var + eps)` for a batch norm).
    pub scale: Vec<f32>,
    /// Per-channel offset (`beta - mean * scale` for a batch norm).
    pub shift: Vec<f32>,
    /// Running mean and variance of the input, per channel, when known.
    pub stats: Option<(Vec<f32>, Vec<f32>)>,
}

impl BatchNorm {
    /// An affine map with no statistics.
    pub fn affine(scale: Vec<f32>, shift: Vec<f32>) -> Self {
        BatchNorm {
            scale,
            shift,
            stats: None,
        }
    }

    /// True if it changes nothing and carries no statistics.
    pub fn is_identity(&self) -> bool {
        self.stats.is_none()
            && self.scale.iter().all(|&s| s == 1.0)
            && self.shift.iter().all(|&t| t == 0.0)
    }
}

/// Spatial pooling window over NCHW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right. Padded cells never win a max and, unless
    /// `count_include_pad`, do not count in an average.
    pub padding: [usize; 4],
    /// Average pooling only: divide by the full window size even where it overlaps padding.
    pub count_include_pad: bool,
}

/// The operators of the IR. Each family lives in its own module under `ops/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Fully connected layer.
    Dense(Dense),
    /// 2-D convolution (grouped and depthwise included).
    Conv2d(Conv2d),
    /// Batch normalisation that could not be folded into a producer.
    BatchNorm(BatchNorm),
    /// Stand-alone element-wise activation.
    Activation(Activation),
    /// Softmax along `axis`.
    Softmax {
        /// Axis, counted with the batch axis.
        axis: usize,
    },
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling.
    AveragePool(Pool),
    /// Mean over H and W, output `[1, C, 1, 1]`.
    GlobalAveragePool,
    /// Element-wise sum of two tensors of equal shape (residual connections).
    Add,
    /// Concatenation along `axis`.
    Concat {
        /// Axis, counted with the batch axis.
        axis: usize,
    },
    /// Same elements, new shape (Flatten and Reshape): a free view.
    Reshape {
        /// The output shape, batch axis included.
        shape: Vec<usize>,
    },
    /// Axis permutation: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// Constant padding: `(before, after)` per axis.
    Pad {
        /// Padding per axis, batch axis included.
        pads: Vec<(usize, usize)>,
        /// Fill value.
        value: f32,
    },
}

impl Op {
    /// Short operator name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Dense(_) => "Dense",
            Op::Conv2d(c) if c.groups > 1 && c.groups == c.in_channels => "DepthwiseConv2d",
            Op::Conv2d(_) => "Conv2d",
            Op::BatchNorm(_) => "BatchNorm",
            Op::Activation(a) => match a {
                Activation::Identity => "Identity",
                Activation::Relu => "Relu",
                Activation::Clip { .. } if a.name() == "relu6" => "Relu6",
                Activation::Clip { .. } => "Clip",
                Activation::Sigmoid => "Sigmoid",
                Activation::Tanh => "Tanh",
                Activation::LeakyRelu { .. } => "LeakyRelu",
            },
            Op::Softmax { .. } => "Softmax",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Add => "Add",
            Op::Concat { .. } => "Concat",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Pad { .. } => "Pad",
        }
    }

    /// The activation fused into this node, if it can carry one.
    pub fn fused_activation(&self) -> Option<Activation> {
        match self {
            Op::Dense(d) => Some(d.activation),
            Op::Conv2d(c) => Some(c.activation),
            _ => None,
        }
    }
}

/// One operator application, producing exactly one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Name from the source model.
    pub name: String,
    /// What it computes, with its parameters.
    pub op: Op,
    /// Values it reads, in operator order.
    pub inputs: Vec<ValueId>,
    /// The value it writes.
    pub output: ValueId,
}

/// A model: one input, one output, nodes in topological order.
///
/// ```
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// let y = g.push(
///     "fc",
///     Op::Dense(Dense {
///         units: 1,
///         inputs: 2,
///         weights: vec![1.0, -1.0],
///         bias: vec![0.5],
///         activation: Activation::Relu,
///     }),
///     &[g.input],
/// )?;
/// g.output = y;
/// g.check()?;
/// assert_eq!(paoding_core::interp::run(&g, &[3.0, 1.0])?, vec![2.5]);
/// # Ok::<(), paoding_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// Every value; the graph input has no producer.
    pub values: Vec<Value>,
    /// Nodes in execution (topological) order.
    pub nodes: Vec<Node>,
    /// The model input.
    pub input: ValueId,
    /// The model output.
    pub output: ValueId,
}

impl Graph {
    /// A graph holding only its input value; the output starts as the input.
    pub fn new(input_name: impl Into<String>, input_shape: Vec<usize>) -> Self {
        Graph {
            values: alloc::vec![Value {
                name: input_name.into(),
                shape: input_shape,
            }],
            nodes: Vec::new(),
            input: 0,
            output: 0,
        }
    }

    /// Append a node, inferring its output shape; returns the new output value.
    pub fn push(&mut self, name: impl Into<String>, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let name = name.into();
        for &i in inputs {
            if i >= self.values.len() {
                return Err(Error::Graph(alloc::format!(
                    "node '{name}' reads value #{i}, which does not exist"
                )));
            }
        }
        let shapes: Vec<&[usize]> = inputs
            .iter()
            .map(|&i| self.values[i].shape.as_slice())
            .collect();
        let shape = ops::output_shape(&name, &op, &shapes)?;
        let output = self.values.len();
        self.values.push(Value {
            name: name.clone(),
            shape,
        });
        self.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            output,
        });
        Ok(output)
    }

    /// Shape of a value.
    pub fn shape(&self, v: ValueId) -> &[usize] {
        &self.values[v].shape
    }

    /// The node producing value `v`, if any (the graph input has none).
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == v)
    }

    /// Indices of the nodes reading value `v`.
    pub fn consumers(&self, v: ValueId) -> Vec<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.inputs.contains(&v))
            .map(|(i, _)| i)
            .collect()
    }

    /// Total number of parameters (weights, biases, kept normalisation statistics).
    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| ops::param_count(&n.op)).sum()
    }

    /// Check everything later stages trust: every value produced once and before use, the
    /// output reachable, every node's shapes and parameter sizes consistent.
    pub fn check(&self) -> Result<()> {
        let n_values = self.values.len();
        if self.input >= n_values || self.output >= n_values {
            return Err(Error::Graph("input or output value does not exist".into()));
        }
        let mut defined = alloc::vec![false; n_values];
        defined[self.input] = true;
        for node in &self.nodes {
            for &i in &node.inputs {
                if i >= n_values || !defined[i] {
                    return Err(Error::Graph(alloc::format!(
                        "node '{}' reads a value that is not computed before it",
                        node.name
                    )));
                }
            }
            if node.output >= n_values || defined[node.output] {
                return Err(Error::Graph(alloc::format!(
                    "node '{}' writes a value that is already defined",
                    node.name
                )));
            }
            defined[node.output] = true;
            let shapes: Vec<&[usize]> = node
                .inputs
                .iter()
                .map(|&i| self.values[i].shape.as_slice())
                .collect();
            let shape = ops::output_shape(&node.name, &node.op, &shapes)?;
            if shape != self.values[node.output].shape {
                return Err(Error::Graph(alloc::format!(
                    "node '{}' produces shape {:?} but its output is declared {:?}",
                    node.name,
                    shape,
                    self.values[node.output].shape
                )));
            }
        }
        if !defined[self.output] {
            return Err(Error::Graph("the output value is never computed".into()));
        }
        if self.values.iter().any(|v| v.shape.first() != Some(&1)) {
            return Err(Error::Graph(
                "every value must have a leading batch axis of 1".into(),
            ));
        }
        Ok(())
    }
}
