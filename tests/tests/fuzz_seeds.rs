//! The fuzzers' seed corpora (`fuzz/seeds/`, see fuzz/README.md) are small models built here:
//! the fixtures are 11–136 KB, too long for inputs the fuzzers mutate quickly, and a
//! protobuf cut at the fuzzers' length limit no longer parses. Each seed must still import
//! (ONNX) or validate (blob), so that the fuzzers start from inputs that reach deep; and the
//! committed files must be the ones built here. `PAODING_WRITE_FUZZ_SEEDS=1 cargo test -p
//! paoding-tests --test fuzz_seeds` rewrites them.

use std::path::{Path, PathBuf};

use paoding_cli::import::import_onnx_bytes;
use paoding_core::{blob, plan::MemoryPlan, probes::Probes, quant};
use paoding_runtime::{format::Dtype, Model};
use paoding_tests::onnx_builder::{Attr, OnnxBuilder};
use paoding_tests::seeded_uniform;
use tract_onnx::pb;

fn seeds_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
}

fn w(n: usize, seed: u64) -> Vec<f32> {
    seeded_uniform(n, seed, -0.5, 0.5)
}

/// Small ONNX models covering every operator the importer maps.
fn onnx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.weight("w1", &[4, 3], w(12, 1))
        .weight("b1", &[3], w(3, 2))
        .weight("w2", &[3, 2], w(6, 3));
    b.node("MatMul", &["x", "w1"], "h", &[])
        .node("Add", &["h", "b1"], "a", &[])
        .node("Relu", &["a"], "r", &[])
        .node("MatMul", &["r", "w2"], "o", &[])
        .node("Softmax", &["o"], "y", &[("axis", Attr::Int(1))]);
    out.push(("mlp", b.encode("y")));

    let mut b = OnnxBuilder::new(&[1, 2, 5, 5], 13);
    b.weight("k", &[3, 2, 3, 3], w(54, 4))
        .weight("kb", &[3], w(3, 5))
        .weight("fc", &[2, 12], w(24, 6))
        .weight("fcb", &[2], w(2, 7));
    b.node(
        "Conv",
        &["x", "k", "kb"],
        "c",
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    )
    .node("Relu", &["c"], "r", &[])
    .node(
        "MaxPool",
        &["r"],
        "p",
        &[
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    )
    .node("Flatten", &["p"], "f", &[])
    .node(
        "Gemm",
        &["f", "fc", "fcb"],
        "y",
        &[("transB", Attr::Int(1))],
    );
    out.push(("conv_pool_gemm", b.encode("y")));

    let mut b = OnnxBuilder::new(&[1, 3, 6, 6], 13);
    b.weight("dw", &[3, 1, 3, 3], w(27, 8))
        .weight("lo", &[], vec![0.0])
        .weight("hi", &[], vec![6.0]);
    b.node(
        "Conv",
        &["x", "dw"],
        "c",
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("group", Attr::Int(3)),
        ],
    )
    .node("Clip", &["c", "lo", "hi"], "r", &[])
    .node("GlobalAveragePool", &["r"], "g", &[])
    .node("Flatten", &["g"], "y", &[]);
    out.push(("depthwise_clip_gap", b.encode("y")));

    let mut b = OnnxBuilder::new(&[1, 2, 4, 4], 13);
    b.weight("k", &[2, 2, 1, 1], w(4, 9))
        .weight("s", &[2], vec![1.5, 0.5])
        .weight("bb", &[2], vec![0.1, -0.1])
        .weight("m", &[2], vec![0.2, 0.0])
        .weight("v", &[2], vec![1.0, 2.0]);
    b.node(
        "Conv",
        &["x", "k"],
        "c",
        &[("kernel_shape", Attr::Ints(vec![1, 1]))],
    )
    .node("BatchNormalization", &["c", "s", "bb", "m", "v"], "n", &[])
    .node("Add", &["n", "x"], "a", &[])
    .node("Sigmoid", &["a"], "sg", &[])
    .node(
        "AveragePool",
        &["sg"],
        "p",
        &[
            ("kernel_shape", Attr::Ints(vec![2, 2])),
            ("strides", Attr::Ints(vec![2, 2])),
        ],
    )
    .node("Tanh", &["p"], "y", &[]);
    out.push(("residual_bn_avgpool", b.encode("y")));

    let mut b = OnnxBuilder::new(&[1, 2, 3, 3], 13);
    b.ints("pads", &[0, 0, 1, 1, 0, 0, 1, 1])
        .ints("shape", &[1, 100])
        .weight("k", &[2, 2, 1, 1], w(4, 10));
    b.node("Pad", &["x", "pads"], "p", &[])
        .node(
            "Conv",
            &["p", "k"],
            "c",
            &[("kernel_shape", Attr::Ints(vec![1, 1]))],
        )
        .node("Concat", &["p", "c"], "cc", &[("axis", Attr::Int(1))])
        .node(
            "Transpose",
            &["cc"],
            "t",
            &[("perm", Attr::Ints(vec![0, 1, 3, 2]))],
        )
        .node("Reshape", &["t", "shape"], "r", &[]);
    out.push(("pad_concat_transpose", b.encode("r")));

    // A 1-D CNN over [N, C, L]: lowered to 2-D layers over one row.
    let mut b = OnnxBuilder::new(&[1, 2, 12], 13);
    b.weight("w1", &[3, 2, 3], w(18, 40))
        .weight("b1", &[3], w(3, 41))
        .weight("wd", &[2, 3], w(6, 42));
    b.node(
        "Conv",
        &["x", "w1", "b1"],
        "c",
        &[("pads", Attr::Ints(vec![1, 1]))],
    )
    .node("Relu", &["c"], "r", &[])
    .node(
        "MaxPool",
        &["r"],
        "p",
        &[
            ("kernel_shape", Attr::Ints(vec![2])),
            ("strides", Attr::Ints(vec![2])),
        ],
    )
    .node("GlobalAveragePool", &["p"], "g", &[])
    .node("Flatten", &["g"], "f", &[])
    .node("Gemm", &["f", "wd"], "y", &[("transB", Attr::Int(1))]);
    out.push(("conv1d_pool_gap", b.encode("y")));

    let mut b = OnnxBuilder::new(&[1, 3], 13);
    b.weight("w", &[3, 4], w(12, 50));
    b.node("MatMul", &["x", "w"], "h", &[]).node(
        "LeakyRelu",
        &["h"],
        "y",
        &[("alpha", Attr::Float(0.1))],
    );
    out.push(("leaky_relu", b.encode("y")));

    // A quantized (QDQ) dense layer: int8 weights per output channel, int32 biases, the
    // input and the ReLU's output quantized.
    let tensor = |name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>| pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type,
        raw_data: raw,
        ..Default::default()
    };
    let (f, i8t, i32t) = (1, 3, 6);
    let floats = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (sx, sw) = (0.02f32, [0.01f32, 0.005, 0.02]);
    // The layer's quantized tensors: input scale and zero point, int8 weights (byte k times
    // `mul`), their per-channel scales, int32 biases and theirs.
    let dense = |mul: u8, bias: [i32; 3]| {
        let mut b = OnnxBuilder::new(&[1, 4], 13);
        b.tensor(tensor("sx", &[], f, floats(&[sx])))
            .tensor(tensor("zx", &[], i8t, vec![3]))
            .tensor(tensor(
                "w",
                &[4, 3],
                i8t,
                (0..12u8).map(|k| k.wrapping_mul(mul)).collect(),
            ))
            .tensor(tensor("sw", &[3], f, floats(&sw)))
            .tensor(tensor("zw", &[3], i8t, vec![0; 3]))
            .tensor(tensor(
                "bq",
                &[3],
                i32t,
                bias.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ))
            .tensor(tensor("sb", &[3], f, floats(&sw.map(|s| s * sx))));
        b
    };
    let mut b = dense(37, [100, -50, 7]);
    b.tensor(tensor("sr", &[], f, floats(&[0.05])))
        .tensor(tensor("zr", &[], i8t, vec![128]));
    b.node("QuantizeLinear", &["x", "sx", "zx"], "xq", &[])
        .node("DequantizeLinear", &["xq", "sx", "zx"], "xd", &[])
        .node(
            "DequantizeLinear",
            &["w", "sw", "zw"],
            "wd",
            &[("axis", Attr::Int(1))],
        )
        .node(
            "DequantizeLinear",
            &["bq", "sb"],
            "bd",
            &[("axis", Attr::Int(0))],
        )
        .node("MatMul", &["xd", "wd"], "h", &[])
        .node("Add", &["h", "bd"], "a", &[])
        .node("Relu", &["a"], "r", &[])
        .node("QuantizeLinear", &["r", "sr", "zr"], "rq", &[])
        .node("DequantizeLinear", &["rq", "sr", "zr"], "y", &[]);
    out.push(("qdq_dense", b.encode("y")));

    // The same layer as PyTorch's TorchScript exporter writes it: each quantized tensor cast to
    // the type it has, the bias's zero point computed by Cast(ConstantOfShape) (folded).
    let mut b = dense(41, [-20, 60, 5]);
    b.tensor(tensor("nb", &[1], 7, 3i64.to_le_bytes().to_vec()));
    b.node("QuantizeLinear", &["x", "sx", "zx"], "xq", &[])
        .node("Cast", &["xq"], "xc", &[("to", Attr::Int(i8t.into()))])
        .node("DequantizeLinear", &["xc", "sx", "zx"], "xd", &[])
        .node(
            "DequantizeLinear",
            &["w", "sw", "zw"],
            "wd",
            &[("axis", Attr::Int(1))],
        )
        .node("ConstantOfShape", &["nb"], "zb0", &[])
        .node("Cast", &["zb0"], "zb", &[("to", Attr::Int(i32t.into()))])
        .node(
            "DequantizeLinear",
            &["bq", "sb", "zb"],
            "bd",
            &[("axis", Attr::Int(0))],
        )
        .node("MatMul", &["xd", "wd"], "h", &[])
        .node("Add", &["h", "bd"], "y", &[]);
    out.push(("qdq_torch_casts", b.encode("y")));
    out
}

/// Writes or compares one target's seeds.
fn sync(target: &str, seeds: &[(String, Vec<u8>)]) {
    let dir = seeds_dir(target);
    if std::env::var_os("PAODING_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).expect("seeds dir");
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    }
    for (name, bytes) in seeds {
        let committed = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("fuzz/seeds/{target}/{name}: {e} (write the seeds)"));
        assert!(
            &committed == bytes,
            "fuzz/seeds/{target}/{name} is not the seed built here: rewrite the seeds"
        );
    }
}

#[test]
fn the_committed_seeds_are_small_and_reach_deep() {
    let mut import_seeds = Vec::new();
    let mut runtime_seeds = Vec::new();
    for (name, bytes) in onnx_seeds() {
        let g = import_onnx_bytes(&bytes, format!("{name}.onnx").as_ref())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .graph;
        let blob = blob::write_blob(&g, &MemoryPlan::new(&g)).expect("blob");
        let model = Model::from_bytes(&blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(model.node_count() >= 1);
        assert!(
            bytes.len() <= 1024 && blob.len() <= 1024,
            "{name}: {} B, {} B",
            bytes.len(),
            blob.len()
        );
        import_seeds.push((format!("{name}.onnx"), bytes));
        runtime_seeds.push((format!("{name}.pdg"), blob));
        // Its int8 form, with f32 and with int8 input and output.
        let probes = Probes::uniform(g.values[g.input].len(), 16, -1.0, 1.0, 1);
        let q = quant::quantize(&g, &probes, &Default::default()).expect("quantizes");
        for (io, suffix) in [(Dtype::F32, "int8"), (Dtype::I8, "int8-io")] {
            let Ok(low) = blob::QuantizedBlob::new(&g, &q, io) else {
                continue; // An input or output that stays f32: no int8 io.
            };
            let blob = low.write(&low.plan()).expect("int8 blob");
            Model::from_bytes(&blob).unwrap_or_else(|e| panic!("{name} {suffix}: {e}"));
            assert!(blob.len() <= 1024, "{name} {suffix}: {} B", blob.len());
            runtime_seeds.push((format!("{name}.{suffix}.pdg"), blob));
        }
    }
    // A blob of format version 2, which the runtime still reads.
    let v2 = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/blobs-v2/zoo.pdg");
    let v2 = std::fs::read(v2).expect("the version 2 zoo");
    Model::from_bytes(&v2).expect("a valid version 2 blob");
    runtime_seeds.push(("zoo.v2.pdg".into(), v2));
    sync("import", &import_seeds);
    sync("runtime", &runtime_seeds);
    // The profile parser's seeds are the shipped boards, each of which parses.
    let boards: Vec<(String, Vec<u8>)> = paoding_cli::profile::BUILT_IN
        .iter()
        .map(|(file, text)| (file.to_string(), text.as_bytes().to_vec()))
        .collect();
    sync("profile", &boards);
}
