//! int8 convolution (standard, grouped, depthwise, strided, dilated, padded) and dense layers,
//! portable: TFLite's reference `ConvPerChannel`, `DepthwiseConvPerChannel` and
//! `FullyConnected` arithmetic.
//!
//! Per output pixel, a block of up to [`I8_BLOCK`] filters accumulates
//! `w * (x - input_zp)` in `i32` over every tap inside the image (the taps
//! over the padding are cut off in closed form, as the f32 kernels do: TFLite skips them, which
//! is padding with the input zero point); then each channel adds its bias and is requantized
//! ([`crate::quant::multiply_by_quantized_multiplier`] by its own multiplier and shift), offset
//! by the output zero point and clamped to the fused activation's range. The filters are
//! stored as [`crate::format::pack_filters_i8`] orders them: per tap, a block's weights for
//! two consecutive inputs interleaved by pairs of filters, so that on Cortex-M4/M7/M33 (the
//! DSP extension) the inner loop (`dsp`) takes two inputs at once: one word of weights
//! sign-extends (SXTB16) into two filters' pairs of weights, each multiplied against the two
//! inputs by one dual multiply-accumulate (SMLAD), 17 instructions for 8 MACs. Elsewhere (the
//! host, Cortex-M0+) the same loop is plain integer Rust. Integer arithmetic wraps, so no
//! blob can make it panic (validation keeps the parameters where it cannot overflow).
//!
//! On Cortex-M with an FPU a layer with one input plane per group (depthwise, a first layer
//! over one channel) runs through the f32 depthwise kernel's window instead
//! ([`super::conv::depthwise_i8`]): 8 pixels share each weight load there, and its sums of
//! int8 products are exact in f32. The host has its own kernels (`madd` with AVX2, `host`).
//!
//! A dense layer is a 1x1 convolution over a 1x1 image.

#[cfg(any(target_arch = "arm", test))]
use super::conv::lanes;
use super::conv::ConvGeom;

#[cfg(any(paoding_dsp, test))]
mod columns;
#[cfg(not(target_arch = "arm"))]
mod host;
#[cfg(target_arch = "x86_64")]
mod madd;
use crate::format::i8_block_len;
#[cfg(any(target_arch = "arm", test))]
use crate::format::I8_BLOCK;
use crate::quant::Requantizer;

/// The per-channel requantization of one layer, its runs read in place from the weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Requant<'w> {
    /// One per output channel.
    pub bias: &'w [i32],
    /// One per output channel.
    pub multiplier: &'w [i32],
    /// One per output channel.
    pub shift: &'w [i8],
    pub input_zp: i32,
    pub output_zp: i32,
    /// The output clamp, inside int8 (validated).
    pub act_min: i32,
    pub act_max: i32,
}

impl Requant<'_> {
    /// Output channel `f`'s requantization of an accumulator (before its bias) into its int8
    /// output; `None` past the last channel. Every int8 convolution kernel's, host and device.
    #[inline(always)]
    pub(crate) fn channel(&self, f: usize) -> Option<impl Fn(i32) -> i8 + '_> {
        let (bias, r) = self.requantizer(f)?;
        Some(move |acc: i32| self.finish(r.apply(acc.wrapping_add(bias))))
    }

    /// A requantized value offset by the output zero point and saturated to int8 (one SSAT
    /// on Cortex-M3 and up); [`qconv2d`] then clamps a layer whose activation's range is
    /// narrower (none of the TFLite or paoding models measured: their output scales cover
    /// the activation's range).
    #[inline(always)]
    pub(super) fn finish(&self, v: i32) -> i8 {
        v.wrapping_add(self.output_zp).clamp(-128, 127) as i8
    }

    /// One pixel's outputs: channel `f0 + o`'s accumulator `acc[o]` into `out[o * step]`.
    /// One copy on Cortex-M for every kernel that stores a pixel's channels.
    #[cfg_attr(target_arch = "arm", inline(never))]
    #[cfg(any(target_arch = "arm", test))]
    fn pixel(&self, f0: usize, acc: &[i32], out: &mut [i8], step: usize) {
        for (o, &a) in acc.iter().enumerate() {
            let (Some(requant), Some(d)) = (self.channel(f0 + o), out.get_mut(o * step)) else {
                break;
            };
            *d = requant(a);
        }
    }

    /// Output channel `f`'s bias and requantization; `None` past the last channel.
    #[inline(always)]
    fn requantizer(&self, f: usize) -> Option<(i32, Requantizer)> {
        let (&bias, &m, &s) = (
            self.bias.get(f)?,
            self.multiplier.get(f)?,
            self.shift.get(f)?,
        );
        Some((bias, Requantizer::new(m, s.into())))
    }

    /// Whether every channel's shift is a right shift: a real multiplier below one half, whose
    /// requantization is the one-step form ([`Requantizer::one_step`]). The kernels that
    /// requantize in that form alone leave other layers (rare) to the block loop.
    #[cfg(any(all(target_arch = "arm", target_abi = "eabihf"), paoding_dsp, test))]
    pub(crate) fn right_shifts(&self) -> bool {
        self.shift.iter().all(|&s| s < 0)
    }

    /// Output channel `f`'s int8 outputs of `sums` (whole numbers before the bias, offset by
    /// [`super::conv::I8_SUM_START`], as the depthwise window's f32 tiles hold them:
    /// `conv::depthwise_i8`), into `out`, its parameters read once. Only for channels whose
    /// shift is a right shift (the one-step requantization; `conv::depthwise_i8` takes no
    /// other layer). Nothing past the last channel.
    #[cfg_attr(target_arch = "arm", inline(never))]
    pub(crate) fn outputs(&self, f: usize, sums: &[f32], out: &mut [i8]) {
        let Some((bias, r)) = self.requantizer(f) else {
            return;
        };
        // A sum's bits less the start's are the sum: an integer add, not a conversion.
        let bias = bias.wrapping_sub(super::conv::I8_SUM_START.to_bits() as i32);
        for (d, &v) in out.iter_mut().zip(sums) {
            *d = self.finish(r.one_step_apply((v.to_bits() as i32).wrapping_add(bias)));
        }
    }
}

/// `out = requant(W * (x - input_zp) + bias)` over NCHW, `w` as [`crate::format::pack_filters`]
/// stores it.
pub(crate) fn qconv2d(g: &ConvGeom, input: &[i8], w: &[i8], q: &Requant<'_>, out: &mut [i8]) {
    saturated(g, input, w, q, out);
    // The kernels saturate to int8 (`Requant::finish`): a narrower activation clamps after,
    // once per layer rather than twice per output.
    if (q.act_min, q.act_max) != (-128, 127) {
        super::qeltwise::qclamp(out, q.act_min, q.act_max);
    }
}

/// [`qconv2d`] with its outputs saturated to int8 rather than clamped to the activation.
#[inline(always)]
fn saturated(g: &ConvGeom, input: &[i8], w: &[i8], q: &Requant<'_>, out: &mut [i8]) {
    // x86-64 with AVX2: 16-bit pairs over a window of the whole layer.
    #[cfg(target_arch = "x86_64")]
    if madd::qconv2d(g, input, w, q, out) {
        return;
    }
    // Cortex-M with an FPU: one input plane per group (depthwise, a first layer) through the
    // f32 depthwise kernel's window, exactly (an M0+ keeps the integer loop: its floats are
    // library calls).
    #[cfg(all(target_arch = "arm", target_abi = "eabihf"))]
    if super::conv::depthwise_i8(g, input, w, q, out) {
        return;
    }
    // The DSP extension: ungrouped layers' blocks of 4 filters two pixels at a time over
    // their inputs widened once; the loop below takes any filters left.
    #[cfg(paoding_dsp)]
    let first = columns::columns(g, input, w, q, out);
    #[cfg(not(paoding_dsp))]
    let first = 0;
    let groups = g.groups.max(1);
    let (gi, go) = (g.in_c / groups, (g.out_c / groups).max(1));
    let (in_plane, out_plane) = (g.ih * g.iw, g.oh * g.ow);
    let filter = gi * g.kh * g.kw;
    // Filter f0 is the (f0 % go)-th of group f0 / go; a block never spans two groups, and
    // holds c * filter weights.
    let mut f0 = first;
    while f0 < g.out_c {
        let c = i8_block_len(go - f0 % go);
        let block = Block {
            planes: input.get(f0 / go * gi * in_plane..).unwrap_or(&[]),
            w: w.get(f0 * filter..).unwrap_or(&[]),
            c,
            gi,
            f0,
        };
        let out = out.get_mut(f0 * out_plane..).unwrap_or(&mut []);
        // The host runs several pixels at a time.
        #[cfg(not(target_arch = "arm"))]
        host::run(&block, g, q, out);
        #[cfg(target_arch = "arm")]
        block.run(g, q, out);
        f0 += c;
    }
}

/// A block of `c` filters of a convolution, the first being output channel `f0`.
struct Block<'a> {
    /// The `gi` input planes of their group.
    planes: &'a [i8],
    /// Their weights, `[taps][inputs][c]`.
    w: &'a [i8],
    c: usize,
    /// Inputs per filter.
    gi: usize,
    f0: usize,
}

impl Block<'_> {
    /// Every output pixel of the block's channels into `out` (their planes): per pixel, one
    /// accumulator per channel over every tap inside the image; each input value meets the
    /// block's contiguous run of weights. The device's loop (the host has its own, `host`;
    /// its tests compare the two).
    // One copy on Cortex-M (code size), inlined into its one caller.
    #[cfg_attr(target_arch = "arm", inline(always))]
    #[cfg_attr(not(target_arch = "arm"), inline(never))]
    #[cfg(any(target_arch = "arm", test))]
    fn run(&self, g: &ConvGeom, q: &Requant<'_>, out: &mut [i8]) {
        let (in_plane, out_plane, zp) = (g.ih * g.iw, g.oh * g.ow, q.input_zp);
        let c = self.c.max(1);
        let mut pixel = 0;
        for oy in 0..g.oh {
            let (ky0, ky1) = lanes(oy * g.sy, g.pt, g.dy, g.ih, g.kh);
            for ox in 0..g.ow {
                // An unpadded 1x1 window lies inside the input's columns: no clipping to do.
                let (kx0, kx1) = if g.kw == 1 && g.pl == 0 {
                    (0, 1)
                } else {
                    lanes(ox * g.sx, g.pl, g.dx, g.iw, g.kw)
                };
                let mut acc = [0i32; I8_BLOCK];
                for ky in ky0..ky1 {
                    // Inside the image for ky in ky0..ky1 (`lanes`); wrapping keeps a violated
                    // assumption from panicking (the reads below then find nothing).
                    let iy = (oy * g.sy + ky * g.dy).wrapping_sub(g.pt);
                    // One input channel (a first layer): the row's admitted kernel columns
                    // are the run, dx apart; otherwise each tap's gi inputs, in_plane apart.
                    // With an FPU such layers take the depthwise window (a row too wide for
                    // it comes here), so the general form serves them there: less code.
                    let (taps, n, step) = if self.gi == 1 && cfg!(not(target_abi = "eabihf")) {
                        (kx0..kx0 + 1, kx1.saturating_sub(kx0), g.dx)
                    } else {
                        (kx0..kx1, self.gi, in_plane)
                    };
                    for kx in taps {
                        let ix = (ox * g.sx + kx * g.dx).wrapping_sub(g.pl);
                        let xi = iy.wrapping_mul(g.iw).wrapping_add(ix);
                        let wi = (ky * g.kw + kx) * self.gi * c;
                        let (Some(xs), Some(ws)) = (
                            self.planes
                                .get(xi..xi.wrapping_add(n.saturating_sub(1) * step + 1)),
                            self.w.get(wi..wi + n * c),
                        ) else {
                            continue;
                        };
                        // A block of 4 takes pairs of inputs first, then the odd last one;
                        // its weights then run plain, as a single filter's.
                        let from = if c == I8_BLOCK && self.gi > 1 {
                            // SAFETY: xs holds the tap's gi inputs in_plane apart, ws its 4 gi
                            // weights (sliced above).
                            unsafe { pairs(&mut acc, xs, step, n / 2, ws, zp) };
                            n & !1
                        } else {
                            0
                        };
                        for i in from..n {
                            let x = xs.get(i * step).map_or(0, |&v| i32::from(v) - zp);
                            let run = ws.get(i * c..i * c + c).unwrap_or(&[]);
                            for (a, &w) in acc.iter_mut().zip(run) {
                                *a = a.wrapping_add(i32::from(w) * x);
                            }
                        }
                    }
                }
                let at = out.get_mut(pixel..).unwrap_or(&mut []);
                q.pixel(self.f0, acc.get(..c).unwrap_or(&[]), at, out_plane);
                pixel += 1;
            }
        }
    }
}

/// `acc[f] += w[f][i] * (xs[i * stride] - zp)` over the first `2 n` inputs of one tap for
/// a block of 4 filters, `ws` holding their `8 n` weights in
/// [`crate::format::pack_filters_i8`]'s order: portable (on the DSP extension, [`dsp::pairs`]).
///
/// # Safety
/// `xs` holds at least `(2 n - 1) stride + 1` inputs and `ws` at least `8 n` weights (the
/// portable loop checks anyway; the DSP one trusts it).
#[cfg(all(not(paoding_dsp), any(target_arch = "arm", test)))]
unsafe fn pairs(acc: &mut [i32; I8_BLOCK], xs: &[i8], stride: usize, n: usize, ws: &[i8], zp: i32) {
    let mut x = xs.iter().step_by(stride.max(1)).map(|&v| i32::from(v) - zp);
    for w in ws.chunks_exact(8).take(n) {
        let (Some(a), Some(b), &[w0, w1, w2, w3, w4, w5, w6, w7]) = (x.next(), x.next(), w) else {
            return;
        };
        let w = [w0, w1, w2, w3, w4, w5, w6, w7].map(i32::from);
        let [a0, a1, a2, a3] = acc;
        // Word j: filters 2 j and 2 j + 1 at inputs i, i + 1.
        *a0 = a0.wrapping_add(w[0] * a + w[2] * b);
        *a1 = a1.wrapping_add(w[1] * a + w[3] * b);
        *a2 = a2.wrapping_add(w[4] * a + w[6] * b);
        *a3 = a3.wrapping_add(w[5] * a + w[7] * b);
    }
}

#[cfg(paoding_dsp)]
use dsp::pairs;

/// The loops on the DSP extension's dual 16-bit multiply-accumulate (ARMv7E-M; ARMv8-M
/// Mainline with DSP): the block loop's pairs of inputs, and the columns' two filters by two
/// pixels (`columns.rs`).
#[cfg(paoding_dsp)]
mod dsp {
    use super::I8_BLOCK;
    use core::arch::asm;

    /// Two filters over two pixels: `acc = [f@A, f@B, f+1@A, f+1@B]` summed over `n` pairs of
    /// inputs, `col` holding per pair the two pixels' 16-bit pairs, `w` the filter pair's
    /// word every 8 bytes. Per pair: one `ldrd`, one `ldr`, two `sxtb16`, four `smlad`:
    /// 10 instructions for 8 MACs with the loop.
    ///
    /// # Safety
    /// `col` holds `2 n` words and `w` `8 (n - 1) + 4` bytes.
    #[inline(always)]
    pub(super) unsafe fn cols2x2(acc: &mut [i32; 4], col: *const u32, w: *const i8, n: usize) {
        let [mut a0, mut a1, mut a2, mut a3] = *acc;
        // SAFETY: reads 2 n words from `col` and n words 8 bytes apart from `w` (the caller's
        // contract), none for n = 0; writes only its registers.
        unsafe {
            asm!(
                "cmp r9, #0",
                "beq 3f",
                "2:",
                "ldrd r10, r11, [r4], #8",
                "ldr r12, [r8], #8",
                "sxtb16 lr, r12",
                "sxtb16 r12, r12, ror #8",
                "smlad r0, lr, r10, r0",
                "smlad r1, lr, r11, r1",
                "smlad r2, r12, r10, r2",
                "smlad r3, r12, r11, r3",
                "subs r9, #1",
                "bne 2b",
                "3:",
                inout("r0") a0,
                inout("r1") a1,
                inout("r2") a2,
                inout("r3") a3,
                inout("r4") col => _,
                inout("r8") w => _,
                inout("r9") n => _,
                out("r10") _,
                out("r11") _,
                out("r12") _,
                out("lr") _,
                options(nostack, readonly),
            );
        }
        *acc = [a0, a1, a2, a3];
    }

    /// [`super::pairs`] on the DSP extension: per pair, two `ldrsb`, packed into 16-bit
    /// halves (`pkhbt`) less the zero point (`ssub16`); two words of weights, each
    /// sign-extended (`sxtb16`) into two filters' pairs; 4 `smlad`. 17 instructions for 8
    /// MACs.
    ///
    /// # Safety
    /// As [`super::pairs`].
    #[inline(always)]
    pub(super) unsafe fn pairs(
        acc: &mut [i32; I8_BLOCK],
        xs: &[i8],
        stride: usize,
        n: usize,
        ws: &[i8],
        zp: i32,
    ) {
        let [mut a0, mut a1, mut a2, mut a3] = *acc;
        // SAFETY: reads 2 n inputs `stride` apart from `xs` and 8 n weights from `ws`, inside
        // them (the caller's contract), none for n = 0; writes only its registers.
        unsafe {
            asm!(
                "cmp r9, #0",
                "beq 3f",
                "2:",
                "ldrsb r11, [r4]",
                "ldrsb r12, [r4, r5]",
                "add r4, r4, r5, lsl #1",
                "pkhbt r11, r11, r12, lsl #16",
                "ssub16 r11, r11, r10",
                "ldr r12, [r8], #4",
                "sxtb16 lr, r12",
                "sxtb16 r12, r12, ror #8",
                "smlad r0, lr, r11, r0",
                "smlad r1, r12, r11, r1",
                "ldr r12, [r8], #4",
                "sxtb16 lr, r12",
                "sxtb16 r12, r12, ror #8",
                "smlad r2, lr, r11, r2",
                "smlad r3, r12, r11, r3",
                "subs r9, #1",
                "bne 2b",
                "3:",
                inout("r0") a0,
                inout("r1") a1,
                inout("r2") a2,
                inout("r3") a3,
                inout("r4") xs.as_ptr() => _,
                in("r5") stride,
                inout("r8") ws.as_ptr() => _,
                inout("r9") n => _,
                in("r10") (zp as u32 & 0xFFFF) * 0x1_0001,
                out("r11") _,
                out("r12") _,
                out("lr") _,
                options(nostack, readonly),
            );
        }
        *acc = [a0, a1, a2, a3];
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::format::pack_filters_i8;
    use crate::kernels::conv::tests::{geometry, Case};
    use std::vec::Vec;

    /// Deterministic int8 values.
    fn values(n: usize, seed: u32) -> Vec<i8> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 24) as i8
            })
            .collect()
    }

    /// TFLite's reference per-channel convolution, tap by tap, from ONNX-ordered weights
    /// `[out][in / groups][kh][kw]`: taps outside the image skipped.
    fn reference(g: &ConvGeom, x: &[i8], w: &[i8], q: &Requant<'_>) -> Vec<i8> {
        let (gi, go) = (g.in_c / g.groups, g.out_c / g.groups);
        let mut out = Vec::new();
        for f in 0..g.out_c {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc: i64 = 0;
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
                                acc += i64::from(wv) * (i64::from(xv) - i64::from(q.input_zp));
                            }
                        }
                    }
                    let acc = (acc + i64::from(q.bias[f])) as i32;
                    let (m, s) = (q.multiplier[f], q.shift[f].into());
                    let v = crate::quant::multiply_by_quantized_multiplier(acc, m, s) + q.output_zp;
                    out.push(v.clamp(q.act_min, q.act_max) as i8);
                }
            }
        }
        out
    }

    fn check(cases: &[Case]) {
        let mut clamping_cases = 0;
        for (k, case) in cases.iter().enumerate() {
            let g = geometry(case);
            let gi = g.in_c / g.groups;
            let x = values(g.in_c * g.ih * g.iw, 1 + k as u32);
            let w = values(g.out_c * gi * g.kh * g.kw, 2 + k as u32);
            // Biases around the accumulator scale, per-channel multipliers from 2^-12 to
            // 2^-6 (the range a real layer has), zero points off centre, a ReLU6-like clamp.
            let bias: Vec<i32> = (0..g.out_c as i32).map(|o| (o - 3) * 517).collect();
            let (multiplier, shift): (Vec<i32>, Vec<i8>) = (0..g.out_c)
                .map(|o| {
                    let (m, s) =
                        crate::quant::quantize_multiplier(0.0003 * (1.0 + o as f64 * 0.37));
                    (m, s as i8)
                })
                .unzip();
            let q = Requant {
                bias: &bias,
                multiplier: &multiplier,
                shift: &shift,
                input_zp: -17 + k as i32,
                output_zp: 5 - k as i32,
                act_min: -100,
                act_max: 90,
            };
            let mut packed = std::vec![0i8; w.len()];
            assert!(pack_filters_i8(
                &w,
                g.groups,
                g.out_c / g.groups,
                gi,
                g.kh * g.kw,
                &mut packed
            ));
            let mut out = std::vec![0i8; g.out_c * g.oh * g.ow];
            qconv2d(&g, &x, &packed, &q, &mut out);
            let want = reference(&g, &x, &w, &q);
            assert_eq!(out, want, "{g:?}");
            // The kernels below saturate to int8; qconv2d clamps to the activation after them.
            let full = Requant {
                act_min: -128,
                act_max: 127,
                ..q
            };
            let (clamped, want) = (want, reference(&g, &x, &w, &full));
            clamping_cases += usize::from(clamped != want);
            // The device's loop, block by block as qconv2d deals them out, gives the same.
            let (go, filter, plane) = (g.out_c / g.groups, gi * g.kh * g.kw, g.oh * g.ow);
            let (mut device, mut portable) = (std::vec![0i8; out.len()], std::vec![0i8; out.len()]);
            let mut f0 = 0;
            while f0 < g.out_c {
                let c = i8_block_len(go - f0 % go);
                let block = Block {
                    planes: &x[f0 / go * gi * g.ih * g.iw..],
                    w: &packed[f0 * filter..],
                    c,
                    gi,
                    f0,
                };
                block.run(&g, &q, &mut device[f0 * plane..]);
                host::run(&block, &g, &q, &mut portable[f0 * plane..]);
                f0 += c;
            }
            assert_eq!(device, want, "{g:?}: the device's loop");
            let mut window = std::vec![0i8; out.len()];
            if crate::kernels::conv::depthwise_i8(&g, &x, &packed, &q, &mut window) {
                assert_eq!(window, want, "{g:?}: the device's depthwise window");
            } else {
                // Only what the window cannot take falls back: a row wider than it (a phase
                // holds a row's tiles; after a band's input rows come its sums, a row of
                // `ow` and 8 more), or a filter of more taps than its table.
                use crate::kernels::conv::{MAX_TAPS, WINDOW};
                let width = (g.ow + 7 + (g.kw - 1) * g.dx / g.sx) * g.sx;
                let span = (g.kh - 1) * g.dy + 1;
                let one_plane = g.in_c == g.groups;
                assert!(
                    !one_plane || width * span + g.ow + 8 > WINDOW || g.kh * g.kw > MAX_TAPS,
                    "{g:?}: not taken"
                );
            }
            assert_eq!(portable, want, "{g:?}: the host's portable tiles");
            // The DSP extension's columns (through their loop's portable copy): the whole
            // blocks of 4 of every ungrouped layer with even inputs per tap.
            let mut cols = std::vec![0i8; out.len()];
            let done = columns::columns(&g, &x, &packed, &q, &mut cols);
            let takes = g.groups == 1
                && gi.is_multiple_of(2)
                && gi * g.kh * g.kw <= 256
                && g.out_c >= 4
                && plane >= 2;
            assert_eq!(
                done,
                if takes { g.out_c / 4 * 4 } else { 0 },
                "{g:?}: columns taken"
            );
            assert_eq!(
                cols[..done * plane],
                want[..done * plane],
                "{g:?}: the columns"
            );
            // Some outputs clamp, most do not: the test sees the requantization.
            assert!(clamped.iter().any(|&v| v != -100 && v != 90), "{g:?}");
        }
        assert!(clamping_cases > 0, "the activation clamps in some case");
    }

    #[test]
    fn standard_and_grouped_convolutions_match_the_reference() {
        check(&[
            ((1, 8, 8), (16, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((3, 9, 10), (12, 1), (5, 5), (2, 1), (1, 2), [2, 1, 0, 3]),
            ((8, 6, 6), (8, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((6, 7, 5), (9, 3), (2, 3), (2, 2), (2, 1), [0, 2, 1, 0]),
            // Rows wide enough for the host's tiles of 8 pixels, at strides 1 and 2.
            ((4, 6, 20), (9, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((3, 7, 37), (5, 1), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
            // A first layer like MLPerf KWS's (one channel, 10x4 kernel, stride 2).
            ((1, 49, 10), (12, 1), (10, 4), (2, 2), (1, 1), [4, 1, 5, 1]),
            // One input plane per group with a block of 4 and a single filter each (the
            // device's window takes them).
            ((1, 7, 9), (5, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((2, 6, 6), (10, 2), (3, 2), (1, 2), (1, 1), [1, 0, 1, 1]),
            // Even inputs (the columns) at strides 2, dilation 2, uneven padding and an odd
            // number of pixels, and a pointwise layer with trailing filters.
            ((4, 9, 7), (8, 1), (3, 3), (2, 2), (2, 1), [2, 1, 0, 3]),
            ((6, 5, 5), (7, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            // Planes too large for the host's window at once: bands of output rows, at row
            // strides 1 and 2 and with an odd channel count.
            ((8, 48, 48), (8, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((7, 50, 46), (5, 1), (3, 3), (2, 2), (1, 1), [1, 0, 1, 1]),
        ]);
    }

    #[test]
    fn depthwise_convolutions_match_the_reference() {
        check(&[
            ((16, 8, 8), (16, 16), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((8, 8, 8), (8, 8), (3, 3), (2, 2), (1, 1), [1, 1, 1, 1]),
            ((5, 9, 7), (5, 5), (3, 3), (1, 2), (2, 1), [2, 0, 1, 2]),
            // Depth multiplier 2.
            ((3, 6, 6), (6, 3), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((4, 5, 21), (4, 4), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            // Row stride 2 and dilation at column stride 1 (the host's padded window).
            ((3, 11, 9), (3, 3), (3, 3), (2, 1), (2, 2), [2, 1, 1, 3]),
            // Dilated rows only, even and wide kernels, and a plane the device's window takes
            // in bands of output rows (at row strides 1 and 2).
            ((4, 12, 10), (4, 4), (3, 3), (1, 1), (3, 1), [3, 1, 3, 1]),
            ((3, 9, 11), (3, 3), (2, 4), (1, 2), (1, 1), [1, 2, 0, 1]),
            ((2, 60, 40), (2, 2), (5, 5), (1, 1), (1, 1), [2, 2, 2, 2]),
            ((2, 61, 45), (2, 2), (3, 3), (2, 1), (1, 1), [1, 1, 1, 1]),
            // Rows too wide for the device's window, and a filter of more than 64 taps: the
            // block loop.
            ((2, 3, 600), (2, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]),
            ((2, 12, 12), (2, 2), (9, 9), (1, 1), (1, 1), [4, 4, 4, 4]),
        ]);
    }

    /// A geometry that validation rejects (a zero stride, an empty kernel) is declined by the
    /// window, which would otherwise divide by the stride or count taps below zero: nothing
    /// is written, and nothing panics.
    #[test]
    fn the_depthwise_window_declines_what_validation_rejects() {
        let good = geometry(&((2, 5, 5), (2, 2), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]));
        let (x, w) = (values(50, 1), values(18, 2));
        let (bias, multiplier) = ([0; 2], [1 << 30; 2]);
        let q = Requant {
            bias: &bias,
            multiplier: &multiplier,
            shift: &[-3, -3],
            input_zp: 0,
            output_zp: 0,
            act_min: -128,
            act_max: 127,
        };
        for k in 0..4 {
            let mut g = good;
            match k {
                0 => g.sx = 0,
                1 => g.sy = 0,
                2 => g.kh = 0,
                _ => g.kw = 0,
            }
            let mut out = [0i8; 50];
            assert!(
                !crate::kernels::conv::depthwise_i8(&g, &x, &w, &q, &mut out),
                "{g:?}"
            );
        }
    }

    /// A channel whose real multiplier is one half or more (its shift is not a right shift:
    /// rare) leaves the layer to the block loop, whose requantization takes every shift: the
    /// depthwise window's and the columns' take the one-step form alone.
    #[test]
    fn one_step_kernels_leave_multipliers_of_one_half_or_more_to_the_block_loop() {
        // A depthwise layer (the window) and a 3x3 convolution of 4 filters (the columns).
        let depthwise = geometry(&((4, 6, 6), (4, 4), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]));
        let standard = geometry(&((4, 6, 6), (4, 1), (3, 3), (1, 1), (1, 1), [1, 1, 1, 1]));
        let (bias, multiplier) = ([5, -9, 0, 70], [1 << 30; 4]);
        for (k, g) in [depthwise, standard].into_iter().enumerate() {
            let gi = g.in_c / g.groups;
            let (x, w) = (values(4 * 36, 5), values(4 * gi * 9, 6));
            let mut packed = std::vec![0i8; w.len()];
            assert!(pack_filters_i8(
                &w,
                g.groups,
                4 / g.groups,
                gi,
                9,
                &mut packed
            ));
            for (shifts, taken) in [
                ([-8, -9, -7, -10], true),
                ([-8, 0, -7, -10], false),
                ([1, -9, -7, -10], false),
            ] {
                let q = Requant {
                    bias: &bias,
                    multiplier: &multiplier,
                    shift: &shifts,
                    input_zp: 4,
                    output_zp: -3,
                    act_min: -128,
                    act_max: 127,
                };
                let mut fast = std::vec![0i8; 4 * 36];
                let done = if k == 0 {
                    crate::kernels::conv::depthwise_i8(&g, &x, &packed, &q, &mut fast)
                } else {
                    columns::columns(&g, &x, &packed, &q, &mut fast) == 4
                };
                assert_eq!(done, taken, "{g:?} {shifts:?}");
                let want = reference(&g, &x, &w, &q);
                if done {
                    assert_eq!(fast, want, "{g:?} {shifts:?}");
                }
                let mut out = std::vec![0i8; 4 * 36];
                qconv2d(&g, &x, &packed, &q, &mut out);
                assert_eq!(out, want, "{g:?} {shifts:?}");
            }
        }
    }

    /// The device's depthwise window sums in f32: exact while every partial sum stays below
    /// 2^24, which the largest products over the most taps it takes (64) do.
    #[test]
    fn the_depthwise_window_sums_exactly_at_the_extremes() {
        let g = geometry(&((3, 9, 9), (3, 3), (8, 8), (1, 1), (1, 1), [0, 0, 0, 0]));
        for (xv, wv, zp) in [(-128i8, -128i8, 127), (127, -128, -128), (-128, 127, 127)] {
            let x = std::vec![xv; 3 * 81];
            let w = std::vec![wv; 3 * 64];
            let bias = [7, -1 << 20, 0];
            let multiplier = [1 << 30; 3];
            let q = Requant {
                bias: &bias,
                multiplier: &multiplier,
                shift: &[-14, -15, -16],
                input_zp: zp,
                output_zp: 1,
                act_min: -128,
                act_max: 127,
            };
            let mut out = std::vec![0i8; 3 * 4];
            assert!(crate::kernels::conv::depthwise_i8(&g, &x, &w, &q, &mut out));
            assert_eq!(out, reference(&g, &x, &w, &q), "x {xv}, w {wv}, zp {zp}");
            assert!(
                out.iter().all(|&v| v != -128 && v != 127),
                "unclamped: {out:?}"
            );
        }
    }

    #[test]
    fn pointwise_convolutions_and_dense_layers_match_the_reference() {
        check(&[
            ((16, 8, 8), (32, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((7, 5, 3), (13, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((64, 1, 1), (10, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            // One position, odd input counts and pair counts (the host's dense kernel).
            ((7, 1, 1), (9, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((37, 1, 1), (6, 1), (1, 1), (1, 1), (1, 1), [0, 0, 0, 0]),
            ((4, 7, 7), (9, 1), (1, 1), (2, 2), (1, 1), [0, 0, 0, 0]),
        ]);
        // A dense layer: ConvGeom::dense, as the executor runs it.
        let (x, w) = (values(20, 9), values(60, 10));
        let bias = std::vec![100; 3];
        let (m, s) = crate::quant::quantize_multiplier(0.004);
        let q = Requant {
            bias: &bias,
            multiplier: &[m; 3],
            shift: &[s as i8; 3],
            input_zp: 3,
            output_zp: -2,
            act_min: -128,
            act_max: 127,
        };
        let mut packed = std::vec![0i8; 60];
        assert!(pack_filters_i8(&w, 1, 3, 20, 1, &mut packed));
        let mut out = [0i8; 3];
        qconv2d(&ConvGeom::dense(20, 3), &x, &packed, &q, &mut out);
        let g = ConvGeom::dense(20, 3);
        assert_eq!(out.to_vec(), reference(&g, &x, &w, &q));
    }
}
