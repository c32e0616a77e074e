//! Compensation by refit: after surgery, each layer that lost inputs is refitted by ridge
//! least squares so that, on the probes, its pre-activations match the original model's.
//! Layers are visited from the input on: a layer's inputs come from the already-pruned (and
//! already-refitted) model, its targets from the original. For convolutions, every output
//! position of every probe is one observation of the input patch.

use alloc::vec::Vec;

use crate::ir::{Activation, Graph, Op};
use crate::linalg::NormalEquations;
use crate::ops;
use crate::probes::Probes;

/// Work one convolution refit may spend on its normal equations (observations × features²);
/// beyond it, positions are sampled evenly. Small layers thus see every observation (and
/// their fit gets the full variance reduction), wide ones a sample of at least
/// [`MIN_ROWS_PER_FEATURE`] rows per feature.
const CONV_REFIT_BUDGET: usize = 200_000_000;
/// Widest convolution refitted by least squares (input channels × kernel area + 1); wider
/// ones only get their bias corrected, since their normal equations alone would cost
/// features² × rows and the factorisation features³. Also the widest consumer whose least
/// squares choose the units to remove ([`super::select`]).
pub(crate) const MAX_REFIT_FEATURES: usize = 800;
/// Observations per feature a convolution refit always gets, whatever it costs.
const MIN_ROWS_PER_FEATURE: usize = 16;

/// Refit in place every dense layer and ungrouped convolution of `pruned` whose input lost
/// elements. `kept_out[i]` maps node `i`'s kept output channels to the original's.
pub fn refit(
    original: &Graph,
    pruned: &mut Graph,
    kept_out: &[Vec<usize>],
    input_changed: &[bool],
    probes: &Probes,
    ridge: f64,
) {
    let n = probes.count();
    // Off-distribution probes are trusted less (see `SYNTHESIZED_RIDGE`).
    let ridge = if probes.off_distribution {
        ridge.max(super::SYNTHESIZED_RIDGE)
    } else {
        ridge
    };
    let mut orig_vals: Vec<Vec<f32>> = alloc::vec![Vec::new(); original.values.len()];
    let mut new_vals: Vec<Vec<f32>> = alloc::vec![Vec::new(); pruned.values.len()];
    orig_vals[original.input] = probes.data.clone();
    new_vals[pruned.input] = probes.data.clone();
    let last_use = last_uses(original);
    for i in 0..original.nodes.len() {
        let refittable = match &pruned.nodes[i].op {
            Op::Dense(_) => true,
            Op::Conv2d(c) => c.groups == 1,
            _ => false,
        };
        let out = if refittable && input_changed[i] {
            // The original's pre-activations are both the targets and, activated, its output.
            let mut pre = eval_node(original, i, &orig_vals, n, true);
            let x = &new_vals[pruned.nodes[i].inputs[0]];
            fit_node(pruned, i, x, &pre, &kept_out[i], n, ridge);
            let act = original.nodes[i].op.fused_activation().unwrap_or_default();
            if act != Activation::Identity {
                pre.iter_mut().for_each(|v| *v = act.apply(*v));
            }
            pre
        } else {
            eval_node(original, i, &orig_vals, n, false)
        };
        orig_vals[original.nodes[i].output] = out;
        let out = eval_node(pruned, i, &new_vals, n, false);
        new_vals[pruned.nodes[i].output] = out;
        // Free what no later node reads (values keep the same ids in both graphs' order).
        for &v in &original.nodes[i].inputs {
            if last_use[v] == i && v != original.output {
                orig_vals[v] = Vec::new();
            }
        }
        for &v in &pruned.nodes[i].inputs {
            if last_use_of(pruned, v) == i && v != pruned.output {
                new_vals[v] = Vec::new();
            }
        }
    }
}

/// Per value, the last node reading it (`usize::MAX` for none).
pub(crate) fn last_uses(g: &Graph) -> Vec<usize> {
    let mut last = alloc::vec![usize::MAX; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &v in &n.inputs {
            last[v] = i;
        }
    }
    last
}

fn last_use_of(g: &Graph, v: usize) -> usize {
    g.nodes
        .iter()
        .rposition(|n| n.inputs.contains(&v))
        .unwrap_or(usize::MAX)
}

/// Probes evaluated together: dense layers and convolutions run as one matrix product per
/// chunk ([`crate::grad::eval_node_batch`]), whose scratch stays bounded.
const EVAL_CHUNK: usize = 32;

/// Evaluate node `i` on every probe; `pre_activation` skips a fused activation.
pub(crate) fn eval_node(
    g: &Graph,
    i: usize,
    vals: &[Vec<f32>],
    n: usize,
    pre_activation: bool,
) -> Vec<f32> {
    let node = &g.nodes[i];
    let in_lens: Vec<usize> = node.inputs.iter().map(|&v| g.values[v].len()).collect();
    let mut out = Vec::with_capacity(n * g.values[node.output].len());
    for first in (0..n).step_by(EVAL_CHUNK) {
        let count = EVAL_CHUNK.min(n - first);
        let inputs: Vec<&[f32]> = node
            .inputs
            .iter()
            .zip(&in_lens)
            .map(|(&v, &len)| &vals[v][first * len..(first + count) * len])
            .collect();
        out.extend(crate::grad::eval_node_batch(
            g,
            i,
            &inputs,
            count,
            pre_activation,
        ));
    }
    out
}

fn fit_node(
    g: &mut Graph,
    i: usize,
    x: &[f32],
    targets: &[f32],
    kept: &[usize],
    n: usize,
    ridge: f64,
) {
    let in_shape = g.shape(g.nodes[i].inputs[0]).to_vec();
    let orig_out_len = targets.len() / n.max(1);
    let op = &g.nodes[i].op;
    let (features, positions) = layer_features(op, &in_shape);
    if let (Op::Conv2d(_), true) = (op, features > MAX_REFIT_FEATURES) {
        // Too wide for least squares within the budget: correct the mean only.
        if let Op::Conv2d(c) = &mut g.nodes[i].op {
            bias_correction(c, x, targets, kept, n, &in_shape, orig_out_len);
        }
        return;
    }
    let mut eq = NormalEquations::new(features, kept.len());
    let mut y = alloc::vec![0.0f64; kept.len()];
    for_each_observation(op, &in_shape, x, n, |row, s, p| {
        for (t, &o) in y.iter_mut().zip(kept) {
            *t = targets[s * orig_out_len + o * positions + p] as f64;
        }
        eq.add_row(row, &y);
    });
    match &mut g.nodes[i].op {
        Op::Dense(d) => solve_into(&eq, ridge, &mut d.weights, &mut d.bias),
        Op::Conv2d(c) => solve_into(&eq, ridge, &mut c.weights, &mut c.bias),
        _ => {}
    }
}

/// Least-squares features of a dense layer or ungrouped convolution reading inputs of
/// `in_shape` — its filter's inputs and the bias, last — and output positions per probe (1
/// for a dense layer). `(0, 0)` for other operators.
pub(crate) fn layer_features(op: &Op, in_shape: &[usize]) -> (usize, usize) {
    match op {
        Op::Dense(d) => (d.inputs + 1, 1),
        Op::Conv2d(c) if c.groups == 1 => {
            let out = |axis: usize, pad: [usize; 2]| {
                let k = c.kernel[axis - 2];
                let span = c.dilation[axis - 2] * (k - 1) + 1;
                ops::conv_output_hw(in_shape[axis], span, c.stride[axis - 2], pad[0], pad[1])
                    .unwrap_or(0)
            };
            let positions =
                out(2, [c.padding[0], c.padding[2]]) * out(3, [c.padding[1], c.padding[3]]);
            (c.filter_len() + 1, positions)
        }
        _ => (0, 0),
    }
}

/// The observations a least-squares fit of layer `op` (a dense layer or ungrouped
/// convolution) sees on its inputs `x` (`n` probes of `in_shape`): `f(row, probe, position)`
/// for one row of [`layer_features`] per probe (a dense layer's inputs) or per output
/// position of every probe (a convolution's input patch, zero outside the image), the bias
/// feature (1) last. A convolution's positions are sampled evenly beyond
/// [`CONV_REFIT_BUDGET`].
pub(crate) fn for_each_observation(
    op: &Op,
    in_shape: &[usize],
    x: &[f32],
    n: usize,
    mut f: impl FnMut(&[f64], usize, usize),
) {
    let (features, positions) = layer_features(op, in_shape);
    let mut row = alloc::vec![1.0f64; features];
    match op {
        Op::Dense(d) => {
            let k = d.inputs;
            for s in 0..n {
                for (r, &v) in row.iter_mut().zip(&x[s * k..(s + 1) * k]) {
                    *r = v as f64;
                }
                f(&row, s, 0);
            }
        }
        Op::Conv2d(c) if features > 0 => {
            let (ci, [kh, kw]) = (c.in_channels, c.kernel);
            let (ih, iw) = (in_shape[2], in_shape[3]);
            let in_len = ci * ih * iw;
            let ow = ops::conv_output_hw(
                iw,
                c.dilation[1] * (kw - 1) + 1,
                c.stride[1],
                c.padding[1],
                c.padding[3],
            )
            .unwrap_or(1)
            .max(1);
            let rows =
                (CONV_REFIT_BUDGET / (features * features)).max(MIN_ROWS_PER_FEATURE * features);
            let step = (n * positions).div_ceil(rows).max(1);
            for r in (0..n * positions).step_by(step) {
                let (s, p) = (r / positions, r % positions);
                let (oy, ox) = (p / ow, p % ow);
                let input = &x[s * in_len..(s + 1) * in_len];
                for ch in 0..ci {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let yy = (oy * c.stride[0] + ky * c.dilation[0]) as isize
                                - c.padding[0] as isize;
                            let xx = (ox * c.stride[1] + kx * c.dilation[1]) as isize
                                - c.padding[1] as isize;
                            let inside =
                                yy >= 0 && xx >= 0 && (yy as usize) < ih && (xx as usize) < iw;
                            row[(ch * kh + ky) * kw + kx] = if inside {
                                input[(ch * ih + yy as usize) * iw + xx as usize] as f64
                            } else {
                                0.0
                            };
                        }
                    }
                }
                f(&row, s, p);
            }
        }
        _ => {}
    }
}

/// Solve the refit and write it back. Dense rows and convolution filters share one layout —
/// `[outputs][filter]` weights plus a bias per output — and the normal equations' unknowns are
/// `filter + 1` features (the bias last) by `outputs` targets. The current (compensated)
/// weights are the ridge's prior: probes refine them, not replace them.
fn solve_into(eq: &NormalEquations, ridge: f64, weights: &mut [f32], bias: &mut [f32]) {
    let outs = bias.len();
    let filter = eq.features - 1;
    let prior: Vec<f64> = (0..eq.features)
        .flat_map(|f| (0..outs).map(move |o| (f, o)))
        .map(|(f, o)| {
            if f < filter {
                weights[o * filter + f] as f64
            } else {
                bias[o] as f64
            }
        })
        .collect();
    let w = eq.solve(ridge, Some(&prior));
    for o in 0..outs {
        for f in 0..filter {
            weights[o * filter + f] = w[f * outs + o] as f32;
        }
        bias[o] = w[filter * outs + o] as f32;
    }
}

/// Shift each kept output channel's bias by the mean gap between the original's
/// pre-activations and the pruned layer's on the probes.
fn bias_correction(
    c: &mut crate::ir::Conv2d,
    x: &[f32],
    targets: &[f32],
    kept: &[usize],
    n: usize,
    in_shape: &[usize],
    orig_out_len: usize,
) {
    let op = Op::Conv2d(crate::ir::Conv2d {
        activation: Activation::Identity,
        ..c.clone()
    });
    let Ok(out_shape) = ops::output_shape("refit", &op, &[in_shape]) else {
        return;
    };
    let positions: usize = out_shape[2..].iter().product();
    let in_len: usize = in_shape.iter().product();
    let mut gap = alloc::vec![0.0f64; c.out_channels];
    let mut out = alloc::vec![0.0f32; c.out_channels * positions];
    for s in 0..n {
        ops::eval(
            &op,
            &[in_shape],
            &[&x[s * in_len..(s + 1) * in_len]],
            &out_shape,
            &mut out,
        );
        for (o, &k) in kept.iter().enumerate() {
            for p in 0..positions {
                gap[o] +=
                    (targets[s * orig_out_len + k * positions + p] - out[o * positions + p]) as f64;
            }
        }
    }
    for (b, g) in c.bias.iter_mut().zip(&gap) {
        *b += (*g / (n * positions).max(1) as f64) as f32;
    }
}
