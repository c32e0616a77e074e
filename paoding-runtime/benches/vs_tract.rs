//! Host speed, side by side in one run: paoding-runtime against tract's optimized plan
//! (`into_optimized()?.into_runnable()?`, batch 1) on every fixture model and the shared
//! MLPerf Tiny models. Prints the time per inference and the ratio tract / runtime
//! (> 1 means the runtime is faster).
//!
//! `cargo bench -p paoding-runtime --bench vs_tract`

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paoding_core::{blob, plan::MemoryPlan};
use paoding_runtime::Model;
use tract_onnx::prelude::*;

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

/// Median time per call of `f`, over rounds of about 100 ms each.
fn time(mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        f();
        n += 1;
    }
    let per_round = (n * 2).max(5);
    let mut rounds: Vec<Duration> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed() / per_round
        })
        .collect();
    rounds.sort();
    rounds[rounds.len() / 2]
}

fn main() {
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "model", "runtime", "tract", "speedup"
    );
    for (name, path) in fixtures() {
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
        let ours = time(|| {
            model.run(black_box(&x), &mut arena, &mut y).expect("runs");
            black_box(&y);
        });

        let plan = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(&path)
            .and_then(|m| m.with_input_fact(0, f32::fact(&shape).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract loads");
        let input = Tensor::from_shape(&shape, &x).expect("tensor");
        let theirs = time(|| {
            let out = plan
                .run(tvec![black_box(input.clone()).into()])
                .expect("tract runs");
            black_box(out);
        });
        println!(
            "{:<34} {:>9.2} µs {:>9.2} µs {:>7.2}x",
            name,
            ours.as_secs_f64() * 1e6,
            theirs.as_secs_f64() * 1e6,
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
