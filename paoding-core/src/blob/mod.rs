//! The writer of the runtime's compact model format (the reader is `paoding-runtime`, whose
//! [`paoding_runtime::format`] module defines the layout and the record types).
//!
//! A blob is the fixed header, the postcard-encoded graph description (every node with its
//! operands' arena offsets, dtypes and shapes) and the weights section, 16-byte aligned from
//! the blob start.
//!
//! - [`write_blob`] writes an f32 [`Graph`] with its [`MemoryPlan`] ([`MemoryPlan::new`]).
//! - [`write_quantized_blob`] writes a graph in its int8 form ([`crate::quant::Quantized`]) with
//!   its plan ([`MemoryPlan::quantized`]): [`QuantizedBlob`] is the lowering both use, with
//!   what each node runs as.
//! - [`run_batch`] runs a blob on the host with the runtime itself: the reference evaluation
//!   of an int8 blob is the runtime's own arithmetic.
//! - [`BlobBuilder`] writes any blob the format allows from explicit records.
//!
//! ```
//! use paoding_core::{blob, ir::{Activation, Dense, Graph, Op}, plan::MemoryPlan};
//!
//! let mut g = Graph::new("x", vec![1, 2]);
//! g.output = g.push("fc", Op::Dense(Dense {
//!     units: 2, inputs: 2, weights: vec![1.0, 0.0, 0.0, 1.0], bias: vec![0.0, 1.0],
//!     activation: Activation::Identity,
//! }), &[g.input])?;
//! let plan = MemoryPlan::new(&g);
//! let bytes = blob::write_blob(&g, &plan)?;
//! assert_eq!(bytes.len(), blob::blob_size(&g, &plan)?);
//! assert_eq!(&bytes[..4], b"PDNG");
//! # Ok::<(), paoding_core::Error>(())
//! ```

mod quantized;

use alloc::format;
use alloc::vec::Vec;

use paoding_runtime::format::{
    blob_crc, pack_filters, pack_filters_i8, Act, ConvParams, ConvRec, DescHead, Header, NodeRec,
    OpRec, Operand, PoolRec, Shape, WRef, HEADER_LEN, MAX_INPUTS, MAX_RANK, VERSION, WEIGHTS_ALIGN,
};

use crate::error::{Error, Result};
use crate::ir::{Activation, Conv2d, Graph, Op, Pool, ValueId};
use crate::plan::MemoryPlan;

/// The dtype of a value (and of a blob's input and output) and the quantization of an int8
/// one, as the format holds them.
pub use paoding_runtime::format::{Dtype, QuantParams};
pub use quantized::{quantized_blob_size, write_quantized_blob, QuantizedBlob};

fn fail(reason: impl Into<alloc::string::String>) -> Error {
    Error::Graph(format!("cannot write blob: {}", reason.into()))
}

fn u32_of(x: usize, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| fail(format!("{what} {x} does not fit in 32 bits")))
}

fn shape_of(dims: &[usize]) -> Result<Shape> {
    if dims.len() > MAX_RANK {
        return Err(fail(format!(
            "shape {dims:?} has more than {MAX_RANK} axes"
        )));
    }
    let mut s = Shape::new();
    for &d in dims {
        s.push(u32_of(d, "dimension")?)
            .map_err(|_| fail("shape rank"))?;
    }
    Ok(s)
}

fn act_of(a: Activation) -> Act {
    match a {
        Activation::Identity => Act::Identity,
        Activation::Relu => Act::Relu,
        Activation::Clip { min, max } => Act::Clip { min, max },
        Activation::Sigmoid => Act::Sigmoid,
        Activation::Tanh => Act::Tanh,
        Activation::LeakyRelu { alpha } => Act::LeakyRelu { alpha },
    }
}

fn pair(x: [usize; 2]) -> Result<[u32; 2]> {
    Ok([u32_of(x[0], "parameter")?, u32_of(x[1], "parameter")?])
}

fn quad(x: [usize; 4]) -> Result<[u32; 4]> {
    Ok([
        u32_of(x[0], "padding")?,
        u32_of(x[1], "padding")?,
        u32_of(x[2], "padding")?,
        u32_of(x[3], "padding")?,
    ])
}

fn pool_of(p: &Pool) -> Result<PoolRec> {
    Ok(PoolRec {
        kernel: pair(p.kernel)?,
        stride: pair(p.stride)?,
        padding: quad(p.padding)?,
        count_include_pad: p.count_include_pad,
    })
}

fn axis_of(axis: usize) -> Result<u8> {
    u8::try_from(axis).map_err(|_| fail("axis"))
}

/// Weights smaller in magnitude than 2^-100 (about 7.9e-31; subnormals included) are stored
/// as zero: their products lie far below the resolution of any sum they enter, and products
/// in the subnormal range take a slow microcode path on FPUs without flush-to-zero (x86 by
/// default), slowing a layer down by an order of magnitude.
fn flush_subnormal(w: f32) -> f32 {
    const TINY: f32 = 7.888_609e-31; // 2^-100
    if w.abs() < TINY {
        0.0
    } else {
        w
    }
}

/// Writes a blob from explicit records: the low-level writer under [`write_blob`], for any
/// model the format describes — int8 and mixed models included — whose nodes, arena offsets
/// and weights the caller has decided.
///
/// Weight runs are appended with [`BlobBuilder::f32s`], [`BlobBuilder::i8s`],
/// [`BlobBuilder::i32s`] and the filter forms [`BlobBuilder::f32_filters`] /
/// [`BlobBuilder::i8_filters`] (which store filters in the kernels' order, [`pack_filters`]
/// and [`pack_filters_i8`]);
/// each returns the [`WRef`] to put in a record, f32 and i32 runs 4-byte aligned. Nodes are
/// added in execution order with [`BlobBuilder::node`] (node `i` writes value `i + 1`; value 0
/// is the input), then [`BlobBuilder::finish`] assembles the blob: header (shapes, element
/// counts and dtypes taken from the input and output operands, the arena size given), the
/// description and the weights, with the CRC.
///
/// The builder checks only what it needs to encode; `paoding_runtime::Model::from_bytes`
/// validates the result (shapes, dtypes, quantization parameters, arena plan).
///
/// An int8 model with f32 input and output: quantize, an int8 dense layer, dequantize.
///
/// ```
/// use paoding_core::blob::BlobBuilder;
/// use paoding_runtime::format::{Dtype, NodeRec, OpRec, Operand, QuantParams, RequantRec};
/// use paoding_runtime::{quant, Model};
///
/// let operand = |id, offset, dtype, dims: &[u32]| Operand {
///     id, offset, dtype, shape: dims.iter().copied().collect(),
/// };
/// // Arena: x (f32, 8 B) at 0, q (i8, 2 B) at 8, y (i8, 2 B) at 12, z (f32, 8 B) at 16.
/// let x = operand(0, 0, Dtype::F32, &[1, 2]);
/// let q = operand(1, 8, Dtype::I8, &[1, 2]);
/// let y = operand(2, 12, Dtype::I8, &[1, 2]);
/// let z = operand(3, 16, Dtype::F32, &[1, 2]);
/// let mut b = BlobBuilder::new();
/// // y = x @ [[1, 0], [0, 1]] with scales 0.1 (x), 0.01 (weights), 0.1 (y).
/// let weights = b.i8_filters(&[100, 0, 0, 100], 1, 2, 2, 1)?;
/// let (m, s) = quant::quantize_multiplier(0.1 * 0.01 / 0.1);
/// // Per output channel: the bias, the multiplier, the shift.
/// let quant = RequantRec {
///     params: b.requant(&[0, 0], &[m, m], &[s as i8, s as i8])?,
///     input_zp: 0, output_zp: 0, act_min: -128, act_max: 127,
/// };
/// b.node(NodeRec {
///     op: OpRec::Quantize(QuantParams { scale: 0.1, zero_point: 0 }),
///     inputs: [x.clone()].into_iter().collect(),
///     output: q.clone(),
/// });
/// b.node(NodeRec {
///     op: OpRec::QDense { units: 2, inputs: 2, weights, quant },
///     inputs: [q].into_iter().collect(),
///     output: y.clone(),
/// });
/// b.node(NodeRec {
///     op: OpRec::Dequantize(QuantParams { scale: 0.1, zero_point: 0 }),
///     inputs: [y].into_iter().collect(),
///     output: z.clone(),
/// });
/// let blob = b.finish(&x, &z, 24)?;
/// let model = Model::from_bytes(&blob).expect("valid");
/// let mut out = [0.0f32; 2];
/// model.run(&[0.5, -1.2], &mut [0.0; 6], &mut out).expect("runs");
/// assert_eq!(out, [0.5, -1.2]);
/// # Ok::<(), paoding_core::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct BlobBuilder {
    nodes: Vec<NodeRec>,
    /// The weights section (empty when only sizing).
    weights: Vec<u8>,
    /// Its length.
    len: usize,
    /// Whether the weights are kept (else only their length: [`blob_size`]).
    sizing: bool,
    /// The quantization of an int8 input and output ([`BlobBuilder::io_quant`]).
    input_quant: Option<QuantParams>,
    output_quant: Option<QuantParams>,
    /// When digesting ([`digest`]): the running hash of the weight runs, as given (a sizing
    /// builder's runs are not stored), and the scratch they are encoded into.
    weights_digest: Option<(Fnv, Vec<u8>)>,
}

/// FNV-1a over 32-bit little-endian words (a short tail padded with zeros).
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const START: Fnv = Fnv(0xcbf2_9ce4_8422_2325);

    fn bytes(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        for chunk in bytes.chunks(4) {
            let mut b = [0u8; 4];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from(u32::from_le_bytes(b));
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }
}

impl BlobBuilder {
    /// An empty blob.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that only measures: weight runs take their room but are not copied.
    pub(crate) fn sizing() -> Self {
        BlobBuilder {
            sizing: true,
            ..Self::default()
        }
    }

    /// Append `count` elements of `size` bytes, written by `write` into the section, at the
    /// next multiple of `align`.
    fn append(
        &mut self,
        align: usize,
        size: usize,
        count: usize,
        write: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<WRef> {
        let offset = self.len.div_ceil(align) * align;
        let bytes = count
            .checked_mul(size)
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| fail("too many weights"))?;
        let r = WRef {
            offset: u32_of(offset, "weight offset")?,
            len: u32_of(count, "weight count")?,
        };
        u32_of(bytes, "weights size")?;
        if let Some((hash, scratch)) = &mut self.weights_digest {
            scratch.clear();
            write(scratch)?;
            hash.bytes(scratch);
            hash.bytes(&(count as u32).to_le_bytes());
        } else if !self.sizing {
            self.weights.resize(offset, 0);
            write(&mut self.weights)?;
            if self.weights.len() != bytes {
                return Err(fail("filter count does not match the layer's shape"));
            }
        }
        self.len = bytes;
        Ok(r)
    }

    /// Append a run of f32, stored as they are.
    pub fn f32s(&mut self, w: &[f32]) -> Result<WRef> {
        self.append(4, 4, w.len(), |out| {
            w.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            Ok(())
        })
    }

    /// Append a run of f32, magnitudes below 2^-100 stored as zero.
    pub(crate) fn f32s_flushed(&mut self, w: &[f32]) -> Result<WRef> {
        self.append(4, 4, w.len(), |out| {
            w.iter()
                .for_each(|&v| out.extend_from_slice(&flush_subnormal(v).to_le_bytes()));
            Ok(())
        })
    }

    /// Append a run of i8.
    pub fn i8s(&mut self, w: &[i8]) -> Result<WRef> {
        self.append(1, 1, w.len(), |out| {
            out.extend(w.iter().map(|&v| v as u8));
            Ok(())
        })
    }

    /// Append a run of i32 (little-endian).
    pub fn i32s(&mut self, w: &[i32]) -> Result<WRef> {
        self.append(4, 4, w.len(), |out| {
            w.iter()
                .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
            Ok(())
        })
    }

    /// Append f32 filters given in ONNX order `[groups * per_group][inputs][taps]`, stored in
    /// the kernels' order ([`pack_filters`]).
    pub fn f32_filters(
        &mut self,
        w: &[f32],
        groups: usize,
        per_group: usize,
        inputs: usize,
        taps: usize,
    ) -> Result<WRef> {
        let mut packed = alloc::vec![0.0; if self.sizing { 0 } else { w.len() }];
        if !self.sizing && !pack_filters(w, groups, per_group, inputs, taps, &mut packed) {
            return Err(fail("filter count does not match the layer's shape"));
        }
        self.f32s_flushed(if self.sizing { w } else { &packed })
    }

    /// Append an int8 layer's per-channel parameters as [`RequantRec::params`] holds them: the
    /// i32 biases, the i32 multipliers, then the i8 shifts (one per output channel each, 9
    /// bytes a channel, 4-byte aligned).
    ///
    /// [`RequantRec::params`]: paoding_runtime::format::RequantRec::params
    pub fn requant(&mut self, bias: &[i32], multiplier: &[i32], shift: &[i8]) -> Result<WRef> {
        let n = bias.len();
        if multiplier.len() != n || shift.len() != n {
            return Err(fail("per-channel parameters of different lengths"));
        }
        // Its elements are bytes; its start is aligned for the i32 arrays.
        self.append(4, 1, 9 * n, |out| {
            for v in bias.iter().chain(multiplier) {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend(shift.iter().map(|&s| s as u8));
            Ok(())
        })
    }

    /// Append int8 filters given in ONNX order `[groups * per_group][inputs][taps]`, stored in
    /// the kernels' order ([`pack_filters_i8`]), 4-byte aligned.
    pub fn i8_filters(
        &mut self,
        w: &[i8],
        groups: usize,
        per_group: usize,
        inputs: usize,
        taps: usize,
    ) -> Result<WRef> {
        let mut packed = alloc::vec![0i8; if self.sizing { 0 } else { w.len() }];
        if !self.sizing && !pack_filters_i8(w, groups, per_group, inputs, taps, &mut packed) {
            return Err(fail("filter count does not match the layer's shape"));
        }
        // 4-byte aligned: a Cortex-M kernel loads four weights at once.
        self.append(4, 1, w.len(), |out| {
            out.extend(packed.iter().map(|&v| v as u8));
            Ok(())
        })
    }

    /// Add the next node (node `i` must write value `i + 1`).
    pub fn node(&mut self, rec: NodeRec) {
        self.nodes.push(rec);
    }

    /// The quantization of an int8 input and an int8 output (what a caller of
    /// `paoding_runtime::Model::run_i8` quantizes with and dequantizes with); both `None`
    /// (the default) for an f32 model.
    pub fn io_quant(&mut self, input: Option<QuantParams>, output: Option<QuantParams>) {
        self.input_quant = input;
        self.output_quant = output;
    }

    /// The description, header and layout: (header with CRC 0, description).
    fn encode(
        &self,
        input: &Operand,
        output: &Operand,
        arena_bytes: usize,
    ) -> Result<(Header, Vec<u8>)> {
        if input.dtype != output.dtype {
            return Err(fail("the input and the output have different dtypes"));
        }
        let mut desc = postcard::to_allocvec(&DescHead {
            n_nodes: u32_of(self.nodes.len(), "node count")?,
            input: input.clone(),
            output: output.clone(),
            input_quant: self.input_quant,
            output_quant: self.output_quant,
        })
        .map_err(|e| fail(format!("{e}")))?;
        for rec in &self.nodes {
            desc = postcard::to_extend(rec, desc).map_err(|e| fail(format!("{e}")))?;
        }
        let fixed = |s: &Shape| {
            let mut a = [0u32; MAX_RANK];
            for (o, &d) in a.iter_mut().zip(s.iter()) {
                *o = d;
            }
            a
        };
        let count = |s: &Shape| -> Result<u32> {
            let n = s
                .iter()
                .try_fold(1u32, |n, &d| n.checked_mul(d))
                .ok_or_else(|| fail("tensor size does not fit in 32 bits"))?;
            Ok(n)
        };
        let weights_offset = (HEADER_LEN + desc.len()).div_ceil(WEIGHTS_ALIGN) * WEIGHTS_ALIGN;
        let total = weights_offset + self.len;
        let header = Header {
            version: VERSION,
            flags: 0,
            payload_len: u32_of(total - HEADER_LEN, "blob size")?,
            desc_len: u32_of(desc.len(), "description size")?,
            weights_offset: u32_of(weights_offset, "weights offset")?,
            weights_len: u32_of(self.len, "weights size")?,
            arena_bytes: u32_of(arena_bytes.div_ceil(4) * 4, "arena size")?,
            input_len: count(&input.shape)?,
            output_len: count(&output.shape)?,
            input_rank: input.shape.len() as u8,
            output_rank: output.shape.len() as u8,
            input_shape: fixed(&input.shape),
            output_shape: fixed(&output.shape),
            io_dtype: input.dtype,
            crc: 0,
        };
        Ok((header, desc))
    }

    /// Assemble the blob: `input` is the graph input's operand (value 0), `output` the graph
    /// output's (as its producer writes it), `arena_bytes` the arena the offsets need (rounded
    /// up to a multiple of 4).
    pub fn finish(self, input: &Operand, output: &Operand, arena_bytes: usize) -> Result<Vec<u8>> {
        let (mut header, desc) = self.encode(input, output, arena_bytes)?;
        let mut blob = Vec::with_capacity(header.weights_offset as usize + self.len);
        blob.resize(HEADER_LEN, 0);
        blob.extend_from_slice(&desc);
        blob.resize(header.weights_offset as usize, 0);
        blob.extend_from_slice(&self.weights);
        let mut fixed = [0u8; HEADER_LEN];
        header.write(&mut fixed);
        blob[..HEADER_LEN].copy_from_slice(&fixed);
        header.crc = blob_crc(&blob);
        header.write(&mut fixed);
        blob[..HEADER_LEN].copy_from_slice(&fixed);
        Ok(blob)
    }

    /// The size [`BlobBuilder::finish`] would give.
    pub(crate) fn size(
        &self,
        input: &Operand,
        output: &Operand,
        arena_bytes: usize,
    ) -> Result<usize> {
        let (header, _) = self.encode(input, output, arena_bytes)?;
        Ok(header.weights_offset as usize + self.len)
    }
}

/// The f32 record of an IR operator, its weights appended to `b`.
fn f32_op(op: &Op, b: &mut BlobBuilder) -> Result<OpRec> {
    Ok(match op {
        Op::Dense(d) => OpRec::Dense {
            units: u32_of(d.units, "units")?,
            inputs: u32_of(d.inputs, "inputs")?,
            weights: b.f32_filters(&d.weights, 1, d.units, d.inputs, 1)?,
            bias: b.f32s_flushed(&d.bias)?,
            act: act_of(d.activation),
        },
        Op::Conv2d(c) => OpRec::Conv2d(ConvRec {
            params: conv_params(c)?,
            weights: b.f32_filters(
                &c.weights,
                c.groups,
                c.out_channels / c.groups.max(1),
                c.in_channels / c.groups.max(1),
                c.kernel[0] * c.kernel[1],
            )?,
            bias: b.f32s_flushed(&c.bias)?,
            act: act_of(c.activation),
        }),
        Op::BatchNorm(bn) => OpRec::BatchNorm {
            scale: b.f32s_flushed(&bn.scale)?,
            shift: b.f32s_flushed(&bn.shift)?,
        },
        Op::Activation(a) => OpRec::Activation(act_of(*a)),
        Op::Softmax { axis } => OpRec::Softmax {
            axis: axis_of(*axis)?,
        },
        Op::MaxPool(p) => OpRec::MaxPool(pool_of(p)?),
        Op::AveragePool(p) => OpRec::AveragePool(pool_of(p)?),
        Op::GlobalAveragePool => OpRec::GlobalAveragePool,
        Op::Add => OpRec::Add,
        Op::Concat { axis } => OpRec::Concat {
            axis: axis_of(*axis)?,
        },
        Op::Reshape { .. } => OpRec::Reshape,
        Op::Transpose { perm } => OpRec::Transpose {
            perm: perm_of(perm)?,
        },
        Op::Pad { pads, value } => OpRec::Pad {
            pads: pads_of(pads)?,
            value: *value,
        },
    })
}

/// A convolution's geometry as the format holds it.
fn conv_params(c: &Conv2d) -> Result<ConvParams> {
    Ok(ConvParams {
        out_channels: u32_of(c.out_channels, "channels")?,
        in_channels: u32_of(c.in_channels, "channels")?,
        kernel: pair(c.kernel)?,
        stride: pair(c.stride)?,
        dilation: pair(c.dilation)?,
        padding: quad(c.padding)?,
        groups: u32_of(c.groups, "groups")?,
    })
}

fn perm_of(perm: &[usize]) -> Result<heapless::Vec<u8, MAX_RANK>> {
    let mut p = heapless::Vec::new();
    for &a in perm {
        p.push(axis_of(a)?).map_err(|_| fail("transpose rank"))?;
    }
    Ok(p)
}

fn pads_of(pads: &[(usize, usize)]) -> Result<heapless::Vec<[u32; 2], MAX_RANK>> {
    let mut p = heapless::Vec::new();
    for &(a, b) in pads {
        p.push([u32_of(a, "padding")?, u32_of(b, "padding")?])
            .map_err(|_| fail("pad rank"))?;
    }
    Ok(p)
}

/// The operands of a node's inputs, in order.
fn operands(
    name: &str,
    inputs: impl IntoIterator<Item = Result<Operand>>,
) -> Result<heapless::Vec<Operand, MAX_INPUTS>> {
    let mut out = heapless::Vec::new();
    for op in inputs {
        out.push(op?)
            .map_err(|_| fail(format!("node '{name}' reads more than {MAX_INPUTS} values")))?;
    }
    Ok(out)
}

/// An f32 graph and its plan as builder records: returns the input and output operands.
fn encode(graph: &Graph, plan: &MemoryPlan, b: &mut BlobBuilder) -> Result<(Operand, Operand)> {
    graph.check()?;
    if plan.value_buffer.len() != graph.values.len() {
        return Err(fail("the memory plan is not for this graph"));
    }
    // Value ids of the format: 0 = input, node i writes i + 1.
    let mut ids: Vec<Option<u32>> = alloc::vec![None; graph.values.len()];
    ids[graph.input] = Some(0);
    for (i, node) in graph.nodes.iter().enumerate() {
        ids[node.output] = Some(u32_of(i + 1, "node count")?);
    }
    let operand = |v: ValueId| -> Result<Operand> {
        let offset = plan
            .offset(v)
            .ok_or_else(|| fail(format!("value #{v} has no buffer in the plan")))?;
        Ok(Operand {
            id: ids[v].ok_or_else(|| fail(format!("value #{v} is never computed")))?,
            offset: u32_of(offset, "arena offset")?,
            dtype: Dtype::F32,
            shape: shape_of(&graph.values[v].shape)?,
        })
    };
    for node in &graph.nodes {
        let op = f32_op(&node.op, b)?;
        b.node(NodeRec {
            op,
            inputs: operands(&node.name, node.inputs.iter().map(|&v| operand(v)))?,
            output: operand(node.output)?,
        });
    }
    Ok((operand(graph.input)?, operand(graph.output)?))
}

/// Encode a checked f32 graph and its memory plan as a runtime blob.
///
/// Filters are stored in the kernels' order ([`pack_filters`]), every other weight as it is;
/// magnitudes below 2^-100 are written as zero.
///
/// Fails (with [`Error::Graph`]) if the graph does not pass [`Graph::check`], if the plan is
/// not for this graph, or if the model exceeds the format's limits (rank above
/// [`MAX_RANK`], a node reading more than [`MAX_INPUTS`] values, sizes beyond 32 bits).
pub fn write_blob(graph: &Graph, plan: &MemoryPlan) -> Result<Vec<u8>> {
    let mut b = BlobBuilder::new();
    let (input, output) = encode(graph, plan, &mut b)?;
    b.finish(&input, &output, plan.arena_bytes)
}

/// Size in bytes of the blob [`write_blob`] would produce (without copying the weights).
pub fn blob_size(graph: &Graph, plan: &MemoryPlan) -> Result<usize> {
    let mut b = BlobBuilder::sizing();
    let (input, output) = encode(graph, plan, &mut b)?;
    b.size(&input, &output, plan.arena_bytes)
}

/// A 64-bit digest of what [`write_blob`] would write: its header (checksum aside), its
/// description and its weights (filters in the graph's order, not packed), by FNV-1a over
/// 32-bit words. Two graphs with the same digest compute the same function on the runtime; a
/// cache of anything derived from a model can be keyed by it. Neither the blob nor its CRC is
/// built, so an 11 M-parameter model takes a few hundredths of a second.
///
/// ```
/// use paoding_core::{blob, ir::{Activation, Dense, Graph, Op}, plan::MemoryPlan};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// let dense = |w: f32| Op::Dense(Dense {
///     units: 1, inputs: 2, weights: vec![1.0, w], bias: vec![0.0],
///     activation: Activation::Identity,
/// });
/// g.output = g.push("fc", dense(2.0), &[g.input])?;
/// let mut h = g.clone();
/// h.nodes[0].op = dense(3.0);
/// let plan = MemoryPlan::new(&g);
/// assert_eq!(blob::digest(&g, &plan)?, blob::digest(&g.clone(), &plan)?);
/// assert_ne!(blob::digest(&g, &plan)?, blob::digest(&h, &plan)?);
/// # Ok::<(), paoding_core::Error>(())
/// ```
pub fn digest(graph: &Graph, plan: &MemoryPlan) -> Result<u64> {
    let mut b = BlobBuilder::sizing();
    b.weights_digest = Some((Fnv::START, Vec::new()));
    let (input, output) = encode(graph, plan, &mut b)?;
    let (header, desc) = b.encode(&input, &output, plan.arena_bytes)?;
    let mut fixed = [0u8; HEADER_LEN];
    header.write(&mut fixed);
    let mut hash = Fnv::START;
    hash.bytes(&fixed);
    hash.bytes(&desc);
    hash.bytes(&(desc.len() as u32).to_le_bytes());
    let (weights, _) = b.weights_digest.take().unwrap_or((Fnv::START, Vec::new()));
    hash.bytes(&weights.0.to_le_bytes());
    Ok(hash.0)
}

/// Run a blob on the host on a batch of inputs, `inputs.len() / input elements` samples in a
/// row, with the runtime itself (`paoding_runtime::Model`): for an int8 blob this is the
/// reference evaluation, bit for bit what the device computes. Inputs and outputs are f32
/// whatever the blob's io dtype: an int8 blob's input is quantized with its input
/// quantization and its output dequantized ([`paoding_runtime::quant`]).
///
/// ```
/// use paoding_core::{blob, ir::{Activation, Dense, Graph, Op}, plan::MemoryPlan};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// g.output = g.push("fc", Op::Dense(Dense {
///     units: 1, inputs: 2, weights: vec![1.0, -1.0], bias: vec![0.5],
///     activation: Activation::Identity,
/// }), &[g.input])?;
/// let bytes = blob::write_blob(&g, &MemoryPlan::new(&g))?;
/// // Two samples.
/// assert_eq!(blob::run_batch(&bytes, &[3.0, 1.0, 0.0, 2.0])?, vec![2.5, -1.5]);
/// # Ok::<(), paoding_core::Error>(())
/// ```
///
/// Fails with [`Error::Blob`] if the runtime refuses the blob, and [`Error::InputLength`] if
/// `inputs` is not a whole number of samples.
pub fn run_batch(blob: &[u8], inputs: &[f32]) -> Result<Vec<f32>> {
    use paoding_runtime::{quant, Model};
    // The runtime reads weights in place: a 4-byte aligned copy.
    let mut buf = alloc::vec![0u8; blob.len() + 3];
    let at = buf.as_ptr().align_offset(4);
    let bytes = buf
        .get_mut(at..at + blob.len())
        .ok_or_else(|| fail("cannot align the blob"))?;
    bytes.copy_from_slice(blob);
    let bytes = &*bytes;
    let m = Model::from_bytes(bytes).map_err(Error::Blob)?;
    let (n_in, n_out) = (m.input_len(), m.output_len());
    if n_in == 0 || !inputs.len().is_multiple_of(n_in) {
        return Err(Error::InputLength {
            got: inputs.len(),
            expected: n_in,
            shape: m.input_shape().iter().map(|&d| d as usize).collect(),
        });
    }
    let mut arena = alloc::vec![0.0f32; m.arena_len()];
    let mut out = Vec::with_capacity(inputs.len() / n_in * n_out);
    match (m.input_quant(), m.output_quant()) {
        (Some(qi), Some(qo)) => {
            let (mut x, mut y) = (alloc::vec![0i8; n_in], alloc::vec![0i8; n_out]);
            for sample in inputs.chunks_exact(n_in) {
                for (q, &v) in x.iter_mut().zip(sample) {
                    *q = quant::quantize(v, qi.scale, qi.zero_point);
                }
                m.run_i8(&x, &mut arena, &mut y).map_err(Error::Blob)?;
                out.extend(
                    y.iter()
                        .map(|&q| quant::dequantize(q, qo.scale, qo.zero_point)),
                );
            }
        }
        _ => {
            let mut y = alloc::vec![0.0f32; n_out];
            for sample in inputs.chunks_exact(n_in) {
                m.run(sample, &mut arena, &mut y).map_err(Error::Blob)?;
                out.extend_from_slice(&y);
            }
        }
    }
    Ok(out)
}
