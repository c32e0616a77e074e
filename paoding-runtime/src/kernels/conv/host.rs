//! Host-only tiles of the f32 convolution: several output pixels at once.
//!
//! The device's loops keep one pixel's block of accumulators in registers; on x86 that is one
//! chain of dependent vector additions, and the vector units wait on it. Here a tile of
//! [`PIXELS`] pixels shares each load of a block's weights and gives the units that many
//! independent chains. Every output is still summed tap by tap in the device's order, with
//! separate multiplications and additions (never fused), so the bits are the device's.
//! Nothing here is compiled for Arm: the runtime's code size there is unchanged.

use super::{lanes, tap_loops, ConvGeom, Filters, Lanes, FILTER_BLOCK};

/// Output pixels per tile: 4 pixels of a block of 8 filters are 8 SSE accumulators, which
/// keep both of a core's floating-point pipes busy and still leave registers for the weights.
pub(super) const PIXELS: usize = 4;

/// The output rows of a block whose every kernel row lies inside the input, in tiles of
/// [`PIXELS`] vertically adjacent pixels: the pixels of a column admit the same kernel
/// columns, so they share one loop structure, whatever the image's width. Returns the rows
/// done; [`super::row`] does the others.
///
/// # Safety
/// As [`super::row`] for every row: `planes` holds the group's `gi` input planes, `f.w` at
/// least `kh * kw * gi * c` weights and `out` `c` output planes.
pub(super) unsafe fn rows(
    g: &ConvGeom,
    gi: usize,
    planes: &[f32],
    f: &Filters<'_>,
    out: &mut [f32],
) -> core::ops::Range<usize> {
    // oy * sy >= pt  and  oy * sy + (kh - 1) * dy < ih + pt.
    let lo = g.pt.div_ceil(g.sy);
    let hi = (g.ih + g.pt)
        .saturating_sub((g.kh - 1) * g.dy)
        .div_ceil(g.sy)
        .min(g.oh);
    let end = lo + hi.saturating_sub(lo) / PIXELS * PIXELS;
    let span = (g.kw - 1) * g.dx;
    for oy in (lo..end).step_by(PIXELS) {
        let x_row = planes.as_ptr().wrapping_add((oy * g.sy - g.pt) * g.iw);
        for ox in 0..g.ow {
            // The kernel columns this column's pixels admit, as `row` finds them.
            let (kx0, loops) = if ox * g.sx >= g.pl && ox * g.sx + span < g.iw + g.pl {
                (0, tap_loops(g, gi, f.c, g.kw))
            } else {
                let (kx0, kx1) = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
                (kx0, tap_loops(g, gi, f.c, kx1.saturating_sub(kx0)))
            };
            // SAFETY: every kernel row of rows oy..oy + PIXELS < hi and every admitted
            // column are inside the input planes; the weights and outputs are the block's
            // (the caller's contract).
            unsafe {
                pixels(
                    f,
                    Tile {
                        x: x_row.wrapping_add((ox * g.sx + kx0 * g.dx).wrapping_sub(g.pl)),
                        px: g.sy * g.iw,
                        op: g.ow,
                        rows: g.kh,
                        x_row: g.dy * g.iw,
                        w_row: g.kw * gi * f.c,
                        w: f.w.as_ptr().wrapping_add(kx0 * gi * f.c),
                        loops,
                        out: out.as_mut_ptr().wrapping_add(oy * g.ow + ox),
                        stride: g.oh * g.ow,
                    },
                )
            };
        }
    }
    lo..end
}

/// The first pixels of a pointwise block of 8 filters (a 1x1 convolution at stride 1
/// without padding, input pixel q for output pixel q), in tiles of [`PIXELS`] adjacent
/// pixels: returns how many were done (the device's pair kernel does the rest).
///
/// # Safety
/// `planes` holds `gi` planes of `plane` floats, `f.w` `gi` runs of 8 weights and `out` 8
/// planes of `plane` floats.
pub(super) unsafe fn pointwise(
    gi: usize,
    planes: &[f32],
    f: &Filters<'_>,
    out: &mut [f32],
    plane: usize,
) -> usize {
    let end = plane / PIXELS * PIXELS;
    for q in (0..end).step_by(PIXELS) {
        // SAFETY: pixels q..q + PIXELS <= plane of every plane (the caller's contract).
        unsafe {
            pixels(
                f,
                Tile {
                    x: planes.as_ptr().add(q),
                    px: 1,
                    op: 1,
                    rows: 1,
                    x_row: 0,
                    w_row: 0,
                    w: f.w.as_ptr(),
                    loops: (1, 0, 0, plane, FILTER_BLOCK, gi),
                    out: out.as_mut_ptr().add(q),
                    stride: plane,
                },
            )
        };
    }
    end
}

/// Where one tile's taps are and how to walk them: `x` is the first pixel's first tap; `px`
/// and `op` the input and output steps between pixels; `rows` kernel rows, `x_row` and
/// `w_row` inputs and weights apart; `loops` a row's taps ([`tap_loops`]); lane `o` of pixel
/// `p` goes to `out + p * op + o * stride`.
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    px: usize,
    op: usize,
    rows: usize,
    x_row: usize,
    w_row: usize,
    w: *const f32,
    loops: (usize, usize, usize, usize, usize, usize),
    out: *mut f32,
    stride: usize,
}

/// The taps of one block over [`PIXELS`] pixels, each summed in the order [`super::row`]
/// sums one.
///
/// # Safety
/// Every tap of every pixel lies inside the input planes, every run of weights read inside
/// `f.w`, and every output written inside one slice.
#[inline(never)]
unsafe fn pixels(f: &Filters<'_>, t: Tile) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::x86::has_avx() {
        // SAFETY: the caller's contract; the CPU has AVX.
        return unsafe { pixels_avx(f, t) };
    }
    // SAFETY: the caller's contract.
    unsafe { pixels_in(f, t) }
}

/// [`pixels`] compiled for AVX (8 lanes a vector, three-operand forms; no FMA).
///
/// # Safety
/// As [`pixels`], on a CPU with AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn pixels_avx(f: &Filters<'_>, t: Tile) {
    // SAFETY: the caller's contract.
    unsafe { pixels_in(f, t) }
}

/// [`pixels`]'s body, inlined into each instruction set's copy.
///
/// # Safety
/// As [`pixels`].
#[inline(always)]
unsafe fn pixels_in(f: &Filters<'_>, t: Tile) {
    // SAFETY: the caller's contract, for the block's width.
    unsafe {
        match (f.c, f.bias.first_chunk::<4>(), f.bias.first_chunk::<1>()) {
            (FILTER_BLOCK, _, _) => taps(f.bias, t),
            (4, Some(b), _) => taps(*b, t),
            (_, _, Some(b)) => taps(*b, t),
            _ => {}
        }
    }
}

/// [`pixels`] for a block of `L`'s width.
///
/// # Safety
/// As [`pixels`].
#[inline(always)]
unsafe fn taps<L: Lanes>(bias: L, t: Tile) {
    let Tile {
        x,
        px,
        op,
        rows,
        x_row,
        w_row,
        w,
        loops: (outer, oxs, ows, ixs, iws, n),
        out,
        stride,
    } = t;
    let mut acc = [bias; PIXELS];
    for r in 0..rows {
        let (xr, wr) = (x.wrapping_add(r * x_row), w.wrapping_add(r * w_row));
        for k in 0..outer {
            let (mut xi, mut wi) = (xr.wrapping_add(k * oxs), wr.wrapping_add(k * ows));
            for _ in 0..n {
                // SAFETY: this tap's run of weights and its input for each pixel (the
                // caller's contract).
                let wv = unsafe { &*wi.cast::<L>() };
                for (p, a) in acc.iter_mut().enumerate() {
                    // SAFETY: as above.
                    a.mac(wv, unsafe { *xi.add(p * px) });
                }
                xi = xi.wrapping_add(ixs);
                wi = wi.wrapping_add(iws);
            }
        }
    }
    for (p, a) in acc.iter().enumerate() {
        // SAFETY: lane o of pixel p goes to out + p * op + o * stride (the caller's
        // contract).
        unsafe { a.store(out.add(p * op), stride) };
    }
}

/// Several blocks of 8 filters of one group at once, from filter `f0`: 4 blocks when the
/// group has 32 filters left, 2 when it has 16, each pixel summing every block's taps in the
/// order [`super::row`] sums one block (one input load feeds every block: independent chains
/// on any image, down to a dense layer's one pixel). Returns the filters done (0: fewer than
/// 16 left, or buffers shorter than the geometry, which the one-block path deals with).
#[allow(clippy::too_many_arguments)]
pub(super) fn blocks(
    g: &ConvGeom,
    gi: usize,
    go: usize,
    f0: usize,
    input: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
) -> usize {
    let left = go - f0 % go;
    let t = if left >= 4 * FILTER_BLOCK {
        4
    } else if left >= 2 * FILTER_BLOCK {
        2
    } else {
        return 0;
    };
    let n = t * FILTER_BLOCK;
    let (in_plane, out_plane, filter) = (g.ih * g.iw, g.oh * g.ow, gi * g.kh * g.kw);
    let group = f0 / go;
    let (Some(planes), Some(w), Some(b), Some(out)) = (
        input.get(group * gi * in_plane..(group + 1) * gi * in_plane),
        w.get(f0 * filter..(f0 + n) * filter),
        b.get(f0..f0 + n),
        out.get_mut(f0 * out_plane..(f0 + n) * out_plane),
    ) else {
        return 0;
    };
    let blocks = Blocks {
        g,
        gi,
        t,
        planes,
        w,
        b,
    };
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::x86::has_avx() {
        // SAFETY: the lengths were checked above; the CPU has AVX.
        unsafe { blocks_avx(&blocks, out) };
        return n;
    }
    // SAFETY: the lengths were checked above.
    unsafe { blocks_in(&blocks, out) };
    n
}

/// `t` (4 or 2) blocks of 8 filters of one group: the group's `gi` input `planes`, the
/// blocks' `8 t` filters `w` and their biases `b`.
struct Blocks<'a> {
    g: &'a ConvGeom,
    gi: usize,
    t: usize,
    planes: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
}

/// [`blocks_in`] compiled for AVX (no FMA).
///
/// # Safety
/// As [`blocks_in`], on a CPU with AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn blocks_avx(blocks: &Blocks<'_>, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe { blocks_in(blocks, out) }
}

/// The blocks over every pixel, into their output planes `out`.
///
/// # Safety
/// `planes`, `w`, `b` and `out` hold what the geometry says.
#[inline(always)]
unsafe fn blocks_in(blocks: &Blocks<'_>, out: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        if blocks.t == 4 {
            blocks_of::<4>(blocks, out)
        } else {
            blocks_of::<2>(blocks, out)
        }
    }
}

/// [`blocks_in`] for `T` blocks.
///
/// # Safety
/// As [`blocks_in`].
#[inline(always)]
unsafe fn blocks_of<const T: usize>(
    &Blocks {
        g,
        gi,
        planes,
        w,
        b,
        ..
    }: &Blocks<'_>,
    out: &mut [f32],
) {
    const C: usize = FILTER_BLOCK;
    let (out_plane, block_w) = (g.oh * g.ow, gi * g.kh * g.kw * C);
    let mut bias = [[0.0f32; C]; T];
    for (d, s) in bias.iter_mut().zip(b.chunks_exact(C)) {
        d.copy_from_slice(s);
    }
    let span = (g.kw - 1) * g.dx;
    let (x_row, w_row) = (g.dy * g.iw, g.kw * gi * C);
    for oy in 0..g.oh {
        let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
        let x_top = planes.as_ptr().wrapping_add(
            (oy * g.sy + ky0 * g.dy)
                .wrapping_sub(g.pt)
                .wrapping_mul(g.iw),
        );
        let w_top = w.as_ptr().wrapping_add(ky0 * w_row);
        for ox in 0..g.ow {
            // The kernel columns this pixel admits and its tap loops, as `row` finds them.
            let (kx0, (outer, oxs, ows, ixs, iws, n)) =
                if ox * g.sx >= g.pl && ox * g.sx + span < g.iw + g.pl {
                    (0, tap_loops(g, gi, C, g.kw))
                } else {
                    let (kx0, kx1) = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
                    (kx0, tap_loops(g, gi, C, kx1.saturating_sub(kx0)))
                };
            let x = x_top.wrapping_add((ox * g.sx + kx0 * g.dx).wrapping_sub(g.pl));
            let wp = w_top.wrapping_add(kx0 * gi * C);
            let mut acc = bias;
            for r in 0..ky1.saturating_sub(ky0) {
                let (xr, wr) = (x.wrapping_add(r * x_row), wp.wrapping_add(r * w_row));
                for k in 0..outer {
                    let (mut xi, mut wi) = (xr.wrapping_add(k * oxs), wr.wrapping_add(k * ows));
                    for _ in 0..n {
                        // SAFETY: an admitted tap of this pixel (inside the planes, as in
                        // `row`) and its run of 8 weights in each block (the caller's
                        // contract).
                        let xv = unsafe { *xi };
                        for (j, a) in acc.iter_mut().enumerate() {
                            // SAFETY: as above.
                            a.mac(unsafe { &*wi.add(j * block_w).cast::<[f32; C]>() }, xv);
                        }
                        xi = xi.wrapping_add(ixs);
                        wi = wi.wrapping_add(iws);
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                // SAFETY: filter j * 8 + o of pixel (oy, ox) is inside `out` (the caller's
                // contract).
                unsafe {
                    a.store(
                        out.as_mut_ptr().add(j * C * out_plane + oy * g.ow + ox),
                        out_plane,
                    )
                };
            }
        }
    }
}

/// Largest zero-padded plane [`depthwise`] takes, in floats; larger ones go through the
/// device's window.
const FLAT_PLANE: usize = 4096;
/// Outputs one depthwise tile sums at once: the accumulators of two AVX registers.
const FLAT_TILE: usize = 16;

/// A depthwise layer at stride 1 without dilation (one filter per input plane), channel by
/// channel over a zero-padded copy of its plane whose rows are `ow + kw - 1` wide: output
/// `(oy, ox)` sits at `oy * width + ox` and reads tap `(ky, kx)` at a fixed offset from it,
/// `ky * width + kx`, so one tile runs along the whole plane rather than one row at a time
/// (the device's window wastes most of a tile of 8 on rows of 5 pixels, as MLPerf's keyword
/// spotter has them). Each output is its bias plus every tap in order, padding included,
/// multiplied and added apart: the device's sum, to the bit. `false` (nothing written) when
/// the layer is not of that kind or its padded plane is larger than [`FLAT_PLANE`].
pub(super) fn depthwise(
    g: &ConvGeom,
    input: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
) -> bool {
    let unit = (g.sx, g.sy, g.dx, g.dy) == (1, 1, 1, 1);
    let one_per_plane = g.in_c == g.groups && g.out_c == g.groups;
    if !unit || !one_per_plane || g.kh == 0 || g.kw == 0 || g.oh == 0 || g.ow == 0 {
        return false;
    }
    // The tiles read up to a kernel row's width past the padded plane (see `depthwise_in`).
    let (width, height) = (g.ow + g.kw - 1, g.oh + g.kh - 1);
    match height.checked_mul(width).and_then(|n| n.checked_add(g.kw)) {
        Some(n) if n <= FLAT_PLANE => {}
        _ => return false,
    }
    let (in_plane, out_plane, taps) = (g.ih * g.iw, g.oh * g.ow, g.kh * g.kw);
    if input.len() < g.in_c * in_plane
        || w.len() < g.out_c * taps
        || b.len() < g.out_c
        || out.len() < g.out_c * out_plane
    {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::x86::has_avx() {
        // SAFETY: the CPU has AVX.
        unsafe { depthwise_avx(g, input, w, b, out) };
        return true;
    }
    depthwise_in(g, input, w, b, out);
    true
}

/// [`depthwise_in`] compiled for AVX (no FMA).
///
/// # Safety
/// The CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn depthwise_avx(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], out: &mut [f32]) {
    depthwise_in(g, input, w, b, out)
}

/// [`depthwise`]'s loops, on the geometry and lengths it checked (every `get` below finds
/// its slice; a violated check writes nothing more rather than panic).
#[inline(always)]
fn depthwise_in(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], out: &mut [f32]) {
    let (width, height, taps) = (g.ow + g.kw - 1, g.oh + g.kh - 1, g.kh * g.kw);
    let (in_plane, out_plane) = (g.ih * g.iw, g.oh * g.ow);
    // A tile at q reads padded[q + ky * width + kx..][..FLAT_TILE]: with q < oh * width, below
    // height * width + kw + FLAT_TILE - 1 (checked against FLAT_PLANE); the slack stays zero.
    let mut padded = [0.0f32; FLAT_PLANE + FLAT_TILE];
    let mut wide = [0.0f32; FLAT_PLANE + FLAT_TILE];
    let outputs = g.oh * width;
    // Input row iy is padded row iy + pt, column ix padded column ix + pl; only rows and
    // columns some output reads are kept.
    let ih = g.ih.min(height.saturating_sub(g.pt));
    let (x0, x1) = (g.pl.min(width), (g.iw + g.pl).min(width));
    let planes = input.chunks_exact(in_plane.max(1));
    let filters = w.chunks_exact(taps.max(1));
    let outs = out.chunks_exact_mut(out_plane.max(1));
    for (((plane, filter), &bias), dst) in planes.zip(filters).zip(b).zip(outs).take(g.out_c) {
        for iy in 0..ih {
            let r = (iy + g.pt) * width;
            let (Some(to), Some(from)) = (
                padded.get_mut(r + x0..r + x1),
                plane.get(iy * g.iw..iy * g.iw + x1 - x0),
            ) else {
                return;
            };
            to.copy_from_slice(from);
        }
        for q in (0..outputs).step_by(FLAT_TILE) {
            let mut acc = [bias; FLAT_TILE];
            // Taps in the filter's order, (ky, kx) at q + ky * width + kx.
            for (ky, row) in filter.chunks_exact(g.kw.max(1)).enumerate() {
                let at = q + ky * width;
                for (kx, &wt) in row.iter().enumerate() {
                    let Some(xs) = padded.get(at + kx..at + kx + FLAT_TILE) else {
                        return;
                    };
                    for (a, &x) in acc.iter_mut().zip(xs) {
                        *a += x * wt;
                    }
                }
            }
            let Some(to) = wide.get_mut(q..q + FLAT_TILE) else {
                return;
            };
            to.copy_from_slice(&acc);
        }
        for (oy, row) in dst.chunks_exact_mut(g.ow.max(1)).enumerate() {
            let Some(from) = wide.get(oy * width..oy * width + g.ow) else {
                return;
            };
            row.copy_from_slice(from);
        }
    }
}
