//! Host speed, side by side in one run: paoding-runtime against tract's optimized plan
//! (`into_optimized()?.into_runnable()?`, batch 1) on every fixture model and the shared
//! MLPerf Tiny models. Prints the time per inference and the ratio tract / runtime
//! (> 1 means the runtime is faster).
//!
//! `cargo bench -p paoding-runtime --bench vs_tract` (`ONLY=name`: the models whose name
//! contains it; `PAODING_MLPERF_DIR=DIR`: also the int8 models in DIR, as
//! tests/fixtures/qdq/mlperf_tiny.py converts MLPerf Tiny's).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paoding_core::{blob, plan::MemoryPlan};
use paoding_runtime::Model;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

fn fixtures() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    let list: serde_json::Value = serde_json::from_str(&text).expect("manifest parses");
    let mut out: Vec<(String, PathBuf)> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            let f = e["file"].as_str().expect("file").to_string();
            (f.clone(), dir.join(f))
        })
        .collect();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models");
    for f in ["ad01_fp32.onnx", "kws_dscnn.onnx"] {
        if shared.join(f).is_file() {
            out.push((format!("{f} (shared)"), shared.join(f)));
        }
    }
    out
}

/// Calls of `f` that take about 10 ms.
fn calls_per_round(f: &mut impl FnMut()) -> u32 {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(10) {
        f();
        n += 1;
    }
    n.max(5)
}

/// Median time per call of `a` and of `b`, over 15 rounds of each taken in turn (a, b, a,
/// b, ...), so that a change in the machine's load falls on both alike.
fn time_pair(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (na, nb) = (calls_per_round(&mut a), calls_per_round(&mut b));
    let round = |f: &mut dyn FnMut(), n: u32| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed() / n
    };
    let (mut ta, mut tb): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        ta.push(round(&mut a, na));
        tb.push(round(&mut b, nb));
    }
    ta.sort();
    tb.sort();
    (ta[ta.len() / 2], tb[tb.len() / 2])
}

/// One line of the table: both times and tract's over ours.
fn print_row(name: &str, ours: Duration, theirs: Duration) {
    println!(
        "{:<34} {:>9.2} µs {:>9.2} µs {:>7.2}x",
        name,
        ours.as_secs_f64() * 1e6,
        theirs.as_secs_f64() * 1e6,
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

/// The int8 models: MLPerf Tiny's quantized keyword spotter and the QDQ fixtures (TFLite's
/// conversions of MLPerf Tiny's models, onnxruntime's and PyTorch's quantizations). paoding
/// runs each as its int8 blob (`paoding run` lowers it so), tract the file itself.
fn int8_models() -> Vec<(String, PathBuf)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qdq");
    let mut out: Vec<(String, PathBuf)> = [
        "ad_int8.onnx",
        "resnet_int8.onnx",
        "mobilenet_int8.onnx",
        "cnn_pool_ort_qop.onnx",
        "cnn_pool_ort_u8.onnx",
        "cnn_pool_ort_u8io.onnx",
        "cnn_torch_qnnpack.onnx",
    ]
    .iter()
    .map(|f| (format!("qdq/{f}"), dir.join(f)))
    .collect();
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models");
    let kws = shared.join("kws_dscnn_int8.onnx");
    if kws.is_file() {
        out.push(("kws_dscnn_int8.onnx (shared)".into(), kws));
    }
    // The other MLPerf Tiny int8 models, converted by tests/fixtures/qdq/mlperf_tiny.py
    // (not committed), as the qdq tests take them.
    if let Ok(dir) = std::env::var("PAODING_MLPERF_DIR") {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.retain(|f| f.extension().is_some_and(|x| x == "onnx"));
        files.sort();
        for f in files {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            out.push((format!("{} (MLPerf)", name.unwrap_or_default()), f));
        }
    }
    out
}

/// One int8 model: paoding's int8 blob against tract on the file, same inputs.
fn int8_row(name: &str, path: &Path) {
    let (bytes, _) = paoding_cli::run::onnx_blob(path, true).expect("int8 blob");
    let model = Model::from_bytes(&bytes).expect("valid blob");
    let mut arena = vec![0.0f32; model.arena_len()];
    let shape: Vec<usize> = model.input_shape().iter().map(|&d| d as usize).collect();
    let n = model.input_len();
    let codes: Vec<i8> = (0..n).map(|i| ((i * 37 % 101) as i32 - 50) as i8).collect();
    let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32) / 101.0).collect();
    let int8_io = model.input_quant().is_some();
    let mut y8 = vec![0i8; model.output_len()];
    let mut y = vec![0.0f32; model.output_len()];
    let proto = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(path)
        .expect("tract reads");
    let dt = proto
        .input_fact(0)
        .ok()
        .and_then(|f| f.datum_type.concretize())
        .unwrap_or(f32::datum_type());
    let input = if dt == i8::datum_type() {
        Tensor::from_shape(&shape, &codes).expect("tensor")
    } else if dt == u8::datum_type() {
        let u: Vec<u8> = codes.iter().map(|&c| (c as i16 + 128) as u8).collect();
        Tensor::from_shape(&shape, &u).expect("tensor")
    } else {
        Tensor::from_shape(&shape, &values).expect("tensor")
    };
    let plan = proto
        .with_input_fact(0, InferenceFact::dt_shape(dt, &shape))
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("tract loads");
    let (ours, theirs) = time_pair(
        || {
            if int8_io {
                model
                    .run_i8(black_box(&codes), &mut arena, &mut y8)
                    .expect("runs");
            } else {
                model
                    .run(black_box(&values), &mut arena, &mut y)
                    .expect("runs");
            }
            black_box((&y, &y8));
        },
        || {
            let out = plan
                .run(tvec![black_box(input.clone()).into()])
                .expect("tract runs");
            black_box(out);
        },
    );
    print_row(name, ours, theirs);
}

fn main() {
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "model", "runtime", "tract", "speedup"
    );
    let only = std::env::var("ONLY").unwrap_or_default();
    for (name, path) in fixtures() {
        if !name.contains(&only) {
            continue;
        }
        let g = paoding_cli::import::import_onnx(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .graph;
        let bytes = blob::write_blob(&g, &MemoryPlan::new(&g)).expect("blob");
        let model = Model::from_bytes(&bytes).expect("valid blob");
        let shape = g.shape(g.input).to_vec();
        let x: Vec<f32> = (0..model.input_len())
            .map(|i| ((i * 37 % 101) as f32) / 101.0)
            .collect();
        let mut arena = vec![0.0f32; model.arena_len()];
        let mut y = vec![0.0f32; model.output_len()];
        let plan = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(&path)
            .and_then(|m| m.with_input_fact(0, f32::fact(&shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract loads");
        let input = Tensor::from_shape(&shape, &x).expect("tensor");
        let (ours, theirs) = time_pair(
            || {
                model.run(black_box(&x), &mut arena, &mut y).expect("runs");
                black_box(&y);
            },
            || {
                let out = plan
                    .run(tvec![black_box(input.clone()).into()])
                    .expect("tract runs");
                black_box(out);
            },
        );
        print_row(&name, ours, theirs);
    }
    println!("\nint8 (paoding's int8 blob; tract runs the quantized file)");
    for (name, path) in int8_models() {
        if name.contains(&only) {
            int8_row(&name, &path);
        }
    }
}
