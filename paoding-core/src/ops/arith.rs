//! Residual Add and stand-alone batch normalisation.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};
use crate::ir::BatchNorm;

pub(super) fn add_shape(node: &str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    if a != b {
        return Err(shape_error(
            node,
            format!("Add needs equal shapes, got {a:?} and {b:?}"),
        ));
    }
    Ok(a.to_vec())
}

pub(super) fn batch_norm_shape(node: &str, b: &BatchNorm, input: &[usize]) -> Result<Vec<usize>> {
    let channels = input.get(1).copied().unwrap_or(0);
    let stats = b
        .stats
        .as_ref()
        .map_or([channels; 2], |(m, v)| [m.len(), v.len()]);
    let sizes = [b.scale.len(), b.shift.len(), stats[0], stats[1]];
    if input.len() < 2 || sizes.iter().any(|&n| n != channels) {
        return Err(shape_error(
            node,
            format!("BatchNorm with {sizes:?} terms cannot normalise {input:?}"),
        ));
    }
    Ok(input.to_vec())
}

pub(super) fn batch_norm_eval(b: &BatchNorm, shape: &[usize], input: &[f32], out: &mut [f32]) {
    let inner: usize = shape[2..].iter().product();
    for (c, (o, x)) in out
        .chunks_exact_mut(inner)
        .zip(input.chunks_exact(inner))
        .enumerate()
    {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = x * b.scale[c] + b.shift[c];
        }
    }
}
