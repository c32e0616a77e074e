//! Read and write the weights that touch one unit: its incoming weights (the producer's row
//! or filter, and bias) and its outgoing weights (every consumer's columns or input channels
//! that read the unit's elements).

use alloc::vec::Vec;

use super::structure::Structure;
use crate::ir::{Graph, Op};

/// Where a unit's elements enter a consumer: node `node` reads slice `slices[j]` of its input.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Consumer node.
    pub node: usize,
    /// Slices (dense columns or convolution input channels) carrying the unit, in order.
    pub slices: Vec<usize>,
    /// The path from producer to this consumer scales exactly (see `Labels::homogeneous`).
    pub homogeneous: bool,
}

/// Incoming weights and bias of unit `u`, as one vector.
pub fn incoming(g: &Graph, s: &Structure, u: usize) -> Vec<f32> {
    let unit = s.units[u];
    match &g.nodes[unit.node].op {
        Op::Dense(d) => {
            let mut v = d.weights[unit.channel * d.inputs..(unit.channel + 1) * d.inputs].to_vec();
            v.push(d.bias[unit.channel]);
            v
        }
        Op::Conv2d(c) => {
            let len = c.filter_len();
            let mut v = c.weights[unit.channel * len..(unit.channel + 1) * len].to_vec();
            v.push(c.bias[unit.channel]);
            v
        }
        _ => Vec::new(),
    }
}

/// For every unit, the consumers (dense layers, ungrouped convolutions) reading its elements;
/// one pass over the graph.
pub fn outgoing_by_unit(g: &Graph, s: &Structure) -> Vec<Vec<Outgoing>> {
    let mut out: Vec<Vec<Outgoing>> = alloc::vec![Vec::new(); s.units.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let consumes =
            matches!(&node.op, Op::Dense(_)) || matches!(&node.op, Op::Conv2d(c) if c.groups == 1);
        let v = node.inputs[0];
        let labels = &s.labels[v];
        if !consumes || labels.is_empty() {
            continue;
        }
        let shape = g.shape(v);
        let stride: usize = shape[labels.axis + 1..].iter().product();
        for (e, &l) in labels.unit.iter().enumerate() {
            if l == super::structure::NO_UNIT {
                continue;
            }
            let slice = (e / stride) % shape[labels.axis];
            let list = &mut out[l as usize];
            match list.last_mut() {
                Some(o) if o.node == i => {
                    if o.slices.last() != Some(&slice) {
                        o.slices.push(slice);
                    }
                }
                _ => list.push(Outgoing {
                    node: i,
                    slices: alloc::vec![slice],
                    homogeneous: labels.homogeneous,
                }),
            }
        }
    }
    out
}

/// Sum of squares of the consumer weights reading `slices` of node `node`'s input.
pub fn outgoing_energy(g: &Graph, o: &Outgoing) -> f64 {
    let mut sum = 0.0f64;
    visit_columns(g, o.node, &o.slices, |w| sum += (w as f64) * (w as f64));
    sum
}

/// Add `scale ×` the consumer weights of slices `from` into slices `to` (same length).
pub fn fold_outgoing(g: &mut Graph, node: usize, from: &[usize], to: &[usize], scale: f32) {
    match &mut g.nodes[node].op {
        Op::Dense(d) => {
            for row in d.weights.chunks_exact_mut(d.inputs) {
                for (&f, &t) in from.iter().zip(to) {
                    row[t] += scale * row[f];
                }
            }
        }
        Op::Conv2d(c) => {
            let area = c.kernel[0] * c.kernel[1];
            let filter = c.filter_len();
            for o in 0..c.out_channels {
                for (&f, &t) in from.iter().zip(to) {
                    for k in 0..area {
                        let w = c.weights[o * filter + f * area + k];
                        c.weights[o * filter + t * area + k] += scale * w;
                    }
                }
            }
        }
        _ => {}
    }
}

fn visit_columns(g: &Graph, node: usize, slices: &[usize], mut f: impl FnMut(f32)) {
    match &g.nodes[node].op {
        Op::Dense(d) => {
            for row in d.weights.chunks_exact(d.inputs) {
                for &s in slices {
                    f(row[s]);
                }
            }
        }
        Op::Conv2d(c) => {
            let area = c.kernel[0] * c.kernel[1];
            for o in 0..c.out_channels {
                for &s in slices {
                    let at = o * c.filter_len() + s * area;
                    c.weights[at..at + area].iter().for_each(|&w| f(w));
                }
            }
        }
        _ => {}
    }
}
