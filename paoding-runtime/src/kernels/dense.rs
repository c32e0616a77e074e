//! Fully connected layers: one unrolled dot product per output neuron.

use crate::format::Act;

/// Dot product with four independent accumulators (hides FPU latency on in-order cores).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a4, ar) = a.as_chunks::<4>();
    let (b4, br) = b.as_chunks::<4>();
    let mut acc = [0.0f32; 4];
    for (x, y) in a4.iter().zip(b4) {
        acc[0] += x[0] * y[0];
        acc[1] += x[1] * y[1];
        acc[2] += x[2] * y[2];
        acc[3] += x[3] * y[3];
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `out[u] = act(dot(W[u], x) + b[u])`; `w` is `[out.len()][x.len()]`.
pub(crate) fn dense(x: &[f32], w: &[f32], b: &[f32], act: Act, out: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    for ((o, row), &bias) in out.iter_mut().zip(w.chunks_exact(x.len())).zip(b) {
        *o = dot(row, x) + bias;
    }
    act.apply_slice(out);
}
