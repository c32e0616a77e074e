//! Input gradients: the backward pass of the reference interpreter.
//!
//! [`forward`] evaluates a checked graph on one sample and keeps every value; [`backward`]
//! then propagates the gradient of a scalar loss, seeded on any values (the output, the
//! logits, the inputs of batch norms …), back to the graph input. Every operator of the IR is
//! covered: Dense, Conv2d (groups, depthwise, stride, padding, dilation), MaxPool,
//! AveragePool (both `count_include_pad` semantics), GlobalAveragePool, fused or stand-alone
//! activations, BatchNorm, Add, Concat, Reshape, Transpose, Pad and Softmax.
//!
//! Activation derivatives are taken from the activation's output (ReLU: `y > 0`; Clip:
//! `min < y < max`; Sigmoid: `y (1 - y)`; Tanh: `1 - y²`), so no pre-activation is stored.
//! At a kink (ReLU at 0, a max-pool tie) the gradient is a valid sub-gradient.
//!
//! ```
//! use paoding_core::grad;
//! use paoding_core::ir::{Activation, Dense, Graph, Op};
//!
//! let mut g = Graph::new("x", vec![1, 2]);
//! g.output = g.push("fc", Op::Dense(Dense {
//!     units: 2, inputs: 2, weights: vec![1.0, 2.0, 3.0, 4.0], bias: vec![0.0; 2],
//!     activation: Activation::Identity,
//! }), &[g.input])?;
//! // d(y0 + y1)/dx = column sums of W.
//! assert_eq!(grad::input_gradient(&g, &[0.5, -1.0], &[1.0, 1.0])?, vec![4.0, 6.0]);
//! # Ok::<(), paoding_core::Error>(())
//! ```

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::ir::{Activation, Conv2d, Graph, Op, Pool, ValueId};
use crate::ops;

/// Evaluate the graph on one sample and keep every value, indexed by value id.
pub fn forward(g: &Graph, x: &[f32]) -> Result<Vec<Vec<f32>>> {
    forward_batch(g, x, 1)
}

/// Evaluate the graph on `batch` samples at once (`xs` holds them one after the other) and
/// keep every value, each as `batch` samples one after the other.
///
/// Dense layers and convolutions run as matrix products over the batch (much faster than
/// sample by sample on small images); every sample's result is bit-identical whatever the
/// batch it is evaluated in.
pub fn forward_batch(g: &Graph, xs: &[f32], batch: usize) -> Result<Vec<Vec<f32>>> {
    let expected = g.values[g.input].len() * batch;
    if xs.len() != expected || batch == 0 {
        return Err(Error::InputLength {
            got: xs.len(),
            expected,
            shape: g.values[g.input].shape.clone(),
        });
    }
    let mut values: Vec<Vec<f32>> = alloc::vec![Vec::new(); g.values.len()];
    values[g.input] = xs.to_vec();
    let mut scratch = Scratch::default();
    for (i, node) in g.nodes.iter().enumerate() {
        let inputs: Vec<&[f32]> = node.inputs.iter().map(|&v| values[v].as_slice()).collect();
        let out = node_batch(g, i, &inputs, batch, false, &mut scratch);
        values[node.output] = out;
    }
    Ok(values)
}

/// Node `i` of `g` on `batch` samples: `inputs` are its input values, each `batch` samples
/// back to back; `pre_activation` skips a dense or convolution layer's fused activation.
/// Dense layers and convolutions run as one matrix product over the batch, so every sample's
/// result is the same whatever the batch.
pub fn eval_node_batch(
    g: &Graph,
    i: usize,
    inputs: &[&[f32]],
    batch: usize,
    pre_activation: bool,
) -> Vec<f32> {
    node_batch(g, i, inputs, batch, pre_activation, &mut Scratch::default())
}

fn node_batch(
    g: &Graph,
    i: usize,
    inputs: &[&[f32]],
    batch: usize,
    pre_activation: bool,
    scratch: &mut Scratch,
) -> Vec<f32> {
    let node = &g.nodes[i];
    let out_shape = g.shape(node.output);
    let out_len = g.values[node.output].len();
    let mut out = alloc::vec![0.0f32; out_len * batch];
    let in_shapes: Vec<&[usize]> = node.inputs.iter().map(|&i| g.shape(i)).collect();
    let activation = |a: Activation| {
        if pre_activation {
            Activation::Identity
        } else {
            a
        }
    };
    match &node.op {
        Op::Dense(d) => {
            gemm_ex(
                batch,
                d.units,
                d.inputs,
                Mat::Plain(inputs[0]),
                Mat::Transposed(&d.weights),
                &mut out,
            );
            let act = activation(d.activation);
            for row in out.chunks_exact_mut(d.units) {
                for (o, &b) in row.iter_mut().zip(&d.bias) {
                    *o = act.apply(*o + b);
                }
            }
        }
        Op::Conv2d(c) if conv_uses_gemm(c) => {
            conv_forward_batch(
                c,
                activation(c.activation),
                in_shapes[0],
                inputs[0],
                batch,
                out_shape,
                &mut out,
                scratch,
            );
        }
        _ => {
            let in_lens: Vec<usize> = node.inputs.iter().map(|&i| g.values[i].len()).collect();
            for (s, out) in out.chunks_exact_mut(out_len).enumerate() {
                let sample: Vec<&[f32]> = inputs
                    .iter()
                    .zip(&in_lens)
                    .map(|(x, &len)| &x[s * len..(s + 1) * len])
                    .collect();
                if pre_activation {
                    ops::eval_pre_activation(&node.op, &in_shapes, &sample, out_shape, out);
                } else {
                    ops::eval(&node.op, &in_shapes, &sample, out_shape, out);
                }
            }
        }
    }
    out
}

/// The graph's outputs over a batch (whole samples back to back), evaluated in batched
/// chunks of 128 samples so that memory stays bounded.
pub fn outputs_batch(g: &Graph, xs: &[f32]) -> Result<Vec<f32>> {
    const CHUNK: usize = 128;
    let sample = g.values[g.input].len().max(1);
    let mut out = Vec::with_capacity(xs.len() / sample * g.values[g.output].len());
    for chunk in xs.chunks(sample * CHUNK) {
        let mut values = forward_batch(g, chunk, chunk.len() / sample)?;
        out.append(&mut values[g.output]);
    }
    Ok(out)
}

/// The value the class loss reads: the input of a final Softmax (the pre-softmax logits), or
/// the output itself.
pub fn logits_value(g: &Graph) -> ValueId {
    match g.producer(g.output).map(|i| &g.nodes[i]) {
        Some(node) if matches!(node.op, Op::Softmax { .. }) => node.inputs[0],
        _ => g.output,
    }
}

/// Softmax cross-entropy of `logits` against class `target`: the loss and its gradient
/// (`softmax(logits) - onehot(target)`), computed stably.
pub fn cross_entropy(logits: &[f32], target: usize) -> (f32, Vec<f32>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut p: Vec<f32> = logits.iter().map(|&z| libm::expf(z - max)).collect();
    let sum: f32 = p.iter().sum();
    for v in &mut p {
        *v /= sum;
    }
    let loss = libm::logf(sum) + max - logits[target];
    p[target] -= 1.0;
    (loss, p)
}

/// dL/dx for a loss whose gradient with respect to the graph output is `d_output`.
pub fn input_gradient(g: &Graph, x: &[f32], d_output: &[f32]) -> Result<Vec<f32>> {
    if d_output.len() != g.values[g.output].len() {
        return Err(Error::InputLength {
            got: d_output.len(),
            expected: g.values[g.output].len(),
            shape: g.values[g.output].shape.clone(),
        });
    }
    let values = forward(g, x)?;
    Ok(backward(
        g,
        &values,
        alloc::vec![(g.output, d_output.to_vec())],
    ))
}

/// Softmax cross-entropy against class `target` on the logits ([`logits_value`]): the loss,
/// dL/dx, and the forward values (so callers can read the logits or anything else).
///
/// Whether or not the graph ends in Softmax, the loss is computed on the pre-softmax logits.
pub fn class_gradient(
    g: &Graph,
    x: &[f32],
    target: usize,
) -> Result<(f32, Vec<f32>, Vec<Vec<f32>>)> {
    let values = forward(g, x)?;
    let logits = logits_value(g);
    if target >= values[logits].len() {
        return Err(Error::Graph(alloc::format!(
            "class {target} does not exist: the model has {} outputs",
            values[logits].len()
        )));
    }
    let (loss, d) = cross_entropy(&values[logits], target);
    let dx = backward(g, &values, alloc::vec![(logits, d)]);
    Ok((loss, dx, values))
}

/// Propagate a loss gradient back to the graph input.
///
/// `values` come from [`forward`]; `seeds` are `(value, dL/dvalue)` pairs, on any values
/// (several seeds on one value add up). Returns dL/dx; values the seeds do not reach
/// contribute nothing (a zero gradient if none is reached).
pub fn backward(g: &Graph, values: &[Vec<f32>], seeds: Vec<(ValueId, Vec<f32>)>) -> Vec<f32> {
    backward_batch(g, values, 1, seeds)
}

/// [`backward`] for values from [`forward_batch`]: seeds and the result hold `batch` samples.
pub fn backward_batch(
    g: &Graph,
    values: &[Vec<f32>],
    batch: usize,
    seeds: Vec<(ValueId, Vec<f32>)>,
) -> Vec<f32> {
    let mut grads = backward_all_batch(g, values, batch, seeds, false);
    grads[g.input]
        .take()
        .unwrap_or_else(|| alloc::vec![0.0; g.values[g.input].len() * batch])
}

/// Like [`backward`], but return the gradient of every value (`None` where the loss does not
/// depend on it), when `keep_all`; otherwise only the input's survives.
pub fn backward_all(
    g: &Graph,
    values: &[Vec<f32>],
    seeds: Vec<(ValueId, Vec<f32>)>,
    keep_all: bool,
) -> Vec<Option<Vec<f32>>> {
    backward_all_batch(g, values, 1, seeds, keep_all)
}

/// [`backward_all`] for values from [`forward_batch`].
pub fn backward_all_batch(
    g: &Graph,
    values: &[Vec<f32>],
    batch: usize,
    seeds: Vec<(ValueId, Vec<f32>)>,
    keep_all: bool,
) -> Vec<Option<Vec<f32>>> {
    let mut scratch = Scratch::default();
    let mut grads: Vec<Option<Vec<f32>>> = alloc::vec![None; g.values.len()];
    for (v, d) in seeds {
        accumulate(&mut grads[v], &d);
    }
    for node in g.nodes.iter().rev() {
        let Some(dy) = (if keep_all {
            grads[node.output].clone()
        } else {
            grads[node.output].take()
        }) else {
            continue;
        };
        let out_shape = g.shape(node.output);
        let out_len = g.values[node.output].len();
        let y = &values[node.output];
        let x0 = node.inputs[0];
        let in_shape = g.shape(x0);
        let in_len = g.values[x0].len();
        // Run `f(sample, dy, dx)` on every sample into a fresh input gradient.
        let per_sample = |f: &mut SampleFn| -> Vec<f32> {
            let mut dx = alloc::vec![0.0f32; in_len * batch];
            for (s, (dy, dx)) in dy
                .chunks_exact(out_len)
                .zip(dx.chunks_exact_mut(in_len))
                .enumerate()
            {
                f(s, dy, dx);
            }
            dx
        };
        let dx = match &node.op {
            Op::Dense(d) => {
                let dz = activation_backward(d.activation, y, dy);
                let mut dx = alloc::vec![0.0f32; in_len * batch];
                gemm(batch, d.inputs, d.units, &dz, &d.weights, &mut dx);
                dx
            }
            Op::Conv2d(c) => {
                let dz = activation_backward(c.activation, y, dy);
                let mut dx = alloc::vec![0.0f32; in_len * batch];
                if conv_uses_gemm(c) {
                    conv_backward_batch(c, in_shape, out_shape, batch, &dz, &mut dx, &mut scratch);
                } else {
                    for (dz, dx) in dz.chunks_exact(out_len).zip(dx.chunks_exact_mut(in_len)) {
                        conv_backward(c, in_shape, out_shape, dz, dx);
                    }
                }
                dx
            }
            Op::BatchNorm(b) => {
                let inner: usize = out_shape[2..].iter().product::<usize>().max(1);
                let channels = b.scale.len();
                let mut dx = dy;
                for (c, chunk) in dx.chunks_exact_mut(inner).enumerate() {
                    let s = b.scale[c % channels];
                    chunk.iter_mut().for_each(|v| *v *= s);
                }
                dx
            }
            Op::Activation(a) => activation_backward(*a, y, dy),
            Op::Softmax { axis } => per_sample(&mut |s, dy, dx| {
                softmax_backward(*axis, out_shape, &y[s * out_len..(s + 1) * out_len], dy, dx)
            }),
            Op::MaxPool(p) => {
                let x = &values[x0];
                per_sample(&mut |s, dy, dx| {
                    let x = &x[s * in_len..(s + 1) * in_len];
                    max_pool_backward(p, in_shape, x, out_shape, dy, dx)
                })
            }
            Op::AveragePool(p) => {
                per_sample(&mut |_, dy, dx| average_pool_backward(p, in_shape, out_shape, dy, dx))
            }
            Op::GlobalAveragePool => {
                let plane = in_shape[2] * in_shape[3];
                let inv = 1.0 / plane as f32;
                dy.iter()
                    .flat_map(|&d| core::iter::repeat_n(d * inv, plane))
                    .collect()
            }
            Op::Add => {
                accumulate(&mut grads[node.inputs[1]], &dy);
                dy
            }
            Op::Concat { axis } => {
                let outer: usize = out_shape[..*axis].iter().product::<usize>() * batch;
                let mut read = 0;
                let mut parts: Vec<Vec<f32>> = node
                    .inputs
                    .iter()
                    .map(|&v| Vec::with_capacity(g.values[v].len() * batch))
                    .collect();
                for _ in 0..outer {
                    for (part, &v) in parts.iter_mut().zip(&node.inputs) {
                        let block: usize = g.shape(v)[*axis..].iter().product();
                        part.extend_from_slice(&dy[read..read + block]);
                        read += block;
                    }
                }
                let mut parts = parts.into_iter();
                let first = parts.next().unwrap_or_default();
                for (part, &v) in parts.zip(&node.inputs[1..]) {
                    accumulate_owned(&mut grads[v], part);
                }
                first
            }
            Op::Reshape { .. } => dy,
            Op::Transpose { perm } => {
                let mut inverse = alloc::vec![0; perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inverse[p] = i;
                }
                let op = Op::Transpose { perm: inverse };
                per_sample(&mut |_, dy, dx| ops::eval(&op, &[out_shape], &[dy], in_shape, dx))
            }
            Op::Pad { pads, .. } => {
                per_sample(&mut |_, dy, dx| pad_backward(pads, in_shape, out_shape, dy, dx))
            }
        };
        accumulate_owned(&mut grads[x0], dx);
    }
    grads
}

/// A per-sample backward step: (sample, dL/doutput, dL/dinput to fill).
type SampleFn<'a> = dyn FnMut(usize, &[f32], &mut [f32]) + 'a;

fn accumulate(slot: &mut Option<Vec<f32>>, d: &[f32]) {
    match slot {
        Some(acc) => acc.iter_mut().zip(d).for_each(|(a, &b)| *a += b),
        None => *slot = Some(d.to_vec()),
    }
}

fn accumulate_owned(slot: &mut Option<Vec<f32>>, d: Vec<f32>) {
    match slot {
        Some(acc) => acc.iter_mut().zip(&d).for_each(|(a, &b)| *a += b),
        None => *slot = Some(d),
    }
}

/// Derivative of the activation, read from its output `y`, times `dy`.
fn activation_backward(a: Activation, y: &[f32], mut dy: Vec<f32>) -> Vec<f32> {
    match a {
        Activation::Identity => {}
        Activation::Relu => dy.iter_mut().zip(y).for_each(|(d, &y)| {
            if y <= 0.0 {
                *d = 0.0;
            }
        }),
        Activation::Clip { min, max } => dy.iter_mut().zip(y).for_each(|(d, &y)| {
            if y <= min || y >= max {
                *d = 0.0;
            }
        }),
        Activation::Sigmoid => dy.iter_mut().zip(y).for_each(|(d, &y)| *d *= y * (1.0 - y)),
        Activation::Tanh => dy.iter_mut().zip(y).for_each(|(d, &y)| *d *= 1.0 - y * y),
        // A positive slope keeps the sign, so the output tells which side the input was on.
        Activation::LeakyRelu { alpha } => dy.iter_mut().zip(y).for_each(|(d, &y)| {
            if y < 0.0 {
                *d *= alpha;
            }
        }),
    }
    dy
}

/// The transpose of the forward convolution: scatter each output gradient back through the
/// weights, with the same weight-stationary loop order as the forward pass.
fn conv_backward(c: &Conv2d, in_shape: &[usize], out_shape: &[usize], dy: &[f32], dx: &mut [f32]) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let [kh, kw] = c.kernel;
    let gi = c.group_inputs();
    let outs_per_group = c.out_channels / c.groups;
    for oc in 0..c.out_channels {
        let plane_dy = &dy[oc * oh * ow..(oc + 1) * oh * ow];
        let first_in = (oc / outs_per_group) * gi;
        let filter = &c.weights[oc * c.filter_len()..(oc + 1) * c.filter_len()];
        for g in 0..gi {
            let plane = &mut dx[(first_in + g) * ih * iw..(first_in + g + 1) * ih * iw];
            for ky in 0..kh {
                let dyo = ky * c.dilation[0];
                for kx in 0..kw {
                    let w = filter[(g * kh + ky) * kw + kx];
                    let dxo = kx * c.dilation[1];
                    let (x_lo, x_hi) = valid_range(ow, c.stride[1], dxo, c.padding[1], iw);
                    if x_lo >= x_hi || w == 0.0 {
                        continue;
                    }
                    for oy in 0..oh {
                        let y = oy * c.stride[0] + dyo;
                        if y < c.padding[0] || y - c.padding[0] >= ih {
                            continue;
                        }
                        let row_dx =
                            &mut plane[(y - c.padding[0]) * iw..(y - c.padding[0] + 1) * iw];
                        let row_dy = &plane_dy[oy * ow..(oy + 1) * ow];
                        if c.stride[1] == 1 {
                            let start = x_lo + dxo - c.padding[1];
                            for (d, &g) in row_dx[start..].iter_mut().zip(&row_dy[x_lo..x_hi]) {
                                *d += w * g;
                            }
                        } else {
                            for ox in x_lo..x_hi {
                                row_dx[ox * c.stride[1] + dxo - c.padding[1]] += w * row_dy[ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `w` of `rows × cols`, transposed.
#[cfg(not(feature = "std"))]
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = alloc::vec![0.0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// An operand of [`gemm_ex`]: a row-major matrix, or one given by its row-major transpose
/// (a layer's weights read the other way round, without copying them).
#[derive(Clone, Copy)]
enum Mat<'a> {
    Plain(&'a [f32]),
    Transposed(&'a [f32]),
}

impl<'a> Mat<'a> {
    /// The elements and the (row, column) strides of a `rows × cols` operand.
    fn strided(self, rows: usize, cols: usize) -> (&'a [f32], usize, usize) {
        match self {
            Mat::Plain(x) => (&x[..rows * cols], cols, 1),
            Mat::Transposed(x) => (&x[..rows * cols], 1, rows),
        }
    }
}

/// `c = a · b` for row-major `a` (m × k), `b` (k × n) and `c` (m × n).
fn gemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_ex(m, n, k, Mat::Plain(a), Mat::Plain(b), c);
}

/// `c = a · b` for `a` (m × k), `b` (k × n) and row-major `c` (m × n).
///
/// With `std`, matrixmultiply's SGEMM (SIMD kernels chosen at run time; it packs either
/// operand from its strides, so a transposed one costs nothing more and gives the same bits);
/// without, a portable register-tiled loop. Either way every element is computed by one
/// sequence of sums over `k` that does not depend on `m`, `n` or the element's position, so a
/// sample's result never depends on the other samples of a batch (batch invariance), and the
/// same machine always gives the same bits.
fn gemm_ex(m: usize, n: usize, k: usize, a: Mat<'_>, b: Mat<'_>, c: &mut [f32]) {
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let (a, rsa, csa) = a.strided(m, k);
    let (b, rsb, csb) = b.strided(k, n);
    #[cfg(feature = "std")]
    {
        // SAFETY: `a` and `b` hold exactly m × k and k × n elements, laid out with the
        // strides given, `c` holds m × n row-major, and `c` is exclusively borrowed.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                rsa as isize,
                csa as isize,
                b.as_ptr(),
                rsb as isize,
                csb as isize,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            );
        }
    }
    #[cfg(not(feature = "std"))]
    {
        // The portable loop reads row-major operands: transpose the others once.
        fn plain(
            x: &[f32],
            rows: usize,
            cols: usize,
            column_stride: usize,
        ) -> alloc::borrow::Cow<'_, [f32]> {
            if column_stride == 1 {
                alloc::borrow::Cow::Borrowed(x)
            } else {
                alloc::borrow::Cow::Owned(transpose(x, cols, rows))
            }
        }
        let _ = (rsa, rsb);
        gemm_portable(m, n, k, &plain(a, m, k, csa), &plain(b, k, n, csb), c);
    }
}

/// The portable [`gemm`]: register-tiled in 4 × 8 blocks, one accumulator per element over
/// `k` in order, whichever path computes it.
#[cfg(any(not(feature = "std"), test))]
fn gemm_portable(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    const MR: usize = 4;
    const NR: usize = 8;
    let full_n = n - n % NR;
    let mut i = 0;
    while i + MR <= m {
        let rows: [&[f32]; MR] = core::array::from_fn(|r| &a[(i + r) * k..(i + r + 1) * k]);
        let mut j = 0;
        while j < full_n {
            let mut acc = [[0.0f32; NR]; MR];
            for p in 0..k {
                let bp: &[f32; NR] = b[p * n + j..p * n + j + NR]
                    .try_into()
                    .unwrap_or(&[0.0; NR]);
                for r in 0..MR {
                    let av = rows[r][p];
                    for q in 0..NR {
                        acc[r][q] += av * bp[q];
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                c[(i + r) * n + j..(i + r) * n + j + NR].copy_from_slice(acc);
            }
            j += NR;
        }
        for r in 0..MR {
            gemm_row_tail(rows[r], b, n, full_n, &mut c[(i + r) * n..(i + r + 1) * n]);
        }
        i += MR;
    }
    for i in i..m {
        let row = &a[i * k..(i + 1) * k];
        let out = &mut c[i * n..(i + 1) * n];
        // The same order of sums as the tiles: one accumulator per element, over k in order.
        let mut j = 0;
        while j < full_n {
            let mut acc = [0.0f32; NR];
            for (p, &av) in row.iter().enumerate() {
                let bp = &b[p * n + j..p * n + j + NR];
                for q in 0..NR {
                    acc[q] += av * bp[q];
                }
            }
            out[j..j + NR].copy_from_slice(&acc);
            j += NR;
        }
        gemm_row_tail(row, b, n, full_n, out);
    }
}

/// Columns `[from, n)` of one output row.
#[cfg(any(not(feature = "std"), test))]
fn gemm_row_tail(row: &[f32], b: &[f32], n: usize, from: usize, out: &mut [f32]) {
    for j in from..n {
        let mut acc = 0.0f32;
        for (p, &av) in row.iter().enumerate() {
            acc += av * b[p * n + j];
        }
        out[j] = acc;
    }
}

/// Whether a convolution is worth a matrix product (a depthwise one is not).
fn conv_uses_gemm(c: &Conv2d) -> bool {
    c.filter_len() >= 8 && c.out_channels / c.groups >= 4
}

/// Where one sample's patches sit in a batch's patch matrix: rows `stride` apart, this
/// sample's `oh × ow` columns from `offset`.
#[derive(Clone, Copy)]
struct Cols {
    oh: usize,
    ow: usize,
    stride: usize,
    offset: usize,
}

/// Patches of the channels `[first, first + count)` of one sample into `cols` (zeroed by
/// the caller): row `(ch, ky, kx)`, column `(oy, ox)` at the sample's place.
fn im2col(
    c: &Conv2d,
    in_shape: &[usize],
    x: &[f32],
    first: usize,
    count: usize,
    at: Cols,
    cols: &mut [f32],
) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let [kh, kw] = c.kernel;
    let Cols {
        oh,
        ow,
        stride,
        offset,
    } = at;
    for ch in 0..count {
        let plane = &x[(first + ch) * ih * iw..(first + ch + 1) * ih * iw];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ch * kh + ky) * kw + kx;
                let row = &mut cols[r * stride + offset..r * stride + offset + oh * ow];
                let dxo = kx * c.dilation[1];
                let (x_lo, x_hi) = valid_range(ow, c.stride[1], dxo, c.padding[1], iw);
                for oy in 0..oh {
                    let yy = oy * c.stride[0] + ky * c.dilation[0];
                    if yy < c.padding[0] || yy - c.padding[0] >= ih {
                        continue;
                    }
                    let src = &plane[(yy - c.padding[0]) * iw..(yy - c.padding[0] + 1) * iw];
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    if c.stride[1] == 1 {
                        let from = x_lo + dxo - c.padding[1];
                        dst[x_lo..x_hi].copy_from_slice(&src[from..from + x_hi - x_lo]);
                    } else {
                        for ox in x_lo..x_hi {
                            dst[ox] = src[ox * c.stride[1] + dxo - c.padding[1]];
                        }
                    }
                }
            }
        }
    }
}

/// Scatter-add one sample's patch gradients back onto the channels `[first, first + count)`.
fn col2im(
    c: &Conv2d,
    in_shape: &[usize],
    cols: &[f32],
    first: usize,
    count: usize,
    at: Cols,
    dx: &mut [f32],
) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let [kh, kw] = c.kernel;
    let Cols {
        oh,
        ow,
        stride,
        offset,
    } = at;
    for ch in 0..count {
        let plane = &mut dx[(first + ch) * ih * iw..(first + ch + 1) * ih * iw];
        for ky in 0..kh {
            for kx in 0..kw {
                let r = (ch * kh + ky) * kw + kx;
                let row = &cols[r * stride + offset..r * stride + offset + oh * ow];
                let dxo = kx * c.dilation[1];
                let (x_lo, x_hi) = valid_range(ow, c.stride[1], dxo, c.padding[1], iw);
                for oy in 0..oh {
                    let yy = oy * c.stride[0] + ky * c.dilation[0];
                    if yy < c.padding[0] || yy - c.padding[0] >= ih {
                        continue;
                    }
                    let dst = &mut plane[(yy - c.padding[0]) * iw..(yy - c.padding[0] + 1) * iw];
                    let src = &row[oy * ow..(oy + 1) * ow];
                    for ox in x_lo..x_hi {
                        dst[ox * c.stride[1] + dxo - c.padding[1]] += src[ox];
                    }
                }
            }
        }
    }
}

/// Scratch buffers of the batched convolutions, reused from layer to layer.
#[derive(Default)]
struct Scratch {
    cols: Vec<f32>,
    prod: Vec<f32>,
}

/// A batch's convolution as one matrix product per group over every sample's patches:
/// `out_g = W_g · [patches_g(sample 0) … patches_g(sample B-1)]`.
#[allow(clippy::too_many_arguments)]
fn conv_forward_batch(
    c: &Conv2d,
    activation: Activation,
    in_shape: &[usize],
    x: &[f32],
    batch: usize,
    out_shape: &[usize],
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let (gi, go, fl) = (c.group_inputs(), c.out_channels / c.groups, c.filter_len());
    let p = oh * ow;
    let bp = batch * p;
    let in_len = in_shape[1] * in_shape[2] * in_shape[3];
    let out_len = c.out_channels * p;
    for g in 0..c.groups {
        scratch.cols.clear();
        scratch.cols.resize(fl * bp, 0.0);
        for (s, x) in x.chunks_exact(in_len).enumerate() {
            let at = Cols {
                oh,
                ow,
                stride: bp,
                offset: s * p,
            };
            im2col(c, in_shape, x, g * gi, gi, at, &mut scratch.cols);
        }
        scratch.prod.resize(go * bp, 0.0);
        let w = &c.weights[g * go * fl..(g + 1) * go * fl];
        gemm(go, bp, fl, w, &scratch.cols, &mut scratch.prod);
        for (s, out) in out.chunks_exact_mut(out_len).enumerate() {
            for o in 0..go {
                out[(g * go + o) * p..(g * go + o + 1) * p]
                    .copy_from_slice(&scratch.prod[o * bp + s * p..o * bp + (s + 1) * p]);
            }
        }
    }
    for (i, plane) in out.chunks_exact_mut(p).enumerate() {
        let b = c.bias[i % c.out_channels];
        plane.iter_mut().for_each(|v| *v = activation.apply(*v + b));
    }
}

/// A batch's input gradient as one matrix product per group:
/// `d patches_g = W_gᵀ · [dz_g(sample 0) … dz_g(sample B-1)]`, scattered back per sample.
#[allow(clippy::too_many_arguments)]
fn conv_backward_batch(
    c: &Conv2d,
    in_shape: &[usize],
    out_shape: &[usize],
    batch: usize,
    dz: &[f32],
    dx: &mut [f32],
    scratch: &mut Scratch,
) {
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let (gi, go, fl) = (c.group_inputs(), c.out_channels / c.groups, c.filter_len());
    let p = oh * ow;
    let bp = batch * p;
    let in_len = in_shape[1] * in_shape[2] * in_shape[3];
    let out_len = c.out_channels * p;
    for g in 0..c.groups {
        scratch.prod.resize(go * bp, 0.0);
        for (s, dz) in dz.chunks_exact(out_len).enumerate() {
            for o in 0..go {
                scratch.prod[o * bp + s * p..o * bp + (s + 1) * p]
                    .copy_from_slice(&dz[(g * go + o) * p..(g * go + o + 1) * p]);
            }
        }
        scratch.cols.resize(fl * bp, 0.0);
        let w = &c.weights[g * go * fl..(g + 1) * go * fl];
        // d patches = W_gᵀ · dz: the weights read transposed, not copied.
        gemm_ex(
            fl,
            bp,
            go,
            Mat::Transposed(w),
            Mat::Plain(&scratch.prod),
            &mut scratch.cols,
        );
        for (s, dx) in dx.chunks_exact_mut(in_len).enumerate() {
            let at = Cols {
                oh,
                ow,
                stride: bp,
                offset: s * p,
            };
            col2im(c, in_shape, &scratch.cols, g * gi, gi, at, dx);
        }
    }
}

/// `g` with every convolution cut down to the kernel rows and columns that some output
/// position reaches inside its input: a 3×3 convolution over a 1×1 plane (resnet18's last
/// stage at 32×32) keeps its centre tap, one stride-2 over a 2×2 plane its last two rows and
/// columns. The taps dropped only ever multiply padding, so the graph computes the same
/// function, without those products (nine times fewer in resnet18's last stage, where most of
/// its weights are, and nine times fewer weights for each matrix product to pack). Node and
/// value ids, shapes and outputs are unchanged; a convolution whose every tap is reached is
/// left as it is (and so are its bits). For the batched passes that run a graph many times
/// (probe synthesis).
pub fn without_dead_taps(mut g: Graph) -> Graph {
    for i in 0..g.nodes.len() {
        let node = &g.nodes[i];
        let (Some(&input), output) = (node.inputs.first(), node.output) else {
            continue;
        };
        if let Op::Conv2d(c) = &node.op {
            let (in_shape, out_shape) = (g.shape(input), g.shape(output));
            if let Some(t) = live_taps(c, in_shape, out_shape) {
                g.nodes[i].op = Op::Conv2d(t);
            }
        }
    }
    g
}

/// `c` on the kernel rows and columns some output reaches inside the input (see
/// [`without_dead_taps`]); `None` when that is all of them, when the reached taps are not one
/// rectangle, or when the shifted padding would be negative.
fn live_taps(c: &Conv2d, in_shape: &[usize], out_shape: &[usize]) -> Option<Conv2d> {
    let [_, _, ih, iw] = <[usize; 4]>::try_from(in_shape).ok()?;
    let [_, _, oh, ow] = <[usize; 4]>::try_from(out_shape).ok()?;
    let [kh, kw] = c.kernel;
    // Kernel rows (or columns) `[first, last)` that some output reaches.
    let live =
        |outputs: usize, stride: usize, dilation: usize, pad: usize, size: usize, k: usize| {
            let reached = |t: usize| -> bool {
                let (lo, hi) = valid_range(outputs, stride, t * dilation, pad, size);
                lo < hi
            };
            let first = (0..k).find(|&t| reached(t))?;
            let last = (first..k).take_while(|&t| reached(t)).last()? + 1;
            // One run of reached taps (anything else keeps the whole kernel).
            if (last..k).any(reached) {
                return None;
            }
            Some((first, last))
        };
    let (y0, y1) = live(oh, c.stride[0], c.dilation[0], c.padding[0], ih, kh)?;
    let (x0, x1) = live(ow, c.stride[1], c.dilation[1], c.padding[1], iw, kw)?;
    if (y0, y1, x0, x1) == (0, kh, 0, kw) {
        return None;
    }
    let [pt, pl, pb, pr] = c.padding;
    // Output sizes stay: the dropped leading taps come off the leading padding, the trailing
    // ones off the trailing padding.
    let padding = [
        pt.checked_sub(y0 * c.dilation[0])?,
        pl.checked_sub(x0 * c.dilation[1])?,
        pb.checked_sub((kh - y1) * c.dilation[0])?,
        pr.checked_sub((kw - x1) * c.dilation[1])?,
    ];
    let (th, tw) = (y1 - y0, x1 - x0);
    let mut weights = Vec::with_capacity(c.out_channels * c.group_inputs() * th * tw);
    for filter in c.weights.chunks_exact(kh * kw) {
        for row in filter.chunks_exact(kw).skip(y0).take(th) {
            weights.extend_from_slice(&row[x0..x1]);
        }
    }
    Some(Conv2d {
        kernel: [th, tw],
        padding,
        weights,
        bias: c.bias.clone(),
        ..*c
    })
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
    let hi = if size + pad > offset {
        (size + pad - offset).div_ceil(stride).min(outputs)
    } else {
        0
    };
    (lo.min(hi), hi)
}

fn softmax_backward(axis: usize, shape: &[usize], y: &[f32], dy: &[f32], dx: &mut [f32]) {
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let dot: f32 = (0..len).map(|k| y[at(k)] * dy[at(k)]).sum();
            for k in 0..len {
                dx[at(k)] = y[at(k)] * (dy[at(k)] - dot);
            }
        }
    }
}

/// Window of output cell (oy, ox), clipped to the input: rows `[y0, y1)`, columns `[x0, x1)`.
fn pool_window(p: &Pool, ih: usize, iw: usize, oy: usize, ox: usize) -> [usize; 4] {
    let y0 = (oy * p.stride[0]) as isize - p.padding[0] as isize;
    let x0 = (ox * p.stride[1]) as isize - p.padding[1] as isize;
    let y1 = (y0 + p.kernel[0] as isize).min(ih as isize);
    let x1 = (x0 + p.kernel[1] as isize).min(iw as isize);
    [
        y0.max(0) as usize,
        y1.max(0) as usize,
        x0.max(0) as usize,
        x1.max(0) as usize,
    ]
}

/// Each output's gradient goes to the first cell holding its window's maximum.
fn max_pool_backward(
    p: &Pool,
    in_shape: &[usize],
    x: &[f32],
    out_shape: &[usize],
    dy: &[f32],
    dx: &mut [f32],
) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    for c in 0..in_shape[1] {
        let base = c * ih * iw;
        for oy in 0..oh {
            for ox in 0..ow {
                let [y0, y1, x0, x1] = pool_window(p, ih, iw, oy, ox);
                let mut best = (f32::NEG_INFINITY, usize::MAX);
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        let at = base + yy * iw + xx;
                        if best.1 == usize::MAX || x[at] > best.0 {
                            best = (x[at], at);
                        }
                    }
                }
                if best.1 != usize::MAX {
                    dx[best.1] += dy[(c * oh + oy) * ow + ox];
                }
            }
        }
    }
}

fn average_pool_backward(
    p: &Pool,
    in_shape: &[usize],
    out_shape: &[usize],
    dy: &[f32],
    dx: &mut [f32],
) {
    let (ih, iw) = (in_shape[2], in_shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    for c in 0..in_shape[1] {
        let base = c * ih * iw;
        for oy in 0..oh {
            for ox in 0..ow {
                let [y0, y1, x0, x1] = pool_window(p, ih, iw, oy, ox);
                let count = if p.count_include_pad {
                    p.kernel[0] * p.kernel[1]
                } else {
                    (y1 - y0) * (x1 - x0)
                };
                let d = dy[(c * oh + oy) * ow + ox] / count.max(1) as f32;
                for yy in y0..y1 {
                    for xx in x0..x1 {
                        dx[base + yy * iw + xx] += d;
                    }
                }
            }
        }
    }
}

fn pad_backward(
    pads: &[(usize, usize)],
    in_shape: &[usize],
    out_shape: &[usize],
    dy: &[f32],
    dx: &mut [f32],
) {
    let mut out_strides = alloc::vec![1usize; out_shape.len()];
    for i in (0..out_shape.len().saturating_sub(1)).rev() {
        out_strides[i] = out_strides[i + 1] * out_shape[i + 1];
    }
    let mut index = alloc::vec![0usize; in_shape.len()];
    for d in dx.iter_mut() {
        let at: usize = index
            .iter()
            .zip(pads)
            .zip(&out_strides)
            .map(|((i, p), s)| (i + p.0) * s)
            .sum();
        *d = dy[at];
        for axis in (0..index.len()).rev() {
            index[axis] += 1;
            if index[axis] < in_shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp;
    use crate::ir::BatchNorm;
    use crate::probes::SplitMix64;

    /// Compare the analytic gradient of `L = Σ r·y` with central differences, in f64.
    fn check(g: &Graph, seed: u64, lo: f32, hi: f32) {
        let mut rng = SplitMix64(seed);
        let n = g.values[g.input].len();
        let x: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.next_f32()).collect();
        check_at(g, &x, seed);
    }

    fn check_at(g: &Graph, x: &[f32], seed: u64) {
        g.check().expect("valid test graph");
        let mut rng = SplitMix64(seed ^ 0xABCD);
        let n = x.len();
        let x = x.to_vec();
        let r = rng.vec(g.values[g.output].len(), 1.0);
        let loss = |x: &[f32]| -> f64 {
            interp::run(g, x)
                .unwrap()
                .iter()
                .zip(&r)
                .map(|(&y, &r)| y as f64 * r as f64)
                .sum()
        };
        let analytic = input_gradient(g, &x, &r).unwrap();
        let scale = analytic.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let fd = |i: usize, eps: f32| -> f64 {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += eps;
            xm[i] -= eps;
            (loss(&xp) - loss(&xm)) / (2.0 * eps as f64)
        };
        let tol = 2e-3 + 1e-2 * scale;
        let mut kinks = 0;
        for (i, &an) in analytic.iter().enumerate() {
            let (a, b) = (fd(i, 1e-3), fd(i, 5e-4));
            if (a - b).abs() as f32 > tol {
                // A ReLU or max-pool kink lies within 1e-3 of x: differences are meaningless.
                kinks += 1;
                continue;
            }
            let err = (a as f32 - an).abs();
            assert!(
                err <= tol,
                "input {i}: finite difference {a}, analytic {an} (scale {scale})"
            );
        }
        assert!(kinks * 20 <= n, "{kinks} of {n} inputs sit on a kink");
    }

    #[test]
    fn dense_with_every_activation() {
        let mut rng = SplitMix64(1);
        for a in [
            Activation::Identity,
            Activation::Relu,
            Activation::Clip { min: 0.0, max: 0.5 },
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::LeakyRelu { alpha: 0.2 },
        ] {
            let mut g = Graph::new("x", alloc::vec![1, 7]);
            let h = g.push("h", rng.dense_op(7, 9, a), &[g.input]).unwrap();
            g.output = g.push("o", rng.dense_op(9, 4, a), &[h]).unwrap();
            check(&g, 11, -1.0, 1.0);
            // Stand-alone activations.
            let mut g = Graph::new("x", alloc::vec![1, 7]);
            let h = g
                .push("h", rng.dense_op(7, 9, Activation::Identity), &[g.input])
                .unwrap();
            g.output = g.push("a", Op::Activation(a), &[h]).unwrap();
            check(&g, 12, -1.0, 1.0);
        }
    }

    #[test]
    fn convolutions_grouped_depthwise_strided_padded_dilated() {
        let mut rng = SplitMix64(2);
        // The first seven run directly, the others as matrix products.
        type Case = (
            usize,
            usize,
            [usize; 2],
            [usize; 2],
            [usize; 2],
            [usize; 4],
            usize,
        );
        let cases: [Case; 11] = [
            (2, 3, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 1),
            (2, 3, [3, 2], [2, 1], [1, 1], [0, 1, 2, 0], 1),
            (4, 6, [3, 3], [1, 2], [1, 1], [1, 0, 1, 1], 2),
            (4, 4, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 4),
            (4, 4, [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], 4),
            (3, 2, [3, 3], [1, 1], [2, 2], [2, 2, 2, 2], 1),
            (2, 4, [1, 1], [2, 2], [1, 1], [0, 0, 0, 0], 1),
            (3, 9, [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], 1),
            (4, 8, [3, 2], [2, 1], [2, 1], [2, 0, 1, 1], 2),
            (8, 5, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 1),
            (9, 12, [1, 1], [1, 1], [1, 1], [0, 0, 0, 0], 3),
        ];
        for (i, &(cin, cout, k, s, d, p, groups)) in cases.iter().enumerate() {
            for a in [Activation::Identity, Activation::Relu, Activation::Tanh] {
                let mut g = Graph::new("x", alloc::vec![1, cin, 7, 6]);
                g.output = g
                    .push(
                        "c",
                        rng.conv_op(cin, cout, groups, k, s, d, p, a),
                        &[g.input],
                    )
                    .unwrap();
                check(&g, 20 + i as u64, -1.0, 1.0);
            }
        }
    }

    /// Convolutions cut to the taps some output reaches compute the same outputs and input
    /// gradients as the whole kernels; a convolution whose every tap is reached is left as it
    /// is.
    #[test]
    fn dead_taps_are_dropped_without_changing_the_function() {
        let mut rng = SplitMix64(5);
        // (input h × w, kernel, stride, padding, kept kernel): a 3×3 over 1×1 (its centre), a
        // stride-2 3×3 over 2×2 (the last two rows and columns), a 5×5 over 2×3, a dilated
        // 3×3 over 2×2, and a 3×3 over 4×4 that reaches every tap.
        let cases = [
            ([1, 1], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [1, 1]),
            ([2, 2], [3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [2, 2]),
            ([2, 3], [5, 5], [1, 1], [1, 1], [2, 2, 2, 2], [3, 5]),
            ([2, 2], [3, 3], [1, 1], [2, 2], [2, 2, 2, 2], [1, 1]),
            ([4, 4], [3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [3, 3]),
        ];
        for (i, &(hw, k, s, d, p, kept)) in cases.iter().enumerate() {
            let mut g = Graph::new("x", alloc::vec![1, 16, hw[0], hw[1]]);
            let a = Activation::Relu;
            let c1 = g.push("c1", rng.conv_op(16, 12, 1, k, s, d, p, a), &[g.input]);
            g.output = g
                .push(
                    "c2",
                    rng.conv_op(12, 8, 1, [1, 1], [1, 1], [1, 1], [0; 4], a),
                    &[c1.unwrap()],
                )
                .unwrap();
            let trimmed = without_dead_taps(g.clone());
            trimmed.check().expect("a valid graph");
            let Op::Conv2d(c) = &trimmed.nodes[0].op else {
                panic!("a convolution")
            };
            assert_eq!(c.kernel, kept, "case {i}");
            if kept == k {
                assert_eq!(trimmed, g, "case {i}: left as it is");
                continue;
            }
            let x = rng.vec(g.values[g.input].len() * 3, 1.0);
            let (want, got) = (
                forward_batch(&g, &x, 3).unwrap(),
                forward_batch(&trimmed, &x, 3).unwrap(),
            );
            for (w, t) in want[g.output].iter().zip(&got[g.output]) {
                assert!(
                    (w - t).abs() <= 1e-5 * (1.0 + w.abs()),
                    "case {i}: {w} vs {t}"
                );
            }
            let dy = rng.vec(g.values[g.output].len(), 1.0);
            let (want, got) = (
                input_gradient(&g, &x[..g.values[g.input].len()], &dy).unwrap(),
                input_gradient(&trimmed, &x[..g.values[g.input].len()], &dy).unwrap(),
            );
            for (w, t) in want.iter().zip(&got) {
                assert!(
                    (w - t).abs() <= 1e-5 * (1.0 + w.abs()),
                    "case {i}: {w} vs {t}"
                );
            }
        }
    }

    /// The products every batched pass rests on: an element's value does not depend on the
    /// size of the product it is computed in (sizes past the kernels' tiles and `k` past their
    /// blocking), and the SIMD product agrees with the portable one to rounding.
    #[test]
    fn gemm_is_batch_invariant_and_agrees_with_the_portable_loop() {
        let mut rng = SplitMix64(21);
        let (m, n, k) = (37, 301, 700);
        let a = rng.vec(m * k, 1.0);
        let b = rng.vec(k * n, 1.0);
        let mut c = alloc::vec![0.0f32; m * n];
        gemm(m, n, k, &a, &b, &mut c);
        let mut reference = alloc::vec![0.0f32; m * n];
        gemm_portable(m, n, k, &a, &b, &mut reference);
        for (x, y) in c.iter().zip(&reference) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
        // Rows 5..8 and columns 100..103 alone: the same bits.
        let (rows, cols) = (5..8, 100..103);
        let sub_a: Vec<f32> = a[rows.start * k..rows.end * k].to_vec();
        let sub_b: Vec<f32> = (0..k)
            .flat_map(|p| b[p * n + cols.start..p * n + cols.end].to_vec())
            .collect();
        let mut sub = alloc::vec![0.0f32; 9];
        gemm(3, 3, k, &sub_a, &sub_b, &mut sub);
        for (i, r) in rows.enumerate() {
            for (j, col) in cols.clone().enumerate() {
                assert_eq!(sub[i * 3 + j].to_bits(), c[r * n + col].to_bits());
            }
        }
    }

    #[test]
    fn transposed_operands_give_the_bits_of_their_copies() {
        let mut rng = SplitMix64(22);
        let (m, n, k) = (19, 45, 300);
        let transposed = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
            (0..cols)
                .flat_map(|c| (0..rows).map(move |r| x[r * cols + c]))
                .collect()
        };
        let a = rng.vec(m * k, 1.0);
        let b = rng.vec(k * n, 1.0);
        let mut plain = alloc::vec![0.0f32; m * n];
        gemm(m, n, k, &a, &b, &mut plain);
        let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
        for (x, y) in [
            (Mat::Transposed(&at), Mat::Plain(&b)),
            (Mat::Plain(&a), Mat::Transposed(&bt)),
            (Mat::Transposed(&at), Mat::Transposed(&bt)),
        ] {
            let mut c = alloc::vec![0.0f32; m * n];
            gemm_ex(m, n, k, x, y, &mut c);
            assert!(c
                .iter()
                .zip(&plain)
                .all(|(p, q)| p.to_bits() == q.to_bits()));
        }
    }

    #[test]
    fn batches_match_single_samples_bit_for_bit() {
        let mut rng = SplitMix64(7);
        let mut g = Graph::new("x", alloc::vec![1, 3, 6, 6]);
        let c1 = g
            .push(
                "c1",
                rng.conv_op(
                    3,
                    8,
                    1,
                    [3, 3],
                    [1, 1],
                    [1, 1],
                    [1, 1, 1, 1],
                    Activation::Relu,
                ),
                &[g.input],
            )
            .unwrap();
        let c2 = g
            .push(
                "c2",
                rng.conv_op(
                    8,
                    8,
                    8,
                    [3, 3],
                    [2, 2],
                    [1, 1],
                    [1, 1, 1, 1],
                    Activation::Relu,
                ),
                &[c1],
            )
            .unwrap();
        let c3 = g
            .push(
                "c3",
                rng.conv_op(
                    8,
                    12,
                    1,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    [0, 0, 0, 0],
                    Activation::Tanh,
                ),
                &[c2],
            )
            .unwrap();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, 108],
                },
                &[c3],
            )
            .unwrap();
        let h = g
            .push("h", rng.dense_op(108, 13, Activation::Relu), &[flat])
            .unwrap();
        g.output = g
            .push("o", rng.dense_op(13, 5, Activation::Identity), &[h])
            .unwrap();
        g.check().unwrap();
        check(&g, 70, -1.0, 1.0);
        let batch = 7;
        let xs = rng.vec(108 * batch, 1.0);
        let seeds = rng.vec(5 * batch, 1.0);
        let values = forward_batch(&g, &xs, batch).unwrap();
        let dx = backward_batch(&g, &values, batch, alloc::vec![(g.output, seeds.clone())]);
        for s in 0..batch {
            let x = &xs[s * 108..(s + 1) * 108];
            let one = forward(&g, x).unwrap();
            assert_eq!(one[g.output], values[g.output][s * 5..(s + 1) * 5]);
            let seed = seeds[s * 5..(s + 1) * 5].to_vec();
            let d = backward(&g, &one, alloc::vec![(g.output, seed)]);
            assert_eq!(d, dx[s * 108..(s + 1) * 108]);
            // And close to the reference interpreter.
            let reference = interp::run(&g, x).unwrap();
            for (a, b) in reference.iter().zip(&one[g.output]) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn pools() {
        for (kind, count_include_pad) in [(0, false), (1, false), (1, true), (2, false)] {
            let pool = Pool {
                kernel: [3, 2],
                stride: [2, 2],
                padding: [1, 1, 1, 0],
                count_include_pad,
            };
            let op = match kind {
                0 => Op::MaxPool(pool),
                1 => Op::AveragePool(pool),
                _ => Op::GlobalAveragePool,
            };
            let mut g = Graph::new("x", alloc::vec![1, 3, 7, 6]);
            g.output = g.push("p", op, &[g.input]).unwrap();
            // Distinct values at least 1/n apart, so no max-pool window is near a tie.
            let n = g.values[g.input].len();
            let mut rng = SplitMix64(30 + kind);
            let mut x: Vec<f32> = (0..n).map(|i| i as f32 / n as f32 - 0.5).collect();
            for i in (1..n).rev() {
                x.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            check_at(&g, &x, 30 + kind);
        }
    }

    #[test]
    fn batch_norm_add_concat_layout_softmax() {
        let mut rng = SplitMix64(4);
        let mut g = Graph::new("x", alloc::vec![1, 2, 5, 5]);
        let c1 = g
            .push(
                "c1",
                rng.conv_op(
                    2,
                    3,
                    1,
                    [3, 3],
                    [1, 1],
                    [1, 1],
                    [1, 1, 1, 1],
                    Activation::Identity,
                ),
                &[g.input],
            )
            .unwrap();
        let bn = g
            .push(
                "bn",
                Op::BatchNorm(BatchNorm {
                    scale: rng.vec(3, 1.5),
                    shift: rng.vec(3, 0.5),
                    stats: Some((alloc::vec![0.0; 3], alloc::vec![1.0; 3])),
                }),
                &[c1],
            )
            .unwrap();
        let r = g
            .push("r", Op::Activation(Activation::Sigmoid), &[bn])
            .unwrap();
        let c2 = g
            .push(
                "c2",
                rng.conv_op(
                    2,
                    3,
                    1,
                    [1, 1],
                    [1, 1],
                    [1, 1],
                    [0, 0, 0, 0],
                    Activation::Identity,
                ),
                &[g.input],
            )
            .unwrap();
        let add = g.push("add", Op::Add, &[r, c2]).unwrap();
        let cat = g.push("cat", Op::Concat { axis: 1 }, &[add, c1]).unwrap();
        let pad = g
            .push(
                "pad",
                Op::Pad {
                    pads: alloc::vec![(0, 0), (0, 1), (2, 0), (1, 1)],
                    value: 0.5,
                },
                &[cat],
            )
            .unwrap();
        let tr = g
            .push(
                "tr",
                Op::Transpose {
                    perm: alloc::vec![0, 2, 3, 1],
                },
                &[pad],
            )
            .unwrap();
        let cat2 = g.push("cat2", Op::Concat { axis: 3 }, &[tr, tr]).unwrap();
        let len = g.values[cat2].len();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, len],
                },
                &[cat2],
            )
            .unwrap();
        let fc = g
            .push("fc", rng.dense_op(len, 5, Activation::Identity), &[flat])
            .unwrap();
        g.output = g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap();
        check(&g, 40, -1.0, 1.0);

        // Softmax on an inner axis of a 4-D value.
        let mut g = Graph::new("x", alloc::vec![1, 3, 2, 4]);
        g.output = g.push("sm", Op::Softmax { axis: 2 }, &[g.input]).unwrap();
        check(&g, 41, -2.0, 2.0);
    }

    #[test]
    fn class_loss_reads_the_pre_softmax_logits() {
        let mut rng = SplitMix64(5);
        let mut g = Graph::new("x", alloc::vec![1, 6]);
        let fc = g
            .push("fc", rng.dense_op(6, 4, Activation::Identity), &[g.input])
            .unwrap();
        g.output = fc;
        let plain = g.clone();
        g.output = g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap();
        assert_eq!(logits_value(&g), fc);
        let x = rng.vec(6, 1.0);
        let (l1, d1, _) = class_gradient(&plain, &x, 2).unwrap();
        let (l2, d2, _) = class_gradient(&g, &x, 2).unwrap();
        assert_eq!((l1, &d1), (l2, &d2));
        // Against finite differences of the cross-entropy.
        let ce = |x: &[f32]| -> f64 { cross_entropy(&interp::run(&plain, x).unwrap(), 2).0 as f64 };
        for i in 0..6 {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += 1e-3;
            xm[i] -= 1e-3;
            let fd = (ce(&xp) - ce(&xm)) / 2e-3;
            assert!((fd as f32 - d1[i]).abs() < 2e-3, "{fd} vs {}", d1[i]);
        }
        assert!(class_gradient(&plain, &x, 4).is_err());
    }

    #[test]
    fn intermediate_seeds_reach_the_input() {
        let mut rng = SplitMix64(6);
        let mut g = Graph::new("x", alloc::vec![1, 2, 4, 4]);
        let c = g
            .push(
                "c",
                rng.conv_op(
                    2,
                    3,
                    1,
                    [3, 3],
                    [1, 1],
                    [1, 1],
                    [1, 1, 1, 1],
                    Activation::Identity,
                ),
                &[g.input],
            )
            .unwrap();
        g.output = g.push("r", Op::Activation(Activation::Relu), &[c]).unwrap();
        let x = rng.vec(32, 1.0);
        let values = forward(&g, &x).unwrap();
        // Seeding dL/dc = values of c is the gradient of ½‖c‖².
        let seed = values[c].clone();
        let grads = backward_all(&g, &values, alloc::vec![(c, seed.clone())], true);
        assert_eq!(grads[c].as_deref(), Some(&seed[..]));
        assert!(grads[g.output].is_none());
        let dx = grads[g.input].clone().unwrap();
        let half_sq = |x: &[f32]| -> f64 {
            let v = forward(&g, x).unwrap();
            v[c].iter().map(|&a| 0.5 * a as f64 * a as f64).sum()
        };
        for i in 0..32 {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += 1e-3;
            xm[i] -= 1e-3;
            let fd = (half_sq(&xp) - half_sq(&xm)) / 2e-3;
            assert!((fd as f32 - dx[i]).abs() < 5e-3, "{fd} vs {}", dx[i]);
        }
    }
}
