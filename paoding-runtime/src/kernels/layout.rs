//! Operators that move values: Concat, Transpose, Pad. (Reshape is a free view: no kernel.)

use super::{copy, Dims};
use crate::format::MAX_RANK;

/// Row-major strides of `dims` (`rank` used).
fn strides(dims: &Dims) -> [usize; MAX_RANK] {
    let mut s = [1usize; MAX_RANK];
    let mut acc = 1;
    for (st, d) in s.iter_mut().zip(dims.d.iter()).take(dims.rank).rev() {
        *st = acc;
        acc *= *d;
    }
    s
}

/// Copy one input of a concatenation into its slot: `outer` blocks of `block` elements go
/// to `out` at `offset + k * out_block`.
pub(crate) fn concat_part(
    input: &[f32],
    block: usize,
    out_block: usize,
    offset: usize,
    out: &mut [f32],
) {
    if block == 0 || out_block == 0 {
        return;
    }
    for (src, dst) in input
        .chunks_exact(block)
        .zip(out.chunks_exact_mut(out_block))
    {
        if let Some(d) = dst.get_mut(offset..offset + block) {
            copy(d, src);
        }
    }
}

/// `out` axis `i` is `input` axis `perm[i]`.
pub(crate) fn transpose(in_dims: &Dims, perm: &[u8], input: &[f32], out: &mut [f32]) {
    let rank = in_dims.rank;
    let in_strides = strides(in_dims);
    let mut dims = [1usize; MAX_RANK];
    let mut step = [0usize; MAX_RANK];
    for ((d, s), &p) in dims.iter_mut().zip(step.iter_mut()).zip(perm) {
        *d = in_dims.at(p as usize);
        *s = in_strides.get(p as usize).copied().unwrap_or(0);
    }
    let mut idx = [0usize; MAX_RANK];
    let mut src = 0usize;
    for o in out.iter_mut() {
        *o = input.get(src).copied().unwrap_or(0.0);
        for ((i, &s), &d) in idx.iter_mut().zip(&step).zip(&dims).take(rank).rev() {
            *i += 1;
            src += s;
            if *i < d {
                break;
            }
            src -= s * d;
            *i = 0;
        }
    }
}

/// Constant padding: `out` is filled with `value`, then each innermost row of `input` is
/// copied to its place.
pub(crate) fn pad(
    in_dims: &Dims,
    out_dims: &Dims,
    pads: &[[u32; 2]],
    value: f32,
    input: &[f32],
    out: &mut [f32],
) {
    out.fill(value);
    let rank = in_dims.rank;
    if rank == 0 {
        return;
    }
    let row = in_dims.at(rank - 1);
    if row == 0 {
        return;
    }
    let out_strides = strides(out_dims);
    let mut idx = [0usize; MAX_RANK];
    for src in input.chunks_exact(row) {
        let mut at = 0;
        for ((i, s), p) in idx.iter().zip(&out_strides).zip(pads).take(rank) {
            at += (i + p[0] as usize) * s;
        }
        if let Some(d) = out.get_mut(at..at + row) {
            copy(d, src);
        }
        // Advance over all axes but the last.
        for (i, &d) in idx.iter_mut().zip(&in_dims.d).take(rank - 1).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
}
