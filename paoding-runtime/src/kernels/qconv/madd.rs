//! Host-only int8 convolution on x86-64 with AVX2: 16-bit pairs through `vpmaddwd`.
//!
//! `vpmaddwd` multiplies 16 pairs of 16-bit values and adds each pair into one 32-bit lane:
//! 16 MACs in one instruction, the x86 counterpart of the Cortex-M's SMLAD. To feed it, the
//! inputs of a group are copied once per layer (not once per block of filters) into a
//! *window* of 16-bit pairs, less the input zero point, with the padding already in place
//! (zero, which is TFLite's padding with the zero point):
//!
//! - several input channels: a pair holds channels `2j` and `2j + 1` at one position;
//! - one input channel (depthwise, a first layer): a pair holds kernel columns `kx` and
//!   `kx + 1` at one position, so a kernel row takes half as many terms.
//!
//! At a column stride `sx` above 1, each pair plane is stored in `sx` phases (columns
//! `x' * sx + phase`), so that one tap's inputs for consecutive output pixels are always
//! adjacent. A tile of 16 consecutive output positions then reads each term's 16 pairs with
//! two loads, and each filter's pair of weights (broadcast) meets them in two `vpmaddwd`.
//! Positions past a row's end are computed and dropped; the window's slack keeps their reads
//! inside it. Integer sums do not depend on their order, so every output is the device's
//! exactly ([`super::Block::run`]); requantization is TFLite's, 8 lanes at a time.
//!
//! A plane too large for the window runs in bands of output rows, the window holding one
//! band's input rows at a time. Dense layers (one position) pair their inputs instead and
//! run along them ([`dense`]). Layers whose weights, or a band of at least a tile's
//! positions, would not fit the fixed stack buffers, planes of 2 to 7 positions and CPUs
//! without AVX2 take the portable host path (`super::host`).

use core::arch::x86_64::*;
use core::mem::MaybeUninit;

use super::Requant;
use crate::format::{i8_block_len, I8_BLOCK};
use crate::kernels::conv::ConvGeom;

/// 16-bit pairs of the window (32 KiB on the stack: the keyword spotter's pointwise layers take
/// 18 KiB).
const WINDOW: usize = 8 * 1024;
/// Weight pairs of one block: `terms * C` (16 KiB).
const WEIGHTS: usize = 4 * 1024;
/// Output positions of a tile: two vectors of 8 lanes.
const TILE: usize = 16;
/// Extra pairs after each pair plane, so that a tile running past the last position reads
/// inside its plane.
const SLACK: usize = TILE;
/// Below this many output positions per plane, the portable path's one-pixel tiles waste
/// less (dense layers have their own kernel, [`dense`]).
const MIN_PLANE: usize = 8;
/// Pairs of inputs a dense layer may have ([`dense`] keeps them twice on the stack, 20 bytes
/// a pair: 40 KiB).
const DENSE_PAIRS: usize = 2048;

/// `qconv2d` through `vpmaddwd` tiles, if this CPU has AVX2 and the layer fits; false (having
/// written nothing) otherwise.
pub(super) fn qconv2d(
    g: &ConvGeom,
    input: &[i8],
    w: &[i8],
    q: &Requant<'_>,
    out: &mut [i8],
) -> bool {
    if !crate::kernels::x86::has_avx2() {
        return false;
    }
    let one_position = g.ih * g.iw == 1 && g.oh * g.ow == 1 && g.kh * g.kw == 1;
    if one_position && g.groups <= 1 && g.in_c / 2 <= DENSE_PAIRS {
        if (-255..=255).contains(&q.input_zp) {
            // SAFETY: the CPU has AVX2.
            unsafe { dense(g.in_c, g.out_c, input, w, q, out) };
            return true;
        }
        return false;
    }
    let Some(layout) = Layout::new(g, q) else {
        return false;
    };
    // SAFETY: the CPU has AVX2.
    unsafe { run(g, &layout, input, w, q, out) };
    true
}

/// Where everything sits in the window and in a block's weight pairs.
struct Layout {
    /// Inputs of a group.
    gi: usize,
    /// Filters of a group.
    go: usize,
    /// Pair planes of a group: channel pairs, or one (kernel-column pairs).
    pairs: usize,
    /// Width of a phase row, in pairs.
    width: usize,
    /// Output rows of a band: the window holds the input rows of one band at a time.
    band: usize,
    /// Rows of the window (of a band).
    height: usize,
    /// Pairs from one phase plane to the next: `height * width + SLACK`.
    plane: usize,
    /// Terms of a filter: (plane, offset) per tap (and channel pair).
    terms: usize,
}

impl Layout {
    fn new(g: &ConvGeom, q: &Requant<'_>) -> Option<Layout> {
        let groups = g.groups.max(1);
        let (gi, go) = (g.in_c / groups, g.out_c / groups);
        let positions = g.oh.checked_mul(g.ow)?;
        // (x - zp) must fit 16 bits: zero points are validated to int8's range, but the
        // arithmetic here relies on it, so it checks.
        if gi == 0 || go == 0 || positions < MIN_PLANE || !(-255..=255).contains(&q.input_zp) {
            return None;
        }
        let (sx, sy) = (g.sx.max(1), g.sy.max(1));
        let pairs = if gi == 1 { 1 } else { gi.div_ceil(2) };
        // The columns a tap reaches past the first (a pair of kernel columns holds its
        // partner column's input itself).
        let span_x = (g.kw.max(1) - 1) * g.dx;
        let width = g.ow + span_x.div_ceil(sx);
        let span_y = (g.kh.max(1) - 1) * g.dy;
        // As many output rows per band as the window holds (all of them if it can).
        let rows_fit = (WINDOW / pairs.checked_mul(sx)?)
            .saturating_sub(SLACK)
            .checked_div(width)?;
        let band = rows_fit
            .checked_sub(span_y + 1)
            .map_or(0, |r| r / sy + 1)
            .min(g.oh);
        let height = (band.max(1) - 1) * sy + span_y + 1;
        let plane = height.checked_mul(width)?.checked_add(SLACK)?;
        let terms = if gi == 1 {
            g.kh * g.kw.div_ceil(2)
        } else {
            g.kh * g.kw * pairs
        };
        // A band of fewer positions than a tile would spend more on its window than on its
        // products: the portable tiles then.
        let fits = band > 0
            && (band == g.oh || band * g.ow >= TILE)
            && pairs
                .checked_mul(sx)
                .and_then(|p| p.checked_mul(plane))
                .is_some_and(|n| n <= WINDOW)
            && terms.checked_mul(I8_BLOCK).is_some_and(|n| n <= WEIGHTS);
        fits.then_some(Layout {
            gi,
            go,
            pairs,
            width,
            band,
            height,
            plane,
            terms,
        })
    }

    /// The kernel row, column and channel pair of term `t`: for several channels, term
    /// `(tap, j)` is `tap * pairs + j`; for one, `ky * ceil(kw / 2) + kx / 2` (the pair of
    /// columns kx, kx + 1).
    fn tap(&self, g: &ConvGeom, t: usize) -> (usize, usize, usize) {
        if self.gi == 1 {
            let half = g.kw.div_ceil(2);
            (t / half, 2 * (t % half), 0)
        } else {
            let tap = t / self.pairs;
            (tap / g.kw, tap % g.kw, t % self.pairs)
        }
    }

    /// Where term `t` reads the window for the tile's first position.
    fn term(&self, g: &ConvGeom, t: usize) -> usize {
        let sx = g.sx.max(1);
        let (ky, kx, j) = self.tap(g, t);
        let col = kx * g.dx;
        (j * sx + col % sx) * self.plane + ky * g.dy * self.width + col / sx
    }
}

/// Every group and block of the layer. Single filters (a group's last `go % 4`, depthwise)
/// run as blocks of one.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn run(g: &ConvGeom, l: &Layout, input: &[i8], w: &[i8], q: &Requant<'_>, out: &mut [i8]) {
    let groups = g.groups.max(1);
    let (in_plane, out_plane) = (g.ih * g.iw, g.oh * g.ow);
    let filter = l.gi * g.kh * g.kw;
    // Uninitialised: zeroing 52 KiB would cost more than a small layer; each buffer is read
    // only where it was written.
    let mut win = [MaybeUninit::<u32>::uninit(); WINDOW];
    let mut weights = [MaybeUninit::<i32>::uninit(); WEIGHTS];
    let mut offsets = [MaybeUninit::<u32>::uninit(); WEIGHTS / I8_BLOCK];
    // Below WINDOW, so they fit 32 bits.
    let offsets = filled(&mut offsets, l.terms, |t| l.term(g, t) as u32);
    let bands = (0..groups).flat_map(|k| (0..g.oh).step_by(l.band).map(move |y| (k, y)));
    for (group, oy0) in bands {
        let planes = input.get(group * l.gi * in_plane..).unwrap_or(&[]);
        let rows = (oy0, l.band.min(g.oh - oy0));
        let win = fill_window(g, l, planes, q.input_zp, oy0, &mut win);
        let mut f = 0;
        while f < l.go {
            let f0 = group * l.go + f;
            let c = i8_block_len(l.go - f);
            let block = w.get(f0 * filter..(f0 + c) * filter).unwrap_or(&[]);
            let out = out.get_mut(f0 * out_plane..).unwrap_or(&mut []);
            if c == I8_BLOCK {
                let weights = pair_weights::<I8_BLOCK>(g, l, block, &mut weights);
                // SAFETY: AVX2, as this function's.
                unsafe { tiles::<I8_BLOCK>(g, l, win, offsets, weights, q, f0, rows, out) };
            } else {
                let weights = pair_weights::<1>(g, l, block, &mut weights);
                // SAFETY: as above.
                unsafe { tiles::<1>(g, l, win, offsets, weights, q, f0, rows, out) };
            }
            f += c;
        }
    }
}

/// Two 16-bit values in one word, `lo` in the low half, as `vpmaddwd` pairs them.
fn pair(lo: i32, hi: i32) -> u32 {
    lo as u16 as u32 | (hi as u16 as u32) << 16
}

/// The first `len` values of `buf` (at most all of them), value `i` being `value(i)`.
fn filled<T: Copy>(buf: &mut [MaybeUninit<T>], len: usize, value: impl Fn(usize) -> T) -> &[T] {
    let buf = buf.get_mut(..len).unwrap_or_default();
    for (i, v) in buf.iter_mut().enumerate() {
        v.write(value(i));
    }
    // SAFETY: every value of `buf` was written just above.
    unsafe { &*(buf as *const [MaybeUninit<T>] as *const [T]) }
}

/// Copy the input rows of the band of output rows from `oy0` of a group's input planes into
/// the window as [`Layout`] places them, less the zero point, zero (the zero point) over the
/// padding; the window's used part.
fn fill_window<'w>(
    g: &ConvGeom,
    l: &Layout,
    planes: &[i8],
    zp: i32,
    oy0: usize,
    win: &'w mut [MaybeUninit<u32>; WINDOW],
) -> &'w [u32] {
    let sx = g.sx.max(1);
    let in_plane = g.ih * g.iw;
    // Layout::new checked that the planes fit.
    let used = (l.pairs * sx * l.plane).min(WINDOW);
    let win = win.get_mut(..used).unwrap_or_default();
    // Zero first (the padding, the slack, a missing partner), then the inputs over it, row
    // segment by row segment: contiguous runs the compiler vectorises.
    win.iter_mut().for_each(|d| {
        d.write(0);
    });
    // SAFETY: every value of `win` was written just above.
    let win = unsafe { &mut *(win as *mut [MaybeUninit<u32>] as *mut [u32]) };
    let top = oy0 * g.sy.max(1);
    // Window rows whose padded row is an input row: `y0..y1`.
    let y0 = g.pt.saturating_sub(top).min(l.height);
    let y1 = (g.ih + g.pt).saturating_sub(top).clamp(y0, l.height);
    if y0 == y1 {
        // A band of padding only (its first row can lie above the input: no input row).
        return win;
    }
    let iy0 = top + y0 - g.pt;
    for (k, plane) in win.chunks_exact_mut(l.plane).enumerate() {
        let (j, phase) = (k / sx, k % sx);
        let rows = plane
            .get_mut(y0 * l.width..y1 * l.width)
            .unwrap_or_default();
        // (channel, column offset, half) of the two halves of each pair.
        let halves = if l.gi == 1 {
            [(0, 0, 0), (0, g.dx, 16)]
        } else {
            [(2 * j, 0, 0), (2 * j + 1, 0, 16)]
        };
        for (c, dx, shift) in halves {
            if c >= l.gi {
                continue;
            }
            let put = |d: &mut u32, v: &i8| *d |= u32::from((i32::from(*v) - zp) as u16) << shift;
            let src = planes
                .get(c * in_plane + iy0 * g.iw..c * in_plane + (iy0 + y1 - y0) * g.iw)
                .unwrap_or(&[]);
            // A row that is the input row itself (no padding, no phases): the band's rows
            // are one contiguous run.
            if sx == 1 && dx == 0 && g.pl == 0 && l.width == g.iw {
                rows.iter_mut().zip(src).for_each(|(d, v)| put(d, v));
                continue;
            }
            // Window column x reads padded column `x * sx + phase + dx`, input column that
            // less `pl`: the x from `first` on, `count` of them, lie in [0, iw).
            let first = (g.pl + sx - 1).saturating_sub(phase + dx) / sx;
            let ix0 = (first * sx + phase + dx).saturating_sub(g.pl);
            let count =
                g.iw.saturating_sub(ix0)
                    .div_ceil(sx)
                    .min(l.width.saturating_sub(first));
            for (dst, src) in rows.chunks_exact_mut(l.width).zip(src.chunks_exact(g.iw)) {
                let dst = dst.get_mut(first..first + count).unwrap_or_default();
                if sx == 1 {
                    let src = src.get(ix0..ix0 + count).unwrap_or(&[]);
                    dst.iter_mut().zip(src).for_each(|(d, v)| put(d, v));
                } else {
                    let src = src.get(ix0..).unwrap_or(&[]).iter().step_by(sx);
                    dst.iter_mut().zip(src).for_each(|(d, v)| put(d, v));
                }
            }
        }
    }
    win
}

/// A block's weights as [`Layout::term`]'s pairs, `[term][filter]`, each `(w_lo, w_hi)`
/// packed as the window's pairs are (zero for a missing partner), read from
/// [`crate::format::pack_filters_i8`]'s order.
fn pair_weights<'w, const C: usize>(
    g: &ConvGeom,
    l: &Layout,
    block: &[i8],
    out: &'w mut [MaybeUninit<i32>; WEIGHTS],
) -> &'w [i32] {
    let gi = l.gi;
    let paired = if C == I8_BLOCK { gi & !1 } else { 0 };
    // Filter f's weight at tap `tap`, input `i`.
    let weight = |tap: usize, i: usize, f: usize| -> i32 {
        let at = if i < paired {
            tap * gi * C + (i / 2) * 8 + (f / 2) * 4 + (i % 2) * 2 + f % 2
        } else {
            tap * gi * C + i * C + f
        };
        block.get(at).map_or(0, |&v| i32::from(v))
    };
    filled(out, l.terms * C, |k| {
        let (f, (ky, kx, j)) = (k % C, l.tap(g, k / C));
        let tap = ky * g.kw + kx;
        let (lo, hi) = if gi == 1 {
            // Kernel columns kx and kx + 1 (none past the last).
            let hi = if kx + 1 < g.kw {
                weight(tap + 1, 0, f)
            } else {
                0
            };
            (weight(tap, 0, f), hi)
        } else {
            // Channels 2j and 2j + 1 (none past the last).
            let hi = if 2 * j + 1 < gi {
                weight(tap, 2 * j + 1, f)
            } else {
                0
            };
            (weight(tap, 2 * j, f), hi)
        };
        pair(lo, hi) as i32
    })
}

/// Every tile of a block of `C` filters, the first being output channel `f0`, over the band
/// of `rows.1` output rows from `rows.0`: along the window's rows (one run over all of them
/// at row stride 1, else one per output row).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles<const C: usize>(
    g: &ConvGeom,
    l: &Layout,
    win: &[u32],
    terms: &[u32],
    weights: &[i32],
    q: &Requant<'_>,
    f0: usize,
    (oy0, band): (usize, usize),
    out: &mut [i8],
) {
    let sy = g.sy.max(1);
    let runs = if sy == 1 { 1 } else { band };
    let run = if sy == 1 {
        (band.max(1) - 1) * l.width + g.ow
    } else {
        g.ow
    };
    let requant = Lanes::<C>::new(q, f0);
    for r in 0..runs {
        let start = r * sy * l.width;
        let mut s = 0;
        while s < run {
            // The output index of each position of the tile; usize::MAX past a row's end.
            // The first position's row and column, then one column at a time (no division
            // per position).
            let (mut oy, mut ox) = if sy == 1 {
                (oy0 + s / l.width, s % l.width)
            } else {
                (oy0 + r, s)
            };
            let mut targets = [usize::MAX; TILE];
            for (k, t) in targets.iter_mut().enumerate() {
                if s + k < run && ox < g.ow {
                    *t = oy * g.ow + ox;
                }
                ox += 1;
                if sy == 1 && ox == l.width {
                    (oy, ox) = (oy + 1, 0);
                }
            }
            // SAFETY: AVX2, as this function's.
            let acc = unsafe { tile::<C>(win, terms, weights, start + s) };
            // SAFETY: as above.
            unsafe { requant.store(&acc, &targets, g.oh * g.ow, out) };
            s += TILE;
        }
    }
}

/// The accumulators `[filter][vector]` of 16 consecutive window positions from `s`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile<const C: usize>(
    win: &[u32],
    terms: &[u32],
    weights: &[i32],
    s: usize,
) -> [[__m256i; 2]; C] {
    let mut acc = [[_mm256_setzero_si256(); 2]; C];
    for (t, &off) in terms.iter().enumerate() {
        let off = off as usize;
        let (Some(x), Some(ws)) = (
            win.get(off + s..off + s + TILE),
            weights.get(t * C..t * C + C),
        ) else {
            continue;
        };
        // SAFETY: x holds 16 pairs (64 bytes), read unaligned.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_si256(x.as_ptr().add(8).cast()),
            )
        };
        for (a, &w) in acc.iter_mut().zip(ws) {
            let w = _mm256_set1_epi32(w);
            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x0, w));
            a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x1, w));
        }
    }
    acc
}

/// TFLite's per-channel requantization of a block's `C` filters, 8 lanes at a time.
struct Lanes<const C: usize> {
    /// Per filter: bias, multiplier, left shift, right shift.
    filters: [(i32, i32, i32, i32); C],
    output_zp: i32,
    act_min: i32,
    act_max: i32,
}

impl<const C: usize> Lanes<C> {
    fn new(q: &Requant<'_>, f0: usize) -> Lanes<C> {
        let filters = core::array::from_fn(|o| {
            let f = f0 + o;
            let (bias, m, s) = (
                q.bias.get(f).copied().unwrap_or(0),
                q.multiplier.get(f).copied().unwrap_or(0),
                q.shift.get(f).map_or(0, |&s| i32::from(s).clamp(-31, 31)),
            );
            (bias, m, s.max(0), (-s).max(0))
        });
        Lanes {
            filters,
            output_zp: q.output_zp,
            act_min: q.act_min,
            act_max: q.act_max,
        }
    }

    /// Requantize a tile and write the positions that have a target into the block's output
    /// planes (`plane` apart).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store(
        &self,
        acc: &[[__m256i; 2]; C],
        targets: &[usize; TILE],
        plane: usize,
        out: &mut [i8],
    ) {
        for (o, (a, &(bias, m, left, right))) in acc.iter().zip(&self.filters).enumerate() {
            for (v, targets) in a.iter().zip(targets.chunks_exact(8)) {
                let x = _mm256_add_epi32(*v, _mm256_set1_epi32(bias));
                // SAFETY: AVX2, as this function's.
                let y = unsafe { requantize(x, m, left, right) };
                let y = _mm256_add_epi32(y, _mm256_set1_epi32(self.output_zp));
                let y = _mm256_min_epi32(
                    _mm256_max_epi32(y, _mm256_set1_epi32(self.act_min)),
                    _mm256_set1_epi32(self.act_max),
                );
                // SAFETY: AVX2, as this function's.
                let lanes = unsafe { lanes(y) };
                for (&t, &v) in targets.iter().zip(&lanes).filter(|(&t, _)| t < plane) {
                    if let Some(d) = out.get_mut(o * plane + t) {
                        *d = v as i8;
                    }
                }
            }
        }
    }
}

/// [`crate::quant::multiply_by_quantized_multiplier`] on 8 lanes, for a multiplier in
/// `[2^30, 2^31)` or 0 (validated) and its shift split into `left`, `right` in `[0, 31]`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn requantize(x: __m256i, m: i32, left: i32, right: i32) -> __m256i {
    let x = _mm256_sll_epi32(x, _mm_cvtsi32_si128(left));
    // Saturating rounding doubling high multiply: (x m + 2^30) >> 31 in 64 bits, even lanes
    // then odd ones; the multiplier is never i32::MIN, so it never saturates. Bits 31..62 of
    // the sum are the result: a logical shift gives them as an arithmetic one would.
    let (mv, nudge) = (_mm256_set1_epi32(m), _mm256_set1_epi64x(1 << 30));
    let even = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(x, mv), nudge), 31);
    let odd = _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(x, 32), mv), nudge);
    let odd = _mm256_slli_epi64(_mm256_srli_epi64(odd, 31), 32);
    let high = _mm256_blend_epi32(even, odd, 0b1010_1010);
    // Rounding divide by 2^right, ties away from zero.
    let mask = _mm256_set1_epi32(((1u32 << right) - 1) as i32);
    let remainder = _mm256_and_si256(high, mask);
    let negative = _mm256_cmpgt_epi32(_mm256_setzero_si256(), high);
    let threshold = _mm256_sub_epi32(_mm256_srai_epi32(mask, 1), negative);
    let shifted = _mm256_sra_epi32(high, _mm_cvtsi32_si128(right));
    _mm256_sub_epi32(shifted, _mm256_cmpgt_epi32(remainder, threshold))
}

/// A dense layer (a 1x1 convolution over one position) of `k` inputs and `units` filters:
/// here the pairs run along the inputs. The inputs, less the zero point, are paired once
/// (`(x[2j], x[2j+1])`), and kept again four times over for the blocks of 4: each 8-byte
/// group of a block's weights ([`crate::format::pack_filters_i8`]: filters 0 and 1, then 2
/// and 3, at inputs 2j and 2j + 1) is sign-extended and reordered into each filter's pair,
/// and one `vpmaddwd` takes two groups (16 MACs). A single filter's weights are its plain
/// row: 8 pairs a `vpmaddwd`.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
unsafe fn dense(k: usize, units: usize, x: &[i8], w: &[i8], q: &Requant<'_>, out: &mut [i8]) {
    let pairs = (k / 2).min(DENSE_PAIRS);
    let zp = q.input_zp;
    let value = |i: usize| x.get(i).map_or(0, |&v| i32::from(v) - zp);
    let mut plain = [MaybeUninit::<u32>::uninit(); DENSE_PAIRS];
    let plain = filled(&mut plain, pairs, |i| pair(value(2 * i), value(2 * i + 1)));
    let mut fours = [MaybeUninit::<[u32; 4]>::uninit(); DENSE_PAIRS];
    let fours = filled(&mut fours, pairs, |i| {
        [plain.get(i).copied().unwrap_or(0); 4]
    });
    let odd = if k % 2 == 1 { value(k - 1) } else { 0 };
    // Within each 128-bit lane, 16-bit values 0, 2, 1, 3, 4, 6, 5, 7: filter by filter.
    let by_filter = _mm256_setr_epi8(
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15, 0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13,
        10, 11, 14, 15,
    );
    let mut f0 = 0;
    while f0 < units {
        let c = i8_block_len(units - f0);
        let block = w.get(f0 * k..(f0 + c) * k).unwrap_or(&[]);
        let mut acc = [0i32; I8_BLOCK];
        let mut sum = _mm256_setzero_si256();
        let mut j = 0;
        if c == I8_BLOCK {
            while j + 2 <= pairs {
                // SAFETY: AVX2, as this function's.
                let Some((ws, xs)) =
                    (unsafe { operands(block.get(8 * j..8 * j + 16), fours.get(j..j + 2)) })
                else {
                    break;
                };
                let ws = _mm256_shuffle_epi8(ws, by_filter);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(ws, xs));
                j += 2;
            }
            // SAFETY: AVX2, as this function's.
            let lanes = unsafe { lanes(sum) };
            let (low, high) = lanes.split_at(I8_BLOCK);
            for (f, (a, (&l, &h))) in acc.iter_mut().zip(low.iter().zip(high)).enumerate() {
                *a = l.wrapping_add(h);
                // The last pair if their count is odd, then an odd last input.
                let at = |i: usize| block.get(i).map_or(0, |&v| i32::from(v));
                for j in j..pairs {
                    let (lo, hi) = (8 * j + (f / 2) * 4 + f % 2, 8 * j + (f / 2) * 4 + 2 + f % 2);
                    *a = a.wrapping_add(at(lo) * value(2 * j) + at(hi) * value(2 * j + 1));
                }
                *a = a.wrapping_add(at(8 * pairs + f) * odd);
            }
        } else {
            while j + 8 <= pairs {
                // SAFETY: AVX2, as this function's.
                let Some((ws, xs)) =
                    (unsafe { operands(block.get(2 * j..2 * j + 16), plain.get(j..j + 8)) })
                else {
                    break;
                };
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(ws, xs));
                j += 8;
            }
            // SAFETY: AVX2, as this function's.
            let lanes = unsafe { lanes(sum) };
            let mut a = lanes.iter().fold(0i32, |s, &v| s.wrapping_add(v));
            for (i, &wv) in block.iter().enumerate().skip(2 * j) {
                a = a.wrapping_add(i32::from(wv) * value(i));
            }
            acc[0] = a;
        }
        for (o, &a) in acc.iter().enumerate().take(c) {
            if let (Some(requant), Some(d)) = (q.channel(f0 + o), out.get_mut(f0 + o)) {
                *d = requant(a);
            }
        }
        f0 += c;
    }
}

/// 16 weights sign-extended to 16 bits, and the 32 bytes of pairs beside them; `None` if
/// either slice is missing or short.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn operands<T>(ws: Option<&[i8]>, xs: Option<&[T]>) -> Option<(__m256i, __m256i)> {
    let (ws, xs) = (ws?, xs?);
    if ws.len() < 16 || core::mem::size_of_val(xs) < 32 {
        return None;
    }
    // SAFETY: ws holds 16 bytes and xs 32, read unaligned.
    unsafe {
        Some((
            _mm256_cvtepi8_epi16(_mm_loadu_si128(ws.as_ptr().cast())),
            _mm256_loadu_si256(xs.as_ptr().cast()),
        ))
    }
}

/// The 8 lanes of a vector.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn lanes(v: __m256i) -> [i32; 8] {
    let mut out = [0i32; 8];
    // SAFETY: out is 32 bytes.
    unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::multiply_by_quantized_multiplier;

    /// The 8-lane requantization gives the scalar one's values, for every shift the format
    /// allows (left shifts included, which the layer tests' small multipliers never reach)
    /// and accumulators up to the extremes of i32.
    #[test]
    fn lanes_requantize_as_the_scalar_arithmetic_does() {
        if !crate::kernels::x86::has_avx2() {
            return;
        }
        let mut seed = 0x9E37_79B9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        let mut checked = 0;
        for shift in -31..=31 {
            for _ in 0..64 {
                let m = (1 << 30) + (next() >> 2) as i32;
                let xs: [i32; 8] = core::array::from_fn(|k| match k {
                    0 => i32::MIN,
                    1 => i32::MAX,
                    2 => 0,
                    3 => -1,
                    _ => (next() as i32) >> (next() % 31),
                });
                // SAFETY: the CPU has AVX2; xs is 32 bytes.
                let got = unsafe {
                    let x = _mm256_loadu_si256(xs.as_ptr().cast());
                    lanes(requantize(x, m, shift.max(0), (-shift).max(0)))
                };
                for (&x, &y) in xs.iter().zip(&got) {
                    assert_eq!(
                        y,
                        multiply_by_quantized_multiplier(x, m, shift),
                        "{x} {m} {shift}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 63 * 64 * 8);
    }
}
