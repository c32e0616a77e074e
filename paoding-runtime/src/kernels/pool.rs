//! Max, average and global average pooling over NCHW.

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
                    if average.is_some() {
                        for &v in row {
                            acc += v;
                        }
                    } else {
                        for &v in row {
                            // Not `f32::max`: an out-of-line `fmaxf` call on Cortex-M; the
                            // comparison skips NaN the same way.
                            if v > acc {
                                acc = v;
                            }
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
