//! Every path argument is an OS path: file names that are not UTF-8 (legal on Linux) work for
//! input and output, and show lossily in messages.
#![cfg(unix)]

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn paoding(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        .output()
        .expect("runs paoding")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

/// `dir/prefix<0xff>suffix`: not valid UTF-8.
fn non_utf8(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let mut bytes = prefix.as_bytes().to_vec();
    bytes.push(0xff);
    bytes.extend_from_slice(suffix.as_bytes());
    dir.join(OsString::from_vec(bytes))
}

fn check(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn non_utf8_names_work_for_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = non_utf8(dir.path(), "model-", ".onnx");
    std::fs::copy(fixture("mlp_torch.onnx"), &model).expect("copy model");
    let profile = non_utf8(dir.path(), "board-", ".toml");
    std::fs::write(&profile, "flash_bytes = \"64K\"\nram_bytes = \"16K\"\n").expect("profile");
    let input = non_utf8(dir.path(), "x-", ".npy");
    std::fs::copy(fixture("digits_test_x_nchw.npy"), &input).expect("copy input");

    let out = paoding(&[
        "inspect".as_ref(),
        model.as_os_str(),
        "--profile".as_ref(),
        profile.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the MLP's 135 KB do not fit 64 KiB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("profile board-\u{fffd}"),
        "the name is the file stem, lossily: {text}"
    );

    let template = non_utf8(dir.path(), "out-", "-{profile}.pdg");
    let report = non_utf8(dir.path(), "report-", ".json");
    let onnx = non_utf8(dir.path(), "fitted-", "-{profile}.onnx");
    let out = paoding(&[
        "fit".as_ref(),
        model.as_os_str(),
        "--profile".as_ref(),
        profile.as_os_str(),
        "--profile".as_ref(),
        "cortex-m7".as_ref(),
        "-o".as_ref(),
        template.as_os_str(),
        "--onnx".as_ref(),
        onnx.as_os_str(),
        "--report".as_ref(),
        report.as_os_str(),
        "--probes".as_ref(),
        "uniform".as_ref(),
    ]);
    check(&out, "fit");
    let blob = |board: &str| non_utf8(dir.path(), "out-", &format!("-{board}.pdg"));
    // The profile named by its file: its name is the lossy stem, placed into the raw bytes.
    let board = "board-\u{fffd}";
    for path in [
        blob(board),
        blob("cortex-m7"),
        non_utf8(dir.path(), "fitted-", "-cortex-m7.onnx"),
        report.clone(),
    ] {
        assert!(path.is_file(), "{} was written", path.display());
    }

    let output = non_utf8(dir.path(), "y-", ".npy");
    let out = paoding(&[
        "run".as_ref(),
        blob("cortex-m7").as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
    ]);
    check(&out, "run");
    assert!(output.is_file());

    let pruned = non_utf8(dir.path(), "pruned-", ".onnx");
    let probes = non_utf8(dir.path(), "probes-", ".npy");
    std::fs::copy(fixture("digits_test_x_nchw.npy"), &probes).expect("copy probes");
    let out = paoding(&[
        "prune".as_ref(),
        model.as_os_str(),
        "--ratio".as_ref(),
        "0.5".as_ref(),
        "--probes".as_ref(),
        probes.as_os_str(),
        "--data".as_ref(),
        input.as_os_str(),
        "-o".as_ref(),
        pruned.as_os_str(),
    ]);
    check(&out, "prune");
    assert!(pruned.is_file());
}

#[test]
fn a_missing_non_utf8_file_is_named_lossily() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = non_utf8(dir.path(), "missing-", ".onnx");
    let out = paoding(&["inspect".as_ref(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing-\u{fffd}.onnx"), "{err}");
    assert!(!err.contains("invalid UTF-8"), "{err}");
    let out = paoding(&[
        "inspect".as_ref(),
        fixture("mlp_torch.onnx").as_os_str(),
        "--profile".as_ref(),
        OsStr::from_bytes(b"no-\xff-board"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no profile 'no-\u{fffd}-board'"), "{err}");
}

/// A model named by its bare file name, run from its own folder, finds its external data
/// beside it (a bare name's parent is the empty path, which names no folder).
#[test]
fn external_data_is_found_beside_a_model_named_without_a_folder() {
    let out = Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(["inspect", "cnn_dynamo_torch.onnx"])
        .current_dir(fixture(""))
        .output()
        .expect("runs paoding");
    check(&out, "inspect cnn_dynamo_torch.onnx from tests/fixtures");
    assert!(String::from_utf8_lossy(&out.stdout).contains("opset 18"));
}
