//! 2-D convolution over NCHW, grouped and depthwise included.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};
use crate::ir::{Activation, Conv2d};

/// Output height and width of a window of `kernel` (already dilated) sliding with `stride`
/// over `size` padded by `pad_before + pad_after`; `None` if the window never fits.
pub fn conv_output_hw(
    size: usize,
    kernel: usize,
    stride: usize,
    pad_before: usize,
    pad_after: usize,
) -> Option<usize> {
    let padded = size + pad_before + pad_after;
    if kernel == 0 || stride == 0 || padded < kernel {
        return None;
    }
    Some((padded - kernel) / stride + 1)
}

fn dilated(kernel: usize, dilation: usize) -> usize {
    dilation * (kernel.max(1) - 1) + 1
}

pub(super) fn output_shape(node: &str, c: &Conv2d, input: &[usize]) -> Result<Vec<usize>> {
    if input.len() != 4 {
        return Err(shape_error(
            node,
            format!("Conv2d expects an NCHW input, got {input:?}"),
        ));
    }
    if input[1] != c.in_channels {
        return Err(shape_error(
            node,
            format!(
                "Conv2d has {} input channels but receives {input:?}",
                c.in_channels
            ),
        ));
    }
    if c.groups == 0
        || !c.in_channels.is_multiple_of(c.groups)
        || !c.out_channels.is_multiple_of(c.groups)
        || c.out_channels == 0
    {
        return Err(shape_error(
            node,
            format!(
                "{} groups do not divide {} input and {} output channels",
                c.groups, c.in_channels, c.out_channels
            ),
        ));
    }
    if c.weights.len() != c.out_channels * c.filter_len() || c.bias.len() != c.out_channels {
        return Err(shape_error(
            node,
            format!(
                "Conv2d {}x{}x{:?} holds {} weights and {} biases",
                c.out_channels,
                c.group_inputs(),
                c.kernel,
                c.weights.len(),
                c.bias.len()
            ),
        ));
    }
    if c.dilation.contains(&0) {
        return Err(shape_error(node, "dilation must be at least 1"));
    }
    let h = conv_output_hw(
        input[2],
        dilated(c.kernel[0], c.dilation[0]),
        c.stride[0],
        c.padding[0],
        c.padding[2],
    );
    let w = conv_output_hw(
        input[3],
        dilated(c.kernel[1], c.dilation[1]),
        c.stride[1],
        c.padding[1],
        c.padding[3],
    );
    match (h, w) {
        (Some(h), Some(w)) => Ok(alloc::vec![1, c.out_channels, h, w]),
        _ => Err(shape_error(
            node,
            format!(
                "kernel {:?} does not fit input {input:?} with padding {:?}",
                c.kernel, c.padding
            ),
        )),
    }
}

pub(super) fn eval(
    c: &Conv2d,
    activation: Activation,
    in_shape: &[usize],
    input: &[f32],
    out_shape: &[usize],
    out: &mut [f32],
) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let [kh, kw] = c.kernel;
    let gi = c.group_inputs();
    let outs_per_group = c.out_channels / c.groups;
    // Weight-stationary: each weight sweeps the output rows it reaches, so the innermost loop
    // runs over contiguous output columns (no per-element bounds arithmetic).
    for oc in 0..c.out_channels {
        let plane_out = &mut out[oc * oh * ow..(oc + 1) * oh * ow];
        plane_out.fill(c.bias[oc]);
        let first_in = (oc / outs_per_group) * gi;
        let filter = &c.weights[oc * c.filter_len()..(oc + 1) * c.filter_len()];
        for g in 0..gi {
            let plane = &input[(first_in + g) * ih * iw..(first_in + g + 1) * ih * iw];
            for ky in 0..kh {
                let dy = ky * c.dilation[0];
                for kx in 0..kw {
                    let w = filter[(g * kh + ky) * kw + kx];
                    let dx = kx * c.dilation[1];
                    let (x_lo, x_hi) = valid_range(ow, c.stride[1], dx, c.padding[1], iw);
                    if x_lo >= x_hi {
                        continue;
                    }
                    for oy in 0..oh {
                        let y = oy * c.stride[0] + dy;
                        if y < c.padding[0] || y - c.padding[0] >= ih {
                            continue;
                        }
                        let row_in = &plane[(y - c.padding[0]) * iw..(y - c.padding[0] + 1) * iw];
                        let row_out = &mut plane_out[oy * ow..(oy + 1) * ow];
                        if c.stride[1] == 1 {
                            let start = x_lo + dx - c.padding[1];
                            for (o, &x) in row_out[x_lo..x_hi].iter_mut().zip(&row_in[start..]) {
                                *o += w * x;
                            }
                        } else {
                            for ox in x_lo..x_hi {
                                row_out[ox] += w * row_in[ox * c.stride[1] + dx - c.padding[1]];
                            }
                        }
                    }
                }
            }
        }
        if activation != Activation::Identity {
            plane_out.iter_mut().for_each(|v| *v = activation.apply(*v));
        }
    }
}

/// Output columns `[lo, hi)` whose input column `o * stride + offset - pad` lies in `[0, size)`.
fn valid_range(
    outputs: usize,
    stride: usize,
    offset: usize,
    pad: usize,
    size: usize,
) -> (usize, usize) {
    let lo = pad.saturating_sub(offset).div_ceil(stride);
    // o * stride + offset - pad < size  <=>  o * stride < size + pad - offset
    let hi = if size + pad > offset {
        (size + pad - offset).div_ceil(stride).min(outputs)
    } else {
        0
    };
    (lo.min(hi), hi)
}
