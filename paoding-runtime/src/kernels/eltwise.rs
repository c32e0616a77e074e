//! Element-wise operators, all in place on the output (which the executor first fills with
//! the first input unless the plan already put the output over it): batch norm, Add, Softmax.
//! Stand-alone activations use [`crate::format::Act::apply_slice`].

/// `x = x * scale[c] + shift[c]` with `inner` elements per channel.
pub(crate) fn batch_norm(x: &mut [f32], inner: usize, scale: &[f32], shift: &[f32]) {
    if inner == 0 {
        return;
    }
    for ((chunk, &s), &t) in x.chunks_exact_mut(inner).zip(scale).zip(shift) {
        for v in chunk {
            *v = *v * s + t;
        }
    }
}

/// `x += other`.
pub(crate) fn add(x: &mut [f32], other: &[f32]) {
    for (v, &o) in x.iter_mut().zip(other) {
        *v += o;
    }
}

/// Softmax along an axis of `len` elements spaced `inner` apart, in `outer` blocks.
pub(crate) fn softmax(x: &mut [f32], len: usize, inner: usize) {
    let block = len * inner;
    if block == 0 {
        return;
    }
    for b in x.chunks_exact_mut(block) {
        for i in 0..inner {
            // Element k of this softmax lies at i + k * inner.
            let mut max = f32::NEG_INFINITY;
            for k in 0..len {
                if let Some(&v) = b.get(i + k * inner) {
                    if v > max {
                        max = v;
                    }
                }
            }
            let mut sum = 0.0;
            for k in 0..len {
                if let Some(v) = b.get_mut(i + k * inner) {
                    *v = super::expf(*v - max);
                    sum += *v;
                }
            }
            for k in 0..len {
                if let Some(v) = b.get_mut(i + k * inner) {
                    *v /= sum;
                }
            }
        }
    }
}
