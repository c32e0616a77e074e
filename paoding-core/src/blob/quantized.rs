//! The int8 form of a graph as runtime records: every node whose values are int8
//! ([`Quantized::values`]) becomes its int8 operator, every other node its f32 one, with an
//! explicit `Quantize` or `Dequantize` wherever a value is read in the other dtype.
//!
//! - Dense and convolution layers with int8 weights ([`Quantized::layers`]) become `QDense` and
//!   `QConv2d`: filters stored as the kernels read them, int32 biases, and per output channel
//!   the multiplier and shift of `input scale * weight scale / output scale`
//!   ([`quant::quantize_multiplier`], as TFLite computes them), the fused ReLU / ReLU6 / Clip
//!   folded into the output clamp.
//! - A stand-alone ReLU or Clip becomes an integer clamp; Add takes TFLite's two input
//!   rescalings (left shift 20); Concat rescales each input to the output; Pad pads with the
//!   quantized fill value; a Softmax ending the model runs TFLite's int8 softmax (output scale
//!   1/256, zero point -128); pooling and layout operators move codes (input and output share
//!   their parameters). An average pooling that counts its padding is an explicit pad with the
//!   zero point, then a pooling without padding.
//! - A node whose int8 form does not apply — no int8 weights, a sigmoid or tanh, parameters
//!   that do not match, a multiplier TFLite's scheme cannot represent — runs in f32 between a
//!   dequantization of its inputs and a quantization of its output:
//!   [`QuantizedBlob::node_dtypes`] says what each node runs as.
//!
//! The blob's input and output are f32 (quantized on the way in, dequantized on the way out:
//! `Model::run`) or int8 (`Model::run_i8`, with their quantization in the blob), as asked.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use paoding_runtime::format::{
    Dtype, NodeRec, OpRec, Operand, PoolRec, QAddRec, QConvRec, QRescale, QuantParams, RequantRec,
};
use paoding_runtime::quant;

use super::{conv_params, f32_op, fail, operands, pads_of, perm_of, pool_of, shape_of, u32_of};
use super::{BlobBuilder, MemoryPlan};
use crate::error::Result;
use crate::ir::{Activation, Graph, Op, ValueId};
use crate::plan::{byte_size, plan, Sharing, Step};
use crate::quant::params::QParams;
use crate::quant::{QLayer, Quantized, SOFTMAX_OUTPUT};

impl From<QParams> for QuantParams {
    fn from(p: QParams) -> Self {
        QuantParams {
            scale: p.scale,
            zero_point: p.zero_point,
        }
    }
}

/// One record of the lowered model, before the plan gives its operands their places.
#[derive(Debug, Clone)]
struct LStep {
    op: OpRec,
    /// Lowered values read and written.
    inputs: Vec<usize>,
    output: usize,
    /// The graph node it comes from (for messages).
    name: String,
}

/// A graph's int8 form lowered to runtime records: the node sequence the runtime executes
/// (conversions included), its weights, and the dtype of every value. Plan it with
/// [`QuantizedBlob::plan`] (or [`MemoryPlan::quantized`]), then write it with
/// [`QuantizedBlob::write`].
///
/// ```
/// use paoding_core::blob::{self, QuantizedBlob};
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
/// use paoding_core::{interp, plan::MemoryPlan, probes::Probes, quant};
/// use paoding_runtime::format::Dtype;
///
/// let mut g = Graph::new("x", vec![1, 3]);
/// g.output = g.push("fc", Op::Dense(Dense {
///     units: 2, inputs: 3, weights: vec![0.5, -1.0, 0.25, 1.5, 0.75, -0.5],
///     bias: vec![0.1, -0.2], activation: Activation::Relu,
/// }), &[g.input])?;
/// let probes = Probes::uniform(3, 64, -1.0, 1.0, 7);
/// let q = quant::quantize(&g, &probes, &Default::default())?;
/// let low = QuantizedBlob::new(&g, &q, Dtype::F32)?;
/// assert_eq!(low.node_dtypes(), [Dtype::I8]);
/// let plan = low.plan();
/// let bytes = low.write(&plan)?;
/// assert_eq!(bytes.len(), low.size(&plan)?);
/// // Within a few quantization steps of the f32 model.
/// let x = [0.3, -0.6, 0.9];
/// let (y, want) = (blob::run_batch(&bytes, &x)?, interp::run(&g, &x)?);
/// assert!(y.iter().zip(&want).all(|(a, b)| (a - b).abs() < 0.05), "{y:?} {want:?}");
/// # Ok::<(), paoding_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct QuantizedBlob {
    /// The weights section.
    builder: BlobBuilder,
    /// Per lowered value: shape and dtype.
    values: Vec<(Vec<usize>, Dtype)>,
    steps: Vec<LStep>,
    input: usize,
    output: usize,
    /// For int8 io, the input's and output's parameters.
    io_quant: [Option<QuantParams>; 2],
    node_dtypes: Vec<Dtype>,
}

impl QuantizedBlob {
    /// Lower a checked graph and its int8 form (from [`crate::quant::quantize`], or built by
    /// hand): `io` is the dtype of the blob's input and output. An int8 `io` needs the graph's
    /// input and output quantized.
    ///
    /// Fails (with [`crate::Error::Graph`], naming the node or value) if `q` is not for this
    /// graph (lengths), holds parameters outside int8 (a zero point outside `[-128, 127]`, a
    /// scale not finite and positive), an int8 layer whose weights, scales or biases do not fit
    /// the layer, or if the model exceeds the format's limits.
    pub fn new(g: &Graph, q: &Quantized, io: Dtype) -> Result<Self> {
        g.check()?;
        if q.values.len() != g.values.len() || q.layers.len() != g.nodes.len() {
            return Err(fail("the quantized form is not for this graph"));
        }
        for (v, p) in q.values.iter().enumerate() {
            if let Some(p) = p {
                if !(p.scale.is_finite() && p.scale > 0.0 && (-128..=127).contains(&p.zero_point)) {
                    return Err(fail(format!(
                        "value '{}' has quantization parameters outside int8 (scale {}, zero \
                         point {})",
                        g.values[v].name, p.scale, p.zero_point
                    )));
                }
            }
        }
        let mut l = Lower {
            g,
            q,
            builder: BlobBuilder::new(),
            values: Vec::new(),
            steps: Vec::new(),
            primary: Vec::new(),
            other: alloc::vec![None; g.values.len()],
            dtype: Vec::new(),
        };
        l.dtype = (0..g.values.len())
            .map(|v| {
                if q.values[v].is_some() {
                    Dtype::I8
                } else {
                    Dtype::F32
                }
            })
            .collect();
        if io == Dtype::I8 && (q.values[g.input].is_none() || q.values[g.output].is_none()) {
            return Err(fail(
                "an int8 input and output need the graph's input and output quantized",
            ));
        }
        l.dtype[g.input] = io;
        // Every value gets its lowered id in its own dtype when it is written; the input now.
        l.primary = alloc::vec![usize::MAX; g.values.len()];
        l.primary[g.input] = l.value(g.shape(g.input), io);
        let mut node_dtypes = Vec::with_capacity(g.nodes.len());
        for i in 0..g.nodes.len() {
            node_dtypes.push(l.node(i)?);
        }
        let output = l.read(g.output, io, "the graph output")?;
        let io_quant = match io {
            Dtype::I8 => [q.values[g.input], q.values[g.output]].map(|p| p.map(Into::into)),
            Dtype::F32 => [None, None],
        };
        Ok(QuantizedBlob {
            builder: l.builder,
            values: l.values,
            steps: l.steps,
            input: l.primary[g.input],
            output,
            io_quant,
            node_dtypes,
        })
    }

    /// What each graph node runs as: [`Dtype::I8`] for its int8 operator, [`Dtype::F32`] for
    /// its f32 one (with conversions around it where its values are int8).
    pub fn node_dtypes(&self) -> &[Dtype] {
        &self.node_dtypes
    }

    /// The quantization of the blob's input, for an int8 input (else `None`).
    pub fn input_quant(&self) -> Option<QuantParams> {
        self.io_quant[0]
    }

    /// The quantization of the blob's output, for an int8 output (else `None`).
    pub fn output_quant(&self) -> Option<QuantParams> {
        self.io_quant[1]
    }

    /// The arena plan of the lowered model: values sized by their dtype, reshapes as views,
    /// element-wise operators over an input that dies there.
    pub fn plan(&self) -> MemoryPlan {
        let bytes: Vec<usize> = self
            .values
            .iter()
            .map(|(shape, dtype)| byte_size(shape.iter().product::<usize>() * dtype.size()))
            .collect();
        let steps: Vec<Step<'_>> = self
            .steps
            .iter()
            .map(|s| Step {
                inputs: &s.inputs,
                output: s.output,
                sharing: match s.op {
                    OpRec::Reshape => Sharing::View,
                    // The runtime's in-place operators.
                    OpRec::Activation(_)
                    | OpRec::BatchNorm { .. }
                    | OpRec::Softmax { .. }
                    | OpRec::Add
                    | OpRec::QAdd(_)
                    | OpRec::QClamp { .. }
                    | OpRec::QSoftmax { .. } => Sharing::InPlace,
                    _ => Sharing::Own,
                },
            })
            .collect();
        plan(&bytes, self.input, self.output, &steps)
    }

    /// The records with their places in `plan`, in a builder holding the weights.
    fn assemble(&self, plan: &MemoryPlan) -> Result<(BlobBuilder, Operand, Operand)> {
        if plan.value_buffer.len() != self.values.len() {
            return Err(fail("the memory plan is not for this quantized model"));
        }
        // Format ids: the input is 0, step i writes i + 1.
        let mut ids = alloc::vec![0u32; self.values.len()];
        for (i, s) in self.steps.iter().enumerate() {
            ids[s.output] = u32_of(i + 1, "node count")?;
        }
        let operand = |v: usize| -> Result<Operand> {
            let offset = plan
                .offset(v)
                .ok_or_else(|| fail(format!("value #{v} has no buffer in the plan")))?;
            let (shape, dtype) = &self.values[v];
            Ok(Operand {
                id: ids[v],
                offset: u32_of(offset, "arena offset")?,
                dtype: *dtype,
                shape: shape_of(shape)?,
            })
        };
        let mut b = self.builder.clone();
        for s in &self.steps {
            b.node(NodeRec {
                op: s.op.clone(),
                inputs: operands(&s.name, s.inputs.iter().map(|&v| operand(v)))?,
                output: operand(s.output)?,
            });
        }
        b.io_quant(self.input_quant(), self.output_quant());
        Ok((b, operand(self.input)?, operand(self.output)?))
    }

    /// The blob, its operands placed by `plan` (from [`QuantizedBlob::plan`]).
    pub fn write(&self, plan: &MemoryPlan) -> Result<Vec<u8>> {
        let (b, input, output) = self.assemble(plan)?;
        b.finish(&input, &output, plan.arena_bytes)
    }

    /// The size in bytes of the blob [`QuantizedBlob::write`] gives.
    pub fn size(&self, plan: &MemoryPlan) -> Result<usize> {
        let (b, input, output) = self.assemble(plan)?;
        b.size(&input, &output, plan.arena_bytes)
    }
}

/// Write the int8 form `q` of a checked graph as a runtime blob whose input and output have
/// dtype `io`, its arena laid out by `plan` (from [`MemoryPlan::quantized`] with the same
/// graph, `q` and `io`). See [`QuantizedBlob`] for how each operator is lowered and what fails.
///
/// ```
/// use paoding_core::ir::{Activation, Conv2d, Graph, Op};
/// use paoding_core::{blob, plan::MemoryPlan, probes::Probes, quant};
/// use paoding_runtime::format::Dtype;
///
/// let mut g = Graph::new("x", vec![1, 4, 6, 6]);
/// g.output = g.push("conv", Op::Conv2d(Conv2d {
///     out_channels: 8, in_channels: 4, kernel: [3, 3], stride: [1, 1], dilation: [1, 1],
///     padding: [1; 4], groups: 1, weights: (0..288).map(|k| (k % 17) as f32 / 17.0 - 0.5).collect(),
///     bias: vec![0.1; 8], activation: Activation::Relu,
/// }), &[g.input])?;
/// let q = quant::quantize(&g, &Probes::uniform(144, 32, 0.0, 1.0, 3), &Default::default())?;
/// let plan = MemoryPlan::quantized(&g, &q, Dtype::F32)?;
/// let bytes = blob::write_quantized_blob(&g, &q, Dtype::F32, &plan)?;
/// assert_eq!(bytes.len(), blob::quantized_blob_size(&g, &q, Dtype::F32, &plan)?);
/// // 288 int8 weights instead of 288 f32.
/// let f32_bytes = blob::write_blob(&g, &MemoryPlan::new(&g))?;
/// assert!(bytes.len() < f32_bytes.len() / 2);
/// # Ok::<(), paoding_core::Error>(())
/// ```
pub fn write_quantized_blob(
    g: &Graph,
    q: &Quantized,
    io: Dtype,
    plan: &MemoryPlan,
) -> Result<Vec<u8>> {
    QuantizedBlob::new(g, q, io)?.write(plan)
}

/// Size in bytes of the blob [`write_quantized_blob`] would produce.
pub fn quantized_blob_size(
    g: &Graph,
    q: &Quantized,
    io: Dtype,
    plan: &MemoryPlan,
) -> Result<usize> {
    QuantizedBlob::new(g, q, io)?.size(plan)
}

/// The lowering in progress.
struct Lower<'g> {
    g: &'g Graph,
    q: &'g Quantized,
    builder: BlobBuilder,
    values: Vec<(Vec<usize>, Dtype)>,
    steps: Vec<LStep>,
    /// Graph value -> lowered value in its own dtype (`dtype`).
    primary: Vec<usize>,
    /// Graph value -> lowered value in the other dtype, once a node needed it.
    other: Vec<Option<usize>>,
    /// Graph value -> the dtype it is written in.
    dtype: Vec<Dtype>,
}

/// An int8 layer's requantization, per output channel.
struct Requant<'q> {
    layer: &'q QLayer,
    multiplier: Vec<i32>,
    shift: Vec<i8>,
    input_zp: i32,
    output_zp: i32,
    act: (i32, i32),
}

/// How a node runs in int8, decided before anything is written.
enum Int8<'q> {
    /// A dense layer.
    Dense(Requant<'q>),
    /// A convolution.
    Conv(Requant<'q>),
    /// An operator without weights.
    Op(OpRec),
    /// An average pooling counting its padding: pad with the zero point, then pool.
    PaddedAverage {
        pad: OpRec,
        pool: OpRec,
        padded: Vec<usize>,
    },
    /// A concatenation: each input's `(zp, multiplier, shift)`, in order.
    Concat {
        axis: u8,
        rescales: Vec<i32>,
        output_zp: i32,
    },
}

/// TFLite's `CalculateActivationRangeQuantized`: the codes of an activation's range in an
/// output of parameters `p`; `None` for sigmoid, tanh and leaky ReLU (no int8 form).
fn act_range(p: QParams, a: Activation) -> Option<(i32, i32)> {
    let code = |x: f32| {
        // An infinite bound saturates (`as` does), then clamps.
        let q = i64::from(p.zero_point).saturating_add(libm::roundf(x / p.scale) as i64);
        q.clamp(-128, 127) as i32
    };
    match a {
        Activation::Identity => Some((-128, 127)),
        Activation::Relu => Some((code(0.0), 127)),
        Activation::Clip { min, max } => {
            let lo = code(min);
            Some((lo, code(max).max(lo)))
        }
        Activation::Sigmoid | Activation::Tanh | Activation::LeakyRelu { .. } => None,
    }
}

impl<'g> Lower<'g> {
    fn value(&mut self, shape: &[usize], dtype: Dtype) -> usize {
        self.values.push((shape.to_vec(), dtype));
        self.values.len() - 1
    }

    fn step(&mut self, op: OpRec, inputs: Vec<usize>, output: usize, name: &str) {
        self.steps.push(LStep {
            op,
            inputs,
            output,
            name: name.into(),
        });
    }

    /// Graph value `v` as `want`: itself, or a conversion (made once, before its first
    /// reader `name`).
    fn read(&mut self, v: ValueId, want: Dtype, name: &str) -> Result<usize> {
        if self.dtype[v] == want {
            return Ok(self.primary[v]);
        }
        if let Some(c) = self.other[v] {
            return Ok(c);
        }
        let p: QuantParams = self.q.values[v]
            .ok_or_else(|| {
                fail(format!(
                    "{name} reads value '{}' in int8, but it has no quantization parameters",
                    self.g.values[v].name
                ))
            })?
            .into();
        let op = match want {
            Dtype::I8 => OpRec::Quantize(p),
            Dtype::F32 => OpRec::Dequantize(p),
        };
        let c = self.value(self.g.shape(v), want);
        self.step(op, alloc::vec![self.primary[v]], c, name);
        self.other[v] = Some(c);
        Ok(c)
    }

    /// Lower node `i`; returns the dtype it runs in.
    fn node(&mut self, i: usize) -> Result<Dtype> {
        let (g, q) = (self.g, self.q);
        let node = &g.nodes[i];
        let out_p = q.values[node.output];
        let in_p: Option<Vec<QParams>> = node.inputs.iter().map(|&v| q.values[v]).collect();
        let int8 = match (out_p, in_p) {
            (Some(o), Some(ins)) => self.int8_form(i, &ins, o)?,
            _ => None,
        };
        let name = node.name.as_str();
        let Some(form) = int8 else {
            // f32, between conversions.
            let mut inputs = Vec::with_capacity(node.inputs.len());
            for &v in &node.inputs {
                inputs.push(self.read(v, Dtype::F32, name)?);
            }
            let op = f32_op(&node.op, &mut self.builder)?;
            let y = self.value(g.shape(node.output), Dtype::F32);
            self.step(op, inputs, y, name);
            self.primary[node.output] = match out_p {
                Some(p) => {
                    let c = self.value(g.shape(node.output), Dtype::I8);
                    self.step(OpRec::Quantize(p.into()), alloc::vec![y], c, name);
                    // Readers in f32 take the unrounded values.
                    self.other[node.output] = Some(y);
                    c
                }
                None => y,
            };
            return Ok(Dtype::F32);
        };
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &v in &node.inputs {
            inputs.push(self.read(v, Dtype::I8, name)?);
        }
        let op = match (form, &node.op) {
            (Int8::Dense(r), Op::Dense(d)) => OpRec::QDense {
                units: u32_of(d.units, "units")?,
                inputs: u32_of(d.inputs, "inputs")?,
                weights: self
                    .builder
                    .i8_filters(&r.layer.weights, 1, d.units, d.inputs, 1)?,
                quant: self.requant(&r)?,
            },
            (Int8::Conv(r), Op::Conv2d(c)) => OpRec::QConv2d(QConvRec {
                params: conv_params(c)?,
                weights: self.builder.i8_filters(
                    &r.layer.weights,
                    c.groups,
                    c.out_channels / c.groups,
                    c.in_channels / c.groups,
                    c.kernel[0] * c.kernel[1],
                )?,
                quant: self.requant(&r)?,
            }),
            (Int8::PaddedAverage { pad, pool, padded }, _) => {
                let t = self.value(&padded, Dtype::I8);
                self.step(pad, inputs, t, name);
                inputs = alloc::vec![t];
                pool
            }
            (Int8::Op(op), _) => op,
            (
                Int8::Concat {
                    axis,
                    rescales,
                    output_zp,
                },
                _,
            ) => OpRec::QConcat {
                axis,
                rescales: self.builder.i32s(&rescales)?,
                output_zp,
            },
            _ => return Err(fail(format!("node '{name}': inconsistent int8 lowering"))),
        };
        let y = self.value(g.shape(node.output), Dtype::I8);
        self.step(op, inputs, y, name);
        self.primary[node.output] = y;
        Ok(Dtype::I8)
    }

    /// A layer's requantization, its per-channel arrays (biases, multipliers, shifts)
    /// appended to the weights.
    fn requant(&mut self, r: &Requant<'_>) -> Result<RequantRec> {
        Ok(RequantRec {
            params: self
                .builder
                .requant(&r.layer.bias, &r.multiplier, &r.shift)?,
            input_zp: r.input_zp,
            output_zp: r.output_zp,
            act_min: r.act.0,
            act_max: r.act.1,
        })
    }

    /// How node `i` runs in int8, its inputs having parameters `ins` and its output `out`;
    /// `None` where its int8 form does not apply (it then runs in f32).
    fn int8_form(&self, i: usize, ins: &[QParams], out: QParams) -> Result<Option<Int8<'g>>> {
        let g = self.g;
        let node = &g.nodes[i];
        let Some(&inp) = ins.first() else {
            return Ok(None);
        };
        // Pooling and layout operators move codes: one set of parameters in and out.
        let same = inp == out;
        let in_shape = g.shape(node.inputs[0]);
        Ok(match &node.op {
            Op::Dense(d) => self
                .layer_requant(i, inp, out, d.activation, d.units, d.units * d.inputs)?
                .map(Int8::Dense),
            Op::Conv2d(c) => self
                .layer_requant(
                    i,
                    inp,
                    out,
                    c.activation,
                    c.out_channels,
                    c.out_channels * c.filter_len(),
                )?
                .map(Int8::Conv),
            Op::Activation(a) if same => {
                act_range(out, *a).map(|(min, max)| Int8::Op(OpRec::QClamp { min, max }))
            }
            Op::Softmax { axis } => {
                // TFLite's int8 softmax runs along the last axis.
                let fits = *axis + 1 == in_shape.len() && in_shape[*axis] <= quant::SOFTMAX_MAX_LEN;
                let params = quant::softmax_params(1.0, f64::from(inp.scale));
                match params {
                    Some((m, shift, diff_min)) if fits && out == SOFTMAX_OUTPUT => {
                        Some(Int8::Op(OpRec::QSoftmax {
                            axis: super::axis_of(*axis)?,
                            input_multiplier: m,
                            input_left_shift: shift,
                            diff_min,
                        }))
                    }
                    _ => None,
                }
            }
            Op::MaxPool(p) if same => Some(Int8::Op(OpRec::MaxPool(int8_pool(p)?))),
            Op::AveragePool(p) if same && p.count_include_pad && p.padding != [0; 4] => {
                let [pt, pl, pb, pr] = p.padding;
                let pads = [(0, 0), (0, 0), (pt, pb), (pl, pr)];
                let padded: Vec<usize> = in_shape
                    .iter()
                    .zip(&pads)
                    .map(|(&d, &(a, b))| d + a + b)
                    .collect();
                let pool = PoolRec {
                    padding: [0; 4],
                    ..int8_pool(p)?
                };
                Some(Int8::PaddedAverage {
                    pad: OpRec::QPad {
                        pads: pads_of(&pads)?,
                        value: out.zero_point as i8,
                    },
                    pool: OpRec::AveragePool(pool),
                    padded,
                })
            }
            Op::AveragePool(p) if same => Some(Int8::Op(OpRec::AveragePool(int8_pool(p)?))),
            Op::GlobalAveragePool if same => Some(Int8::Op(OpRec::GlobalAveragePool)),
            Op::Reshape { .. } if same => Some(Int8::Op(OpRec::Reshape)),
            Op::Transpose { perm } if same => Some(Int8::Op(OpRec::Transpose {
                perm: perm_of(perm)?,
            })),
            Op::Pad { pads, value } if same => Some(Int8::Op(OpRec::QPad {
                pads: pads_of(pads)?,
                value: quant::quantize(*value, out.scale, out.zero_point),
            })),
            Op::Add => ins
                .get(1)
                .and_then(|&b| add_rec(inp, b, out))
                .map(|r| Int8::Op(OpRec::QAdd(r))),
            Op::Concat { axis } => {
                // Each input's (zp, multiplier, shift) to the output's scale.
                let mut rescales = Vec::with_capacity(3 * ins.len());
                for p in ins {
                    let (multiplier, shift) =
                        quant::quantize_multiplier(f64::from(p.scale) / f64::from(out.scale));
                    rescales.extend([p.zero_point, multiplier, shift]);
                }
                Some(Int8::Concat {
                    axis: super::axis_of(*axis)?,
                    rescales,
                    output_zp: out.zero_point,
                })
            }
            _ => None,
        })
    }

    /// The requantization of layer `i` (`channels` outputs, `weights` weights) from its int8
    /// weights, if it has them and its activation folds into a clamp.
    fn layer_requant(
        &self,
        i: usize,
        inp: QParams,
        out: QParams,
        act: Activation,
        channels: usize,
        weights: usize,
    ) -> Result<Option<Requant<'g>>> {
        let (Some(layer), Some(act)) = (self.q.layers[i].as_ref(), act_range(out, act)) else {
            return Ok(None);
        };
        let name = &self.g.nodes[i].name;
        if layer.weights.len() != weights
            || layer.weight_scales.len() != channels
            || layer.bias.len() != channels
        {
            return Err(fail(format!(
                "node '{name}': its int8 weights, scales or biases do not fit the layer"
            )));
        }
        let mut multiplier = Vec::with_capacity(channels);
        let mut shift = Vec::with_capacity(channels);
        for &s in &layer.weight_scales {
            if !(s.is_finite() && s > 0.0) {
                return Err(fail(format!("node '{name}': weight scale {s}")));
            }
            // TFLite's effective scale, in double.
            let real = f64::from(inp.scale) * f64::from(s) / f64::from(out.scale);
            let (m, sh) = quant::quantize_multiplier(real);
            multiplier.push(m);
            // In [-31, 30].
            shift.push(sh as i8);
        }
        Ok(Some(Requant {
            layer,
            multiplier,
            shift,
            input_zp: inp.zero_point,
            output_zp: out.zero_point,
            act,
        }))
    }
}

/// An int8 pooling's record: an int8 average counts the taps inside the input only (TFLite's
/// `count_include_pad` is always false; one that counts padding is lowered to a pad first).
fn int8_pool(p: &crate::ir::Pool) -> Result<PoolRec> {
    Ok(PoolRec {
        count_include_pad: false,
        ..pool_of(p)?
    })
}

/// TFLite's int8 Add parameters (Prepare of `add.cc`): inputs shifted left by 20, each scaled
/// by its scale over twice the larger one, the sum by twice the larger over `2^20` times the
/// output's; `None` if a multiplier is not below one.
fn add_rec(a: QParams, b: QParams, out: QParams) -> Option<QAddRec> {
    const LEFT_SHIFT: i32 = 20;
    let twice_max = 2.0 * f64::from(a.scale.max(b.scale));
    let rescale = |p: QParams| {
        let (multiplier, shift) =
            quant::quantize_multiplier_smaller_than_one_exp(f64::from(p.scale) / twice_max)?;
        Some(QRescale {
            zp: p.zero_point,
            multiplier,
            shift,
        })
    };
    let (output_multiplier, output_shift) = quant::quantize_multiplier_smaller_than_one_exp(
        twice_max / (f64::from(1u32 << LEFT_SHIFT) * f64::from(out.scale)),
    )?;
    Some(QAddRec {
        input1: rescale(a)?,
        input2: rescale(b)?,
        left_shift: LEFT_SHIFT,
        output_multiplier,
        output_shift,
        output_zp: out.zero_point,
        act_min: -128,
        act_max: 127,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{run_batch, write_blob};
    use crate::ir::Pool;
    use crate::probes::{Probes, SplitMix64};
    use crate::quant::{quantize, QuantOptions};

    /// The f32 model with every int8 tensor rounded to its codes ("fake quantization"): the
    /// layers' weights and biases replaced by their int8 values, every int8 value quantized
    /// and dequantized after the node that writes it. It differs from the runtime only in
    /// how each int8 node rounds its own output (the requantization's fixed point against
    /// the real product): one output step at most, for a node whose inputs are exact.
    fn fake_quant(g: &Graph, q: &Quantized, x: &[f32]) -> Vec<f32> {
        let round = |v: ValueId, data: &mut [f32]| {
            if let Some(p) = q.values[v] {
                data.iter_mut()
                    .for_each(|d| *d = p.dequantize(p.quantize(*d)));
            }
        };
        let mut values: Vec<Vec<f32>> = alloc::vec![Vec::new(); g.values.len()];
        values[g.input] = x.to_vec();
        round(g.input, &mut values[g.input]);
        for (i, node) in g.nodes.iter().enumerate() {
            let mut op = node.op.clone();
            if let (Some(l), Some(p)) = (&q.layers[i], q.values[node.inputs[0]]) {
                let (w, b) = match &mut op {
                    Op::Dense(d) => (&mut d.weights, &mut d.bias),
                    Op::Conv2d(c) => (&mut c.weights, &mut c.bias),
                    _ => unreachable!("only layers have int8 weights"),
                };
                let per = w.len() / b.len();
                for (k, w) in w.iter_mut().enumerate() {
                    *w = f32::from(l.weights[k]) * l.weight_scales[k / per];
                }
                for (c, b) in b.iter_mut().enumerate() {
                    *b = (f64::from(l.bias[c]) * f64::from(p.scale) * f64::from(l.weight_scales[c]))
                        as f32;
                }
            }
            let shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| g.shape(v)).collect();
            let inputs: Vec<&[f32]> = node.inputs.iter().map(|&v| values[v].as_slice()).collect();
            let mut out = alloc::vec![0.0; g.values[node.output].len()];
            crate::ops::eval(&op, &shapes, &inputs, g.shape(node.output), &mut out);
            round(node.output, &mut out);
            values[node.output] = out;
        }
        core::mem::take(&mut values[g.output])
    }

    /// Quantize `g` on uniform probes in `[lo, hi)`, write its int8 blob (f32 io), check that
    /// every node runs in int8, and run 8 other inputs: the blob's outputs stay within
    /// `steps` output quantization steps of the fake-quantized model. Returns the blob.
    fn check(g: &Graph, lo: f32, hi: f32, steps: f32) -> Vec<u8> {
        g.check().unwrap();
        let n = g.values[g.input].len();
        let q = quantize(
            g,
            &Probes::uniform(n, 64, lo, hi, 1),
            &QuantOptions::default(),
        )
        .unwrap();
        let low = QuantizedBlob::new(g, &q, Dtype::F32).unwrap();
        assert!(
            low.node_dtypes().iter().all(|&d| d == Dtype::I8),
            "{:?}: {:?}",
            g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>(),
            low.node_dtypes()
        );
        let plan = low.plan();
        let blob = low.write(&plan).unwrap();
        assert_eq!(blob.len(), low.size(&plan).unwrap());
        let xs = Probes::uniform(n, 8, lo, hi, 99).data;
        let got = run_batch(&blob, &xs).unwrap();
        let step = q.values[g.output].unwrap().scale;
        let out_len = g.values[g.output].len();
        let mut worst = 0.0f32;
        for (x, y) in xs.chunks(n).zip(got.chunks(out_len)) {
            let want = fake_quant(g, &q, x);
            for (a, b) in y.iter().zip(&want) {
                worst = worst.max((a - b).abs() / step);
            }
        }
        assert!(
            worst <= steps * 1.0001,
            "{:?}: {worst} steps off the fake-quantized model",
            g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>()
        );
        blob
    }

    /// `op` alone on an input of `shape`.
    fn single(shape: &[usize], op: Op) -> Graph {
        let mut g = Graph::new("x", shape.to_vec());
        g.output = g.push("op", op, &[g.input]).unwrap();
        g
    }

    #[test]
    fn dense_layers_are_within_a_step() {
        let mut rng = SplitMix64(1);
        for act in [
            Activation::Identity,
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 1.0 },
            Activation::Clip {
                min: -0.5,
                max: 0.5,
            },
        ] {
            check(&single(&[1, 37], rng.dense_op(37, 11, act)), -1.0, 1.0, 1.0);
        }
        // Inputs of one sign (a zero point at the end of the range), many inputs.
        check(
            &single(&[1, 300], rng.dense_op(300, 20, Activation::Relu)),
            0.0,
            1.0,
            1.0,
        );
    }

    #[test]
    fn convolutions_are_within_a_step() {
        let mut rng = SplitMix64(2);
        let r = Activation::Relu;
        let id = Activation::Identity;
        for (shape, op) in [
            // Standard, same-padded.
            (
                [1, 3, 8, 8],
                rng.conv_op(3, 10, 1, [3, 3], [1, 1], [1, 1], [1; 4], r),
            ),
            // Strided, dilated, asymmetric padding, rectangular kernel.
            (
                [1, 4, 9, 7],
                rng.conv_op(4, 9, 1, [3, 2], [2, 1], [2, 1], [2, 0, 1, 1], id),
            ),
            // Grouped.
            (
                [1, 6, 6, 6],
                rng.conv_op(6, 12, 3, [3, 3], [1, 1], [1, 1], [1; 4], r),
            ),
            // Depthwise, and with a depth multiplier of 2.
            (
                [1, 8, 7, 7],
                rng.conv_op(8, 8, 8, [3, 3], [2, 2], [1, 1], [1; 4], r),
            ),
            (
                [1, 4, 6, 6],
                rng.conv_op(4, 8, 4, [3, 3], [1, 1], [1, 1], [1; 4], id),
            ),
            // Pointwise with ReLU6.
            (
                [1, 16, 5, 5],
                rng.conv_op(
                    16,
                    24,
                    1,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    [0; 4],
                    Activation::Clip { min: 0.0, max: 6.0 },
                ),
            ),
        ] {
            check(&single(&shape, op), -1.0, 1.0, 1.0);
        }
    }

    #[test]
    fn pooling_and_layout_operators_are_within_a_step() {
        let pool = |k: usize, s: usize, p: usize, count_include_pad| Pool {
            kernel: [k, k],
            stride: [s, s],
            padding: [p; 4],
            count_include_pad,
        };
        let shape = [1, 3, 7, 7];
        for op in [
            Op::MaxPool(pool(2, 2, 0, false)),
            Op::MaxPool(pool(3, 2, 1, false)),
            Op::AveragePool(pool(2, 2, 0, false)),
            Op::AveragePool(pool(3, 2, 1, false)),
            // Padding counted: an explicit pad with the zero point, then the average.
            Op::AveragePool(pool(3, 1, 1, true)),
            Op::GlobalAveragePool,
            Op::Activation(Activation::Relu),
            Op::Activation(Activation::Clip {
                min: -0.25,
                max: 0.5,
            }),
            Op::Transpose {
                perm: alloc::vec![0, 2, 3, 1],
            },
            Op::Reshape {
                shape: alloc::vec![1, 147],
            },
            Op::Pad {
                pads: alloc::vec![(0, 0), (1, 0), (0, 2), (3, 1)],
                value: 0.0,
            },
            Op::Pad {
                pads: alloc::vec![(0, 0), (0, 0), (1, 1), (1, 1)],
                value: 0.37,
            },
        ] {
            check(&single(&shape, op), -1.0, 1.0, 1.0);
        }
        // The pool with padding counted became two records.
        let g = single(&shape, Op::AveragePool(pool(3, 1, 1, true)));
        let q = quantize(
            &g,
            &Probes::uniform(147, 16, -1.0, 1.0, 3),
            &Default::default(),
        )
        .unwrap();
        let ops: Vec<_> = QuantizedBlob::new(&g, &q, Dtype::F32)
            .unwrap()
            .steps
            .iter()
            .map(|s| core::mem::discriminant(&s.op))
            .collect();
        let want = [
            OpRec::Quantize(QuantParams {
                scale: 1.0,
                zero_point: 0,
            }),
            OpRec::QPad {
                pads: heapless::Vec::new(),
                value: 0,
            },
            OpRec::AveragePool(pool_of(&pool(1, 1, 0, false)).unwrap()),
            OpRec::Dequantize(QuantParams {
                scale: 1.0,
                zero_point: 0,
            }),
        ]
        .map(|op| core::mem::discriminant(&op));
        assert_eq!(ops, want);
    }

    #[test]
    fn softmax_ends_in_steps_of_1_256() {
        // Logits over 10 classes, then over 300 (a long axis).
        for n in [10, 300] {
            let g = single(&[1, n], Op::Softmax { axis: 1 });
            check(&g, -4.0, 4.0, 1.0);
        }
        // Along the last of three axes.
        check(&single(&[1, 5, 3], Op::Softmax { axis: 2 }), -2.0, 2.0, 1.0);
        // Along another axis, which TFLite's int8 softmax does not do: f32, between
        // conversions.
        let g = single(&[1, 5, 3], Op::Softmax { axis: 1 });
        let q = quantize(
            &g,
            &Probes::uniform(15, 16, -2.0, 2.0, 1),
            &Default::default(),
        )
        .unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert_eq!(low.node_dtypes(), [Dtype::F32]);
        let x = Probes::uniform(15, 1, -2.0, 2.0, 4).data;
        let y = run_batch(&low.write(&low.plan()).unwrap(), &x).unwrap();
        let want = fake_quant(&g, &q, &x);
        assert!(y
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1.0 / 256.0));
    }

    #[test]
    fn add_and_concat_rescale_their_inputs() {
        let mut rng = SplitMix64(4);
        // Two inputs at different scales: the input itself and a convolution of it (whose
        // own rounding may put it one of its steps off, hence the tolerance).
        for op in [Op::Add, Op::Concat { axis: 1 }] {
            let mut g = Graph::new("x", alloc::vec![1, 4, 5, 5]);
            let c = g
                .push(
                    "c",
                    rng.conv_op(4, 4, 1, [3, 3], [1, 1], [1, 1], [1; 4], Activation::Relu),
                    &[g.input],
                )
                .unwrap();
            g.output = g.push("op", op, &[g.input, c]).unwrap();
            let q = quantize(
                &g,
                &Probes::uniform(100, 64, -1.0, 1.0, 1),
                &Default::default(),
            )
            .unwrap();
            let s = |v: usize| q.values[v].unwrap().scale;
            check(&g, -1.0, 1.0, 1.0 + s(c) / s(g.output));
        }
    }

    #[test]
    fn a_small_cnn_agrees_with_the_f32_model() {
        // conv -> depthwise -> pool -> residual add -> flatten -> dense -> softmax, all int8;
        // the classes agree with the f32 model and the blob is about a quarter of its size.
        let mut rng = SplitMix64(6);
        let mut g = Graph::new("x", alloc::vec![1, 1, 12, 12]);
        let r = Activation::Relu;
        let c1 = g
            .push(
                "c1",
                rng.conv_op(1, 16, 1, [3, 3], [1, 1], [1, 1], [1; 4], r),
                &[g.input],
            )
            .unwrap();
        let dw = g
            .push(
                "dw",
                rng.conv_op(16, 16, 16, [3, 3], [1, 1], [1, 1], [1; 4], r),
                &[c1],
            )
            .unwrap();
        let add = g.push("add", Op::Add, &[c1, dw]).unwrap();
        let pool = Pool {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0; 4],
            count_include_pad: false,
        };
        let mp = g.push("mp", Op::MaxPool(pool), &[add]).unwrap();
        let c2 = g
            .push(
                "c2",
                rng.conv_op(16, 32, 1, [3, 3], [2, 2], [1, 1], [1; 4], r),
                &[mp],
            )
            .unwrap();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, 288],
                },
                &[c2],
            )
            .unwrap();
        let fc = g
            .push("fc", rng.dense_op(288, 10, Activation::Identity), &[flat])
            .unwrap();
        g.output = g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap();
        let probes = Probes::uniform(144, 128, 0.0, 1.0, 2);
        let q = quantize(&g, &probes, &Default::default()).unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert!(low.node_dtypes().iter().all(|&d| d == Dtype::I8));
        let blob = low.write(&low.plan()).unwrap();
        let f32_plan = MemoryPlan::new(&g);
        let f32_blob = write_blob(&g, &f32_plan).unwrap();
        assert!(
            blob.len() * 10 < f32_blob.len() * 3,
            "{} vs {}",
            blob.len(),
            f32_blob.len()
        );
        // Activations too: well under half (the f32 input and its quantization remain).
        assert!(low.plan().arena_bytes * 2 < f32_plan.arena_bytes);
        let xs = Probes::uniform(144, 200, 0.0, 1.0, 77).data;
        let (y, want) = (
            run_batch(&blob, &xs).unwrap(),
            crate::interp::run_batch(&g, &xs).unwrap(),
        );
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m })
                .0
        };
        let agree = y
            .chunks(10)
            .zip(want.chunks(10))
            .filter(|(a, b)| argmax(a) == argmax(b))
            .count();
        assert!(agree >= 190, "{agree} of 200 agree");
        let worst = y
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst < 0.1, "probabilities {worst} apart");
    }

    #[test]
    fn nodes_without_an_int8_form_run_in_f32_between_conversions() {
        let mut rng = SplitMix64(7);
        let mut g = Graph::new("x", alloc::vec![1, 8]);
        let a = g
            .push("a", rng.dense_op(8, 8, Activation::Relu), &[g.input])
            .unwrap();
        let s = g
            .push("s", Op::Activation(Activation::Sigmoid), &[a])
            .unwrap();
        let b = g
            .push("b", rng.dense_op(8, 6, Activation::Identity), &[s])
            .unwrap();
        g.output = g
            .push("c", rng.dense_op(6, 4, Activation::Identity), &[b])
            .unwrap();
        let probes = Probes::uniform(8, 64, -1.0, 1.0, 1);
        let q = quantize(&g, &probes, &Default::default()).unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        // The sigmoid runs in f32 between conversions; `b` reads its output quantized with a
        // range of its own, so only the sigmoid leaves int8.
        assert_eq!(
            low.node_dtypes(),
            [Dtype::I8, Dtype::F32, Dtype::I8, Dtype::I8]
        );
        let kinds: Vec<&str> = low
            .steps
            .iter()
            .map(|s| match s.op {
                OpRec::Quantize(_) => "q",
                OpRec::Dequantize(_) => "dq",
                OpRec::QDense { .. } => "qdense",
                OpRec::Dense { .. } => "dense",
                OpRec::Activation(_) => "act",
                _ => "?",
            })
            .collect();
        assert_eq!(
            kinds,
            ["q", "qdense", "dq", "act", "q", "qdense", "qdense", "dq"]
        );
        let blob = low.write(&low.plan()).unwrap();
        let xs = Probes::uniform(8, 16, -1.0, 1.0, 5).data;
        let (y, want) = (
            run_batch(&blob, &xs).unwrap(),
            crate::interp::run_batch(&g, &xs).unwrap(),
        );
        let step = q.values[g.output].unwrap().scale;
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 8.0 * step, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn a_model_kept_in_f32_computes_what_its_f32_blob_does() {
        let mut rng = SplitMix64(8);
        let mut g = Graph::new("x", alloc::vec![1, 2, 6, 6]);
        let c = g
            .push(
                "c",
                rng.conv_op(2, 4, 1, [3, 3], [1, 1], [1, 1], [1; 4], Activation::Relu),
                &[g.input],
            )
            .unwrap();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, 144],
                },
                &[c],
            )
            .unwrap();
        g.output = g
            .push("fc", rng.dense_op(144, 3, Activation::Identity), &[flat])
            .unwrap();
        let probes = Probes::uniform(72, 16, -1.0, 1.0, 1);
        let options = QuantOptions {
            keep_f32: alloc::vec![0, 1, 2],
            ..Default::default()
        };
        let q = quantize(&g, &probes, &options).unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert!(low.node_dtypes().iter().all(|&d| d == Dtype::F32));
        let blob = low.write(&low.plan()).unwrap();
        let f32_blob = write_blob(&g, &MemoryPlan::new(&g)).unwrap();
        assert_eq!(blob.len(), f32_blob.len());
        let xs = Probes::uniform(72, 4, -1.0, 1.0, 3).data;
        let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(run_batch(&blob, &xs).unwrap()),
            bits(run_batch(&f32_blob, &xs).unwrap())
        );
        // Mixed: only the first layer kept in f32; the layer after it still runs in int8, on
        // its input quantized with a range of its own.
        let options = QuantOptions {
            keep_f32: alloc::vec![0],
            ..Default::default()
        };
        let q = quantize(&g, &probes, &options).unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert_eq!(low.node_dtypes(), [Dtype::F32, Dtype::F32, Dtype::I8]);
        let options = QuantOptions {
            keep_f32: alloc::vec![2],
            ..Default::default()
        };
        let q = quantize(&g, &probes, &options).unwrap();
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert_eq!(low.node_dtypes(), [Dtype::I8, Dtype::I8, Dtype::F32]);
        run_batch(&low.write(&low.plan()).unwrap(), &xs).unwrap();
    }

    #[test]
    fn int8_io_gives_the_same_codes_as_f32_io() {
        let mut rng = SplitMix64(9);
        let g = single(&[1, 12], rng.dense_op(12, 5, Activation::Relu));
        let q = quantize(
            &g,
            &Probes::uniform(12, 64, -1.0, 1.0, 1),
            &Default::default(),
        )
        .unwrap();
        let a = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        let b = QuantizedBlob::new(&g, &q, Dtype::I8).unwrap();
        assert_eq!((a.input_quant(), a.output_quant()), (None, None));
        assert_eq!(b.input_quant(), q.values[g.input].map(Into::into));
        assert_eq!(b.output_quant(), q.values[g.output].map(Into::into));
        // No conversions: the int8 io model is one record; its arena holds 12 + 5 bytes
        // (rounded to 20), the f32 io one also the f32 input and output at each end (60).
        assert_eq!(b.steps.len(), 1);
        assert_eq!((b.plan().arena_bytes, a.plan().arena_bytes), (20, 60));
        let (ba, bb) = (a.write(&a.plan()).unwrap(), b.write(&b.plan()).unwrap());
        let m = paoding_runtime::Model::from_bytes(&bb).unwrap();
        assert_eq!(m.io_dtype(), Dtype::I8);
        assert_eq!(m.input_quant(), b.input_quant());
        let xs = Probes::uniform(12, 8, -1.5, 1.5, 2).data;
        assert_eq!(run_batch(&ba, &xs).unwrap(), run_batch(&bb, &xs).unwrap());
    }

    #[test]
    fn a_quantized_form_that_does_not_fit_is_an_error() {
        let mut rng = SplitMix64(10);
        let g = single(&[1, 4], rng.dense_op(4, 3, Activation::Relu));
        let q = quantize(
            &g,
            &Probes::uniform(4, 16, -1.0, 1.0, 1),
            &Default::default(),
        )
        .unwrap();
        let err = |q: &Quantized, io| {
            let e = QuantizedBlob::new(&g, q, io).unwrap_err();
            alloc::format!("{e}")
        };
        let mut bad = q.clone();
        bad.values.pop();
        assert!(err(&bad, Dtype::F32).contains("not for this graph"));
        let mut bad = q.clone();
        bad.values[1] = Some(QParams {
            scale: 0.1,
            zero_point: 128,
        });
        assert!(err(&bad, Dtype::F32).contains("outside int8"));
        let mut bad = q.clone();
        bad.values[0] = Some(QParams {
            scale: f32::NAN,
            zero_point: 0,
        });
        assert!(err(&bad, Dtype::F32).contains("outside int8"));
        let mut bad = q.clone();
        bad.layers[0].as_mut().unwrap().bias.pop();
        assert!(err(&bad, Dtype::F32).contains("node 'op'"));
        let mut bad = q.clone();
        bad.layers[0].as_mut().unwrap().weight_scales[1] = 0.0;
        assert!(err(&bad, Dtype::F32).contains("weight scale"));
        let mut bad = q.clone();
        bad.values[0] = None;
        bad.layers[0] = None;
        assert!(err(&bad, Dtype::I8).contains("int8 input and output"));
        // Without its int8 weights the layer runs in f32, correctly.
        let mut f = q.clone();
        f.layers[0] = None;
        let low = QuantizedBlob::new(&g, &f, Dtype::F32).unwrap();
        assert_eq!(low.node_dtypes(), [Dtype::F32]);
        // A plan for another model.
        let low = QuantizedBlob::new(&g, &q, Dtype::F32).unwrap();
        assert!(low.write(&MemoryPlan::new(&g)).is_err());
    }
}
