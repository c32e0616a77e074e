//! The `paoding` binary as scripts see it: output, JSON and exit codes
//! (0 fits or nothing to check, 1 does not fit, 2 usage or input error).

use std::path::PathBuf;
use std::process::{Command, Output};

fn paoding(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        .output()
        .expect("runs paoding")
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

fn shared(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models")
        .join(name)
        .display()
        .to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_prints_a_table_and_totals() {
    let out = paoding(&["inspect", &fixture("mlp_torch.onnx")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Dense+relu") && text.contains("total: 33738 params, 134952 weight bytes"),
        "{text}"
    );
    assert!(text.contains("activation arena: 1024 bytes"), "{text}");
}

#[test]
fn inspect_json_is_stable_and_complete() {
    let out = paoding(&[
        "inspect",
        &shared("kws_dscnn.onnx"),
        "--profile",
        "cortex-m7",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["schema"], "paoding.inspect/1");
    assert_eq!(v["cost"]["params"], 22_604);
    assert_eq!(v["input_shape"], serde_json::json!([1, 49, 10, 1]));
    assert_eq!(v["fits"], true);
    let resources: Vec<&str> = v["constraints"]
        .as_array()
        .expect("constraints")
        .iter()
        .map(|c| c["resource"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(resources, ["flash", "ram", "macs"]);
    let layers = v["cost"]["nodes"].as_array().expect("layers");
    let sum: u64 = layers.iter().map(|l| l["macs"].as_u64().unwrap_or(0)).sum();
    assert_eq!(
        sum,
        v["cost"]["macs"].as_u64().unwrap_or(1),
        "per-layer MACs add up to the total"
    );
}

#[test]
fn a_model_too_big_for_the_board_exits_1_and_says_by_how_much() {
    let out = paoding(&[
        "inspect",
        &shared("ad01_fp32.onnx"),
        "--profile",
        "qemu-mps2-an500",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DOES NOT FIT (over by 834080"), "{text}");
}

#[test]
fn bad_input_exits_2_with_a_message_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"\x08\x07\x12\xff\xff\xff\xff garbage").expect("write");
    let bad_profile = dir.path().join("bad.toml");
    std::fs::write(&bad_profile, "name = \"x\"\n").expect("write");
    for args in [
        vec!["inspect".to_string(), garbage.display().to_string()],
        vec![
            "inspect".into(),
            fixture("mlp_torch.onnx"),
            "--profile".into(),
            "no-such-board".into(),
        ],
        vec![
            "inspect".into(),
            fixture("mlp_torch.onnx"),
            "--profile".into(),
            bad_profile.display().to_string(),
        ],
        vec!["inspect".into()],
        vec!["frobnicate".into()],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = paoding(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("error"), "{args:?}: {err}");
    }
}

#[test]
fn profiles_lists_the_shipped_boards() {
    let out = paoding(&["profiles"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in [
        "cortex-m7",
        "cortex-m4",
        "cortex-m0plus",
        "cortex-m33",
        "esp32-s3",
        "qemu-mps2-an500",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
}
