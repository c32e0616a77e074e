//! How closely a pruned model follows the original: top-1 agreement and KL divergence of the
//! softmax outputs for classifiers, relative L2 error for every model, accuracy with labels.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Agreement between two models' outputs on the same inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Samples compared.
    pub samples: usize,
    /// Fraction of samples whose top-1 class is the same (classifiers).
    pub agreement: f64,
    /// 95 % Wilson interval of the agreement over these samples
    /// ([`crate::estimate::wilson`]): how far the figure may be from the same measurement on
    /// many more samples of the same kind.
    pub agreement_interval: (f64, f64),
    /// Mean KL(original ‖ pruned) of the softmax outputs, in nats.
    pub mean_kl: f64,
    /// Largest KL over the samples.
    pub max_kl: f64,
    /// ‖pruned − original‖ / ‖original‖ over all outputs.
    pub relative_l2: f64,
    /// Signal-to-noise ratio of the pruned outputs, `-20 log10(relative_l2)` dB (capped at
    /// 200 dB for identical outputs).
    pub snr_db: f64,
}

/// Compare outputs sample by sample (`outputs_per_sample` values each). Outputs that are not
/// already probabilities go through a softmax before the KL.
///
/// ```
/// use paoding_core::fidelity::compare;
/// let f = compare(&[2.0, 0.0, 0.0, 1.0], &[1.5, 0.0, 0.0, 1.2], 2);
/// assert_eq!(f.agreement, 1.0);
/// assert!(f.mean_kl > 0.0 && f.relative_l2 > 0.0);
/// ```
pub fn compare(original: &[f32], pruned: &[f32], outputs_per_sample: usize) -> Fidelity {
    let n = outputs_per_sample.max(1);
    let samples = original.len() / n;
    let probabilities = is_probability(original, n);
    let (mut agree, mut kl_sum, mut kl_max) = (0usize, 0.0f64, 0.0f64);
    for (a, b) in original.chunks_exact(n).zip(pruned.chunks_exact(n)) {
        agree += usize::from(argmax(a) == argmax(b));
        let (p, q) = if probabilities {
            (to_f64(a), to_f64(b))
        } else {
            (softmax(a), softmax(b))
        };
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(p, _)| **p > 0.0)
            .map(|(p, q)| p * libm::log(p / q.max(1e-30)))
            .sum();
        kl_sum += kl.max(0.0);
        kl_max = kl_max.max(kl);
    }
    let diff: f64 = original
        .iter()
        .zip(pruned)
        .map(|(a, b)| ((a - b) as f64) * ((a - b) as f64))
        .sum();
    let norm: f64 = original.iter().map(|a| (*a as f64) * (*a as f64)).sum();
    let relative_l2 = libm::sqrt(diff / norm.max(1e-30));
    Fidelity {
        samples,
        agreement: agree as f64 / samples.max(1) as f64,
        agreement_interval: crate::estimate::wilson(agree, samples),
        mean_kl: kl_sum / samples.max(1) as f64,
        max_kl: kl_max,
        relative_l2,
        snr_db: (-20.0 * libm::log10(relative_l2.max(1e-10))).min(200.0),
    }
}

/// Fraction of samples whose top-1 output is the label.
pub fn accuracy(outputs: &[f32], outputs_per_sample: usize, labels: &[usize]) -> f64 {
    let n = outputs_per_sample.max(1);
    let correct = outputs
        .chunks_exact(n)
        .zip(labels)
        .filter(|(o, &l)| argmax(o) == l)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

fn is_probability(outputs: &[f32], n: usize) -> bool {
    outputs.chunks_exact(n).all(|row| {
        let sum: f32 = row.iter().sum();
        row.iter().all(|&v| v >= 0.0) && (sum - 1.0).abs() < 1e-3
    })
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = v.iter().map(|&x| libm::exp(x as f64 - max)).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}
