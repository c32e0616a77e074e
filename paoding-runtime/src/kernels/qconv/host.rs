//! Host-only int8 convolution of a block of filters: 8 output pixels at once.
//!
//! The device's loop takes one pixel at a time, its inputs two by two as the DSP extension's
//! dual multiply-accumulate wants them. On x86 that leaves the vector units idle, so here
//! pixels that admit the same taps go 8 (or 4) at a time: one weight meets every pixel's
//! input, `[filter][pixel]` accumulators that vectorise across the pixels. Integer
//! sums do not depend on their order (the arithmetic wraps, as the device's does), so every
//! accumulator, and with it every output, is the device's exactly. Nothing here is compiled
//! for Arm.

use super::{Block, Requant};
use crate::format::I8_BLOCK;
use crate::kernels::conv::{lanes, ConvGeom};

/// Pixels of a tile.
const PIXELS: usize = 8;

/// Every output pixel of a block (of [`I8_BLOCK`] filters, or of one) into `out` (their
/// planes), as [`Block::run`] computes them.
pub(super) fn run(b: &Block<'_>, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::x86::has_avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { run_avx2(b, g, q, out) };
    }
    run_in(b, g, q, out)
}

/// [`run`] compiled for AVX2 (8 lanes of `i32` a vector).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(b: &Block<'_>, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) {
    run_in(b, g, q, out)
}

/// [`run`]'s body, inlined into each instruction set's copy.
#[inline(always)]
fn run_in(b: &Block<'_>, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) {
    if b.c == I8_BLOCK {
        pixels::<I8_BLOCK>(b, g, q, out)
    } else if !window(b, g, q, out) {
        pixels::<1>(b, g, q, out)
    }
}

/// Bytes of [`window`]'s padded copy of a plane (on the stack).
const WINDOW: usize = 2048;

/// A single filter over a single channel (depthwise) at column stride 1, through a copy of
/// the plane padded with the input zero point (a tap there adds 0, as TFLite's padding does)
/// and wide enough for whole tiles: every tile of 8 pixels along a row then reads each tap's
/// inputs as one contiguous run, on planes of any width (the pixels past a row's end are
/// computed and dropped). Returns false, having done nothing, where the layer is not such a
/// one or its window does not fit.
#[inline(always)]
fn window(b: &Block<'_>, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) -> bool {
    let Ok(zp8) = i8::try_from(q.input_zp) else {
        return false;
    };
    let (span_x, span_y) = ((g.kw - 1) * g.dx, (g.kh - 1) * g.dy);
    let width = (g.ow.div_ceil(PIXELS) * PIXELS + span_x).max(g.iw + g.pl);
    let height = ((g.oh.max(1) - 1) * g.sy + span_y + 1).max(g.ih + g.pt);
    if b.gi != 1 || g.sx != 1 || width * height > WINDOW {
        return false;
    }
    let mut win = [zp8; WINDOW];
    for (r, row) in b.planes.chunks_exact(g.iw).take(g.ih).enumerate() {
        let at = (r + g.pt) * width + g.pl;
        if let Some(d) = win.get_mut(at..at + g.iw) {
            d.copy_from_slice(row);
        }
    }
    // The same layer over the window: no padding, every tap of every tile inside.
    let (wg, wb) = (
        ConvGeom {
            ih: height,
            iw: width,
            pt: 0,
            pl: 0,
            ..*g
        },
        Block {
            planes: win.get(..width * height).unwrap_or(&[]),
            ..*b
        },
    );
    for oy in 0..g.oh {
        for ox in (0..g.ow).step_by(PIXELS) {
            let acc = tile::<1, PIXELS>(&wb, &wg, q.input_zp, (oy, ox), 1, (0, g.kh), (0, g.kw));
            let valid = (g.ow - ox).min(PIXELS);
            store(b, g, q, &acc, (oy * g.ow + ox, 1, valid), out);
        }
    }
    true
}

/// [`run`] for a block of `C` filters: a pointwise layer's plane as one row of pixels; else
/// the rows whose every kernel row is inside the image 8 (then 4) at a time, down each
/// column; the other rows along the row, 8 (then 4) pixels at a time where every kernel
/// column is inside the image.
#[inline(always)]
fn pixels<const C: usize>(b: &Block<'_>, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) {
    let zp = q.input_zp;
    let plane = g.oh * g.ow;
    let pointwise = g.kh == 1 && g.kw == 1 && g.sy == 1 && g.sx == 1 && g.pt == 0 && g.pl == 0;
    if pointwise && g.ih * g.iw == plane {
        let whole = (0, 1);
        let mut at = 0;
        while at + PIXELS <= plane {
            let acc = tile::<C, PIXELS>(b, g, zp, (0, at), 1, whole, whole);
            store(b, g, q, &acc, (at, 1, PIXELS), out);
            at += PIXELS;
        }
        for at in at..plane {
            let acc = tile::<C, 1>(b, g, zp, (0, at), 1, whole, whole);
            store(b, g, q, &acc, (at, 1, 1), out);
        }
        return;
    }
    let span = (g.kw - 1) * g.dx;
    // Pixels whose every kernel column is inside the image.
    let lo = g.pl.div_ceil(g.sx);
    let hi = (g.iw + g.pl).saturating_sub(span).div_ceil(g.sx).min(g.ow);
    // Rows whose every kernel row is inside the image.
    let top = g.pt.div_ceil(g.sy);
    let bottom = (g.ih + g.pt)
        .saturating_sub((g.kh - 1) * g.dy)
        .div_ceil(g.sy)
        .min(g.oh);
    let down = g.sy * g.iw;
    let mut oy = 0;
    while oy < g.oh {
        if oy >= top && oy + PIXELS <= bottom {
            column_tiles::<C, PIXELS>(b, g, q, oy, down, out);
            oy += PIXELS;
            continue;
        }
        if oy >= top && oy + PIXELS / 2 <= bottom {
            column_tiles::<C, { PIXELS / 2 }>(b, g, q, oy, down, out);
            oy += PIXELS / 2;
            continue;
        }
        let ky = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
        let mut ox = 0;
        while ox < g.ow {
            if ox >= lo && ox + PIXELS <= hi {
                let acc = tile::<C, PIXELS>(b, g, zp, (oy, ox), g.sx, ky, (0, g.kw));
                store(b, g, q, &acc, (oy * g.ow + ox, 1, PIXELS), out);
                ox += PIXELS;
            } else if ox >= lo && ox + PIXELS / 2 <= hi {
                let acc = tile::<C, { PIXELS / 2 }>(b, g, zp, (oy, ox), g.sx, ky, (0, g.kw));
                store(b, g, q, &acc, (oy * g.ow + ox, 1, PIXELS / 2), out);
                ox += PIXELS / 2;
            } else {
                let kx = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
                let acc = tile::<C, 1>(b, g, zp, (oy, ox), g.sx, ky, kx);
                store(b, g, q, &acc, (oy * g.ow + ox, 1, 1), out);
                ox += 1;
            }
        }
        oy += 1;
    }
}

/// Rows `oy..oy + P` (every kernel row inside the image), `P` pixels down each column, which
/// admit the same kernel columns; `down` is the input step between them.
#[inline(always)]
fn column_tiles<const C: usize, const P: usize>(
    b: &Block<'_>,
    g: &ConvGeom,
    q: &Requant<'_>,
    oy: usize,
    down: usize,
    out: &mut [i8],
) {
    for ox in 0..g.ow {
        let kx = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
        let acc = tile::<C, P>(b, g, q.input_zp, (oy, ox), down, (0, g.kh), kx);
        store(b, g, q, &acc, (oy * g.ow + ox, g.ow, P), out);
    }
}

/// The accumulators `[filter][pixel]` of `P` pixels, the first at `(oy, ox)`, the others
/// `px` inputs apart, which admit the same kernel rows `ky` and columns `kx`:
/// `sum w * (x - zp)` over those taps, for a block of `C` filters stored as
/// [`crate::format::pack_filters_i8`] orders them.
#[inline(always)]
fn tile<const C: usize, const P: usize>(
    b: &Block<'_>,
    g: &ConvGeom,
    zp: i32,
    (oy, ox): (usize, usize),
    px: usize,
    (ky0, ky1): (usize, usize),
    (kx0, kx1): (usize, usize),
) -> [[i32; P]; C] {
    let (gi, in_plane) = (b.gi, g.ih * g.iw);
    // The P pixels' inputs of the input channel starting at `at`, px apart, less the zero
    // point (outside the planes, which validation rules out: zeros).
    let load = |at: usize| -> [i32; P] {
        let mut x = [0i32; P];
        if let Some(xs) = b.planes.get(at..at.wrapping_add((P - 1) * px + 1)) {
            for (v, s) in x.iter_mut().zip(xs.iter().step_by(px.max(1))) {
                *v = i32::from(*s) - zp;
            }
        }
        x
    };
    // Inputs of a tap whose weights are stored in interleaved pairs.
    let paired = if C == I8_BLOCK && gi > 1 { gi & !1 } else { 0 };
    let mut acc = [[0i32; P]; C];
    for ky in ky0..ky1 {
        let iy = (oy * g.sy + ky * g.dy).wrapping_sub(g.pt);
        for kx in kx0..kx1 {
            let first = iy
                .wrapping_mul(g.iw)
                .wrapping_add((ox * g.sx + kx * g.dx).wrapping_sub(g.pl));
            let tap = (ky * g.kw + kx) * gi * C;
            let Some(ws) = b.w.get(tap..tap + gi * C) else {
                continue;
            };
            for (j, w) in ws.chunks_exact(8).take(paired / 2).enumerate() {
                let (xa, xb) = (
                    load(first.wrapping_add(2 * j * in_plane)),
                    load(first.wrapping_add((2 * j + 1) * in_plane)),
                );
                let &[w0, w1, w2, w3, w4, w5, w6, w7] = w else {
                    continue;
                };
                // Word k of the pair: filters 2k and 2k + 1 at inputs 2j, 2j + 1.
                let by_filter = [(w0, w2), (w1, w3), (w4, w6), (w5, w7)];
                for (a, &(wa, wb)) in acc.iter_mut().zip(&by_filter) {
                    let (wa, wb) = (i32::from(wa), i32::from(wb));
                    for ((a, &xa), &xb) in a.iter_mut().zip(&xa).zip(&xb) {
                        *a = a.wrapping_add(wa * xa + wb * xb);
                    }
                }
            }
            for (i, w) in ws.chunks_exact(C).enumerate().skip(paired) {
                let x = load(first.wrapping_add(i * in_plane));
                for (a, &w) in acc.iter_mut().zip(w) {
                    let w = i32::from(w);
                    for (a, &x) in a.iter_mut().zip(&x) {
                        *a = a.wrapping_add(w * x);
                    }
                }
            }
        }
    }
    acc
}

/// Requantize the first `valid` of `P` pixels' accumulators into the block's output planes,
/// the first at `pixel`, the others `op` apart, as the device does.
#[inline(always)]
fn store<const C: usize, const P: usize>(
    b: &Block<'_>,
    g: &ConvGeom,
    q: &Requant<'_>,
    acc: &[[i32; P]; C],
    (pixel, op, valid): (usize, usize, usize),
    out: &mut [i8],
) {
    let out_plane = g.oh * g.ow;
    for (o, row) in acc.iter().enumerate() {
        let Some(requant) = q.channel(b.f0 + o) else {
            return;
        };
        for (p, &a) in row.iter().enumerate().take(valid) {
            if let Some(d) = out.get_mut(o * out_plane + pixel + p * op) {
                *d = requant(a);
            }
        }
    }
}
