//! The writer of the runtime's compact model format (the reader is `paoding-runtime`, whose
//! [`paoding_runtime::format`] module defines the layout and the record types).
//!
//! A blob is the fixed header, the postcard-encoded graph description (every node with its
//! operands' arena offsets and shapes, taken from the [`MemoryPlan`]) and the f32 weights,
//! 16-byte aligned from the blob start.
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

use alloc::format;
use alloc::vec::Vec;

use paoding_runtime::format::{
    blob_crc, pack_filters, Act, ConvRec, DescHead, Header, NodeRec, OpRec, Operand, PoolRec,
    Shape, WRef, HEADER_LEN, MAX_INPUTS, MAX_RANK, VERSION, WEIGHTS_ALIGN,
};

use crate::error::{Error, Result};
use crate::ir::{Activation, Graph, Op, Pool, ValueId};
use crate::plan::MemoryPlan;

/// A run of the weights section, as the graph holds it.
enum Run<'g> {
    /// Stored as it is.
    Plain(&'g [f32]),
    /// Filters, stored in the order [`pack_filters`] defines.
    Filters {
        w: &'g [f32],
        groups: usize,
        per_group: usize,
        inputs: usize,
        taps: usize,
    },
}

/// The encoded description and the weight runs, before assembly.
struct Parts<'g> {
    desc: Vec<u8>,
    weights: Vec<Run<'g>>,
    weight_count: usize,
    header: Header,
}

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

fn encode<'g>(graph: &'g Graph, plan: &MemoryPlan) -> Result<Parts<'g>> {
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
        if offset % 4 != 0 {
            return Err(fail("arena offsets must be multiples of 4 bytes"));
        }
        Ok(Operand {
            id: ids[v].ok_or_else(|| fail(format!("value #{v} is never computed")))?,
            offset: u32_of(offset / 4, "arena offset")?,
            shape: shape_of(&graph.values[v].shape)?,
        })
    };

    let mut weights: Vec<Run<'g>> = Vec::new();
    let mut weight_count = 0usize;
    let mut push = |run: Run<'g>| -> Result<WRef> {
        let len = match run {
            Run::Plain(w) | Run::Filters { w, .. } => w.len(),
        };
        let r = WRef {
            offset: u32_of(weight_count, "weight offset")?,
            len: u32_of(len, "weight count")?,
        };
        weight_count += len;
        weights.push(run);
        Ok(r)
    };

    let mut desc = postcard::to_allocvec(&DescHead {
        n_nodes: u32_of(graph.nodes.len(), "node count")?,
        input: operand(graph.input)?,
        output: operand(graph.output)?,
    })
    .map_err(|e| fail(format!("{e}")))?;

    for node in &graph.nodes {
        let op = match &node.op {
            Op::Dense(d) => OpRec::Dense {
                units: u32_of(d.units, "units")?,
                inputs: u32_of(d.inputs, "inputs")?,
                weights: push(Run::Filters {
                    w: &d.weights,
                    groups: 1,
                    per_group: d.units,
                    inputs: d.inputs,
                    taps: 1,
                })?,
                bias: push(Run::Plain(&d.bias))?,
                act: act_of(d.activation),
            },
            Op::Conv2d(c) => OpRec::Conv2d(ConvRec {
                out_channels: u32_of(c.out_channels, "channels")?,
                in_channels: u32_of(c.in_channels, "channels")?,
                kernel: pair(c.kernel)?,
                stride: pair(c.stride)?,
                dilation: pair(c.dilation)?,
                padding: quad(c.padding)?,
                groups: u32_of(c.groups, "groups")?,
                weights: push(Run::Filters {
                    w: &c.weights,
                    groups: c.groups,
                    per_group: c.out_channels / c.groups.max(1),
                    inputs: c.in_channels / c.groups.max(1),
                    taps: c.kernel[0] * c.kernel[1],
                })?,
                bias: push(Run::Plain(&c.bias))?,
                act: act_of(c.activation),
            }),
            Op::BatchNorm(b) => OpRec::BatchNorm {
                scale: push(Run::Plain(&b.scale))?,
                shift: push(Run::Plain(&b.shift))?,
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
            Op::Transpose { perm } => {
                let mut p = heapless::Vec::new();
                for &a in perm {
                    p.push(axis_of(a)?).map_err(|_| fail("transpose rank"))?;
                }
                OpRec::Transpose { perm: p }
            }
            Op::Pad { pads, value } => {
                let mut p = heapless::Vec::new();
                for &(a, b) in pads {
                    p.push([u32_of(a, "padding")?, u32_of(b, "padding")?])
                        .map_err(|_| fail("pad rank"))?;
                }
                OpRec::Pad {
                    pads: p,
                    value: *value,
                }
            }
        };
        let mut inputs = heapless::Vec::new();
        for &v in &node.inputs {
            inputs.push(operand(v)?).map_err(|_| {
                fail(format!(
                    "node '{}' reads more than {MAX_INPUTS} values",
                    node.name
                ))
            })?;
        }
        let rec = NodeRec {
            op,
            inputs,
            output: operand(node.output)?,
        };
        desc = postcard::to_extend(&rec, desc).map_err(|e| fail(format!("{e}")))?;
    }

    let in_shape = shape_of(graph.shape(graph.input))?;
    let out_shape = shape_of(graph.shape(graph.output))?;
    let fixed = |s: &Shape| {
        let mut a = [0u32; MAX_RANK];
        for (o, &d) in a.iter_mut().zip(s.iter()) {
            *o = d;
        }
        a
    };
    let weights_offset = (HEADER_LEN + desc.len()).div_ceil(WEIGHTS_ALIGN) * WEIGHTS_ALIGN;
    let weight_bytes = weight_count
        .checked_mul(4)
        .ok_or_else(|| fail("too many weights"))?;
    let total = weights_offset + weight_bytes;
    let header = Header {
        version: VERSION,
        flags: 0,
        payload_len: u32_of(total - HEADER_LEN, "blob size")?,
        desc_len: u32_of(desc.len(), "description size")?,
        weights_offset: u32_of(weights_offset, "weights offset")?,
        weights_len: u32_of(weight_bytes, "weights size")?,
        arena_bytes: u32_of(plan.arena_bytes, "arena size")?,
        input_len: u32_of(graph.values[graph.input].len(), "input size")?,
        output_len: u32_of(graph.values[graph.output].len(), "output size")?,
        input_rank: in_shape.len() as u8,
        output_rank: out_shape.len() as u8,
        input_shape: fixed(&in_shape),
        output_shape: fixed(&out_shape),
        crc: 0,
    };
    Ok(Parts {
        desc,
        weights,
        weight_count,
        header,
    })
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

/// Encode a checked graph and its memory plan as a runtime blob.
///
/// Filters are stored in the kernels' order ([`pack_filters`]), every other weight as it is;
/// magnitudes below 2^-100 are written as zero.
///
/// Fails (with [`Error::Graph`]) if the graph does not pass [`Graph::check`], if the plan is
/// not for this graph, or if the model exceeds the format's limits (rank above
/// [`MAX_RANK`], a node reading more than [`MAX_INPUTS`] values, sizes beyond 32 bits).
pub fn write_blob(graph: &Graph, plan: &MemoryPlan) -> Result<Vec<u8>> {
    let parts = encode(graph, plan)?;
    let total = parts.header.weights_offset as usize + parts.weight_count * 4;
    let mut blob = Vec::with_capacity(total);
    blob.resize(HEADER_LEN, 0);
    blob.extend_from_slice(&parts.desc);
    blob.resize(parts.header.weights_offset as usize, 0);
    let mut packed = Vec::new();
    for run in &parts.weights {
        let values: &[f32] = match *run {
            Run::Plain(w) => w,
            Run::Filters {
                w,
                groups,
                per_group,
                inputs,
                taps,
            } => {
                packed.clear();
                packed.resize(w.len(), 0.0);
                if !pack_filters(w, groups, per_group, inputs, taps, &mut packed) {
                    return Err(fail("filter count does not match the layer's shape"));
                }
                &packed
            }
        };
        for &w in values {
            blob.extend_from_slice(&flush_subnormal(w).to_le_bytes());
        }
    }
    let mut header = parts.header;
    let mut fixed = [0u8; HEADER_LEN];
    header.write(&mut fixed);
    blob[..HEADER_LEN].copy_from_slice(&fixed);
    header.crc = blob_crc(&blob);
    header.write(&mut fixed);
    blob[..HEADER_LEN].copy_from_slice(&fixed);
    Ok(blob)
}

/// Size in bytes of the blob [`write_blob`] would produce (without copying the weights).
pub fn blob_size(graph: &Graph, plan: &MemoryPlan) -> Result<usize> {
    let parts = encode(graph, plan)?;
    Ok(parts.header.weights_offset as usize + parts.weight_count * 4)
}

/// A 64-bit digest of what [`write_blob`] would write: its header (checksum aside), its
/// description and its weights (as stored, in the graph's order), by FNV-1a over 32-bit
/// words. Two graphs with the same digest compute the same function on the runtime; a cache
/// of anything derived from a model can be keyed by it. Neither the blob nor its CRC is
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
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let parts = encode(graph, plan)?;
    let mut header = [0u8; HEADER_LEN];
    parts.header.write(&mut header);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut word = |w: u32| {
        h ^= u64::from(w);
        h = h.wrapping_mul(PRIME);
    };
    for chunk in header.chunks(4).chain(parts.desc.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        word(u32::from_le_bytes(b));
    }
    word(parts.desc.len() as u32);
    for run in &parts.weights {
        let w = match *run {
            Run::Plain(w) => w,
            Run::Filters { w, .. } => w,
        };
        w.iter().for_each(|&x| word(flush_subnormal(x).to_bits()));
    }
    Ok(h)
}
