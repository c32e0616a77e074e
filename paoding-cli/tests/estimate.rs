//! The data-free fidelity estimate as a user sees it: every report names its check set, gives
//! the agreement's interval, warns when the set does not exercise the model, judges
//! autoencoders by their reconstructions, and takes the input range from the file.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn paoding(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        .output()
        .expect("runs paoding")
}

fn model(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(path)
        .display()
        .to_string()
}

/// `paoding prune MODEL --ratio R --json` with a private cache; the report.
fn prune_json(file: &str, ratio: &str, extra: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    prune_json_cached(file, ratio, extra, dir.path())
}

/// The same, with probes cached in `dir/cache` (shared by the runs of one test).
fn prune_json_cached(
    file: &str,
    ratio: &str,
    extra: &[&str],
    dir: &std::path::Path,
) -> (Value, String) {
    let out = dir.join("p.onnx").display().to_string();
    let cache = dir.join("cache").display().to_string();
    let mut args = vec![
        "prune",
        file,
        "--ratio",
        ratio,
        "--cache-dir",
        &cache,
        "-o",
        &out,
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = paoding(&args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{err}");
    (serde_json::from_slice(&o.stdout).expect("JSON"), err)
}

#[test]
fn without_data_fidelity_is_estimated_on_held_out_probes_with_an_interval() {
    let file = model("../tests/fixtures/cnn_pool_torch.onnx");
    let (v, _) = prune_json(&file, "0.5", &["--probe-count", "128"]);
    let f = &v["fidelity"];
    assert_eq!(f["data_free"], true);
    assert_eq!(f["task"]["kind"], "classifier");
    let inputs = f["inputs"].as_str().unwrap();
    assert!(
        inputs.contains("128 held-out probes by class-conditional inversion")
            && inputs.contains("mean confidence is 0.97")
            && inputs.contains("input range [0, 1] (assumed"),
        "{inputs}"
    );
    let a = f["fidelity"]["agreement"].as_f64().unwrap();
    let (lo, hi) = (
        f["fidelity"]["agreement_interval"][0].as_f64().unwrap(),
        f["fidelity"]["agreement_interval"][1].as_f64().unwrap(),
    );
    assert!(lo < a && a <= hi && hi <= 1.0, "{lo} {a} {hi}");
    let r = &f["robustness"];
    assert!(
        r["epsilon"].as_f64().unwrap() == 0.05 && r["retention"].is_number(),
        "{r}"
    );
    assert_eq!(f["warnings"], serde_json::json!([]));

    // The check set's seed is never the refit's.
    let refit = v["probe_description"].as_str().unwrap();
    assert!(
        refit.contains("seed 0;") && !inputs.contains("seed 0"),
        "{refit} / {inputs}"
    );

    // Uniform noise and real data stay choices, and say so.
    let (u, _) = prune_json(
        &file,
        "0.5",
        &["--probe-count", "128", "--check-probes", "uniform"],
    );
    assert!(u["fidelity"]["inputs"]
        .as_str()
        .unwrap()
        .contains("128 held-out uniform probes"));
    let (d, _) = prune_json(
        &file,
        "0.5",
        &[
            "--probe-count",
            "128",
            "--data",
            &model("../tests/fixtures/digits_test_x_nchw.npy"),
            "--labels",
            &model("../tests/fixtures/digits_test_y.npy"),
        ],
    );
    assert_eq!(d["fidelity"]["data_free"], false);
    assert!(d["fidelity"]["accuracy_after"].is_number());
    // Beside the data, what the estimate would have said (the same held-out set).
    let e = &d["fidelity"]["without_data"];
    assert_eq!(e["data_free"], true);
    assert!(e["inputs"]
        .as_str()
        .unwrap()
        .starts_with("128 held-out probes by class-conditional inversion"));
    assert!(e["fidelity"]["agreement"].is_number() && e["robustness"]["retention"].is_number());
}

#[test]
fn a_check_set_on_which_the_model_gives_one_class_is_flagged() {
    // MLPerf Tiny's keyword spotter takes MFCCs far outside [0, 1]: on uniform noise in
    // [0, 1] it answers one class, so agreement there says nothing.
    let kws = model("../../shared/models/kws_dscnn.onnx");
    let dir = tempfile::tempdir().unwrap();
    let (v, err) = prune_json_cached(
        &kws,
        "0.25",
        &["--probe-count", "64", "--check-probes", "uniform"],
        dir.path(),
    );
    let warnings = v["fidelity"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.contains("gives one class to") && w.contains("--input-range"),
        "{w}"
    );
    // The text report says so too (stderr carries only progress; the warning is in the report).
    let o = paoding(&[
        "prune",
        &kws,
        "--ratio",
        "0.25",
        "--probe-count",
        "64",
        "--check-probes",
        "uniform",
        "--cache-dir",
        &dir.path().join("cache").display().to_string(),
        "-o",
        &dir.path().join("p.onnx").display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("warning: the check set says little"),
        "{text}{err}"
    );

    // The default check set is inverted towards every class: it exercises the model.
    let (v, _) = prune_json_cached(&kws, "0.25", &["--probe-count", "64"], dir.path());
    assert_eq!(v["fidelity"]["warnings"], serde_json::json!([]));
}

#[test]
fn autoencoders_are_judged_by_their_reconstructions() {
    let ad = model("../../shared/models/ad01_fp32.onnx");
    let (v, _) = prune_json(&ad, "0.25", &["--probe-count", "128"]);
    let f = &v["fidelity"];
    assert_eq!(f["task"]["kind"], "autoencoder");
    let inputs = f["inputs"].as_str().unwrap();
    assert!(
        inputs.contains("reconstructions of uniform noise")
            && inputs.contains("(the range of the autoencoder's reconstructions"),
        "{inputs}"
    );
    let l2 = f["fidelity"]["relative_l2"].as_f64().unwrap();
    let snr = f["fidelity"]["snr_db"].as_f64().unwrap();
    assert!(l2 > 0.0 && l2 < 0.5, "{l2}");
    assert!((snr + 20.0 * l2.log10()).abs() < 1e-6, "{snr} dB vs {l2}");
    assert!(f["robustness"].is_null(), "no FGSM for an autoencoder");

    // The refit reconstructs too, and top-1 agreement is never the figure.
    assert!(v["probe_description"]
        .as_str()
        .unwrap()
        .contains("reconstructions"));
    let dir = tempfile::tempdir().unwrap();
    let o = paoding(&[
        "prune",
        &ad,
        "--ratio",
        "0.25",
        "--probe-count",
        "128",
        "--cache-dir",
        &dir.path().join("c").display().to_string(),
        "-o",
        &dir.path().join("p.onnx").display().to_string(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("of the reconstructions") && !text.contains("agreement"),
        "{text}"
    );
    // A minimum agreement means nothing for it: refused, nothing written.
    let o = paoding(&[
        "fit",
        &ad,
        "--profile",
        "cortex-m4",
        "--flash",
        "200K",
        "--min-agreement",
        "0.9",
        "-o",
        &dir.path().join("ad.pdg").display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs a classifier"));
    assert!(!dir.path().join("ad.pdg").exists());
}

#[test]
fn the_input_range_comes_from_the_file_where_it_tells_it() {
    // The residual CNN kept its batch norms: the first one's running statistics give the
    // input's mean and variance.
    let (v, _) = prune_json(
        &model("../tests/fixtures/cnn_residual_bn_torch.onnx"),
        "0.25",
        &[
            "--probe-count",
            "32",
            "--probes",
            "uniform",
            "--check-probes",
            "uniform",
        ],
    );
    let range = &v["probes"]["input_range"];
    let (lo, hi) = (range[0].as_f64().unwrap(), range[1].as_f64().unwrap());
    // The digits lie in [0, 1] with mean 0.31 and standard deviation 0.38.
    assert!(
        (-0.6..0.0).contains(&lo) && (0.7..1.2).contains(&hi),
        "{lo} {hi}"
    );
    assert_eq!(v["probes"]["range_source"]["kind"], "implied");
    assert!(v["fidelity"]["inputs"]
        .as_str()
        .unwrap()
        .contains("first batch norm"));
    // Given on the command line, it wins.
    let (v, _) = prune_json(
        &model("../tests/fixtures/cnn_residual_bn_torch.onnx"),
        "0.25",
        &[
            "--probe-count",
            "32",
            "--probes",
            "uniform",
            "--check-probes",
            "uniform",
            "--input-range",
            "-1,2",
        ],
    );
    assert_eq!(v["probes"]["input_range"], serde_json::json!([-1.0, 2.0]));
    assert_eq!(v["probes"]["range_source"]["kind"], "given");
}
