//! Operators that move values: Concat, Transpose, Pad, on bytes (f32 and int8 values share
//! one copy of each; a quantized Concat rescales as it copies). (Reshape is a free view: no
//! kernel.)

use super::{copy, qeltwise, splat, Dims};
use crate::format::{QRescale, MAX_RANK};

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

/// Copy one input of a concatenation into its slot, in bytes: `outer` blocks of `block` bytes
/// go to `out` at `offset + k * out_block`; an int8 input is rescaled to the output on the way
/// (`rescale`: its rescaling and the output's zero point).
pub(crate) fn concat_part(
    input: &[u8],
    block: usize,
    out_block: usize,
    offset: usize,
    out: &mut [u8],
    rescale: Option<(&QRescale, i32)>,
) {
    if block == 0 || out_block == 0 {
        return;
    }
    // Indexed rather than zipped chunks: one division, no out-of-line iterator set-up.
    for k in 0..input.len() / block {
        let (Some(src), Some(d)) = (
            input.get(k * block..(k + 1) * block),
            out.get_mut(k * out_block + offset..k * out_block + offset + block),
        ) else {
            return;
        };
        match rescale {
            Some((r, zp)) => {
                for (d, &s) in d.iter_mut().zip(src) {
                    *d = qeltwise::rescale(r, zp, s as i8) as u8;
                }
            }
            None => copy(d, src),
        }
    }
}

/// `out` axis `i` is `input` axis `perm[i]`, for elements of `size` bytes.
pub(crate) fn transpose(in_dims: &Dims, perm: &[u8], size: usize, input: &[u8], out: &mut [u8]) {
    let rank = in_dims.rank;
    let in_strides = strides(in_dims);
    let mut dims = [1usize; MAX_RANK];
    let mut step: [usize; MAX_RANK] = splat(0);
    for ((d, s), &p) in dims.iter_mut().zip(step.iter_mut()).zip(perm) {
        *d = in_dims.at(p as usize);
        *s = in_strides.get(p as usize).copied().unwrap_or(0) * size;
    }
    let mut idx: [usize; MAX_RANK] = splat(0);
    let mut src = 0usize;
    for o in out.chunks_exact_mut(size.max(1)) {
        if let Some(s) = input.get(src..src + o.len()) {
            copy(o, s);
        }
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

/// Constant padding of elements of `value.len()` bytes: `out` is filled with `value`, then
/// each innermost row of `input` is copied to its place.
pub(crate) fn pad(
    in_dims: &Dims,
    out_dims: &Dims,
    pads: &[[u32; 2]],
    value: &[u8],
    input: &[u8],
    out: &mut [u8],
) {
    let size = value.len();
    for o in out.chunks_exact_mut(size.max(1)) {
        copy(o, value);
    }
    let rank = in_dims.rank;
    if rank == 0 {
        return;
    }
    let row = in_dims.at(rank - 1) * size;
    if row == 0 {
        return;
    }
    let out_strides = strides(out_dims);
    let mut idx: [usize; MAX_RANK] = splat(0);
    for src in input.chunks_exact(row) {
        let mut at = 0;
        for ((i, s), p) in idx.iter().zip(&out_strides).zip(pads).take(rank) {
            at += (i + p[0] as usize) * s * size;
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
