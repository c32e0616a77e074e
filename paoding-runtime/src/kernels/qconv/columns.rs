//! Ungrouped int8 convolutions two pixels by two filters over columns of widened inputs (the
//! DSP extension's SMLAD, `dsp::cols2x2`; the tests run it through a portable copy of that
//! loop on the host, where qconv2d never calls it).

#[cfg(paoding_dsp)]
use super::dsp::cols2x2;
use super::{ConvGeom, Requant, I8_BLOCK};
use crate::kernels::splat;
use crate::quant::Requantizer;
use core::num::NonZeroUsize;

/// Most input pairs a column holds (8 bytes each, on the stack).
const COLUMN_PAIRS: usize = 128;

/// The blocks of 4 filters of an ungrouped convolution of an even number of inputs per
/// tap, at most `2 COLUMN_PAIRS` inputs per filter, every channel's shift a right shift (the
/// one-step requantization; others are rare), over two pixels or more: per pair of
/// pixels, every input a filter reads, less its zero point (0 over the padding, the taps
/// TFLite skips), is widened once into a column of 16-bit pairs (`[pixel A's pair, pixel
/// B's pair]` per pair of inputs, in the filters' order: taps, then inputs), which every
/// pair of filters then runs over ([`cols2x2`]). Returns the output channels done: 0 for
/// any other layer.
pub(super) fn columns(
    g: &ConvGeom,
    input: &[i8],
    w: &[i8],
    q: &Requant<'_>,
    out: &mut [i8],
) -> usize {
    let plane = g.oh * g.ow;
    let in_plane = g.ih * g.iw;
    let blocks = g.out_c / I8_BLOCK * I8_BLOCK;
    let tap_pairs = g.in_c / 2;
    let pairs = tap_pairs * g.kh * g.kw;
    let Some(ow) = NonZeroUsize::new(g.ow) else {
        return 0;
    };
    if g.groups.max(1) != 1
        || !g.in_c.is_multiple_of(2)
        || pairs == 0
        || pairs > COLUMN_PAIRS
        || blocks == 0
        || plane < 2
        || input.len() < g.in_c * in_plane
        || w.len() < blocks * 2 * pairs
        || out.len() < blocks * plane
        || q.bias.len().min(q.multiplier.len()).min(q.shift.len()) < blocks
        || !q.right_shifts()
    {
        return 0;
    }
    let zp = q.input_zp;
    // Where pixel p reads tap (ky, kx): its offset in a plane, if inside the image.
    let tap = |p: usize, ky: usize, kx: usize| {
        let iy = (p / ow * g.sy + ky * g.dy).wrapping_sub(g.pt);
        let ix = (p % ow * g.sx + kx * g.dx).wrapping_sub(g.pl);
        (iy < g.ih && ix < g.iw).then(|| iy * g.iw + ix)
    };
    let mut col: [u32; 2 * COLUMN_PAIRS] = splat(0);
    let mut a = 0;
    while a < plane {
        // An odd last pixel pairs with itself; its copy is not stored.
        let b = (a + 1).min(plane - 1);
        // The column's word for the next tap's first pair.
        let mut at = 0;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                // A tap over the padding reads pixel 0 and keeps none of it (mask 0):
                // no branch per pair.
                let (ta, tb) = (tap(a, ky, kx), tap(b, ky, kx));
                let mask = |t: Option<usize>| if t.is_some() { u32::MAX } else { 0 };
                let (xa, xb) = (ta.unwrap_or(0), tb.unwrap_or(0));
                // SAFETY: the tap's pairs of input channels (below in_c, checked) at
                // pixels inside the plane lie inside `input`, its words inside `col`
                // (2 pairs words, checked).
                unsafe {
                    widen(
                        col.as_mut_ptr().add(at),
                        [input.as_ptr().add(xa), input.as_ptr().add(xb)],
                        [mask(ta), mask(tb)],
                        in_plane,
                        tap_pairs,
                        zp,
                    )
                };
                at += 2 * tap_pairs;
            }
        }
        // A while loop, not `step_by`, whose iterator costs instructions per step.
        let mut f = 0;
        while f < blocks {
            // Filters f, f + 1 are word (f % 4) / 2 of each 8-byte group of their block.
            let w_at = (f & !3) * 2 * pairs + (f & 2) * 2;
            // The sums start from each filter's bias (channels below blocks, checked).
            // SAFETY: f + 1 < blocks, within every per-channel run (checked above).
            let (ba, bb) = unsafe { (*q.bias.get_unchecked(f), *q.bias.get_unchecked(f + 1)) };
            let mut acc = [ba, ba, bb, bb];
            // SAFETY: the block's 8 `pairs` bytes from `w_at` lie inside `w` (its length
            // checked above); the column holds 2 `pairs` words.
            unsafe { cols2x2(&mut acc, col.as_ptr(), w.as_ptr().add(w_at), pairs) };
            // Each filter's parameters read once for its two pixels, the requantization
            // inline (through `pixel`, a call and every channel's parameters per pixel,
            // it cost more than the multiply-accumulates). An odd last pixel's copy lands
            // on it with the same value.
            for (j, sums) in [[acc[0], acc[1]], [acc[2], acc[3]]].into_iter().enumerate() {
                let f = f + j;
                // SAFETY: f < blocks: inside every per-channel run, and with pixels a, b <
                // plane inside the blocks * plane outputs (all checked above).
                unsafe {
                    let r = Requantizer::new(
                        *q.multiplier.get_unchecked(f),
                        (*q.shift.get_unchecked(f)).into(),
                    );
                    let at = out.as_mut_ptr().add(f * plane);
                    *at.add(a) = q.finish(r.one_step_apply(sums[0]));
                    *at.add(b) = q.finish(r.one_step_apply(sums[1]));
                }
            }
            f += 2;
        }
        a += 2;
    }
    blocks
}

/// `n` pairs of input channels of one tap at two pixels, less the zero point, into `col`:
/// per pair `[A's pair & masks[0], B's pair & masks[1]]`, channel pair `k` being
/// channels `2k` and `2k + 1`, `stride` apart. Out of line: inside its caller the loop ran
/// short of registers.
///
/// # Safety
/// `col` is valid for `2 n` words; each of `x` for reads at `stride` steps up to
/// `(2 n - 1) stride`.
#[inline(never)]
unsafe fn widen(
    col: *mut u32,
    x: [*const i8; 2],
    masks: [u32; 2],
    stride: usize,
    n: usize,
    zp: i32,
) {
    let ([mut a, mut b], [ma, mb]) = (x, masks);
    // SAFETY: reads at offsets 0 and `stride` from a pointer the loop keeps inside the
    // caller's ranges.
    let pair = |p: *const i8| unsafe {
        let (lo, hi) = (i32::from(*p) - zp, i32::from(*p.add(stride)) - zp);
        (lo as u32 & 0xFFFF) | (hi as u32) << 16
    };
    for k in 0..n {
        // SAFETY: words 2k, 2k + 1 < 2 n; the next pair of channels is 2 stride on.
        unsafe {
            *col.add(2 * k) = pair(a) & ma;
            *col.add(2 * k + 1) = pair(b) & mb;
            a = a.wrapping_add(2 * stride);
            b = b.wrapping_add(2 * stride);
        }
    }
}

/// [`super::dsp::cols2x2`] in portable Rust, for the host's tests: per pair `k`, the filter
/// pair's word `[fa@i, fb@i, fa@i+1, fb@i+1]` (bytes) against the two pixels' 16-bit pairs.
///
/// # Safety
/// As [`super::dsp::cols2x2`].
#[cfg(not(paoding_dsp))]
unsafe fn cols2x2(acc: &mut [i32; 4], col: *const u32, w: *const i8, n: usize) {
    for k in 0..n {
        // SAFETY: word 2k + 1 < 2 n and bytes 8k .. 8k + 4 inside the caller's ranges.
        let ([xa, xb], [fa0, fb0, fa1, fb1]) = unsafe {
            (
                [*col.add(2 * k), *col.add(2 * k + 1)],
                [
                    *w.add(8 * k),
                    *w.add(8 * k + 1),
                    *w.add(8 * k + 2),
                    *w.add(8 * k + 3),
                ],
            )
        };
        let halves = |x: u32| [i32::from(x as i16), i32::from((x >> 16) as i16)];
        let ([a0, a1], [b0, b1]) = (halves(xa), halves(xb));
        let [fa0, fb0, fa1, fb1] = [fa0, fb0, fa1, fb1].map(i32::from);
        acc[0] = acc[0].wrapping_add(fa0 * a0 + fa1 * a1);
        acc[1] = acc[1].wrapping_add(fa0 * b0 + fa1 * b1);
        acc[2] = acc[2].wrapping_add(fb0 * a0 + fb1 * a1);
        acc[3] = acc[3].wrapping_add(fb0 * b0 + fb1 * b1);
    }
}
