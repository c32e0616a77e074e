//! Fully connected layers.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};
use crate::ir::{Activation, Dense};

pub(super) fn output_shape(node: &str, d: &Dense, input: &[usize]) -> Result<Vec<usize>> {
    if input.len() != 2 {
        return Err(shape_error(
            node,
            format!("Dense expects a [1, {}] input, got {input:?}", d.inputs),
        ));
    }
    if input[1] != d.inputs {
        return Err(shape_error(
            node,
            format!("Dense has {} inputs but receives {input:?}", d.inputs),
        ));
    }
    if d.weights.len() != d.units * d.inputs || d.bias.len() != d.units || d.units == 0 {
        return Err(shape_error(
            node,
            format!(
                "Dense {}x{} holds {} weights and {} biases",
                d.units,
                d.inputs,
                d.weights.len(),
                d.bias.len()
            ),
        ));
    }
    Ok(alloc::vec![1, d.units])
}

pub(super) fn eval(d: &Dense, activation: Activation, input: &[f32], out: &mut [f32]) {
    for ((o, row), &b) in out
        .iter_mut()
        .zip(d.weights.chunks_exact(d.inputs))
        .zip(&d.bias)
    {
        *o = activation.apply(dot(row, input) + b);
    }
}

/// Dot product with eight independent partial sums, so the compiler can vectorise it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
