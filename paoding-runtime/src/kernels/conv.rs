//! 2-D convolution over NCHW, grouped and depthwise included, without im2col.
//!
//! Weight-stationary: for each output channel the plane starts at the bias, then every filter
//! tap `w` adds `w * input` over the rows and columns where that tap lands inside the input.
//! The valid row and column ranges are computed once per tap, so the borders (padding) cost
//! nothing and the inner loop is a bounds-check-free `axpy` over a row (contiguous when the
//! stride is 1). Each output pixel sums its taps in the same order as paoding-core's
//! reference, so results match it bit for bit.

use crate::format::Act;

/// Geometry of one convolution, proven consistent by validation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvGeom {
    pub in_c: usize,
    pub ih: usize,
    pub iw: usize,
    pub out_c: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sy: usize,
    pub sx: usize,
    pub dy: usize,
    pub dx: usize,
    /// Top padding.
    pub pt: usize,
    /// Left padding.
    pub pl: usize,
    pub groups: usize,
}

/// `dst += w * src` over the common length.
#[inline(always)]
fn axpy(dst: &mut [f32], src: &[f32], w: f32) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += w * *s;
    }
}

/// First output index whose tap at `offset` (dilated kernel position) lands at input index
/// `>= 0`, and one past the last that lands `< size`, clamped to `out`.
#[inline(always)]
fn valid_range(
    offset: usize,
    pad: usize,
    stride: usize,
    size: usize,
    out: usize,
) -> (usize, usize) {
    let before = pad.saturating_sub(offset);
    let limit = (size + pad).saturating_sub(offset);
    if stride == 1 {
        // The common case, without the two integer divisions.
        return (before, limit.min(out));
    }
    (before.div_ceil(stride), limit.div_ceil(stride).min(out))
}

pub(crate) fn conv2d(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    let in_plane = g.ih * g.iw;
    let out_plane = g.oh * g.ow;
    let taps = g.kh * g.kw;
    let gi = g.in_c / g.groups.max(1);
    let outs_per_group = g.out_c / g.groups.max(1);
    let filter_len = gi * taps;
    if in_plane == 0
        || out_plane == 0
        || filter_len == 0
        || outs_per_group == 0
        || g.sx == 0
        || g.sy == 0
    {
        return;
    }
    let pointwise = taps == 1
        && g.sy == 1
        && g.sx == 1
        && g.pt == 0
        && g.pl == 0
        && g.ih == g.oh
        && g.iw == g.ow;
    for (oc, ((o, filter), &bias)) in out
        .chunks_exact_mut(out_plane)
        .zip(w.chunks_exact(filter_len))
        .zip(b)
        .enumerate()
    {
        o.fill(bias);
        let first_in = (oc / outs_per_group) * gi;
        let planes = input
            .get(first_in * in_plane..(first_in + gi) * in_plane)
            .unwrap_or(&[]);
        for (plane, fk) in planes.chunks_exact(in_plane).zip(filter.chunks_exact(taps)) {
            if pointwise {
                if let Some(&wv) = fk.first() {
                    axpy(o, plane, wv);
                }
                continue;
            }
            for (ky, frow) in fk.chunks_exact(g.kw).enumerate() {
                let off_y = ky * g.dy;
                let (oy0, oy1) = valid_range(off_y, g.pt, g.sy, g.ih, g.oh);
                for (kx, &wv) in frow.iter().enumerate() {
                    let off_x = kx * g.dx;
                    let (ox0, ox1) = valid_range(off_x, g.pl, g.sx, g.iw, g.ow);
                    if ox0 >= ox1 {
                        continue;
                    }
                    let ix0 = ox0 * g.sx + off_x - g.pl;
                    for oy in oy0..oy1 {
                        let iy = oy * g.sy + off_y - g.pt;
                        let orow = o.get_mut(oy * g.ow + ox0..oy * g.ow + ox1);
                        let irow = plane.get(iy * g.iw + ix0..(iy + 1) * g.iw);
                        let (Some(orow), Some(irow)) = (orow, irow) else {
                            continue;
                        };
                        if g.sx == 1 {
                            axpy(orow, irow, wv);
                        } else {
                            for (d, s) in orow.iter_mut().zip(irow.iter().step_by(g.sx)) {
                                *d += wv * *s;
                            }
                        }
                    }
                }
            }
        }
        act.apply_slice(o);
    }
}
