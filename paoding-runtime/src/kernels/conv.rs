//! 2-D convolution over NCHW, grouped and depthwise included, without im2col.
//!
//! Output-stationary and register-tiled: a tile is `OCB` output channels of one group times
//! `PXB` consecutive output columns of one row, accumulated in registers over every tap
//! (input channel, kernel row, kernel column) and stored once. For each tap the input values
//! of the tile's columns are one contiguous (stride 1) or strided run of an input row; the
//! columns whose tap falls into the padding are found once per tap in closed form, so the
//! interior needs no bounds logic and the border only clears a few lanes. One input value
//! feeds `OCB` filters and one filter weight feeds `PXB` columns.
//!
//! A 1x1 convolution with stride 1 and no padding is a matrix product over pixels: its planes
//! are treated as one long row. Depthwise convolutions (one output channel per group) use a
//! wider pixel tile with a single filter.

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

// Tile sizes: the accumulators (`OCB * PXB` f32) must fit the FPU/SIMD registers. x86-64 and
// AArch64 have 16+ vector registers; a Cortex-M4F/M7 has 32 single-precision registers.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod tile {
    pub const OCB: usize = 4;
    pub const PXB: usize = 8;
    pub const DW_PXB: usize = 16;
}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tile {
    pub const OCB: usize = 2;
    pub const PXB: usize = 4;
    /// Unused: no separate depthwise instance.
    pub const DW_PXB: usize = 1;
}
use tile::{DW_PXB, OCB, PXB};

/// Hosts (x86-64, AArch64) get specialised instances; microcontrollers one generic path.
const HOST: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Positions `p` in `0..n` whose input index `base + p * stride` lies in `0..size`, where
/// `base = first - pad` may be negative: returns `(p0, p1)` (empty if `p0 >= p1`).
#[inline(always)]
fn lanes(first: usize, pad: usize, stride: usize, size: usize, n: usize) -> (usize, usize) {
    // p * stride + first >= pad  and  p * stride + first < size + pad.
    let lim = size + pad;
    let before = pad.saturating_sub(first);
    let inside = lim.saturating_sub(first);
    if stride == 1 {
        // The common case, without integer divisions.
        return (before, inside.min(n));
    }
    (before.div_ceil(stride), inside.div_ceil(stride).min(n))
}

/// One tile: `oc_n <= C` filters (`filters[o]` is filter `o`, `gi * kh * kw` weights) times
/// the `n <= P` output columns starting at `ox0` of row `oy`; `planes` are the group's input
/// planes. Returns the accumulated sums (bias not included).
#[inline(always)]
fn tile<const C: usize, const P: usize>(
    g: &ConvGeom,
    planes: &[f32],
    filters: [&[f32]; C],
    oy: usize,
    ox0: usize,
    n: usize,
) -> [[f32; P]; C] {
    let mut acc = [[0.0f32; P]; C];
    let in_plane = g.ih * g.iw;
    let taps = g.kh * g.kw;
    // Kernel rows inside the input for this output row.
    let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
    for kx in 0..g.kw {
        // Lanes of the tile whose column lands inside the input for this kernel column.
        let first = ox0 * g.sx + kx * g.dx;
        let (p0, p1) = lanes(first, g.pl, g.sx, g.iw, n);
        if p0 >= p1 {
            continue;
        }
        let start = first + p0 * g.sx - g.pl;
        for ky in ky0..ky1 {
            let iy = oy * g.sy + ky * g.dy - g.pt;
            let Some(xs) = planes.get(iy * g.iw + start..) else {
                continue;
            };
            let wi = ky * g.kw + kx;
            // One step per input channel: the tap's weight in each filter, and the inputs.
            let ws = filters.map(|f| f.get(wi..).unwrap_or(&[]).iter().step_by(taps));
            if HOST && g.sx == 1 && p0 == 0 && p1 == P {
                // Interior: P contiguous inputs, no bounds logic.
                accumulate(&mut acc, ws, xs.chunks(in_plane), |row| {
                    row.first_chunk::<P>().copied()
                });
            } else {
                accumulate(&mut acc, ws, xs.chunks(in_plane), |row| {
                    let mut x = [0.0f32; P];
                    let dst = x.get_mut(p0..p1)?;
                    for (d, s) in dst.iter_mut().zip(row.iter().step_by(g.sx)) {
                        *d = *s;
                    }
                    Some(x)
                });
            }
        }
    }
    acc
}

/// `acc[o] += w_o * x` for each input channel: `rows` yields each channel's input run,
/// `load` turns it into the tile's `P` inputs, `ws[o]` yields filter `o`'s weights.
#[inline(always)]
fn accumulate<'w, const C: usize, const P: usize>(
    acc: &mut [[f32; P]; C],
    mut ws: [core::iter::StepBy<core::slice::Iter<'w, f32>>; C],
    rows: core::slice::Chunks<'_, f32>,
    load: impl Fn(&[f32]) -> Option<[f32; P]>,
) {
    for row in rows {
        let Some(x) = load(row) else {
            return;
        };
        for (a, w) in acc.iter_mut().zip(ws.iter_mut()) {
            let wv = w.next().copied().unwrap_or(0.0);
            for (av, xv) in a.iter_mut().zip(x.iter()) {
                *av += wv * *xv;
            }
        }
    }
}

/// Every tile of one group for `C` filters at a time (`C` output planes of `out`).
#[inline(never)]
fn conv_group<const C: usize, const P: usize>(
    g: &ConvGeom,
    planes: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
) {
    let out_plane = g.oh * g.ow;
    let filter_len = planes.len() / (g.ih * g.iw).max(1) * g.kh * g.kw;
    if out_plane == 0 || filter_len == 0 {
        return;
    }
    for ((oblock, wblock), bblock) in out
        .chunks_mut(C * out_plane)
        .zip(w.chunks(C * filter_len))
        .zip(b.chunks(C))
    {
        let mut filters: [&[f32]; C] = [&[]; C];
        for (f, src) in filters.iter_mut().zip(wblock.chunks_exact(filter_len)) {
            *f = src;
        }
        for oy in 0..g.oh {
            let mut ox0 = 0;
            while ox0 < g.ow {
                let n = (g.ow - ox0).min(P);
                let acc = tile::<C, P>(g, planes, filters, oy, ox0, n);
                let at = oy * g.ow + ox0;
                for ((a, oplane), &bias) in acc.iter().zip(oblock.chunks_mut(out_plane)).zip(bblock)
                {
                    if let Some(dst) = oplane.get_mut(at..at + n) {
                        for (d, s) in dst.iter_mut().zip(a) {
                            *d = *s + bias;
                        }
                    }
                }
                ox0 += n;
            }
        }
    }
}

pub(crate) fn conv2d(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    let mut g = *g;
    if g.kh == 1 && g.kw == 1 && g.sy == 1 && g.sx == 1 && g.pt == 0 && g.pl == 0 {
        // Pointwise (or any 1x1 without stride and padding, output = input plane): one row.
        if g.ih == g.oh && g.iw == g.ow {
            g.iw *= g.ih;
            g.ow *= g.oh;
            g.ih = 1;
            g.oh = 1;
        }
    }
    let in_plane = g.ih * g.iw;
    let out_plane = g.oh * g.ow;
    let groups = g.groups.max(1);
    let gi = g.in_c / groups;
    let go = g.out_c / groups;
    let filter_len = gi * g.kh * g.kw;
    if in_plane == 0
        || out_plane == 0
        || filter_len == 0
        || go == 0
        || g.sx == 0
        || g.sy == 0
        || g.dx == 0
        || g.dy == 0
    {
        return;
    }
    for (((planes, wg), bg), og) in input
        .chunks_exact(gi * in_plane)
        .zip(w.chunks_exact(go * filter_len))
        .zip(b.chunks_exact(go))
        .zip(out.chunks_exact_mut(go * out_plane))
    {
        // Depthwise gets its own wider single-filter tile where code size is cheap; on a
        // microcontroller one instance serves both (flash is scarcer than the cycles).
        if go == 1 && HOST {
            conv_group::<1, DW_PXB>(&g, planes, wg, bg, og);
        } else {
            conv_group::<OCB, PXB>(&g, planes, wg, bg, og);
        }
    }
    act.apply_slice(out);
}
