//! Static memory plan for activations: every value gets a fixed offset in one arena, reused
//! once the value is dead. The runtime executes exactly this plan, so the arena size reported
//! here is the RAM the model needs for activations (graph input and output included).
//!
//! Sizes are bytes of each value's dtype: in the plan of an int8 model
//! ([`MemoryPlan::quantized`]) an int8 value takes a quarter of an f32 one. Every buffer starts
//! at a multiple of [`ALIGN`] bytes, as the runtime requires of f32 values.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::ir::{Graph, Op};

/// Byte alignment of every buffer in the arena.
pub const ALIGN: usize = 4;

/// A region of the arena shared by one or more values (a reshape is a view of its input;
/// an element-wise op may write over an input that dies at that node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// Offset in the arena, in bytes.
    pub offset: usize,
    /// Size in bytes, rounded up to [`ALIGN`].
    pub bytes: usize,
    /// First execution step at which it holds a live value (0 = the graph input, node `i` is step `i + 1`).
    pub first_step: usize,
    /// Last step at which a live value is read (the output lives to the end).
    pub last_step: usize,
}

/// The arena layout of a graph.
///
/// ```
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
/// use paoding_core::plan::MemoryPlan;
///
/// let mut g = Graph::new("x", vec![1, 4]);
/// let dense = |units, inputs| Op::Dense(Dense {
///     units, inputs, weights: vec![0.0; units * inputs], bias: vec![0.0; units],
///     activation: Activation::Relu,
/// });
/// let h = g.push("fc1", dense(8, 4), &[g.input])?;
/// g.output = g.push("fc2", dense(2, 8), &[h])?;
/// let plan = MemoryPlan::new(&g);
/// // x (16 B) and h (32 B) live together, then h and the output (8 B).
/// assert_eq!(plan.arena_bytes, 48);
/// assert_eq!(plan.lower_bound_bytes, 48);
/// # Ok::<(), paoding_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// The distinct regions.
    pub buffers: Vec<Buffer>,
    /// For each value id, the buffer holding it (`None` for a value no node computes).
    pub value_buffer: Vec<Option<usize>>,
    /// Arena size in bytes: the end of the highest buffer.
    pub arena_bytes: usize,
    /// The most bytes that must be live at one step with this aliasing: no plan can do better.
    pub lower_bound_bytes: usize,
}

impl MemoryPlan {
    /// Byte offset of value `v` in the arena.
    pub fn offset(&self, v: usize) -> Option<usize> {
        self.value_buffer
            .get(v)
            .copied()
            .flatten()
            .map(|b| self.buffers[b].offset)
    }

    /// Plan a checked f32 graph.
    pub fn new(graph: &Graph) -> Self {
        let bytes: Vec<usize> = graph
            .values
            .iter()
            .map(|v| byte_size(v.len() * 4))
            .collect();
        let steps: Vec<Step<'_>> = graph
            .nodes
            .iter()
            .map(|node| Step {
                inputs: &node.inputs,
                output: node.output,
                sharing: match node.op {
                    Op::Reshape { .. } => Sharing::View,
                    Op::Activation(_) | Op::BatchNorm(_) | Op::Softmax { .. } | Op::Add => {
                        Sharing::InPlace
                    }
                    _ => Sharing::Own,
                },
            })
            .collect();
        plan(&bytes, graph.input, graph.output, &steps)
    }

    /// Plan the int8 form of a checked graph as the blob writer lowers it, conversions
    /// included: the plan [`crate::blob::write_quantized_blob`] takes, with the same `io`
    /// (the blob's input and output dtype). Its values are the lowered model's
    /// ([`crate::blob::QuantizedBlob`]), not the graph's.
    ///
    /// ```
    /// use paoding_core::ir::{Activation, Dense, Graph, Op};
    /// use paoding_core::{plan::MemoryPlan, probes::Probes, quant};
    /// use paoding_runtime::format::Dtype;
    ///
    /// let mut g = Graph::new("x", vec![1, 16]);
    /// let dense = |units, inputs| Op::Dense(Dense {
    ///     units, inputs, weights: vec![0.1; units * inputs], bias: vec![0.0; units],
    ///     activation: Activation::Relu,
    /// });
    /// let h = g.push("fc1", dense(32, 16), &[g.input])?;
    /// g.output = g.push("fc2", dense(4, 32), &[h])?;
    /// let q = quant::quantize(&g, &Probes::uniform(16, 8, -1.0, 1.0, 1), &Default::default())?;
    /// // f32 (x and h together at the peak) ...
    /// assert_eq!(MemoryPlan::new(&g).arena_bytes, 4 * (16 + 32));
    /// // ... and int8 with int8 input and output: a quarter.
    /// assert_eq!(MemoryPlan::quantized(&g, &q, Dtype::I8)?.arena_bytes, 16 + 32);
    /// # Ok::<(), paoding_core::Error>(())
    /// ```
    pub fn quantized(
        graph: &Graph,
        q: &crate::quant::Quantized,
        io: paoding_runtime::format::Dtype,
    ) -> crate::Result<Self> {
        Ok(crate::blob::QuantizedBlob::new(graph, q, io)?.plan())
    }
}

/// How a step's output may share the arena with its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    /// Always its (only) input's region: a reshape.
    View,
    /// Over an input that dies at this step, if there is one: element-wise operators.
    InPlace,
    /// A region of its own.
    Own,
}

/// One step of a schedule: the values it reads and the one it writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step<'a> {
    pub inputs: &'a [usize],
    pub output: usize,
    pub sharing: Sharing,
}

/// Plan a schedule over values of `bytes[v]` bytes (multiples of [`ALIGN`]): `input` is
/// written before the first step, `output` read after the last.
pub(crate) fn plan(bytes: &[usize], input: usize, output: usize, steps: &[Step<'_>]) -> MemoryPlan {
    let n_steps = steps.len() + 1;
    let mut last_read = alloc::vec![0usize; bytes.len()];
    for (i, step) in steps.iter().enumerate() {
        for &v in step.inputs {
            last_read[v] = last_read[v].max(i + 1);
        }
    }
    last_read[output] = n_steps;

    let mut buffers: Vec<Buffer> = Vec::new();
    let mut value_buffer = alloc::vec![None; bytes.len()];
    let new_buffer = |buffers: &mut Vec<Buffer>, v: usize, step: usize| {
        buffers.push(Buffer {
            offset: 0,
            bytes: bytes[v],
            first_step: step,
            last_step: last_read[v].max(step),
        });
        buffers.len() - 1
    };
    value_buffer[input] = Some(new_buffer(&mut buffers, input, 0));
    for (i, step) in steps.iter().enumerate() {
        let at = i + 1;
        let out = step.output;
        let shared = match step.sharing {
            Sharing::View => step.inputs.first().and_then(|&v| value_buffer[v]),
            Sharing::InPlace => step
                .inputs
                .iter()
                .filter_map(|&v| value_buffer[v])
                // Only over an input of the output's size that no later step reads (nor
                // this one twice).
                .find(|&b| {
                    buffers[b].last_step == at
                        && buffers[b].bytes == bytes[out]
                        && step
                            .inputs
                            .iter()
                            .filter(|&&v| value_buffer[v] == Some(b))
                            .count()
                            == 1
                }),
            Sharing::Own => None,
        };
        value_buffer[out] = Some(match shared {
            Some(b) => {
                buffers[b].last_step = buffers[b].last_step.max(last_read[out]).max(at);
                b
            }
            None => new_buffer(&mut buffers, out, at),
        });
    }

    let lower_bound_bytes = (0..=n_steps)
        .map(|s| {
            buffers
                .iter()
                .filter(|b| b.first_step <= s && s <= b.last_step)
                .map(|b| b.bytes)
                .sum()
        })
        .max()
        .unwrap_or(0);
    let arena_bytes = place(&mut buffers);
    MemoryPlan {
        buffers,
        value_buffer,
        arena_bytes,
        lower_bound_bytes,
    }
}

/// Bytes rounded up to [`ALIGN`].
pub(crate) fn byte_size(bytes: usize) -> usize {
    bytes.div_ceil(ALIGN) * ALIGN
}

/// Greedy-by-size placement: largest buffers first, each at the lowest offset that does not
/// overlap a placed buffer alive at the same time. Returns the arena size.
fn place(buffers: &mut [Buffer]) -> usize {
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| {
        buffers[b]
            .bytes
            .cmp(&buffers[a].bytes)
            .then(buffers[a].first_step.cmp(&buffers[b].first_step))
    });
    let mut placed: Vec<usize> = Vec::with_capacity(buffers.len());
    let mut arena = 0;
    for &i in &order {
        let b = &buffers[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .map(|&j| &buffers[j])
            .filter(|o| o.first_step <= b.last_step && b.first_step <= o.last_step)
            .map(|o| (o.offset, o.offset + o.bytes))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (start, end) in busy {
            if start >= offset + b.bytes {
                break;
            }
            offset = offset.max(end);
        }
        buffers[i].offset = offset;
        arena = arena.max(offset + buffers[i].bytes);
        placed.push(i);
    }
    arena
}
