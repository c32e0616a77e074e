//! 2-D convolution over NCHW (grouped and depthwise included) and dense layers, without
//! im2col.
//!
//! Output-stationary, a row of output pixels per call: for each pixel, a block of up to
//! [`FILTER_BLOCK`] filters accumulates in registers over every tap (kernel row, kernel
//! column, input channel) and is stored once. The filters are stored block by block as
//! `[taps][inputs][block]` ([`crate::format::pack_filters`]), so the weights one input value
//! meets are one contiguous run: a tap costs one input load per `block` multiply-adds (on
//! Cortex-M4F/M7 an assembly loop, see `arm`). The innermost loop runs over the input
//! channels, or over the kernel columns where there are fewer channels (a first layer). The
//! taps that fall into the padding are cut off once per pixel in closed form: no bounds logic
//! inside the tap loops. A depthwise filter has no channel loop to amortise an input load, so
//! its kernel shares each weight between 4 adjacent pixels instead. The activation is one pass
//! over the output afterwards.
//!
//! A dense layer is a 1x1 convolution over a 1x1 image.

use crate::format::{block_len, Act, FILTER_BLOCK};

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

/// Kernel positions `k` in `0..n` whose input index `first + k * step - pad` lies in
/// `0..size`: returns `(k0, k1)` (empty if `k0 >= k1`).
#[inline(never)]
fn lanes(first: usize, pad: usize, step: usize, size: usize, n: usize) -> (usize, usize) {
    // k * step + first >= pad  and  k * step + first < size + pad.
    let before = pad.saturating_sub(first);
    let inside = (size + pad).saturating_sub(first);
    if step == 1 {
        // The common case, without integer divisions.
        return (before, inside.min(n));
    }
    (before.div_ceil(step), inside.div_ceil(step).min(n))
}

/// The accumulators of a block: one multiply-add per filter, written out lane by lane so that
/// they stay in registers even where the optimiser does not unroll (opt-level "s").
trait Lanes: Copy {
    /// `self[o] += w[o] * x` for every lane.
    fn mac(&mut self, w: &Self, x: f32);

    /// `out[o * stride] = self[o]` for every lane (lanes past the end of `out` are dropped).
    fn store(&self, out: &mut [f32], stride: usize);

    /// `self[o] += w[k * w_step + o] * x[k * x_step]` for `k` in `0..n` (steps in f32): the
    /// inner loop, one input load per `LEN` multiply-adds.
    ///
    /// # Safety
    /// Every element read (the lanes' weights at each `w + k * w_step`, one input at each
    /// `x + k * x_step`, `k < n`) lies inside its slice.
    #[inline(always)]
    unsafe fn run(&mut self, x: *const f32, x_step: usize, w: *const f32, w_step: usize, n: usize) {
        // SAFETY: the caller's contract.
        unsafe { run_portable(self, x, x_step, w, w_step, n) }
    }
}

/// [`Lanes::run`] in plain Rust.
///
/// # Safety
/// As [`Lanes::run`].
#[inline(always)]
unsafe fn run_portable<L: Lanes>(
    acc: &mut L,
    mut x: *const f32,
    x_step: usize,
    mut w: *const f32,
    w_step: usize,
    n: usize,
) {
    for _ in 0..n {
        // SAFETY: the caller's contract.
        let (xv, wv) = unsafe { (*x, &*w.cast::<L>()) };
        acc.mac(wv, xv);
        x = x.wrapping_add(x_step);
        w = w.wrapping_add(w_step);
    }
}

macro_rules! lanes_impl {
    ($n:literal $(, $arm_run:ident)?: $($i:literal)*) => {
        impl Lanes for [f32; $n] {
            #[inline(always)]
            fn mac(&mut self, w: &Self, x: f32) {
                $( self[$i] += w[$i] * x; )*
            }

            #[inline(always)]
            fn store(&self, out: &mut [f32], stride: usize) {
                $(
                    if let Some(o) = out.get_mut($i * stride) {
                        *o = self[$i];
                    }
                )*
            }

            $(
                #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
                #[inline(always)]
                unsafe fn run(
                    &mut self,
                    x: *const f32,
                    x_step: usize,
                    w: *const f32,
                    w_step: usize,
                    n: usize,
                ) {
                    // SAFETY: the caller's contract.
                    unsafe { arm::$arm_run(self, x, x_step, w, w_step, n) }
                }
            )?
        }
    };
}
lanes_impl!(8, run8: 0 1 2 3 4 5 6 7);
lanes_impl!(4, run4: 0 1 2 3);
lanes_impl!(1: 0);

/// The inner loop for Cortex-M4F/M7 (FPv4-SP, hard-float ABI), written out because the
/// compiler neither keeps a block's accumulators where `vldm` can feed them nor loads a run of
/// weights with one `vldm`: per input, one `vldr`, one `vldm` for the block's weights, then one
/// `vmla` per filter. `vmla` rounds the product before adding (it is not fused), so results
/// are bit-identical to the portable loop's `a += w * x`. The floating-point registers are
/// saved and restored inside (stable Rust cannot name them as operands on this target).
#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
mod arm {
    use core::arch::asm;

    /// `run8` / `run4`: the inner loop for a block of 8 / 4 filters. `$w` names the weight
    /// registers, `$x` the input's, `$acc` the accumulators' (s16 up, callee-saved, so saved
    /// and restored here with the others) and `$mla` is one `vmla` line per filter.
    macro_rules! run_n {
        ($name:ident, $n:literal, $w:literal, $x:literal, $acc:literal, $($mla:literal)*) => {
            /// # Safety
            /// As [`super::Lanes::run`].
            #[inline(always)]
            pub(super) unsafe fn $name(
                acc: &mut [f32; $n],
                x: *const f32,
                xs: usize,
                w: *const f32,
                ws: usize,
                n: usize,
            ) {
                if n == 0 {
                    return;
                }
                // SAFETY: reads `acc`, n inputs and n runs of weights inside their slices
                // (the caller's contract), writes `acc`; every register it uses is restored.
                unsafe {
                    asm!(
                        concat!("vpush {{", $w, ", ", $x, "}}"),
                        concat!("vpush {{", $acc, "}}"),
                        concat!("vldmia {acc}, {{", $acc, "}}"),
                        "2:",
                        concat!("vldr ", $x, ", [{x}]"),
                        concat!("vldmia {w}, {{", $w, "}}"),
                        "add {x}, {xs}",
                        "add {w}, {ws}",
                        $($mla,)*
                        "subs {n}, {n}, #1",
                        "bne 2b",
                        concat!("vstmia {acc}, {{", $acc, "}}"),
                        concat!("vpop {{", $acc, "}}"),
                        concat!("vpop {{", $w, ", ", $x, "}}"),
                        acc = in(reg) acc.as_mut_ptr(),
                        x = inout(reg) x => _,
                        xs = in(reg) xs * 4,
                        w = inout(reg) w => _,
                        ws = in(reg) ws * 4,
                        n = inout(reg) n => _,
                    );
                }
            }
        };
    }

    run_n!(run8, 8, "s0-s7", "s8", "s16-s23",
        "vmla.f32 s16, s0, s8" "vmla.f32 s17, s1, s8" "vmla.f32 s18, s2, s8"
        "vmla.f32 s19, s3, s8" "vmla.f32 s20, s4, s8" "vmla.f32 s21, s5, s8"
        "vmla.f32 s22, s6, s8" "vmla.f32 s23, s7, s8");
    run_n!(run4, 4, "s0-s3", "s4", "s16-s19",
        "vmla.f32 s16, s0, s4" "vmla.f32 s17, s1, s4" "vmla.f32 s18, s2, s4"
        "vmla.f32 s19, s3, s4");
}

/// The filters of one block: `C` filters as runs of `C` weights (`[taps][gi]`).
#[derive(Clone, Copy)]
enum Filters<'w> {
    Eight(&'w [[f32; 8]], &'w [f32; 8]),
    Four(&'w [[f32; 4]], &'w [f32; 4]),
    One(&'w [[f32; 1]], &'w [f32; 1]),
}

impl Filters<'_> {
    /// Output channels, and the runs of weights the block holds.
    fn channels_and_runs(&self) -> (usize, usize) {
        match self {
            Filters::Eight(w, _) => (8, w.len()),
            Filters::Four(w, _) => (4, w.len()),
            Filters::One(w, _) => (1, w.len()),
        }
    }
}

/// Output pixels `xs` of row `oy` for a block of `C` filters: each pixel accumulates every
/// tap in registers and stores its `C` sums at `out[ox + o * oh * ow]` (`out` starts at the
/// row in the block's first plane). The taps that fall into the padding are cut off once per
/// pixel ([`lanes`]); the inner loop runs over the input channels, or over the kernel columns
/// when there are fewer channels (a first layer, a depthwise filter).
///
/// # Safety
/// `planes` holds the group's `gi` input planes and `w` at least `kh * kw * gi` runs.
#[inline(never)]
unsafe fn row<const C: usize>(
    g: &ConvGeom,
    gi: usize,
    planes: &[f32],
    (w, bias): (&[[f32; C]], &[f32; C]),
    oy: usize,
    xs: core::ops::Range<usize>,
    out: &mut [f32],
) where
    [f32; C]: Lanes,
{
    let in_plane = g.ih * g.iw;
    let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
    for ox in xs {
        let (kx0, kx1) = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
        let mut acc = *bias;
        if kx0 < kx1 {
            let nkx = kx1 - kx0;
            // The input column of the first admitted tap.
            let x_col = ox * g.sx + kx0 * g.dx - g.pl;
            for ky in ky0..ky1 {
                let x_row = planes
                    .as_ptr()
                    .wrapping_add((oy * g.sy + ky * g.dy - g.pt) * g.iw + x_col);
                let w_row = w
                    .as_ptr()
                    .cast::<f32>()
                    .wrapping_add((ky * g.kw + kx0) * gi * C);
                // The longer of the two loops innermost: (outer count, outer input step,
                // outer weight step, inner input step, inner weight step, inner count).
                let (outer, oxs, ows, ixs, iws, n) = if gi >= nkx {
                    (nkx, g.dx, gi * C, in_plane, C, gi)
                } else {
                    (gi, in_plane, C, g.dx, gi * C, nkx)
                };
                for k in 0..outer {
                    let (x, w) = (x_row.wrapping_add(k * oxs), w_row.wrapping_add(k * ows));
                    // SAFETY: tap (ky, kx0 + k) of channel c reads input row
                    // oy * sy + ky * dy - pt < ih and column x_col + k * dx < iw (both from
                    // `lanes`) of plane c < gi, and run (ky * kw + kx0 + k) * gi + c of
                    // kh * kw * gi: all inside (the caller's contract).
                    unsafe { acc.run(x, ixs, w, iws, n) };
                }
            }
        }
        acc.store(out.get_mut(ox..).unwrap_or(&mut []), g.oh * g.ow);
    }
}

/// One depthwise channel (one filter over one input plane): no channel loop to share an
/// input between filters, so pixels share the weights instead. At stride 1, runs of 4
/// adjacent output pixels whose windows lie wholly inside the input columns stream each
/// weight past four accumulators ([`Lanes::run`] with the roles of weights and inputs
/// swapped); the border pixels go through [`row`]. Either way a pixel's sum is formed in the
/// same order (bias, kernel rows, kernel columns).
#[inline(never)]
fn depthwise(g: &ConvGeom, plane: &[f32], f: (&[[f32; 1]], &[f32; 1]), out: &mut [f32]) {
    if plane.len() < g.ih * g.iw || f.0.len() < g.kh * g.kw || out.len() < g.oh * g.ow {
        return;
    }
    // Interior columns at stride 1: pl <= ox and ox - pl + (kw - 1) * dx < iw; tiles of 4
    // cover lo..lo + 4 * tiles.
    let hi = (g.iw + g.pl).saturating_sub((g.kw - 1) * g.dx).min(g.ow);
    let lo = g.pl.min(hi);
    let tiles = if g.sx == 1 { (hi - lo) / 4 } else { 0 };
    let w = f.0.as_flattened();
    for oy in 0..g.oh {
        let Some(out_row) = out.get_mut(oy * g.ow..) else {
            return;
        };
        let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
        for t in 0..tiles {
            let ox = lo + 4 * t;
            let mut acc = [f.1[0]; 4];
            for ky in ky0..ky1 {
                let x = (oy * g.sy + ky * g.dy - g.pt) * g.iw + ox - g.pl;
                let (x, wk) = (
                    plane.as_ptr().wrapping_add(x),
                    w.as_ptr().wrapping_add(ky * g.kw),
                );
                // SAFETY: the row is inside the plane (lanes); for kernel column kx the four
                // pixels read columns ox - pl + kx * dx + 0..4, inside for interior pixels;
                // the weights ky * kw + kx lie below kh * kw (checked above).
                unsafe { run_portable(&mut acc, wk, 1, x, g.dx, g.kw) };
            }
            acc.store(out_row.get_mut(ox..).unwrap_or(&mut []), 1);
        }
        // SAFETY: one plane, kh * kw weights (checked above).
        unsafe {
            row(g, 1, plane, f, oy, 0..lo.min(g.ow), out_row);
            row(g, 1, plane, f, oy, lo + 4 * tiles..g.ow, out_row);
        }
    }
}

/// One block of filters over every output pixel of a group: `planes` are the group's `gi`
/// input planes, `out` the block's output planes.
#[inline(never)]
fn block(g: &ConvGeom, gi: usize, planes: &[f32], f: Filters<'_>, out: &mut [f32]) {
    let (c, runs) = f.channels_and_runs();
    // What the row kernel's safety contract needs, checked once for the whole block.
    if planes.len() < gi * g.ih * g.iw || runs < g.kh * g.kw * gi || out.len() < c * g.oh * g.ow {
        return;
    }
    for oy in 0..g.oh {
        let Some(at) = out.get_mut(oy * g.ow..) else {
            return;
        };
        // SAFETY: the lengths were checked above.
        unsafe {
            match f {
                Filters::Eight(w, b) => row(g, gi, planes, (w, b), oy, 0..g.ow, at),
                Filters::Four(w, b) => row(g, gi, planes, (w, b), oy, 0..g.ow, at),
                Filters::One(w, b) => row(g, gi, planes, (w, b), oy, 0..g.ow, at),
            }
        }
    }
}

pub(crate) fn conv2d(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    let groups = g.groups.max(1);
    let (gi, go) = (g.in_c / groups, g.out_c / groups);
    let (in_plane, out_plane, filter) = (g.ih * g.iw, g.oh * g.ow, gi * g.kh * g.kw);
    if in_plane == 0 || out_plane == 0 || filter == 0 || go == 0 {
        return;
    }
    if g.sx == 0 || g.sy == 0 || g.dx == 0 || g.dy == 0 {
        return;
    }
    let depthwise_layer = go == 1 && gi == 1;
    // Filter f0 is the (f0 % go)-th of group f0 / go; a block never spans two groups.
    let mut f0 = 0;
    while f0 < g.out_c {
        let n = block_len(go - f0 % go);
        let planes = input.get(f0 / go * gi * in_plane..).unwrap_or(&[]);
        let wb = w.get(f0 * filter..).unwrap_or(&[]);
        let bb = b.get(f0..).unwrap_or(&[]);
        let ob = out.get_mut(f0 * out_plane..).unwrap_or(&mut []);
        match (n, bb.first_chunk(), bb.first_chunk(), bb.first_chunk()) {
            (FILTER_BLOCK, Some(b8), _, _) => {
                block(g, gi, planes, Filters::Eight(wb.as_chunks().0, b8), ob)
            }
            (4, _, Some(b4), _) => block(g, gi, planes, Filters::Four(wb.as_chunks().0, b4), ob),
            (_, _, _, Some(b1)) if depthwise_layer => {
                depthwise(g, planes, (wb.as_chunks().0, b1), ob)
            }
            (_, _, _, Some(b1)) => block(g, gi, planes, Filters::One(wb.as_chunks().0, b1), ob),
            _ => {}
        }
        f0 += n;
    }
    // One pass over the output: the activation's match stays out of the pixel loops.
    act.apply_slice(out);
}

/// `out = act(W x + b)`: a 1x1 convolution of `x.len()` channels over one pixel.
pub(crate) fn dense(x: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    let g = ConvGeom {
        in_c: x.len(),
        ih: 1,
        iw: 1,
        out_c: out.len(),
        oh: 1,
        ow: 1,
        kh: 1,
        kw: 1,
        sy: 1,
        sx: 1,
        dy: 1,
        dx: 1,
        pt: 0,
        pl: 0,
        groups: 1,
    };
    conv2d(&g, x, w, b, act, out);
}
