//! Max, average and global average pooling over NCHW.

use alloc::format;
use alloc::vec::Vec;

use super::conv::conv_output_hw;
use crate::error::{shape_error, Result};
use crate::ir::Pool;

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Kind {
    Max,
    Average,
}

pub(super) fn output_shape(node: &str, p: &Pool, input: &[usize]) -> Result<Vec<usize>> {
    if input.len() != 4 {
        return Err(shape_error(
            node,
            format!("pooling expects an NCHW input, got {input:?}"),
        ));
    }
    if p.padding[0] >= p.kernel[0]
        || p.padding[2] >= p.kernel[0]
        || p.padding[1] >= p.kernel[1]
        || p.padding[3] >= p.kernel[1]
    {
        // A window made only of padding would have no value to pool.
        return Err(shape_error(
            node,
            format!(
                "padding {:?} must be smaller than the window {:?}",
                p.padding, p.kernel
            ),
        ));
    }
    let h = conv_output_hw(
        input[2],
        p.kernel[0],
        p.stride[0],
        p.padding[0],
        p.padding[2],
    );
    let w = conv_output_hw(
        input[3],
        p.kernel[1],
        p.stride[1],
        p.padding[1],
        p.padding[3],
    );
    match (h, w) {
        (Some(h), Some(w)) => Ok(alloc::vec![1, input[1], h, w]),
        _ => Err(shape_error(
            node,
            format!("window {:?} does not fit input {input:?}", p.kernel),
        )),
    }
}

pub(super) fn global_shape(node: &str, input: &[usize]) -> Result<Vec<usize>> {
    if input.len() != 4 {
        return Err(shape_error(
            node,
            format!("GlobalAveragePool expects an NCHW input, got {input:?}"),
        ));
    }
    Ok(alloc::vec![1, input[1], 1, 1])
}

pub(super) fn eval(
    p: &Pool,
    kind: Kind,
    in_shape: &[usize],
    input: &[f32],
    out_shape: &[usize],
    out: &mut [f32],
) {
    let (ih, iw) = (in_shape[2] as isize, in_shape[3] as isize);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    for c in 0..in_shape[1] {
        let plane = &input[c * (ih * iw) as usize..(c + 1) * (ih * iw) as usize];
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * p.stride[0]) as isize - p.padding[0] as isize;
                let x0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
                let (mut acc, mut count) = (
                    if kind == Kind::Max {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    },
                    0usize,
                );
                for y in y0.max(0)..(y0 + p.kernel[0] as isize).min(ih) {
                    for x in x0.max(0)..(x0 + p.kernel[1] as isize).min(iw) {
                        let v = plane[(y * iw + x) as usize];
                        acc = if kind == Kind::Max {
                            acc.max(v)
                        } else {
                            acc + v
                        };
                        count += 1;
                    }
                }
                out[(c * oh + oy) * ow + ox] = match kind {
                    Kind::Max => acc,
                    Kind::Average if p.count_include_pad => {
                        acc / (p.kernel[0] * p.kernel[1]) as f32
                    }
                    Kind::Average => acc / count as f32,
                };
            }
        }
    }
}

pub(super) fn global_eval(in_shape: &[usize], input: &[f32], out: &mut [f32]) {
    let plane = in_shape[2] * in_shape[3];
    for (o, chunk) in out.iter_mut().zip(input.chunks_exact(plane)) {
        *o = chunk.iter().sum::<f32>() / plane as f32;
    }
}
