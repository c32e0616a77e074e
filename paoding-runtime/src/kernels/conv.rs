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
//! inside the tap loops. A 1x1 convolution at stride 1 runs a block over two pixels at once. A
//! depthwise filter has no channel loop to amortise an input load, so its kernel shares each
//! weight between 8 adjacent pixels of a zero-padded window instead ([`depthwise`]); on
//! Cortex-M the int8 layers with one input plane per group run through the same window
//! ([`depthwise_i8`]). The activation is one pass over the output afterwards.
//!
//! A dense layer is a 1x1 convolution over a 1x1 image.

use super::{copy_values, fill, splat, zeroed};
use crate::format::{block_len, Act, FILTER_BLOCK};
use core::num::NonZeroUsize;

#[cfg(not(target_arch = "arm"))]
mod host;

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

impl ConvGeom {
    /// A dense layer of `units` outputs over `inputs`: a 1x1 convolution over a 1x1 image.
    pub(crate) fn dense(inputs: usize, units: usize) -> ConvGeom {
        ConvGeom {
            in_c: inputs,
            ih: 1,
            iw: 1,
            out_c: units,
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
        }
    }
}

/// Kernel positions `k` in `0..n` whose input index `first + k * step - pad` lies in
/// `0..size`: returns `(k0, k1)` (empty if `k0 >= k1`).
#[inline(never)]
pub(super) fn lanes(
    first: usize,
    pad: usize,
    step: usize,
    size: usize,
    n: usize,
) -> (usize, usize) {
    // k * step + first >= pad  and  k * step + first < size + pad.
    let before = pad.saturating_sub(first);
    let inside = (size + pad).saturating_sub(first);
    if step <= 1 {
        // The common case, without integer divisions (and never a division by zero).
        return (before, inside.min(n));
    }
    (before.div_ceil(step), inside.div_ceil(step).min(n))
}

/// The accumulators of a block: one multiply-add per filter, written out lane by lane so that
/// they stay in registers even where the optimiser does not unroll (opt-level "s").
trait Lanes: Copy {
    /// `self[o] += w[o] * x` for every lane.
    fn mac(&mut self, w: &Self, x: f32);

    /// `out[o * stride] = self[o]` for every lane.
    ///
    /// # Safety
    /// Every `out + o * stride` lies inside one slice.
    unsafe fn store(&self, out: *mut f32, stride: usize);

    /// `self[o] += w[k * w_step + o] * x[k * x_step]` for `k` in `0..n` (steps in f32): the
    /// inner loop, one input load per `LEN` multiply-adds.
    ///
    /// # Safety
    /// Every element read (the lanes' weights at each `w + k * w_step`, one input at each
    /// `x + k * x_step`, `k < n`) lies inside its slice.
    #[inline(always)]
    unsafe fn run(
        &mut self,
        mut x: *const f32,
        x_step: usize,
        mut w: *const f32,
        w_step: usize,
        n: usize,
    ) {
        // A local copy, which the compiler keeps in registers: through `self` it stored the
        // sums at every step (the loads through `x` and `w` might have been of them).
        let mut acc = *self;
        for _ in 0..n {
            // SAFETY: the caller's contract.
            let (xv, wv) = unsafe { (*x, &*w.cast::<Self>()) };
            acc.mac(wv, xv);
            x = x.wrapping_add(x_step);
            w = w.wrapping_add(w_step);
        }
        *self = acc;
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
            unsafe fn store(&self, out: *mut f32, stride: usize) {
                // SAFETY: the caller's contract.
                $( unsafe { *out.add($i * stride) = self[$i] }; )*
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
/// are bit-identical to the portable loop's `a += w * x`. The floating-point registers each
/// loop uses are named as clobbers, so the compiler saves the callee-saved ones (s16 up) once
/// per function rather than the assembly on every call (a `vpush`/`vpop` pair per tile).
#[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
mod arm {
    use core::arch::asm;

    /// `run8` / `run4`: the inner loop for a block of 8 / 4 filters. `$w` names the weight
    /// registers, `$x` the input's, `$acc` the accumulators' (s16 up), the bracketed list every
    /// one of them as a clobber, and `$mla` is one `vmla` line per filter.
    macro_rules! run_n {
        ($name:ident, $n:literal, $w:literal, $x:literal, $acc:literal, [$($reg:tt)*],
         $($mla:literal)*) => {
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
                // (the caller's contract), writes `acc`; the registers it uses are clobbers.
                unsafe {
                    asm!(
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
                        acc = in(reg) acc.as_mut_ptr(),
                        x = inout(reg) x => _,
                        xs = in(reg) xs * 4,
                        w = inout(reg) w => _,
                        ws = in(reg) ws * 4,
                        n = inout(reg) n => _,
                        $(out($reg) _,)*
                    );
                }
            }
        };
    }

    /// # Safety
    /// As [`super::taps8`].
    #[inline(always)]
    pub(super) unsafe fn taps8(
        bias: &[f32; 8],
        x: *const f32,
        table: *const u32,
        n: usize,
        out: *mut f32,
    ) {
        // SAFETY: reads n taps' offset and weight and 8 inputs per tap inside their slices, writes
        // 8 floats at `out` (the caller's contract); the registers it uses are clobbers.
        unsafe {
            asm!(
                "vldmia {b}, {{s16-s23}}",
                "2:",
                "ldr {t}, [{o}], #4",
                "add {t}, {x}",
                "vldmia {t}, {{s0-s7}}",
                "vldmia {o}!, {{s8}}",
                "vmla.f32 s16, s0, s8",
                "vmla.f32 s17, s1, s8",
                "vmla.f32 s18, s2, s8",
                "vmla.f32 s19, s3, s8",
                "vmla.f32 s20, s4, s8",
                "vmla.f32 s21, s5, s8",
                "vmla.f32 s22, s6, s8",
                "vmla.f32 s23, s7, s8",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vstmia {out}, {{s16-s23}}",
                b = in(reg) bias.as_ptr(),
                out = in(reg) out,
                x = in(reg) x,
                o = inout(reg) table => _,
                n = inout(reg) n => _,
                t = out(reg) _,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _,
                out("s5") _, out("s6") _, out("s7") _, out("s8") _,
                out("s16") _, out("s17") _, out("s18") _, out("s19") _,
                out("s20") _, out("s21") _, out("s22") _, out("s23") _,
            );
        }
    }

    /// # Safety
    /// As [`super::pair8`].
    #[inline(always)]
    pub(super) unsafe fn pair8(
        bias: *const f32,
        x: *const f32,
        xs: usize,
        w: *const f32,
        n: usize,
        out: *mut f32,
        os: usize,
    ) {
        // SAFETY: reads 8 biases, n runs of 8 weights and two inputs per channel, writes two
        // pixels of 8 planes (the caller's contract); the registers it uses are clobbers.
        unsafe {
            asm!(
                "vldmia {b}, {{s16-s23}}",
                "vldmia {b}, {{s24-s31}}",
                "2:",
                "vldr s8, [{x}]",
                "vldr s9, [{x}, #4]",
                "vldmia {w}!, {{s0-s7}}",
                "add {x}, {xs}",
                "vmla.f32 s16, s0, s8",
                "vmla.f32 s17, s1, s8",
                "vmla.f32 s18, s2, s8",
                "vmla.f32 s19, s3, s8",
                "vmla.f32 s20, s4, s8",
                "vmla.f32 s21, s5, s8",
                "vmla.f32 s22, s6, s8",
                "vmla.f32 s23, s7, s8",
                "vmla.f32 s24, s0, s9",
                "vmla.f32 s25, s1, s9",
                "vmla.f32 s26, s2, s9",
                "vmla.f32 s27, s3, s9",
                "vmla.f32 s28, s4, s9",
                "vmla.f32 s29, s5, s9",
                "vmla.f32 s30, s6, s9",
                "vmla.f32 s31, s7, s9",
                "subs {n}, {n}, #1",
                "bne 2b",
                "vstr s16, [{o}]",
                "vstr s24, [{o}, #4]",
                "add {o}, {os}",
                "vstr s17, [{o}]",
                "vstr s25, [{o}, #4]",
                "add {o}, {os}",
                "vstr s18, [{o}]",
                "vstr s26, [{o}, #4]",
                "add {o}, {os}",
                "vstr s19, [{o}]",
                "vstr s27, [{o}, #4]",
                "add {o}, {os}",
                "vstr s20, [{o}]",
                "vstr s28, [{o}, #4]",
                "add {o}, {os}",
                "vstr s21, [{o}]",
                "vstr s29, [{o}, #4]",
                "add {o}, {os}",
                "vstr s22, [{o}]",
                "vstr s30, [{o}, #4]",
                "add {o}, {os}",
                "vstr s23, [{o}]",
                "vstr s31, [{o}, #4]",
                b = in(reg) bias,
                x = inout(reg) x => _,
                xs = in(reg) xs * 4,
                w = inout(reg) w => _,
                n = inout(reg) n => _,
                o = inout(reg) out => _,
                os = in(reg) os * 4,
                out("s0") _, out("s1") _, out("s2") _, out("s3") _, out("s4") _,
                out("s5") _, out("s6") _, out("s7") _, out("s8") _, out("s9") _,
                out("s16") _, out("s17") _, out("s18") _, out("s19") _,
                out("s20") _, out("s21") _, out("s22") _, out("s23") _,
                out("s24") _, out("s25") _, out("s26") _, out("s27") _,
                out("s28") _, out("s29") _, out("s30") _, out("s31") _,
            );
        }
    }

    run_n!(run8, 8, "s0-s7", "s8", "s16-s23",
        ["s0" "s1" "s2" "s3" "s4" "s5" "s6" "s7" "s8"
         "s16" "s17" "s18" "s19" "s20" "s21" "s22" "s23"],
        "vmla.f32 s16, s0, s8" "vmla.f32 s17, s1, s8" "vmla.f32 s18, s2, s8"
        "vmla.f32 s19, s3, s8" "vmla.f32 s20, s4, s8" "vmla.f32 s21, s5, s8"
        "vmla.f32 s22, s6, s8" "vmla.f32 s23, s7, s8");
    run_n!(run4, 4, "s0-s3", "s4", "s16-s19",
        ["s0" "s1" "s2" "s3" "s4" "s16" "s17" "s18" "s19"],
        "vmla.f32 s16, s0, s4" "vmla.f32 s17, s1, s4" "vmla.f32 s18, s2, s4"
        "vmla.f32 s19, s3, s4");
}

/// The filters of one block: `c` (8, 4 or 1) filters stored as runs of `c` weights
/// (`[taps][gi][c]`), and their biases (lanes past `c` unused).
#[derive(Clone, Copy)]
struct Filters<'w> {
    c: usize,
    w: &'w [f32],
    bias: [f32; FILTER_BLOCK],
}

/// `acc[..c] += w[k * w_step + o] * x[k * x_step]` for `k < n`: [`Lanes::run`] for a block of
/// `c` filters (8, 4 or 1).
///
/// # Safety
/// As [`Lanes::run`] for `c` lanes.
#[inline(always)]
unsafe fn run_block(
    acc: &mut [f32; 8],
    c: usize,
    x: *const f32,
    xs: usize,
    w: *const f32,
    ws: usize,
    n: usize,
) {
    // SAFETY: the caller's contract.
    unsafe {
        match c {
            8 => acc.run(x, xs, w, ws, n),
            4 => {
                if let Some(a) = acc.first_chunk_mut::<4>() {
                    a.run(x, xs, w, ws, n)
                }
            }
            _ => {
                if let Some(a) = acc.first_chunk_mut::<1>() {
                    a.run(x, xs, w, ws, n)
                }
            }
        }
    }
}

/// The loops over a pixel's taps for `nkx` admitted kernel columns of a block of `c`
/// filters over `gi` channels, the longer one innermost: (outer count, outer input step,
/// outer weight step, inner input step, inner weight step, inner count).
#[inline(always)]
fn tap_loops(
    g: &ConvGeom,
    gi: usize,
    c: usize,
    nkx: usize,
) -> (usize, usize, usize, usize, usize, usize) {
    let in_plane = g.ih * g.iw;
    if gi >= nkx {
        (nkx, g.dx, gi * c, in_plane, c, gi)
    } else {
        (gi, in_plane, c, g.dx, gi * c, nkx)
    }
}

/// Output pixels `xs` of row `oy` for a block of filters: each pixel accumulates every tap in
/// registers and stores its sums at `out[ox + o * oh * ow]` (`out` starts at the row in the
/// block's first plane). The taps that fall into the padding are cut off once per pixel
/// ([`lanes`]); the inner loop runs over the input channels, or over the kernel columns when
/// there are fewer channels (a first layer).
///
/// # Safety
/// `planes` holds the group's `gi` input planes, `f.w` at least `kh * kw * gi * c` weights
/// and `out` at least `(c - 1) * oh * ow + xs.end` floats.
#[inline(never)]
unsafe fn row(
    g: &ConvGeom,
    gi: usize,
    planes: &[f32],
    f: Filters<'_>,
    oy: usize,
    xs: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let c = f.c;
    let loops = |nkx: usize| tap_loops(g, gi, c, nkx);
    let whole = loops(g.kw);
    let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
    // Input row and weights of kernel row ky0, and their steps per kernel row.
    let x_top = planes.as_ptr().wrapping_add(
        (oy * g.sy + ky0 * g.dy)
            .wrapping_sub(g.pt)
            .wrapping_mul(g.iw),
    );
    let w_top = f.w.as_ptr().wrapping_add(ky0 * g.kw * gi * c);
    let (x_step, w_step) = (g.dy * g.iw, g.kw * gi * c);
    let span = (g.kw - 1) * g.dx;
    for ox in xs {
        // Most pixels' windows lie inside the input columns.
        let (kx0, (outer, oxs, ows, ixs, iws, n)) =
            if ox * g.sx >= g.pl && ox * g.sx + span < g.iw + g.pl {
                (0, whole)
            } else {
                let (kx0, kx1) = lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw);
                (kx0, loops(kx1.saturating_sub(kx0)))
            };
        // Lanes past `c` are computed but never stored.
        let mut acc = f.bias;
        // The first admitted tap's input and weights.
        let mut x = x_top.wrapping_add((ox * g.sx + kx0 * g.dx).wrapping_sub(g.pl));
        let mut w = w_top.wrapping_add(kx0 * gi * c);
        for _ in ky0..ky1 {
            for k in 0..outer {
                // SAFETY: tap (ky, kx0 + k) of channel ch reads input row
                // oy * sy + ky * dy - pt < ih and column ox * sx + (kx0 + k) * dx - pl < iw
                // (both from `lanes`) of plane ch < gi, and run (ky * kw + kx0 + k) * gi + ch
                // of kh * kw * gi: all inside (the caller's contract).
                unsafe {
                    run_block(
                        &mut acc,
                        c,
                        x.wrapping_add(k * oxs),
                        ixs,
                        w.wrapping_add(k * ows),
                        iws,
                        n,
                    )
                };
            }
            x = x.wrapping_add(x_step);
            w = w.wrapping_add(w_step);
        }
        let (at, stride) = (out.as_mut_ptr().wrapping_add(ox), g.oh * g.ow);
        // SAFETY: lane o < c of pixel ox < xs.end goes to o * oh * ow + ox (the caller's
        // contract).
        unsafe {
            match (c, acc.first_chunk::<4>(), acc.first_chunk::<1>()) {
                (FILTER_BLOCK, _, _) => acc.store(at, stride),
                (4, Some(a), _) => a.store(at, stride),
                (_, _, Some(a)) => a.store(at, stride),
                _ => {}
            }
        }
    }
}

/// Floats of the depthwise kernel's zero-padded input window (2 KiB, on the stack).
pub(crate) const WINDOW: usize = 512;

/// Where the int8 sums of the depthwise window start (see [`depthwise_i8`]): 1.5 · 2^23, whose
/// bits are `0x4B40_0000`; a sum `s` with |s| < 2^22 is then held exactly, and its float's bits
/// are `0x4B40_0000 + s`, read as an integer with no conversion.
pub(crate) const I8_SUM_START: f32 = 12_582_912.0;

/// Most kernel taps (height x width) the depthwise kernel's tap table holds; larger depthwise
/// filters take the row kernel.
pub(crate) const MAX_TAPS: usize = 64;

/// A depthwise convolution (one filter over each input plane). Without a channel loop to
/// share an input load between filters, adjacent output pixels share each weight load
/// instead: a tile of 8 pixels streams one weight past its 8 accumulators per tap
/// ([`taps8`]). So that every pixel of a tile reads a full window, the kernel first copies a
/// band of output rows' inputs into `window` ([`fill_window`]), zero over the padding, each
/// input row split into `sx` phases (column `c` goes to phase `c % sx`): the inputs one tap
/// reads for adjacent pixels are then adjacent at any stride, and every tap of a tile sits at
/// a fixed offset from the tile, computed once per layer. Padding costs multiplications by
/// zero instead of a window computation per pixel (with finite weights they add exact
/// zeros), and a row's last tile computes up to 7 pixels past its end into lanes that later
/// tiles overwrite (or that are not stored). Rows too wide for the window and filters of more
/// than [`MAX_TAPS`] taps are left to the block loop (`false`).
// Its one caller's; one copy.
#[inline(always)]
fn depthwise(g: &ConvGeom, input: &[f32], w: &[f32], b: &[f32], out: &mut [f32]) -> bool {
    // The host runs stride-1 layers along whole planes.
    #[cfg(not(target_arch = "arm"))]
    if host::depthwise(g, input, w, b, out) {
        return true;
    }
    depthwise_layer(g, Layer::F32 { x: input, w, b }, Outputs::F32(out))
}

/// An int8 convolution with one input plane per group (depthwise; a first layer over one
/// channel, each plane's filters then sharing its window) through the f32 depthwise kernel's
/// window ([`depthwise`]): the inputs less their zero point and the weights are whole
/// numbers, |x - zp| <= 255 and |w| <= 128, so every product and every partial sum of up to
/// [`MAX_TAPS`] of them is an integer of magnitude below 2^22; the sums start from
/// [`I8_SUM_START`] (1.5 · 2^23), so each stays an integer in [2^23, 2^24), where f32 steps by
/// exactly one: TFLite's integer sum, to the bit, and in the float's low bits. The padding
/// holds zeros, the taps TFLite skips. A band's sums stay in the window, after its input rows,
/// and each channel's are requantized in one call. `false` (nothing written) where the window
/// does not take the layer.
#[cfg(any(all(target_arch = "arm", target_abi = "eabihf"), test))]
pub(crate) fn depthwise_i8(
    g: &ConvGeom,
    input: &[i8],
    w: &[i8],
    q: &super::qconv::Requant<'_>,
    out: &mut [i8],
) -> bool {
    // Validation proves the geometry; the window divides by the strides and counts taps. A
    // real multiplier of one half or more (a shift that is not a right shift: rare) is left
    // to the block loop, so that the window's requantization is the one-step form alone.
    if g.in_c != g.groups.max(1)
        || g.sx == 0
        || g.sy == 0
        || g.kh == 0
        || g.kw == 0
        || !q.right_shifts()
    {
        return false;
    }
    let x = Layer::I8 {
        x: input,
        w,
        zp: q.input_zp,
    };
    depthwise_layer(g, x, Outputs::I8(out, q))
}

/// A depthwise layer's inputs: f32 planes, weights and biases; or int8 planes (less `zp`) and
/// weights.
#[derive(Clone, Copy)]
enum Layer<'a> {
    F32 {
        x: &'a [f32],
        w: &'a [f32],
        b: &'a [f32],
    },
    #[cfg_attr(
        not(any(all(target_arch = "arm", target_abi = "eabihf"), test)),
        allow(dead_code)
    )]
    I8 { x: &'a [i8], w: &'a [i8], zp: i32 },
}

/// A depthwise channel's input plane: f32 values, or int8 codes less their zero point.
#[derive(Clone, Copy)]
enum Plane<'a> {
    F32(&'a [f32]),
    I8(&'a [i8], i32),
}

/// Where a depthwise layer's outputs go: f32 values as they are, or int8 codes through each
/// channel's requantization.
enum Outputs<'a, 'q> {
    F32(&'a mut [f32]),
    #[cfg_attr(
        not(any(all(target_arch = "arm", target_abi = "eabihf"), test)),
        allow(dead_code)
    )]
    I8(&'a mut [i8], &'q super::qconv::Requant<'q>),
}

/// Every channel of a depthwise layer, band by band through the window (see [`depthwise`]);
/// `false` (nothing written) if the window does not take the layer.
// One copy for both dtypes.
#[inline(never)]
fn depthwise_layer(g: &ConvGeom, input: Layer<'_>, mut out: Outputs<'_, '_>) -> bool {
    // Divisors that are not zero (validated; checked here once, so no division can panic).
    let (Some(sx), Some(sy), Some(kw)) = (
        NonZeroUsize::new(g.sx),
        NonZeroUsize::new(g.sy),
        NonZeroUsize::new(g.kw),
    ) else {
        return false;
    };
    // A phase holds the columns `ox + kx * dx / sx` that whole tiles read; a window row,
    // the input row's `sx` phases.
    let phase = g.ow + (FILTER_BLOCK - 1) + (g.kw - 1) * g.dx / sx;
    let Some(width) = NonZeroUsize::new(phase * g.sx) else {
        return false;
    };
    let span = (g.kh - 1) * g.dy + 1;
    let taps = g.kh * g.kw;
    let width = width.get();
    // Output rows per band: as many as the window holds, their `(rows - 1) sy + span` input
    // rows and, after them, a tile's sums (f32: a plane's last tile, whose lanes would pass
    // its end) or the band's (int8: a row of `ow` each, and the 7 lanes a row's last tile
    // computes past its end; a channel's band then takes one requantization call, not one
    // per tile).
    let per_row = match out {
        Outputs::F32(_) => 0,
        Outputs::I8(..) => g.ow,
    };
    let band = (WINDOW + sy.get() * width)
        .saturating_sub(span * width + FILTER_BLOCK)
        .checked_div(sy.get() * width + per_row)
        .unwrap_or(0);
    // At least one tap (the tile's loop runs its first unconditionally), at most MAX_TAPS.
    if band == 0 || taps.wrapping_sub(1) >= MAX_TAPS {
        return false;
    }
    // Where the sums start: after the tallest band's input rows, so that no band's rows
    // (whose padding columns must stay zero) ever hold sums.
    let sums = ((band - 1) * g.sy + span) * width;
    // Per tap, the offset of tap (ky, kx) from its tile's first input in bytes, and (filled
    // per channel, below) its weight.
    let mut table: [u32; 2 * MAX_TAPS] = splat(0);
    for (t, o) in table.iter_mut().step_by(2).enumerate().take(taps) {
        let (ky, kx) = (t / kw, t % kw * g.dx);
        *o = ((ky * g.dy * width + kx % sx * phase + kx / sx) * 4) as u32;
    }
    let (in_plane, out_plane) = (g.ih * g.iw, g.oh * g.ow);
    let mut window = core::mem::MaybeUninit::uninit();
    let window: &mut [f32; WINDOW] = zeroed(&mut window);
    // The f32 output, which tiles write straight into (an output shorter than validation
    // allows: nothing to write to).
    let direct = match &mut out {
        Outputs::F32(o) => match o.get_mut(..g.out_c * out_plane) {
            Some(o) => o.as_mut_ptr(),
            None => return true,
        },
        Outputs::I8(..) => core::ptr::null_mut(),
    };
    // Each plane's filters run over its window band by band: one copy per band, not per filter.
    let groups = g.groups.max(1);
    let go = g.out_c / groups;
    for p in 0..groups {
        let at = p * in_plane..(p + 1) * in_plane;
        let plane = match input {
            Layer::F32 { x, .. } => x.get(at).map(Plane::F32),
            Layer::I8 { x, zp, .. } => x.get(at).map(|x| Plane::I8(x, zp)),
        };
        let Some(plane) = plane else {
            return true;
        };
        let mut oy0 = 0;
        while oy0 < g.oh {
            let rows = band.min(g.oh - oy0);
            let rows_in = (rows - 1) * g.sy + span;
            fill_window(
                g,
                plane,
                oy0,
                phase,
                window.get_mut(..rows_in * width).unwrap_or(&mut []),
            );
            for c in p * go..(p + 1) * go {
                // A plane's filters (more than one: a first layer over one channel) are
                // stored in blocks (`format::block_len` for f32, `i8_block_len` for int8), a
                // tap's block of weights together: filter c's tap t is w[first + t * step].
                // Its weights are gathered once per band.
                let fg = c - p * go;
                let f32 = matches!(input, Layer::F32 { .. });
                let block_of = |left| {
                    if f32 {
                        block_len(left)
                    } else {
                        crate::format::i8_block_len(left)
                    }
                };
                let (mut start, mut step) = (0, block_of(go));
                while start + step <= fg {
                    start += step;
                    step = block_of(go - start);
                }
                let first = (c - fg + start) * taps + fg - start;
                // Every tap's weight lies in `w` (checked once, not per tap) and its slot in
                // `table` (taps <= MAX_TAPS). Indexed, not `step_by`, whose iterator costs
                // instructions per step.
                let last = first + (taps - 1) * step;
                let bias = match input {
                    Layer::F32 { w, b, .. } if last < w.len() => {
                        for t in 0..taps {
                            // SAFETY: first + t * step <= last < w.len(); 2 t + 1 < 2 MAX_TAPS.
                            unsafe {
                                *table.get_unchecked_mut(2 * t + 1) =
                                    w.get_unchecked(first + t * step).to_bits()
                            };
                        }
                        b.get(c).copied()
                    }
                    Layer::I8 { w, .. } if last < w.len() => {
                        for t in 0..taps {
                            // SAFETY: as above.
                            unsafe {
                                *table.get_unchecked_mut(2 * t + 1) =
                                    f32::from(*w.get_unchecked(first + t * step)).to_bits()
                            };
                        }
                        Some(I8_SUM_START)
                    }
                    // Weights shorter than validation allows: nothing more to write.
                    _ => None,
                };
                let Some(bias) = bias else {
                    return true;
                };
                // Every lane's starting sum, loaded with one `vldm` per tile.
                let bias: [f32; FILTER_BLOCK] = splat(bias);
                // Tiles go straight to the f32 output, or to the int8 sums in the window
                // (output pixel k at `sums + k - base`): a tile's lanes past its row land on
                // the channel's next pixels, which later tiles (later rows, later bands)
                // overwrite. An f32 tile whose lanes would pass the channel's plane (on its
                // last row) goes through the sums; they have room for every int8 lane.
                let base = c * out_plane + oy0 * g.ow;
                let (direct, limit) = match out {
                    Outputs::F32(_) => (direct, (c + 1) * out_plane),
                    Outputs::I8(..) => (
                        window.as_mut_ptr().wrapping_add(sums).wrapping_sub(base),
                        usize::MAX,
                    ),
                };
                for ly in 0..rows {
                    let (row, x) = (
                        base + ly * g.ow,
                        window.as_ptr().wrapping_add(ly * g.sy * width),
                    );
                    // The tile at column ox into `to`: inlined at both calls below (one copy
                    // of the tap loop for the row's tiles and one for a plane's last tile
                    // measured faster, and smaller, than one copy with a test after it).
                    // SAFETY (both calls): pixel ox + i (i < 8), tap (ky, kx) reads window row
                    // ly * sy + ky * dy < rows_in, phase (kx * dx) % sx, column
                    // ox + i + kx * dx / sx < phase: inside rows_in * width <= sums floats;
                    // `table` holds kh * kw <= MAX_TAPS taps; `to` has room for 8 floats (see
                    // each call).
                    let tile = |ox: usize, to: *mut f32| unsafe {
                        taps8(&bias, x.wrapping_add(ox), table.as_ptr(), taps, to)
                    };
                    // Not `step_by`: its iterator cost a few instructions more per tile.
                    let mut ox = 0;
                    while ox < g.ow
                        && (ox + FILTER_BLOCK <= g.ow || row + ox + FILTER_BLOCK <= limit)
                    {
                        // The tile's 8 lanes go to pixels row + ox.. of the channel's plane of
                        // the f32 output (its length checked where `direct` was taken), or to
                        // the int8 sums' ly * ow + ox + 8 <= rows * ow + 7 floats from `sums`,
                        // inside the window by the choice of `band`.
                        tile(ox, direct.wrapping_add(row + ox));
                        ox += FILTER_BLOCK;
                    }
                    // A plane's last f32 tile whose lanes would pass the plane's end, into
                    // the sums' 8 floats.
                    if ox < g.ow {
                        tile(ox, window.as_mut_ptr().wrapping_add(sums));
                        let at = direct.wrapping_add(row + ox);
                        let lanes = window.get(sums..sums + FILTER_BLOCK).unwrap_or(&[]);
                        for (i, &v) in lanes.iter().take(g.ow - ox).enumerate() {
                            // SAFETY: pixel row + ox + i < (c + 1) * oh * ow, inside the
                            // output (its length checked where `direct` was taken).
                            unsafe { *at.add(i) = v };
                        }
                    }
                }
                // The band's integer sums, exactly (see `depthwise_i8`).
                if let Outputs::I8(o, q) = &mut out {
                    let band_sums = window.get(sums..sums + rows * g.ow).unwrap_or(&[]);
                    q.outputs(c, band_sums, o.get_mut(base..).unwrap_or(&mut []));
                }
            }
            oy0 += rows;
        }
    }
    true
}

/// Copy the input rows of the band of output rows from `oy0` into `window` (see
/// [`depthwise`]): rows of `sx` phases of `phase` columns, zero over the padding; int8 codes
/// less their zero point. `window` starts zeroed and its rows only ever hold this layer's
/// bands (the sums after them never reach into them).
fn fill_window(g: &ConvGeom, plane: Plane<'_>, oy0: usize, phase: usize, window: &mut [f32]) {
    let width = phase * g.sx;
    let rows = window.len() / width;
    let (r0, r1) = lanes(oy0 * g.sy, g.pt, 1, g.ih, rows);
    // Rows over the padding are zero. The columns over the padding are never written, so they
    // keep the zeros the window started with.
    let (r0, r1) = (r0.min(rows), r1.min(rows).max(r0.min(rows)));
    fill(window.get_mut(..r0 * width).unwrap_or(&mut []), 0.0);
    fill(window.get_mut(r1 * width..).unwrap_or(&mut []), 0.0);
    let len = match plane {
        Plane::F32(p) => p.len(),
        Plane::I8(p, _) => p.len(),
    };
    if len < g.ih * g.iw || window.len() < rows * width {
        return;
    }
    for p in 0..g.sx {
        // Column j of phase p is input column j * sx + p - pl.
        let (j0, j1) = lanes(p, g.pl, g.sx, g.iw, phase);
        for r in r0..r1 {
            let at = (oy0 * g.sy + r - g.pt) * g.iw + (j0 * g.sx + p).wrapping_sub(g.pl);
            let mut d = window.as_mut_ptr().wrapping_add(r * width + p * phase + j0);
            // SAFETY (both loops): row oy0 * sy + r - pt < ih and column j * sx + p - pl < iw
            // (both from `lanes`): inside the plane; r < rows, p < sx and j < phase: inside
            // the window (both checked above).
            match plane {
                Plane::F32(x) => {
                    let mut s = x.as_ptr().wrapping_add(at);
                    for _ in j0..j1 {
                        unsafe { *d = *s };
                        (d, s) = (d.wrapping_add(1), s.wrapping_add(g.sx));
                    }
                }
                Plane::I8(x, zp) => {
                    let mut s = x.as_ptr().wrapping_add(at);
                    for _ in j0..j1 {
                        unsafe { *d = (i32::from(*s) - zp) as f32 };
                        (d, s) = (d.wrapping_add(1), s.wrapping_add(g.sx));
                    }
                }
            }
        }
    }
}

/// `out[i] = bias[i] + sum over t < n of w[t] * x[offset[t] / 4 + i]` for `i < 8`, summed in
/// tap order: the depthwise tile. `table` holds each tap's offset in bytes and its weight's
/// bits, side by side (one pointer walks both).
///
/// # Safety
/// `n >= 1`, `table` holds `2 n` words, every `x + offset[t] / 4 + i` (`i < 8`) lies inside one slice,
/// and `out` has room for 8 floats.
#[inline(always)]
unsafe fn taps8(
    bias: &[f32; FILTER_BLOCK],
    x: *const f32,
    table: *const u32,
    n: usize,
    out: *mut f32,
) {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    // SAFETY: the caller's contract.
    unsafe {
        arm::taps8(bias, x, table, n, out)
    }
    #[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
    {
        let mut acc = *bias;
        for t in 0..n {
            // SAFETY: the caller's contract.
            let (xs, wt) = unsafe {
                (
                    &*x.add(*table.add(2 * t) as usize / 4).cast::<[f32; 8]>(),
                    f32::from_bits(*table.add(2 * t + 1)),
                )
            };
            acc.mac(xs, wt);
        }
        // SAFETY: the caller's contract.
        unsafe { out.cast::<[f32; 8]>().write_unaligned(acc) };
    }
}

/// One block of filters over every output pixel of a group: `planes` are the group's `gi`
/// input planes, `out` the block's output planes.
#[inline(never)]
fn block(g: &ConvGeom, gi: usize, planes: &[f32], f: Filters<'_>, out: &mut [f32]) {
    // What the row kernel's safety contract needs, checked once for the whole block.
    let runs = g.kh * g.kw * gi;
    if planes.len() < gi * g.ih * g.iw || f.w.len() < runs * f.c || out.len() < f.c * g.oh * g.ow {
        return;
    }
    // A 1x1 convolution at stride 1 without padding reads input pixel q of every plane for
    // output pixel q: a block of 8 filters runs over the planes two pixels at a time, the odd
    // last pixel through the row kernel.
    let plane = g.oh * g.ow;
    let pointwise = g.kh == 1 && g.kw == 1 && g.sy == 1 && g.sx == 1 && g.pt == 0 && g.pl == 0;
    if f.c == FILTER_BLOCK && pointwise && g.ih * g.iw == plane {
        // The host takes the first pixels in wider tiles.
        #[cfg(not(target_arch = "arm"))]
        // SAFETY: the lengths were checked above.
        let first = unsafe { host::pointwise(gi, planes, &f, out, plane) };
        #[cfg(target_arch = "arm")]
        let first = 0;
        // A while loop, not `step_by`, whose iterator costs instructions per step.
        let mut q = first;
        while q + 1 < plane {
            // SAFETY: pixels q, q + 1 < plane of gi input and 8 output planes, gi runs of 8
            // weights (checked above); gi >= 1.
            unsafe {
                pair8(
                    f.bias.as_ptr(),
                    planes.as_ptr().add(q),
                    plane,
                    f.w.as_ptr(),
                    gi,
                    out.as_mut_ptr().add(q),
                    plane,
                )
            };
            q += 2;
        }
        if !plane.is_multiple_of(2) {
            let last = out.get_mut((g.oh - 1) * g.ow..).unwrap_or(&mut []);
            // SAFETY: the lengths were checked above.
            unsafe { row(g, gi, planes, f, g.oh - 1, g.ow - 1..g.ow, last) };
        }
        return;
    }
    // The host takes the rows inside the input in tiles of rows.
    #[cfg(not(target_arch = "arm"))]
    // SAFETY: the lengths were checked above.
    let tiled = unsafe { host::rows(g, gi, planes, &f, out) };
    #[cfg(target_arch = "arm")]
    let tiled = 0..0;
    for oy in 0..g.oh {
        if tiled.contains(&oy) {
            continue;
        }
        let Some(at) = out.get_mut(oy * g.ow..) else {
            return;
        };
        // SAFETY: the lengths were checked above.
        unsafe { row(g, gi, planes, f, oy, 0..g.ow, at) };
    }
}

/// Two adjacent output pixels of a pointwise block of 8 filters: `out[o * os + i] = bias[o] +
/// sum over ch < n of w[ch * 8 + o] * x[ch * xs + i]` for `o < 8`, `i < 2`, summed in channel
/// order (as [`Lanes::run`] sums one pixel).
///
/// # Safety
/// `bias` holds 8 floats, `w` `8 * n`, `x` and `out` the pixels named, and `n >= 1`.
#[inline(always)]
unsafe fn pair8(
    bias: *const f32,
    x: *const f32,
    xs: usize,
    w: *const f32,
    n: usize,
    out: *mut f32,
    os: usize,
) {
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    // SAFETY: the caller's contract.
    unsafe {
        arm::pair8(bias, x, xs, w, n, out, os)
    }
    #[cfg(not(all(target_arch = "arm", target_abi = "eabihf")))]
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [*bias.cast::<[f32; 8]>(); 2];
        for ch in 0..n {
            let wc = &*w.add(ch * 8).cast::<[f32; 8]>();
            for (i, a) in acc.iter_mut().enumerate() {
                a.mac(wc, *x.add(ch * xs + i));
            }
        }
        for (i, a) in acc.iter().enumerate() {
            a.store(out.add(i), os);
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
    // Layers with one input plane per group take the window: depthwise ones, and first
    // layers over one channel whose filters then share the plane's window, where output rows
    // fill whole tiles (a partial tile's unused lanes would cost every filter; the blocks'
    // row kernel wastes none: MLPerf KWS's rows of 5 run 3 % slower through the window).
    // What the window does not take runs as any grouped convolution.
    let shared = go == 1 || g.ow.is_multiple_of(FILTER_BLOCK);
    if !(gi == 1 && shared && depthwise(g, input, w, b, out)) {
        // Filter f0 is the (f0 % go)-th of group f0 / go; a block never spans two groups.
        let mut f0 = 0;
        while f0 < g.out_c {
            // The host takes several blocks at once where the group has them.
            #[cfg(not(target_arch = "arm"))]
            {
                let done = host::blocks(g, gi, go, f0, input, w, b, out);
                if done > 0 {
                    f0 += done;
                    continue;
                }
            }
            let n = block_len(go - f0 % go);
            let mut bias: [f32; FILTER_BLOCK] = splat(0.0);
            copy_values(&mut bias, b.get(f0..f0 + n).unwrap_or(&[]));
            let f = Filters {
                c: n,
                w: w.get(f0 * filter..).unwrap_or(&[]),
                bias,
            };
            let planes = input.get(f0 / go * gi * in_plane..).unwrap_or(&[]);
            let out = out.get_mut(f0 * out_plane..).unwrap_or(&mut []);
            block(g, gi, planes, f, out);
            f0 += n;
        }
    }
    // One pass over the output: the activation's match stays out of the pixel loops.
    act.apply_slice(out);
}

/// `out = act(W x + b)`: a 1x1 convolution of `x.len()` channels over one pixel.
pub(crate) fn dense(x: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    conv2d(&ConvGeom::dense(x.len(), out.len()), x, w, b, act, out);
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use crate::format::pack_filters;
    use std::vec::Vec;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The definition, tap by tap, in f64, from ONNX-ordered weights.
    fn reference(g: &ConvGeom, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
        let (gi, go) = (g.in_c / g.groups, g.out_c / g.groups);
        let mut out = Vec::new();
        for f in 0..g.out_c {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = f64::from(b[f]);
                    for c in 0..gi {
                        for ky in 0..g.kh {
                            for kx in 0..g.kw {
                                let iy = (oy * g.sy + ky * g.dy) as isize - g.pt as isize;
                                let ix = (ox * g.sx + kx * g.dx) as isize - g.pl as isize;
                                if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                                    continue;
                                }
                                let plane = f / go * gi + c;
                                let xv = x[(plane * g.ih + iy as usize) * g.iw + ix as usize];
                                let wv = w[((f * gi + c) * g.kh + ky) * g.kw + kx];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    out.push(acc);
                }
            }
        }
        out
    }

    /// One geometry: (in_c, ih, iw), (out_c, groups), (kh, kw), (sy, sx), (dy, dx), padding
    /// (top, left, bottom, right).
    pub(crate) type Case = (
        (usize, usize, usize),
        (usize, usize),
        (usize, usize),
        (usize, usize),
        (usize, usize),
        [usize; 4],
    );

    /// The geometry of `case`, its output size as ONNX computes it.
    pub(crate) fn geometry(
        &((in_c, ih, iw), (out_c, groups), (kh, kw), (sy, sx), (dy, dx), [pt, pl, pb, pr]): &Case,
    ) -> ConvGeom {
        ConvGeom {
            in_c,
            ih,
            iw,
            out_c,
            oh: (ih + pt + pb - (kh - 1) * dy - 1) / sy + 1,
            ow: (iw + pl + pr - (kw - 1) * dx - 1) / sx + 1,
            kh,
            kw,
            sy,
            sx,
            dy,
            dx,
            pt,
            pl,
            groups,
        }
    }

    /// Seeded inputs, filters in ONNX order, biases, and the filters as stored, for `g`.
    fn layer(g: &ConvGeom, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (gi, go) = (g.in_c / g.groups, g.out_c / g.groups);
        let x = values(g.in_c * g.ih * g.iw, seed);
        let w = values(g.out_c * gi * g.kh * g.kw, seed + 1);
        let b = values(g.out_c, seed + 2);
        let mut packed = std::vec![0.0; w.len()];
        assert!(pack_filters(&w, g.groups, go, gi, g.kh * g.kw, &mut packed));
        (x, w, b, packed)
    }

    /// conv2d against the reference for every geometry of `cases`.
    fn check(cases: &[Case]) {
        for case in cases {
            let g = geometry(case);
            let (x, w, b, packed) = layer(&g, 1);
            let mut out = std::vec![f32::NAN; g.out_c * g.oh * g.ow];
            conv2d(&g, &x, &packed, &b, Act::Identity, &mut out);
            let want = reference(&g, &x, &w, &b);
            for (i, (got, want)) in out.iter().zip(&want).enumerate() {
                let err = (f64::from(*got) - want).abs();
                assert!(
                    err <= 1e-4 * (1.0 + want.abs()),
                    "{g:?}: output {i}: {got} vs {want}"
                );
            }
        }
    }

    /// The host's tiles (`host`) against the device's path, one pixel of one block at a time
    /// through `row` (what the Cortex-M runs, in the same order): bit for bit.
    #[test]
    fn host_tiles_give_the_device_bits() {
        let cases: &[Case] = &[
            // Pointwise: 4 + 2 + 1 blocks, even and odd planes (pair and quad tiles).
            ((16, 8, 8), (56, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((24, 5, 5), (40, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            // Dense: one pixel, 2 blocks and a block of 4.
            ((64, 1, 1), (20, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            // Padded 3x3 on small and larger planes; one block (row tiles) and several.
            ((8, 8, 8), (8, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((16, 4, 4), (64, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((3, 12, 11), (12, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // A first layer like MLPerf KWS's (one channel, 10x4 kernel, stride 2).
            ((1, 49, 10), (64, 1), (10, 4), (2, 2), (1, 1), [4, 1, 5, 1]),
            // Strides, dilation, uneven padding, groups.
            ((6, 13, 9), (20, 1), (3, 5), (2, 1), (1, 2), [2, 0, 1, 3]),
            ((8, 9, 9), (48, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
        ];
        for case in cases {
            let g = geometry(case);
            let (x, _, b, packed) = layer(&g, 4);
            let (gi, go) = (g.in_c / g.groups, g.out_c / g.groups);
            let (plane, filter) = (g.oh * g.ow, gi * g.kh * g.kw);
            let mut tiled = std::vec![f32::NAN; g.out_c * plane];
            conv2d(&g, &x, &packed, &b, Act::Identity, &mut tiled);
            let mut device = std::vec![f32::NAN; g.out_c * plane];
            let mut f0 = 0;
            while f0 < g.out_c {
                let c = block_len(go - f0 % go);
                let mut bias = [0.0; FILTER_BLOCK];
                bias[..c].copy_from_slice(&b[f0..f0 + c]);
                let f = Filters {
                    c,
                    w: &packed[f0 * filter..],
                    bias,
                };
                let planes = &x[f0 / go * gi * g.ih * g.iw..];
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let at = &mut device[f0 * plane + oy * g.ow..];
                        // SAFETY: the block's planes, weights and outputs, as `block` passes.
                        unsafe { row(&g, gi, planes, f, oy, ox..ox + 1, at) };
                    }
                }
                f0 += c;
            }
            for (i, (t, d)) in tiled.iter().zip(&device).enumerate() {
                assert_eq!(t.to_bits(), d.to_bits(), "{g:?}: output {i}: {t} vs {d}");
            }
        }
    }

    #[test]
    fn depthwise_matches_the_definition() {
        // 3x3 same padding at strides 1 and 2, dilation, uneven padding, a 5x5 kernel.
        check(&[
            ((16, 8, 8), (16, 16), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((32, 8, 8), (32, 32), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
            ((5, 9, 7), (5, 5), (3, 3), (1, 2), (2, 1), [2, 0, 1, 2]),
            ((3, 11, 13), (3, 3), (5, 5), (3, 2), (1, 1), [2, 2, 2, 2]),
            ((2, 25, 5), (2, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // Rows of 3 outputs over several bands at stride 2 (the window, on the host too):
            // each tile's lanes past its row land on the channel's later pixels, band after
            // band, and are overwritten there.
            ((3, 90, 6), (3, 3), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
        ]);
    }

    /// The host's stride-1 depthwise (`host::depthwise`) against the device's window, bit for
    /// bit; what it does not take is left to the window.
    #[test]
    fn host_depthwise_gives_the_window_bits() {
        let cases: &[Case] = &[
            // MLPerf KWS's: 3x3 over 25x5 planes.
            ((64, 25, 5), (64, 64), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // Uneven padding, a 5x5 kernel, a one-row kernel, padding wider than the kernel.
            ((5, 9, 7), (5, 5), (3, 3), (1, 1), (1, 1), [2, 0, 1, 2]),
            ((3, 11, 13), (3, 3), (5, 5), (1, 1), (1, 1), [2, 2, 2, 2]),
            ((4, 6, 6), (4, 4), (1, 7), (1, 1), (1, 1), [0, 3, 0, 3]),
            ((2, 5, 5), (2, 2), (3, 3), (1, 1), (1, 1), [3, 0, 0, 3]),
            ((3, 1, 1), (3, 3), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
        ];
        for case in cases {
            let g = geometry(case);
            let (x, _, b, packed) = layer(&g, 7);
            let n = g.out_c * g.oh * g.ow;
            let (mut flat, mut window) = (std::vec![f32::NAN; n], std::vec![f32::NAN; n]);
            assert!(host::depthwise(&g, &x, &packed, &b, &mut flat), "{g:?}");
            let layer = Layer::F32 {
                x: &x,
                w: &packed,
                b: &b,
            };
            assert!(depthwise_layer(&g, layer, Outputs::F32(&mut window)));
            for (i, (f, w)) in flat.iter().zip(&window).enumerate() {
                assert_eq!(f.to_bits(), w.to_bits(), "{g:?}: output {i}: {f} vs {w}");
            }
        }
        // Strides, dilations and planes past its buffer go to the window.
        for case in [
            ((4, 8, 8), (4, 4), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
            ((4, 8, 8), (4, 4), (3, 3), (1, 1), (2, 2), [2, 2, 2, 2]),
            ((1, 80, 80), (1, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
        ] {
            let g = geometry(&case);
            let (x, _, b, packed) = layer(&g, 7);
            let mut out = std::vec![0.0; g.out_c * g.oh * g.ow];
            assert!(!host::depthwise(&g, &x, &packed, &b, &mut out), "{g:?}");
        }
    }

    #[test]
    fn depthwise_falls_back_past_the_window() {
        // Rows too wide for the window, and a filter of more than MAX_TAPS taps.
        check(&[
            ((2, 3, 300), (2, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((2, 12, 12), (2, 2), (9, 9), (1, 1), (1, 1), [4, 4, 4, 4]),
        ]);
    }

    #[test]
    fn pointwise_matches_the_definition() {
        // Blocks of 8, 4 and 1 filters; even and odd planes; a dense-like 1x1 image; strided
        // and padded 1x1 convolutions (the row kernel).
        check(&[
            ((16, 8, 8), (32, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((7, 5, 3), (13, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((64, 1, 1), (10, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((4, 7, 7), (9, 1), (1, 1), (2, 2), (1, 1), [0, 0, 0, 0]),
            ((4, 5, 5), (8, 1), (1, 1), (1, 1), (1, 1), [1, 1, 1, 1]),
        ]);
    }

    #[test]
    fn standard_convolutions_match_the_definition() {
        check(&[
            ((1, 8, 8), (16, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((3, 9, 10), (12, 1), (5, 5), (2, 1), (1, 2), [2, 1, 0, 3]),
            ((8, 6, 6), (8, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // One input plane per group, several filters sharing its window: blocks of 8, 4
            // and single filters (13, 20), and 4 + 1 per group (depth multiplier 5).
            ((1, 7, 9), (13, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((1, 12, 10), (20, 1), (3, 3), (2, 1), (1, 2), [1, 0, 2, 1]),
            ((2, 6, 6), (10, 2), (3, 2), (1, 2), (1, 1), [1, 0, 1, 1]),
        ]);
    }
}
