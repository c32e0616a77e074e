//! Shared helpers of the end-to-end tests: where the fixtures are, what the manifest says
//! about them, reading `.npy` inputs, and running tract as the independent reference.

pub mod onnx_builder;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tract_onnx::prelude::*;

/// One fixture model, as described by `tests/fixtures/manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fixture {
    /// ONNX file name inside the fixtures folder.
    pub file: String,
    /// Which exporter produced it.
    pub exporter: String,
    /// Input shape with batch 1.
    pub input_shape: Vec<usize>,
    /// `.npy` file with the test inputs, in the model's own layout.
    pub test_x: String,
    /// `.npy` file with the test labels.
    pub test_y: String,
    /// Accuracy onnxruntime measured on the test split.
    pub onnxruntime_accuracy: f64,
    /// Range of the model's inputs on its data, `[lo, hi]`.
    pub input_range: (f32, f32),
}

/// The folder holding the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// The folder of the models trained apart from the fixtures, that nothing is tuned on.
pub fn unseen_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("unseen")
}

/// Every model listed in `tests/unseen/manifest.json`.
pub fn unseen_models() -> Vec<Fixture> {
    let text =
        std::fs::read_to_string(unseen_dir().join("manifest.json")).expect("unseen/manifest.json");
    serde_json::from_str(&text).expect("unseen/manifest.json parses")
}

/// The third-party models shared with the team (MLPerf Tiny reference models).
pub fn shared_models() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models");
    let models: Vec<PathBuf> = ["ad01_fp32.onnx", "kws_dscnn.onnx"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    for m in &models {
        assert!(
            m.is_file(),
            "shared model {} is missing: CI must run beside ../shared",
            m.display()
        );
    }
    models
}

/// Every fixture listed in the manifest.
pub fn fixtures() -> Vec<Fixture> {
    let text = std::fs::read_to_string(fixtures_dir().join("manifest.json"))
        .expect("fixtures/manifest.json");
    let list: Vec<Fixture> = serde_json::from_str(&text).expect("manifest.json parses");
    assert!(
        list.len() >= 8,
        "the manifest lists {} fixtures",
        list.len()
    );
    list
}

/// A `.npy` array as (shape, f32 values); integer arrays are converted.
pub fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).expect("valid npy");
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let values = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float => {
            npy.into_vec::<f32>().expect("f32 npy")
        }
        _ => npy
            .into_vec::<i64>()
            .expect("i64 npy")
            .into_iter()
            .map(|v| v as f32)
            .collect(),
    };
    (shape, values)
}

/// Seeded uniform values in [lo, hi) (a small xorshift: tests must not depend on a crate's
/// random stream changing between versions).
pub fn seeded_uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// tract's own optimized plan of an ONNX file, batch fixed to 1.
#[allow(missing_debug_implementations)] // tract's plan has no Debug
pub struct TractModel {
    plan: std::sync::Arc<TypedSimplePlan>,
    shape: Vec<usize>,
}

impl TractModel {
    /// Load `path` with the given input shape.
    pub fn load(path: &Path, shape: &[usize]) -> Self {
        let plan = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(path)
            .and_then(|m| m.with_input_fact(0, f32::fact(shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap_or_else(|e| panic!("tract loads {}: {e:#}", path.display()));
        TractModel {
            plan,
            shape: shape.to_vec(),
        }
    }

    /// Run one sample.
    pub fn run(&self, x: &[f32]) -> Vec<f32> {
        let input = Tensor::from_shape(&self.shape, x).expect("input tensor");
        let out = self.plan.run(tvec![input.into()]).expect("tract runs");
        out[0]
            .to_plain_array_view::<f32>()
            .expect("f32 output")
            .iter()
            .copied()
            .collect()
    }
}

/// Largest absolute difference between two outputs, relative to the reference's scale
/// (its largest magnitude, at least 1).
pub fn relative_max_diff(got: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(got.len(), reference.len(), "output lengths differ");
    let scale = reference.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Index of the largest value.
pub fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// A 3×3 convolution, stride 1, padded to keep the size, followed by ReLU (`weights`:
/// `cout * cin * 9`, `bias`: `cout`).
pub fn conv3x3_relu(
    cin: usize,
    cout: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
) -> paoding_core::ir::Op {
    use paoding_core::ir::{Activation, Conv2d, Op};
    Op::Conv2d(Conv2d {
        out_channels: cout,
        in_channels: cin,
        kernel: [3, 3],
        stride: [1, 1],
        dilation: [1, 1],
        padding: [1, 1, 1, 1],
        groups: 1,
        weights,
        bias,
        activation: Activation::Relu,
    })
}

/// A CNN of about one million parameters on a 3×32×32 input (CIFAR-sized), with seeded
/// random weights: for speed measurements only (its outputs mean nothing).
///
/// conv 3→32, pool, conv 32→64, pool, conv 64→128, conv 128→256, pool, conv 256→256,
/// global average pool, dense 256→10; ReLU after every convolution.
pub fn synthetic_cnn_1m(seed: u64) -> paoding_core::ir::Graph {
    use paoding_core::ir::{Activation, Dense, Graph, Op, Pool};
    let mut g = Graph::new("image", vec![1, 3, 32, 32]);
    let mut x = g.input;
    let mut s = seed;
    let mut conv = |g: &mut Graph, x: usize, cin: usize, cout: usize, name: &str| {
        s += 1;
        let fan_in = (cin * 9) as f32;
        let weights = seeded_uniform(cout * cin * 9, s, -1.0, 1.0)
            .iter()
            .map(|w| w * (6.0 / fan_in).sqrt())
            .collect();
        let op = conv3x3_relu(
            cin,
            cout,
            weights,
            seeded_uniform(cout, s + 1000, -0.1, 0.1),
        );
        g.push(name, op, &[x]).expect("conv")
    };
    let pool = |g: &mut Graph, x: usize, name: &str| {
        let p = Pool {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0; 4],
            count_include_pad: false,
        };
        g.push(name, Op::MaxPool(p), &[x]).expect("pool")
    };
    x = conv(&mut g, x, 3, 32, "conv1");
    x = pool(&mut g, x, "pool1");
    x = conv(&mut g, x, 32, 64, "conv2");
    x = pool(&mut g, x, "pool2");
    x = conv(&mut g, x, 64, 128, "conv3");
    x = conv(&mut g, x, 128, 256, "conv4");
    x = pool(&mut g, x, "pool3");
    x = conv(&mut g, x, 256, 256, "conv5");
    x = g.push("gap", Op::GlobalAveragePool, &[x]).expect("gap");
    x = g
        .push(
            "flatten",
            Op::Reshape {
                shape: vec![1, 256],
            },
            &[x],
        )
        .expect("flatten");
    let fc = Dense {
        units: 10,
        inputs: 256,
        weights: seeded_uniform(2560, seed + 99, -0.1, 0.1),
        bias: vec![0.0; 10],
        activation: Activation::Identity,
    };
    g.output = g.push("fc", Op::Dense(fc), &[x]).expect("fc");
    g.check().expect("valid");
    g
}

/// A fixture model imported, with its test inputs and labels.
pub fn load_fixture(file: &str) -> (paoding_core::ir::Graph, Vec<f32>, Vec<usize>) {
    let f = fixtures()
        .into_iter()
        .find(|f| f.file == file)
        .expect("fixture");
    let g = paoding_cli::import::import_onnx(&fixtures_dir().join(file))
        .expect("imports")
        .graph;
    let xs = read_npy(&fixtures_dir().join(&f.test_x)).1;
    let ys = read_npy(&fixtures_dir().join(&f.test_y))
        .1
        .iter()
        .map(|&y| y as usize)
        .collect();
    (g, xs, ys)
}

/// Top-1 accuracy of a graph on labelled inputs (ten classes or more read from the output).
pub fn accuracy_on(g: &paoding_core::ir::Graph, xs: &[f32], ys: &[usize]) -> f64 {
    let out = paoding_core::interp::run_batch(g, xs).expect("runs");
    paoding_core::fidelity::accuracy(&out, g.values[g.output].len(), ys)
}

/// The fixtures of the README's data-free accuracy table (`tests/tests/synth.rs`): file,
/// fraction of the parameters removed, and the README's mean accuracy (%) with 512 inverted
/// probes.
pub const FIXTURE_ACCURACY_TABLE: [(&str, f64, f64); 3] = [
    ("cnn_residual_bn_torch.onnx", 0.40, 98.3),
    ("dscnn_torch.onnx", 0.40, 95.3),
    ("mlp_torch.onnx", 0.737, 96.7),
];

/// Accuracy after removing `fraction` of the parameters (merge + refit, uniform scope) with
/// `probes` for the refit and for choosing the units no merge compensates.
pub fn pruned_accuracy(
    g: &paoding_core::ir::Graph,
    xs: &[f32],
    ys: &[usize],
    fraction: f64,
    probes: &paoding_core::probes::Probes,
) -> f64 {
    use paoding_core::prune::{PruneOptions, Pruner};
    let pruner = Pruner::new(g, &PruneOptions::default());
    let ratio = pruner.ratio_for_param_fraction(fraction).expect("ratio");
    let p = pruner
        .apply(&pruner.counts_for_ratio(ratio), probes)
        .expect("prunes");
    accuracy_on(&p.graph, xs, ys)
}

/// Accuracy after removing `fraction` of the parameters as `paoding prune --probes invert`
/// does it: refit on [`inverted`] probes, and where probes choose units, on probes of their
/// own taken deeper into their class ([`paoding_core::synth::selection_options`]).
pub fn inverted_pruned_accuracy(
    g: &paoding_core::ir::Graph,
    xs: &[f32],
    ys: &[usize],
    fraction: f64,
    seed: u64,
) -> f64 {
    use paoding_core::prune::{PruneOptions, Pruner};
    use paoding_core::synth;
    let pruner = Pruner::new(g, &PruneOptions::default());
    let ratio = pruner.ratio_for_param_fraction(fraction).expect("ratio");
    let probes = inverted(g, seed);
    let selection = pruner
        .selects_by_probes()
        .then(|| synth::synthesize(g, &synth::selection_options(&inversion(seed))));
    let p = pruner
        .apply_with(
            &pruner.counts_for_ratio(ratio),
            &probes,
            selection.as_ref().unwrap_or(&probes),
        )
        .expect("prunes");
    accuracy_on(&p.graph, xs, ys)
}

/// 512 probes inverted from `g` alone with the refit's default settings.
pub fn inverted(g: &paoding_core::ir::Graph, seed: u64) -> paoding_core::probes::Probes {
    paoding_core::synth::synthesize(g, &inversion(seed))
}

/// The options of [`inverted`].
fn inversion(seed: u64) -> paoding_core::synth::SynthOptions {
    paoding_core::synth::SynthOptions {
        count: 512,
        seed,
        method: paoding_core::synth::SynthMethod::Invert,
        ..Default::default()
    }
}
