//! Max, average and global average pooling over NCHW, f32 and int8.

use core::num::NonZeroU32;

/// Geometry of one pooling, proven consistent by validation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolGeom {
    pub ih: usize,
    pub iw: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sy: usize,
    pub sx: usize,
    pub pt: usize,
    pub pl: usize,
}

impl PoolGeom {
    /// One window over a whole `h` x `w` plane: a global average (the tests compare the
    /// global averages' own loops with it).
    #[cfg(test)]
    pub(crate) fn plane(h: usize, w: usize) -> PoolGeom {
        PoolGeom {
            ih: h,
            iw: w,
            oh: 1,
            ow: 1,
            kh: h,
            kw: w,
            sy: 1,
            sx: 1,
            pt: 0,
            pl: 0,
        }
    }
}

/// Window rows (or columns) of output index `o`, clipped to the input.
#[inline(always)]
fn window(o: usize, stride: usize, pad: usize, k: usize, size: usize) -> core::ops::Range<usize> {
    let start = o * stride;
    start.saturating_sub(pad)..(start + k).saturating_sub(pad).min(size)
}

/// Max (`average == None`) or average pooling (`Some(count_include_pad)`) over NCHW, of f32 or
/// (`int8`) int8 values, on their bytes: one function for both (the flash is shared), with
/// an inner loop per dtype and kind. An int8 maximum and sum are integers; an int8 average is
/// TFLite's reference one: the integer sum of the taps inside the input divided by their
/// count, rounded half away from zero (input and output share their quantization; validation
/// refuses `count_include_pad` for int8).
pub(crate) fn pool(g: &PoolGeom, average: Option<bool>, int8: bool, input: &[u8], out: &mut [u8]) {
    let size = if int8 { 1 } else { 4 };
    let (in_plane, out_plane, out_row) = (g.ih * g.iw * size, g.oh * g.ow * size, g.ow * size);
    // Every chunk length checked here, where it costs nothing: no panicking path below.
    if in_plane == 0 || out_plane == 0 || out_row == 0 {
        return;
    }
    let full = (g.kh * g.kw) as f32;
    for (plane, oplane) in input
        .chunks_exact(in_plane)
        .zip(out.chunks_exact_mut(out_plane))
    {
        for (oy, orow) in oplane.chunks_exact_mut(out_row).enumerate() {
            let ys = window(oy, g.sy, g.pt, g.kh, g.ih);
            for (ox, o) in orow.chunks_exact_mut(size).enumerate() {
                let xs = window(ox, g.sx, g.pl, g.kw, g.iw);
                // Each row's taps: bytes `x0..x0 + n` past the row's start (none where the
                // window lies past the input's columns).
                let x0 = xs.start.min(xs.end);
                let (x0, n) = (x0 * size, (xs.end - x0) * size);
                let mut acc = if average.is_some() {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                // The int8 sum and maximum, in integers.
                let (mut sum, mut max) = (0i32, i32::MIN);
                for y in ys.clone() {
                    let at = y * g.iw * size + x0;
                    // SAFETY: y < ih and x0 + n <= iw * size (`window` clips both to the
                    // input), so the row's taps end within ih * iw * size = plane.len() bytes.
                    let row = unsafe { plane.get_unchecked(at..at + n) };
                    // A loop per dtype and kind, chosen per row: tested per value they cost
                    // about 16 instructions a tap. Not `f32::max`: an out-of-line `fmaxf` call
                    // on Cortex-M; the comparison skips NaN the same way.
                    if int8 {
                        for &q in row {
                            let q = i32::from(q as i8);
                            sum = sum.wrapping_add(q);
                            max = max.max(q);
                        }
                    } else if average.is_some() {
                        for v in row.chunks_exact(4) {
                            if let &[a, b, c, d] = v {
                                acc += f32::from_le_bytes([a, b, c, d]);
                            }
                        }
                    } else {
                        for v in row.chunks_exact(4) {
                            if let &[a, b, c, d] = v {
                                let v = f32::from_le_bytes([a, b, c, d]);
                                if v > acc {
                                    acc = v;
                                }
                            }
                        }
                    }
                }
                let taps = ys.len() * xs.len();
                match o {
                    [q] => {
                        *q = if average.is_some() {
                            rounded_average(sum, taps)
                        } else {
                            max
                        } as i8 as u8;
                    }
                    _ => {
                        let v = match average {
                            None => acc,
                            Some(true) => acc / full,
                            Some(false) => acc / taps as f32,
                        };
                        if let Ok(o) = <&mut [u8; 4]>::try_from(o) {
                            *o = v.to_le_bytes();
                        }
                    }
                }
            }
        }
    }
}

/// TFLite's int8 average of `taps` values summing to `sum`: rounded half away from zero, on
/// the magnitude (an unsigned division by a non-zero count has no panicking path).
#[inline(never)]
fn rounded_average(sum: i32, taps: usize) -> i32 {
    let n = NonZeroU32::new(taps as u32).unwrap_or(NonZeroU32::MIN);
    let m = (sum.unsigned_abs().wrapping_add(n.get() / 2) / n) as i32;
    if sum > 0 {
        m
    } else {
        m.wrapping_neg()
    }
}

/// The int8 global average of each `plane`-long plane of `input` into `out`: [`pool`]'s
/// integer sum and rounding, without its per-row windows.
pub(crate) fn global_average_i8(input: &[i8], out: &mut [i8], plane: usize) {
    for (x, o) in input.chunks_exact(plane.max(1)).zip(out) {
        let sum = x
            .iter()
            .fold(0i32, |acc, &v| acc.wrapping_add(i32::from(v)));
        *o = rounded_average(sum, plane) as i8;
    }
}

/// The f32 global average of each `plane`-long plane of `input` into `out`: [`pool`]'s sum,
/// in its order and so to its bits, without its per-value window, dtype and kind tests (about
/// 11 instructions a value on a Cortex-M, 3 here).
pub(crate) fn global_average(input: &[f32], out: &mut [f32], plane: usize) {
    let full = plane as f32;
    for (x, o) in input.chunks_exact(plane.max(1)).zip(out) {
        *o = x.iter().fold(0.0, |acc, &v| acc + v) / full;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The f32 global average is the general loop's average over the plane, bit for bit
    /// (sums that round differently in another order: values spread over many magnitudes).
    #[test]
    fn global_average_is_the_general_pool_bit_for_bit() {
        for (h, w, planes) in [(8, 8, 16), (4, 4, 64), (25, 5, 3), (1, 7, 2)] {
            let x: Vec<f32> = (0..h * w * planes)
                .map(|i| ((i * 7919 % 1013) as f32 - 500.0) * 1.37f32.powi((i % 23) as i32 - 11))
                .collect();
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut general = std::vec![0u8; planes * 4];
            pool(
                &PoolGeom::plane(h, w),
                Some(true),
                false,
                &bytes,
                &mut general,
            );
            let mut fast = std::vec![0f32; planes];
            global_average(&x, &mut fast, h * w);
            let fast: Vec<u8> = fast.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(fast, general, "{h}x{w}");
        }
    }

    /// The int8 global average is the general loop's integer average over the plane, with
    /// its rounding (half away from zero, both signs), at the extremes too.
    #[test]
    fn int8_global_average_is_the_general_pool() {
        for (h, w, planes) in [(4, 4, 32), (25, 5, 3), (1, 2, 4), (3, 1, 2)] {
            let mut x: Vec<i8> = (0..h * w * planes)
                .map(|i| ((i * 7919 + 13) % 256) as u8 as i8)
                .collect();
            x[..h * w].fill(-128);
            x[h * w..2 * h * w].fill(127);
            let mut general = std::vec![0i8; planes];
            qpool(&PoolGeom::plane(h, w), true, &x, &mut general);
            let mut fast = std::vec![0i8; planes];
            global_average_i8(&x, &mut fast, h * w);
            assert_eq!(fast, general, "{h}x{w}");
            assert_eq!(
                fast,
                reference(&PoolGeom::plane(h, w), true, &x, planes),
                "{h}x{w}"
            );
        }
    }

    /// The int8 pooling of `x` into `out`, through the byte kernel.
    fn qpool(g: &PoolGeom, average: bool, x: &[i8], out: &mut [i8]) {
        let x: Vec<u8> = x.iter().map(|&v| v as u8).collect();
        let mut o = std::vec![0u8; out.len()];
        pool(g, average.then_some(false), true, &x, &mut o);
        for (d, s) in out.iter_mut().zip(o) {
            *d = s as i8;
        }
    }

    /// TFLite's reference int8 pooling, tap by tap: in-bounds taps only.
    fn reference(g: &PoolGeom, average: bool, x: &[i8], planes: usize) -> Vec<i8> {
        let mut out = Vec::new();
        for c in 0..planes {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let (mut sum, mut count, mut max) = (0i32, 0i32, i8::MIN);
                    for ky in 0..g.kh {
                        for kx in 0..g.kw {
                            let iy = (oy * g.sy + ky) as isize - g.pt as isize;
                            let ix = (ox * g.sx + kx) as isize - g.pl as isize;
                            if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                                continue;
                            }
                            let v = x[(c * g.ih + iy as usize) * g.iw + ix as usize];
                            sum += i32::from(v);
                            count += 1;
                            max = max.max(v);
                        }
                    }
                    out.push(if average {
                        let q = if sum > 0 {
                            (sum + count / 2) / count
                        } else {
                            (sum - count / 2) / count
                        };
                        q as i8
                    } else {
                        max
                    });
                }
            }
        }
        out
    }

    #[test]
    fn int8_pooling_matches_the_reference() {
        let mut s: u32 = 12345;
        // (ih, iw), (kh, kw), (sy, sx), padding (top, left, bottom, right).
        for ((ih, iw), (kh, kw), (sy, sx), [pt, pl, pb, pr]) in [
            ((8, 8), (2, 2), (2, 2), [0, 0, 0, 0]),
            ((7, 9), (3, 3), (2, 2), [1, 1, 1, 1]),
            ((5, 6), (3, 2), (1, 2), [2, 0, 0, 1]),
            ((4, 4), (4, 4), (1, 1), [0, 0, 0, 0]), // global
        ] {
            let g = PoolGeom {
                ih,
                iw,
                oh: (ih + pt + pb - kh) / sy + 1,
                ow: (iw + pl + pr - kw) / sx + 1,
                kh,
                kw,
                sy,
                sx,
                pt,
                pl,
            };
            let x: Vec<i8> = (0..3 * ih * iw)
                .map(|_| {
                    s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (s >> 16) as i8
                })
                .collect();
            for average in [false, true] {
                let mut out = std::vec![0i8; 3 * g.oh * g.ow];
                qpool(&g, average, &x, &mut out);
                assert_eq!(out, reference(&g, average, &x, 3), "{g:?} {average}");
            }
        }
        // Rounding half away from zero on both sides: (1 + 2) / 2 = 1.5 -> 2, (-1 - 2) / 2
        // = -1.5 -> -2.
        let g = PoolGeom::plane(1, 2);
        let mut o = [0i8];
        qpool(&g, true, &[1, 2], &mut o);
        assert_eq!(o, [2]);
        qpool(&g, true, &[-1, -2], &mut o);
        assert_eq!(o, [-2]);
    }
}
