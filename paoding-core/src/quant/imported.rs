//! The int8 form a quantized model file gives (a QDQ ONNX file, say): its activations'
//! parameters and its layers' integer weights and biases, kept as the file has them, in the
//! same [`Quantized`] form paoding's own quantization produces, so the lowering, the runtime
//! and every report treat both alike.
//!
//! The importer hands the graph with the file's weights dequantized (`(q - zero_point) *
//! scale` in f32, as ONNX defines it) and, per layer, the scales it used: the codes are
//! recovered exactly (each weight divided by its channel's scale is an integer, and that
//! integer times the scale gives the weight back bit for bit — checked, so a weight that any
//! rewrite changed is an error, never a silent requantization).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::params::{quantize_bias, QParams};
use super::{QLayer, Quantized};
use crate::ir::{Graph, Op};

/// One layer's weights as the file quantizes them.
#[derive(Debug, Clone, PartialEq)]
pub struct FileLayer {
    /// The weights' scales: one for the whole layer, or one per output channel.
    pub scales: Vec<f32>,
    /// The file's int32 bias codes and their scales (one, or one per output channel), when
    /// the file stores the bias as integers.
    pub bias: Option<(Vec<i32>, Vec<f32>)>,
}

/// Why the file's quantization does not fit the graph: the node (index) and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct FileError {
    /// The node.
    pub node: usize,
    /// What is wrong.
    pub reason: String,
}

/// The int8 codes of one layer's f32 weights at their file scales (one, or one per
/// channel), checked to give the weights back exactly.
pub fn recover_codes(
    weights: &[f32],
    channels: usize,
    scales: &[f32],
) -> core::result::Result<(Vec<i8>, Vec<f32>), String> {
    let scales: Vec<f32> = match scales.len() {
        1 => alloc::vec![scales[0]; channels],
        n if n == channels => scales.to_vec(),
        n => return Err(format!("{n} weight scales for {channels} output channels")),
    };
    let per = weights.len() / channels.max(1);
    let mut codes = Vec::with_capacity(weights.len());
    for (k, &w) in weights.iter().enumerate() {
        let s = scales[(k / per.max(1)).min(channels.saturating_sub(1))];
        let q = libm::round(f64::from(w) / f64::from(s));
        if !(-128.0..=127.0).contains(&q) || (q as f32) * s != w {
            return Err(format!(
                "weight {k} ({w}) is not an int8 multiple of its scale {s}: the file's \
                 weights were changed on import"
            ));
        }
        codes.push(q as i8);
    }
    Ok((codes, scales))
}

/// The int8 form the file gives `g`: `values` are the parameters the file sets per value
/// (`None` where it keeps f32); values the file leaves without parameters behind a pooling,
/// layout or clamping node take its input's. `layers` are per node. A layer whose input and
/// output are int8 gets its int8 weights (codes recovered from `g`'s, see
/// [`recover_codes`]) and its int32 biases (the file's, whose scale must be the input's times
/// the weights', as TFLite's kernels assume; or `g`'s float biases quantized at that scale).
/// A layer the file quantizes but whose activations are f32 (weights-only quantization) gets
/// its weights and an empty bias: [`apply_file_weights`] completes it once a calibration has
/// chosen the activations' parameters.
pub fn from_file(
    g: &Graph,
    mut values: Vec<Option<QParams>>,
    layers: &[Option<FileLayer>],
) -> core::result::Result<Quantized, FileError> {
    values.resize(g.values.len(), None);
    // An Add (or any node) whose output only a ReLU or clip reads, the file quantizing the
    // clamp's output alone: TFLite's fused activation. The node writes the clamp's
    // parameters, which the clamp keeps (saturating, then clamping to the activation's codes,
    // as TFLite's fused activation range does).
    for node in g.nodes.iter().rev() {
        let x = node.inputs[0];
        if let (Op::Activation(_), Some(p), None) = (&node.op, values[node.output], values[x]) {
            if x != g.input && g.consumers(x).len() == 1 {
                values[x] = Some(p);
            }
        }
    }
    for node in &g.nodes {
        if values[node.output].is_none() && super::passes_through(&node.op) {
            values[node.output] = values[node.inputs[0]];
        }
    }
    let mut out_layers = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let fail = |reason: String| FileError { node: i, reason };
        let (w, b, channels) = match &node.op {
            Op::Dense(d) => (&d.weights, &d.bias, d.units),
            Op::Conv2d(c) => (&c.weights, &c.bias, c.out_channels),
            _ => {
                out_layers.push(None);
                continue;
            }
        };
        let Some(file) = layers.get(i).and_then(Option::as_ref) else {
            out_layers.push(None);
            continue;
        };
        let (weights, weight_scales) = recover_codes(w, channels, &file.scales).map_err(fail)?;
        let (inp, out) = (values[node.inputs[0]], values[node.output]);
        let bias = match (inp, out) {
            (Some(inp), Some(_)) => match &file.bias {
                Some((codes, scales)) => {
                    if codes.len() != channels && codes.len() != 1 {
                        return Err(fail(format!(
                            "{} int32 biases for {channels} output channels",
                            codes.len()
                        )));
                    }
                    let mut bias = Vec::with_capacity(channels);
                    for c in 0..channels {
                        let want = f64::from(inp.scale) * f64::from(weight_scales[c]);
                        let have = f64::from(*scales.get(c).or(scales.first()).unwrap_or(&0.0));
                        if (have - want).abs() > 1e-4 * want {
                            return Err(fail(format!(
                                "the bias of channel {c} has scale {have}, not the input's \
                                 times the weights' ({want}); TFLite's kernels assume it is"
                            )));
                        }
                        let q = *codes.get(c).or(codes.first()).unwrap_or(&0);
                        let real = (q as f32) * have as f32;
                        if (real - b[c]).abs() > 1e-5 * b[c].abs().max(f32::MIN_POSITIVE) {
                            return Err(fail(format!(
                                "the bias of channel {c} ({}) is not the file's int32 bias \
                                 ({q} at scale {have}): it was changed on import",
                                b[c]
                            )));
                        }
                        bias.push(q);
                    }
                    bias
                }
                None => quantize_bias(b, inp.scale, &weight_scales),
            },
            _ => Vec::new(),
        };
        out_layers.push(Some(QLayer {
            weights,
            weight_scales,
            bias,
        }));
    }
    Ok(Quantized {
        values,
        layers: out_layers,
        estimator: super::calibrate::RangeEstimator::MinMax,
    })
}

/// Put a file's int8 weights (from [`from_file`] on a weights-only file) into `q`, a
/// quantization of `g` (the imported graph, or a pruning of it) calibrated by paoding: every
/// output channel of an int8 layer whose weights are exactly a file scale's codes (the
/// channels surgery left alone) takes those codes and that scale instead of paoding's
/// rounding; its biases are quantized at its input's scale times the channels' scales.
pub fn apply_file_weights(g: &Graph, q: &mut Quantized, file: &[Option<QLayer>]) {
    for (i, node) in g.nodes.iter().enumerate() {
        let (Some(Some(f)), Some(inp)) = (file.get(i), q.values[node.inputs[0]]) else {
            continue;
        };
        let Some(Some(layer)) = q.layers.get_mut(i) else {
            continue;
        };
        let (w, b, channels) = match &node.op {
            Op::Dense(d) => (&d.weights, &d.bias, d.units),
            Op::Conv2d(c) => (&c.weights, &c.bias, c.out_channels),
            _ => continue,
        };
        let per = w.len() / channels.max(1);
        if layer.weights.len() != w.len() || layer.weight_scales.len() != channels {
            continue;
        }
        let mut candidates = f.weight_scales.clone();
        candidates.sort_by(f32::total_cmp);
        candidates.dedup();
        for (c, row) in w.chunks(per.max(1)).take(channels).enumerate() {
            if let Some((codes, scales)) = candidates
                .iter()
                .find_map(|&s| recover_codes(row, 1, &[s]).ok())
            {
                layer.weights[c * per..(c + 1) * per].copy_from_slice(&codes);
                layer.weight_scales[c] = scales[0];
            }
        }
        layer.bias = quantize_bias(b, inp.scale, &layer.weight_scales);
    }
}

/// The int8 form of `pruned` (a pruning of `original`: node `i` is node `i`, value `v` is
/// value `v`) from `file`, the file's int8 form of `original`: every activation keeps the
/// file's parameters (the refit reproduces the original's activations, so their ranges
/// hold); every layer output channel whose weights surgery left as they were keeps the
/// file's codes and scale; every other channel (a merge or the refit changed its weights) is
/// quantized again, symmetric per channel as TFLite's converter does. Biases are quantized
/// at the input's scale times each channel's weight scale (which gives the file's code back
/// for an unchanged channel). Returns the form and the number of layers with a channel
/// quantized again. `None` if `pruned` is not a pruning of `original`.
pub fn for_pruned(
    original: &Graph,
    file: &Quantized,
    pruned: &Graph,
) -> Option<(Quantized, usize)> {
    if pruned.values.len() != original.values.len()
        || pruned.nodes.len() != original.nodes.len()
        || file.values.len() != original.values.len()
        || file.layers.len() != original.nodes.len()
    {
        return None;
    }
    let mut layers = Vec::with_capacity(pruned.nodes.len());
    let mut changed = 0;
    for (i, node) in pruned.nodes.iter().enumerate() {
        let (w, b, channels) = match &node.op {
            Op::Dense(d) => (&d.weights, &d.bias, d.units),
            Op::Conv2d(c) => (&c.weights, &c.bias, c.out_channels),
            _ => {
                layers.push(None);
                continue;
            }
        };
        let (Some(f), Some(inp)) = (&file.layers[i], file.values[node.inputs[0]]) else {
            layers.push(file.layers[i].clone());
            continue;
        };
        if original.nodes[i].op == node.op {
            layers.push(Some(f.clone()));
            continue;
        }
        let per = w.len() / channels.max(1);
        let mut requantized = false;
        let mut candidates = f.weight_scales.clone();
        candidates.sort_by(f32::total_cmp);
        candidates.dedup();
        let mut weights = Vec::with_capacity(w.len());
        let mut weight_scales = Vec::with_capacity(channels);
        for row in w.chunks(per.max(1)).take(channels) {
            // The file's scale that represents the row exactly, if surgery left it as it was.
            let kept = candidates
                .iter()
                .find_map(|&s| recover_codes(row, 1, &[s]).ok());
            let (codes, scale) = match kept {
                Some((codes, scales)) => (codes, scales[0]),
                None => {
                    requantized = true;
                    let s = super::params::channel_scales(row, 1);
                    (super::params::quantize_weights(row, &s), s[0])
                }
            };
            weights.extend(codes);
            weight_scales.push(scale);
        }
        changed += usize::from(requantized);
        layers.push(Some(QLayer {
            weights,
            bias: quantize_bias(b, inp.scale, &weight_scales),
            weight_scales,
        }));
    }
    Some((
        Quantized {
            values: file.values.clone(),
            layers,
            estimator: file.estimator,
        },
        changed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, Dense};

    fn dense(weights: Vec<f32>, bias: Vec<f32>) -> Graph {
        let mut g = Graph::new("x", alloc::vec![1, 2]);
        g.output = g
            .push(
                "fc",
                Op::Dense(Dense {
                    units: 2,
                    inputs: 2,
                    weights,
                    bias,
                    activation: Activation::Relu,
                }),
                &[g.input],
            )
            .unwrap_or_default();
        g
    }

    #[test]
    fn codes_are_recovered_exactly_and_changed_weights_refused() {
        let s = [0.013f32, 0.5];
        let w: Vec<f32> = [(3, 0), (-128, 0), (127, 1), (-7, 1)]
            .iter()
            .map(|&(q, c): &(i32, usize)| q as f32 * s[c])
            .collect();
        let (codes, scales) = recover_codes(&w, 2, &s).unwrap_or_default();
        assert_eq!(codes, [3, -128, 127, -7]);
        assert_eq!(scales, s);
        let mut bent = w.clone();
        bent[0] *= 1.0001;
        assert!(recover_codes(&bent, 2, &s).is_err());
        assert!(recover_codes(&w, 2, &[0.013, 0.5, 1.0]).is_err());
    }

    #[test]
    fn biases_are_the_file_s_at_the_right_scale() {
        let (si, sw) = (0.5f32, 0.25f32);
        let g = dense(
            alloc::vec![sw, 2.0 * sw, -sw, 0.0],
            alloc::vec![10.0 * si * sw, -3.0 * si * sw],
        );
        let p = QParams {
            scale: si,
            zero_point: 3,
        };
        let values = alloc::vec![Some(p), Some(p)];
        let file = FileLayer {
            scales: alloc::vec![sw],
            bias: Some((alloc::vec![10, -3], alloc::vec![si * sw])),
        };
        let q = from_file(&g, values.clone(), &[Some(file.clone())]).map_err(|e| e.reason);
        let layer = q.as_ref().ok().and_then(|q| q.layers[0].clone());
        assert_eq!(
            layer.map(|l| (l.weights, l.bias)),
            Some((alloc::vec![1, 2, -1, 0], alloc::vec![10, -3]))
        );
        // A bias scale that is not the input's times the weights' is refused.
        let wrong = FileLayer {
            bias: Some((alloc::vec![10, -3], alloc::vec![si * sw * 2.0])),
            ..file
        };
        let e = from_file(&g, values, &[Some(wrong)]).err().map(|e| e.node);
        assert_eq!(e, Some(0));
    }

    #[test]
    fn a_pruning_keeps_the_file_s_codes_where_surgery_left_the_weights() {
        let (si, sw) = (0.5f32, 0.25f32);
        let g = dense(alloc::vec![sw, 2.0 * sw, -sw, 0.0], alloc::vec![0.0, 0.0]);
        let p = QParams {
            scale: si,
            zero_point: 0,
        };
        let file = FileLayer {
            scales: alloc::vec![sw],
            bias: None,
        };
        let q = from_file(&g, alloc::vec![Some(p), Some(p)], &[Some(file)]).map_err(|e| e.reason);
        let Ok(q) = q else {
            panic!("{q:?}");
        };
        // The refit changed the second row; the first is the file's.
        let mut pruned = g.clone();
        if let Op::Dense(d) = &mut pruned.nodes[0].op {
            d.weights[3] = 0.3;
        }
        let (qp, changed) = for_pruned(&g, &q, &pruned).unwrap_or_else(|| panic!("a pruning"));
        assert_eq!(changed, 1);
        let layer = qp.layers[0].clone().unwrap_or_else(|| panic!("int8"));
        assert_eq!(&layer.weights[..2], &[1, 2]);
        assert_eq!(layer.weight_scales[0], sw);
        // Row 2 quantized again: max |w| = 0.3 is code 127.
        assert_eq!(layer.weights[3], 127);
        assert!((layer.weight_scales[1] - 0.3 / 127.0).abs() < 1e-9);
        // Unchanged, nothing is quantized again.
        assert_eq!(for_pruned(&g, &q, &g).map(|(_, c)| c), Some(0));
    }
}
