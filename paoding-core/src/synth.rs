//! Data-free probe synthesis: inputs that look to the model like its training data, so the
//! pruning refit ([`crate::prune::refit`]) sees realistic activations without any data.
//!
//! Two objectives, optimised with Adam on the inputs themselves from seeded uniform noise,
//! clamped to the input range after every step:
//!
//! - **Class-conditional inversion** (classifiers): probe `k` is driven towards class
//!   `k mod C` by softmax cross-entropy on the pre-softmax logits, with a small
//!   total-variation prior on image inputs (squared differences of neighbours along H and W).
//!   A probe is finished once the model gives its class p ≥ 0.99 ([`STOP_CONFIDENCE`]): it no
//!   longer moves nor costs anything, and synthesis ends when every probe is (or after
//!   [`SynthOptions::steps`]).
//!
//!   Without BatchNorm statistics to anchor them, image probes are also **jittered**
//!   (DeepInversion's random shifts): every step sees each probe rolled circularly by a
//!   random offset of up to an eighth of the image along each spatial axis, and its gradient
//!   is rolled back. Noise that crosses a class boundary at one exact pixel position is an
//!   adversarial pattern, not what the model has learnt about the class; a score that must
//!   hold wherever the pattern sits takes spatially coherent evidence, whose activations in
//!   every layer resemble the data's more (see `jitter`).
//! - **BatchNorm-statistics matching** (DeepInversion): for every [`Op::BatchNorm`] node that
//!   kept its running statistics, the batch mean and variance of its input (per channel, over
//!   all probes and positions) are pulled towards the running mean and variance, with the loss
//!   `‖mean - μ‖₂ + ‖var - σ²‖₂` per layer. The importer folds batch norms into convolutions
//!   when it can, so this applies only to graphs whose batch norms survived.
//!
//! A model is a **classifier** when its logits (the output, or the input of a final Softmax)
//! have shape `[1, C]` with `2 ≤ C ≤ 1000` ([`classes`]). [`auto_method`] picks the best the
//! model allows.
//!
//! The same options give bit-identical probes on a machine, whatever the number of threads:
//! each probe's gradient is computed independently (the matrix products are batch-invariant,
//! see [`crate::grad`]) and batch statistics are reduced in probe order.
//!
//! ```
//! use paoding_core::ir::{Activation, Dense, Graph, Op};
//! use paoding_core::synth::{synthesize_with_report, SynthMethod, SynthOptions};
//!
//! let mut g = Graph::new("x", vec![1, 4]);
//! g.output = g.push("fc", Op::Dense(Dense {
//!     units: 3, inputs: 4,
//!     weights: (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * 0.5).collect(),
//!     bias: vec![0.0; 3], activation: Activation::Identity,
//! }), &[g.input])?;
//! let opts = SynthOptions { count: 6, steps: 100, lr: 0.1, ..Default::default() };
//! let (probes, report) = synthesize_with_report(&g, &opts);
//! assert_eq!(probes.count(), 6);
//! assert_eq!(report.method, SynthMethod::Invert);
//! assert_eq!(report.on_target, 6);
//! # Ok::<(), paoding_core::Error>(())
//! ```

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::grad;
use crate::ir::{Graph, Op, ValueId};
use crate::probes::Probes;

/// Which objective shapes the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynthMethod {
    /// Seeded uniform noise in the input range, no optimisation.
    Uniform,
    /// Class-conditional inversion (cross-entropy towards class `k mod C`, TV prior).
    #[default]
    Invert,
    /// BatchNorm-statistics matching alone.
    Bn,
    /// Both terms.
    Both,
    /// Autoencoders ([`crate::estimate::Task::Autoencoder`]): the model's reconstructions of
    /// seeded uniform noise, which lie where its decoder puts data.
    Reconstruct,
}

/// Options of [`synthesize`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthOptions {
    /// Number of probes.
    pub count: usize,
    /// Adam steps.
    pub steps: usize,
    /// Adam learning rate, as a fraction of the input range (so that it means the same for
    /// inputs in [0, 1], [-1, 1] or [0, 255]). The default, 0.1, moves a value by up to a tenth
    /// of its range a step, enough for probes to leave their starting noise well within
    /// the steps: on the depthwise digits CNN (jittered, pruned as in [`STOP_CONFIDENCE`]) 0.01
    /// gave 88.6 %, 0.1 92.4 %; with BatchNorm matching on the residual CNN, 0.1 also cut the
    /// final BN loss of 0.01 threefold (99.6 % against 99.4 %).
    pub lr: f32,
    /// Weight of the total-variation prior (image inputs only), relative to the mean
    /// cross-entropy; the prior is the mean squared neighbour difference of a probe.
    pub tv_weight: f32,
    /// Weight of the BatchNorm-statistics loss.
    pub bn_weight: f32,
    /// Probability of its class at which an inverted probe is finished: it stops moving and
    /// costs nothing more. [`STOP_CONFIDENCE`] for the refit's probes; the held-out check set
    /// of the fidelity estimate goes deeper ([`crate::estimate::CHECK_STOP_CONFIDENCE`]).
    pub stop_confidence: f32,
    /// An inverted probe whose cross-entropy has not fallen by [`PLATEAU_GAIN`] of its best
    /// within this many steps is finished too (0: never).
    pub plateau_steps: usize,
    /// Range the probes start in (uniformly) and are clamped to.
    pub input_range: (f32, f32),
    /// Seed of the starting noise.
    pub seed: u64,
    /// Objective; one the model cannot support falls back to what it can (see
    /// [`SynthReport::method`]).
    pub method: SynthMethod,
    /// Most work the optimisation may spend, in multiply-accumulates (forward and backward
    /// passes, counted as three forwards, over every optimised probe and step). When `count`
    /// probes would exceed it, only as many as fit are optimised and the others are derived
    /// from them ([`derive_probes`]); `u64::MAX` optimises every probe.
    pub work_macs: u64,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions {
            count: 512,
            steps: 200,
            lr: 0.1,
            tv_weight: 0.01,
            bn_weight: 1.0,
            stop_confidence: STOP_CONFIDENCE,
            plateau_steps: PLATEAU_STEPS,
            input_range: (0.0, 1.0),
            seed: 0,
            method: SynthMethod::Invert,
            work_macs: DEFAULT_WORK_MACS,
        }
    }
}

/// Default [`SynthOptions::work_macs`]: 10¹² MACs, about 20 s on one core of the batched
/// passes (50 GMAC/s with AVX-512, half that with AVX2). Digits-sized models optimise all
/// 512 probes well within it (the residual CNN needs 0.16·10¹²); a 1M-parameter CNN at
/// 32×32 (49 M MACs a forward pass) optimises 34 and derives the rest.
pub const DEFAULT_WORK_MACS: u64 = 1_000_000_000_000;

/// Fewest probes optimised whatever the budget: two per class for a classifier (so that
/// derived probes can mix two of their class), else 8, never more than asked for.
fn min_optimised(classes: Option<usize>, count: usize) -> usize {
    classes.map_or(8, |c| 2 * c).min(count)
}

/// How many of `opts.count` probes are optimised: all of them if the work budget allows,
/// else as many as it pays for (at least `min_optimised`).
pub fn optimised_count(g: &Graph, opts: &SynthOptions) -> usize {
    if matches!(
        effective(g, opts.method),
        SynthMethod::Uniform | SynthMethod::Reconstruct
    ) {
        return 0;
    }
    let macs = crate::cost::ModelCost::new(g, Default::default())
        .macs
        .max(1);
    let per_probe = (3 * macs).saturating_mul(opts.steps.max(1) as u64);
    let fits = (opts.work_macs / per_probe).min(opts.count as u64) as usize;
    fits.max(min_optimised(classes(g), opts.count))
}

/// What a synthesis achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthReport {
    /// The objective that actually ran.
    pub method: SynthMethod,
    /// Classes of the model, if it is a classifier.
    pub classes: Option<usize>,
    /// Final objective: mean cross-entropy + weighted TV + weighted BN loss.
    pub final_loss: f32,
    /// Final mean cross-entropy (0 when the class term is off).
    pub class_loss: f32,
    /// Final BN-statistics loss, unweighted (0 when off).
    pub bn_loss: f32,
    /// Probes the model classifies as their target class `k mod C` (0 for non-classifiers).
    pub on_target: usize,
    /// Probes synthesized.
    pub count: usize,
    /// Of those, probes optimised; the other `count - optimised` were derived from them by
    /// shifts, mixing and jitter ([`derive_probes`]).
    pub optimised: usize,
    /// Adam steps taken: [`SynthOptions::steps`], or fewer when every probe reached its
    /// class target earlier (inversion without BN matching stops there).
    pub steps: usize,
}

/// Number of classes if the model is a classifier: logits of shape `[1, C]`, `2 ≤ C ≤ 1000`.
pub fn classes(g: &Graph) -> Option<usize> {
    match g.shape(grad::logits_value(g)) {
        [1, c] if (2..=1000).contains(c) => Some(*c),
        _ => None,
    }
}

/// Batch-norm nodes that kept running statistics, as (node index, input value).
pub fn bn_layers(g: &Graph) -> Vec<(usize, ValueId)> {
    g.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(&n.op, Op::BatchNorm(b) if b.stats.is_some()))
        .map(|(i, n)| (i, n.inputs[0]))
        .collect()
}

/// The best objective the model allows: BN + class for a classifier with BN statistics,
/// class inversion for other classifiers, BN alone for other models with statistics,
/// reconstructions for an autoencoder without them, uniform noise otherwise.
pub fn auto_method(g: &Graph) -> SynthMethod {
    let task = crate::estimate::task(g);
    match (task.is_classifier(), !bn_layers(g).is_empty()) {
        (true, true) => SynthMethod::Both,
        (true, false) => SynthMethod::Invert,
        (false, true) => SynthMethod::Bn,
        (false, false) if task == crate::estimate::Task::Autoencoder => SynthMethod::Reconstruct,
        (false, false) => SynthMethod::Uniform,
    }
}

/// The objective that can run: the asked terms the model supports.
fn effective(g: &Graph, asked: SynthMethod) -> SynthMethod {
    if asked == SynthMethod::Reconstruct {
        return if crate::estimate::task(g) == crate::estimate::Task::Autoencoder {
            SynthMethod::Reconstruct
        } else {
            SynthMethod::Uniform
        };
    }
    let class = classes(g).is_some() && matches!(asked, SynthMethod::Invert | SynthMethod::Both);
    let bn = !bn_layers(g).is_empty() && matches!(asked, SynthMethod::Bn | SynthMethod::Both);
    match (class, bn) {
        (true, true) => SynthMethod::Both,
        (true, false) => SynthMethod::Invert,
        (false, true) => SynthMethod::Bn,
        (false, false) => SynthMethod::Uniform,
    }
}

/// Synthesize probes for a checked graph.
pub fn synthesize(g: &Graph, opts: &SynthOptions) -> Probes {
    synthesize_with_report(g, opts).0
}

/// Axes (height, width) of an image input: the input axes that become the height and width
/// of the first convolution's NCHW input, followed through the layout operators in between
/// (a transpose from NHWC; tf2onnx's reshape of a one-channel NHWC image to NCHW, which only
/// moves a unit axis); NCHW for a rank-4 input that reaches no convolution that way.
fn spatial_axes(g: &Graph) -> Option<(usize, usize)> {
    let shape = g.shape(g.input);
    if shape.len() != 4 {
        return None;
    }
    // For each axis of `v`, the input axis it is (`None` for a unit axis a reshape made).
    let mut origin: Vec<Option<usize>> = (0..4).map(Some).collect();
    let mut v = g.input;
    loop {
        let consumers = g.consumers(v);
        let [only] = consumers[..] else { break };
        let node = &g.nodes[only];
        let next = match &node.op {
            Op::Transpose { perm } => perm
                .iter()
                .map(|&p| origin.get(p).copied().flatten())
                .collect(),
            Op::Reshape { .. } => {
                let (from, to) = (g.shape(v), g.shape(node.output));
                let kept =
                    |s: &[usize]| -> Vec<usize> { (0..s.len()).filter(|&a| s[a] != 1).collect() };
                let (a, b) = (kept(from), kept(to));
                // Only a reshape that keeps the non-unit axes in order moves no element.
                if a.len() != b.len() || a.iter().zip(&b).any(|(&x, &y)| from[x] != to[y]) {
                    break;
                }
                let mut next = alloc::vec![None; to.len()];
                for (&x, &y) in a.iter().zip(&b) {
                    next[y] = origin[x];
                }
                next
            }
            _ => break,
        };
        origin = next;
        v = node.output;
    }
    match (
        g.shape(v).len(),
        origin.get(2).copied().flatten(),
        origin.get(3).copied().flatten(),
    ) {
        (4, Some(h), Some(w)) if v != g.input => Some((h, w)),
        _ => Some((2, 3)),
    }
}

/// Mean squared neighbour difference along the two spatial axes, and its gradient (added,
/// times `weight`, into `grad`).
fn total_variation(
    shape: &[usize],
    axes: (usize, usize),
    x: &[f32],
    weight: f32,
    grad: &mut [f32],
) -> f32 {
    let strides = [
        shape[1] * shape[2] * shape[3],
        shape[2] * shape[3],
        shape[3],
        1,
    ];
    let mut sum = 0.0f32;
    let mut pairs = 0usize;
    for axis in [axes.0, axes.1] {
        pairs += x.len() / shape[axis] * (shape[axis] - 1);
    }
    let scale = weight * 2.0 / pairs.max(1) as f32;
    for axis in [axes.0, axes.1] {
        let step = strides[axis];
        let len = shape[axis];
        for (i, &a) in x.iter().enumerate() {
            if (i / step) % len + 1 < len {
                let d = x[i + step] - a;
                sum += d * d;
                grad[i] -= scale * d;
                grad[i + step] += scale * d;
            }
        }
    }
    sum / pairs.max(1) as f32
}

/// One BN layer's matching state for a step.
struct BnTarget {
    value: ValueId,
    channels: usize,
    inner: usize,
    mean: Vec<f32>,
    /// Per channel: coefficient of the constant and of `(x - mean)` in dL/dx.
    coef_mean: Vec<f32>,
    coef_dev: Vec<f32>,
}

/// Per-probe result of a gradient pass.
#[derive(Clone, Copy, Default)]
struct ProbeStats {
    ce: f32,
    tv: f32,
    hit: bool,
    /// The class term still pulls this probe (its cross-entropy is above its target).
    pulling: bool,
}

/// Steps without progress after which an inverted probe already past the refit's own target
/// (p ≥ [`STOP_CONFIDENCE`]) is finished ([`SynthOptions::plateau_steps`]).
///
/// Probes taken deeper than the refit's (the check set's and the selection's, to p ≥ 0.9999)
/// spent most of their time on stragglers: on the pooled digits CNN about a quarter of them
/// sit at p ≈ 0.997 on their jittered views from step 50 to 200, their evidence not quite
/// surviving every shift. Measured with `cargo bench -p paoding-tests --bench
/// fidelity_estimate` (seeds 0–2, every fixture and model of tests/unseen, against the same
/// run without it): 25 steps halve the check set's time on inverted models (3.8–9.3× the
/// refit's probes → 2.2–5.4×) and leave the estimate's errors as they were within their seed
/// spread (fixtures 27 of 30 runs within 3 points against 28, the largest over +2.7 against
/// +3.1; unseen 47 of 60 against 49); 10 steps moved the depthwise CNNs' estimates 3–4 points
/// down. Any probe still falling is left alone, and so are probes short of p = 0.99 (those
/// are still being shaped: stopping them too moved the depthwise CNNs 4 points down).
pub const PLATEAU_STEPS: usize = 25;

/// Relative fall of a probe's best cross-entropy that counts as progress.
pub const PLATEAU_GAIN: f32 = 0.1;

/// Probability of its class at which a refit probe is finished.
///
/// A trained classifier is that confident on its own data (cross-entropy training drives
/// p(target) towards 1; the depthwise digits CNN gives its held-out images 0.97 on average).
/// Lower targets stop probes too early: classifiers are often confident on noise already
/// (that CNN gives uniform noise 0.95 on average), so a probe that has barely left its
/// starting noise would count as finished, and the refit would see noise again. Measured
/// on that CNN (jittered, 512 probes, merge + refit, 40 % of its parameters removed, 5
/// seeds): 92.4 % with this target, 89.8 % with targets spread between 0.5 and 0.99 over the
/// probes (the earlier choice); spreads from 0.99 to 0.999 or 0.9999 did no better and cost
/// half as much again, as the last probes take long to get there.
pub const STOP_CONFIDENCE: f32 = 0.99;

/// Probability of its class at which a probe that *chooses* units is finished: the units no
/// merge compensates are chosen ([`crate::prune::select`]) on probes inverted like the
/// refit's, with their own seed, but taken deeper into their class ([`selection_options`]),
/// as deep as the held-out check set's ([`crate::estimate::CHECK_STOP_CONFIDENCE`]).
///
/// Choosing and refitting want different probes. Choosing ranks units by how well the rest
/// reconstruct their consumers, and a probe stopped at p = 0.99 is still mostly its starting
/// noise: units that respond to that noise look indispensable, units the class evidence
/// needs look redundant. The refit, on the other hand, fits every direction its probes
/// excite, and the noise makes it preserve the layer's response in more of them. Measured on
/// the three depthwise digits CNNs (the fixture and two of `tests/unseen`, whose first layers
/// reach their consumers through depthwise convolutions; 512 probes, 40 % of the parameters
/// removed, seeds 0–5): units chosen on these probes and refitted on the usual ones give
/// 94.9 / 97.0 / 96.5 % against 95.0 / 96.9 / 89.6 % with the usual probes for both (96.9 /
/// 98.7 / 98.9 % with the test images for both); at 60 %, 80.3 / 91.1 / 76.3 % against
/// 79.6 / 90.0 / 76.1 %. Choosing on probes taken to p ≥ 0.999 only, the Keras CNN fell back
/// to 90 % on two seeds of six (a near tie in its first layer); taken to 0.9999 for the refit
/// too, it lost 2.4 points at 60 %; started from low-amplitude noise (middle of the range
/// ± a fifth) for the choice, the fixture lost 1.5 points. The probes that choose cost about
/// as much to synthesize as the check set.
pub const SELECTION_STOP_CONFIDENCE: f32 = 0.9999;

/// The options of the probes that choose units for a refit synthesized with `refit`: the
/// same synthesis with its own seed, each probe taken to [`SELECTION_STOP_CONFIDENCE`].
pub fn selection_options(refit: &SynthOptions) -> SynthOptions {
    SynthOptions {
        seed: refit.seed ^ 0x5E1E_C7ED,
        stop_confidence: SELECTION_STOP_CONFIDENCE,
        ..refit.clone()
    }
}

/// Largest jitter along a spatial axis of `len` pixels: an eighth of it (DeepInversion
/// jitters 224-pixel images by up to 30, about the same), at least one pixel; none along an
/// axis of one.
fn max_shift(len: usize) -> usize {
    if len > 1 {
        (len / 8).max(1)
    } else {
        0
    }
}

/// The circular shift (rows, columns, each in `0..len`) that probe `k` is seen through at
/// `step`: uniform in `-max..=max` ([`max_shift`]) per spatial axis, seeded by the synthesis
/// seed, the probe and the step, so it does not depend on how probes are batched.
///
/// Measured on the digits fixtures (512 probes, 5 seeds, merge + refit, 40 % of the
/// parameters removed, 73.7 % for the MLP): the depthwise CNN reaches 92.4 % with jitter and
/// 88.6 % without, the residual CNN 98.2 % and 98.8 %, the MLP (an 8×8 image input too)
/// 96.8 % and 96.4 %. With BatchNorm statistics the probes are not jittered: the statistics
/// anchor every layer already, and matching them through shifted views did worse (residual
/// CNN, 3 seeds: BN loss 0.2 → 1.5, accuracy 99.6 → 99.1 %).
fn jitter(seed: u64, k: usize, step: usize, shape: &[usize], axes: (usize, usize)) -> [usize; 2] {
    let mut rng =
        crate::probes::SplitMix64(seed ^ 0x6A17_7E20_0000_0000 ^ ((k as u64) << 24) ^ step as u64);
    [shape[axes.0], shape[axes.1]].map(|len| {
        let max = max_shift(len);
        let offset = (rng.next_u64() % (2 * max as u64 + 1)) as usize;
        (offset + len - max) % len
    })
}

/// Every probe of `xs` rolled by its shift, or (`back`) by the opposite one.
fn roll_all(
    shape: &[usize],
    axes: (usize, usize),
    xs: &[f32],
    shifts: &[[usize; 2]],
    back: bool,
) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let (h, w) = (shape[axes.0], shape[axes.1]);
    let mut out = alloc::vec![0.0f32; xs.len()];
    for ((x, o), &by) in xs.chunks_exact(n).zip(out.chunks_exact_mut(n)).zip(shifts) {
        let by = if back {
            [(h - by[0]) % h, (w - by[1]) % w]
        } else {
            by
        };
        roll(shape, axes, x, by, o);
    }
    out
}

/// `x` (one probe of `shape`) rolled circularly by `by[0]` along `axes.0` and `by[1]` along
/// `axes.1`, into `out`.
fn roll(shape: &[usize], axes: (usize, usize), x: &[f32], by: [usize; 2], out: &mut [f32]) {
    let stride = |axis: usize| shape[axis + 1..].iter().product::<usize>();
    let (sy, sx) = (stride(axes.0), stride(axes.1));
    let (h, w) = (shape[axes.0], shape[axes.1]);
    for (i, &v) in x.iter().enumerate() {
        let (y, c) = ((i / sy) % h, (i / sx) % w);
        let to = i - y * sy - c * sx + (y + by[0]) % h * sy + (c + by[1]) % w * sx;
        out[to] = v;
    }
}

/// Most probes evaluated together (a batch of the matrix products).
const CHUNK: usize = 32;

/// Probes per chunk for a batch of `count`: up to [`CHUNK`], but at least eight chunks when
/// there are enough probes, so that a few costly probes (a large model optimises few) still
/// keep every core busy. Results do not depend on it (the products are batch-invariant).
fn chunk_len(count: usize) -> usize {
    (count / 8).clamp(1, CHUNK)
}

/// Most values (f32, every value of the graph's forward pass, which the backward pass reads)
/// one chunk of an optimisation step keeps: 4 MiB, so that a chunk's activations stay near
/// the core's caches.
const CHUNK_VALUES: usize = 1 << 20;

/// Probes per chunk of an optimisation step over `count` moving probes of `g`: as few chunks
/// as keep every core busy ([`cores`]), equal in size, of at most [`CHUNK`] probes and
/// [`CHUNK_VALUES`] values. Each matrix product packs a layer's weights once per chunk, which
/// costs as much as multiplying them by a few probes: on resnet18 (16 probes, 1×1 positions
/// in its last layers) chunks of 2 spent most of the synthesis packing (this rule: 8, 2.4 times
/// faster); on a CNN with large feature maps (the 1M-parameter CNN at 32×32), chunks of 17
/// probes took a quarter longer than chunks of 4 (this rule: 9, as fast as 4). Per-probe
/// results do not depend on it (the products are batch-invariant), so neither do the probes.
fn step_chunk_len(g: &Graph, count: usize) -> usize {
    let values: usize = g.values.iter().map(|v| v.len()).sum();
    let most = (CHUNK_VALUES / values.max(1)).clamp(1, CHUNK);
    let cores = cores();
    let chunks = cores * count.div_ceil(cores * most);
    count.div_ceil(chunks.max(1)).max(1)
}

/// Cores the chunks are dealt out to (1 without `std`).
fn cores() -> usize {
    #[cfg(feature = "std")]
    {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// `out[k] = f(k)` for every chunk `k`, over the available cores when `std` is on (chunks
/// dealt out in turn, so that costly and cheap chunks spread evenly).
fn for_each_probe<T, F>(out: &mut [T], f: F)
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    #[cfg(feature = "std")]
    {
        let threads = cores().min(out.len());
        if threads > 1 {
            let len = out.len();
            let parts: Vec<Vec<(usize, T)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let f = &f;
                        scope.spawn(move || {
                            (t..len)
                                .step_by(threads)
                                .map(|k| (k, f(k)))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            });
            for (k, v) in parts.into_iter().flatten() {
                out[k] = v;
            }
            return;
        }
    }
    for (k, o) in out.iter_mut().enumerate() {
        *o = f(k);
    }
}

/// A copy of the graph whose subnormal parameters are zero: trained weights often hold a few
/// (PyTorch's MLP fixture has hundreds), and each product with one costs the CPU a hundred
/// cycles; their contribution is below f32's resolution anyway.
fn flush_subnormals(g: &Graph) -> Graph {
    let mut g = g.clone();
    let flush = |v: &mut [f32]| {
        v.iter_mut()
            .filter(|x| x.is_subnormal())
            .for_each(|x| *x = 0.0)
    };
    for node in &mut g.nodes {
        match &mut node.op {
            Op::Dense(d) => {
                flush(&mut d.weights);
                flush(&mut d.bias);
            }
            Op::Conv2d(c) => {
                flush(&mut c.weights);
                flush(&mut c.bias);
            }
            Op::BatchNorm(b) => {
                flush(&mut b.scale);
                flush(&mut b.shift);
            }
            _ => {}
        }
    }
    g
}

/// Synthesize probes and say how well they worked.
pub fn synthesize_with_report(g: &Graph, opts: &SynthOptions) -> (Probes, SynthReport) {
    synthesize_with_progress(g, opts, &mut |_, _| {})
}

/// [`synthesize_with_report`], calling `progress(step, steps)` before each optimisation step
/// (and the final measuring pass): on a large model synthesis takes tens of seconds.
pub fn synthesize_with_progress(
    g: &Graph,
    opts: &SynthOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> (Probes, SynthReport) {
    // The work budget is the model's as it stands, whatever the passes skip below.
    let original = g;
    // The passes below skip the products by padding that no output reaches: the same
    // function, and most of resnet18's last stage at 32×32.
    let flushed = grad::without_dead_taps(flush_subnormals(g));
    let g = &flushed;
    let n = g.values[g.input].len();
    let count = opts.count;
    let (lo, hi) = opts.input_range;
    let mut probes = Probes::uniform(n, count, lo, hi, opts.seed);
    let method = effective(g, opts.method);
    let n_classes = classes(g);
    let mut report = SynthReport {
        method,
        classes: n_classes,
        final_loss: 0.0,
        class_loss: 0.0,
        bn_loss: 0.0,
        on_target: 0,
        count,
        optimised: count,
        steps: 0,
    };
    if count == 0 || n == 0 || method == SynthMethod::Uniform {
        report.optimised = 0;
        return (probes, report);
    }
    if method == SynthMethod::Reconstruct {
        report.optimised = 0;
        // The model's forward pass cannot fail on a checked graph and its own input; if it
        // ever did, the uniform probes stand.
        if let Ok(data) = grad::outputs_batch(g, &probes.data) {
            probes.data = data;
            probes.off_distribution = true;
        }
        return (probes, report);
    }
    let asked = count;
    // Beyond the work budget, optimise the first `count` probes (the same ones that would
    // be optimised with no budget) and derive the others from them afterwards.
    let count = optimised_count(original, opts);
    report.optimised = count;
    probes.data.truncate(count * n);
    let class_on = matches!(method, SynthMethod::Invert | SynthMethod::Both);
    let bn_on = matches!(method, SynthMethod::Bn | SynthMethod::Both);
    let bn = if bn_on { bn_layers(g) } else { Vec::new() };
    let tv_axes = if opts.tv_weight > 0.0 {
        spatial_axes(g)
    } else {
        None
    };
    // Inversion from the model alone sees image probes through random shifts ([`jitter`]).
    let jitter_axes = if bn_on { None } else { spatial_axes(g) };
    let logits = grad::logits_value(g);
    let in_shape = g.shape(g.input).to_vec();
    let inv_count = 1.0 / count as f32;
    // Cross-entropy below which a probe's class term stops pulling.
    let stop_ce = -libm::logf(opts.stop_confidence.clamp(1e-6, 1.0));
    // Below this a stalled probe may finish ([`PLATEAU_STEPS`]): the refit's own target.
    let plateau_ce = -libm::logf(STOP_CONFIDENCE);

    let (beta1, beta2, eps) = (0.9f32, 0.999f32, 1e-8f32);
    let mut m = alloc::vec![0.0f32; probes.data.len()];
    let mut v = alloc::vec![0.0f32; probes.data.len()];
    let mut bn_loss = 0.0f32;
    let mut stats = alloc::vec![ProbeStats::default(); count];
    let mut done = alloc::vec![false; count];
    // Each probe's best cross-entropy and the step it last fell by PLATEAU_GAIN.
    let mut best = alloc::vec![(f32::INFINITY, 0usize); count];

    // `steps` updates, then one more pass to measure the final probes.
    for step in 0..=opts.steps {
        progress(step, opts.steps);
        let last = step == opts.steps;
        let targets = if bn.is_empty() {
            Vec::new()
        } else {
            let (t, loss) = bn_targets(g, &bn, &probes);
            bn_loss = loss;
            t
        };
        if last && !class_on {
            break;
        }
        // Finished probes no longer move: their statistics stand, they cost nothing. The
        // probes still moving are dealt out in chunks afresh every step, so that the last few
        // slow ones still spread over the cores (per-probe results do not depend on the batch).
        let moving: Vec<usize> = (0..count).filter(|&k| !done[k]).collect();
        let per = step_chunk_len(g, moving.len());
        let mut results: Vec<(Vec<ProbeStats>, Vec<f32>)> =
            alloc::vec![(Vec::new(), Vec::new()); moving.len().div_ceil(per)];
        let (data, prev) = (&probes.data, &stats);
        for_each_probe(&mut results, |chunk| {
            let ids = &moving[chunk * per..((chunk + 1) * per).min(moving.len())];
            let mut out: Vec<ProbeStats> = ids.iter().map(|&k| prev[k]).collect();
            let xs: Vec<f32> = ids
                .iter()
                .flat_map(|&k| data[k * n..(k + 1) * n].iter().copied())
                .collect();
            // This step's shifted views (the final pass measures the probes themselves).
            let jittered = jitter_axes.filter(|_| !last).map(|axes| {
                let shifts: Vec<[usize; 2]> = ids
                    .iter()
                    .map(|&k| jitter(opts.seed, k, step, &in_shape, axes))
                    .collect();
                (axes, shifts)
            });
            let seen = jittered
                .as_ref()
                .map(|(axes, shifts)| roll_all(&in_shape, *axes, &xs, shifts, false));
            let Ok(values) = grad::forward_batch(g, seen.as_deref().unwrap_or(&xs), ids.len())
            else {
                return (out, alloc::vec![0.0f32; n * ids.len()]);
            };
            let mut seeds = Vec::new();
            // Samples the loss still pulls: all of them with BN matching (a batch statistic),
            // else those above their class target; the others skip the backward pass.
            let mut active = alloc::vec![bn_on; ids.len()];
            if let (true, Some(c)) = (class_on, n_classes) {
                let mut d_all = Vec::with_capacity(c * ids.len());
                for (j, z) in values[logits].chunks_exact(c).enumerate() {
                    let target = ids[j] % c;
                    let (loss, mut d) = grad::cross_entropy(z, target);
                    let pulling = loss >= stop_ce;
                    if !pulling {
                        d.fill(0.0);
                    }
                    out[j].ce = loss;
                    out[j].hit = crate::fidelity::argmax(z) == target;
                    out[j].pulling = pulling;
                    active[j] |= pulling;
                    // Flush what cannot matter: denormals downstream would cost 100× the time.
                    d.iter_mut()
                        .for_each(|v| *v = if v.abs() < 1e-12 { 0.0 } else { *v * inv_count });
                    d_all.extend(d);
                }
                seeds.push((logits, d_all));
            }
            seeds.extend(bn_seeds(&targets, &values, opts.bn_weight));
            let mut grad = if !last && !seeds.is_empty() {
                backward_active(g, &values, &active, seeds)
            } else {
                alloc::vec![0.0f32; n * ids.len()]
            };
            if let Some((axes, shifts)) = &jittered {
                grad = roll_all(&in_shape, *axes, &grad, shifts, true);
            }
            if let Some(axes) = tv_axes {
                for ((o, x), d) in out
                    .iter_mut()
                    .zip(xs.chunks_exact(n))
                    .zip(grad.chunks_exact_mut(n))
                {
                    o.tv = total_variation(&in_shape, axes, x, opts.tv_weight * inv_count, d);
                }
            }
            (out, grad)
        });
        for (&k, s) in moving.iter().zip(results.iter().flat_map(|r| r.0.iter())) {
            stats[k] = *s;
        }
        report.steps = step;
        // Inversion alone: a probe is finished once the class term stops pulling it, or once
        // its cross-entropy, past the refit's target, has stopped falling (PLATEAU_STEPS);
        // synthesis once every probe is.
        if !bn_on {
            for ((d, s), b) in done.iter_mut().zip(&stats).zip(&mut best) {
                if s.ce < b.0 * (1.0 - PLATEAU_GAIN) {
                    *b = (s.ce, step);
                }
                let stalled =
                    opts.plateau_steps > 0 && step - b.1 >= opts.plateau_steps && s.ce < plateau_ce;
                *d |= !s.pulling || stalled;
            }
        }
        if last || done.iter().all(|&d| d) {
            break;
        }
        // Adam on the probes still moving, then clamp to the input range.
        let step_size = opts.lr * (hi - lo);
        let t = (step + 1) as i32;
        let c1 = 1.0 - libm::powf(beta1, t as f32);
        let c2 = 1.0 - libm::powf(beta2, t as f32);
        let grads = results.iter().flat_map(|(_, g)| g.chunks_exact(n));
        for (&k, g) in moving.iter().zip(grads) {
            if done[k] {
                continue;
            }
            let x = &mut probes.data[k * n..(k + 1) * n];
            let (m, v) = (&mut m[k * n..(k + 1) * n], &mut v[k * n..(k + 1) * n]);
            for (((x, m), v), &g) in x.iter_mut().zip(m).zip(v).zip(g) {
                *m = beta1 * *m + (1.0 - beta1) * g;
                *v = beta2 * *v + (1.0 - beta2) * g * g;
                let update = step_size * (*m / c1) / (libm::sqrtf(*v / c2) + eps);
                *x = (*x - update).clamp(lo, hi);
            }
        }
    }
    let ce = stats.iter().map(|s| s.ce).sum::<f32>() * inv_count;
    let tv = stats.iter().map(|s| s.tv).sum::<f32>() * inv_count;
    report.class_loss = if class_on { ce } else { 0.0 };
    report.bn_loss = bn_loss;
    report.on_target = if class_on {
        stats.iter().filter(|s| s.hit).count()
    } else {
        0
    };
    report.final_loss = report.class_loss + opts.tv_weight * tv + opts.bn_weight * bn_loss;
    if asked > count {
        let derived = derive_probes(
            &probes,
            asked - count,
            n_classes.filter(|_| class_on),
            spatial_axes(g).map(|axes| (in_shape.as_slice(), axes)),
            opts,
        );
        if let Some(c) = n_classes.filter(|_| class_on) {
            report.on_target += count_on_target(g, &derived, count, c);
        }
        probes.data.extend_from_slice(&derived.data);
    }
    // Without the data's BatchNorm statistics, the probes are only the model's idea of them.
    probes.off_distribution = !bn_on;
    (probes, report)
}

/// `extra` probes derived from the optimised ones, DeepInversion-style cheap augmentation:
/// derived probe `j` (overall index `k + j`, `k` optimised) takes class `(k + j) mod C` when
/// the model is a classifier, and is a mix `(1 - a)·p + a·q` (`a` uniform in [0, 0.5)) of two
/// optimised probes `p`, `q` of that class (any two otherwise), shifted by up to an eighth of
/// the image along each spatial axis (edges repeated) when the input is an image, plus
/// uniform jitter of ±2 % of the input range, clamped to it. Seeded by `opts.seed`.
pub fn derive_probes(
    optimised: &Probes,
    extra: usize,
    classes: Option<usize>,
    image: Option<(&[usize], (usize, usize))>,
    opts: &SynthOptions,
) -> Probes {
    let n = optimised.sample_len;
    let k = optimised.count();
    let (lo, hi) = opts.input_range;
    let mut rng = crate::probes::SplitMix64(opts.seed ^ 0xD3E1_7ED0_0000_0001);
    let pick = |class: Option<(usize, usize)>, rng: &mut crate::probes::SplitMix64| -> usize {
        match class {
            // Optimised probe i has class i mod C: the ones of `c` are c, c + C, ...
            Some((c, of)) if c < k => {
                let of_class = (k - c).div_ceil(of);
                c + of * (rng.next_u64() % of_class as u64) as usize
            }
            _ => (rng.next_u64() % k as u64) as usize,
        }
    };
    let mut data = Vec::with_capacity(extra * n);
    let mut mixed = alloc::vec![0.0f32; n];
    for j in 0..extra {
        let class = classes.map(|c| ((k + j) % c, c));
        let (p, q) = (pick(class, &mut rng), pick(class, &mut rng));
        let a = 0.5 * rng.next_f32();
        for ((m, &x), &y) in mixed
            .iter_mut()
            .zip(optimised.sample(p))
            .zip(optimised.sample(q))
        {
            *m = (1.0 - a) * x + a * y;
        }
        let (dy, dx) = match image {
            Some((shape, (ah, aw))) => {
                let shift = |len: usize, r: u64| -> isize {
                    let max = (len / 8) as isize;
                    (r % (2 * max as u64 + 1)) as isize - max
                };
                (
                    shift(shape[ah], rng.next_u64()),
                    shift(shape[aw], rng.next_u64()),
                )
            }
            None => (0, 0),
        };
        let start = data.len();
        match image {
            Some((shape, (ah, aw))) if dy != 0 || dx != 0 => {
                let mut strides = [0usize; 4];
                let mut acc = 1;
                for axis in (0..4).rev() {
                    strides[axis] = acc;
                    acc *= shape[axis];
                }
                for i in 0..n {
                    let (y, x) = ((i / strides[ah]) % shape[ah], (i / strides[aw]) % shape[aw]);
                    let sy = (y as isize - dy).clamp(0, shape[ah] as isize - 1) as usize;
                    let sx = (x as isize - dx).clamp(0, shape[aw] as isize - 1) as usize;
                    let src =
                        i - y * strides[ah] - x * strides[aw] + sy * strides[ah] + sx * strides[aw];
                    data.push(mixed[src]);
                }
            }
            _ => data.extend_from_slice(&mixed),
        }
        for v in &mut data[start..] {
            let jitter = (hi - lo) * 0.02 * (2.0 * rng.next_f32() - 1.0);
            *v = (*v + jitter).clamp(lo, hi);
        }
    }
    Probes {
        data,
        sample_len: n,
        off_distribution: true,
    }
}

/// Derived probes the model classifies as their class (`(first + j) mod classes`).
fn count_on_target(g: &Graph, derived: &Probes, first: usize, classes: usize) -> usize {
    let count = derived.count();
    let n = derived.sample_len;
    let logits = grad::logits_value(g);
    let mut hits = alloc::vec![0usize; count.div_ceil(chunk_len(count))];
    for_each_probe(&mut hits, |chunk| {
        let start = chunk * chunk_len(count);
        let batch = chunk_len(count).min(count - start);
        let xs = &derived.data[start * n..(start + batch) * n];
        let Ok(values) = grad::forward_batch(g, xs, batch) else {
            return 0;
        };
        values[logits]
            .chunks_exact(classes)
            .enumerate()
            .filter(|(s, z)| crate::fidelity::argmax(z) == (first + start + s) % classes)
            .count()
    });
    hits.iter().sum()
}

/// dL/dx of the samples marked `active` (zero for the others), the backward pass running on
/// those samples alone; per-sample results do not depend on the batch they are computed in.
fn backward_active(
    g: &Graph,
    values: &[Vec<f32>],
    active: &[bool],
    seeds: Vec<(ValueId, Vec<f32>)>,
) -> Vec<f32> {
    let batch = active.len();
    let n = g.values[g.input].len();
    let idx: Vec<usize> = (0..batch).filter(|&s| active[s]).collect();
    if idx.len() == batch {
        return grad::backward_batch(g, values, batch, seeds);
    }
    let mut dx = alloc::vec![0.0f32; n * batch];
    if idx.is_empty() {
        return dx;
    }
    let pick = |v: ValueId, data: &[f32]| -> Vec<f32> {
        let len = g.values[v].len();
        idx.iter()
            .flat_map(|&s| data[s * len..(s + 1) * len].iter().copied())
            .collect()
    };
    let sub_values: Vec<Vec<f32>> = values
        .iter()
        .enumerate()
        .map(|(v, data)| {
            if data.is_empty() {
                Vec::new()
            } else {
                pick(v, data)
            }
        })
        .collect();
    let sub_seeds = seeds.into_iter().map(|(v, d)| (v, pick(v, &d))).collect();
    let sub = grad::backward_batch(g, &sub_values, idx.len(), sub_seeds);
    for (&s, d) in idx.iter().zip(sub.chunks_exact(n)) {
        dx[s * n..(s + 1) * n].copy_from_slice(d);
    }
    dx
}

/// Gradient seeds of the weighted BN loss on each BN input, for a chunk of probes.
fn bn_seeds(targets: &[BnTarget], values: &[Vec<f32>], weight: f32) -> Vec<(ValueId, Vec<f32>)> {
    targets
        .iter()
        .map(|t| {
            let xs = &values[t.value];
            let mut d = alloc::vec![0.0f32; xs.len()];
            for (i, (d, x)) in d
                .chunks_exact_mut(t.inner)
                .zip(xs.chunks_exact(t.inner))
                .enumerate()
            {
                let c = i % t.channels;
                let (a, b, mean) = (t.coef_mean[c], t.coef_dev[c], t.mean[c]);
                for (d, &x) in d.iter_mut().zip(x) {
                    *d = weight * (a + b * (x - mean));
                }
            }
            (t.value, d)
        })
        .collect()
}

/// Batch statistics of every BN layer's input over all probes, the matching loss, and the
/// per-channel gradient coefficients: for `L = ‖m - μ‖ + ‖v - σ²‖` over N = probes × positions
/// elements, `dL/dx = (m - μ)/(‖m - μ‖ N) + 2 (v - σ²)/(‖v - σ²‖ N) (x - m)`.
fn bn_targets(g: &Graph, bn: &[(usize, ValueId)], probes: &Probes) -> (Vec<BnTarget>, f32) {
    let count = probes.count();
    let layout: Vec<(usize, usize)> = bn
        .iter()
        .map(|&(_, v)| {
            let s = g.shape(v);
            (s[1], s[2..].iter().product::<usize>().max(1))
        })
        .collect();
    let width: usize = layout.iter().map(|(c, _)| 2 * c).sum();
    // Per probe: for each layer, per channel sum and sum of squares (f64).
    // Per probe, for each layer: per-channel sums and sums of squares (f64), reduced in
    // probe order so the result does not depend on the chunking.
    let n_in = probes.sample_len;
    let mut per_chunk: Vec<Vec<f64>> = alloc::vec![Vec::new(); count.div_ceil(chunk_len(count))];
    for_each_probe(&mut per_chunk, |chunk| {
        let first = chunk * chunk_len(count);
        let batch = chunk_len(count).min(count - first);
        let mut acc = alloc::vec![0.0f64; width * batch];
        let xs = &probes.data[first * n_in..(first + batch) * n_in];
        let Ok(values) = grad::forward_batch(g, xs, batch) else {
            return acc;
        };
        for (s, acc) in acc.chunks_exact_mut(width).enumerate() {
            let mut at = 0;
            for (&(_, v), &(channels, inner)) in bn.iter().zip(&layout) {
                let sample = &values[v][s * channels * inner..(s + 1) * channels * inner];
                for (c, xs) in sample.chunks_exact(inner).enumerate() {
                    let (mut sum, mut sq) = (0.0f64, 0.0f64);
                    for &x in xs {
                        sum += x as f64;
                        sq += x as f64 * x as f64;
                    }
                    acc[at + c] = sum;
                    acc[at + channels + c] = sq;
                }
                at += 2 * channels;
            }
        }
        acc
    });
    let mut total = alloc::vec![0.0f64; width];
    for p in per_chunk.iter().flat_map(|c| c.chunks_exact(width)) {
        total.iter_mut().zip(p).for_each(|(t, &v)| *t += v);
    }
    let mut targets = Vec::new();
    let mut loss = 0.0f32;
    let mut at = 0;
    for (&(node, value), &(channels, inner)) in bn.iter().zip(&layout) {
        let Op::BatchNorm(b) = &g.nodes[node].op else {
            continue;
        };
        let Some((mu, var)) = &b.stats else { continue };
        let n = (count * inner) as f64;
        let mean: Vec<f64> = (0..channels).map(|c| total[at + c] / n).collect();
        let variance: Vec<f64> = (0..channels)
            .map(|c| (total[at + channels + c] / n - mean[c] * mean[c]).max(0.0))
            .collect();
        let dm: Vec<f64> = (0..channels).map(|c| mean[c] - mu[c] as f64).collect();
        let dv: Vec<f64> = (0..channels).map(|c| variance[c] - var[c] as f64).collect();
        let nm = libm::sqrt(dm.iter().map(|d| d * d).sum());
        let nv = libm::sqrt(dv.iter().map(|d| d * d).sum());
        loss += (nm + nv) as f32;
        targets.push(BnTarget {
            value,
            channels,
            inner,
            mean: mean.iter().map(|&m| m as f32).collect(),
            coef_mean: dm
                .iter()
                .map(|&d| (d / (nm.max(1e-12) * n)) as f32)
                .collect(),
            coef_dev: dv
                .iter()
                .map(|&d| (2.0 * d / (nv.max(1e-12) * n)) as f32)
                .collect(),
        });
        at += 2 * channels;
    }
    (targets, loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Activation, BatchNorm, Conv2d, Dense};
    use crate::probes::SplitMix64;

    /// conv → BatchNorm (with running stats) → ReLU → conv → BatchNorm → ReLU → GAP → dense,
    /// with `classes` outputs (a non-classifier when 1).
    fn bn_graph(classes: usize) -> Graph {
        let mut rng = SplitMix64(3);
        let mut g = Graph::new("x", alloc::vec![1, 2, 6, 6]);
        let conv = |rng: &mut SplitMix64, cin: usize, cout: usize| {
            Conv2d::same_3x3(cin, cout, 1, rng.vec(cout * cin * 9, 0.5))
        };
        let bn = |rng: &mut SplitMix64, c: usize| {
            let mean = rng.vec(c, 0.5);
            let var: Vec<f32> = (0..c).map(|_| 0.2 + rng.next_f32()).collect();
            Op::BatchNorm(BatchNorm {
                scale: var.iter().map(|v| 1.0 / libm::sqrtf(v + 1e-5)).collect(),
                shift: mean
                    .iter()
                    .zip(&var)
                    .map(|(m, v)| -m / libm::sqrtf(v + 1e-5))
                    .collect(),
                stats: Some((mean, var)),
            })
        };
        let c1 = g.push("c1", conv(&mut rng, 2, 4), &[g.input]).unwrap();
        let b1 = g.push("b1", bn(&mut rng, 4), &[c1]).unwrap();
        let r1 = g
            .push("r1", Op::Activation(Activation::Relu), &[b1])
            .unwrap();
        let c2 = g.push("c2", conv(&mut rng, 4, 5), &[r1]).unwrap();
        let b2 = g.push("b2", bn(&mut rng, 5), &[c2]).unwrap();
        let r2 = g
            .push("r2", Op::Activation(Activation::Relu), &[b2])
            .unwrap();
        let gap = g.push("gap", Op::GlobalAveragePool, &[r2]).unwrap();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, 5],
                },
                &[gap],
            )
            .unwrap();
        g.output = g
            .push(
                "fc",
                Op::Dense(Dense {
                    units: classes,
                    inputs: 5,
                    weights: rng.vec(classes * 5, 2.0),
                    bias: alloc::vec![0.0; classes],
                    activation: Activation::Identity,
                }),
                &[flat],
            )
            .unwrap();
        g.check().unwrap();
        // Running statistics of the data a "training set" would give: uniform in [0.6, 1.0]
        // (the probes start in the whole range), calibrated layer by layer.
        let data = Probes::uniform(72, 256, 0.6, 1.0, 11);
        for (node, _) in bn_layers(&g) {
            let (targets, _) = bn_targets(&g, &[(node, g.nodes[node].inputs[0])], &data);
            let mean = targets[0].mean.clone();
            let values = grad::forward_batch(&g, &data.data, 256).unwrap();
            let (c, inner) = (targets[0].channels, targets[0].inner);
            let mut var = alloc::vec![0.0f32; c];
            for (i, chunk) in values[targets[0].value].chunks_exact(inner).enumerate() {
                for &x in chunk {
                    var[i % c] += (x - mean[i % c]) * (x - mean[i % c]) / (256 * inner) as f32;
                }
            }
            let Op::BatchNorm(b) = &mut g.nodes[node].op else {
                unreachable!()
            };
            b.scale = var.iter().map(|v| 1.0 / libm::sqrtf(v + 1e-5)).collect();
            b.shift = mean.iter().zip(&b.scale).map(|(m, s)| -m * s).collect();
            b.stats = Some((mean, var));
        }
        g
    }

    #[test]
    fn auto_method_follows_what_the_model_allows() {
        let classifier = bn_graph(3);
        assert_eq!(classes(&classifier), Some(3));
        assert_eq!(bn_layers(&classifier).len(), 2);
        assert_eq!(auto_method(&classifier), SynthMethod::Both);
        let regressor = bn_graph(1);
        assert_eq!(classes(&regressor), None);
        assert_eq!(auto_method(&regressor), SynthMethod::Bn);
        let mut folded = classifier.clone();
        for n in &mut folded.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.stats = None;
            }
        }
        assert!(bn_layers(&folded).is_empty());
        assert_eq!(auto_method(&folded), SynthMethod::Invert);
        let mut plain = regressor.clone();
        plain.nodes = folded.nodes.clone();
        plain.nodes.last_mut().unwrap().op = regressor.nodes.last().unwrap().op.clone();
        assert_eq!(auto_method(&plain), SynthMethod::Uniform);
        // Asking for what is not there falls back; uniform probes are the seeded noise.
        let opts = SynthOptions {
            count: 8,
            steps: 5,
            method: SynthMethod::Bn,
            ..Default::default()
        };
        let (p, r) = synthesize_with_report(&plain, &opts);
        assert_eq!(r.method, SynthMethod::Uniform);
        assert_eq!(p, Probes::uniform(72, 8, 0.0, 1.0, 0));
    }

    #[test]
    fn bn_loss_gradient_matches_finite_differences() {
        let g = bn_graph(3);
        let bn = bn_layers(&g);
        let mut rng = SplitMix64(9);
        let count = 3;
        let data: Vec<f32> = (0..72 * count).map(|_| rng.next_f32()).collect();
        let probes = Probes::from_batch(data.clone(), 72).unwrap();
        let (targets, _) = bn_targets(&g, &bn, &probes);
        let values = grad::forward_batch(&g, &data, count).unwrap();
        let seeds = bn_seeds(&targets, &values, 1.0);
        let analytic = grad::backward_batch(&g, &values, count, seeds);
        let loss = |d: &[f32]| -> f64 {
            bn_targets(&g, &bn, &Probes::from_batch(d.to_vec(), 72).unwrap()).1 as f64
        };
        let scale = analytic.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let mut kinks = 0;
        for i in (0..data.len()).step_by(5) {
            let fd = |eps: f32| {
                let (mut p, mut m) = (data.clone(), data.clone());
                p[i] += eps;
                m[i] -= eps;
                (loss(&p) - loss(&m)) / (2.0 * eps as f64)
            };
            let (a, b) = (fd(2e-3), fd(1e-3));
            if (a - b).abs() as f32 > 0.05 * scale {
                kinks += 1;
                continue;
            }
            assert!(
                (a as f32 - analytic[i]).abs() <= 0.05 * scale,
                "probe value {i}: finite difference {a}, analytic {} (scale {scale})",
                analytic[i]
            );
        }
        assert!(kinks <= 3, "{kinks} kinks");
    }

    #[test]
    fn bn_matching_pulls_batch_statistics_to_the_running_ones() {
        for classes in [1, 3] {
            let g = bn_graph(classes);
            let start = bn_targets(&g, &bn_layers(&g), &Probes::uniform(72, 64, 0.0, 1.0, 0)).1;
            let opts = SynthOptions {
                count: 64,
                steps: 200,
                lr: 0.02,
                method: auto_method(&g),
                ..Default::default()
            };
            let (p, r) = synthesize_with_report(&g, &opts);
            assert!(
                r.bn_loss < 0.1 * start,
                "{classes} classes: BN loss {} from {start}",
                r.bn_loss
            );
            assert!(p.data.iter().all(|v| (0.0..=1.0).contains(v)));
            assert!(!p.off_distribution, "fitted to the data's statistics");
            if classes > 1 {
                assert_eq!(r.method, SynthMethod::Both);
                assert!(r.on_target >= 48, "{} of 64 on target", r.on_target);
            } else {
                assert_eq!(r.method, SynthMethod::Bn);
            }
        }
    }

    #[test]
    fn inversion_is_reproducible_and_reaches_its_targets() {
        let mut g = bn_graph(4);
        for n in &mut g.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.stats = None;
            }
        }
        let opts = SynthOptions {
            count: 40,
            steps: 100,
            lr: 0.05 / 6.0,
            input_range: (-3.0, 3.0),
            seed: 5,
            ..Default::default()
        };
        let (a, r) = synthesize_with_report(&g, &opts);
        assert_eq!(r.method, SynthMethod::Invert);
        assert!(
            a.off_distribution,
            "the model's idea of its classes, not the data"
        );
        // A random model: some class regions are small, but most probes reach theirs (noise
        // hits about one in four).
        assert!(r.on_target >= 28, "{} of 40 on target: {r:?}", r.on_target);
        assert!(a.data.iter().all(|v| (-3.0..=3.0).contains(v)));
        assert_ne!(a, Probes::uniform(72, 40, -3.0, 3.0, 5));
        let b = synthesize(&g, &opts);
        assert_eq!(a, b, "same options, same probes");
        let c = synthesize(&g, &SynthOptions { seed: 6, ..opts });
        assert_ne!(a, c);
    }

    #[test]
    fn beyond_the_work_budget_probes_are_derived_from_optimised_ones() {
        let mut g = bn_graph(4);
        for n in &mut g.nodes {
            if let Op::BatchNorm(b) = &mut n.op {
                b.stats = None;
            }
        }
        let full = SynthOptions {
            count: 8,
            steps: 60,
            lr: 0.05 / 6.0,
            input_range: (-3.0, 3.0),
            seed: 3,
            work_macs: u64::MAX,
            ..Default::default()
        };
        // A budget that pays for no probe: the minimum (two per class) is optimised.
        let capped = SynthOptions {
            count: 40,
            work_macs: 1,
            ..full.clone()
        };
        assert_eq!(optimised_count(&g, &capped), 8);
        let (a, r) = synthesize_with_report(&g, &capped);
        assert_eq!((r.count, r.optimised, a.count()), (40, 8, 40));
        // The optimised ones are exactly those an unbudgeted synthesis of 8 gives.
        let (b, rb) = synthesize_with_report(&g, &full);
        assert_eq!(&a.data[..8 * 72], &b.data[..]);
        assert!(
            r.on_target >= rb.on_target,
            "derived probes add hits: {r:?}"
        );
        assert!(a.data.iter().all(|v| (-3.0..=3.0).contains(v)));
        // Derived probes are new inputs, not copies.
        for j in 8..40 {
            assert!(
                (0..8).all(|i| a.sample(i) != a.sample(j)),
                "probe {j} is a copy"
            );
        }
        assert_eq!(a, synthesize(&g, &capped), "same options, same probes");
    }

    #[test]
    fn jitter_rolls_by_up_to_an_eighth_of_the_image_and_back() {
        let mut rng = SplitMix64(8);
        // NCHW 16×9: up to 2 rows and 1 column either way.
        let shape = [1, 2, 16, 9];
        let x = rng.vec(2 * 16 * 9, 1.0);
        let mut offsets = alloc::collections::BTreeSet::new();
        for step in 0..100 {
            let by = jitter(3, 7, step, &shape, (2, 3));
            assert_eq!(by, jitter(3, 7, step, &shape, (2, 3)), "seeded");
            assert!(by[0] <= 2 || by[0] >= 14, "{by:?}");
            assert!(by[1] <= 1 || by[1] == 8, "{by:?}");
            offsets.insert(by);
            let rolled = roll_all(&shape, (2, 3), &x, &[by], false);
            // Channel 1, row 5, column 4 moves by `by`, wrapping round.
            let to = (16 + (5 + by[0]) % 16) * 9 + (4 + by[1]) % 9;
            assert_eq!(rolled[to], x[(16 + 5) * 9 + 4]);
            assert_eq!(roll_all(&shape, (2, 3), &rolled, &[by], true), x);
        }
        assert_eq!(offsets.len(), 15, "every offset of -2..=2 × -1..=1");
        // NHWC: the spatial axes are 1 and 2; channels stay together.
        let shape = [1, 8, 8, 3];
        let x = rng.vec(8 * 8 * 3, 1.0);
        let rolled = roll_all(&shape, (1, 2), &x, &[[1, 7]], false);
        // Pixel (0, 0) moves to row 1, column 7.
        assert_eq!(&rolled[(8 + 7) * 3..(8 + 8) * 3], &x[..3]);
        assert_eq!(roll_all(&shape, (1, 2), &rolled, &[[1, 7]], true), x);
    }

    /// `layout` ops from `input` to a 3×3 convolution, then global pooling and a dense layer.
    fn image_graph(input: &[usize], layout: &[Op]) -> Graph {
        let mut g = Graph::new("x", input.to_vec());
        let mut v = g.input;
        for (i, op) in layout.iter().enumerate() {
            v = g
                .push(alloc::format!("layout{i}"), op.clone(), &[v])
                .unwrap();
        }
        let cin = g.shape(v)[1];
        let conv = Conv2d::same_3x3(cin, 2, 1, alloc::vec![0.1; 2 * cin * 9]);
        let c = g.push("conv", conv, &[v]).unwrap();
        let gap = g.push("gap", Op::GlobalAveragePool, &[c]).unwrap();
        let flat = g
            .push(
                "flat",
                Op::Reshape {
                    shape: alloc::vec![1, 2],
                },
                &[gap],
            )
            .unwrap();
        g.output = g
            .push(
                "fc",
                Op::Dense(Dense {
                    units: 3,
                    inputs: 2,
                    weights: alloc::vec![0.5; 6],
                    bias: alloc::vec![0.0; 3],
                    activation: Activation::Identity,
                }),
                &[flat],
            )
            .unwrap();
        g.check().unwrap();
        g
    }

    #[test]
    fn spatial_axes_follow_layout_operators_to_the_convolution() {
        // NCHW straight into the convolution.
        assert_eq!(spatial_axes(&image_graph(&[1, 3, 8, 6], &[])), Some((2, 3)));
        // NHWC through a transpose (tf2onnx on several channels).
        let nhwc = Op::Transpose {
            perm: alloc::vec![0, 3, 1, 2],
        };
        assert_eq!(
            spatial_axes(&image_graph(&[1, 8, 6, 3], &[nhwc])),
            Some((1, 2))
        );
        // One-channel NHWC through a reshape to NCHW (tf2onnx on a grey image; the importer
        // also turns a transpose that only moves the unit axis into one): height and width
        // are input axes 1 and 2, not 2 and 3 (width and the unit channel).
        let to_nchw = Op::Reshape {
            shape: alloc::vec![1, 1, 8, 6],
        };
        let g = image_graph(&[1, 8, 6, 1], &[to_nchw]);
        assert_eq!(spatial_axes(&g), Some((1, 2)));
        // A reshape that moves elements (8×6 read as 6×8) is not followed.
        let scramble = Op::Reshape {
            shape: alloc::vec![1, 1, 6, 8],
        };
        assert_eq!(
            spatial_axes(&image_graph(&[1, 8, 6, 1], &[scramble])),
            Some((2, 3))
        );
        // Not an image.
        assert_eq!(spatial_axes(&bn_graph(3)), Some((2, 3)));
        let mut flat = Graph::new("x", alloc::vec![1, 4]);
        flat.output = flat
            .push("relu", Op::Activation(Activation::Relu), &[flat.input])
            .unwrap();
        assert_eq!(spatial_axes(&flat), None);
    }

    #[test]
    fn total_variation_gradient_matches_finite_differences() {
        let shape = [1, 2, 4, 3];
        let mut rng = SplitMix64(4);
        let x = rng.vec(24, 1.0);
        let mut grad = alloc::vec![0.0; 24];
        let tv = total_variation(&shape, (2, 3), &x, 1.0, &mut grad);
        assert!(tv > 0.0);
        for i in 0..24 {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += 1e-3;
            m[i] -= 1e-3;
            let mut sink = alloc::vec![0.0; 24];
            let fd = (total_variation(&shape, (2, 3), &p, 1.0, &mut sink)
                - total_variation(&shape, (2, 3), &m, 1.0, &mut sink))
                / 2e-3;
            assert!((fd - grad[i]).abs() < 1e-3, "{fd} vs {}", grad[i]);
        }
    }
}
