//! Operators that move values without computing: Reshape, Transpose, Concat, Pad.

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = alloc::vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

pub(super) fn reshape_shape(node: &str, shape: &[usize], input: &[usize]) -> Result<Vec<usize>> {
    let (from, to) = (
        input.iter().product::<usize>(),
        shape.iter().product::<usize>(),
    );
    if from != to {
        return Err(shape_error(
            node,
            format!("cannot reshape {input:?} ({from} values) to {shape:?} ({to})"),
        ));
    }
    Ok(shape.to_vec())
}

pub(super) fn transpose_shape(node: &str, perm: &[usize], input: &[usize]) -> Result<Vec<usize>> {
    let mut seen = alloc::vec![false; input.len()];
    if perm.len() != input.len()
        || perm
            .iter()
            .any(|&p| p >= input.len() || core::mem::replace(&mut seen[p], true))
    {
        return Err(shape_error(
            node,
            format!("{perm:?} is not a permutation of the axes of {input:?}"),
        ));
    }
    if perm[0] != 0 {
        return Err(shape_error(node, "a transpose may not move the batch axis"));
    }
    Ok(perm.iter().map(|&p| input[p]).collect())
}

pub(super) fn transpose_eval(perm: &[usize], in_shape: &[usize], input: &[f32], out: &mut [f32]) {
    let out_shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
    let in_strides = strides(in_shape);
    // Stride in the input of a step along each output axis.
    let step: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let mut index = alloc::vec![0usize; out_shape.len()];
    for o in out.iter_mut() {
        *o = input[index.iter().zip(&step).map(|(i, s)| i * s).sum::<usize>()];
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < out_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

pub(super) fn concat_shape(node: &str, axis: usize, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let first = inputs[0];
    if axis == 0 || axis >= first.len() {
        return Err(shape_error(
            node,
            format!("concat axis {axis} is not a non-batch axis of {first:?}"),
        ));
    }
    let mut shape = first.to_vec();
    for other in &inputs[1..] {
        let same_elsewhere = other.len() == first.len()
            && (0..first.len()).all(|i| i == axis || other[i] == first[i]);
        if !same_elsewhere {
            return Err(shape_error(
                node,
                format!("cannot concatenate {first:?} and {other:?} on axis {axis}"),
            ));
        }
        shape[axis] += other[axis];
    }
    Ok(shape)
}

pub(super) fn concat_eval(axis: usize, in_shapes: &[&[usize]], inputs: &[&[f32]], out: &mut [f32]) {
    let outer: usize = in_shapes[0][..axis].iter().product();
    let mut written = 0;
    for o in 0..outer {
        for (shape, data) in in_shapes.iter().zip(inputs) {
            let block: usize = shape[axis..].iter().product();
            out[written..written + block].copy_from_slice(&data[o * block..(o + 1) * block]);
            written += block;
        }
    }
}

pub(super) fn pad_shape(
    node: &str,
    pads: &[(usize, usize)],
    input: &[usize],
) -> Result<Vec<usize>> {
    if pads.len() != input.len() || pads[0] != (0, 0) {
        return Err(shape_error(
            node,
            format!("padding {pads:?} does not fit {input:?} (the batch axis cannot be padded)"),
        ));
    }
    Ok(input
        .iter()
        .zip(pads)
        .map(|(d, (a, b))| d + a + b)
        .collect())
}

pub(super) fn pad_eval(
    pads: &[(usize, usize)],
    value: f32,
    in_shape: &[usize],
    input: &[f32],
    out_shape: &[usize],
    out: &mut [f32],
) {
    out.fill(value);
    let out_strides = strides(out_shape);
    let mut index = alloc::vec![0usize; in_shape.len()];
    for &x in input {
        let at: usize = index
            .iter()
            .zip(pads)
            .zip(&out_strides)
            .map(|((i, p), s)| (i + p.0) * s)
            .sum();
        out[at] = x;
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < in_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}
