//! [`Model`]: validate a blob once, then run it any number of times.

use crate::decode::{empty_node, empty_operand, Reader};
use crate::error::{Error, Reason};
use crate::format::{
    blob_crc, header_words, same, ConvParams, ConvRec, DescHead, Dtype, Header, NodeRec, OpRec,
    Operand, PoolRec, QConvRec, QRescale, QuantParams, RequantRec, Shape, WRef, HEADER_LEN,
    MAX_NODES, MAX_RANK, VERSION_2, WEIGHTS_ALIGN,
};
use crate::kernels::{
    self, bytes, bytes_mut, cast, cast_mut, conv::ConvGeom, pool::PoolGeom, qconv::Requant, Dims,
};
use crate::quant::SOFTMAX_MAX_LEN;

/// Node index reported for errors about the graph's input or output.
const GRAPH: u32 = u32::MAX;

/// A validated model: borrowed from the blob (flash), holding no copy of the weights.
#[derive(Debug, Clone, Copy)]
// Kept within 64 bytes, which a Cortex-M moves with load- and store-multiples: a larger
// `Model` moved through a `Result` links compiler_builtins' `memcpy` (about 1 KB of flash). The
// header is parsed again from `blob` when asked for.
pub struct Model<'a> {
    /// The whole blob (for [`Model::header`]).
    blob: &'a [u8],
    /// A version 2 description: offsets in f32 elements, no dtypes.
    v2: bool,
    io_dtype: Dtype,
    /// The node records (the description after its [`DescHead`]).
    nodes: &'a [u8],
    n_nodes: usize,
    weights: &'a [u8],
    input: Region,
    output: Region,
    /// The description (its head holds the io quantization).
    desc: &'a [u8],
    arena_bytes: usize,
}

/// A run of bytes in the arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    off: usize,
    len: usize,
}

impl Region {
    fn end(self) -> usize {
        self.off + self.len
    }

    fn disjoint(self, other: Region) -> bool {
        self.end() <= other.off || other.end() <= self.off
    }
}

/// Where a node's input lies relative to its output.
enum Src<'b> {
    /// Exactly the output's region (in place).
    Same,
    /// Elsewhere in the arena.
    Slice(&'b [u8]),
}

/// The arena split around a node's output: what lies before and after it.
struct Around<'b> {
    head: &'b [u8],
    tail: &'b [u8],
    out: Region,
}

impl<'b> Around<'b> {
    /// Input `k` of `node` and its dimensions.
    #[inline(never)]
    fn input(&self, node: &NodeRec, k: usize) -> Option<(Src<'b>, Dims)> {
        let op = node.inputs.get(k)?;
        let d = dims(&op.shape);
        Some((self.get(operand_region(op, &d))?, d))
    }

    fn get(&self, r: Region) -> Option<Src<'b>> {
        if r == self.out {
            Some(Src::Same)
        } else if r.end() <= self.out.off {
            self.head.get(r.off..r.end()).map(Src::Slice)
        } else if r.off >= self.out.end() {
            self.tail
                .get(r.off - self.out.end()..r.end() - self.out.end())
                .map(Src::Slice)
        } else {
            None
        }
    }
}

fn invalid(node: u32, reason: Reason) -> Error {
    Error::Invalid { node, reason }
}

/// Dimensions of a shape, unchecked (for the executor, after validation).
#[inline(never)]
fn dims(shape: &Shape) -> Dims {
    // Per axis: a loop copying the shape's prefix becomes a memcpy call.
    Dims {
        d: core::array::from_fn(|i| shape.get(i).map_or(1, |&s| s as usize)),
        rank: shape.len(),
    }
}

/// The arena bytes of a validated operand of dimensions `d`.
fn operand_region(op: &Operand, d: &Dims) -> Region {
    Region {
        off: op.offset as usize,
        len: d.product(0, d.rank) * op.dtype.size(),
    }
}

/// Element count of a shape, checked: batch 1 (so rank at least 1; the decoder bounds it by
/// MAX_RANK), no zero dimension, element count representable in a `u32`.
fn checked_len(node: u32, shape: &Shape) -> Result<usize, Error> {
    if shape.is_empty() || shape.first() != Some(&1) {
        return Err(invalid(node, Reason::NoBatchAxis));
    }
    let mut len: usize = 1;
    for &s in shape.iter() {
        if s == 0 {
            return Err(invalid(node, Reason::ZeroDimension));
        }
        len = len
            .checked_mul(s as usize)
            .filter(|&l| l <= u32::MAX as usize)
            .ok_or(invalid(node, Reason::ShapeTooLarge))?;
    }
    Ok(len)
}

/// Output size of a window `k` (dilated by `dil`) sliding by `stride` over `size` padded by
/// `p0 + p1`, or `None` if it never fits or overflows.
fn window_out(size: usize, k: u32, dil: u32, stride: u32, p0: u32, p1: u32) -> Option<usize> {
    if k == 0 || dil == 0 || stride == 0 {
        return None;
    }
    let span = (dil as usize).checked_mul(k as usize - 1)?.checked_add(1)?;
    let padded = size.checked_add(p0 as usize)?.checked_add(p1 as usize)?;
    // Keep every index a kernel forms below usize::MAX with a margin.
    padded.checked_add(span)?.checked_add(stride as usize)?;
    if padded < span {
        return None;
    }
    Some((padded - span) / stride as usize + 1)
}

/// The dtypes an operator takes and gives: `(inputs, output)`; pooling and layout operators
/// keep their output's (one dtype, either).
fn dtypes(op: &OpRec, output: Dtype) -> (Dtype, Dtype) {
    match op {
        OpRec::Dense { .. }
        | OpRec::Conv2d(_)
        | OpRec::BatchNorm { .. }
        | OpRec::Activation(_)
        | OpRec::Softmax { .. }
        | OpRec::Add
        | OpRec::Concat { .. }
        | OpRec::Pad { .. } => (Dtype::F32, Dtype::F32),
        OpRec::QDense { .. }
        | OpRec::QConv2d(_)
        | OpRec::QAdd(_)
        | OpRec::QConcat { .. }
        | OpRec::QPad { .. }
        | OpRec::QClamp { .. }
        | OpRec::QSoftmax { .. } => (Dtype::I8, Dtype::I8),
        OpRec::Quantize(_) => (Dtype::F32, Dtype::I8),
        OpRec::Dequantize(_) => (Dtype::I8, Dtype::F32),
        OpRec::MaxPool(_)
        | OpRec::AveragePool(_)
        | OpRec::GlobalAveragePool
        | OpRec::Reshape
        | OpRec::Transpose { .. } => (output, output),
    }
}

/// Whether the operator may write its output over its (first or second) input.
// Out of line (flash): once per node, in validation and in the executor.
#[inline(never)]
fn in_place(op: &OpRec) -> bool {
    matches!(
        op,
        OpRec::Activation(_)
            | OpRec::BatchNorm { .. }
            | OpRec::Softmax { .. }
            | OpRec::Add
            | OpRec::QAdd(_)
            | OpRec::QClamp { .. }
            | OpRec::QSoftmax { .. }
    )
}

/// A zero point in `[-128, 127]`.
fn check_zero_point(zp: i32) -> Result<(), Reason> {
    ok_if((-128..=127).contains(&zp), Reason::ZeroPoint)
}

/// A requantization multiplier in `[2^30, 2^31 - 1]`, or 0.
fn check_multiplier(m: i32) -> Result<(), Reason> {
    ok_if(m == 0 || m >= 1 << 30, Reason::Multiplier)
}

/// A shift in `[-31, max]`.
fn check_shift(s: i32, max: i32, reason: Reason) -> Result<(), Reason> {
    ok_if((-31..=max).contains(&s), reason)
}

/// An output clamp inside int8: `-128 <= min <= max <= 127`.
fn check_act(min: i32, max: i32) -> Result<(), Reason> {
    ok_if(-128 <= min && min <= max && max <= 127, Reason::ActRange)
}

/// A rescaling: zero point, multiplier, shift in `[-31, max_shift]`.
fn check_rescale(r: &QRescale, max_shift: i32, reason: Reason) -> Result<(), Reason> {
    check_zero_point(r.zp)?;
    check_multiplier(r.multiplier)?;
    check_shift(r.shift, max_shift, reason)
}

/// Quantization parameters: a finite positive scale, a zero point in int8.
fn check_scale(q: &QuantParams) -> Result<(), Reason> {
    ok_if(q.valid(), Reason::Scale)
}

fn ok_if(ok: bool, reason: Reason) -> Result<(), Reason> {
    if ok {
        Ok(())
    } else {
        Err(reason)
    }
}

/// A description head to decode into.
fn empty_head() -> DescHead {
    DescHead {
        n_nodes: 0,
        input: empty_operand(),
        output: empty_operand(),
        input_quant: None,
        output_quant: None,
    }
}

/// A cursor over the node records of a description. Each record is decoded in place into a
/// caller-owned [`NodeRec`] (some 400 bytes: an iterator yielding records by value would copy
/// each one several times).
#[derive(Clone, Copy)]
struct Nodes<'a> {
    rest: &'a [u8],
    v2: bool,
}

impl Nodes<'_> {
    /// Decode the next record over `out`: `Ok(false)` past the last one, [`Error::Decode`]
    /// if it cannot be decoded (`out` then holds part of it, and the cursor must not be used
    /// again).
    fn next_into(&mut self, out: &mut NodeRec) -> Result<bool, Error> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let mut r = Reader {
            rest: self.rest,
            v2: self.v2,
        };
        r.node_into(out).ok_or(Error::Decode)?;
        self.rest = r.rest;
        Ok(true)
    }
}

/// The geometry of a convolution from its record and its operands' dimensions.
fn conv_geom(id: &Dims, od: &Dims, c: &ConvParams) -> ConvGeom {
    ConvGeom {
        in_c: id.at(1),
        ih: id.at(2),
        iw: id.at(3),
        out_c: od.at(1),
        oh: od.at(2),
        ow: od.at(3),
        kh: c.kernel[0] as usize,
        kw: c.kernel[1] as usize,
        sy: c.stride[0] as usize,
        sx: c.stride[1] as usize,
        dy: c.dilation[0] as usize,
        dx: c.dilation[1] as usize,
        pt: c.padding[0] as usize,
        pl: c.padding[1] as usize,
        groups: c.groups as usize,
    }
}

/// The geometry of a pooling from its record and its operands' dimensions.
fn pool_geom(id: &Dims, od: &Dims, p: &PoolRec) -> PoolGeom {
    PoolGeom {
        ih: id.at(2),
        iw: id.at(3),
        oh: od.at(2),
        ow: od.at(3),
        kh: p.kernel[0] as usize,
        kw: p.kernel[1] as usize,
        sy: p.stride[0] as usize,
        sx: p.stride[1] as usize,
        pt: p.padding[0] as usize,
        pl: p.padding[1] as usize,
    }
}

impl<'a> Model<'a> {
    /// Validate a blob and borrow it as a model. Checks the header, the CRC, every length and
    /// offset (with checked arithmetic), every node's shapes, dtypes and parameters against its
    /// operator's rules (int8 zero points, multipliers, shifts and per-channel array lengths
    /// included) and its weights, and the arena plan (regions inside the arena, f32 values
    /// 4-byte aligned; an output either disjoint from its inputs or, for in-place operators and
    /// views, exactly over one; no value overwritten while a later node still reads it). Never
    /// panics, never reads out of bounds.
    ///
    /// The weights section must be 4-byte aligned in memory (see [`crate::Aligned`]).
    pub fn from_bytes(blob: &'a [u8]) -> Result<Model<'a>, Error> {
        if cfg!(not(target_endian = "little")) {
            return Err(Error::Limit("big-endian targets are not supported"));
        }
        let header = Header::parse(blob)?;
        let payload = blob.len() - HEADER_LEN;
        if header.payload_len as usize != payload {
            return Err(if (header.payload_len as usize) > payload {
                Error::Truncated
            } else {
                Error::BadHeader("payload length")
            });
        }
        let computed = blob_crc(blob);
        if computed != header.crc {
            return Err(Error::BadCrc {
                stored: header.crc,
                computed,
            });
        }
        let desc_end = HEADER_LEN
            .checked_add(header.desc_len as usize)
            .ok_or(Error::BadHeader("description length"))?;
        let w_off = header.weights_offset as usize;
        if !w_off.is_multiple_of(WEIGHTS_ALIGN) || w_off < desc_end || desc_end > blob.len() {
            return Err(Error::BadHeader("weights offset"));
        }
        if w_off.checked_add(header.weights_len as usize) != Some(blob.len()) {
            return Err(Error::BadHeader("weights length"));
        }
        let desc = blob
            .get(HEADER_LEN..desc_end)
            .ok_or(Error::BadHeader("description length"))?;
        let weights = blob.get(w_off..).ok_or(Error::Truncated)?;
        if !weights.is_empty() && !(weights.as_ptr() as usize).is_multiple_of(4) {
            return Err(Error::Misaligned);
        }
        let v2 = header.version == VERSION_2;
        let mut r = Reader { rest: desc, v2 };
        let mut head = empty_head();
        r.head_into(&mut head).ok_or(Error::Decode)?;
        let nodes = r.rest;
        let n_nodes = head.n_nodes as usize;
        if n_nodes > MAX_NODES {
            return Err(Error::Limit("more than MAX_NODES nodes"));
        }
        let mut model = Model {
            blob,
            v2,
            io_dtype: header.io_dtype,
            nodes,
            n_nodes,
            weights,
            input: Region { off: 0, len: 0 },
            output: Region { off: 0, len: 0 },
            desc,
            arena_bytes: header.arena_bytes as usize,
        };
        // The graph's input and output, against the header.
        if head.input.id != 0 {
            return Err(invalid(GRAPH, Reason::InputId));
        }
        model.input = model.region(GRAPH, &head.input)?;
        model.output = model.region(GRAPH, &head.output)?;
        if !same(&head.input.shape, header.input_shape())
            || model.input.len != header.input_len as usize * head.input.dtype.size()
        {
            return Err(invalid(GRAPH, Reason::InputShapeVsHeader));
        }
        if !same(&head.output.shape, header.output_shape())
            || model.output.len != header.output_len as usize * head.output.dtype.size()
        {
            return Err(invalid(GRAPH, Reason::OutputShapeVsHeader));
        }
        if head.input.dtype != header.io_dtype || head.output.dtype != header.io_dtype {
            return Err(invalid(GRAPH, Reason::IoDtypeVsHeader));
        }
        // Two records to decode into: the node being checked, and its inputs' producers.
        let mut node = empty_node();
        let mut producer = empty_node();
        if head.output.id as usize > n_nodes
            || *model.definition(&head.input, head.output.id, &mut producer)? != head.output
        {
            return Err(invalid(GRAPH, Reason::OutputVsValue));
        }
        // Every node, in order.
        let mut nodes = model.node_iter();
        let mut count = 0usize;
        while nodes.next_into(&mut node)? {
            if count >= n_nodes {
                return Err(invalid(GRAPH, Reason::ExtraNodes));
            }
            model.check_node(count, &node, &head.input, &mut producer)?;
            count += 1;
        }
        if count != n_nodes {
            return Err(invalid(GRAPH, Reason::MissingNodes));
        }
        model.check_lifetimes(head.output.id as usize, &mut node)?;
        Ok(model)
    }

    fn node_iter(&self) -> Nodes<'a> {
        Nodes {
            rest: self.nodes,
            v2: self.v2,
        }
    }

    /// The arena region of an operand, checked inside the arena (and aligned for f32).
    fn region(&self, node: u32, op: &Operand) -> Result<Region, Error> {
        let len = checked_len(node, &op.shape)?
            .checked_mul(op.dtype.size())
            .ok_or(invalid(node, Reason::ShapeTooLarge))?;
        let r = Region {
            off: op.offset as usize,
            len,
        };
        if op.dtype == Dtype::F32 && !r.off.is_multiple_of(4) {
            return Err(invalid(node, Reason::MisalignedF32));
        }
        match r.off.checked_add(len) {
            Some(end) if end <= self.arena_bytes => Ok(r),
            _ => Err(invalid(node, Reason::OutsideArena)),
        }
    }

    /// The operand of value `id` as its producer wrote it: `input` for id 0, else decoded
    /// into `producer`. A producer that cannot be decoded is [`Error::Decode`]; a record
    /// before it that cannot be decoded, or no producer, is [`Reason::NeverComputed`].
    fn definition<'b>(
        &self,
        input: &'b Operand,
        id: u32,
        producer: &'b mut NodeRec,
    ) -> Result<&'b Operand, Error> {
        if id == 0 {
            return Ok(input);
        }
        let never = invalid(GRAPH, Reason::NeverComputed);
        let mut nodes = self.node_iter();
        for _ in 1..id {
            if !matches!(nodes.next_into(producer), Ok(true)) {
                return Err(never);
            }
        }
        if nodes.next_into(producer)? {
            Ok(&producer.output)
        } else {
            Err(never)
        }
    }

    /// The bytes of a run of `len` elements of `size` bytes, checked: its element count
    /// (`count` if it is not `len`), its alignment (4-byte elements), its bounds.
    fn wrun(&self, w: WRef, len: usize, size: usize, count: Reason) -> Result<&'a [u8], Reason> {
        ok_if(w.len as usize == len, count)?;
        ok_if(
            size == 1 || w.offset.is_multiple_of(4),
            Reason::MisalignedWeights,
        )?;
        self.run_bytes(w, size).ok_or(Reason::OutsideWeights)
    }

    /// f32 weights of a reference, checked.
    // Out of line (flash): six callers in validation.
    #[inline(never)]
    fn wf32(&self, w: WRef, len: usize) -> Result<(), Reason> {
        self.wrun(w, len, 4, Reason::WeightCount).map(|_| ())
    }

    /// The bytes a reference names, if they lie inside the weights section.
    #[inline(never)]
    fn run_bytes(&self, w: WRef, size: usize) -> Option<&'a [u8]> {
        let n = (w.len as usize).checked_mul(size)?;
        self.weights.get(w.offset as usize..)?.get(..n)
    }

    fn f32s(&self, w: WRef) -> Option<&'a [f32]> {
        cast(self.run_bytes(w, 4)?)
    }

    fn i8s(&self, w: WRef) -> Option<&'a [i8]> {
        cast(self.run_bytes(w, 1)?)
    }

    /// The requantization of a record, its per-channel arrays read in place.
    fn requant(&self, q: &RequantRec) -> Option<Requant<'a>> {
        // 9 bytes a channel: two i32 (4-byte aligned), then one i8.
        let params = self.run_bytes(q.params, 1)?;
        let (ints, shift) = params.split_at_checked(params.len() / 9 * 8)?;
        let ints: &[i32] = cast(ints)?;
        let (bias, multiplier) = ints.split_at_checked(ints.len() / 2)?;
        Some(Requant {
            bias,
            multiplier,
            shift: cast(shift)?,
            input_zp: q.input_zp,
            output_zp: q.output_zp,
            act_min: q.act_min,
            act_max: q.act_max,
        })
    }

    /// An int8 layer's requantization for `channels` output channels.
    fn check_requant(&self, q: &RequantRec, channels: usize) -> Result<(), Reason> {
        check_zero_point(q.input_zp)?;
        check_zero_point(q.output_zp)?;
        check_act(q.act_min, q.act_max)?;
        let len = channels.checked_mul(9).ok_or(Reason::QuantChannels)?;
        self.wrun(q.params, len, 1, Reason::QuantChannels)?;
        let r = self.requant(q).ok_or(Reason::MisalignedWeights)?;
        for (&m, &s) in r.multiplier.iter().zip(r.shift) {
            check_multiplier(m)?;
            check_shift(s.into(), 30, Reason::Shift)?;
        }
        Ok(())
    }

    fn check_node(
        &self,
        j: usize,
        node: &NodeRec,
        input: &Operand,
        producer: &mut NodeRec,
    ) -> Result<(), Error> {
        let n = j as u32;
        if node.output.id as usize != j + 1 {
            return Err(invalid(n, Reason::OutputId));
        }
        // Every shape below passed `region` (checked), so its dimensions and element count are
        // read unchecked.
        let out_reg = self.region(n, &node.output)?;
        let arity_ok = match node.op {
            OpRec::Add | OpRec::QAdd(_) => node.inputs.len() == 2,
            OpRec::Concat { .. } | OpRec::QConcat { .. } => !node.inputs.is_empty(),
            _ => node.inputs.len() == 1,
        };
        if !arity_ok {
            return Err(invalid(n, Reason::Arity));
        }
        let mut same = 0;
        for inp in &node.inputs {
            if inp.id as usize > j {
                return Err(invalid(n, Reason::ReadsLater));
            }
            if self.definition(input, inp.id, producer)? != inp {
                return Err(invalid(n, Reason::InputVsProducer));
            }
            let r = self.region(n, inp)?;
            if r == out_reg {
                same += 1;
            } else if !r.disjoint(out_reg) {
                return Err(invalid(n, Reason::PartialOverlap));
            }
        }
        let is_reshape = matches!(node.op, OpRec::Reshape);
        if (is_reshape && same != 1) || (!is_reshape && same > usize::from(in_place(&node.op))) {
            return Err(invalid(n, Reason::BadAlias));
        }
        self.check_op(node).map_err(|r| invalid(n, r))
    }

    /// The operator's own rules: its operands' dtypes, its parameters and weights, its
    /// output's shape.
    #[inline(never)]
    fn check_op(&self, node: &NodeRec) -> Result<(), Reason> {
        let (in_dtype, out_dtype) = dtypes(&node.op, node.output.dtype);
        ok_if(
            node.output.dtype == out_dtype && node.inputs.iter().all(|i| i.dtype == in_dtype),
            Reason::OperandDtype,
        )?;
        let first = node.inputs.first().ok_or(Reason::Arity)?;
        let id = dims(&first.shape);
        let od = dims(&node.output.shape);
        // Each arm leaves the output dimensions it expects here (Dims moved through a
        // `Result` cost a `memcpy` call, and the 1 KB of compiler_builtins behind it).
        let mut expected = id;
        match &node.op {
            OpRec::Dense {
                units,
                inputs,
                weights,
                bias,
                act: _,
            } => {
                self.wf32(*weights, dense_weights(&id, *units, *inputs)?)?;
                self.wf32(*bias, *units as usize)?;
                expected = shape_dims(&[1, *units as usize]);
            }
            OpRec::QDense {
                units,
                inputs,
                weights,
                quant,
            } => {
                let wl = dense_weights(&id, *units, *inputs)?;
                self.wrun(*weights, wl, 1, Reason::WeightCount)?;
                self.check_requant(quant, *units as usize)?;
                expected = shape_dims(&[1, *units as usize]);
            }
            OpRec::Conv2d(c) => {
                let filters = check_conv(&mut expected, &c.params)?;
                self.wf32(c.weights, filters)?;
                self.wf32(c.bias, c.params.out_channels as usize)?;
            }
            OpRec::QConv2d(c) => {
                let filters = check_conv(&mut expected, &c.params)?;
                self.wrun(c.weights, filters, 1, Reason::WeightCount)?;
                self.check_requant(&c.quant, c.params.out_channels as usize)?;
            }
            OpRec::BatchNorm { scale, shift } => {
                ok_if(id.rank >= 2, Reason::BatchNormRank)?;
                self.wf32(*scale, id.at(1))?;
                self.wf32(*shift, id.at(1))?;
            }
            OpRec::Activation(_) => {}
            OpRec::QClamp { min, max } => check_act(*min, *max)?,
            OpRec::Quantize(q) | OpRec::Dequantize(q) => check_scale(q)?,
            OpRec::Softmax { axis } => check_axis(*axis, &id, Reason::SoftmaxAxis)?,
            OpRec::QSoftmax {
                axis,
                input_multiplier,
                input_left_shift,
                diff_min,
            } => {
                // The last axis, as TFLite's, and not too long.
                ok_if(
                    *axis as usize + 1 == id.rank && id.at(*axis as usize) <= SOFTMAX_MAX_LEN,
                    Reason::SoftmaxAxis,
                )?;
                check_multiplier(*input_multiplier)?;
                // Every difference the kernel scales (down to `diff_min`), times
                // 2^input_left_shift, fits in an i32.
                ok_if(
                    (0..=30).contains(input_left_shift)
                        && *diff_min <= 0
                        && *diff_min >= -(i32::MAX >> input_left_shift),
                    Reason::SoftmaxParams,
                )?;
            }
            OpRec::MaxPool(p) | OpRec::AveragePool(p) => {
                // An int8 average counts the taps inside the input only (TFLite's).
                ok_if(
                    !(p.count_include_pad && node.output.dtype == Dtype::I8),
                    Reason::PoolIncludePad,
                )?;
                check_pool(p, &mut expected)?;
            }
            OpRec::GlobalAveragePool => {
                ok_if(id.rank == 4, Reason::GlobalPoolRank)?;
                expected = shape_dims(&[1, id.at(1), 1, 1]);
            }
            OpRec::Add => check_add(node, &mut expected)?,
            OpRec::QAdd(p) => {
                check_rescale(&p.input1, 0, Reason::AddShift)?;
                check_rescale(&p.input2, 0, Reason::AddShift)?;
                check_multiplier(p.output_multiplier)?;
                check_shift(p.output_shift, 0, Reason::AddShift)?;
                check_zero_point(p.output_zp)?;
                check_act(p.act_min, p.act_max)?;
                ok_if((0..=20).contains(&p.left_shift), Reason::AddShift)?;
                check_add(node, &mut expected)?;
            }
            OpRec::Concat { axis } => check_concat(node, *axis, &mut expected)?,
            OpRec::QConcat {
                axis,
                rescales,
                output_zp,
            } => {
                let len = node.inputs.len() * 3;
                let all = self.wrun(*rescales, len, 4, Reason::ConcatRescales)?;
                let all: &[i32] = cast(all).ok_or(Reason::MisalignedWeights)?;
                for t in all.chunks_exact(3) {
                    if let [zp, multiplier, shift] = *t {
                        let r = QRescale {
                            zp,
                            multiplier,
                            shift,
                        };
                        check_rescale(&r, 30, Reason::Shift)?;
                    }
                }
                check_zero_point(*output_zp)?;
                check_concat(node, *axis, &mut expected)?;
            }
            OpRec::Reshape => {
                ok_if(
                    od.product(0, od.rank) == id.product(0, id.rank),
                    Reason::ReshapeCount,
                )?;
                expected = od;
            }
            OpRec::Transpose { perm } => {
                ok_if(
                    perm.len() == id.rank && perm.first() == Some(&0),
                    Reason::Permutation,
                )?;
                let mut seen = [false; MAX_RANK];
                for (o, &p) in expected.d.iter_mut().zip(perm.iter()) {
                    match seen.get_mut(p as usize) {
                        Some(s) if !*s && (p as usize) < id.rank => *s = true,
                        _ => return Err(Reason::Permutation),
                    }
                    *o = id.at(p as usize);
                }
            }
            OpRec::Pad { pads, .. } | OpRec::QPad { pads, .. } => check_pad(pads, &mut expected)?,
        }
        ok_if(same(expected.dims(), od.dims()), Reason::OutputShape)
    }

    /// No value may be overwritten while a later node still reads it: for every value `u`,
    /// each value written after `u` and before `u`'s last read lies elsewhere in the arena,
    /// unless it is a view (Reshape) of exactly the same region. Runs after every node has
    /// been decoded and checked; `node` is a record to decode into.
    ///
    /// One pass over the nodes after `u` per value: the first write over `u`'s region is an
    /// error as soon as a later node reads `u` (or at the end, if `u` is the graph's output).
    // Its one caller's (code size).
    #[inline(always)]
    fn check_lifetimes(&self, output_id: usize, node: &mut NodeRec) -> Result<(), Error> {
        // `after` is positioned after value `u`'s producer, `reg_u` is u's region.
        let mut after = self.node_iter();
        let mut reg_u = self.input;
        for u in 0..=self.n_nodes {
            // The node that first overwrites u's region, if any.
            let mut over: Option<u32> = None;
            let mut later = after;
            // Node w - 1 writes value w at step w.
            let mut w = u as u32;
            while later.next_into(node)? {
                w += 1;
                if let Some(k) = over {
                    if node.inputs.iter().any(|i| i.id as usize == u) {
                        return Err(invalid(k, Reason::Overwrite));
                    }
                    continue;
                }
                let reg_w = self.region(w - 1, &node.output)?;
                let view = matches!(node.op, OpRec::Reshape) && reg_w == reg_u;
                if !reg_w.disjoint(reg_u) && !view {
                    over = Some(w - 1);
                }
            }
            // The graph's output is read after the last node.
            if let (Some(k), true) = (over, u == output_id) {
                return Err(invalid(k, Reason::Overwrite));
            }
            // Value u + 1: the next record (all `n_nodes` of them decoded in `from_bytes`).
            if after.next_into(node)? {
                reg_u = self.region(u as u32, &node.output)?;
            }
        }
        Ok(())
    }

    /// The header, parsed again from the blob (checked in [`Model::from_bytes`]).
    pub fn header(&self) -> Header {
        Header::from_words(&header_words(self.blob), self.io_dtype)
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.n_nodes
    }

    /// Elements of the input (f32 or i8: [`Model::io_dtype`]).
    pub fn input_len(&self) -> usize {
        self.input.len / self.io_dtype.size()
    }

    /// Elements of the output (f32 or i8: [`Model::io_dtype`]).
    pub fn output_len(&self) -> usize {
        self.output.len / self.io_dtype.size()
    }

    /// The dtype of the input and of the output: [`Model::run`] runs f32 models,
    /// [`Model::run_i8`] int8 ones.
    pub fn io_dtype(&self) -> Dtype {
        self.io_dtype
    }

    /// For an int8 input, the quantization its values are in: a caller of [`Model::run_i8`]
    /// quantizes with it ([`crate::quant::quantize`]). `None` for an f32 input.
    pub fn input_quant(&self) -> Option<QuantParams> {
        self.head().input_quant
    }

    /// For an int8 output, the quantization its values are in (an int8 softmax output has
    /// scale 1/256 and zero point -128). `None` for an f32 output.
    pub fn output_quant(&self) -> Option<QuantParams> {
        self.head().output_quant
    }

    /// The description's head, decoded again (validated in [`Model::from_bytes`]).
    fn head(&self) -> DescHead {
        let mut head = empty_head();
        let mut r = Reader {
            rest: self.desc,
            v2: self.v2,
        };
        // Decoded once already: this cannot fail.
        let _ = r.head_into(&mut head);
        head
    }

    /// Elements (f32) of the arena [`Model::run`] and [`Model::run_i8`] need: the plan's
    /// bytes, a multiple of 4, over 4.
    pub fn arena_len(&self) -> usize {
        self.arena_bytes / 4
    }

    /// Bytes of the arena (the memory plan's arena size).
    pub fn arena_bytes(&self) -> usize {
        self.arena_bytes
    }

    /// Input shape, batch first.
    pub fn input_shape(&self) -> Shape {
        Shape::from_slice(self.header().input_shape()).unwrap_or_default()
    }

    /// Output shape, batch first.
    pub fn output_shape(&self) -> Shape {
        Shape::from_slice(self.header().output_shape()).unwrap_or_default()
    }

    /// Run a model with f32 input and output (int8 inside is fine: the graph quantizes and
    /// dequantizes) on one input. `arena` must hold at least [`Model::arena_len`] f32, `input`
    /// exactly [`Model::input_len`], `output` exactly [`Model::output_len`]. An int8 model is
    /// [`Error::IoDtype`]. No allocation; every failure is an `Err`.
    pub fn run(&self, input: &[f32], arena: &mut [f32], output: &mut [f32]) -> Result<(), Error> {
        self.check_io(Dtype::F32, input.len(), output.len())?;
        self.run_raw(bytes(input), arena, bytes_mut(output))
    }

    /// Run a model with int8 input and output ([`Model::io_dtype`] is
    /// [`Dtype::I8`]) on one input, with the same buffers as [`Model::run`] (the arena is
    /// still `f32`: the plan's f32 values need its alignment). An f32 model is
    /// [`Error::IoDtype`].
    pub fn run_i8(&self, input: &[i8], arena: &mut [f32], output: &mut [i8]) -> Result<(), Error> {
        self.check_io(Dtype::I8, input.len(), output.len())?;
        self.run_raw(bytes(input), arena, bytes_mut(output))
    }

    fn check_io(&self, dtype: Dtype, input: usize, output: usize) -> Result<(), Error> {
        if self.io_dtype != dtype {
            return Err(Error::IoDtype(self.io_dtype));
        }
        if input != self.input_len() {
            return Err(Error::InputLength {
                got: input,
                expected: self.input_len(),
            });
        }
        if output != self.output_len() {
            return Err(Error::OutputLength {
                got: output,
                expected: self.output_len(),
            });
        }
        Ok(())
    }

    /// Run on the input's bytes, into the output's bytes (lengths checked by the caller).
    fn run_raw(&self, input: &[u8], arena: &mut [f32], output: &mut [u8]) -> Result<(), Error> {
        #[cfg(target_arch = "x86_64")]
        kernels::x86::clear_upper_vector_state();
        let got = arena.len();
        let needed = self.arena_len();
        let arena = bytes_mut(
            arena
                .get_mut(..needed)
                .ok_or(Error::ArenaTooSmall { got, needed })?,
        );
        let gone = invalid(GRAPH, Reason::OutsideArena);
        kernels::copy(
            arena
                .get_mut(self.input.off..self.input.end())
                .ok_or(gone)?,
            input,
        );
        let mut node = empty_node();
        let mut nodes = self.node_iter();
        let mut j = 0;
        while nodes.next_into(&mut node)? {
            self.exec(j, &node, arena)?;
            j += 1;
        }
        kernels::copy(
            output,
            arena.get(self.output.off..self.output.end()).ok_or(gone)?,
        );
        Ok(())
    }

    fn exec(&self, n: u32, node: &NodeRec, arena: &mut [u8]) -> Result<(), Error> {
        self.exec_node(node, arena)
            .ok_or(invalid(n, Reason::Inconsistent))
    }

    /// Run one node; `None` only if validation let an inconsistency through (an `Option`:
    /// a one-register `?` on every step).
    fn exec_node(&self, node: &NodeRec, arena: &mut [u8]) -> Option<()> {
        if let OpRec::Reshape = node.op {
            return Some(()); // A view: the output already is the input.
        }
        let od = dims(&node.output.shape);
        let out_reg = operand_region(&node.output, &od);
        let (head, rest) = arena.split_at_mut_checked(out_reg.off)?;
        let (out, tail) = rest.split_at_mut_checked(out_reg.len)?;
        let around = Around {
            head,
            tail,
            out: out_reg,
        };
        let (first, id) = around.input(node, 0)?;
        // The first input, unless the output lies over it (only in-place operators' may).
        let x: &[u8] = match first {
            Src::Slice(s) => s,
            Src::Same => &[],
        };
        // Element-wise operators work on the output, which first receives their first input
        // unless it lies there already; a sum's output may lie over its second input instead,
        // and then the first one is the other operand.
        let two = matches!(node.op, OpRec::Add | OpRec::QAdd(_));
        let (other, out_is_first) = match two.then(|| around.input(node, 1)) {
            Some(second) => match second?.0 {
                Src::Same => (x, false),
                Src::Slice(b) => (b, true),
            },
            None => (&[][..], true),
        };
        if in_place(&node.op) && out_is_first {
            kernels::copy(out, x);
        }
        let int8 = node.output.dtype == Dtype::I8;
        match &node.op {
            OpRec::Dense {
                weights, bias, act, ..
            } => {
                let (w, b) = (self.f32s(*weights)?, self.f32s(*bias)?);
                kernels::conv::dense(cast(x)?, w, b, *act, cast_mut(out)?);
            }
            OpRec::QDense { weights, quant, .. } => {
                let (w, q) = (self.i8s(*weights)?, self.requant(quant)?);
                let g = ConvGeom::dense(id.at(1), od.at(1));
                kernels::qconv::qconv2d(&g, cast(x)?, w, &q, cast_mut(out)?);
            }
            OpRec::Conv2d(ConvRec { params, .. }) | OpRec::QConv2d(QConvRec { params, .. }) => {
                let g = conv_geom(&id, &od, params);
                match &node.op {
                    OpRec::Conv2d(c) => {
                        let (w, b) = (self.f32s(c.weights)?, self.f32s(c.bias)?);
                        kernels::conv::conv2d(&g, cast(x)?, w, b, c.act, cast_mut(out)?);
                    }
                    OpRec::QConv2d(c) => {
                        let (w, q) = (self.i8s(c.weights)?, self.requant(&c.quant)?);
                        kernels::qconv::qconv2d(&g, cast(x)?, w, &q, cast_mut(out)?);
                    }
                    _ => {}
                }
            }
            OpRec::BatchNorm { scale, shift } => {
                let (s, t) = (self.f32s(*scale)?, self.f32s(*shift)?);
                kernels::eltwise::batch_norm(cast_mut(out)?, id.product(2, id.rank), s, t);
            }
            OpRec::Activation(a) => a.apply_slice(cast_mut(out)?),
            OpRec::QClamp { min, max } => kernels::qeltwise::qclamp(cast_mut(out)?, *min, *max),
            OpRec::Quantize(q) => kernels::qeltwise::quantize(cast(x)?, *q, cast_mut(out)?),
            OpRec::Dequantize(q) => kernels::qeltwise::dequantize(cast(x)?, *q, cast_mut(out)?),
            OpRec::Softmax { axis } => {
                let axis = *axis as usize;
                let (len, inner) = (id.at(axis), id.product(axis + 1, id.rank));
                kernels::eltwise::softmax(cast_mut(out)?, len, inner);
            }
            OpRec::QSoftmax {
                axis,
                input_multiplier,
                input_left_shift,
                diff_min,
            } => {
                kernels::qeltwise::qsoftmax(
                    cast_mut(out)?,
                    id.at(*axis as usize),
                    *input_multiplier,
                    *input_left_shift,
                    *diff_min,
                );
            }
            OpRec::GlobalAveragePool => {
                let plane = id.at(2) * id.at(3);
                if int8 {
                    kernels::pool::global_average_i8(cast(x)?, cast_mut(out)?, plane);
                } else {
                    kernels::pool::global_average(cast(x)?, cast_mut(out)?, plane);
                }
            }
            OpRec::MaxPool(p) | OpRec::AveragePool(p) => {
                let average = matches!(node.op, OpRec::AveragePool(_));
                let g = pool_geom(&id, &od, p);
                kernels::pool::pool(&g, average.then_some(p.count_include_pad), int8, x, out);
            }
            OpRec::Add => kernels::eltwise::add(cast_mut(out)?, cast(other)?),
            OpRec::QAdd(p) => {
                kernels::qeltwise::qadd(p, cast(other)?, cast_mut(out)?, out_is_first);
            }
            OpRec::Concat { .. } | OpRec::QConcat { .. } => {
                let (axis, rescales, output_zp) = match &node.op {
                    OpRec::QConcat {
                        axis,
                        rescales,
                        output_zp,
                    } => (*axis, cast(self.run_bytes(*rescales, 4)?)?, *output_zp),
                    OpRec::Concat { axis } => (*axis, &[][..], 0),
                    _ => return None,
                };
                // Blocks of bytes: an f32 concatenation copies them, an int8 one rescales.
                let size = node.output.dtype.size();
                let axis = axis as usize;
                let out_block = od.product(axis, od.rank) * size;
                let mut offset = 0;
                for k in 0..node.inputs.len() {
                    let (src, d) = around.input(node, k)?;
                    let Src::Slice(src) = src else {
                        return None;
                    };
                    let block = d.product(axis, d.rank) * size;
                    // An int8 input's (zp, multiplier, shift).
                    let r = match *rescales.get(3 * k..3 * k + 3).unwrap_or(&[]) {
                        [zp, multiplier, shift] => Some(QRescale {
                            zp,
                            multiplier,
                            shift,
                        }),
                        _ => None,
                    };
                    let rescale = r.as_ref().map(|r| (r, output_zp));
                    kernels::layout::concat_part(src, block, out_block, offset, out, rescale);
                    offset += block;
                }
            }
            OpRec::Reshape => {}
            OpRec::Transpose { perm } => {
                let size = node.output.dtype.size();
                kernels::layout::transpose(&id, perm, size, x, out);
            }
            OpRec::Pad { pads, .. } | OpRec::QPad { pads, .. } => {
                // The fill value's bytes: four of an f32, one of an int8.
                let value = match node.op {
                    OpRec::Pad { value, .. } => value.to_le_bytes(),
                    OpRec::QPad { value, .. } => [value as u8; 4],
                    _ => return None,
                };
                let size = node.output.dtype.size();
                kernels::layout::pad(&id, &od, pads, value.get(..size)?, x, out);
            }
        }
        Some(())
    }
}

#[inline(never)]
fn shape_dims(s: &[usize]) -> Dims {
    Dims {
        d: core::array::from_fn(|i| s.get(i).copied().unwrap_or(1)),
        rank: s.len().min(MAX_RANK),
    }
}

/// A dense layer's input against its record; the weight count.
fn dense_weights(id: &Dims, units: u32, inputs: u32) -> Result<usize, Reason> {
    ok_if(
        id.rank == 2 && id.at(1) == inputs as usize && units != 0,
        Reason::DenseInput,
    )?;
    (units as usize)
        .checked_mul(inputs as usize)
        .ok_or(Reason::DenseTooLarge)
}

/// A convolution's parameters against its input dimensions `d`, which become the output's;
/// the weight count.
fn check_conv(d: &mut Dims, c: &ConvParams) -> Result<usize, Reason> {
    let id = &*d;
    let bad = Reason::ConvParams;
    let (g, ic, oc) = (c.groups, c.in_channels, c.out_channels);
    ok_if(id.rank == 4 && id.at(1) == ic as usize, bad)?;
    ok_if(g != 0 && ic % g == 0 && oc % g == 0 && oc != 0, bad)?;
    let filters = ((ic / g) as usize)
        .checked_mul(c.kernel[0] as usize)
        .and_then(|x| x.checked_mul(c.kernel[1] as usize))
        .and_then(|x| x.checked_mul(oc as usize))
        .ok_or(bad)?;
    let [ph0, pw0, ph1, pw1] = c.padding;
    let oh = window_out(id.at(2), c.kernel[0], c.dilation[0], c.stride[0], ph0, ph1);
    let ow = window_out(id.at(3), c.kernel[1], c.dilation[1], c.stride[1], pw0, pw1);
    match (oh, ow) {
        (Some(oh), Some(ow)) => {
            *d = shape_dims(&[1, oc as usize, oh, ow]);
            Ok(filters)
        }
        _ => Err(bad),
    }
}

/// A pooling window against its input dimensions `d`, which become the output's.
fn check_pool(p: &PoolRec, d: &mut Dims) -> Result<(), Reason> {
    let id = &*d;
    let bad = Reason::PoolParams;
    let [kh, kw] = p.kernel;
    let [pt, pl, pb, pr] = p.padding;
    ok_if(
        id.rank == 4 && pt < kh && pb < kh && pl < kw && pr < kw,
        bad,
    )?;
    let oh = window_out(id.at(2), kh, 1, p.stride[0], pt, pb);
    let ow = window_out(id.at(3), kw, 1, p.stride[1], pl, pr);
    match (oh, ow) {
        (Some(oh), Some(ow)) => {
            *d = shape_dims(&[1, id.at(1), oh, ow]);
            Ok(())
        }
        _ => Err(bad),
    }
}

/// An axis other than the batch axis, inside the rank.
fn check_axis(axis: u8, id: &Dims, reason: Reason) -> Result<(), Reason> {
    ok_if(axis != 0 && (axis as usize) < id.rank, reason)
}

/// Both inputs of an Add have one shape; `d` becomes the output's.
fn check_add(node: &NodeRec, d: &mut Dims) -> Result<(), Reason> {
    match (node.inputs.first(), node.inputs.get(1)) {
        (Some(a), Some(b)) if same(&a.shape, &b.shape) => {
            *d = dims(&a.shape);
            Ok(())
        }
        _ => Err(Reason::AddShapes),
    }
}

/// A concatenation of `node`'s inputs along `axis`: `e`, the first input's dimensions, become
/// the output's.
fn check_concat(node: &NodeRec, axis: u8, e: &mut Dims) -> Result<(), Reason> {
    check_axis(axis, e, Reason::ConcatAxis)?;
    let axis = axis as usize;
    for other in node.inputs.iter().skip(1) {
        let d = dims(&other.shape);
        ok_if(
            d.rank == e.rank && (0..e.rank).all(|i| i == axis || d.at(i) == e.at(i)),
            Reason::ConcatShapes,
        )?;
        if let Some(x) = e.d.get_mut(axis) {
            *x = x.checked_add(d.at(axis)).ok_or(Reason::ConcatTooLarge)?;
        }
    }
    Ok(())
}

/// A constant padding: `e`, the input's dimensions, become the output's.
fn check_pad(pads: &[[u32; 2]], e: &mut Dims) -> Result<(), Reason> {
    ok_if(
        pads.len() == e.rank && pads.first() == Some(&[0, 0]),
        Reason::PadAxes,
    )?;
    for (o, p) in e.d.iter_mut().zip(pads.iter()) {
        *o = o
            .checked_add(p[0] as usize)
            .and_then(|x| x.checked_add(p[1] as usize))
            .ok_or(Reason::PadTooLarge)?;
    }
    Ok(())
}
