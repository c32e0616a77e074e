//! ONNX export: every fixture, both MLPerf Tiny models and one small graph per operator mapping
//! go IR → ONNX → (a) paoding's importer, which must give back the same IR, (b) tract at batch
//! 1, which must match the IR interpreter, and (c) tract at batch 3, row by row, since the
//! exported batch axis is symbolic.

use std::path::{Path, PathBuf};

use paoding_cli::export::{self, write_onnx, ExportError};
use paoding_cli::import::import_onnx;
use paoding_core::interp;
use paoding_core::ir::{Activation, BatchNorm, Conv2d, Dense, Graph, Node, Op, Pool};
use paoding_tests::*;
use prost::Message;
use tract_onnx::pb;

/// Seeded inputs per model and check.
const SEEDS: u64 = 3;
/// Batch size of the symbolic-batch check.
const BATCH: usize = 3;

fn export_to(dir: &Path, g: &Graph, what: &str) -> PathBuf {
    let bytes = write_onnx(g, &format!("test export of {what}"))
        .unwrap_or_else(|e| panic!("{what}: export fails: {e}"));
    let path = dir.join(format!(
        "{}.onnx",
        what.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    ));
    std::fs::write(&path, &bytes).expect("write the exported model");
    // To inspect the exports with other tools (onnx.checker, onnxruntime, Netron).
    if let Some(keep) = std::env::var_os("PAODING_KEEP_EXPORTS") {
        let kept = Path::new(&keep).join(path.file_name().expect("a file name"));
        std::fs::write(kept, &bytes).expect("keep the exported model");
    }
    path
}

/// An operator's kind, with a fused activation, as a string to compare. A ReLU the importer
/// could not fuse stays `Clip [0, inf)`: the same function, so the same kind here.
fn signature(node: &Node) -> String {
    let canonical = |a: Activation| match a {
        Activation::Clip { min, max } if min == 0.0 && max == f32::INFINITY => Activation::Relu,
        a => a,
    };
    match &node.op {
        Op::Activation(a) => format!("{:?}", canonical(*a)),
        op => match op.fused_activation() {
            Some(a) => format!("{}+{:?}", op.kind(), canonical(a)),
            None => op.kind().to_string(),
        },
    }
}

/// Same shapes, same node kinds (fused activations included), same wiring, and the same
/// parameters up to float rounding; then equal outputs on seeded inputs.
fn assert_equivalent(original: &Graph, reimported: &Graph, what: &str) {
    let kinds = |g: &Graph| g.nodes.iter().map(signature).collect::<Vec<_>>();
    assert_eq!(kinds(reimported), kinds(original), "{what}: node kinds");
    assert_eq!(
        reimported.shape(reimported.input),
        original.shape(original.input),
        "{what}: input shape"
    );
    assert_eq!(
        reimported.shape(reimported.output),
        original.shape(original.output),
        "{what}: output shape"
    );
    for (a, b) in original.nodes.iter().zip(&reimported.nodes) {
        let a_shapes: Vec<_> = a.inputs.iter().map(|&v| original.shape(v)).collect();
        let b_shapes: Vec<_> = b.inputs.iter().map(|&v| reimported.shape(v)).collect();
        assert_eq!(a_shapes, b_shapes, "{what}: inputs of node '{}'", a.name);
        assert!(
            same_params(&a.op, &b.op),
            "{what}: node '{}' was {:?}, is {:?} after the round trip",
            a.name,
            a.op,
            b.op
        );
    }
    let n = original.values[original.input].len();
    for seed in 0..SEEDS {
        let x = seeded_uniform(n, seed, -1.0, 1.0);
        let want = interp::run(original, &x).expect("the original runs");
        let got = interp::run(reimported, &x).expect("the re-import runs");
        let diff = relative_max_diff(&got, &want);
        assert!(diff <= 1e-6, "{what}: re-imported IR differs by {diff}");
    }
}

/// Parameters equal up to 1e-6 (relative to each tensor's scale); structure exactly equal.
fn same_params(a: &Op, b: &Op) -> bool {
    let close = |x: &[f32], y: &[f32]| x.len() == y.len() && relative_max_diff(x, y) <= 1e-6;
    match (a, b) {
        (Op::Dense(a), Op::Dense(b)) => {
            (a.units, a.inputs) == (b.units, b.inputs)
                && close(&a.weights, &b.weights)
                && close(&a.bias, &b.bias)
        }
        (Op::Conv2d(a), Op::Conv2d(b)) => {
            (
                a.out_channels,
                a.in_channels,
                a.kernel,
                a.stride,
                a.dilation,
                a.padding,
                a.groups,
            ) == (
                b.out_channels,
                b.in_channels,
                b.kernel,
                b.stride,
                b.dilation,
                b.padding,
                b.groups,
            ) && close(&a.weights, &b.weights)
                && close(&a.bias, &b.bias)
        }
        // The exporter writes no statistics (ONNX has no exact place for them).
        (Op::BatchNorm(a), Op::BatchNorm(b)) => {
            close(&a.scale, &b.scale) && close(&a.shift, &b.shift)
        }
        (Op::Activation(_), Op::Activation(_)) => true, // compared by signature
        (a, b) => a == b,
    }
}

/// tract on the exported file matches the interpreter on the IR at batch 1, and every row
/// of a batch of [`BATCH`].
fn assert_tract_matches(path: &Path, g: &Graph, what: &str) {
    let shape = g.shape(g.input).to_vec();
    let n: usize = shape.iter().product();
    let tract = TractModel::load(path, &shape);
    for seed in 0..SEEDS {
        let x = seeded_uniform(n, 10 + seed, -1.0, 1.0);
        let want = interp::run(g, &x).expect("the IR runs");
        let diff = relative_max_diff(&tract.run(&x), &want);
        assert!(diff <= 1e-5, "{what}: tract differs from the IR by {diff}");
    }

    let mut batched = shape.clone();
    batched[0] = BATCH;
    let tract = TractModel::load(path, &batched);
    let xs = seeded_uniform(n * BATCH, 99, -1.0, 1.0);
    let out = tract.run(&xs);
    let row = g.values[g.output].len();
    assert_eq!(out.len(), row * BATCH, "{what}: batch {BATCH} output size");
    for (i, (x, got)) in xs.chunks_exact(n).zip(out.chunks_exact(row)).enumerate() {
        let want = interp::run(g, x).expect("the IR runs");
        let diff = relative_max_diff(got, &want);
        assert!(
            diff <= 1e-5,
            "{what}: row {i} of a batch of {BATCH} differs by {diff}"
        );
    }
}

/// Export, re-import and run in tract: all three checks.
fn round_trip(g: &Graph, what: &str) {
    g.check()
        .unwrap_or_else(|e| panic!("{what}: test graph is broken: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = export_to(dir.path(), g, what);
    let reimported = import_onnx(&path)
        .unwrap_or_else(|e| panic!("{what}: the export does not import: {e}"))
        .graph;
    assert_equivalent(g, &reimported, what);
    assert_tract_matches(&path, g, what);
}

#[test]
fn every_fixture_round_trips() {
    for f in fixtures() {
        let g = import_onnx(&fixtures_dir().join(&f.file))
            .unwrap_or_else(|e| panic!("{}: {e}", f.file))
            .graph;
        round_trip(&g, &f.file);
    }
}

#[test]
fn third_party_models_round_trip() {
    for path in shared_models() {
        let g = import_onnx(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .graph;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        round_trip(&g, &name.unwrap_or_default());
    }
}

// ---- one small graph per operator mapping -------------------------------------------------

fn conv(
    cin: usize,
    cout: usize,
    groups: usize,
    kernel: [usize; 2],
    seed: u64,
    activation: Activation,
) -> Conv2d {
    let len = cout * cin / groups * kernel[0] * kernel[1];
    Conv2d {
        out_channels: cout,
        in_channels: cin,
        kernel,
        stride: [1, 1],
        dilation: [1, 1],
        padding: [0; 4],
        groups,
        weights: seeded_uniform(len, seed, -1.0, 1.0),
        bias: seeded_uniform(cout, seed + 1, -0.5, 0.5),
        activation,
    }
}

fn dense(inputs: usize, units: usize, seed: u64, activation: Activation) -> Dense {
    Dense {
        units,
        inputs,
        weights: seeded_uniform(units * inputs, seed, -1.0, 1.0),
        bias: seeded_uniform(units, seed + 1, -0.5, 0.5),
        activation,
    }
}

fn push(g: &mut Graph, name: &str, op: Op, inputs: &[usize]) -> usize {
    g.push(name, op, inputs)
        .unwrap_or_else(|e| panic!("building the test graph: {e}"))
}

#[test]
fn dense_with_each_fused_activation() {
    let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
    for (i, act) in [
        Activation::Identity,
        Activation::Relu,
        relu6,
        Activation::Sigmoid,
        Activation::Tanh,
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = Graph::new("features", vec![1, 12]);
        let h = push(
            &mut g,
            "fc1",
            Op::Dense(dense(12, 7, 3 * i as u64, act)),
            &[0],
        );
        g.output = push(
            &mut g,
            "fc2",
            Op::Dense(dense(7, 4, 50, Activation::Identity)),
            &[h],
        );
        round_trip(&g, &format!("dense + {act:?}"));
    }
}

#[test]
fn dilated_strided_grouped_conv_with_asymmetric_padding() {
    let mut g = Graph::new("image", vec![1, 4, 11, 9]);
    let mut c = conv(4, 6, 2, [3, 2], 7, Activation::Relu);
    c.dilation = [2, 1];
    c.stride = [1, 2];
    c.padding = [1, 0, 2, 1];
    g.output = push(&mut g, "conv", Op::Conv2d(c), &[0]);
    round_trip(&g, "dilated conv");
}

#[test]
fn depthwise_conv_with_relu6() {
    let mut g = Graph::new("image", vec![1, 3, 8, 8]);
    let mut c = conv(3, 3, 3, [3, 3], 8, Activation::Clip { min: 0.0, max: 6.0 });
    c.padding = [1, 1, 1, 1];
    c.stride = [2, 2];
    let h = push(&mut g, "dw", Op::Conv2d(c), &[0]);
    g.output = push(
        &mut g,
        "pw",
        Op::Conv2d(conv(3, 5, 1, [1, 1], 9, Activation::Identity)),
        &[h],
    );
    round_trip(&g, "depthwise conv");
}

#[test]
fn clips_with_infinite_bounds_and_standalone_activations() {
    let cases = [
        (
            "clip max only",
            Activation::Clip {
                min: f32::NEG_INFINITY,
                max: 0.25,
            },
        ),
        (
            "clip min only",
            Activation::Clip {
                min: -0.3,
                max: f32::INFINITY,
            },
        ),
        (
            "clip both",
            Activation::Clip {
                min: -0.5,
                max: 0.5,
            },
        ),
        ("relu", Activation::Relu),
        ("sigmoid", Activation::Sigmoid),
        ("tanh", Activation::Tanh),
    ];
    for (what, act) in cases {
        let mut g = Graph::new("x", vec![1, 2, 3, 3]);
        g.output = push(&mut g, what, Op::Activation(act), &[0]);
        round_trip(&g, what);
    }
}

#[test]
fn clip_without_any_bound_and_identity_change_nothing() {
    for act in [
        Activation::Identity,
        Activation::Clip {
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
        },
    ] {
        // As the output: an Identity node writes it. Inside: the value is aliased.
        let mut g = Graph::new("x", vec![1, 6]);
        let h = push(&mut g, "noop", Op::Activation(act), &[0]);
        g.output = push(&mut g, "sig", Op::Activation(Activation::Sigmoid), &[h]);
        let model = export::to_model(&g, "").expect("exports");
        let nodes = &model.graph.as_ref().expect("graph").node;
        assert_eq!(nodes.len(), 1, "{act:?} inside the graph writes no node");
        assert_eq!(nodes[0].input, vec!["x".to_string()]);

        let mut g = Graph::new("x", vec![1, 6]);
        g.output = push(&mut g, "noop", Op::Activation(act), &[0]);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = export_to(dir.path(), &g, "noop output");
        assert_tract_matches(&path, &g, &format!("{act:?} as the output"));
    }
    // A graph whose output is its input.
    let g = Graph::new("x", vec![1, 5]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = export_to(dir.path(), &g, "empty");
    assert_tract_matches(&path, &g, "empty graph");
}

#[test]
fn standalone_batch_norms_of_rank_2_and_4() {
    // On the graph input nothing can absorb it.
    let mut g = Graph::new("x", vec![1, 3, 4, 5]);
    g.output = push(
        &mut g,
        "bn",
        Op::BatchNorm(BatchNorm {
            scale: vec![0.5, -2.0, 1.25],
            shift: vec![0.1, 0.0, -3.0],
            stats: Some((vec![0.2, 0.3, 0.4], vec![1.0, 2.0, 3.0])),
        }),
        &[0],
    );
    round_trip(&g, "batch norm on NCHW with statistics");

    // After a ReLU, on a rank-2 value.
    let mut g = Graph::new("x", vec![1, 4]);
    let h = push(
        &mut g,
        "fc",
        Op::Dense(dense(4, 3, 20, Activation::Relu)),
        &[0],
    );
    g.output = push(
        &mut g,
        "bn",
        Op::BatchNorm(BatchNorm::affine(vec![2.0, 0.5, -1.0], vec![0.0; 3])),
        &[h],
    );
    round_trip(&g, "scale-only batch norm on [1, C]");

    let mut g = Graph::new("x", vec![1, 4]);
    let h = push(
        &mut g,
        "fc",
        Op::Dense(dense(4, 3, 21, Activation::Tanh)),
        &[0],
    );
    g.output = push(
        &mut g,
        "bn",
        Op::BatchNorm(BatchNorm::affine(vec![1.0; 3], vec![0.25, -0.5, 1.0])),
        &[h],
    );
    round_trip(&g, "shift-only batch norm on [1, C]");
}

#[test]
fn pools_with_padding() {
    for count_include_pad in [false, true] {
        let mut g = Graph::new("x", vec![1, 2, 7, 6]);
        g.output = push(
            &mut g,
            "avg",
            Op::AveragePool(Pool {
                kernel: [3, 2],
                stride: [2, 2],
                padding: [1, 0, 2, 1],
                count_include_pad,
            }),
            &[0],
        );
        round_trip(
            &g,
            &format!("average pool count_include_pad={count_include_pad}"),
        );
    }
    let mut g = Graph::new("x", vec![1, 2, 7, 6]);
    let h = push(
        &mut g,
        "max",
        Op::MaxPool(Pool {
            kernel: [3, 3],
            stride: [2, 1],
            padding: [1, 2, 1, 0],
            count_include_pad: false,
        }),
        &[0],
    );
    g.output = push(&mut g, "gap", Op::GlobalAveragePool, &[h]);
    round_trip(&g, "max pool and global average pool");
}

#[test]
fn residual_add_concat_and_softmax() {
    let mut g = Graph::new("x", vec![1, 3, 6, 6]);
    let mut c = conv(3, 3, 1, [3, 3], 30, Activation::Identity);
    c.padding = [1, 1, 1, 1];
    let a = push(&mut g, "branch", Op::Conv2d(c), &[0]);
    let s = push(&mut g, "sum", Op::Add, &[a, 0]);
    let r = push(&mut g, "sum_relu", Op::Activation(Activation::Relu), &[s]);
    let cat = push(&mut g, "cat", Op::Concat { axis: 1 }, &[r, 0, a]);
    g.output = push(&mut g, "softmax", Op::Softmax { axis: 1 }, &[cat]);
    round_trip(&g, "add, concat on channels, softmax on channels");

    let mut g = Graph::new("x", vec![1, 2, 3, 4]);
    let cat = push(&mut g, "cat", Op::Concat { axis: 3 }, &[0, 0]);
    g.output = push(&mut g, "softmax", Op::Softmax { axis: 3 }, &[cat]);
    round_trip(&g, "concat and softmax on the last axis");
}

#[test]
fn reshape_transpose_and_pad() {
    let mut g = Graph::new("x", vec![1, 2, 3, 4]);
    let t = push(
        &mut g,
        "to_nhwc",
        Op::Transpose {
            perm: vec![0, 2, 3, 1],
        },
        &[0],
    );
    let p = push(
        &mut g,
        "pad",
        Op::Pad {
            pads: vec![(0, 0), (1, 2), (0, 1), (2, 0)],
            value: 0.5,
        },
        &[t],
    );
    let flat = push(
        &mut g,
        "flatten",
        Op::Reshape {
            shape: vec![1, 6 * 5 * 4],
        },
        &[p],
    );
    let fc = push(
        &mut g,
        "fc",
        Op::Dense(dense(120, 6, 40, Activation::Identity)),
        &[flat],
    );
    g.output = push(
        &mut g,
        "unflatten",
        Op::Reshape {
            shape: vec![1, 2, 3],
        },
        &[fc],
    );
    round_trip(&g, "transpose, pad, reshape");
}

#[test]
fn any_permutation_matches_tract() {
    // tract splits a permutation into single axis moves, so the re-imported IR may hold
    // several transposes: check the function, not the node list.
    let mut g = Graph::new("x", vec![1, 2, 3, 4]);
    g.output = push(
        &mut g,
        "t",
        Op::Transpose {
            perm: vec![0, 3, 2, 1],
        },
        &[0],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = export_to(dir.path(), &g, "perm");
    assert_tract_matches(&path, &g, "transpose [0, 3, 2, 1]");
    let back = import_onnx(&path).expect("imports").graph;
    let x = seeded_uniform(24, 5, -1.0, 1.0);
    assert_eq!(
        interp::run(&back, &x).expect("runs"),
        interp::run(&g, &x).expect("runs")
    );
}

// ---- the file itself ------------------------------------------------------------------------

#[test]
fn the_file_records_producer_opset_names_and_a_symbolic_batch() {
    let mut g = Graph::new("input:0", vec![1, 1, 4, 4]);
    let c = push(
        &mut g,
        "/conv/Conv",
        Op::Conv2d(conv(1, 2, 1, [3, 3], 60, Activation::Relu)),
        &[0],
    );
    let f = push(&mut g, "flat", Op::Reshape { shape: vec![1, 8] }, &[c]);
    // Clashing and unsafe names.
    let d = push(
        &mut g,
        "fc 1",
        Op::Dense(dense(8, 3, 61, Activation::Sigmoid)),
        &[f],
    );
    g.output = push(
        &mut g,
        "fc 1",
        Op::Dense(dense(3, 2, 62, Activation::Identity)),
        &[d],
    );
    let bytes = write_onnx(&g, "pruned from test.onnx").expect("exports");
    let model = pb::ModelProto::decode(bytes.as_slice()).expect("decodes");

    assert_eq!(model.producer_name, "paoding");
    assert_eq!(model.producer_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(model.doc_string, "pruned from test.onnx");
    assert_eq!(model.ir_version, export::IR_VERSION);
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!(model.opset_import[0].version, 13);
    assert!(model.opset_import[0].domain.is_empty());

    let graph = model.graph.as_ref().expect("graph");
    let dims = |v: &pb::ValueInfoProto| -> Vec<String> {
        use pb::tensor_shape_proto::dimension::Value;
        let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            panic!("{} is not a tensor", v.name)
        };
        assert_eq!(t.elem_type, 1, "{} is float", v.name);
        t.shape
            .as_ref()
            .expect("a shape")
            .dim
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimParam(p)) => p.clone(),
                Some(Value::DimValue(v)) => v.to_string(),
                None => "?".into(),
            })
            .collect()
    };
    assert_eq!(graph.input.len(), 1);
    assert_eq!(graph.output.len(), 1);
    assert_eq!(graph.input[0].name, "input:0", "the input keeps its name");
    assert_eq!(dims(&graph.input[0]), ["N", "1", "4", "4"]);
    assert_eq!(graph.output[0].name, "fc_1");
    assert_eq!(dims(&graph.output[0]), ["N", "2"]);
    for v in &graph.value_info {
        assert_eq!(dims(v)[0], "N", "{}", v.name);
    }

    // Names: unique per namespace, safe, and after the IR's nodes.
    let node_names: Vec<&str> = graph.node.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        graph
            .node
            .iter()
            .map(|n| n.op_type.as_str())
            .collect::<Vec<_>>(),
        ["Conv", "Relu", "Reshape", "Gemm", "Sigmoid", "Gemm"]
    );
    assert_eq!(
        node_names,
        [
            "/conv/Conv",
            "/conv/Conv.relu",
            "flat",
            "fc_1",
            "fc_1.sigmoid",
            "fc_1_1"
        ]
    );
    let mut values: Vec<&str> = graph.node.iter().map(|n| n.output[0].as_str()).collect();
    values.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    values.push(graph.input[0].name.as_str());
    let safe = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./:-".contains(c))
    };
    for names in [&node_names, &values] {
        let mut sorted = names.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate names in {names:?}");
        assert!(names.iter().all(|n| safe(n)), "unsafe names in {names:?}");
    }
    // The reshape copies the batch: its shape constant starts with 0.
    let shape = graph
        .initializer
        .iter()
        .find(|t| t.name == "flat.shape")
        .expect("flat.shape");
    assert_eq!(shape.data_type, 7);
    let ints: Vec<i64> = shape
        .raw_data
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    assert_eq!(ints, [0, 8]);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("names.onnx");
    export::save_onnx(&g, "", &path).expect("saves");
    assert_tract_matches(&path, &g, "names");
}

#[test]
fn an_inconsistent_graph_is_an_error_not_a_panic() {
    let mut g = Graph::new("x", vec![1, 4]);
    g.output = push(
        &mut g,
        "fc",
        Op::Dense(dense(4, 2, 1, Activation::Relu)),
        &[0],
    );
    if let Op::Dense(d) = &mut g.nodes[0].op {
        d.weights.pop();
    }
    assert!(matches!(write_onnx(&g, ""), Err(ExportError::Graph(_))));

    let g = Graph::new("x", vec![1, 4]);
    let err = export::save_onnx(&g, "", Path::new("/nonexistent-dir/m.onnx"))
        .expect_err("the folder does not exist");
    assert!(matches!(err, ExportError::Io { .. }), "{err}");
}
