//! Activation ranges without data: run the f32 model on the probes the refit already uses
//! (synthesized, or the user's) and estimate each tensor's range from the values it takes.
//!
//! Min/max lets one outlier stretch the scale for every other value; the estimators that
//! clip ([`RangeEstimator::Percentile`], [`RangeEstimator::Mse`]) trade a little clipping
//! error for finer steps everywhere else. Which wins is measured, not assumed
//! (`cargo bench -p paoding-tests --bench int8`).

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ir::{Graph, ValueId};
use crate::probes::Probes;
use crate::quant::params::QParams;

/// How a tensor's range is estimated from the values it takes on the probes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RangeEstimator {
    /// The smallest and largest value seen.
    MinMax,
    /// The values at these percentiles from each end (e.g. 0.01: the 0.01 % and 99.99 %
    /// quantiles).
    Percentile {
        /// Percent cut from each end.
        cut: f32,
    },
    /// The range, among min/max shrunk by factors down to 0.3, whose quantization gives the
    /// observed values the least mean squared error (clipping included).
    Mse,
}

/// Most values of one tensor kept for estimation: a deterministic stride through all of them.
pub const SAMPLE: usize = 1 << 16;

/// What a tensor took on the probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// At most [`SAMPLE`] of the values, evenly strided.
    pub sample: Vec<f32>,
}

/// Run `g` on `probes` and observe the values `which` (batched, a chunk of probes at a time).
pub fn observe(g: &Graph, probes: &Probes, which: &[ValueId]) -> Result<Vec<Observed>> {
    let n = probes.count();
    let lens: Vec<usize> = which.iter().map(|&v| g.values[v].len() * n).collect();
    let strides: Vec<usize> = lens.iter().map(|&l| l.div_ceil(SAMPLE).max(1)).collect();
    let mut out: Vec<Observed> = which
        .iter()
        .map(|_| Observed {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            sample: Vec::new(),
        })
        .collect();
    // Position of each tensor's values counted over all chunks, so the stride is global.
    let mut seen = alloc::vec![0usize; which.len()];
    const CHUNK: usize = 64;
    let sample_len = probes.sample_len;
    for chunk in probes.data.chunks(sample_len * CHUNK) {
        let batch = chunk.len() / sample_len;
        let values = crate::grad::forward_batch(g, chunk, batch)?;
        for (k, &v) in which.iter().enumerate() {
            let o = &mut out[k];
            for &x in &values[v] {
                o.min = o.min.min(x);
                o.max = o.max.max(x);
                if seen[k].is_multiple_of(strides[k]) {
                    o.sample.push(x);
                }
                seen[k] += 1;
            }
        }
    }
    Ok(out)
}

impl RangeEstimator {
    /// The range this estimator gives for a tensor.
    ///
    /// ```
    /// use paoding_core::quant::calibrate::{quantization_mse, Observed, RangeEstimator};
    /// use paoding_core::quant::params::QParams;
    /// // One outlier among values in [0, 1].
    /// let mut sample: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
    /// sample.push(50.0);
    /// let o = Observed { min: 0.0, max: 50.0, sample };
    /// assert_eq!(RangeEstimator::MinMax.range(&o), (0.0, 50.0));
    /// assert!(RangeEstimator::Percentile { cut: 0.5 }.range(&o).1 < 1.0);
    /// let mse = |(lo, hi)| quantization_mse(&o.sample, QParams::from_range(lo, hi));
    /// assert!(mse(RangeEstimator::Mse.range(&o)) <= mse(RangeEstimator::MinMax.range(&o)));
    /// ```
    pub fn range(&self, o: &Observed) -> (f32, f32) {
        if o.sample.is_empty() || o.min > o.max {
            return (0.0, 0.0);
        }
        match *self {
            RangeEstimator::MinMax => (o.min, o.max),
            RangeEstimator::Percentile { cut } => {
                let mut s = o.sample.clone();
                s.sort_by(|a, b| a.total_cmp(b));
                let at = |p: f32| {
                    let i = ((p / 100.0) * (s.len() - 1) as f32) as usize;
                    s[i.min(s.len() - 1)]
                };
                (at(cut), at(100.0 - cut))
            }
            RangeEstimator::Mse => {
                let mut best = (o.min, o.max);
                let mut best_err = f64::INFINITY;
                for step in 0..=14 {
                    let f = 1.0 - 0.05 * step as f32;
                    let (lo, hi) = (o.min * f, o.max * f);
                    let err = quantization_mse(&o.sample, QParams::from_range(lo, hi));
                    if err < best_err {
                        best_err = err;
                        best = (lo, hi);
                    }
                }
                best
            }
        }
    }
}

/// Mean squared error of quantizing `values` with `p` (clipping included).
pub fn quantization_mse(values: &[f32], p: QParams) -> f64 {
    let sum: f64 = values
        .iter()
        .map(|&x| {
            let d = (x - p.dequantize(p.quantize(x))) as f64;
            d * d
        })
        .sum();
    sum / values.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, Dense, Op};

    #[test]
    fn observation_strides_through_every_chunk() {
        let mut g = Graph::new("x", alloc::vec![1, 2]);
        g.output = g
            .push(
                "fc",
                Op::Dense(Dense {
                    units: 1,
                    inputs: 2,
                    weights: alloc::vec![1.0, 1.0],
                    bias: alloc::vec![0.0],
                    activation: Activation::Identity,
                }),
                &[g.input],
            )
            .unwrap();
        let probes = Probes::from_batch((0..400).map(|i| i as f32).collect(), 2).unwrap();
        let o = observe(&g, &probes, &[g.output]).unwrap();
        // Outputs 2k + 2k + 1 = 4k + 1 for k in 0..200.
        assert_eq!((o[0].min, o[0].max), (1.0, 797.0));
        assert_eq!(o[0].sample.len(), 200);
    }

    #[test]
    fn mse_never_does_worse_than_min_max() {
        let sample: Vec<f32> = (0..2000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 3.0)
            .collect();
        let (min, max) = sample
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let o = Observed { min, max, sample };
        let mse = |r: (f32, f32)| quantization_mse(&o.sample, QParams::from_range(r.0, r.1));
        assert!(mse(RangeEstimator::Mse.range(&o)) <= mse(RangeEstimator::MinMax.range(&o)));
    }
}
