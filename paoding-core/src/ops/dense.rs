//! Fully connected layers.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};
use crate::ir::Dense;

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

pub(super) fn eval(d: &Dense, input: &[f32], out: &mut [f32]) {
    for ((o, row), &b) in out
        .iter_mut()
        .zip(d.weights.chunks_exact(d.inputs))
        .zip(&d.bias)
    {
        let dot: f32 = row.iter().zip(input).map(|(w, x)| w * x).sum();
        *o = d.activation.apply(dot + b);
    }
}
