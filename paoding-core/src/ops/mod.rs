//! Operator families: one module each, with shape inference, parameter count, MACs and the
//! reference (f32) evaluation. Shapes are checked here once; evaluation then trusts them.

mod activation;
mod arith;
mod conv;
mod dense;
mod layout;
mod pool;

use alloc::format;
use alloc::vec::Vec;

use crate::error::{shape_error, Result};
use crate::ir::{Activation, Op};

pub use conv::conv_output_hw;

/// Shape of the value `op` produces from inputs of the given shapes, or why it cannot.
pub fn output_shape(node: &str, op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>> {
    let arity = match op {
        Op::Add => 2,
        Op::Concat { .. } => usize::MAX,
        _ => 1,
    };
    if arity != usize::MAX && inputs.len() != arity {
        return Err(shape_error(
            node,
            format!("{} takes {arity} input(s), got {}", op.kind(), inputs.len()),
        ));
    }
    if inputs.is_empty() {
        return Err(shape_error(
            node,
            format!("{} needs at least one input", op.kind()),
        ));
    }
    match op {
        Op::Dense(d) => dense::output_shape(node, d, inputs[0]),
        Op::Conv2d(c) => conv::output_shape(node, c, inputs[0]),
        Op::BatchNorm(b) => arith::batch_norm_shape(node, b, inputs[0]),
        Op::Activation(_) => Ok(inputs[0].to_vec()),
        Op::Softmax { axis } => activation::softmax_shape(node, *axis, inputs[0]),
        Op::MaxPool(p) | Op::AveragePool(p) => pool::output_shape(node, p, inputs[0]),
        Op::GlobalAveragePool => pool::global_shape(node, inputs[0]),
        Op::Add => arith::add_shape(node, inputs[0], inputs[1]),
        Op::Concat { axis } => layout::concat_shape(node, *axis, inputs),
        Op::Reshape { shape } => layout::reshape_shape(node, shape, inputs[0]),
        Op::Transpose { perm } => layout::transpose_shape(node, perm, inputs[0]),
        Op::Pad { pads, .. } => layout::pad_shape(node, pads, inputs[0]),
    }
}

/// Parameters the operator stores (weights, biases, normalisation terms).
pub fn param_count(op: &Op) -> usize {
    match op {
        Op::Dense(d) => d.weights.len() + d.bias.len(),
        Op::Conv2d(c) => c.weights.len() + c.bias.len(),
        Op::BatchNorm(b) => b.scale.len() + b.shift.len(),
        _ => 0,
    }
}

/// Multiply-accumulates to evaluate the operator once. Dense and convolution count one per
/// weight use; batch norm one per element; pooling one per element summed or compared;
/// other element-wise and layout operators count none.
pub fn macs(op: &Op, input: &[usize], output: &[usize]) -> u64 {
    let out_len: usize = output.iter().product();
    let in_len: usize = input.iter().product();
    (match op {
        Op::Dense(d) => d.units * d.inputs,
        Op::Conv2d(c) => out_len * c.filter_len(),
        Op::BatchNorm(_) => out_len,
        Op::MaxPool(p) | Op::AveragePool(p) => out_len * p.kernel[0] * p.kernel[1],
        Op::GlobalAveragePool => in_len,
        _ => 0,
    }) as u64
}

/// Evaluate one node: `inputs` match `in_shapes`, `out` has the output's length.
/// Shapes must have been checked by [`output_shape`] (the graph's `check`).
pub fn eval(
    op: &Op,
    in_shapes: &[&[usize]],
    inputs: &[&[f32]],
    out_shape: &[usize],
    out: &mut [f32],
) {
    let fused = op.fused_activation().unwrap_or_default();
    eval_with(op, fused, in_shapes, inputs, out_shape, out)
}

/// Like [`eval`], but a dense or convolution layer skips its fused activation: the
/// pre-activations that pruning compensates and refits against.
pub fn eval_pre_activation(
    op: &Op,
    in_shapes: &[&[usize]],
    inputs: &[&[f32]],
    out_shape: &[usize],
    out: &mut [f32],
) {
    eval_with(op, Activation::Identity, in_shapes, inputs, out_shape, out)
}

fn eval_with(
    op: &Op,
    fused: Activation,
    in_shapes: &[&[usize]],
    inputs: &[&[f32]],
    out_shape: &[usize],
    out: &mut [f32],
) {
    match op {
        Op::Dense(d) => dense::eval(d, fused, inputs[0], out),
        Op::Conv2d(c) => conv::eval(c, fused, in_shapes[0], inputs[0], out_shape, out),
        Op::BatchNorm(b) => arith::batch_norm_eval(b, in_shapes[0], inputs[0], out),
        Op::Activation(a) => {
            for (o, &x) in out.iter_mut().zip(inputs[0]) {
                *o = a.apply(x);
            }
        }
        Op::Softmax { axis } => activation::softmax_eval(*axis, in_shapes[0], inputs[0], out),
        Op::MaxPool(p) => pool::eval(p, pool::Kind::Max, in_shapes[0], inputs[0], out_shape, out),
        Op::AveragePool(p) => pool::eval(
            p,
            pool::Kind::Average,
            in_shapes[0],
            inputs[0],
            out_shape,
            out,
        ),
        Op::GlobalAveragePool => pool::global_eval(in_shapes[0], inputs[0], out),
        Op::Add => {
            for ((o, &a), &b) in out.iter_mut().zip(inputs[0]).zip(inputs[1]) {
                *o = a + b;
            }
        }
        Op::Concat { axis } => layout::concat_eval(*axis, in_shapes, inputs, out),
        Op::Reshape { .. } => out.copy_from_slice(inputs[0]),
        Op::Transpose { perm } => layout::transpose_eval(perm, in_shapes[0], inputs[0], out),
        Op::Pad { pads, value } => {
            layout::pad_eval(pads, *value, in_shapes[0], inputs[0], out_shape, out)
        }
    }
}
