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
