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
    let whole_plane = g.kh == g.ih && g.kw == g.iw && g.pt == 0 && g.pl == 0 && out_plane == 1;
    if average.is_some() && whole_plane {
        // A global average (one window, exactly the plane): a plain sum, in the order the
        // window loop below would add.
        for (plane, o) in input.chunks_exact(in_plane).zip(out.iter_mut()) {
            *o = plane.iter().sum::<f32>() / full;
        }
        return;
    }
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
