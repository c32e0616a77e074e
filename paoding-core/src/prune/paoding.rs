//! PAODING's own criteria, with the published implementation's defects fixed.
//!
//! Dense layers: candidate pairs (kept `i`, removed `j`) are ranked by the saliency
//! `(|(b_i − b_j)/(b_i + b_j)| + ‖w_i − w_j‖₂) · ‖Wout_j‖₂` — the removed neuron's outgoing
//! weights, not the kept one's; the best few pairs are then compared by a sound bound of their
//! impact, from intervals propagated from the input range through the whole network (the
//! first layer included); the winner's outgoing weights fold into its partner scaled by the
//! norm ratio. One neuron at a time, so the count is exact. Convolutions: smallest L1 filter.

use alloc::vec::Vec;

use super::Pruner;
use crate::ir::{Activation, Graph, Op};
use crate::ops;

/// Pairs compared by their interval bound after the saliency ranking.
const CANDIDATES: usize = 8;

pub(super) fn prune_layer(p: &Pruner, g: &mut Graph, l: usize, count: usize, removed: &mut [bool]) {
    let s = &p.structure;
    let layer = &s.layers[l];
    let dense =
        layer.producers.len() == 1 && matches!(g.nodes[layer.producers[0]].op, Op::Dense(_));
    let single = layer.items.iter().all(|&i| s.items[i].units.len() == 1);
    if !dense || !single {
        return p.remove_lowest(l, count, removed);
    }
    let node = layer.producers[0];
    let (lower, upper) = pre_activation_bounds(p.graph, node, p.options.input_range);
    let Op::Dense(d) = &g.nodes[node].op else {
        return;
    };
    let (w, b, k) = (d.weights.clone(), d.bias.clone(), d.inputs);
    let units: Vec<usize> = layer.items.iter().map(|&i| s.items[i].units[0]).collect();
    let n = units.len();
    let row = |a: usize| &w[s.units[units[a]].channel * k..(s.units[units[a]].channel + 1) * k];
    let bias = |a: usize| b[s.units[units[a]].channel];
    let channel = |a: usize| s.units[units[a]].channel;
    let norm_with_bias = |a: usize| {
        libm::sqrt(row(a).iter().map(|&x| (x * x) as f64).sum::<f64>() + (bias(a) * bias(a)) as f64)
    };
    let mut alive = alloc::vec![true; n];
    for _ in 0..count {
        let out_norm = |g: &Graph, a: usize| -> f64 {
            libm::sqrt(
                p.outgoing[units[a]]
                    .iter()
                    .map(|o| super::weights::outgoing_energy(g, o))
                    .sum(),
            )
        };
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for j in (0..n).filter(|&j| alive[j] && !s.items[layer.items[j]].frozen) {
            let out_j = out_norm(g, j);
            for i in (0..n).filter(|&i| i != j && alive[i]) {
                let (bi, bj) = (bias(i) as f64, bias(j) as f64);
                let bias_term = if (bi + bj).abs() > 1e-12 {
                    ((bi - bj) / (bi + bj)).abs()
                } else {
                    0.0
                };
                let dist = libm::sqrt(
                    row(i)
                        .iter()
                        .zip(row(j))
                        .map(|(x, y)| ((x - y) * (x - y)) as f64)
                        .sum(),
                );
                pairs.push(((bias_term + dist) * out_j, i, j));
            }
        }
        if pairs.is_empty() {
            break;
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        // The saliency shortlists; the interval bound on the output change decides.
        let (_, keep, gone) = pairs
            .iter()
            .take(CANDIDATES)
            .map(|&(_, i, j)| {
                let scale = norm_with_bias(j) / norm_with_bias(i).max(1e-30);
                let uj = relu(upper[channel(j)]) as f64;
                let ui = relu(upper[channel(i)]) as f64;
                (
                    (uj.max(scale * ui) - lower_gap(lower[channel(j)], lower[channel(i)], scale))
                        * out_norm(g, j),
                    i,
                    j,
                )
            })
            .fold(
                (f64::INFINITY, 0, 0),
                |best, c| if c.0 < best.0 { c } else { best },
            );
        alive[gone] = false;
        removed[layer.items[gone]] = true;
        let scale = (norm_with_bias(gone) / norm_with_bias(keep).max(1e-30)) as f32;
        for (from, to) in p.outgoing[units[gone]].iter().zip(&p.outgoing[units[keep]]) {
            if from.node == to.node && from.slices.len() == to.slices.len() {
                super::weights::fold_outgoing(g, from.node, &from.slices, &to.slices, scale);
            }
        }
    }
}

fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// A lower bound both activations clear, which tightens the bound when both stay positive.
fn lower_gap(lj: f32, li: f32, scale: f64) -> f64 {
    (relu(lj) as f64).min(scale * relu(li) as f64).max(0.0)
}

/// Interval bounds of node `target`'s pre-activations over the input box `[lo, hi]`,
/// propagated soundly through every node before it.
pub fn pre_activation_bounds(
    g: &Graph,
    target: usize,
    (lo, hi): (f32, f32),
) -> (Vec<f32>, Vec<f32>) {
    let n_in = g.values[g.input].len();
    let mut lower: Vec<Vec<f32>> = alloc::vec![Vec::new(); g.values.len()];
    let mut upper: Vec<Vec<f32>> = alloc::vec![Vec::new(); g.values.len()];
    lower[g.input] = alloc::vec![lo; n_in];
    upper[g.input] = alloc::vec![hi; n_in];
    for (i, node) in g.nodes.iter().enumerate() {
        let out_shape = g.shape(node.output);
        let len: usize = out_shape.iter().product();
        let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&v| g.shape(v)).collect();
        let (mut l, mut u) = (alloc::vec![0.0f32; len], alloc::vec![0.0f32; len]);
        match &node.op {
            Op::Dense(_) | Op::Conv2d(_) => {
                let x = node.inputs[0];
                let center: Vec<f32> = lower[x]
                    .iter()
                    .zip(&upper[x])
                    .map(|(a, b)| 0.5 * (a + b))
                    .collect();
                let radius: Vec<f32> = lower[x]
                    .iter()
                    .zip(&upper[x])
                    .map(|(a, b)| 0.5 * (b - a))
                    .collect();
                let mut c = alloc::vec![0.0f32; len];
                let mut r = alloc::vec![0.0f32; len];
                ops::eval_pre_activation(&node.op, &in_shapes, &[&center], out_shape, &mut c);
                ops::eval_pre_activation(
                    &absolute(&node.op),
                    &in_shapes,
                    &[&radius],
                    out_shape,
                    &mut r,
                );
                for k in 0..len {
                    l[k] = c[k] - r[k];
                    u[k] = c[k] + r[k];
                }
                if i == target {
                    return (l, u);
                }
                let act = node.op.fused_activation().unwrap_or_default();
                l.iter_mut().for_each(|v| *v = act.apply(*v));
                u.iter_mut().for_each(|v| *v = act.apply(*v));
            }
            Op::BatchNorm(b) => {
                let x = node.inputs[0];
                let inner = len / b.scale.len().max(1);
                for k in 0..len {
                    let c = k / inner.max(1);
                    let (a, z) = (
                        lower[x][k] * b.scale[c] + b.shift[c],
                        upper[x][k] * b.scale[c] + b.shift[c],
                    );
                    l[k] = a.min(z);
                    u[k] = a.max(z);
                }
            }
            Op::Softmax { .. } => {
                u.iter_mut().for_each(|v| *v = 1.0);
            }
            // Monotone in each input: bounds map to bounds.
            _ => {
                let ls: Vec<&[f32]> = node.inputs.iter().map(|&v| lower[v].as_slice()).collect();
                let us: Vec<&[f32]> = node.inputs.iter().map(|&v| upper[v].as_slice()).collect();
                ops::eval(&node.op, &in_shapes, &ls, out_shape, &mut l);
                ops::eval(&node.op, &in_shapes, &us, out_shape, &mut u);
            }
        }
        lower[node.output] = l;
        upper[node.output] = u;
    }
    (Vec::new(), Vec::new())
}

/// The same layer with |weights| and no bias: it maps an input radius to an output radius.
fn absolute(op: &Op) -> Op {
    match op {
        Op::Dense(d) => {
            let mut d = d.clone();
            d.weights.iter_mut().for_each(|w| *w = w.abs());
            d.bias.iter_mut().for_each(|b| *b = 0.0);
            d.activation = Activation::Identity;
            Op::Dense(d)
        }
        Op::Conv2d(c) => {
            let mut c = c.clone();
            c.weights.iter_mut().for_each(|w| *w = w.abs());
            c.bias.iter_mut().for_each(|b| *b = 0.0);
            c.activation = Activation::Identity;
            Op::Conv2d(c)
        }
        other => other.clone(),
    }
}
