//! Bad input never panics and never half-works: truncated or garbage files, unsupported
//! operators, hostile tensor declarations and bad profiles each get an error that names
//! what is wrong and where.

use std::path::Path;

use paoding_cli::error::{ImportError, ProfileError};
use paoding_cli::import::import_onnx;
use paoding_cli::profile;
use paoding_tests::fixtures_dir;
use prost::Message;
use tract_onnx::pb::{self, tensor_proto::DataLocation, type_proto, StringStringEntryProto};

fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| pb::tensor_shape_proto::Dimension {
            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(d)),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn weight(name: &str, dims: &[i64]) -> pb::TensorProto {
    let n: i64 = dims.iter().product();
    pb::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: vec![0.5; n as usize],
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// x[1,4] -> MatMul(W[4,3]) -> `op` -> y, written to `dir/name`.
fn write_model(dir: &Path, name: &str, op: &str, w: pb::TensorProto) -> std::path::PathBuf {
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            name: "g".into(),
            node: vec![
                node("MatMul", "fc", &["x", "W"], "h"),
                node(op, "act", &["h"], "y"),
            ],
            initializer: vec![w],
            input: vec![value_info("x", &[1, 4])],
            output: vec![value_info("y", &[1, 3])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(name);
    std::fs::write(&path, model.encode_to_vec()).expect("write model");
    path
}

#[test]
fn a_well_formed_hand_built_model_imports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_model(dir.path(), "ok.onnx", "Relu", weight("W", &[4, 3]));
    let g = import_onnx(&path).expect("imports").graph;
    assert_eq!(g.param_count(), 15, "4x3 weights plus a zero bias");
}

#[test]
fn truncated_and_garbage_files_are_malformed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read(fixtures_dir().join("mlp_torch.onnx")).expect("fixture");
    for cut in [1, 10, good.len() / 3, good.len() / 2, good.len() - 7] {
        let path = dir.path().join(format!("cut{cut}.onnx"));
        std::fs::write(&path, &good[..cut]).expect("write");
        match import_onnx(&path) {
            Err(ImportError::Malformed { .. }) | Err(ImportError::BadTensor { .. }) => {}
            other => panic!("truncated at {cut}: expected a malformed-model error, got {other:?}"),
        }
    }
    for (name, bytes) in [
        ("empty.onnx", Vec::new()),
        ("text.onnx", b"hello, not a model".to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let err = import_onnx(&path).expect_err(name);
        assert!(
            err.to_string().contains(name),
            "the message names the file: {err}"
        );
    }
    let missing = import_onnx(&dir.path().join("nope.onnx")).expect_err("missing file");
    assert!(matches!(missing, ImportError::Io { .. }), "{missing:?}");
}

#[test]
fn unsupported_operators_name_the_op_and_the_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Known to ONNX and tract, but not mappable onto the IR.
    let path = write_model(dir.path(), "elu.onnx", "Elu", weight("W", &[4, 3]));
    let msg = import_onnx(&path).expect_err("Elu").to_string();
    assert!(
        msg.contains("Elu") && msg.contains("'act'") && msg.contains("paoding supports"),
        "{msg}"
    );
    // Not an ONNX operator at all.
    let path = write_model(
        dir.path(),
        "bogus.onnx",
        "FrobnicateV2",
        weight("W", &[4, 3]),
    );
    let msg = import_onnx(&path).expect_err("bogus op").to_string();
    assert!(
        msg.contains("FrobnicateV2") && msg.contains("'act'"),
        "{msg}"
    );
    // Recurrent layers and control flow are named as such, before tract lowers them into
    // nodes whose own errors would say nothing of them (a batch-first GRU failed as a
    // transpose that moves the batch axis).
    for (op, why) in [
        ("GRU", "recurrent"),
        ("LSTM", "recurrent"),
        ("Scan", "control flow"),
    ] {
        let path = write_model(dir.path(), "rnn.onnx", op, weight("W", &[4, 3]));
        let msg = import_onnx(&path).expect_err(op).to_string();
        assert!(
            msg.contains(&format!("unsupported operator {op} at node 'act'")) && msg.contains(why),
            "{msg}"
        );
    }
}

#[test]
fn hostile_tensor_declarations_are_refused_before_reading() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 2^40 x 2^40 floats.
    let absurd = pb::TensorProto {
        name: "W".into(),
        dims: vec![1 << 40, 1 << 40],
        data_type: 1,
        ..Default::default()
    };
    let msg = import_onnx(&write_model(dir.path(), "absurd.onnx", "Relu", absurd))
        .expect_err("absurd")
        .to_string();
    assert!(
        msg.contains("'W'") && msg.contains("declares 2^64 or more elements"),
        "{msg}"
    );

    let negative = pb::TensorProto {
        name: "W".into(),
        dims: vec![4, -3],
        data_type: 1,
        ..Default::default()
    };
    let msg = import_onnx(&write_model(dir.path(), "neg.onnx", "Relu", negative))
        .expect_err("negative")
        .to_string();
    assert!(msg.contains("negative dimension"), "{msg}");

    let short = pb::TensorProto {
        name: "W".into(),
        dims: vec![4, 3],
        data_type: 1,
        raw_data: vec![0; 20],
        ..Default::default()
    };
    let msg = import_onnx(&write_model(dir.path(), "short.onnx", "Relu", short))
        .expect_err("short")
        .to_string();
    assert!(msg.contains("holds 20 bytes"), "{msg}");

    // External data must stay inside the model's folder, and exist, and be long enough.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.bin"), [0u8; 48]).expect("write");
    let sub = dir.path().join("model");
    std::fs::create_dir(&sub).expect("mkdir");
    let external = |location: &str, length: &str| pb::TensorProto {
        name: "W".into(),
        dims: vec![4, 3],
        data_type: 1,
        data_location: Some(DataLocation::External as i32),
        external_data: vec![
            StringStringEntryProto {
                key: "location".into(),
                value: location.into(),
            },
            StringStringEntryProto {
                key: "length".into(),
                value: length.into(),
            },
        ],
        ..Default::default()
    };
    let escape = format!(
        "../../{}/secret.bin",
        outside
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    );
    for location in [escape.as_str(), "/etc/passwd", "../x.bin"] {
        let msg = import_onnx(&write_model(
            &sub,
            "ext.onnx",
            "Relu",
            external(location, "48"),
        ))
        .expect_err(location)
        .to_string();
        assert!(msg.contains("model's folder"), "{location}: {msg}");
    }
    std::fs::write(sub.join("w.bin"), [0u8; 16]).expect("write");
    let msg = import_onnx(&write_model(
        &sub,
        "ext.onnx",
        "Relu",
        external("w.bin", "48"),
    ))
    .expect_err("short external file")
    .to_string();
    assert!(msg.contains("past the end"), "{msg}");
    std::fs::write(sub.join("w.bin"), [0u8; 48]).expect("write");
    import_onnx(&write_model(
        &sub,
        "ext.onnx",
        "Relu",
        external("w.bin", "48"),
    ))
    .expect("valid external data imports");
}

#[test]
fn bad_profiles_name_the_key() {
    let good = profile::BUILT_IN[0].1;
    let cases = [
        (good.replace("ram_bytes = \"320K\"", ""), "ram_bytes"),
        (format!("{good}\nflsh_bytes = 5\n"), "flsh_bytes"),
        (
            good.replace("ram_bytes = \"320K\"", "ram_bytes = -5"),
            "ram_bytes",
        ),
        (
            good.replace("ram_bytes = \"320K\"", "ram_bytes = \"lots\""),
            "ram_bytes",
        ),
        (
            good.replace(
                "reserved_ram_bytes = \"64K\"",
                "reserved_ram_bytes = \"1M\"",
            ),
            "reserved_ram_bytes",
        ),
        (good.replace("cycles_per_mac = 2.0", ""), "cycles_per_mac"),
    ];
    for (text, key) in cases {
        let err = profile::parse(&text, "test.toml").expect_err(key);
        assert!(matches!(err, ProfileError::Invalid { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains(key) && msg.contains("test.toml"),
            "{key}: {msg}"
        );
    }
    assert!(matches!(
        profile::load("no-such-board"),
        Err(ProfileError::NotFound(..))
    ));
    for p in profile::built_in().expect("every shipped profile parses") {
        assert!(p.budget().is_ok(), "{}", p.name);
    }
}

#[test]
fn a_profile_needs_only_its_two_budgets() {
    let p = profile::parse(
        "flash_bytes = \"512K\"\nram_bytes = 131072\n",
        "boards/my-board.toml",
    )
    .expect("two keys are a profile");
    assert_eq!(p.name, "my-board", "the name defaults to the file stem");
    assert_eq!(
        p,
        paoding_core::profile::Profile::new(
            "my-board",
            paoding_core::profile::ByteSize(512 << 10),
            paoding_core::profile::ByteSize(128 << 10)
        ),
        "every other field at its documented default"
    );
    let b = p.budget().expect("budget");
    assert_eq!(
        (b.flash_bytes, b.ram_bytes, b.macs),
        (512 << 10, 128 << 10, None)
    );
    let named = profile::parse(
        "name = \"lab\"\nflash_bytes = \"1M\"\nram_bytes = \"1M\"\n",
        "x.toml",
    )
    .expect("named");
    assert_eq!(named.name, "lab");
}

#[test]
fn every_problem_of_a_profile_is_reported_at_once_with_key_and_line() {
    let text = "\
name = \"board\"
flash_bytes = 0
ram_bytes = \"lots\"
reserved_flash_bytes = \"16M\"
flsh_bytes = 5
max_latency_ms = 10
min_agreement = 1.5
round_to = 0
";
    let Err(ProfileError::Invalid { problems, .. }) = profile::parse(text, "t.toml") else {
        panic!("refused");
    };
    let got: Vec<(Option<usize>, Option<&str>)> = problems
        .iter()
        .map(|p| (p.line, p.key.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (Some(2), Some("flash_bytes")),
            (Some(3), Some("ram_bytes")),
            (Some(5), Some("flsh_bytes")),
            (Some(6), Some("max_latency_ms")),
            (Some(7), Some("min_agreement")),
            (Some(8), Some("round_to")),
        ],
        "{problems:#?}"
    );
    // A reserved share is only compared with a total that decoded and is not 0.
    assert!(!problems
        .iter()
        .any(|p| p.key.as_deref() == Some("reserved_flash_bytes")));

    // A missing required key has no line; it comes after the others.
    let Err(ProfileError::Invalid { problems, .. }) =
        profile::parse("ram_bytes = \"1M\"\nwat = 1\n", "t.toml")
    else {
        panic!("refused");
    };
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(
        (problems[0].line, problems[0].key.as_deref()),
        (Some(2), Some("wat"))
    );
    assert_eq!(
        (problems[1].line, problems[1].key.as_deref()),
        (None, Some("flash_bytes"))
    );

    // A syntax error has the line of the error.
    let Err(ProfileError::Invalid { problems, .. }) =
        profile::parse("flash_bytes = 1\nram_bytes = = 2\nmax_macs = 3\n", "t.toml")
    else {
        panic!("refused");
    };
    assert_eq!(
        (problems.len(), problems[0].line),
        (1, Some(2)),
        "{problems:?}"
    );
}

#[test]
fn budgets_of_zero_or_beyond_2_pow_63_name_the_key() {
    for (line, key) in [
        ("flash_bytes = 0", "flash_bytes"),
        ("flash_bytes = \"0K\"", "flash_bytes"),
        ("flash_bytes = \"8589934592G\"", "flash_bytes"),
        ("flash_bytes = \"9223372036854775808\"", "flash_bytes"),
        (
            "flash_bytes = 9223372036854775807\nreserved_flash_bytes = \"9000000000G\"",
            "reserved_flash_bytes",
        ),
        (
            "flash_bytes = 5\nreserved_flash_bytes = 5",
            "reserved_flash_bytes",
        ),
        ("flash_bytes = 5\nmax_macs = 0", "max_macs"),
        ("flash_bytes = 5\nmax_macs = \"10000000000G\"", "max_macs"),
    ] {
        let text = format!("ram_bytes = \"64K\"\n{line}\n");
        let err = profile::parse(&text, "t.toml").expect_err(line);
        let ProfileError::Invalid { problems, .. } = &err else {
            panic!("{err}");
        };
        assert_eq!(problems.len(), 1, "{line}: {err}");
        assert_eq!(problems[0].key.as_deref(), Some(key), "{line}: {err}");
        assert!(problems[0].line.is_some(), "{line}: {err}");
    }
    // The largest accepted budget still compares exactly.
    let p = profile::parse(
        "flash_bytes = 9223372036854775807\nram_bytes = 1\n",
        "t.toml",
    )
    .expect("2^63 - 1 bytes");
    let c = paoding_core::profile::check(&p.budget().expect("budget"), 0, 2, 0);
    assert_eq!((c[0].headroom, c[1].headroom), (i64::MAX, -1));
}
