//! Data-free corrections of quantization error (Nagel et al., "Data-Free Quantization
//! Through Weight Equalization and Bias Correction", ICCV 2019), each measured on and off by
//! the int8 benchmark and applied only where it helps ([`super::QuantOptions`]).
//!
//! - [`equalize`]: cross-layer equalization. A layer followed by a positively homogeneous
//!   activation (ReLU, or none) and a single consumer can scale each output channel down by
//!   `s` if the consumer scales the matching input weights up by `s`: the function is
//!   unchanged, and choosing `s = sqrt(r1 / r2)` (the two weight ranges) makes both channels'
//!   ranges equal, so per-tensor and per-channel scales waste fewer codes.
//! - [`correct_biases`]: rounding weights shifts each output channel's mean by
//!   `E[(W_q - W) x]`; measured on the probes' activations, it is subtracted from the bias.

use alloc::vec::Vec;

use crate::error::Result;
use crate::ir::{Activation, Graph, Op};
use crate::probes::Probes;
use crate::quant::{params, Quantized};

/// The per-channel layer (dense or ungrouped/depthwise convolution) a value comes from.
fn output_layer(g: &Graph, node: usize) -> Option<(usize, Activation)> {
    match &g.nodes[node].op {
        Op::Dense(d) => Some((d.units, d.activation)),
        Op::Conv2d(c) => Some((c.out_channels, c.activation)),
        _ => None,
    }
}

/// Range (largest |w|) of each output channel of a layer's weights.
fn out_ranges(op: &Op) -> Vec<f32> {
    let (w, channels) = match op {
        Op::Dense(d) => (&d.weights, d.units),
        Op::Conv2d(c) => (&c.weights, c.out_channels),
        _ => return Vec::new(),
    };
    let per = w.len() / channels.max(1);
    w.chunks(per.max(1))
        .map(|c| c.iter().fold(0.0f32, |m, &x| m.max(x.abs())))
        .collect()
}

/// For each input channel of `op`, the indices of the weights that read it.
fn input_channel_weights(op: &Op, channels: usize) -> Option<Vec<Vec<usize>>> {
    let mut by_channel = alloc::vec![Vec::new(); channels];
    match op {
        Op::Dense(d) if d.inputs == channels => {
            for o in 0..d.units {
                for (i, list) in by_channel.iter_mut().enumerate() {
                    list.push(o * d.inputs + i);
                }
            }
        }
        Op::Conv2d(c) if c.in_channels == channels => {
            let per_group_in = c.in_channels / c.groups;
            let per_group_out = c.out_channels / c.groups;
            let taps = c.kernel[0] * c.kernel[1];
            for o in 0..c.out_channels {
                let g = o / per_group_out;
                for ci in 0..per_group_in {
                    let channel = g * per_group_in + ci;
                    let start = (o * per_group_in + ci) * taps;
                    by_channel[channel].extend(start..start + taps);
                }
            }
        }
        _ => return None,
    }
    Some(by_channel)
}

fn weights_mut(op: &mut Op) -> Option<(&mut Vec<f32>, &mut Vec<f32>)> {
    match op {
        Op::Dense(d) => Some((&mut d.weights, &mut d.bias)),
        Op::Conv2d(c) => Some((&mut c.weights, &mut c.bias)),
        _ => None,
    }
}

/// Cross-layer equalization of every layer pair `A → B` where A's output (after ReLU or no
/// activation) is read by B alone, directly, channel for channel; `rounds` sweeps over the
/// pairs. Returns the number of pairs equalized. The graph computes the same function.
pub fn equalize(g: &mut Graph, rounds: usize) -> usize {
    let mut pairs = Vec::new();
    for a in 0..g.nodes.len() {
        let Some((channels, act)) = output_layer(g, a) else {
            continue;
        };
        if !matches!(act, Activation::Identity | Activation::Relu) {
            continue;
        }
        let consumers = g.consumers(g.nodes[a].output);
        let [b] = consumers[..] else { continue };
        if g.nodes[a].output == g.output {
            continue;
        }
        if let Some(map) = input_channel_weights(&g.nodes[b].op, channels) {
            pairs.push((a, b, map));
        }
    }
    for _ in 0..rounds {
        for (a, b, map) in &pairs {
            let r1 = out_ranges(&g.nodes[*a].op);
            let Some((wb, _)) = weights_mut(&mut g.nodes[*b].op) else {
                continue;
            };
            let r2: Vec<f32> = map
                .iter()
                .map(|idx| idx.iter().fold(0.0f32, |m, &i| m.max(wb[i].abs())))
                .collect();
            let scales: Vec<f32> = r1
                .iter()
                .zip(&r2)
                .map(|(&x, &y)| {
                    if x > 0.0 && y > 0.0 {
                        libm::sqrtf(x / y)
                    } else {
                        1.0
                    }
                })
                .collect();
            for (idx, &s) in map.iter().zip(&scales) {
                for &i in idx {
                    wb[i] *= s;
                }
            }
            let Some((wa, ba)) = weights_mut(&mut g.nodes[*a].op) else {
                continue;
            };
            let per = wa.len() / scales.len().max(1);
            for ((row, b), &s) in wa.chunks_mut(per.max(1)).zip(ba.iter_mut()).zip(&scales) {
                row.iter_mut().for_each(|w| *w /= s);
                *b /= s;
            }
        }
    }
    pairs.len()
}

/// Subtract from every int8 layer's bias the mean shift its rounded weights cause on the
/// probes' activations (the f32 model's), and re-quantize the bias.
pub fn correct_biases(g: &Graph, q: &mut Quantized, probes: &Probes) -> Result<()> {
    let layers: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| q.layers[i].is_some())
        .collect();
    if layers.is_empty() {
        return Ok(());
    }
    // Mean over probes (and positions) of each layer's pre-activation with its f32 and its
    // rounded weights, accumulated over chunks.
    let mut shift: Vec<Vec<f64>> = layers
        .iter()
        .map(|&i| alloc::vec![0.0f64; output_layer(g, i).map_or(0, |(c, _)| c)])
        .collect();
    let mut count = alloc::vec![0usize; layers.len()];
    const CHUNK: usize = 64;
    let n = probes.sample_len;
    for chunk in probes.data.chunks(n * CHUNK) {
        let batch = chunk.len() / n;
        let values = crate::grad::forward_batch(g, chunk, batch)?;
        for (k, &i) in layers.iter().enumerate() {
            let node = &g.nodes[i];
            let ql = q.layers[i].as_ref().expect("filtered above");
            let exact = single_layer(g, i, None);
            let rounded = single_layer(g, i, Some(ql));
            let x = &values[node.inputs[0]];
            let a = crate::grad::outputs_batch(&exact, x)?;
            let b = crate::grad::outputs_batch(&rounded, x)?;
            let channels = shift[k].len();
            let shape = g.shape(node.output);
            let inner: usize = shape[2..].iter().product();
            for (s, (ra, rb)) in a
                .chunks_exact(channels * inner)
                .zip(b.chunks_exact(channels * inner))
                .enumerate()
            {
                let _ = s;
                for c in 0..channels {
                    let d: f64 = ra[c * inner..(c + 1) * inner]
                        .iter()
                        .zip(&rb[c * inner..(c + 1) * inner])
                        .map(|(&x, &y)| (y - x) as f64)
                        .sum();
                    shift[k][c] += d;
                }
            }
            count[k] += batch * inner;
        }
    }
    for (k, &i) in layers.iter().enumerate() {
        let node = &g.nodes[i];
        let input_scale = q.values[node.inputs[0]].map_or(1.0, |p| p.scale);
        let bias = match &node.op {
            Op::Dense(d) => &d.bias,
            Op::Conv2d(c) => &c.bias,
            _ => continue,
        };
        let ql = q.layers[i].as_mut().expect("filtered above");
        let corrected: Vec<f32> = bias
            .iter()
            .zip(&shift[k])
            .map(|(&b, &d)| b - (d / count[k].max(1) as f64) as f32)
            .collect();
        ql.bias = params::quantize_bias(&corrected, input_scale, &ql.weight_scales);
    }
    Ok(())
}

/// Node `i` alone as a graph, without its activation (pre-activations), with its weights
/// replaced by the dequantized int8 ones when given.
fn single_layer(g: &Graph, i: usize, rounded: Option<&crate::quant::QLayer>) -> Graph {
    let node = &g.nodes[i];
    let mut op = node.op.clone();
    let dequantized = |w: &mut Vec<f32>, ql: &crate::quant::QLayer| {
        let per = w.len() / ql.weight_scales.len().max(1);
        for (k, x) in w.iter_mut().enumerate() {
            *x = f32::from(ql.weights[k]) * ql.weight_scales[k / per.max(1)];
        }
    };
    match &mut op {
        Op::Dense(d) => {
            d.activation = Activation::Identity;
            d.bias.iter_mut().for_each(|b| *b = 0.0);
            if let Some(ql) = rounded {
                dequantized(&mut d.weights, ql);
            }
        }
        Op::Conv2d(c) => {
            c.activation = Activation::Identity;
            c.bias.iter_mut().for_each(|b| *b = 0.0);
            if let Some(ql) = rounded {
                dequantized(&mut c.weights, ql);
            }
        }
        _ => {}
    }
    let mut one = Graph::new("x", g.shape(node.inputs[0]).to_vec());
    // The layer already checked in `g`: pushing it again cannot fail.
    one.output = one.push("layer", op, &[one.input]).unwrap_or(one.input);
    one
}

/// Passes of [`refine_rounding`] over a channel's weights: flips settle within a few.
const ROUNDING_PASSES: usize = 4;

/// Choose each int8 weight's rounding (down or up) to minimise the layer's output error on the
/// probes, instead of rounding to nearest (AdaRound's objective, Nagel et al. ICML 2020, solved
/// greedily): for output channel `c` with weight error `e = W_q - W`, the output error's
/// energy over the probes is `eᵀ H e`, `H` the Gram matrix of the layer's inputs — the f32
/// model's activations quantized as the int8 model reads them. A weight's other rounding is
/// taken when it lowers that energy, until no flip does. Dense layers and ungrouped
/// convolutions (those the refit's least squares cover); the biases are left to
/// [`correct_biases`], which should run after.
pub fn refine_rounding(g: &Graph, q: &mut Quantized, probes: &Probes) -> Result<()> {
    use crate::prune::refit::{for_each_observation, layer_features, MAX_REFIT_FEATURES};
    let layers: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| q.layers[i].is_some() && q.values[g.nodes[i].inputs[0]].is_some())
        .filter(|&i| {
            let shape = g.shape(g.nodes[i].inputs[0]);
            let features = layer_features(&g.nodes[i].op, shape).0;
            features > 1 && features <= MAX_REFIT_FEATURES + 1
        })
        .collect();
    if layers.is_empty() {
        return Ok(());
    }
    let mut grams: Vec<crate::linalg::NormalEquations> = layers
        .iter()
        .map(|&i| {
            let f = layer_features(&g.nodes[i].op, g.shape(g.nodes[i].inputs[0])).0;
            crate::linalg::NormalEquations::new(f, 0)
        })
        .collect();
    const CHUNK: usize = 64;
    let n = probes.sample_len;
    for chunk in probes.data.chunks(n * CHUNK) {
        let batch = chunk.len() / n;
        let values = crate::grad::forward_batch(g, chunk, batch)?;
        for (k, &i) in layers.iter().enumerate() {
            let v = g.nodes[i].inputs[0];
            let p = q.values[v].expect("filtered above");
            // What the int8 layer reads: the activation rounded to its codes.
            let x: Vec<f32> = values[v]
                .iter()
                .map(|&a| {
                    let code = paoding_runtime::quant::quantize(a, p.scale, p.zero_point);
                    paoding_runtime::quant::dequantize(code, p.scale, p.zero_point)
                })
                .collect();
            let eq = &mut grams[k];
            for_each_observation(&g.nodes[i].op, g.shape(v), &x, batch, |row, _, _| {
                eq.add_row(row, &[])
            });
        }
    }
    for (k, &i) in layers.iter().enumerate() {
        let w = match &g.nodes[i].op {
            Op::Dense(d) => &d.weights,
            Op::Conv2d(c) => &c.weights,
            _ => continue,
        };
        let eq = &grams[k];
        let ql = q.layers[i].as_mut().expect("filtered above");
        let filter = eq.features - 1; // the bias feature, last, is not a weight
        let h = |a: usize, b: usize| eq.gram[a.min(b) * eq.features + a.max(b)];
        for (c, &s) in ql.weight_scales.iter().enumerate() {
            let range = c * filter..(c + 1) * filter;
            let codes = &mut ql.weights[range.clone()];
            let exact = &w[range];
            let s = f64::from(s);
            let mut e: Vec<f64> = codes
                .iter()
                .zip(exact)
                .map(|(&q, &w)| f64::from(q) * s - f64::from(w))
                .collect();
            let mut he: Vec<f64> = (0..filter)
                .map(|a| (0..filter).map(|b| h(a, b) * e[b]).sum())
                .collect();
            for _ in 0..ROUNDING_PASSES {
                let mut flipped = false;
                for j in 0..filter {
                    // The other neighbour of the exact weight.
                    let step: i8 = if e[j] > 0.0 { -1 } else { 1 };
                    let Some(code) = codes[j].checked_add(step).filter(|&c| c >= -127) else {
                        continue;
                    };
                    let d = f64::from(step) * s;
                    if 2.0 * d * he[j] + d * d * h(j, j) < 0.0 {
                        codes[j] = code;
                        e[j] += d;
                        he.iter_mut()
                            .enumerate()
                            .for_each(|(a, x)| *x += d * h(a, j));
                        flipped = true;
                    }
                }
                if !flipped {
                    break;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dense;
    use crate::probes::SplitMix64;

    fn two_dense(rng: &mut SplitMix64) -> Graph {
        let mut g = Graph::new("x", alloc::vec![1, 6]);
        let mut w1 = rng.vec(8 * 6, 1.0);
        // Channel ranges spread over three orders of magnitude.
        for (k, row) in w1.chunks_mut(6).enumerate() {
            row.iter_mut()
                .for_each(|w| *w *= 10f32.powi(k as i32 % 3 - 1));
        }
        let h = g
            .push(
                "a",
                Op::Dense(Dense {
                    units: 8,
                    inputs: 6,
                    weights: w1,
                    bias: rng.vec(8, 0.1),
                    activation: Activation::Relu,
                }),
                &[g.input],
            )
            .unwrap();
        g.output = g
            .push(
                "b",
                Op::Dense(Dense {
                    units: 3,
                    inputs: 8,
                    weights: rng.vec(24, 1.0),
                    bias: rng.vec(3, 0.1),
                    activation: Activation::Identity,
                }),
                &[h],
            )
            .unwrap();
        g
    }

    #[test]
    fn equalization_keeps_the_function_and_evens_the_ranges() {
        let mut rng = SplitMix64(3);
        let g = two_dense(&mut rng);
        let mut e = g.clone();
        assert_eq!(equalize(&mut e, 3), 1);
        let x = rng.vec(6 * 20, 1.0);
        let (a, b) = (
            crate::interp::run_batch(&g, &x).unwrap(),
            crate::interp::run_batch(&e, &x).unwrap(),
        );
        assert!(
            a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-4),
            "{a:?} {b:?}"
        );
        let spread = |g: &Graph| {
            let r = out_ranges(&g.nodes[0].op);
            r.iter().fold(0.0f32, |m, &x| m.max(x)) / r.iter().fold(f32::MAX, |m, &x| m.min(x))
        };
        assert!(
            spread(&e) < spread(&g) / 10.0,
            "{} vs {}",
            spread(&e),
            spread(&g)
        );
    }

    #[test]
    fn bias_correction_cancels_the_mean_rounding_shift() {
        let mut rng = SplitMix64(5);
        let g = two_dense(&mut rng);
        let probes = Probes::uniform(6, 256, 0.0, 1.0, 2);
        let mut q = crate::quant::quantize(&g, &probes, &Default::default()).unwrap();
        let before = q.layers[1].clone().unwrap().bias;
        correct_biases(&g, &mut q, &probes).unwrap();
        assert_eq!(q.layers[1].as_ref().unwrap().weights.len(), 24);
        // Biases move by at most a few codes: the shift is a rounding effect.
        let after = &q.layers[1].as_ref().unwrap().bias;
        assert!(
            before.iter().zip(after).all(|(a, b)| (a - b).abs() < 200),
            "{before:?} {after:?}"
        );
    }

    #[test]
    fn refined_rounding_lowers_each_layers_output_error_on_the_probes() {
        let mut rng = SplitMix64(9);
        let g = two_dense(&mut rng);
        let probes = Probes::uniform(6, 256, 0.0, 1.0, 4);
        let nearest = crate::quant::quantize(&g, &probes, &Default::default()).unwrap();
        let mut refined = nearest.clone();
        refine_rounding(&g, &mut refined, &probes).unwrap();
        assert_ne!(
            nearest.layers, refined.layers,
            "no weight changed its rounding"
        );
        // Per layer, with its input as the f32 model computes it: the pre-activation error
        // of the rounded weights (biases exact) falls.
        let values = crate::grad::forward_batch(&g, &probes.data, probes.count()).unwrap();
        for i in 0..g.nodes.len() {
            let x = &values[g.nodes[i].inputs[0]];
            let exact = crate::grad::outputs_batch(&single_layer(&g, i, None), x).unwrap();
            let error = |q: &Quantized| -> f64 {
                let ql = q.layers[i].as_ref().unwrap();
                let rounded = crate::grad::outputs_batch(&single_layer(&g, i, Some(ql)), x);
                rounded
                    .unwrap()
                    .iter()
                    .zip(&exact)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum()
            };
            let (before, after) = (error(&nearest), error(&refined));
            assert!(after < before, "layer {i}: {after} >= {before}");
            // Each weight still rounds to one of its two neighbours.
            let (a, b) = (
                nearest.layers[i].as_ref().unwrap(),
                refined.layers[i].as_ref().unwrap(),
            );
            assert!(a
                .weights
                .iter()
                .zip(&b.weights)
                .all(|(p, q)| (p - q).abs() <= 1));
        }
    }
}
