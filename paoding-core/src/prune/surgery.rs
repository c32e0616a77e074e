//! Surgery and reconstruction: remove items from a graph and rebuild a smaller, valid one.
//! Nodes keep their order and names, so node `i` of the result is node `i` of the original.

use alloc::vec::Vec;

use super::structure::Structure;
use crate::error::Result;
use crate::ir::{BatchNorm, Conv2d, Dense, Graph, Op};

/// Indices kept along each value's label axis after removing `removed` items
/// (`None` for a value whose shape does not change).
pub fn kept_slices(g: &Graph, s: &Structure, removed: &[bool]) -> Vec<Option<Vec<usize>>> {
    (0..g.values.len())
        .map(|v| {
            let items = s.slice_items(g, v);
            if items.is_empty() {
                return None;
            }
            Some(
                (0..items.len())
                    .filter(|&i| items[i].is_none_or(|item| !removed[item]))
                    .collect(),
            )
        })
        .collect()
}

/// Remove the items flagged in `removed` (frozen items must not be flagged) and rebuild.
pub fn remove(g: &Graph, s: &Structure, removed: &[bool]) -> Result<Graph> {
    rebuild(g, s, removed, true)
}

/// The graph [`remove`] builds, with every weight of its dense layers and convolutions zero
/// instead of copied: the same shapes, parameter counts, MACs, memory plan and blob size, for
/// a fraction of the cost. The zeros are allocated zeroed and never written, so on a host
/// they take no memory until read (a size search previews an 11 M-parameter model a dozen
/// times).
pub fn remove_shapes(g: &Graph, s: &Structure, removed: &[bool]) -> Result<Graph> {
    rebuild(g, s, removed, false)
}

fn rebuild(g: &Graph, s: &Structure, removed: &[bool], copy_weights: bool) -> Result<Graph> {
    let kept = kept_slices(g, s, removed);
    let all = |n: usize| (0..n).collect::<Vec<usize>>();
    let keep_of = |v: usize, n: usize| kept[v].clone().unwrap_or_else(|| all(n));
    let mut out = Graph::new(
        g.values[g.input].name.clone(),
        new_shape(g, s, &kept, g.input),
    );
    let mut new_id = alloc::vec![usize::MAX; g.values.len()];
    new_id[g.input] = out.input;
    for node in &g.nodes {
        let input = node.inputs[0];
        let op = match &node.op {
            Op::Dense(d) => {
                let rows = keep_of(node.output, d.units);
                let cols = keep_of(input, d.inputs);
                Op::Dense(Dense {
                    units: rows.len(),
                    inputs: cols.len(),
                    weights: if copy_weights {
                        rows.iter()
                            .flat_map(|&r| cols.iter().map(move |&c| d.weights[r * d.inputs + c]))
                            .collect()
                    } else {
                        alloc::vec![0.0; rows.len() * cols.len()]
                    },
                    bias: rows.iter().map(|&r| d.bias[r]).collect(),
                    activation: d.activation,
                })
            }
            Op::Conv2d(c) if c.groups == 1 => {
                let outs = keep_of(node.output, c.out_channels);
                let ins = keep_of(input, c.in_channels);
                let area = c.kernel[0] * c.kernel[1];
                let weights = if copy_weights {
                    let mut weights = Vec::with_capacity(outs.len() * ins.len() * area);
                    for &o in &outs {
                        for &i in &ins {
                            let at = (o * c.in_channels + i) * area;
                            weights.extend_from_slice(&c.weights[at..at + area]);
                        }
                    }
                    weights
                } else {
                    alloc::vec![0.0; outs.len() * ins.len() * area]
                };
                Op::Conv2d(Conv2d {
                    out_channels: outs.len(),
                    in_channels: ins.len(),
                    weights,
                    bias: outs.iter().map(|&o| c.bias[o]).collect(),
                    ..geometry(c)
                })
            }
            Op::Conv2d(c) if c.groups == c.in_channels && c.out_channels == c.in_channels => {
                let keep = keep_of(input, c.in_channels);
                let len = c.filter_len();
                Op::Conv2d(Conv2d {
                    out_channels: keep.len(),
                    in_channels: keep.len(),
                    groups: keep.len(),
                    weights: keep
                        .iter()
                        .flat_map(|&k| c.weights[k * len..(k + 1) * len].iter().copied())
                        .collect(),
                    bias: keep.iter().map(|&k| c.bias[k]).collect(),
                    ..geometry(c)
                })
            }
            Op::BatchNorm(b) => {
                let keep = keep_of(input, b.scale.len());
                let pick = |v: &Vec<f32>| keep.iter().map(|&k| v[k]).collect::<Vec<f32>>();
                Op::BatchNorm(BatchNorm {
                    scale: pick(&b.scale),
                    shift: pick(&b.shift),
                    stats: b.stats.as_ref().map(|(m, v)| (pick(m), pick(v))),
                })
            }
            Op::Reshape { .. } => Op::Reshape {
                shape: new_shape(g, s, &kept, node.output),
            },
            other => other.clone(),
        };
        let inputs: Vec<usize> = node.inputs.iter().map(|&v| new_id[v]).collect();
        let v = out.push(node.name.clone(), op, &inputs)?;
        out.values[v].name = g.values[node.output].name.clone();
        new_id[node.output] = v;
    }
    out.output = new_id[g.output];
    out.check()?;
    Ok(out)
}

/// `c` without its parameters: what a rebuilt convolution keeps (not a copy of weights it
/// replaces).
fn geometry(c: &Conv2d) -> Conv2d {
    Conv2d {
        weights: Vec::new(),
        bias: Vec::new(),
        ..*c
    }
}

fn new_shape(g: &Graph, s: &Structure, kept: &[Option<Vec<usize>>], v: usize) -> Vec<usize> {
    let mut shape = g.shape(v).to_vec();
    if let Some(k) = &kept[v] {
        shape[s.labels[v].axis] = k.len();
    }
    shape
}
