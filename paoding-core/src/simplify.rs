//! Graph clean-ups every importer wants: fold per-channel affine maps (batch norms, stray
//! biases and scales) into the convolution or dense layer that produces them, fuse activations
//! into their producer, collapse chains of reshapes, and drop what no longer matters.
//! Importers map operators one to one; this pass makes the graph what the pruner and the
//! runtime expect.

use alloc::vec::Vec;

use crate::error::Result;
use crate::ir::{Activation, BatchNorm, Graph, Op, ValueId};

/// Simplify a graph in place, then check it.
///
/// ```
/// use paoding_core::ir::{Activation, BatchNorm, Dense, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// let h = g.push("fc", Op::Dense(Dense {
///     units: 2, inputs: 2, weights: vec![1.0, 0.0, 0.0, 1.0], bias: vec![0.0; 2],
///     activation: Activation::Identity,
/// }), &[g.input])?;
/// let h = g.push("bn", Op::BatchNorm(BatchNorm::affine(vec![2.0, 3.0], vec![1.0, 0.0])), &[h])?;
/// g.output = g.push("relu", Op::Activation(Activation::Relu), &[h])?;
/// paoding_core::simplify::simplify(&mut g)?;
/// assert_eq!(g.nodes.len(), 1);
/// assert_eq!(paoding_core::interp::run(&g, &[1.0, -1.0])?, vec![3.0, 0.0]);
/// # Ok::<(), paoding_core::Error>(())
/// ```
pub fn simplify(graph: &mut Graph) -> Result<()> {
    simplify_tagged::<()>(graph, &mut Vec::new())
}

/// [`simplify`] carrying one optional tag per value (an imported int8 model's quantization
/// parameters): a rewrite that removes a node merges its output's tag into the value that
/// replaces it, and a rewrite that would merge two different tags is not made (the two values
/// stay apart, as the file has them). `tags` is resized to the graph's values first, and
/// renumbered with them.
///
/// ```
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// let h = g.push("fc", Op::Dense(Dense {
///     units: 2, inputs: 2, weights: vec![1.0, 0.0, 0.0, 1.0], bias: vec![0.0; 2],
///     activation: Activation::Identity,
/// }), &[g.input])?;
/// g.output = g.push("relu", Op::Activation(Activation::Relu), &[h])?;
/// // The ReLU's output is tagged; the dense layer's is not: the fused layer takes the tag.
/// let mut tags = vec![None, None, Some(7)];
/// paoding_core::simplify::simplify_tagged(&mut g, &mut tags)?;
/// assert_eq!((g.nodes.len(), tags), (1, vec![None, Some(7)]));
/// # Ok::<(), paoding_core::Error>(())
/// ```
pub fn simplify_tagged<T: Clone + PartialEq>(
    graph: &mut Graph,
    tags: &mut Vec<Option<T>>,
) -> Result<()> {
    tags.resize(graph.values.len(), None);
    while fold_once(graph, tags) {}
    remove_dead(graph, tags);
    graph.check()
}

/// Whether removing node `i` (its output replaced by its first input) keeps the tags apart.
fn mergeable<T: PartialEq>(g: &Graph, tags: &[Option<T>], i: usize) -> bool {
    let (from, to) = (g.nodes[i].output, g.nodes[i].inputs[0]);
    match (&tags[from], &tags[to]) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Apply the first rewrite that matches; false when none does.
fn fold_once<T: Clone + PartialEq>(g: &mut Graph, tags: &mut [Option<T>]) -> bool {
    for i in 0..g.nodes.len() {
        let input = g.nodes[i].inputs[0];
        let producer = g.producer(input);
        let sole_use = producer.is_some() && input != g.output && g.consumers(input).len() == 1;
        // A rewrite that removes node i merges its output into its input.
        let merge = mergeable(g, tags, i);
        match g.nodes[i].op.clone() {
            Op::Activation(_) | Op::BatchNorm(_)
                if sole_use && commutes_with_reshape(g, tags, i, producer) =>
            {
                return run_before_reshape(g, i, producer.unwrap_or_default());
            }
            Op::BatchNorm(bn) if merge && bn.is_identity() => return bypass(g, tags, i),
            Op::BatchNorm(bn) if merge && sole_use && bn.stats.is_none() => {
                let p = producer.unwrap_or_default();
                if fold_affine(&mut g.nodes[p].op, &bn) {
                    return bypass(g, tags, i);
                }
            }
            Op::Activation(Activation::Identity) if merge => return bypass(g, tags, i),
            Op::Activation(act) if merge && sole_use => {
                let p = producer.unwrap_or_default();
                if fuse_activation(&mut g.nodes[p].op, act) {
                    return bypass(g, tags, i);
                }
            }
            Op::Reshape { ref shape } if merge && g.shape(input) == shape.as_slice() => {
                return bypass(g, tags, i)
            }
            Op::Reshape { .. } if sole_use && tags[input].is_none() => {
                let p = producer.unwrap_or_default();
                if let Op::Reshape { .. } = g.nodes[p].op {
                    // Reshape of a reshape: read the first one's input directly.
                    g.nodes[i].inputs[0] = g.nodes[p].inputs[0];
                    return true;
                }
            }
            Op::Transpose { ref perm } if keeps_order(perm, g.shape(input)) => {
                let shape = g.values[g.nodes[i].output].shape.clone();
                g.nodes[i].op = Op::Reshape { shape };
                return true;
            }
            _ => {}
        }
    }
    false
}

/// Fold `y = x * scale + shift` (per output channel) into a producer with no activation yet.
fn fold_affine(op: &mut Op, bn: &BatchNorm) -> bool {
    let (weights, bias, activation) = match op {
        Op::Dense(d) => (&mut d.weights, &mut d.bias, d.activation),
        Op::Conv2d(c) => (&mut c.weights, &mut c.bias, c.activation),
        Op::BatchNorm(prev) if prev.stats.is_none() => {
            for c in 0..prev.scale.len() {
                prev.shift[c] = prev.shift[c] * bn.scale[c] + bn.shift[c];
                prev.scale[c] *= bn.scale[c];
            }
            return true;
        }
        _ => return false,
    };
    if activation != Activation::Identity || bias.len() != bn.scale.len() {
        return false;
    }
    let per_channel = weights.len() / bias.len();
    for (c, row) in weights.chunks_exact_mut(per_channel).enumerate() {
        row.iter_mut().for_each(|w| *w *= bn.scale[c]);
        bias[c] = bias[c] * bn.scale[c] + bn.shift[c];
    }
    true
}

/// Fuse an activation into a producer that has none, or compose two clips.
fn fuse_activation(op: &mut Op, act: Activation) -> bool {
    let slot = match op {
        Op::Dense(d) => &mut d.activation,
        Op::Conv2d(c) => &mut c.activation,
        Op::Activation(a) => a,
        _ => return false,
    };
    let merged = match (*slot, act) {
        (Activation::Identity, a) => a,
        (a, b) => match (clip_bounds(a), clip_bounds(b)) {
            (Some((l1, h1)), Some((l2, h2))) => canonical_clip(l1.max(l2), h1.min(h2)),
            _ => return false,
        },
    };
    *slot = canonical(merged);
    true
}

fn clip_bounds(a: Activation) -> Option<(f32, f32)> {
    match a {
        Activation::Relu => Some((0.0, f32::INFINITY)),
        Activation::Clip { min, max } => Some((min, max)),
        _ => None,
    }
}

fn canonical_clip(min: f32, max: f32) -> Activation {
    canonical(Activation::Clip { min, max })
}

/// ReLU written as a clip becomes ReLU; an unbounded clip disappears.
fn canonical(a: Activation) -> Activation {
    match a {
        Activation::Clip { min, max } if min == 0.0 && max == f32::INFINITY => Activation::Relu,
        Activation::Clip { min, max } if min == f32::NEG_INFINITY && max == f32::INFINITY => {
            Activation::Identity
        }
        other => other,
    }
}

/// A transpose that only moves axes of size 1 leaves the elements in order: a reshape.
fn keeps_order(perm: &[usize], shape: &[usize]) -> bool {
    let moved: Vec<usize> = perm.iter().copied().filter(|&a| shape[a] != 1).collect();
    moved.windows(2).all(|w| w[0] < w[1])
}

/// Whether node `i`, an element-wise activation or a batch norm, reads an untagged reshape
/// whose input it could read instead: any reshape for an activation, one that keeps axes 0
/// and 1 for a batch norm (its channels). A 1-D convolution's lowering puts such reshapes
/// between the convolution and its activation or batch norm.
fn commutes_with_reshape<T>(
    g: &Graph,
    tags: &[Option<T>],
    i: usize,
    producer: Option<usize>,
) -> bool {
    let node = &g.nodes[i];
    let Some(p) = producer.filter(|&p| matches!(g.nodes[p].op, Op::Reshape { .. })) else {
        return false;
    };
    let (before, after) = (g.shape(g.nodes[p].inputs[0]), g.shape(node.inputs[0]));
    let channels_kept = before.get(..2) == after.get(..2);
    tags[node.inputs[0]].is_none()
        && tags[node.output].is_none()
        && (matches!(node.op, Op::Activation(_)) || channels_kept)
}

/// Swap node `i` with the reshape `p` it reads: `p` now applies `i`'s operator to the
/// reshape's input and `i` reshapes the result, so the operator meets the reshape's
/// producer (to fuse or fold into it). Names follow their operators.
fn run_before_reshape(g: &mut Graph, i: usize, p: usize) -> bool {
    let (u, v) = (g.nodes[p].inputs[0], g.nodes[p].output);
    let out_shape = g.shape(g.nodes[i].output).to_vec();
    g.values[v].shape = g.shape(u).to_vec();
    let op = core::mem::replace(&mut g.nodes[i].op, Op::Reshape { shape: out_shape });
    g.nodes[p].op = op;
    let name = core::mem::take(&mut g.nodes[i].name);
    g.nodes[i].name = core::mem::replace(&mut g.nodes[p].name, name);
    true
}

/// Remove node `i`, whose output equals its first input, rewiring its readers.
fn bypass<T: Clone>(g: &mut Graph, tags: &mut [Option<T>], i: usize) -> bool {
    let node = g.nodes.remove(i);
    let (from, to) = (node.output, node.inputs[0]);
    if tags[to].is_none() {
        tags[to] = tags[from].take();
    }
    for n in &mut g.nodes {
        n.inputs
            .iter_mut()
            .filter(|v| **v == from)
            .for_each(|v| *v = to);
    }
    if g.output == from {
        g.output = to;
        // Keep the model's output name stable for reports.
        g.values[to].name = g.values[from].name.clone();
    }
    true
}

/// Drop nodes whose output nobody reads, then renumber values densely.
fn remove_dead<T: Clone>(g: &mut Graph, tags: &mut Vec<Option<T>>) {
    loop {
        let dead = (0..g.nodes.len())
            .find(|&i| g.nodes[i].output != g.output && g.consumers(g.nodes[i].output).is_empty());
        match dead {
            Some(i) => {
                g.nodes.remove(i);
            }
            None => break,
        }
    }
    let mut used = alloc::vec![false; g.values.len()];
    used[g.input] = true;
    for n in &g.nodes {
        used[n.output] = true;
    }
    let mut renumber: Vec<Option<ValueId>> = alloc::vec![None; g.values.len()];
    let mut values = Vec::new();
    let mut kept_tags = Vec::new();
    for (v, value) in g.values.drain(..).enumerate() {
        if used[v] {
            renumber[v] = Some(values.len());
            values.push(value);
            kept_tags.push(tags[v].clone());
        }
    }
    g.values = values;
    *tags = kept_tags;
    let map = |v: ValueId| renumber[v].unwrap_or(v);
    for n in &mut g.nodes {
        n.output = map(n.output);
        n.inputs.iter_mut().for_each(|v| *v = map(*v));
    }
    g.input = map(g.input);
    g.output = map(g.output);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Conv2d, Pool};
    use alloc::vec;

    /// A 3x3 convolution (over a one-row image, only its middle row meets inputs).
    fn conv(cin: usize, cout: usize) -> Op {
        let weights = (0..cout * cin * 9)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        Conv2d::same_3x3(cin, cout, 1, weights)
    }

    /// A 1-D convolution as the importer lowers it, `[1, 2, 6]` viewed as `[1, 2, 1, 6]`:
    /// the reshapes between the convolution, its batch norm, its ReLU and the next pool give
    /// way, so the batch norm folds and the ReLU fuses, computing the same function.
    #[test]
    fn activations_and_batch_norms_move_before_reshapes_to_reach_their_convolution() {
        let mut g = Graph::new("x", vec![1, 2, 6]);
        let x = g.push(
            "as_2d",
            Op::Reshape {
                shape: vec![1, 2, 1, 6],
            },
            &[g.input],
        );
        let c = g.push("conv", conv(2, 3), &[x.unwrap()]);
        let c = g.push(
            "as_1d",
            Op::Reshape {
                shape: vec![1, 3, 6],
            },
            &[c.unwrap()],
        );
        let bn = BatchNorm::affine(vec![2.0, -1.0, 0.5], vec![0.1, 0.2, -0.3]);
        let n = g.push("bn", Op::BatchNorm(bn), &[c.unwrap()]);
        let r = g.push("relu", Op::Activation(Activation::Relu), &[n.unwrap()]);
        let p = g.push(
            "pool.as_2d",
            Op::Reshape {
                shape: vec![1, 3, 1, 6],
            },
            &[r.unwrap()],
        );
        let pool = Pool {
            kernel: [1, 2],
            stride: [1, 2],
            padding: [0; 4],
            count_include_pad: false,
        };
        let p = g.push("pool", Op::MaxPool(pool), &[p.unwrap()]);
        g.output = g
            .push("flat", Op::Reshape { shape: vec![1, 9] }, &[p.unwrap()])
            .unwrap();
        let x: Vec<f32> = (0..12).map(|i| (i as f32 * 0.71).cos()).collect();
        let before = crate::interp::run(&g, &x).unwrap();
        simplify(&mut g).unwrap();
        let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
        assert!(
            matches!(
                ops[..],
                [
                    Op::Reshape { .. },
                    Op::Conv2d(Conv2d {
                        activation: Activation::Relu,
                        ..
                    }),
                    Op::MaxPool(_),
                    Op::Reshape { .. }
                ]
            ),
            "{ops:?}"
        );
        assert_eq!(g.nodes[1].name, "conv");
        let after = crate::interp::run(&g, &x).unwrap();
        for (a, b) in before.iter().zip(&after) {
            assert!((a - b).abs() <= 1e-6, "{before:?} vs {after:?}");
        }
    }

    /// A batch norm after a reshape that merges its channels into other axes stays where it
    /// is (its scales are per channel of its own input).
    #[test]
    fn a_batch_norm_stays_after_a_reshape_that_moves_its_channels() {
        let mut g = Graph::new("x", vec![1, 2, 1, 3]);
        let c = g.push("conv", conv(2, 2), &[g.input]).unwrap();
        let f = g
            .push("flat", Op::Reshape { shape: vec![1, 6] }, &[c])
            .unwrap();
        let bn = BatchNorm::affine((0..6).map(|i| i as f32).collect(), vec![0.0; 6]);
        g.output = g.push("bn", Op::BatchNorm(bn), &[f]).unwrap();
        simplify(&mut g).unwrap();
        assert!(
            matches!(
                g.nodes.iter().map(|n| &n.op).collect::<Vec<_>>()[..],
                [Op::Conv2d(_), Op::Reshape { .. }, Op::BatchNorm(_)]
            ),
            "{:?}",
            g.nodes
        );
    }
}
