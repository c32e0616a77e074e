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
}

/// The folder holding the fixtures.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
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
