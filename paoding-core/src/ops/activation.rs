//! Softmax (the element-wise activations live on [`crate::ir::Activation`]).

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};

pub(super) fn softmax_shape(node: &str, axis: usize, input: &[usize]) -> Result<Vec<usize>> {
    if axis == 0 || axis >= input.len() {
        return Err(shape_error(
            node,
            format!("softmax axis {axis} is not a non-batch axis of {input:?}"),
        ));
    }
    Ok(input.to_vec())
}

pub(super) fn softmax_eval(axis: usize, shape: &[usize], input: &[f32], out: &mut [f32]) {
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let max = (0..len)
                .map(|k| input[at(k)])
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for k in 0..len {
                let e = libm::expf(input[at(k)] - max);
                out[at(k)] = e;
                sum += e;
            }
            for k in 0..len {
                out[at(k)] /= sum;
            }
        }
    }
}
