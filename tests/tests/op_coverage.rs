//! Operator configurations no fixture has (dilation, asymmetric and SAME padding, ceil-mode
//! pools, grouped convolutions, Pad, Concat, Transpose, Sigmoid/Tanh): each built as a tiny
//! ONNX model, imported, and checked against tract.

use std::path::Path;

use paoding_cli::import::import_onnx;
use paoding_core::interp;
use paoding_tests::onnx_builder::{Attr, OnnxBuilder};
use paoding_tests::*;

fn check(builder: &OnnxBuilder, output: &str, input_shape: &[usize], what: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, builder.encode(output)).expect("write");
    let g = import_onnx(&path)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .graph;
    let tract = TractModel::load(&path, input_shape);
    let n: usize = input_shape.iter().product();
    for seed in 0..3 {
        let x = seeded_uniform(n, seed, -1.0, 1.0);
        let diff = relative_max_diff(&interp::run(&g, &x).expect("runs"), &tract.run(&x));
        assert!(diff <= 1e-5, "{what}: differs from tract by {diff}");
    }
}

/// One convolution with bias over `input` (`[1, C, ...]`): `geometry` is the kernel shape,
/// strides and dilations, one value per spatial axis; weights seeded by `seed`.
fn conv_model<const D: usize>(
    input: &[i64],
    cout: i64,
    groups: i64,
    geometry: [[i64; D]; 3],
    pads: &[i64],
    seed: u64,
) -> OnnxBuilder {
    let [kernel, strides, dilations] = geometry;
    let cin = input[1];
    let mut b = OnnxBuilder::new(input, 13);
    let w_dims: Vec<i64> = [cout, cin / groups].into_iter().chain(kernel).collect();
    let w_len = w_dims.iter().product::<i64>() as usize;
    b.weight("W", &w_dims, seeded_uniform(w_len, seed, -1.0, 1.0));
    b.weight(
        "B",
        &[cout],
        seeded_uniform(cout as usize, seed + 1, -1.0, 1.0),
    );
    b.node(
        "Conv",
        &["x", "W", "B"],
        "y",
        &[
            ("kernel_shape", Attr::Ints(kernel.to_vec())),
            ("strides", Attr::Ints(strides.to_vec())),
            ("dilations", Attr::Ints(dilations.to_vec())),
            ("pads", Attr::Ints(pads.to_vec())),
            ("group", Attr::Int(groups)),
        ],
    );
    b
}

#[test]
fn convolutions_in_every_configuration_match_tract() {
    let mut seed = 100;
    for (cin, cout, groups) in [(3, 4, 1), (4, 4, 4), (4, 6, 2), (2, 4, 2)] {
        for (k, stride, dilation) in [(1, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 2), (2, 2, 1)] {
            for pads in [[0, 0, 0, 0], [1, 1, 1, 1], [0, 1, 2, 0]] {
                seed += 1;
                let geometry = [[k, k], [stride, stride], [dilation, dilation]];
                let b = conv_model(&[1, cin, 9, 7], cout, groups, geometry, &pads, seed);
                let what = format!(
                    "conv {cin}->{cout} g{groups} k{k} s{stride} d{dilation} pads {pads:?}"
                );
                check(&b, "y", &[1, cin as usize, 9, 7], &what);
            }
        }
    }
    // SAME padding as Keras exports it.
    let mut b = OnnxBuilder::new(&[1, 2, 8, 5], 13);
    b.weight("W", &[3, 2, 3, 3], seeded_uniform(54, 7, -1.0, 1.0));
    b.node(
        "Conv",
        &["x", "W"],
        "y",
        &[
            ("auto_pad", Attr::Str("SAME_UPPER")),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    );
    check(&b, "y", &[1, 2, 8, 5], "SAME_UPPER stride 2");
}

#[test]
fn pools_in_every_configuration_match_tract() {
    for op in ["MaxPool", "AveragePool"] {
        for (k, stride, pads, ceil, include_pad) in [
            (2, 2, [0, 0, 0, 0], 0, 0),
            (3, 2, [0, 0, 0, 0], 1, 0),
            (3, 1, [1, 1, 1, 1], 0, 0),
            (3, 2, [1, 1, 1, 1], 0, 1),
            (2, 1, [0, 0, 1, 1], 0, 0),
        ] {
            if op == "MaxPool" && include_pad == 1 {
                continue;
            }
            let mut b = OnnxBuilder::new(&[1, 3, 7, 6], 13);
            let mut attrs = vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(pads.to_vec())),
                ("ceil_mode", Attr::Int(ceil)),
            ];
            if op == "AveragePool" {
                attrs.push(("count_include_pad", Attr::Int(include_pad)));
            }
            b.node(op, &["x"], "y", &attrs);
            check(
                &b,
                "y",
                &[1, 3, 7, 6],
                &format!("{op} k{k} s{stride} pads {pads:?} ceil {ceil} include_pad {include_pad}"),
            );
        }
    }
    let mut b = OnnxBuilder::new(&[1, 3, 5, 4], 13);
    b.node("GlobalAveragePool", &["x"], "y", &[]);
    check(&b, "y", &[1, 3, 5, 4], "GlobalAveragePool");
    let mut b = OnnxBuilder::new(&[1, 3, 5, 4], 13);
    b.node("GlobalMaxPool", &["x"], "y", &[]);
    check(&b, "y", &[1, 3, 5, 4], "GlobalMaxPool");
}

#[test]
fn layout_and_activation_operators_match_tract() {
    // Pad -> Conv, Sigmoid and Tanh branches concatenated on channels, transposed, flattened,
    // a dense layer and a softmax.
    let mut b = OnnxBuilder::new(&[1, 2, 4, 4], 13);
    b.ints("pads", &[0, 0, 1, 2, 0, 0, 0, 1]);
    b.node("Pad", &["x", "pads"], "p", &[]);
    b.weight("W", &[3, 2, 2, 2], seeded_uniform(24, 3, -1.0, 1.0));
    b.node(
        "Conv",
        &["p", "W"],
        "c",
        &[("kernel_shape", Attr::Ints(vec![2, 2]))],
    );
    b.node("Sigmoid", &["c"], "s", &[]);
    b.node("Tanh", &["c"], "t", &[]);
    b.node("Concat", &["s", "t", "c"], "cat", &[("axis", Attr::Int(1))]);
    b.node(
        "Transpose",
        &["cat"],
        "tr",
        &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
    );
    b.node("Flatten", &["tr"], "f", &[("axis", Attr::Int(1))]);
    // cat is [1, 9, 4, 6]: 216 features.
    b.weight("D", &[216, 5], seeded_uniform(1080, 4, -0.2, 0.2));
    b.weight("DB", &[5], seeded_uniform(5, 5, -1.0, 1.0));
    b.node("Gemm", &["f", "D", "DB"], "g", &[]);
    b.weight("S", &[1], vec![0.5]);
    b.node("Mul", &["g", "S"], "m", &[]);
    b.node("Softmax", &["m"], "y", &[("axis", Attr::Int(1))]);
    check(
        &b,
        "y",
        &[1, 2, 4, 4],
        "pad/conv/sigmoid/tanh/concat/transpose/flatten/gemm/mul/softmax",
    );

    // Batch norm in front of a convolution stays a node of its own; a residual Add; Clip.
    let mut b = OnnxBuilder::new(&[1, 2, 5, 5], 13);
    for (name, v) in [("g", 1.5), ("be", 0.1), ("mu", 0.2), ("var", 0.7)] {
        b.weight(name, &[2], vec![v, v * 0.5]);
    }
    b.node(
        "BatchNormalization",
        &["x", "g", "be", "mu", "var"],
        "bn",
        &[],
    );
    b.weight("W", &[2, 2, 3, 3], seeded_uniform(36, 9, -1.0, 1.0));
    b.node(
        "Conv",
        &["bn", "W"],
        "c",
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    b.node("Add", &["c", "x"], "a", &[]);
    b.weight("lo", &[], vec![-0.5]);
    b.weight("hi", &[], vec![0.5]);
    b.node("Clip", &["a", "lo", "hi"], "y", &[]);
    check(&b, "y", &[1, 2, 5, 5], "batchnorm/conv/residual add/clip");
}

#[test]
fn nhwc_inputs_with_a_transpose_in_front_of_the_first_conv_match_tract() {
    // tf2onnx's pattern for a Keras model with several input channels: the NHWC input is
    // transposed to NCHW, convolved, and transposed back before the flatten.
    let mut b = OnnxBuilder::new(&[1, 6, 5, 3], 13);
    b.node(
        "Transpose",
        &["x"],
        "nchw",
        &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
    );
    b.weight("W", &[4, 3, 3, 3], seeded_uniform(108, 21, -1.0, 1.0));
    b.weight("B", &[4], seeded_uniform(4, 22, -1.0, 1.0));
    b.node(
        "Conv",
        &["nchw", "W", "B"],
        "c",
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    b.node("Relu", &["c"], "r", &[]);
    b.node(
        "Transpose",
        &["r"],
        "nhwc",
        &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
    );
    b.ints("shape", &[1, 120]);
    b.node("Reshape", &["nhwc", "shape"], "f", &[]);
    b.weight("D", &[120, 5], seeded_uniform(600, 23, -0.3, 0.3));
    b.node("MatMul", &["f", "D"], "m", &[]);
    b.weight("DB", &[5], seeded_uniform(5, 24, -1.0, 1.0));
    b.node("Add", &["m", "DB"], "y", &[]);
    check(
        &b,
        "y",
        &[1, 6, 5, 3],
        "NHWC transpose -> conv -> transpose -> flatten -> matmul+add",
    );
}

/// 1-D convolutions and pools over `[N, C, L]` (sensor and audio models): every padding,
/// stride, dilation and group configuration, SAME padding, ceil mode, both averages and a
/// global average, against tract; and the import keeps one 2-D layer per 1-D one, its
/// activation and batch norm fused (the reshapes the lowering adds collapse into the input's).
#[test]
fn one_dimensional_convolutions_and_pools_match_tract() {
    let mut seed = 300;
    for (cin, cout, groups) in [(3, 4, 1), (4, 4, 4), (4, 6, 2)] {
        for (k, stride, dilation) in [(1, 1, 1), (3, 1, 1), (5, 2, 1), (3, 1, 2)] {
            for pads in [[0, 0], [1, 1], [2, 0]] {
                seed += 1;
                let geometry = [[k], [stride], [dilation]];
                let b = conv_model(&[1, cin, 17], cout, groups, geometry, &pads, seed);
                let what = format!(
                    "conv1d {cin}->{cout} g{groups} k{k} s{stride} d{dilation} pads {pads:?}"
                );
                check(&b, "y", &[1, cin as usize, 17], &what);
            }
        }
    }
    let mut b = OnnxBuilder::new(&[1, 2, 16], 13);
    b.weight("W", &[3, 2, 4], seeded_uniform(24, 7, -1.0, 1.0));
    b.node(
        "Conv",
        &["x", "W"],
        "y",
        &[
            ("auto_pad", Attr::Str("SAME_UPPER")),
            ("strides", Attr::Ints(vec![3])),
        ],
    );
    check(&b, "y", &[1, 2, 16], "conv1d SAME_UPPER stride 3");
    for (op, extra) in [
        ("MaxPool", None),
        ("MaxPool", Some(("ceil_mode", 1))),
        ("AveragePool", Some(("count_include_pad", 0))),
        ("AveragePool", Some(("count_include_pad", 1))),
    ] {
        let mut b = OnnxBuilder::new(&[1, 3, 15], 13);
        let mut attrs = vec![
            ("kernel_shape", Attr::Ints(vec![3])),
            ("strides", Attr::Ints(vec![2])),
            ("pads", Attr::Ints(vec![1, 1])),
        ];
        if let Some((name, v)) = extra {
            attrs.push((name, Attr::Int(v)));
        }
        b.node(op, &["x"], "y", &attrs);
        check(&b, "y", &[1, 3, 15], &format!("{op} 1-D {extra:?}"));
    }
    // Conv1d + BatchNorm1d + ReLU -> MaxPool1d -> global average -> flatten -> dense: one
    // convolution (batch norm folded, ReLU fused), one pool, one average, one dense.
    let mut b = OnnxBuilder::new(&[1, 2, 20], 13);
    b.weight("W", &[4, 2, 3], seeded_uniform(24, 31, -1.0, 1.0));
    b.node(
        "Conv",
        &["x", "W"],
        "c",
        &[("pads", Attr::Ints(vec![1, 1]))],
    );
    b.weight("s", &[4], seeded_uniform(4, 32, 0.5, 1.5));
    b.weight("t", &[4], seeded_uniform(4, 33, -0.5, 0.5));
    b.weight("m", &[4], seeded_uniform(4, 34, -0.2, 0.2));
    b.weight("v", &[4], seeded_uniform(4, 35, 0.5, 1.5));
    b.node("BatchNormalization", &["c", "s", "t", "m", "v"], "n", &[]);
    b.node("Relu", &["n"], "r", &[]);
    b.node(
        "MaxPool",
        &["r"],
        "p",
        &[
            ("kernel_shape", Attr::Ints(vec![2])),
            ("strides", Attr::Ints(vec![2])),
        ],
    );
    b.node("GlobalAveragePool", &["p"], "g", &[]);
    b.node("Flatten", &["g"], "f", &[]);
    b.weight("D", &[3, 4], seeded_uniform(12, 36, -1.0, 1.0));
    b.weight("DB", &[3], seeded_uniform(3, 37, -1.0, 1.0));
    b.node("Gemm", &["f", "D", "DB"], "y", &[("transB", Attr::Int(1))]);
    check(
        &b,
        "y",
        &[1, 2, 20],
        "conv1d + batch norm + relu + pool + average + dense",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b.encode("y")).expect("write");
    let g = import_onnx(&path).expect("imports").graph;
    let ops: Vec<String> = g
        .nodes
        .iter()
        .map(|n| {
            let op = format!("{:?}", n.op);
            op.split(['(', ' ', '{'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(
        ops,
        [
            "Reshape",
            "Conv2d",
            "MaxPool",
            "GlobalAveragePool",
            "Reshape",
            "Dense"
        ],
        "{:?}",
        g.nodes.iter().map(|n| &n.op).collect::<Vec<_>>()
    );
    let conv = g.nodes.iter().find_map(|n| match &n.op {
        paoding_core::ir::Op::Conv2d(c) => Some(c),
        _ => None,
    });
    assert_eq!(
        conv.map(|c| (c.kernel, c.activation)),
        Some(([1, 3], paoding_core::ir::Activation::Relu))
    );
}

/// LeakyRelu, fused into the convolution before it and standing alone after a dense layer,
/// against tract; the same model pruned, exported and imported again keeps it; a slope that
/// is not positive is refused, naming the node.
#[test]
fn leaky_relu_matches_tract_and_survives_pruning_and_export() {
    let mut b = conv_model(
        &[1, 2, 6, 6],
        4,
        1,
        [[3, 3], [1, 1], [1, 1]],
        &[1, 1, 1, 1],
        50,
    );
    b.node("LeakyRelu", &["y"], "l", &[("alpha", Attr::Float(0.1))]);
    b.node("Flatten", &["l"], "f", &[]);
    b.weight("D", &[144, 5], seeded_uniform(720, 51, -0.2, 0.2));
    b.node("MatMul", &["f", "D"], "m", &[]);
    b.node("LeakyRelu", &["m"], "out", &[("alpha", Attr::Float(0.3))]);
    check(
        &b,
        "out",
        &[1, 2, 6, 6],
        "conv + leaky relu, dense + leaky relu",
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, b.encode("out")).expect("write");
    let g = import_onnx(&path).expect("imports").graph;
    let leaky = |g: &paoding_core::ir::Graph| {
        g.nodes
            .iter()
            .filter(|n| format!("{:?}", n.op).contains("LeakyRelu"))
            .count()
    };
    // Fused into the convolution, and the dense layer's (tract's MatMul) stands alone or fused.
    assert_eq!(leaky(&g), 2, "{:?}", g.nodes);
    let pruner = paoding_core::prune::Pruner::new(&g, &Default::default());
    let probes = paoding_core::probes::Probes::uniform(g.values[g.input].len(), 64, 0.0, 1.0, 3);
    let pruned = pruner
        .apply(&pruner.counts_for_ratio(0.5), &probes)
        .expect("prunes")
        .graph;
    let onnx = paoding_cli::export::write_onnx(&pruned, "").expect("exports");
    let back = paoding_cli::import::import_onnx_bytes(&onnx, Path::new("pruned.onnx"))
        .expect("re-imports")
        .graph;
    assert_eq!(leaky(&back), 2);
    let x = seeded_uniform(72, 9, -1.0, 1.0);
    let (a, b2) = (
        interp::run(&pruned, &x).expect("runs"),
        interp::run(&back, &x).expect("runs"),
    );
    assert!(relative_max_diff(&a, &b2) <= 1e-6);

    let mut bad = OnnxBuilder::new(&[1, 3], 13);
    bad.node("LeakyRelu", &["x"], "y", &[("alpha", Attr::Float(-0.5))]);
    let path = dir.path().join("bad.onnx");
    std::fs::write(&path, bad.encode("y")).expect("write");
    let err = import_onnx(&path)
        .expect_err("a negative slope is refused")
        .to_string();
    assert!(err.contains("LeakyRelu") && err.contains("-0.5"), "{err}");
}
