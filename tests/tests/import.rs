//! ONNX import on real models: every fixture (PyTorch TorchScript and dynamo exporters,
//! tf2onnx from Keras and TFLite, opset 8) and the third-party MLPerf Tiny models must import,
//! and the IR's reference interpreter must agree with tract's own inference on them.

use paoding_cli::import::import_onnx;
use paoding_core::{interp, ir::Op};
use paoding_tests::*;

const SAMPLES: usize = 40;

#[test]
fn every_fixture_matches_tract_and_keeps_its_accuracy() {
    for f in fixtures() {
        let path = fixtures_dir().join(&f.file);
        let imported = import_onnx(&path).unwrap_or_else(|e| panic!("{}: {e}", f.file));
        let g = &imported.graph;
        assert_eq!(
            g.shape(g.input),
            f.input_shape.as_slice(),
            "{}: input shape",
            f.file
        );

        let (x_shape, xs) = read_npy(&fixtures_dir().join(&f.test_x));
        let (_, ys) = read_npy(&fixtures_dir().join(&f.test_y));
        let sample: usize = x_shape[1..].iter().product();
        let tract = TractModel::load(&path, &f.input_shape);
        let mut worst = 0.0f32;
        let mut correct = 0;
        for (i, x) in xs.chunks_exact(sample).enumerate() {
            let ours = interp::run(g, x).expect("interpreter runs");
            if i < SAMPLES {
                worst = worst.max(relative_max_diff(&ours, &tract.run(x)));
            }
            correct += usize::from(argmax(&ours) == ys[i] as usize);
        }
        assert!(
            worst <= 1e-4,
            "{}: interpreter and tract differ by {worst} (relative)",
            f.file
        );
        let accuracy = correct as f64 / ys.len() as f64;
        assert!(
            (accuracy - f.onnxruntime_accuracy).abs() <= 1.0 / ys.len() as f64 + 1e-9,
            "{}: accuracy {accuracy} but onnxruntime measured {}",
            f.file,
            f.onnxruntime_accuracy
        );
    }
}

#[test]
fn third_party_models_match_tract() {
    for path in shared_models() {
        let imported = import_onnx(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let g = &imported.graph;
        let shape = g.shape(g.input).to_vec();
        let tract = TractModel::load(&path, &shape);
        let n: usize = shape.iter().product();
        for seed in 0..5 {
            let x = seeded_uniform(n, seed, -1.0, 1.0);
            let diff = relative_max_diff(&interp::run(g, &x).expect("runs"), &tract.run(&x));
            assert!(
                diff <= 1e-4,
                "{}: differs from tract by {diff}",
                path.display()
            );
        }
    }
}

#[test]
fn exporter_patterns_become_the_expected_ir() {
    let load = |file: &str| {
        import_onnx(&fixtures_dir().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .graph
    };
    let kinds =
        |g: &paoding_core::ir::Graph| g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>();

    // BatchNormalization kept by the exporter folds into the convolution: same IR as the
    // exporter's own folding.
    let kept = load("cnn_residual_bn_torch.onnx");
    let folded = load("cnn_residual_folded_torch.onnx");
    assert_eq!(kinds(&kept), kinds(&folded));
    assert!(!kinds(&kept).contains(&"BatchNorm"));
    assert!(kinds(&kept).contains(&"Add"), "the residual Add survives");

    // ReLU6 exported as Clip fuses into the depthwise convolution.
    let ds = load("dscnn_torch.onnx");
    assert!(ds.nodes.iter().any(|n| matches!(&n.op, Op::Conv2d(c) if c.groups == c.in_channels && c.groups > 1 && c.activation.name() == "relu6")));

    // Gemm and MatMul+Add both become Dense layers with fused ReLU.
    for file in ["mlp_torch.onnx", "mlp_opset8_torch.onnx"] {
        let g = load(file);
        assert_eq!(
            g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Dense(_)))
                .count(),
            4,
            "{file}"
        );
        assert_eq!(g.param_count(), 33_738, "{file}");
    }
    // int8 weights with DequantizeLinear are dequantized at import.
    let q = load("mlp_keras_int8_tf2onnx.onnx");
    assert!(q.nodes.iter().any(|n| matches!(n.op, Op::Dense(_))));

    // The dynamo exporter's ReduceMean becomes a global average pool.
    assert!(kinds(&load("cnn_dynamo_torch.onnx")).contains(&"GlobalAveragePool"));

    // The MLPerf KWS model: 22.6 k parameters, 2.66 M MACs (its published figures).
    let kws = import_onnx(&shared_models()[1]).expect("kws imports").graph;
    let cost = paoding_core::cost::ModelCost::new(&kws, Default::default());
    assert_eq!(cost.params, 22_604);
    assert!(
        (2_600_000..2_700_000).contains(&cost.macs),
        "{} MACs",
        cost.macs
    );
}
