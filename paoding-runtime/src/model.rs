//! [`Model`]: validate a blob once, then run it any number of times.

use crate::decode::{empty_node, empty_operand, Reader};
use crate::error::{Error, Reason};
use crate::format::{
    blob_crc, ConvRec, DescHead, Header, NodeRec, OpRec, Operand, PoolRec, Shape, WRef, HEADER_LEN,
    MAX_NODES, MAX_RANK, WEIGHTS_ALIGN,
};
use crate::kernels::{self, conv::ConvGeom, pool::PoolGeom, Dims};

/// Node index reported for errors about the graph's input or output.
const GRAPH: u32 = u32::MAX;

/// A validated model: borrowed from the blob (flash), holding no copy of the weights.
#[derive(Debug, Clone, Copy)]
pub struct Model<'a> {
    header: Header,
    /// The node records (the description after its [`DescHead`]).
    nodes: &'a [u8],
    n_nodes: usize,
    weights: &'a [f32],
    input: Region,
    output: Region,
    arena_len: usize,
}

/// A run of f32 in the arena.
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
    Slice(&'b [f32]),
}

/// The arena split around a node's output: what lies before and after it.
struct Around<'b> {
    head: &'b [f32],
    tail: &'b [f32],
    out: Region,
}

impl<'b> Around<'b> {
    /// Input `k` of `node` and its dimensions.
    #[inline(never)]
    fn input(&self, node: &NodeRec, k: usize) -> Option<(Src<'b>, Dims)> {
        let op = node.inputs.get(k)?;
        let d = dims(&op.shape);
        let r = Region {
            off: op.offset as usize,
            len: d.product(0, d.rank),
        };
        Some((self.get(r)?, d))
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

/// A cursor over the node records of a description. Each record is decoded in place into a
/// caller-owned [`NodeRec`] (some 400 bytes: an iterator yielding records by value would copy
/// each one several times).
#[derive(Clone, Copy)]
struct Nodes<'a> {
    rest: &'a [u8],
}

impl Nodes<'_> {
    /// Decode the next record over `out`: `Ok(false)` past the last one, [`Error::Decode`]
    /// if it cannot be decoded (`out` then holds part of it, and the cursor must not be used
    /// again).
    fn next_into(&mut self, out: &mut NodeRec) -> Result<bool, Error> {
        if self.rest.is_empty() {
            return Ok(false);
        }
        let mut r = Reader { rest: self.rest };
        r.node_into(out).ok_or(Error::Decode)?;
        self.rest = r.rest;
        Ok(true)
    }
}

/// Reinterpret the weights section as f32, in place.
#[cfg(target_endian = "little")]
fn as_f32(bytes: &[u8]) -> Result<&[f32], Error> {
    if bytes.is_empty() {
        return Ok(&[]);
    }
    if !bytes.len().is_multiple_of(4) {
        return Err(Error::BadHeader("weights length"));
    }
    if !(bytes.as_ptr() as usize).is_multiple_of(core::mem::align_of::<f32>()) {
        return Err(Error::Misaligned);
    }
    // SAFETY: the pointer is non-null, aligned for f32 (checked above) and valid for reads of
    // `bytes.len()` bytes = `bytes.len() / 4` f32 for the lifetime of `bytes`, which the result
    // borrows; the memory is not mutated while shared; every bit pattern is a valid f32; and
    // on this little-endian target the in-memory f32 is the format's little-endian encoding.
    Ok(unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) })
}

#[cfg(not(target_endian = "little"))]
fn as_f32(_bytes: &[u8]) -> Result<&[f32], Error> {
    Err(Error::Limit("big-endian targets are not supported"))
}

impl<'a> Model<'a> {
    /// Validate a blob and borrow it as a model. Checks the header, the CRC, every length and
    /// offset (with checked arithmetic), every node's shapes against its operator's rules and
    /// its weights, and the arena plan (regions inside the arena; an output either disjoint
    /// from its inputs or, for in-place operators and views, exactly over one; no value
    /// overwritten while a later node still reads it). Never panics, never reads out of bounds.
    ///
    /// The weights section must be 4-byte aligned in memory (see [`crate::Aligned`]).
    pub fn from_bytes(blob: &'a [u8]) -> Result<Model<'a>, Error> {
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
        let weights = as_f32(blob.get(w_off..).ok_or(Error::Truncated)?)?;
        let mut r = Reader { rest: desc };
        let mut head = DescHead {
            n_nodes: 0,
            input: empty_operand(),
            output: empty_operand(),
        };
        r.head_into(&mut head).ok_or(Error::Decode)?;
        let nodes = r.rest;
        let n_nodes = head.n_nodes as usize;
        if n_nodes > MAX_NODES {
            return Err(Error::Limit("more than MAX_NODES nodes"));
        }
        let arena_len = header.arena_len();
        let mut model = Model {
            header,
            nodes,
            n_nodes,
            weights,
            input: Region { off: 0, len: 0 },
            output: Region { off: 0, len: 0 },
            arena_len,
        };
        // The graph's input and output, against the header.
        if head.input.id != 0 {
            return Err(invalid(GRAPH, Reason::InputId));
        }
        model.input = model.region(GRAPH, &head.input)?;
        model.output = model.region(GRAPH, &head.output)?;
        if head.input.shape.as_slice() != header.input_shape()
            || model.input.len != header.input_len as usize
        {
            return Err(invalid(GRAPH, Reason::InputShapeVsHeader));
        }
        if head.output.shape.as_slice() != header.output_shape()
            || model.output.len != header.output_len as usize
        {
            return Err(invalid(GRAPH, Reason::OutputShapeVsHeader));
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
        Nodes { rest: self.nodes }
    }

    /// The arena region of an operand, checked inside the arena.
    fn region(&self, node: u32, op: &Operand) -> Result<Region, Error> {
        let len = checked_len(node, &op.shape)?;
        let r = Region {
            off: op.offset as usize,
            len,
        };
        match r.off.checked_add(len) {
            Some(end) if end <= self.arena_len => Ok(r),
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

    /// Weights of a reference, checked in bounds.
    fn wslice(&self, node: u32, w: WRef, len: usize) -> Result<&'a [f32], Error> {
        if w.len as usize != len {
            return Err(invalid(node, Reason::WeightCount));
        }
        self.weights_of(w)
            .ok_or(invalid(node, Reason::OutsideWeights))
    }

    /// The weights a reference names, if they lie inside the weights section.
    #[inline(never)]
    fn weights_of(&self, w: WRef) -> Option<&'a [f32]> {
        self.weights.get(w.offset as usize..)?.get(..w.len as usize)
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
        let od = dims(&node.output.shape);
        let arity_ok = match node.op {
            OpRec::Add => node.inputs.len() == 2,
            OpRec::Concat { .. } => !node.inputs.is_empty(),
            _ => node.inputs.len() == 1,
        };
        if !arity_ok {
            return Err(invalid(n, Reason::Arity));
        }
        let in_place_op = matches!(
            node.op,
            OpRec::Activation(_) | OpRec::BatchNorm { .. } | OpRec::Softmax { .. } | OpRec::Add
        );
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
        if (is_reshape && same != 1) || (!is_reshape && same > usize::from(in_place_op)) {
            return Err(invalid(n, Reason::BadAlias));
        }
        let first = node.inputs.first().ok_or(invalid(n, Reason::Arity))?;
        let id = dims(&first.shape);
        let expected: Dims = match &node.op {
            OpRec::Dense {
                units,
                inputs,
                weights,
                bias,
                act: _,
            } => {
                if id.rank != 2 || id.at(1) != *inputs as usize || *units == 0 {
                    return Err(invalid(n, Reason::DenseInput));
                }
                let wl = (*units as usize)
                    .checked_mul(*inputs as usize)
                    .ok_or(invalid(n, Reason::DenseTooLarge))?;
                self.wslice(n, *weights, wl)?;
                self.wslice(n, *bias, *units as usize)?;
                shape_dims(&[1, *units as usize])
            }
            OpRec::Conv2d(c) => self.check_conv(n, c, &id)?,
            OpRec::BatchNorm { scale, shift } => {
                if id.rank < 2 {
                    return Err(invalid(n, Reason::BatchNormRank));
                }
                self.wslice(n, *scale, id.at(1))?;
                self.wslice(n, *shift, id.at(1))?;
                id
            }
            OpRec::Activation(_) => id,
            OpRec::Softmax { axis } => {
                if *axis == 0 || *axis as usize >= id.rank {
                    return Err(invalid(n, Reason::SoftmaxAxis));
                }
                id
            }
            OpRec::MaxPool(p) | OpRec::AveragePool(p) => check_pool(n, p, &id)?,
            OpRec::GlobalAveragePool => {
                if id.rank != 4 {
                    return Err(invalid(n, Reason::GlobalPoolRank));
                }
                shape_dims(&[1, id.at(1), 1, 1])
            }
            OpRec::Add => {
                let other = node.inputs.get(1).ok_or(invalid(n, Reason::Arity))?;
                if other.shape != first.shape {
                    return Err(invalid(n, Reason::AddShapes));
                }
                id
            }
            OpRec::Concat { axis } => {
                let axis = *axis as usize;
                if axis == 0 || axis >= id.rank {
                    return Err(invalid(n, Reason::ConcatAxis));
                }
                let mut e = id;
                for other in node.inputs.iter().skip(1) {
                    let d = dims(&other.shape);
                    let same_elsewhere =
                        d.rank == id.rank && (0..id.rank).all(|i| i == axis || d.at(i) == id.at(i));
                    if !same_elsewhere {
                        return Err(invalid(n, Reason::ConcatShapes));
                    }
                    if let Some(x) = e.d.get_mut(axis) {
                        *x = x
                            .checked_add(d.at(axis))
                            .ok_or(invalid(n, Reason::ConcatTooLarge))?;
                    }
                }
                e
            }
            OpRec::Reshape => {
                if out_reg.len != id.product(0, id.rank) {
                    return Err(invalid(n, Reason::ReshapeCount));
                }
                od
            }
            OpRec::Transpose { perm } => {
                if perm.len() != id.rank || perm.first() != Some(&0) {
                    return Err(invalid(n, Reason::Permutation));
                }
                let mut seen = [false; MAX_RANK];
                let mut e = id;
                for (o, &p) in e.d.iter_mut().zip(perm.iter()) {
                    match seen.get_mut(p as usize) {
                        Some(s) if !*s && (p as usize) < id.rank => *s = true,
                        _ => return Err(invalid(n, Reason::Permutation)),
                    }
                    *o = id.at(p as usize);
                }
                e
            }
            OpRec::Pad { pads, value: _ } => {
                if pads.len() != id.rank || pads.first() != Some(&[0, 0]) {
                    return Err(invalid(n, Reason::PadAxes));
                }
                let mut e = id;
                for (o, p) in e.d.iter_mut().zip(pads.iter()) {
                    *o = o
                        .checked_add(p[0] as usize)
                        .and_then(|x| x.checked_add(p[1] as usize))
                        .ok_or(invalid(n, Reason::PadTooLarge))?;
                }
                e
            }
        };
        if expected.dims() != od.dims() {
            return Err(invalid(n, Reason::OutputShape));
        }
        Ok(())
    }

    fn check_conv(&self, n: u32, c: &ConvRec, id: &Dims) -> Result<Dims, Error> {
        let bad = invalid(n, Reason::ConvParams);
        if id.rank != 4 || id.at(1) != c.in_channels as usize {
            return Err(bad);
        }
        let (g, ic, oc) = (c.groups, c.in_channels, c.out_channels);
        if g == 0 || ic % g != 0 || oc % g != 0 || oc == 0 {
            return Err(bad);
        }
        let filter = ((ic / g) as usize)
            .checked_mul(c.kernel[0] as usize)
            .and_then(|x| x.checked_mul(c.kernel[1] as usize))
            .and_then(|x| x.checked_mul(oc as usize))
            .ok_or(bad)?;
        self.wslice(n, c.weights, filter)?;
        self.wslice(n, c.bias, oc as usize)?;
        let [ph0, pw0, ph1, pw1] = c.padding;
        let oh = window_out(id.at(2), c.kernel[0], c.dilation[0], c.stride[0], ph0, ph1);
        let ow = window_out(id.at(3), c.kernel[1], c.dilation[1], c.stride[1], pw0, pw1);
        match (oh, ow) {
            (Some(oh), Some(ow)) => Ok(shape_dims(&[1, oc as usize, oh, ow])),
            _ => Err(bad),
        }
    }

    /// No value may be overwritten while a later node still reads it: for every value `u`,
    /// each value written after `u` and before `u`'s last read lies elsewhere in the arena,
    /// unless it is a view (Reshape) of exactly the same region. Runs after every node has
    /// been decoded and checked; `node` is a record to decode into.
    ///
    /// One pass over the nodes after `u` per value: the first write over `u`'s region is an
    /// error as soon as a later node reads `u` (or at the end, if `u` is the graph's output).
    #[inline(never)]
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

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.n_nodes
    }

    /// Elements (f32) of the input.
    pub fn input_len(&self) -> usize {
        self.input.len
    }

    /// Elements (f32) of the output.
    pub fn output_len(&self) -> usize {
        self.output.len
    }

    /// Elements (f32) of the arena [`Model::run`] needs.
    pub fn arena_len(&self) -> usize {
        self.arena_len
    }

    /// Bytes of the arena (the memory plan's arena size).
    pub fn arena_bytes(&self) -> usize {
        self.arena_len * 4
    }

    /// Input shape, batch first.
    pub fn input_shape(&self) -> &[u32] {
        self.header.input_shape()
    }

    /// Output shape, batch first.
    pub fn output_shape(&self) -> &[u32] {
        self.header.output_shape()
    }

    /// Run the model on one input. `arena` must hold at least [`Model::arena_len`] f32,
    /// `input` exactly [`Model::input_len`], `output` exactly [`Model::output_len`].
    /// No allocation; every failure is an `Err`.
    pub fn run(&self, input: &[f32], arena: &mut [f32], output: &mut [f32]) -> Result<(), Error> {
        if input.len() != self.input.len {
            return Err(Error::InputLength {
                got: input.len(),
                expected: self.input.len,
            });
        }
        if output.len() != self.output.len {
            return Err(Error::OutputLength {
                got: output.len(),
                expected: self.output.len,
            });
        }
        let got = arena.len();
        let arena = arena
            .get_mut(..self.arena_len)
            .ok_or(Error::ArenaTooSmall {
                got,
                needed: self.arena_len,
            })?;
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

    fn exec(&self, n: u32, node: &NodeRec, arena: &mut [f32]) -> Result<(), Error> {
        self.exec_node(node, arena)
            .ok_or(invalid(n, Reason::Inconsistent))
    }

    /// Run one node; `None` only if validation let an inconsistency through (an `Option`:
    /// a one-register `?` on every step).
    fn exec_node(&self, node: &NodeRec, arena: &mut [f32]) -> Option<()> {
        if let OpRec::Reshape = node.op {
            return Some(()); // A view: the output already is the input.
        }
        let od = dims(&node.output.shape);
        let out_reg = Region {
            off: node.output.offset as usize,
            len: od.product(0, od.rank),
        };
        let (head, rest) = arena.split_at_mut_checked(out_reg.off)?;
        let (out, tail) = rest.split_at_mut_checked(out_reg.len)?;
        let around = Around {
            head,
            tail,
            out: out_reg,
        };
        let src = |k: usize| around.input(node, k);
        // The first input, which must lie elsewhere (non-in-place operators).
        let slice = |k: usize| -> Option<(&[f32], Dims)> {
            match src(k)? {
                (Src::Slice(s), d) => Some((s, d)),
                (Src::Same, _) => None,
            }
        };
        // Element-wise operators start from a copy of their first input unless in place.
        let prime = |out: &mut [f32]| -> Option<Dims> {
            let (s, d) = src(0)?;
            if let Src::Slice(s) = s {
                kernels::copy(out, s);
            }
            Some(d)
        };
        let w = |r: WRef| self.weights_of(r);
        match &node.op {
            OpRec::Dense {
                weights, bias, act, ..
            } => {
                let (x, _) = slice(0)?;
                kernels::conv::dense(x, w(*weights)?, w(*bias)?, *act, out);
            }
            OpRec::Conv2d(c) => {
                let (x, id) = slice(0)?;
                let g = ConvGeom {
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
                };
                kernels::conv::conv2d(&g, x, w(c.weights)?, w(c.bias)?, c.act, out);
            }
            OpRec::BatchNorm { scale, shift } => {
                let d = prime(out)?;
                kernels::eltwise::batch_norm(out, d.product(2, d.rank), w(*scale)?, w(*shift)?);
            }
            OpRec::Activation(a) => {
                prime(out)?;
                a.apply_slice(out);
            }
            OpRec::Softmax { axis } => {
                let d = prime(out)?;
                let axis = *axis as usize;
                kernels::eltwise::softmax(out, d.at(axis), d.product(axis + 1, d.rank));
            }
            OpRec::MaxPool(p) | OpRec::AveragePool(p) => {
                let (x, id) = slice(0)?;
                let g = PoolGeom {
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
                };
                let average = match node.op {
                    OpRec::AveragePool(_) => Some(p.count_include_pad),
                    _ => None,
                };
                kernels::pool::pool(&g, average, x, out);
            }
            OpRec::GlobalAveragePool => {
                // An average over one window covering the whole plane.
                let (x, id) = slice(0)?;
                let (h, w) = (id.at(2), id.at(3));
                let g = PoolGeom {
                    ih: h,
                    iw: w,
                    oh: 1,
                    ow: 1,
                    kh: h,
                    kw: w,
                    sy: 1,
                    sx: 1,
                    pt: 0,
                    pl: 0,
                };
                kernels::pool::pool(&g, Some(true), x, out);
            }
            OpRec::Add => match (src(0)?.0, src(1)?.0) {
                (Src::Same, Src::Slice(b)) | (Src::Slice(b), Src::Same) => {
                    kernels::eltwise::add(out, b)
                }
                (Src::Slice(a), Src::Slice(b)) => {
                    kernels::copy(out, a);
                    kernels::eltwise::add(out, b);
                }
                (Src::Same, Src::Same) => return None,
            },
            OpRec::Concat { axis } => {
                let axis = *axis as usize;
                let out_block = od.product(axis, od.rank);
                let mut offset = 0;
                for k in 0..node.inputs.len() {
                    let (x, id) = slice(k)?;
                    let block = id.product(axis, id.rank);
                    kernels::layout::concat_part(x, block, out_block, offset, out);
                    offset += block;
                }
            }
            OpRec::Reshape => {}
            OpRec::Transpose { perm } => {
                let (x, id) = slice(0)?;
                kernels::layout::transpose(&id, perm, x, out);
            }
            OpRec::Pad { pads, value } => {
                let (x, id) = slice(0)?;
                kernels::layout::pad(&id, &od, pads, *value, x, out);
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

fn check_pool(n: u32, p: &PoolRec, id: &Dims) -> Result<Dims, Error> {
    let bad = invalid(n, Reason::PoolParams);
    if id.rank != 4 {
        return Err(bad);
    }
    let [kh, kw] = p.kernel;
    let [pt, pl, pb, pr] = p.padding;
    if pt >= kh || pb >= kh || pl >= kw || pr >= kw {
        return Err(bad);
    }
    let oh = window_out(id.at(2), kh, 1, p.stride[0], pt, pb);
    let ow = window_out(id.at(3), kw, 1, p.stride[1], pl, pr);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(shape_dims(&[1, id.at(1), oh, ow])),
        _ => Err(bad),
    }
}
