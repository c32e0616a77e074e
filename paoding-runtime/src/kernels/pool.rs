//! Max, average and global average pooling over NCHW, f32 and int8.

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
    /// One window over a whole `h` x `w` plane: a global average.
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

/// Max (`average == None`) or average pooling (`Some(count_include_pad)`).
pub(crate) fn pool(g: &PoolGeom, average: Option<bool>, input: &[f32], out: &mut [f32]) {
    let (in_plane, out_plane) = (g.ih * g.iw, g.oh * g.ow);
    if in_plane == 0 || out_plane == 0 {
        return;
    }
    let full = (g.kh * g.kw) as f32;
    for (plane, oplane) in input
        .chunks_exact(in_plane)
        .zip(out.chunks_exact_mut(out_plane))
    {
        for (oy, orow) in oplane.chunks_exact_mut(g.ow).enumerate() {
            let ys = window(oy, g.sy, g.pt, g.kh, g.ih);
            for (ox, o) in orow.iter_mut().enumerate() {
                let xs = window(ox, g.sx, g.pl, g.kw, g.iw);
                let mut acc = if average.is_some() {
                    0.0
                } else {
                    f32::NEG_INFINITY
                };
                for y in ys.clone() {
                    let row = plane
                        .get(y * g.iw + xs.start..y * g.iw + xs.end)
                        .unwrap_or(&[]);
                    for &v in row {
                        // Not `f32::max`: an out-of-line `fmaxf` call on Cortex-M; the
                        // comparison skips NaN the same way. One loop for both kinds (less
                        // flash); the branch is predictable.
                        if average.is_some() {
                            acc += v;
                        } else if v > acc {
                            acc = v;
                        }
                    }
                }
                *o = match average {
                    None => acc,
                    Some(true) => acc / full,
                    Some(false) => acc / (ys.len() * xs.len()) as f32,
                };
            }
        }
    }
}

/// int8 max pooling, or average pooling (`average`) as TFLite's reference rounds it: the sum
/// of the taps inside the input divided by their count, rounded half away from zero. (Input
/// and output share a scale and zero point, so no requantization; a window always holds at
/// least one tap, validation saw to it.)
pub(crate) fn qpool(g: &PoolGeom, average: bool, input: &[i8], out: &mut [i8]) {
    let in_plane = g.ih * g.iw;
    let mut out = out.iter_mut();
    for plane in input.chunks(in_plane.max(1)) {
        for oy in 0..g.oh {
            let ys = window(oy, g.sy, g.pt, g.kh, g.ih);
            for ox in 0..g.ow {
                let xs = window(ox, g.sx, g.pl, g.kw, g.iw);
                let (mut sum, mut max) = (0i32, i32::from(i8::MIN));
                for y in ys.clone() {
                    for x in xs.clone() {
                        let v = plane.get(y * g.iw + x).map_or(0, |&v| i32::from(v));
                        sum = sum.wrapping_add(v);
                        max = max.max(v);
                    }
                }
                let count = (ys.len() * xs.len()).max(1) as i32;
                let half = if sum > 0 { count / 2 } else { -(count / 2) };
                if let Some(o) = out.next() {
                    // The average of int8 values is inside int8.
                    *o = if average {
                        sum.wrapping_add(half) / count
                    } else {
                        max
                    } as i8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

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
