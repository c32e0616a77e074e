//! The data-free fidelity estimate: what kind of output a model has, the held-out check set
//! that stands in for real inputs, and whether that set says anything about the model.
//!
//! Without data, the only fidelity a user sees is the one paoding prints, so the check set it
//! is measured on must behave like real inputs would. What was measured on the digits
//! fixtures, against their 450 held-out test images (`cargo bench -p paoding-tests --bench
//! fidelity_estimate`, documented in the README):
//!
//! - Uniform noise is off by up to 24 points, in both directions.
//! - Probes inverted like the refit's (each stops as soon as its class reaches p = 0.99) sit
//!   just inside their class, made of starting noise plus the least evidence that tips it:
//!   a pruned model loses them far more easily than real inputs (14 points under on the
//!   depthwise CNN).
//! - Probes inverted deeper (p ≥ [`CHECK_STOP_CONFIDENCE`]) are clean prototypes that a
//!   pruned model keeps far more easily than real inputs (up to 25 points over).
//! - Real inputs are in between: class evidence plus variation the model must see through.
//!   Deep prototypes with seeded uniform noise added until the original model's mean
//!   confidence falls to [`CHECK_CONFIDENCE`] track real agreement within about 3 points on
//!   every fixture ([`add_calibrated_noise`]).
//! - Where the file kept BatchNorm running statistics, probes that match them are the data's
//!   own distribution as far as the model can tell, and are used as they are.
//!
//! ```
//! use paoding_core::estimate::{task, Task};
//! use paoding_core::ir::{Activation, Dense, Graph, Op};
//!
//! let mut g = Graph::new("x", vec![1, 4]);
//! g.output = g.push("fc", Op::Dense(Dense {
//!     units: 3, inputs: 4, weights: vec![0.1; 12], bias: vec![0.0; 3],
//!     activation: Activation::Identity,
//! }), &[g.input])?;
//! assert_eq!(task(&g), Task::Classifier { classes: 3 });
//! # Ok::<(), paoding_core::Error>(())
//! ```

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ir::{Graph, Op};
use crate::probes::{Probes, SplitMix64};

/// What a model's output is, which decides the figure that means something for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Task {
    /// Class scores `[1, C]`, `2 ≤ C ≤ 1000`: top-1 agreement, KL.
    Classifier {
        /// Number of classes.
        classes: usize,
    },
    /// The output reconstructs the input (same number of values, no final Softmax): relative
    /// L2 error and SNR of the reconstructions.
    Autoencoder,
    /// Any other output: relative L2 error and SNR.
    Regressor,
}

impl Task {
    /// Whether top-1 agreement means something.
    pub fn is_classifier(self) -> bool {
        matches!(self, Task::Classifier { .. })
    }
}

/// The task a model's shapes imply: an autoencoder when the output has as many values as the
/// input and no final Softmax (MLPerf Tiny's anomaly detector: 640 in, 640 out), else a
/// classifier when its logits are `[1, C]` with `2 ≤ C ≤ 1000`
/// ([`crate::synth::classes`]), else a regressor.
pub fn task(g: &Graph) -> Task {
    let softmax = g
        .producer(g.output)
        .is_some_and(|i| matches!(g.nodes[i].op, Op::Softmax { .. }));
    let (inputs, outputs) = (g.values[g.input].len(), g.values[g.output].len());
    if !softmax && inputs == outputs && outputs >= 2 {
        return Task::Autoencoder;
    }
    match crate::synth::classes(g) {
        Some(classes) => Task::Classifier { classes },
        None => Task::Regressor,
    }
}

/// Probability of its class at which a check-set probe stops: deeper than the refit's
/// [`crate::synth::STOP_CONFIDENCE`], so that the probes are clean class prototypes rather
/// than starting noise tipped just over a boundary. Measured against p = 1 (every probe runs
/// every step), 0.9999 tracks real agreement as well at 40–80 % of the time; 0.999 leaves
/// the MLP's probes noisy (up to 4 points under). Measured again once stalled probes stopped
/// ([`crate::synth::PLATEAU_STEPS`]; seed 0, every fixture and unseen model): 0.999 put the
/// folded ResNet at ratio 0.5 8.1 points over real agreement and the depthwise fixture 4.3
/// under.
pub const CHECK_STOP_CONFIDENCE: f32 = 0.9999;

/// Mean top-1 probability the original model gives the check set once its noise is added: a
/// trained classifier's typical confidence on held-out data (the digits fixtures give their
/// test images 0.97–0.99). Measured on the fixtures over 5 seeds: 0.97 puts the estimate
/// within −2.2 … +2.3 points of real agreement on average at both ratios; 0.96 puts the
/// depthwise and Keras CNNs 3.4 points under.
pub const CHECK_CONFIDENCE: f64 = 0.97;

/// How far real disagreement may lie from a data-free estimate, as measured: on the
/// benchmark's 15 models (fixtures and models trained apart), 3 seeds and 2 ratios each, the
/// real disagreement lay within [lo / 2 - 1 point, 3 hi + 1 point] of the estimate's 95 %
/// interval [lo, hi] of disagreement in 89 of the 90 cases (the one outside: a Keras
/// depthwise CNN whose real disagreement was 3.7 times the estimate). A model unlike those can
/// fall outside; this says how far the figure can be off, not that it cannot be.
pub const REAL_DISAGREEMENT_UP_TO: f64 = 3.0;
/// See [`REAL_DISAGREEMENT_UP_TO`].
pub const REAL_DISAGREEMENT_DOWN_TO: f64 = 0.5;
/// See [`REAL_DISAGREEMENT_UP_TO`].
pub const REAL_DISAGREEMENT_MARGIN: f64 = 0.01;

/// The agreement a data-free estimate with 95 % interval `interval` leaves plausible on real
/// inputs ([`REAL_DISAGREEMENT_UP_TO`]).
///
/// ```
/// let (lo, hi) = paoding_core::estimate::plausible_real_agreement((0.90, 0.96));
/// assert!((lo - 0.69).abs() < 1e-9 && (hi - 0.99).abs() < 1e-9);
/// ```
pub fn plausible_real_agreement(interval: (f64, f64)) -> (f64, f64) {
    let (most, least) = (1.0 - interval.0, 1.0 - interval.1);
    let up = (REAL_DISAGREEMENT_UP_TO * most + REAL_DISAGREEMENT_MARGIN).min(1.0);
    let down = (REAL_DISAGREEMENT_DOWN_TO * least - REAL_DISAGREEMENT_MARGIN).max(0.0);
    (1.0 - up, 1.0 - down)
}

/// Mean top-1 softmax probability of a classifier over `outputs` (`per_sample` values each;
/// outputs that are already probabilities are taken as they are).
pub fn mean_confidence(outputs: &[f32], per_sample: usize) -> f64 {
    let n = per_sample.max(1);
    let rows = outputs.len() / n;
    let sum: f64 = outputs
        .chunks_exact(n)
        .map(|row| {
            let total: f32 = row.iter().sum();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if row.iter().all(|&v| v >= 0.0) && (total - 1.0).abs() < 1e-3 {
                max as f64
            } else {
                let z: f64 = row.iter().map(|&v| libm::exp((v - max) as f64)).sum();
                1.0 / z
            }
        })
        .sum();
    sum / rows.max(1) as f64
}

/// `base` with seeded uniform noise added (the same noise pattern at every level, scaled to
/// `sigma` times the width of `range`, clamped to it) at the level where `g`'s mean top-1
/// probability over the set falls to `target` (bisection; none when it is already below).
/// Returns the noisy set and the level.
pub fn add_calibrated_noise(
    g: &Graph,
    base: &Probes,
    range: (f32, f32),
    target: f64,
    seed: u64,
) -> Result<(Probes, f32)> {
    let per = g.values[g.output].len();
    let mut rng = SplitMix64(seed ^ 0x0015_E5E7_C4EC_0000);
    let pattern: Vec<f32> = (0..base.data.len())
        .map(|_| 2.0 * rng.next_f32() - 1.0)
        .collect();
    let width = range.1 - range.0;
    let noisy = |sigma: f32| Probes {
        data: base
            .data
            .iter()
            .zip(&pattern)
            .map(|(&x, &e)| (x + sigma * width * e).clamp(range.0, range.1))
            .collect(),
        ..base.clone()
    };
    let confidence = |p: &Probes| -> Result<f64> {
        Ok(mean_confidence(
            &crate::grad::outputs_batch(g, &p.data)?,
            per,
        ))
    };
    if confidence(base)? <= target {
        return Ok((base.clone(), 0.0));
    }
    // Invariant: `lo` keeps the confidence above the target, `hi` does not (or is the most
    // noise there is: the whole range).
    let (mut lo, mut hi) = (0.0f32, 1.0f32);
    for _ in 0..14 {
        let mid = 0.5 * (lo + hi);
        if confidence(&noisy(mid))? > target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((noisy(lo), lo))
}

/// How much a model's outputs vary over a check set: a set on which they barely do says
/// nothing about fidelity (every prediction the same class, every output the same values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Samples.
    pub samples: usize,
    /// Classifiers: distinct top-1 classes the original model gives the set.
    pub distinct_classes: usize,
    /// Classifiers: share of the set given the most frequent class.
    pub top_class_share: f64,
    /// Mean over outputs of their standard deviation across the set, over the mean absolute
    /// output: how much the outputs move from sample to sample.
    pub relative_spread: f64,
}

/// Most of a check set one class may take before the set is called degenerate.
pub const MAX_TOP_CLASS_SHARE: f64 = 0.9;

/// Least relative spread of the outputs before a check set is called degenerate.
pub const MIN_RELATIVE_SPREAD: f64 = 0.01;

impl Spread {
    /// Measure the original model's `outputs` over a check set.
    pub fn of(outputs: &[f32], per_sample: usize, task: Task) -> Self {
        let n = per_sample.max(1);
        let samples = outputs.len() / n;
        let (mut distinct_classes, mut top_class_share) = (0, 0.0);
        if let Task::Classifier { classes } = task {
            let mut counts = alloc::vec![0usize; classes.max(n)];
            for row in outputs.chunks_exact(n) {
                counts[crate::fidelity::argmax(row)] += 1;
            }
            distinct_classes = counts.iter().filter(|&&c| c > 0).count();
            top_class_share =
                counts.iter().copied().max().unwrap_or(0) as f64 / samples.max(1) as f64;
        }
        let mut spread = 0.0f64;
        let mut magnitude = 0.0f64;
        for j in 0..n {
            let column = outputs.iter().skip(j).step_by(n).map(|&v| v as f64);
            let mean = column.clone().sum::<f64>() / samples.max(1) as f64;
            let var = column.clone().map(|v| (v - mean) * (v - mean)).sum::<f64>()
                / samples.max(1) as f64;
            spread += libm::sqrt(var);
            magnitude += column.map(libm::fabs).sum::<f64>() / samples.max(1) as f64;
        }
        Spread {
            samples,
            distinct_classes,
            top_class_share,
            relative_spread: spread / magnitude.max(1e-30),
        }
    }

    /// Why this set says little about fidelity, or `None` when it exercises the model.
    pub fn degenerate(&self, task: Task) -> Option<String> {
        use core::fmt::Write as _;
        let mut why = String::new();
        if task.is_classifier() && self.top_class_share > MAX_TOP_CLASS_SHARE {
            let _ = write!(
                why,
                "the original model gives one class to {:.1} % of the check inputs ({} distinct classes)",
                100.0 * self.top_class_share,
                self.distinct_classes
            );
        } else if self.relative_spread < MIN_RELATIVE_SPREAD {
            let _ = write!(
                why,
                "the original model's outputs barely vary over the check inputs (relative spread {:.2e})",
                self.relative_spread
            );
        } else {
            return None;
        }
        Some(why)
    }
}

/// Wilson score interval of a proportion `successes / n` at 95 % confidence.
///
/// ```
/// let (lo, hi) = paoding_core::estimate::wilson(97, 100);
/// assert!(lo > 0.91 && lo < 0.92 && hi > 0.98 && hi < 0.99);
/// ```
pub fn wilson(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_964f64;
    let (n, p) = (n as f64, successes as f64 / n as f64);
    let denominator = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denominator;
    let half = z * libm::sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// An input range the model file implies, and how it was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRange {
    /// Lowest input value.
    pub lo: f32,
    /// Highest input value.
    pub hi: f32,
    /// What in the file implied it.
    pub source: String,
}

/// The input range a model's own graph implies, for a graph as imported *before*
/// simplification (with its batch norms and any input normalisation still separate nodes):
///
/// - an affine map (per-channel scale and shift) applied to the input: a pure scaling
///   (`x / 255`) maps the input onto [0, 1], a standardisation (`(x - m) / s`) onto about
///   ±2 standard deviations, so the input range is the preimage of that;
/// - a convolution or dense layer feeding a batch norm with running statistics: the input
///   mean `c` and variance `v` that explain the running mean and variance of every channel
///   best (least squares over the channels, inputs taken as independent), as the uniform
///   range with that mean and variance, `c ± √(3v)`.
///
/// `None` when neither is there.
pub fn implied_input_range(g: &Graph) -> Option<InputRange> {
    // The first node that computes anything, past layout changes (tf2onnx's NHWC transpose).
    let mut value = g.input;
    let node = loop {
        let consumers = g.consumers(value);
        let [next] = consumers[..] else {
            return None;
        };
        let node = &g.nodes[next];
        match node.op {
            Op::Reshape { .. } | Op::Transpose { .. } => value = node.output,
            _ => break node,
        }
    };
    match &node.op {
        Op::BatchNorm(b) if b.stats.is_none() => {
            let pure_scaling = b.shift.iter().all(|&s| s == 0.0);
            let (to_lo, to_hi) = if pure_scaling {
                (0.0, 1.0)
            } else {
                (-2.0, 2.0)
            };
            let mut range = (f32::INFINITY, f32::NEG_INFINITY);
            for (&a, &b) in b.scale.iter().zip(&b.shift) {
                if a == 0.0 || !a.is_finite() {
                    return None;
                }
                let (x0, x1) = ((to_lo - b) / a, (to_hi - b) / a);
                range = (range.0.min(x0.min(x1)), range.1.max(x0.max(x1)));
            }
            let source = if pure_scaling {
                "the input scaling at the model's input maps it onto [0, 1]"
            } else {
                "the input standardisation at the model's input: ±2 standard deviations"
            };
            finite_range(range, source)
        }
        Op::Conv2d(_) | Op::Dense(_) => {
            let next = g.consumers(node.output);
            let [bn] = next[..] else {
                return None;
            };
            let Op::BatchNorm(b) = &g.nodes[bn].op else {
                return None;
            };
            let (mean, var) = b.stats.as_ref()?;
            let (weights, bias, channels) = match &node.op {
                Op::Conv2d(c) if c.groups == 1 => (&c.weights, &c.bias, c.out_channels),
                Op::Dense(d) => (&d.weights, &d.bias, d.units),
                _ => return None,
            };
            let taps = weights.len() / channels.max(1);
            let (mut mean_num, mut mean_den, mut var_num, mut var_den) = (0.0, 0.0, 0.0, 0.0);
            for k in 0..channels {
                let w = &weights[k * taps..(k + 1) * taps];
                let sum: f64 = w.iter().map(|&x| x as f64).sum();
                let squares: f64 = w.iter().map(|&x| (x as f64) * (x as f64)).sum();
                mean_num += (mean[k] as f64 - bias[k] as f64) * sum;
                mean_den += sum * sum;
                var_num += var[k] as f64 * squares;
                var_den += squares * squares;
            }
            if mean_den <= 0.0 || var_den <= 0.0 {
                return None;
            }
            let (c, v) = (mean_num / mean_den, var_num / var_den);
            let half = libm::sqrt(3.0 * v.max(0.0));
            finite_range(
                ((c - half) as f32, (c + half) as f32),
                "the running statistics of the first batch norm: the uniform range with the input mean and variance that explain them",
            )
        }
        _ => None,
    }
}

fn finite_range(range: (f32, f32), source: &str) -> Option<InputRange> {
    (range.0.is_finite() && range.1.is_finite() && range.0 < range.1).then(|| InputRange {
        lo: range.0,
        hi: range.1,
        source: source.into(),
    })
}

/// The range an autoencoder's reconstructions of `probes` cover: the range of the data it
/// was trained on, as far as the model can tell (its decoder ends at the data's scale
/// whatever the input).
pub fn reconstruction_range(g: &Graph, probes: &Probes) -> Result<Option<InputRange>> {
    let out = crate::grad::outputs_batch(g, &probes.data)?;
    let range = out
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    Ok(finite_range(
        range,
        "the range of the autoencoder's reconstructions of uniform noise",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, BatchNorm, Conv2d, Dense};

    fn dense(units: usize, inputs: usize, rng: &mut SplitMix64) -> Op {
        Op::Dense(Dense {
            units,
            inputs,
            weights: rng.vec(units * inputs, 0.5),
            bias: alloc::vec![0.0; units],
            activation: Activation::Identity,
        })
    }

    #[test]
    fn tasks_follow_the_output() {
        let mut rng = SplitMix64(1);
        let mut g = Graph::new("x", alloc::vec![1, 6]);
        let h = g.push("a", dense(6, 6, &mut rng), &[g.input]).unwrap();
        g.output = h;
        assert_eq!(task(&g), Task::Autoencoder);
        g.output = g.push("s", Op::Softmax { axis: 1 }, &[h]).unwrap();
        assert_eq!(task(&g), Task::Classifier { classes: 6 });
        let mut r = Graph::new("x", alloc::vec![1, 6]);
        r.output = r.push("a", dense(1, 6, &mut rng), &[r.input]).unwrap();
        assert_eq!(task(&r), Task::Regressor);
    }

    #[test]
    fn wilson_brackets_the_proportion_and_narrows_with_n() {
        let (lo, hi) = wilson(90, 100);
        assert!(lo < 0.9 && hi > 0.9);
        let (lo2, hi2) = wilson(900, 1000);
        assert!(hi2 - lo2 < hi - lo);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        assert!(wilson(10, 10).1 <= 1.0 && wilson(0, 10).0 >= 0.0);
    }

    #[test]
    fn one_class_everywhere_is_degenerate() {
        let task = Task::Classifier { classes: 3 };
        let same: Vec<f32> = (0..30).flat_map(|i| [3.0, i as f32 * 0.01, 0.0]).collect();
        let s = Spread::of(&same, 3, task);
        assert_eq!(s.distinct_classes, 1);
        assert!(s.degenerate(task).is_some());
        let varied: Vec<f32> = (0..30)
            .flat_map(|i| {
                let k = i % 3;
                [
                    (k == 0) as u8 as f32,
                    (k == 1) as u8 as f32,
                    (k == 2) as u8 as f32,
                ]
            })
            .collect();
        assert!(Spread::of(&varied, 3, task).degenerate(task).is_none());
        let flat = alloc::vec![1.0f32; 60];
        let s = Spread::of(&flat, 2, Task::Autoencoder);
        assert!(s.degenerate(Task::Autoencoder).is_some());
    }

    #[test]
    fn calibrated_noise_brings_confidence_to_the_target() {
        let mut rng = SplitMix64(4);
        let mut g = Graph::new("x", alloc::vec![1, 8]);
        g.output = g
            .push(
                "fc",
                Op::Dense(Dense {
                    units: 4,
                    inputs: 8,
                    weights: rng.vec(32, 4.0),
                    bias: alloc::vec![0.0; 4],
                    activation: Activation::Identity,
                }),
                &[g.input],
            )
            .unwrap();
        // Inputs at the corners of the range: the model is very sure of them.
        let base = Probes::from_batch(
            (0..64 * 8)
                .map(|i| if (i * 7919) % 3 == 0 { 1.0 } else { 0.0 })
                .collect(),
            8,
        )
        .unwrap();
        let per = 4;
        let before = mean_confidence(&crate::grad::outputs_batch(&g, &base.data).unwrap(), per);
        let target = before - 0.05;
        let (noisy, sigma) = add_calibrated_noise(&g, &base, (0.0, 1.0), target, 3).unwrap();
        let after = mean_confidence(&crate::grad::outputs_batch(&g, &noisy.data).unwrap(), per);
        assert!(sigma > 0.0, "{before} -> {after}");
        assert!((after - target).abs() < 0.02, "{after} vs {target}");
        assert!(noisy.data.iter().all(|v| (0.0..=1.0).contains(v)));
        // Already below the target: left as it is.
        let (same, zero) = add_calibrated_noise(&g, &base, (0.0, 1.0), 1.0, 3).unwrap();
        assert_eq!((same, zero), (base, 0.0));
    }

    #[test]
    fn the_first_batch_norm_tells_the_input_scale() {
        // A 1x1 convolution with weights w_k into a batch norm whose statistics are those of
        // inputs uniform in [2, 6] (mean 4, variance 16/12).
        let w = [0.5f32, -1.0, 2.0];
        let (c, v) = (4.0f32, 16.0f32 / 12.0);
        let mut g = Graph::new("x", alloc::vec![1, 1, 2, 2]);
        let conv = g
            .push(
                "conv",
                Op::Conv2d(Conv2d {
                    out_channels: 3,
                    in_channels: 1,
                    kernel: [1, 1],
                    stride: [1, 1],
                    dilation: [1, 1],
                    padding: [0; 4],
                    groups: 1,
                    weights: w.to_vec(),
                    bias: alloc::vec![0.0; 3],
                    activation: Activation::Identity,
                }),
                &[g.input],
            )
            .unwrap();
        let mut bn = BatchNorm::affine(alloc::vec![1.0; 3], alloc::vec![0.0; 3]);
        bn.stats = Some((
            w.iter().map(|w| w * c).collect(),
            w.iter().map(|w| w * w * v).collect(),
        ));
        g.output = g.push("bn", Op::BatchNorm(bn), &[conv]).unwrap();
        let r = implied_input_range(&g).expect("a range");
        assert!(
            (r.lo - 2.0).abs() < 1e-3 && (r.hi - 6.0).abs() < 1e-3,
            "{r:?}"
        );

        // x / 255 at the input: raw pixels.
        let mut s = Graph::new("x", alloc::vec![1, 1, 2, 2]);
        let scale = BatchNorm::affine(alloc::vec![1.0 / 255.0], alloc::vec![0.0]);
        s.output = s.push("scale", Op::BatchNorm(scale), &[s.input]).unwrap();
        let r = implied_input_range(&s).expect("a range");
        assert!(r.lo == 0.0 && (r.hi - 255.0).abs() < 1e-3, "{r:?}");
    }
}
