//! Static memory plan for activations: every value gets a fixed offset in one arena, reused
//! once the value is dead. The runtime executes exactly this plan, so the arena size reported
//! here is the RAM the model needs for activations (graph input and output included).

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

    /// Plan a checked graph.
    pub fn new(graph: &Graph) -> Self {
        let steps = graph.nodes.len() + 1;
        let mut last_read = alloc::vec![0usize; graph.values.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            for &v in &node.inputs {
                last_read[v] = last_read[v].max(i + 1);
            }
        }
        last_read[graph.output] = steps;

        let mut buffers: Vec<Buffer> = Vec::new();
        let mut value_buffer = alloc::vec![None; graph.values.len()];
        let new_buffer = |buffers: &mut Vec<Buffer>, v: usize, step: usize| {
            buffers.push(Buffer {
                offset: 0,
                bytes: byte_size(graph.values[v].len()),
                first_step: step,
                last_step: last_read[v].max(step),
            });
            buffers.len() - 1
        };
        value_buffer[graph.input] = Some(new_buffer(&mut buffers, graph.input, 0));
        for (i, node) in graph.nodes.iter().enumerate() {
            let step = i + 1;
            let out = node.output;
            let shared = match node.op {
                Op::Reshape { .. } => value_buffer[node.inputs[0]],
                Op::Activation(_) | Op::BatchNorm(_) | Op::Softmax { .. } | Op::Add => node
                    .inputs
                    .iter()
                    .filter_map(|&v| value_buffer[v])
                    // Only over an input no later node reads (nor reads twice here).
                    .find(|&b| {
                        buffers[b].last_step == step
                            && node
                                .inputs
                                .iter()
                                .filter(|&&v| value_buffer[v] == Some(b))
                                .count()
                                == 1
                    }),
                _ => None,
            };
            value_buffer[out] = Some(match shared {
                Some(b) => {
                    buffers[b].last_step = buffers[b].last_step.max(last_read[out]).max(step);
                    b
                }
                None => new_buffer(&mut buffers, out, step),
            });
        }

        let lower_bound_bytes = (0..=steps)
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
}

fn byte_size(elements: usize) -> usize {
    (elements * 4).div_ceil(ALIGN) * ALIGN
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
