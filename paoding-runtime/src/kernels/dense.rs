//! Fully connected layers: four output neurons per pass over the input, each with eight
//! independent accumulator lanes (the input is loaded once for four rows; the lanes hide the
//! FPU's add latency and vectorise).

use crate::format::Act;

const LANES: usize = 8;

#[inline(always)]
fn fma8(a: &mut [f32; LANES], w: &[f32; LANES], x: &[f32; LANES]) {
    for ((av, wv), xv) in a.iter_mut().zip(w).zip(x) {
        *av += wv * xv;
    }
}

#[inline(always)]
fn reduce(a: &[f32; LANES]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

#[inline(always)]
fn tail(w: &[f32], x: &[f32]) -> f32 {
    let start = x.len() - x.len() % LANES;
    let (w, x) = (w.get(start..).unwrap_or(&[]), x.get(start..).unwrap_or(&[]));
    w.iter().zip(x).fold(0.0, |s, (a, b)| s + a * b)
}

/// Four dot products of the rows `w0..w3` with `x` (all of `x`'s length).
#[inline(always)]
fn dot4(w: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let [w0, w1, w2, w3] = w;
    let (x8, _) = x.as_chunks::<LANES>();
    let mut acc = [[0.0f32; LANES]; 4];
    let it = x8
        .iter()
        .zip(w0.as_chunks::<LANES>().0)
        .zip(w1.as_chunks::<LANES>().0)
        .zip(w2.as_chunks::<LANES>().0)
        .zip(w3.as_chunks::<LANES>().0);
    for ((((xc, a), b), c), d) in it {
        let [r0, r1, r2, r3] = &mut acc;
        fma8(r0, a, xc);
        fma8(r1, b, xc);
        fma8(r2, c, xc);
        fma8(r3, d, xc);
    }
    let mut out = [0.0f32; 4];
    for ((o, a), r) in out.iter_mut().zip(&acc).zip(w) {
        *o = reduce(a) + tail(r, x);
    }
    out
}

/// Dot product with eight independent accumulators.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (wc, xc) in a
        .as_chunks::<LANES>()
        .0
        .iter()
        .zip(b.as_chunks::<LANES>().0)
    {
        fma8(&mut acc, wc, xc);
    }
    reduce(&acc) + tail(a, b)
}

/// `out[u] = act(dot(W[u], x) + b[u])`; `w` is `[out.len()][x.len()]`.
pub(crate) fn dense(x: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    // Four rows per pass on hosts; one on microcontrollers (smaller code, few registers).
    let block = if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        4
    } else {
        0
    };
    let mut done = 0;
    if block == 4 {
        for ((o, wb), bb) in out
            .chunks_exact_mut(4)
            .zip(w.chunks_exact(4 * n))
            .zip(b.chunks_exact(4))
        {
            let mut rows: [&[f32]; 4] = [&[]; 4];
            for (r, src) in rows.iter_mut().zip(wb.chunks_exact(n)) {
                *r = src;
            }
            let s = dot4(rows, x);
            for ((o, s), bias) in o.iter_mut().zip(s).zip(bb) {
                *o = s + bias;
            }
            done += 4;
        }
    }
    let rows = w.get(done * n..).unwrap_or(&[]).chunks_exact(n);
    let outs = out.get_mut(done..).unwrap_or(&mut []);
    for ((o, row), &bias) in outs.iter_mut().zip(rows).zip(b.get(done..).unwrap_or(&[])) {
        *o = dot(row, x) + bias;
    }
    act.apply_slice(out);
}
