//! int8 through the binary, as a user sees it: `fit --dtype int8|auto` writes an int8 blob,
//! judged on the check set against the f32 original, and `eval` and `run` take it.

mod common;

use std::path::Path;

use common::{fixture, paoding, stderr};

/// `fit` of the pooled CNN to the QEMU board with `--flash`, `--dtype` and a private cache;
/// the report as JSON.
fn fit(dir: &Path, flash: &str, dtype: &str, blob: &Path) -> serde_json::Value {
    let report = dir.join(format!("{dtype}-{flash}.json"));
    let o = paoding(&[
        "fit",
        &fixture("cnn_pool_torch.onnx"),
        "--profile",
        "qemu-mps2-an500",
        "--flash",
        flash,
        "--dtype",
        dtype,
        "--cache-dir",
        &dir.join("cache").display().to_string(),
        "-o",
        &blob.display().to_string(),
        "--report",
        &report.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON")
}

#[test]
fn int8_fits_the_readme_case_unpruned_at_a_quarter_of_the_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("m.pdg");
    let r = fit(dir.path(), "32K", "int8", &blob);
    assert_eq!(r["schema"], "paoding.fit/3");
    assert_eq!(r["status"], "fits-unpruned", "{r}");
    assert_eq!(r["dtype"], "int8");
    let flash = r["fitted"]["flash_bytes"].as_u64().expect("flash");
    let original = r["original"]["flash_bytes"].as_u64().expect("original");
    assert_eq!(flash, std::fs::metadata(&blob).expect("blob").len());
    assert!(
        flash * 100 <= original * 30,
        "int8 blob {flash} B is over 30 % of the f32 blob {original} B"
    );
    // int8 activations: a quarter of the f32 arena, or less.
    let ram = r["fitted"]["ram_bytes"].as_u64().expect("ram");
    assert!(ram * 4 <= r["original"]["ram_bytes"].as_u64().expect("ram"));
    let cost = &r["quantization"]["cost"];
    assert!(
        cost["agreement"].as_f64().expect("agreement") >= 0.99,
        "quantization alone: {cost}"
    );

    // Measured on the real test images: agreement with f32 and accuracy kept.
    let o = paoding(&[
        "eval",
        &fixture("cnn_pool_torch.onnx"),
        &blob.display().to_string(),
        "--data",
        &fixture("digits_test_x_nchw.npy"),
        "--labels",
        &fixture("digits_test_y.npy"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let agreement = e["fidelity"]["agreement"].as_f64().expect("agreement");
    let (before, after) = (
        e["accuracy_original"].as_f64().expect("accuracy"),
        e["accuracy_candidate"].as_f64().expect("accuracy"),
    );
    assert!(agreement >= 0.99, "real agreement {agreement}");
    assert!(before - after <= 0.005, "accuracy {before} -> {after}");

    // `run` takes the int8 blob with f32 inputs, as the f32 one.
    let out = dir.path().join("y.npy");
    let o = paoding(&[
        "run",
        &blob.display().to_string(),
        "--input",
        &fixture("digits_test_x_nchw.npy"),
        "--output",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.exists());
}

#[test]
fn auto_keeps_f32_when_it_fits_and_else_the_more_faithful_pruned_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("m.pdg");
    // 64 KiB: the f32 model fits as it is.
    let r = fit(dir.path(), "64K", "auto", &blob);
    assert_eq!(
        (r["dtype"].as_str(), r["status"].as_str()),
        (Some("f32"), Some("fits-unpruned"))
    );
    // 32 KiB: f32 would need pruning, int8 fits unpruned.
    let r = fit(dir.path(), "32K", "auto", &blob);
    assert_eq!(
        (r["dtype"].as_str(), r["status"].as_str()),
        (Some("int8"), Some("fits-unpruned"))
    );
    assert!(
        r["dtype_reason"]
            .as_str()
            .unwrap_or("")
            .contains("int8 fits unpruned"),
        "{r}"
    );
    // 9 KiB: both need pruning; auto compares them on the check set and says so.
    let r = fit(dir.path(), "9K", "auto", &blob);
    assert_eq!(r["status"], "pruned");
    let why = r["dtype_reason"].as_str().unwrap_or("");
    assert!(why.contains("int8 keeps") && why.contains("f32"), "{why}");
    assert!(r["fitted"]["flash_bytes"].as_u64().unwrap_or(u64::MAX) <= 9 * 1024);
    let int8 = fit(dir.path(), "9K", "int8", &dir.path().join("i.pdg"));
    let f32 = fit(dir.path(), "9K", "f32", &dir.path().join("f.pdg"));
    let agreement = |r: &serde_json::Value| {
        r["fidelity"]["fidelity"]["agreement"]
            .as_f64()
            .expect("agreement")
    };
    assert_eq!(agreement(&r), agreement(&int8).max(agreement(&f32)));
}

/// `prune` of the pooled CNN with `--dtype`, a private cache and extra arguments; the JSON
/// report and the exit status.
fn prune(dir: &Path, dtype: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let cache = dir.join("cache").display().to_string();
    let onnx = dir.join(format!("{dtype}.onnx")).display().to_string();
    let pdg = dir.join(format!("{dtype}.pdg")).display().to_string();
    let mut args = vec![
        "prune",
        "--ratio",
        "0.3",
        "--dtype",
        dtype,
        "--cache-dir",
        &cache,
        "-o",
        &onnx,
        "--pdg",
        &pdg,
        "--json",
    ];
    args.extend_from_slice(extra);
    let model = fixture("cnn_pool_torch.onnx");
    args.insert(1, &model);
    let o = paoding(&args);
    let report = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code(), report, stderr(&o))
}

#[test]
fn prune_stores_and_judges_the_pruned_model_as_int8_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, f32, err) = prune(dir.path(), "f32", &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, int8, err) = prune(dir.path(), "int8", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(int8["schema"], "paoding.prune/3");
    assert_eq!(
        (f32["dtype"].as_str(), int8["dtype"].as_str()),
        (Some("f32"), Some("int8"))
    );
    // The same pruning (same widths); the int8 blob is the one written, at about a quarter.
    assert_eq!(f32["layers"], int8["layers"]);
    let blob = |r: &serde_json::Value| r["after"]["blob_bytes"].as_u64().expect("blob bytes");
    let written = std::fs::metadata(dir.path().join("int8.pdg"))
        .expect("pdg")
        .len();
    assert_eq!(blob(&int8), written);
    assert!(
        blob(&int8) * 100 <= blob(&f32) * 30,
        "{} vs {}",
        blob(&int8),
        blob(&f32)
    );
    assert!(
        int8["quantization"]["cost"]["agreement"]
            .as_f64()
            .expect("cost")
            >= 0.99,
        "{int8}"
    );
    // The int8 blob is what was judged: on the real test images it agrees with the original
    // as the report's interval says it would.
    let o = paoding(&[
        "eval",
        &fixture("cnn_pool_torch.onnx"),
        &dir.path().join("int8.pdg").display().to_string(),
        "--data",
        &fixture("digits_test_x_nchw.npy"),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let real = e["fidelity"]["agreement"].as_f64().expect("agreement");
    let plausible = &int8["fidelity"]["plausible_on_real_data"];
    let low = plausible[0].as_f64().expect("plausible range");
    assert!(
        real >= low && real >= 0.95,
        "real agreement {real}; report {plausible}"
    );
}

#[test]
fn keep_f32_leaves_the_named_layer_in_f32_and_its_neighbours_in_int8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, r, err) = prune(dir.path(), "int8", &["--keep-f32", "conv1"]);
    assert_eq!(code, Some(0), "{err}");
    let left: Vec<&str> = r["quantization"]["f32_layers"]
        .as_array()
        .expect("f32 layers")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    // conv1 and the max pooling that reads it stay f32; conv2 and the dense layers do not.
    assert_eq!(left, ["/conv1/Conv", "/MaxPool"], "{r}");
    let dtypes: Vec<(&str, &str)> = r["quantization"]["layers"]
        .as_array()
        .expect("per-layer dtypes")
        .iter()
        .map(|l| {
            (
                l["layer"].as_str().unwrap_or(""),
                l["dtype"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(dtypes.first(), Some(&("/conv1/Conv", "f32")), "{r}");
    assert_eq!(
        dtypes.iter().filter(|(_, d)| *d == "int8").count(),
        dtypes.len() - 2
    );
    assert!(r["quantization"]["calibration"]
        .as_str()
        .unwrap_or("")
        .contains("kept f32 on request: conv1"));

    // A name that is no layer: exit 2, the layers listed, nothing written.
    let empty = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = prune(empty.path(), "int8", &["--keep-f32", "conv9"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--keep-f32 conv9") && err.contains("conv1, conv2, fc1, fc2"),
        "{err}"
    );
    assert!(!empty.path().join("int8.onnx").exists() && !empty.path().join("int8.pdg").exists());
}
