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
                    weights: rows
                        .iter()
                        .flat_map(|&r| cols.iter().map(move |&c| d.weights[r * d.inputs + c]))
                        .collect(),
                    bias: rows.iter().map(|&r| d.bias[r]).collect(),
                    activation: d.activation,
                })
            }
            Op::Conv2d(c) if c.groups == 1 => {
                let outs = keep_of(node.output, c.out_channels);
                let ins = keep_of(input, c.in_channels);
                let area = c.kernel[0] * c.kernel[1];
                let mut weights = Vec::with_capacity(outs.len() * ins.len() * area);
                for &o in &outs {
                    for &i in &ins {
                        let at = (o * c.in_channels + i) * area;
                        weights.extend_from_slice(&c.weights[at..at + area]);
                    }
                }
                Op::Conv2d(Conv2d {
                    out_channels: outs.len(),
                    in_channels: ins.len(),
                    weights,
                    bias: outs.iter().map(|&o| c.bias[o]).collect(),
                    ..c.clone()
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
                    ..c.clone()
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

fn new_shape(g: &Graph, s: &Structure, kept: &[Option<Vec<usize>>], v: usize) -> Vec<usize> {
    let mut shape = g.shape(v).to_vec();
    if let Some(k) = &kept[v] {
        shape[s.labels[v].axis] = k.len();
    }
    shape
}
