//! Quantized (QDQ) ONNX models through the binary: the MLPerf Tiny int8 keyword-spotting
//! model runs bit for bit as TFLite's reference kernels do, a weights-only int8 file keeps its
//! int8 weights, and every invalid quantization parameter is refused with exit 2, the node
//! named, and no output written.
//!
//! The third-party models are in ../shared/models (see its README); as in the other tests,
//! their absence is a failure, not a skip.

mod common;

use std::path::Path;

use common::{fixture, paoding, shared, stderr};
use prost::Message;
use tract_onnx::pb;

/// The int8 values of an int8 `.npy` (header skipped).
fn npy_i8(path: &str) -> Vec<i8> {
    let bytes = std::fs::read(path).expect("npy");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("npy header");
    npy.into_vec::<i8>().expect("int8 array")
}

#[test]
fn kws_int8_runs_bit_for_bit_as_tflite_s_reference_kernels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    let reference = shared("kws_dscnn_int8.tflite_ref.npy");
    let o = paoding(&[
        "run",
        &shared("kws_dscnn_int8.onnx"),
        "--input",
        &shared("kws_dscnn_int8.x.npy"),
        "--output",
        &out.display().to_string(),
        "--reference",
        &reference,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("384 of 384 output values identical (100.00 %), 0 differ")
            && text.contains("top-1 identical on 32 of 32 samples"),
        "{text}"
    );
    // The file written is TFLite's, byte for byte.
    let got = npy_i8(&out.display().to_string());
    assert_eq!(got, npy_i8(&reference));
    // The blob fit stores (unpruned: the budget holds it), which the firmware runs, too.
    let r = fit(dir.path(), &shared("kws_dscnn_int8.onnx"), &[]);
    assert_eq!(r["status"], "fits-unpruned", "{r}");
    let blob = dir.path().join("m.pdg").display().to_string();
    let line = compare(&blob, &shared("kws_dscnn_int8.x.npy"), &reference);
    assert!(
        line.contains("384 of 384 output values identical"),
        "{line}"
    );
}

#[test]
fn run_reports_where_outputs_differ_from_a_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The reference with two values changed: sample 0's output 11 (-127) by 3, sample 5's
    // output 9 (127) by 1.
    let mut want = npy_i8(&shared("kws_dscnn_int8.tflite_ref.npy"));
    assert_eq!((want[11], want[5 * 12 + 9]), (-127, 127));
    want[11] += 3;
    want[5 * 12 + 9] -= 1;
    let path = dir.path().join("ref.npy");
    {
        use npyz::WriterBuilder;
        let mut bytes = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[32, 12])
            .writer(&mut bytes)
            .begin_nd()
            .expect("npy");
        w.extend(want.iter().copied()).expect("npy");
        w.finish().expect("npy");
        std::fs::write(&path, bytes).expect("write");
    }
    let o = paoding(&[
        "run",
        &shared("kws_dscnn_int8.onnx"),
        "--input",
        &shared("kws_dscnn_int8.x.npy"),
        "--reference",
        &path.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "382 of 384 output values identical (99.48 %), 2 differ; largest difference 3 \
             (sample 0, output 11); top-1 identical on 32 of 32 samples"
        ),
        "{text}"
    );
}

/// `fit MODEL --profile qemu-mps2-an500 ARGS -o DIR/m.pdg --report DIR/r.json` with quick
/// uniform probes: the report.
fn fit(dir: &Path, model: &str, args: &[&str]) -> serde_json::Value {
    let (blob, report) = (dir.join("m.pdg"), dir.join("r.json"));
    let cache = dir.join("cache");
    let mut all = vec![
        "fit",
        model,
        "--profile",
        "qemu-mps2-an500",
        "--probes",
        "uniform",
        "--check-probes",
        "uniform",
        "--probe-count",
        "64",
    ];
    all.extend_from_slice(args);
    let (b, r, c) = (
        blob.display().to_string(),
        report.display().to_string(),
        cache.display().to_string(),
    );
    all.extend_from_slice(&["-o", &b, "--report", &r, "--cache-dir", &c]);
    let o = paoding(&all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON")
}

#[test]
fn kws_int8_fits_a_budget_below_its_size_pruned_in_int8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = fit(
        dir.path(),
        &shared("kws_dscnn_int8.onnx"),
        &["--flash", "24K"],
    );
    assert_eq!(r["status"], "pruned", "{r}");
    assert_eq!(r["dtype"], "int8", "{r}");
    // The original is the file's own int8 model (27,996 B), not an f32 one.
    let original = r["original"]["flash_bytes"].as_u64().expect("original");
    assert!(original < 30_000, "{r}");
    let flash = r["fitted"]["flash_bytes"].as_u64().expect("flash");
    assert!(flash <= 24 * 1024, "{r}");
    let q = &r["quantization"];
    assert_eq!(q["from_file"], true, "{r}");
    assert!(
        q["calibration"]
            .as_str()
            .is_some_and(|c| c.starts_with("the file's own quantization, except the channels")),
        "{r}"
    );
    // Agreement with the unpruned int8 model, reported.
    let agreement = r["fidelity"]["fidelity"]["agreement"]
        .as_f64()
        .expect("agreement");
    assert!(agreement > 0.5, "{r}");
    // The blob takes the file's int8 inputs and gives int8 outputs, mostly the same top-1.
    let blob = dir.path().join("m.pdg").display().to_string();
    let line = compare(
        &blob,
        &shared("kws_dscnn_int8.x.npy"),
        &shared("kws_dscnn_int8.tflite_ref.npy"),
    );
    assert!(line.contains("top-1 identical on"), "{line}");
}

#[test]
fn a_weights_only_int8_file_keeps_its_int8_weights() {
    // inspect reads the file's int8 weights: its int8 size is about a quarter of f32's.
    let o = paoding(&["inspect", &fixture("mlp_keras_int8_tf2onnx.onnx"), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let q = &r["quantization"];
    assert_eq!(q["source"], "file", "{r}");
    assert_eq!(q["weights"], "int8", "{r}");
    assert_eq!(q["activations"], "f32", "{r}");
    // fit stores it in int8 by default, with the file's codes: about a quarter of f32.
    let dir = tempfile::tempdir().expect("tempdir");
    let r = fit(dir.path(), &fixture("mlp_keras_int8_tf2onnx.onnx"), &[]);
    assert_eq!(
        (&r["status"], &r["dtype"]),
        (&"fits-unpruned".into(), &"int8".into()),
        "{r}"
    );
    let flash = r["fitted"]["flash_bytes"].as_u64().expect("flash");
    let original = r["original"]["flash_bytes"].as_u64().expect("original");
    assert!(flash * 100 <= original * 30, "{flash} of {original}");
    assert!(
        r["quantization"]["calibration"]
            .as_str()
            .is_some_and(|c| c.starts_with("weights int8 as the file stores them")),
        "{r}"
    );
}

/// kws_dscnn_int8.onnx with `edit` applied, written to `dir`.
fn edited(dir: &Path, name: &str, edit: impl FnOnce(&mut pb::ModelProto)) -> String {
    let bytes = std::fs::read(shared("kws_dscnn_int8.onnx")).expect("model");
    let mut m = pb::ModelProto::decode(&bytes[..]).expect("protobuf");
    edit(&mut m);
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, m.encode_to_vec()).expect("write");
    path.display().to_string()
}

fn initializer<'a>(m: &'a mut pb::ModelProto, name: &str) -> &'a mut pb::TensorProto {
    m.graph
        .as_mut()
        .and_then(|g| g.initializer.iter_mut().find(|t| t.name == name))
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

fn set_float(t: &mut pb::TensorProto, values: &[f32]) {
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t.float_data.clear();
    t.dims = if values.len() == 1 {
        vec![]
    } else {
        vec![values.len() as i64]
    };
}

/// The dense layer's output Q (scale__181, zero_point__180 are its own).
const DENSE_Q: &str = "functional_1/dense/BiasAdd_quantize";
/// The first convolution's weight DequantizeLinear (per axis 0, 64 scales in scale__49).
const CONV_W_DQ: &str = "functional_1/conv2d/Conv2D_dequant";

#[test]
fn invalid_quantization_parameters_are_refused_naming_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let mut cases: Vec<(String, &str, &str)> = Vec::new();
    for (name, s) in [
        ("zero", 0.0f32),
        ("negative", -0.1),
        ("nan", f32::NAN),
        ("inf", f32::INFINITY),
    ] {
        let file = edited(d, &format!("scale-{name}"), |m| {
            set_float(initializer(m, "scale__181"), &[s]);
        });
        cases.push((file, DENSE_Q, "a scale must be positive and finite"));
    }
    let file = edited(d, "zp-outside", |m| {
        let t = initializer(m, "zero_point__180");
        t.raw_data.clear();
        t.int32_data = vec![300];
    });
    cases.push((
        file,
        DENSE_Q,
        "zero point 300 in 'zero_point__180' is outside int8",
    ));
    let file = edited(d, "axis-short", |m| {
        let t = initializer(m, "scale__49");
        let v: Vec<f32> = t
            .raw_data
            .chunks(4)
            .take(63)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        set_float(t, &v);
    });
    cases.push((
        file,
        CONV_W_DQ,
        "63 per-axis scales for axis 0, of length 64",
    ));
    let file = edited(d, "axis-missing", |m| {
        let node = m
            .graph
            .as_mut()
            .and_then(|g| g.node.iter_mut().find(|n| n.name == CONV_W_DQ))
            .expect("node");
        node.attribute
            .iter_mut()
            .for_each(|a| a.i = if a.name == "axis" { 4 } else { a.i });
    });
    cases.push((
        file,
        CONV_W_DQ,
        "per-axis parameters on axis 4, which its rank-4 input does not have",
    ));
    let file = edited(d, "output-type", |m| {
        let out = m
            .graph
            .as_mut()
            .map(|g| &mut g.output[0])
            .and_then(|o| o.r#type.as_mut())
            .and_then(|t| t.value.as_mut());
        if let Some(pb::type_proto::Value::TensorType(t)) = out {
            t.elem_type = pb::tensor_proto::DataType::Uint8 as i32;
        }
    });
    cases.push((
        file,
        "Identity_quantize",
        "its output 'Identity' is declared uint8 but its zero point is int8",
    ));

    for (file, node, why) in &cases {
        for cmd in ["inspect", "run", "fit"] {
            let out = d.join("y.npy");
            let out_s = out.display().to_string();
            let x = shared("kws_dscnn_int8.x.npy");
            let args: Vec<&str> = match cmd {
                "inspect" => vec!["inspect", file],
                "fit" => vec!["fit", file, "--profile", "qemu-mps2-an500", "-o", &out_s],
                _ => vec!["run", file, "--input", &x, "--output", &out_s],
            };
            let o = paoding(&args);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(2), "{cmd} {file}: {err}");
            assert!(
                err.contains(&format!("node '{node}'")) && err.contains(why),
                "{cmd} {file}: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(!out.exists(), "{cmd} {file} wrote an output");
        }
    }
}

/// `paoding run MODEL --input X --reference REF`'s comparison line.
fn compare(model: &str, x: &str, reference: &str) -> String {
    let o = paoding(&["run", model, "--input", x, "--reference", reference]);
    assert_eq!(o.status.code(), Some(0), "{model}: {}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("reference:"))
        .unwrap_or_default()
        .to_string()
}

/// Models with the MLPerf Tiny int8 architectures (tests/fixtures/qdq/generate.py): every
/// output byte is TFLite Micro's; TFLite 2.21's own kernels agree on every byte but where
/// their FULLY_CONNECTED requantizes in double precision (the autoencoder: off by one on a
/// few values, never more, the same top-1).
#[test]
fn mlperf_tiny_shaped_int8_models_run_as_tflite_micro_does() {
    for (name, tflite_identical) in [
        ("resnet_int8", "160 of 160"),
        ("ad_int8", "999 of 1024"),
        ("mobilenet_int8", "32 of 32"),
    ] {
        let f = |suffix: &str| fixture(&format!("qdq/{name}{suffix}"));
        let (model, x) = (f(".onnx"), f(".x.npy"));
        let micro = compare(&model, &x, &f(".tflm_ref.npy"));
        assert!(
            micro.contains(", 0 differ;"),
            "{name} vs TFLite Micro: {micro}"
        );
        let tflite = compare(&model, &x, &f(".tflite_ref.npy"));
        assert!(
            tflite.contains(&format!("{tflite_identical} output values identical"))
                && tflite.contains("top-1 identical on 16 of 16")
                && (tflite.contains("largest difference 0")
                    || tflite.contains("largest difference 1 ")),
            "{name} vs TFLite: {tflite}"
        );
    }
}

#[test]
fn prune_and_eval_judge_a_quantized_file_against_its_own_int8_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("p.onnx").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let model = shared("kws_dscnn_int8.onnx");
    let o = paoding(&[
        "prune",
        &model,
        "--ratio",
        "0.2",
        "-o",
        &out,
        "--probes",
        "uniform",
        "--check-probes",
        "uniform",
        "--probe-count",
        "64",
        "--cache-dir",
        &cache,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(
        r["int8"]
            .as_str()
            .is_some_and(|s| s.starts_with("judged in int8")),
        "{r}"
    );
    // Sizes in int8 on both sides: the file's own model before, the pruned int8 one after.
    assert_eq!(
        (r["dtype"].as_str(), r["before"]["blob_bytes"].as_u64()),
        (Some("int8"), Some(27_996)),
        "{r}"
    );
    assert!(
        r["after"]["blob_bytes"].as_u64().unwrap_or(u64::MAX) < 27_996,
        "{r}"
    );
    // eval takes the int8 model's own inputs (an int8 .npy) for a quantized original: the
    // original against itself agrees on every sample.
    let o = paoding(&[
        "eval",
        &model,
        &model,
        "--data",
        &shared("kws_dscnn_int8.x.npy"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("100.00 %") && text.contains("(32 samples)"),
        "{text}"
    );
}

/// onnxruntime's QDQ (uint8 activations, int8 per-channel weights): float io, and the same
/// model with uint8 input and output (uint8 .npy in and out). onnxruntime requantizes in
/// float, paoding in TFLite's fixed point: at most one step apart, the same top-1.
#[test]
fn onnxruntime_uint8_qdq_models_run_within_one_step() {
    let f = |name: &str| fixture(&format!("qdq/{name}"));
    let line = compare(
        &f("cnn_pool_ort_u8.onnx"),
        &fixture("digits_test_x_nchw.npy"),
        &f("cnn_pool_ort_u8.ort_ref.npy"),
    );
    assert!(line.contains("top-1 identical on 450 of 450"), "{line}");
    let line = compare(
        &f("cnn_pool_ort_u8io.onnx"),
        &f("cnn_pool_ort_u8io.x.npy"),
        &f("cnn_pool_ort_u8io.ort_ref.npy"),
    );
    assert!(
        line.contains("largest difference 1 ") && line.contains("top-1 identical on 450 of 450"),
        "{line}"
    );
    // uint8 out: a uint8 .npy.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("y.npy");
    let o = paoding(&[
        "run",
        &f("cnn_pool_ort_u8io.onnx"),
        "--input",
        &f("cnn_pool_ort_u8io.x.npy"),
        "--output",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bytes = std::fs::read(&out).expect("npy");
    let npy = npyz::NpyFile::new(&bytes[..]).expect("npy");
    assert_eq!(npy.into_vec::<u8>().expect("uint8").len(), 4500);
}

/// PyTorch's TorchScript export of an eager-mode quantized model: each quantized tensor cast
/// to the type it has, the biases' zero points computed (`Cast(ConstantOfShape)`). It imports
/// as the int8 model it is and runs within one output step of PyTorch (which requantizes in
/// float).
#[test]
fn pytorch_quantized_exports_run_within_one_step_of_pytorch() {
    let f = |name: &str| fixture(&format!("qdq/{name}"));
    let line = compare(
        &f("cnn_torch_qnnpack.onnx"),
        &fixture("digits_test_x_nchw.npy"),
        &f("cnn_torch_qnnpack.torch_ref.npy"),
    );
    assert!(line.contains("top-1 identical on 450 of 450"), "{line}");
    let identical: f64 = line
        .split('(')
        .nth(1)
        .and_then(|s| s.split(" %").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(identical >= 95.0, "{line}");
    // One step of the output's quantization is 0.00084928.
    let largest: f64 = line
        .split("largest difference ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(largest <= 0.000_85, "{line}");
}

/// onnxruntime's QOperator form: QLinearConv is read (as the QDQ pattern it stands for); its
/// max pooling between two different quantizations, and its float Gemm layers, have no exact
/// int8 form: refused naming the node, and run in f32 with --allow-f32-islands.
#[test]
fn qlinearconv_is_read_and_f32_islands_only_on_request() {
    let f = |name: &str| fixture(&format!("qdq/{name}"));
    let (model, x) = (
        f("cnn_pool_ort_qop.onnx"),
        fixture("digits_test_x_nchw.npy"),
    );
    let o = paoding(&["run", &model, "--input", &x]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("node '/MaxPool' (MaxPool): has no exact int8 form")
            && err.contains("--allow-f32-islands"),
        "{err}"
    );
    let o = paoding(&[
        "run",
        &model,
        "--input",
        &x,
        "--reference",
        &f("cnn_pool_ort_qop.ort_ref.npy"),
        "--allow-f32-islands",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("top-1 identical on 450 of 450"), "{text}");
    // inspect lists the islands.
    let o = paoding(&["inspect", &model, "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let islands = r["quantization"]["f32_nodes"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(islands, 3, "{r}");
}

/// The MLPerf Tiny int8 reference models themselves (KWS, ResNet-8, VWW, the anomaly
/// detector with int8 and with float io), converted by tests/fixtures/qdq/mlperf_tiny.py into
/// `$PAODING_MLPERF_DIR` (not committed: 1.1 MB of third-party files): every output byte is
/// TFLite Micro's. Run with `-- --ignored` once the folder exists.
#[test]
#[ignore = "needs $PAODING_MLPERF_DIR, made by tests/fixtures/qdq/mlperf_tiny.py"]
fn mlperf_tiny_published_int8_models_run_as_tflite_micro_does() {
    let dir = std::env::var("PAODING_MLPERF_DIR").expect("PAODING_MLPERF_DIR");
    for name in [
        "kws_ref_model",
        "pretrainedResnet_quant",
        "vww_96_int8",
        "model_ToyCar_quant_fullint_micro_intio",
        "model_ToyCar_quant_fullint_micro",
    ] {
        let f = |suffix: &str| format!("{dir}/{name}{suffix}");
        let micro = compare(&f(".onnx"), &f(".x.npy"), &f(".tflm_ref.npy"));
        assert!(
            micro.contains(", 0 differ;"),
            "{name} vs TFLite Micro: {micro}"
        );
    }
}
