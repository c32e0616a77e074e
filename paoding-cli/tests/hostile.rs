//! Hostile ONNX files, each built by the test: the `paoding` binary must refuse every one with
//! exit code 2 within 1 s, under 256 MiB of memory, with a message naming the tensor or node,
//! and leave no output file. Run with `--nocapture` to see the table of exit codes, times and
//! peak memory (README, "Hostile input").

#[path = "../../tests/src/onnx_builder.rs"]
#[allow(dead_code)] // the builder's other helpers serve paoding-tests
mod onnx_builder;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use onnx_builder::{value_info, OnnxBuilder};
use prost::Message;
use tract_onnx::pb;

/// What one run of the binary did.
struct Outcome {
    code: Option<i32>,
    seconds: f64,
    peak_rss_mib: f64,
    stderr: String,
}

/// Run `paoding` with `args` (and `RUST_BACKTRACE=1`), measuring its wall time and peak
/// resident memory (from `wait4`, for this child alone). A run still going after 20 s is
/// killed.
#[allow(clippy::zombie_processes)] // reaped by wait4, which std's Child cannot do
fn run(args: &[&std::ffi::OsStr]) -> Outcome {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        // The costly setting: a panic would print a symbolized backtrace.
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs paoding");
    let pid = child.id() as libc::pid_t;
    let mut pipe = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    });
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(100));
                if done.load(Ordering::SeqCst) {
                    return;
                }
            }
            // SAFETY: kill has no memory effects; the child is not reaped yet, so its pid is ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; both out-pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    watchdog.join().expect("watchdog");
    assert_eq!(reaped, pid, "wait4");
    Outcome {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        seconds,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        stderr: reader.join().expect("stderr reader"),
    }
}

/// Write `model` to a fresh folder, run `paoding fit` on it with an output and a report, and
/// check the outcome; `names` must appear in the message.
fn refused(class: &str, model: &[u8], names: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("hostile.onnx");
    std::fs::write(&path, model).expect("write model");
    let out = dir.path().join("out.pdg");
    let report = dir.path().join("report.json");
    let o = run(&[
        "fit".as_ref(),
        path.as_os_str(),
        "--profile".as_ref(),
        "cortex-m7".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
    ]);
    println!(
        "| {class} | {} | {:.2} s | {:.0} MiB | {} |",
        o.code.map_or("killed".into(), |c| c.to_string()),
        o.seconds,
        o.peak_rss_mib,
        o.stderr
            .trim()
            .replace(&dir.path().display().to_string(), "…")
    );
    assert_eq!(o.code, Some(2), "{class}: {}", o.stderr);
    assert!(o.seconds <= 1.0, "{class}: {:.2} s", o.seconds);
    assert!(
        o.peak_rss_mib <= 256.0,
        "{class}: {:.0} MiB",
        o.peak_rss_mib
    );
    assert!(
        o.stderr.contains(names) && !o.stderr.contains("panicked"),
        "{class}: the message names {names}: {}",
        o.stderr
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "hostile.onnx")
        .collect();
    assert!(left.is_empty(), "{class}: files left behind: {left:?}");
}

fn ints(name: &str, data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![data.len() as i64],
        data_type: 7,
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn scalar(name: &str, value: i64) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        data_type: 7,
        int64_data: vec![value],
        ..Default::default()
    }
}

/// x[1,4] + `tensor` -> y.
fn adds(tensor: pb::TensorProto) -> Vec<u8> {
    let name = tensor.name.clone();
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.tensor(tensor);
    b.node("Add", &["x", &name], "y", &[]);
    b.encode("y")
}

/// x[1,4] + a constant computed by `op` from `inputs` -> y.
fn adds_computed(op: &str, tensors: Vec<pb::TensorProto>, inputs: &[&str]) -> Vec<u8> {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    for t in tensors {
        b.tensor(t);
    }
    b.node(op, inputs, "big", &[]);
    b.node("Add", &["x", "big"], "y", &[]);
    b.encode("y")
}

const TERA: i64 = 1 << 40;
const MEGA: i64 = 1 << 20;

#[test]
fn an_initializer_claiming_2_pow_40_elements() {
    let t = pb::TensorProto {
        name: "w".into(),
        dims: vec![MEGA, MEGA],
        data_type: 1,
        ..Default::default()
    };
    refused(
        "initializer of 2^40 elements, no data",
        &adds(t),
        "tensor 'w'",
    );
}

#[test]
fn an_initializer_larger_than_the_file() {
    let t = pb::TensorProto {
        name: "w".into(),
        dims: vec![1 << 24],
        data_type: 1,
        raw_data: vec![0; 16],
        ..Default::default()
    };
    refused(
        "initializer of 64 MiB in a 100-byte file",
        &adds(t),
        "tensor 'w'",
    );
}

#[test]
fn an_initializer_whose_length_disagrees_with_its_data() {
    let t = pb::TensorProto {
        name: "w".into(),
        dims: vec![1, 4],
        data_type: 1,
        float_data: vec![1.0; 5],
        ..Default::default()
    };
    refused(
        "initializer [1, 4] holding 5 floats",
        &adds(t),
        "tensor 'w'",
    );
}

#[test]
fn an_input_claiming_2_pow_40_elements() {
    let mut b = OnnxBuilder::new(&[1, MEGA, MEGA], 13);
    b.node("Relu", &["x"], "y", &[]);
    refused("input of 2^40 elements", &b.encode("y"), "input 'x'");
}

#[test]
fn huge_dimensions_beside_a_symbolic_batch() {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.node("Relu", &["x"], "y", &[]);
    let mut model = b.model("y");
    let graph = model.graph.as_mut().expect("graph");
    graph.input = vec![value_info("x", Some(&[1, 1 << 31, 1 << 31]))];
    if let Some(pb::type_proto::Value::TensorType(t)) = graph.input[0]
        .r#type
        .as_mut()
        .and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().expect("shape").dim[0] = Dimension {
            value: Some(Value::DimParam("N".into())),
            ..Default::default()
        };
    }
    refused(
        "input [N, 2^31, 2^31] (symbolic batch)",
        &model.encode_to_vec(),
        "input 'x'",
    );
}

#[test]
fn a_constant_of_shape_of_2_pow_40_elements() {
    refused(
        "ConstantOfShape to 2^40 elements",
        &adds_computed("ConstantOfShape", vec![ints("s", &[MEGA, MEGA])], &["s"]),
        "node 'big'",
    );
}

#[test]
fn an_expand_to_2_pow_40_elements() {
    let one = pb::TensorProto {
        name: "one".into(),
        dims: vec![1],
        data_type: 1,
        float_data: vec![1.0],
        ..Default::default()
    };
    refused(
        "Expand to 2^40 elements",
        &adds_computed("Expand", vec![one, ints("s", &[MEGA, MEGA])], &["one", "s"]),
        "node 'big'",
    );
}

#[test]
fn a_tile_to_2_pow_40_elements() {
    let w = pb::TensorProto {
        name: "w".into(),
        dims: vec![1, 4],
        data_type: 1,
        float_data: vec![1.0; 4],
        ..Default::default()
    };
    refused(
        "Tile to 2^40 elements",
        &adds_computed("Tile", vec![w, ints("r", &[MEGA, 1 << 18])], &["w", "r"]),
        "node 'big'",
    );
}

#[test]
fn a_broadcast_to_2_pow_40_elements() {
    let column = pb::TensorProto {
        name: "col".into(),
        dims: vec![MEGA, 1],
        data_type: 1,
        raw_data: vec![0; 4 << 20],
        ..Default::default()
    };
    let row = pb::TensorProto {
        name: "row".into(),
        dims: vec![1, MEGA],
        raw_data: vec![0; 4 << 20],
        ..column.clone()
    };
    refused(
        "Mul of [2^20, 1] by [1, 2^20] (8 MiB file)",
        &adds_computed("Mul", vec![column, row], &["col", "row"]),
        "node 'big'",
    );
}

#[test]
fn a_range_of_2_pow_40_elements() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.tensor(scalar("start", 0))
        .tensor(scalar("limit", TERA))
        .tensor(scalar("delta", 1));
    b.node("Range", &["start", "limit", "delta"], "big", &[]);
    b.node(
        "Cast",
        &["big"],
        "bigf",
        &[("to", onnx_builder::Attr::Int(1))],
    );
    b.node("Add", &["x", "bigf"], "y", &[]);
    refused("Range of 2^40 elements", &b.encode("y"), "node 'big'");
}

#[test]
fn a_pad_to_2_pow_40_elements() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.tensor(ints("pads", &[0, 0, 0, TERA]));
    b.node("Pad", &["x", "pads"], "y", &[]);
    refused("Pad of the input to 2^40 elements", &b.encode("y"), "\"y\"");
}

#[test]
fn a_zero_sized_input_dimension() {
    let mut b = OnnxBuilder::new(&[1, 0, 4], 13);
    b.node("Relu", &["x"], "y", &[]);
    refused("input [1, 0, 4]", &b.encode("y"), "input 'x'");
}

#[test]
fn a_zero_sized_weight() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.weight("w", &[4, 0], vec![]);
    b.node("MatMul", &["x", "w"], "y", &[]);
    refused("MatMul by a [4, 0] weight", &b.encode("y"), "node 'y'");
}

#[test]
fn nodes_forming_a_cycle() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.node("Add", &["x", "b"], "a", &[]);
    b.node("Relu", &["a"], "b", &[]);
    b.node("Sigmoid", &["b"], "y", &[]);
    refused("a -> b -> a", &b.encode("y"), "form a cycle: node");
}

#[test]
fn a_dangling_value_name() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.node("Add", &["x", "nowhere"], "y", &[]);
    refused(
        "a node reads an undefined name",
        &b.encode("y"),
        "'nowhere'",
    );
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.node("Relu", &["x"], "y", &[]);
    refused("the graph output is undefined", &b.encode("z"), "'z'");
}

#[test]
fn a_duplicated_value_name() {
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.node("Relu", &["x"], "y", &[]);
    b.node("Sigmoid", &["x"], "y", &[]);
    refused("two nodes write 'y'", &b.encode("y"), "'y'");
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.weight("x", &[1, 4], vec![0.0; 4]);
    b.node("Relu", &["x"], "x", &[]);
    b.node("Relu", &["x"], "y", &[]);
    refused("a node writes an initializer", &b.encode("y"), "'x'");
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.weight("w", &[1, 4], vec![0.0; 4]);
    b.weight("w", &[1, 4], vec![1.0; 4]);
    b.node("Add", &["x", "w"], "y", &[]);
    refused("an initializer declared twice", &b.encode("y"), "'w'");
}

/// Found by the `import` fuzz target (fuzz/regressions/import/): a Transpose of constants
/// whose perm repeats an axis took tract 947 MB in the fuzzer and 22 GB and minutes in a
/// debug build.
#[test]
fn a_constant_transpose_with_a_repeated_axis() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/import/transpose-repeated-axis.onnx"),
    )
    .expect("the fuzzer's input");
    refused(
        "fuzz: constant Transpose, perm [0, 3, 3, 2]",
        &model,
        "node 't' (Transpose)",
    );
}

/// Found by the `import` fuzz target (fuzz/regressions/import/): a BatchNormalization of a
/// rank-1 tensor made tract's shape rule index the channel axis out of bounds with
/// `get_unchecked` (an abort in a debug build, undefined behaviour in a release build).
#[test]
fn a_batch_norm_of_a_vector() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/import/batchnorm-of-a-vector.onnx"),
    )
    .expect("the fuzzer's input");
    refused(
        "fuzz: BatchNormalization of a rank-1 tensor",
        &model,
        "node 'n' (BatchNorm)",
    );
}

/// Found by the `import` fuzz target (fuzz/regressions/import/): the same BatchNormalization
/// of a vector, on a dead branch: tract's analysis visits dead nodes too, so the importer now
/// keeps only what the output depends on before anything is analysed (this model also names a
/// node like the graph input, which tract then refuses).
#[test]
fn a_dead_batch_norm_of_a_vector() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/import/dead-batchnorm-of-a-vector.onnx"),
    )
    .expect("the fuzzer's input");
    refused(
        "fuzz: dead BatchNormalization of a rank-1 tensor",
        &model,
        "node #5 \"x\" Tanh",
    );
    // Without the clashing name, the dead node is dropped before tract's analysis reaches it.
    let mut proto = pb::ModelProto::decode(&model[..]).expect("decodes");
    let graph = proto.graph.as_mut().expect("graph");
    for node in graph.node.iter_mut().filter(|n| n.name == "x") {
        node.name = "tanh".into();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("renamed.onnx");
    std::fs::write(&path, proto.encode_to_vec()).expect("write");
    let o = run(&["inspect".as_ref(), path.as_os_str()]);
    assert!(
        matches!(o.code, Some(0 | 2)) && !o.stderr.contains("panicked"),
        "{:?}: {}",
        o.code,
        o.stderr
    );
}

/// Found by the `import` fuzz target (fuzz/regressions/import/): a Squeeze whose axes lie
/// outside its input made tract's shape rule panic. The importer catches it and names the
/// node; under `RUST_BACKTRACE=1` the panic hook's backtrace took 250 MB, so the importer's
/// hook stays silent while it imports (every run here has `RUST_BACKTRACE=1`).
#[test]
fn a_squeeze_of_an_axis_out_of_range() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/import/squeeze-axis-out-of-range.onnx"),
    )
    .expect("the fuzzer's input");
    refused(
        "fuzz: Squeeze of an axis out of range (tract panics)",
        &model,
        "node 'r' (Squeeze13): internal panic",
    );
}

/// Found by the `import` fuzz target (fuzz/regressions/import/): constants Pad, Gather and
/// Transpose, each under the per-value bound, that tract computed and kept together: 360 MB
/// and 0.7 s (debug build). Constants together now have a budget.
#[test]
fn a_chain_of_constants_over_256_mib_together() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/regressions/import/constant-chain-over-256-mib.onnx"),
    )
    .expect("the fuzzer's input");
    refused(
        "fuzz: constant Pad, Gather, Transpose, 360 MB together",
        &model,
        "node 'cc' (Gather)",
    );
}

/// The checks refuse nothing well formed: a model like the hostile ones but honest imports.
#[test]
fn the_same_shapes_honestly_import() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ok.onnx");
    let mut b = OnnxBuilder::new(&[1, 4], 13);
    b.weight("one", &[1], vec![1.0]);
    b.tensor(ints("s", &[1, 4]));
    b.node("Expand", &["one", "s"], "c", &[]);
    b.node("Add", &["x", "c"], "y", &[]);
    std::fs::write(&path, b.encode("y")).expect("write");
    let o = run(&["inspect".as_ref(), path.as_os_str()]);
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(Path::new(&path).is_file());
}
