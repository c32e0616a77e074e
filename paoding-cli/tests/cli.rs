//! The `paoding` binary as scripts see it: output, JSON and exit codes
//! (0 fits or nothing to check, 1 does not fit, 2 usage or input error).

mod common;

use std::process::{Command, Output};

use common::{fixture, paoding, shared, stderr};

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
        "cortex-m4",
        "--json",
    ]);
    // The profile stores int8; its 100 ms at 64 MHz and the int8 kernels' 4.5 cycles per MAC
    // allow 1,422,222 MACs, and the keyword spotter takes 2.66 M: exit 1.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["schema"], "paoding.inspect/2");
    assert_eq!(v["cost"]["params"], 22_604);
    assert_eq!(v["input_shape"], serde_json::json!([1, 49, 10, 1]));
    assert_eq!(v["fits"], false);
    let verdicts: Vec<(&str, bool)> = v["constraints"]
        .as_array()
        .expect("constraints")
        .iter()
        .map(|c| {
            (
                c["resource"].as_str().unwrap_or(""),
                c["fits"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [("flash", true), ("ram", true), ("macs", false)],
        "{v}"
    );
    assert_eq!(v["profile"]["budget"]["macs"], 1_422_222);
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
    assert!(text.contains("DOES NOT FIT (over by 834528"), "{text}");
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

#[test]
fn prune_writes_a_valid_model_and_reports_fidelity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pruned.onnx");
    let o = paoding(&[
        "prune",
        &fixture("mlp_torch.onnx"),
        "--ratio",
        "0.5",
        "-o",
        &out.display().to_string(),
        "--data",
        &fixture("digits_test_x_nchw.npy"),
        "--labels",
        &fixture("digits_test_y.npy"),
        "--probes",
        "uniform",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["schema"], "paoding.prune/3");
    assert_eq!(v["after"]["params"], 10_730);
    assert!(v["fidelity"]["accuracy_after"].as_f64().unwrap_or(0.0) > 0.95);
    // The written model imports again and has the pruned size.
    let o = paoding(&["inspect", &out.display().to_string(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["cost"]["params"], 10_730);
}

#[test]
fn prune_refuses_bad_arguments_without_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pruned.onnx");
    for ratio in ["1.5", "-0.1"] {
        let o = paoding(&[
            "prune",
            &fixture("mlp_torch.onnx"),
            "--ratio",
            ratio,
            "-o",
            &out.display().to_string(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{ratio}: {}", stderr(&o));
    }
    let o = paoding(&[
        "prune",
        &fixture("mlp_torch.onnx"),
        "--ratio",
        "0.5",
        "--method",
        "lottery",
        "-o",
        &out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists(), "no output on error");
}

#[test]
fn fit_writes_the_blob_and_report_and_run_executes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("m.pdg");
    let report = dir.path().join("r.json");
    let o = paoding(&[
        "fit",
        &fixture("cnn_pool_torch.onnx"),
        "--profile",
        "qemu-mps2-an500",
        "--flash",
        "30K",
        "-o",
        &blob.display().to_string(),
        "--report",
        &report.display().to_string(),
        "--probes",
        "uniform",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(r["schema"], "paoding.fit/3");
    assert_eq!(r["status"], "pruned");
    assert_eq!(
        r["fitted"]["flash_bytes"].as_u64(),
        Some(std::fs::metadata(&blob).expect("blob").len())
    );
    assert!(r["fitted"]["flash_bytes"].as_u64().unwrap_or(u64::MAX) <= 30 * 1024);

    let outputs = dir.path().join("y.npy");
    let o = paoding(&[
        "run",
        &blob.display().to_string(),
        "--input",
        &fixture("digits_test_x_nchw.npy"),
        "--output",
        &outputs.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(outputs.exists());

    // A corrupted blob is exit 2 with a message.
    let mut bytes = std::fs::read(&blob).expect("blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let bad = dir.path().join("bad.pdg");
    std::fs::write(&bad, bytes).expect("write");
    let o = paoding(&[
        "run",
        &bad.display().to_string(),
        "--input",
        &fixture("digits_test_x_nchw.npy"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("error") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn fit_for_a_fleet_writes_one_file_per_board_and_exits_1_if_one_cannot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let template = dir.path().join("{profile}.pdg").display().to_string();
    let o = paoding(&[
        "fit",
        &shared("ad01_fp32.onnx"),
        "--profile",
        "cortex-m33",
        "--profile",
        "qemu-mps2-an500",
        "-o",
        &template,
        "--probes",
        "uniform",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["all_fit"], true);
    assert_eq!(v["boards"][0]["status"], "fits-unpruned");
    assert_eq!(v["boards"][1]["status"], "pruned");
    assert!(
        dir.path().join("cortex-m33.pdg").exists()
            && dir.path().join("qemu-mps2-an500.pdg").exists()
    );

    // Without {profile} a fleet would overwrite one file: refused up front.
    let o = paoding(&[
        "fit",
        &shared("ad01_fp32.onnx"),
        "--profile",
        "cortex-m7",
        "--profile",
        "cortex-m4",
        "-o",
        "x.pdg",
    ]);
    assert_eq!(o.status.code(), Some(2));

    // A board it cannot fit: exit 1, no file for it, an explanation.
    let tiny = dir.path().join("tiny.pdg");
    let o = paoding(&[
        "fit",
        &shared("kws_dscnn.onnx"),
        "--profile",
        "cortex-m7",
        "--ram",
        "1K",
        "-o",
        &tiny.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("input alone takes 1960 B"));
    assert!(!tiny.exists());
}

#[test]
fn synthesized_probes_are_cached_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let out = dir.path().join("p.onnx");
    let run = || {
        let o = paoding(&[
            "prune",
            &fixture("mlp_torch.onnx"),
            "--ratio",
            "0.5",
            "--probes",
            "invert",
            "--probe-count",
            "64",
            "--cache-dir",
            &cache.display().to_string(),
            "-o",
            &out.display().to_string(),
            "--json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        (
            v["probe_description"].as_str().unwrap_or("").to_string(),
            v["fidelity"]["inputs"].as_str().unwrap_or("").to_string(),
            std::fs::read(&out).expect("model"),
        )
    };
    let (first, check1, model1) = run();
    assert!(
        first.contains("class-conditional inversion") && first.contains("cached"),
        "{first}"
    );
    assert!(
        check1.contains("held-out probes") && check1.contains("; cached"),
        "{check1}"
    );
    let (second, check2, model2) = run();
    assert!(
        second.contains("(cached"),
        "the second run reads the cache: {second}"
    );
    assert!(
        check2.contains("(cached"),
        "the second run reads the check set from the cache: {check2}"
    );
    assert_eq!(
        model1, model2,
        "the same command gives the same model, byte for byte"
    );
    // The refit's probes and the held-out check set.
    assert_eq!(std::fs::read_dir(&cache).expect("cache").count(), 2);
}

#[test]
fn eval_sweep_and_report_run_through_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let o = paoding(&[
        "prune",
        &fixture("mlp_torch.onnx"),
        "--ratio",
        "0.5",
        "--probes",
        "uniform",
        "-o",
        &d("p.onnx"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = paoding(&[
        "eval",
        &fixture("mlp_torch.onnx"),
        &d("p.onnx"),
        "--data",
        &fixture("digits_test_x_nchw.npy"),
        "--labels",
        &fixture("digits_test_y.npy"),
        "--fgsm",
        "0.05",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["schema"], "paoding.eval/2");

    let o = paoding(&[
        "sweep",
        &fixture("mlp_torch.onnx"),
        "--ratios",
        "0.25,0.5",
        "--methods",
        "merge,magnitude",
        "--plot",
        &d("s.svg"),
        "--csv",
        &d("s.csv"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let svg = std::fs::read_to_string(d("s.svg")).expect("svg");
    assert!(svg.contains("<svg") && svg.contains("merge") && svg.contains("magnitude"));

    let o = paoding(&[
        "fit",
        &fixture("mlp_torch.onnx"),
        "--profile",
        "cortex-m7",
        "--flash",
        "40K",
        "--probes",
        "uniform",
        "--report",
        &d("fit.json"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = paoding(&[
        "report",
        &d("fit.json"),
        "--sweep",
        &d("s.csv"),
        "-o",
        &d("r.html"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let html = std::fs::read_to_string(d("r.html")).expect("html");
    assert!(
        html.contains("<svg") && html.contains("headroom") && !html.contains("<script"),
        "self-contained page"
    );
}

/// `paoding` with a given umask, through the shell (the test process's own umask is whatever
/// the harness has).
#[cfg(unix)]
fn paoding_with_umask(umask: &str, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        .output()
        .expect("runs paoding through sh")
}

#[cfg(unix)]
#[test]
fn written_files_get_the_mode_a_plain_create_would() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let commands: [Vec<String>; 5] = [
        vec![
            "fit".into(),
            fixture("mlp_torch.onnx"),
            "--profile".into(),
            "cortex-m7".into(),
            "--flash".into(),
            "40K".into(),
            "--probes".into(),
            "uniform".into(),
            "-o".into(),
            d("m.pdg"),
            "--onnx".into(),
            d("m.onnx"),
            "--report".into(),
            d("fit.json"),
        ],
        vec![
            "prune".into(),
            fixture("mlp_torch.onnx"),
            "--ratio".into(),
            "0.5".into(),
            "--probes".into(),
            "uniform".into(),
            "-o".into(),
            d("p.onnx"),
        ],
        vec![
            "sweep".into(),
            fixture("mlp_torch.onnx"),
            "--ratios".into(),
            "0.5".into(),
            "--methods".into(),
            "magnitude".into(),
            "--plot".into(),
            d("s.svg"),
            "--csv".into(),
            d("s.csv"),
        ],
        vec!["report".into(), d("fit.json"), "-o".into(), d("r.html")],
        vec![
            "run".into(),
            d("m.pdg"),
            "--input".into(),
            fixture("digits_test_x_nchw.npy"),
            "--output".into(),
            d("y.npy"),
        ],
    ];
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = paoding_with_umask("022", &args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    }
    for name in [
        "m.pdg", "m.onnx", "fit.json", "p.onnx", "s.svg", "s.csv", "r.html", "y.npy",
    ] {
        assert_eq!(mode(name), 0o644, "{name} under umask 022");
    }
    // The umask decides, not a fixed mode.
    let o = paoding_with_umask("027", &["report", &d("fit.json"), "-o", &d("r.html")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(mode("r.html"), 0o640, "r.html under umask 027");
}

/// `paoding ... | head`: the reader is gone before paoding writes (its end of the pipe is
/// closed before paoding starts, so every run meets the closed pipe).
#[test]
fn a_closed_stdout_is_a_quiet_success_not_a_panic() {
    let commands: [&[&str]; 4] = [
        &["profiles"],
        &["profiles", "--json"],
        &["inspect", "MODEL"],
        &["inspect", "MODEL", "--json"],
    ];
    let model = fixture("mlp_torch.onnx");
    for args in commands {
        let args: Vec<&str> = args
            .iter()
            .map(|a| if *a == "MODEL" { model.as_str() } else { a })
            .collect();
        for _ in 0..10 {
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            let o = Command::new(env!("CARGO_BIN_EXE_paoding"))
                .args(&args)
                .stdout(writer)
                .output()
                .expect("runs paoding");
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
            assert_eq!(stderr(&o), "", "{args:?}: quiet");
        }
    }
}

#[test]
fn run_takes_only_batches_of_the_models_input_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    // Both fit cortex-m7 unpruned: [1, 8, 8, 1] (NHWC, Keras) and [1, 1, 8, 8] (NCHW, PyTorch).
    for (model, blob) in [
        ("cnn_keras_tf2onnx.onnx", "nhwc.pdg"),
        ("cnn_pool_torch.onnx", "nchw.pdg"),
    ] {
        let o = paoding(&[
            "fit",
            &fixture(model),
            "--profile",
            "cortex-m7",
            "-o",
            &d(blob),
        ]);
        assert_eq!(o.status.code(), Some(0), "{model}: {}", stderr(&o));
    }
    let run = |blob: &str, x: &str| paoding(&["run", &d(blob), "--input", &fixture(x)]);
    for (blob, good) in [
        ("nhwc.pdg", "digits_test_x_nhwc.npy"),
        ("nchw.pdg", "digits_test_x_nchw.npy"),
    ] {
        let o = run(blob, good);
        assert_eq!(o.status.code(), Some(0), "{blob}: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 450);
    }
    // The same 64 values per sample, in other axes: refused, both shapes named.
    for (blob, bad, names) in [
        (
            "nhwc.pdg",
            "digits_test_x_nchw.npy",
            &[
                "[450, 1, 8, 8]",
                "[N, 8, 8, 1]",
                "NHWC",
                "x.transpose(0, 2, 3, 1)",
            ][..],
        ),
        (
            "nhwc.pdg",
            "digits_test_x_flat.npy",
            &["[450, 64]", "[N, 8, 8, 1]"][..],
        ),
        (
            "nchw.pdg",
            "digits_test_x_nhwc.npy",
            &[
                "[450, 8, 8, 1]",
                "[N, 1, 8, 8]",
                "NCHW",
                "x.transpose(0, 3, 1, 2)",
            ][..],
        ),
        (
            "nchw.pdg",
            "digits_test_x_flat.npy",
            &["[450, 64]", "[N, 1, 8, 8]"][..],
        ),
    ] {
        let o = run(blob, bad);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{blob} with {bad}: {err}");
        for name in names {
            assert!(
                err.contains(name),
                "{blob} with {bad}: {name} missing from {err}"
            );
        }
    }
    // --data is held to the same rule.
    let o = paoding(&[
        "prune",
        &fixture("mlp_torch.onnx"),
        "--ratio",
        "0.5",
        "--probes",
        "uniform",
        "--data",
        &fixture("digits_test_x_flat.npy"),
        "-o",
        &d("p.onnx"),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("[N, 1, 8, 8]"), "{}", stderr(&o));
}

#[test]
fn outputs_are_checked_before_any_work_and_written_all_or_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let o = paoding(&[
        "fit",
        &fixture("mlp_torch.onnx"),
        "--profile",
        "cortex-m7",
        "-o",
        &d("ok.pdg"),
        "--report",
        &d("nodir/r.json"),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot write")
            && err.contains("nodir/r.json")
            && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains(".paoding-"), "no temporary file named: {err}");
    assert!(o.stdout.is_empty(), "no report before the error");
    assert!(!dir.path().join("ok.pdg").exists(), "all outputs or none");
    for args in [
        vec!["prune", "MLP", "--ratio", "0.5", "-o", "@nodir/p.onnx"],
        vec!["sweep", "MLP", "--csv", "@s.csv", "--plot", "@nodir/s.svg"],
        vec!["report", "@fit.json", "-o", "@nodir/r.html"],
        vec![
            "run",
            "@m.pdg",
            "--input",
            "@x.npy",
            "--output",
            "@nodir/y.npy",
        ],
    ] {
        // `@name`: a file in the temporary folder (the inputs need not exist: the outputs
        // are checked first).
        let mlp = fixture("mlp_torch.onnx");
        let args: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix('@') {
                Some(name) => d(name),
                None if *a == "MLP" => mlp.clone(),
                None => a.to_string(),
            })
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = paoding(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("does not exist") && err.contains("nodir"),
            "{args:?}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "{args:?}: nothing written"
        );
    }
}

#[test]
fn fit_says_what_it_wrote_and_without_o_that_it_wrote_no_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let blob = dir.path().join("m.pdg");
    let o = paoding(&[
        "fit",
        &fixture("mlp_torch.onnx"),
        "--profile",
        "cortex-m7",
        "-o",
        &blob.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("wrote {}", blob.display())),
        "{text}"
    );
    assert_eq!(stderr(&o), "");
    let o = paoding(&["fit", &fixture("mlp_torch.onnx"), "--profile", "cortex-m7"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("wrote"));
    assert!(stderr(&o).contains("no -o given"), "{}", stderr(&o));
}

/// One probe default everywhere: a sweep point is the model `prune --ratio` writes, measured
/// on the same probes.
#[test]
fn a_sweep_point_reproduces_prune_with_the_default_probes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache").display().to_string();
    let pruned = dir.path().join("p.onnx").display().to_string();
    let model = fixture("mlp_torch.onnx");
    let o = paoding(&[
        "prune",
        &model,
        "--ratio",
        "0.5",
        "--cache-dir",
        &cache,
        "-o",
        &pruned,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let prune: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let o = paoding(&[
        "sweep",
        &model,
        "--ratios",
        "0.5",
        "--methods",
        "merge",
        "--cache-dir",
        &cache,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sweep: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let point = &sweep["points"][0];
    assert_eq!(point["params"], prune["after"]["params"]);
    assert_eq!(
        point["agreement"],
        prune["fidelity"]["fidelity"]["agreement"]
    );
    assert!(
        sweep["refit_probes"]
            .as_str()
            .is_some_and(|p| p.starts_with("512 probes by class-conditional inversion")),
        "{}",
        sweep["refit_probes"]
    );
}

#[test]
fn every_command_documents_its_exit_codes() {
    for command in [
        "inspect", "prune", "fit", "run", "eval", "sweep", "report", "profiles",
    ] {
        let o = paoding(&[command, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains("Exit 0"), "{command} --help:\n{help}");
    }
}

/// Where probes choose which units go (the depthwise CNN's layers before its depthwise
/// convolutions), inverted probes choose on a set of their own, cached beside the refit's and
/// named in the report; real inputs choose as they are, and a model without such layers gets
/// no second set.
#[test]
fn inverted_probes_choose_units_on_a_set_of_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prune = |model: &str, cache: &str, extra: &[&str]| -> serde_json::Value {
        let out = dir.path().join("p.onnx").display().to_string();
        let mut args = vec![
            "prune",
            model,
            "--ratio",
            "0.3",
            "--probe-count",
            "24",
            "--cache-dir",
            cache,
            "-o",
            &out,
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = paoding(&args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("JSON")
    };
    let files = |cache: &str| std::fs::read_dir(cache).map_or(0, |d| d.count());
    let cache = dir.path().join("dscnn").display().to_string();
    let report = prune(&fixture("dscnn_torch.onnx"), &cache, &[]);
    let described = report["probe_description"].as_str().expect("description");
    assert!(
        described.contains(
            "chosen on 24 probes of their own by class-conditional inversion, each to p ≥ 0.9999"
        ),
        "{described}"
    );
    // The refit's probes, the ones that choose, the check set.
    assert_eq!(files(&cache), 3);
    let again = prune(&fixture("dscnn_torch.onnx"), &cache, &[]);
    assert_eq!(again["after"], report["after"]);
    assert_eq!(
        again["fidelity"]["fidelity"],
        report["fidelity"]["fidelity"]
    );
    assert!(again["probe_description"]
        .as_str()
        .is_some_and(|d| d.matches("cached").count() == 2));
    let real = fixture("digits_test_x_nchw.npy");
    let report = prune(&fixture("dscnn_torch.onnx"), &cache, &["--probes", &real]);
    assert!(!report["probe_description"]
        .as_str()
        .is_some_and(|d| d.contains("of their own")));
    let cache = dir.path().join("mlp").display().to_string();
    let report = prune(&fixture("mlp_torch.onnx"), &cache, &[]);
    assert!(!report["probe_description"]
        .as_str()
        .is_some_and(|d| d.contains("of their own")));
    assert_eq!(files(&cache), 2);
}
