//! The runtime on real models: every fixture and both shared MLPerf Tiny models are imported,
//! written as a blob, validated and run by paoding-runtime, and must agree with the core
//! reference interpreter (1e-5 relative) and with tract on the original ONNX (1e-4 relative to
//! the output scale). The blob's arena must be the plan's, its overhead within 2 % + 512 B.

use paoding_cli::import::import_onnx;
use paoding_core::{blob, interp, ir::Graph, plan::MemoryPlan};
use paoding_runtime::Model;
use paoding_tests::*;

const SAMPLES: usize = 25;

/// Blob checks shared by every model; returns the blob.
fn blob_for(name: &str, g: &Graph) -> Vec<u8> {
    let plan = MemoryPlan::new(g);
    let bytes = blob::write_blob(g, &plan).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        bytes.len(),
        blob::blob_size(g, &plan).expect("blob_size"),
        "{name}: blob_size"
    );
    let model = Model::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(model.arena_bytes(), plan.arena_bytes, "{name}: arena");
    assert_eq!(model.input_len(), g.values[g.input].len(), "{name}");
    assert_eq!(model.output_len(), g.values[g.output].len(), "{name}");
    let weight_bytes = model.header().weights_len as usize;
    let overhead = bytes.len() - weight_bytes;
    assert!(
        overhead as f64 <= weight_bytes as f64 * 0.02 + 512.0,
        "{name}: blob overhead {overhead} B over {weight_bytes} B of weights"
    );
    println!(
        "{name}: blob {} B, weights {weight_bytes} B, overhead {overhead} B ({:.2} %), arena {} B (plan {} B, lower bound {} B)",
        bytes.len(),
        100.0 * overhead as f64 / weight_bytes.max(1) as f64,
        model.arena_bytes(),
        plan.arena_bytes,
        plan.lower_bound_bytes
    );
    bytes
}

/// Run the runtime, the reference interpreter and tract on each input and compare.
fn check_agreement(name: &str, g: &Graph, bytes: &[u8], tract: &TractModel, inputs: &[Vec<f32>]) {
    let model = Model::from_bytes(bytes).expect("valid blob");
    let mut arena = vec![f32::NAN; model.arena_len()];
    let mut out = vec![0.0f32; model.output_len()];
    let (mut worst_interp, mut worst_tract) = (0.0f32, 0.0f32);
    for x in inputs {
        // A dirty arena must not matter: every value is written before it is read.
        arena.fill(f32::NAN);
        model.run(x, &mut arena, &mut out).expect("runs");
        let reference = interp::run(g, x).expect("interpreter runs");
        worst_interp = worst_interp.max(relative_max_diff(&out, &reference));
        worst_tract = worst_tract.max(relative_max_diff(&out, &tract.run(x)));
        assert!(
            out.iter().all(|v| v.is_finite()),
            "{name}: non-finite output"
        );
    }
    println!(
        "{name}: max relative difference {worst_interp:e} vs interpreter, {worst_tract:e} vs tract"
    );
    assert!(
        worst_interp <= 1e-5,
        "{name}: runtime vs interpreter {worst_interp}"
    );
    assert!(
        worst_tract <= 1e-4,
        "{name}: runtime vs tract {worst_tract}"
    );
}

#[test]
fn every_fixture_runs_like_the_interpreter_and_tract() {
    for f in fixtures() {
        let path = fixtures_dir().join(&f.file);
        let g = import_onnx(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", f.file))
            .graph;
        let bytes = blob_for(&f.file, &g);
        let (x_shape, xs) = read_npy(&fixtures_dir().join(&f.test_x));
        let sample: usize = x_shape[1..].iter().product();
        let inputs: Vec<Vec<f32>> = xs
            .chunks_exact(sample)
            .take(SAMPLES)
            .map(<[f32]>::to_vec)
            .collect();
        assert_eq!(inputs.len(), SAMPLES, "{}", f.file);
        let tract = TractModel::load(&path, &f.input_shape);
        check_agreement(&f.file, &g, &bytes, &tract, &inputs);
    }
}

#[test]
fn shared_models_run_like_the_interpreter_and_tract() {
    for path in shared_models() {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let g = import_onnx(&path)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .graph;
        let bytes = blob_for(&name, &g);
        let shape = g.shape(g.input).to_vec();
        let n: usize = shape.iter().product();
        let inputs: Vec<Vec<f32>> = (0..4)
            .map(|seed| seeded_uniform(n, 100 + seed, -1.0, 1.0))
            .collect();
        let tract = TractModel::load(&path, &shape);
        check_agreement(&name, &g, &bytes, &tract, &inputs);
    }
}

#[test]
fn fixture_arena_equals_the_plan_lower_bound_for_chains() {
    for f in fixtures() {
        let g = import_onnx(&fixtures_dir().join(&f.file)).unwrap().graph;
        let plan = MemoryPlan::new(&g);
        let model_bytes = blob::write_blob(&g, &plan).unwrap();
        let model = Model::from_bytes(&model_bytes).unwrap();
        let residual = g.nodes.iter().any(|n| n.inputs.len() > 1);
        let bound = plan.lower_bound_bytes as f64 * if residual { 1.10 } else { 1.0 };
        assert!(
            model.arena_bytes() as f64 <= bound,
            "{}: arena {} B over the bound {bound}",
            f.file,
            model.arena_bytes()
        );
    }
}
