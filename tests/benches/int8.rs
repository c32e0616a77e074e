//! int8 without data, against f32: `cargo bench -p paoding-tests --bench int8`.
//!
//! 1. Every fixture quantized unpruned from its refit probes (`--probes auto`, as `fit`
//!    calibrates), run by the runtime on the 450 real digits test images: accuracy against
//!    f32, top-1 agreement with f32, blob size against f32 — for each range estimator and
//!    with each data-free correction on and off, so the defaults are the measured best.
//! 2. Pruned + int8 against f32 pruned to the same bytes (a quarter of the f32 blob), through
//!    `paoding fit`'s library entry point.
//! 3. The MLPerf Tiny models of ../shared/models: relative L2 of the int8 outputs against
//!    f32 on their calibration probes.
//! 4. Time to quantize the digits CNN with cached probes (in process and, when the release
//!    binary is built, the whole `paoding fit --dtype int8` process).
//!
//! `ONLY=name` restricts to models whose file contains `name`.

use std::path::Path;
use std::time::Instant;

use paoding_cli::fit::{DtypeChoice, FitOptions};
use paoding_cli::probes::ProbeSettings;
use paoding_cli::progress::Progress;
use paoding_cli::quantize::{estimator_name, quantize, Int8Options};
use paoding_core::fit::Usage;
use paoding_core::ir::Graph;
use paoding_core::quant::calibrate::RangeEstimator;
use paoding_tests::*;

/// The targets: accuracy within 0.5 points of f32, agreement >= 99 %, blob <= 30 %.
const ACCURACY_DROP: f64 = 0.5;
const AGREEMENT: f64 = 99.0;
const BLOB_SHARE: f64 = 30.0;

fn predictions(out: &[f32], per: usize) -> Vec<usize> {
    out.chunks(per).map(argmax).collect()
}

fn percent(hits: usize, n: usize) -> f64 {
    100.0 * hits as f64 / n.max(1) as f64
}

/// Probe settings as `paoding fit` makes them, with the bench's own cache.
fn settings(imported: &paoding_cli::import::Imported, cache: &Path) -> ProbeSettings {
    ProbeSettings::for_model(
        imported,
        None,
        ProbeSettings {
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        },
    )
    .expect("settings")
}

fn calibration_probes(g: &Graph, s: &ProbeSettings) -> paoding_cli::probes::ResolvedProbes {
    paoding_cli::probes::resolve(g, &s.source, s, s.cache_dir.as_deref(), &Progress::hidden())
        .expect("probes")
}

fn variants() -> Vec<(String, Int8Options)> {
    let mut out = Vec::new();
    for estimator in [
        RangeEstimator::MinMax,
        RangeEstimator::Percentile { cut: 0.01 },
        RangeEstimator::Mse,
    ] {
        for (equalize, correct_bias) in [(false, false), (false, true), (true, false), (true, true)]
        {
            let name = format!(
                "{}{}{}",
                estimator_name(estimator),
                if equalize { " +CLE" } else { "" },
                if correct_bias { " +bias" } else { "" }
            );
            out.push((
                name,
                Int8Options {
                    estimator,
                    equalize,
                    correct_bias,
                    ..Int8Options::default()
                },
            ));
        }
    }
    // The rounding refinement, alone and with bias correction, on min/max ranges.
    for correct_bias in [false, true] {
        out.push((
            format!("min/max +round{}", if correct_bias { " +bias" } else { "" }),
            Int8Options {
                estimator: RangeEstimator::MinMax,
                correct_bias,
                refine_rounding: true,
                ..Int8Options::default()
            },
        ));
    }
    out
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let cache = tempfile_dir();
    let default = Int8Options::default();

    println!("== unpruned int8 vs f32 on the real test images (calibrated on --probes auto)");
    println!(
        "{:<28} {:<26} {:>8} {:>8} {:>7} {:>9} {:>7} {:>9} {:>6}",
        "model", "variant", "f32 acc", "i8 acc", "drop", "agreement", "rel L2", "blob B", "of f32"
    );
    let mut scores: Vec<(String, f64, f64, f64)> = Vec::new();
    let mut default_rows = Vec::new();
    for f in fixtures() {
        if !f.file.contains(&only) {
            continue;
        }
        let path = fixtures_dir().join(&f.file);
        let imported = paoding_cli::import::import_onnx(&path).expect("imports");
        let g = &imported.graph;
        let xs = read_npy(&fixtures_dir().join(&f.test_x)).1;
        let ys: Vec<usize> = read_npy(&fixtures_dir().join(&f.test_y))
            .1
            .iter()
            .map(|&y| y as usize)
            .collect();
        let per = g.values[g.output].len();
        let f32_out = paoding_core::interp::run_batch(g, &xs).expect("f32 runs");
        let f32_pred = predictions(&f32_out, per);
        let f32_acc = percent(
            f32_pred.iter().zip(&ys).filter(|(p, y)| p == y).count(),
            ys.len(),
        );
        let f32_bytes = Usage::of(g).expect("usage").flash_bytes;
        let s = settings(&imported, &cache);
        let probes = calibration_probes(g, &s);
        for (name, options) in variants() {
            let q = quantize(g, &probes.probes, &probes.description, &options).expect("quantizes");
            let out = paoding_core::blob::run_batch(&q.blob, &xs).expect("int8 runs");
            let pred = predictions(&out, per);
            let acc = percent(
                pred.iter().zip(&ys).filter(|(p, y)| p == y).count(),
                ys.len(),
            );
            let agreement = percent(
                pred.iter().zip(&f32_pred).filter(|(a, b)| a == b).count(),
                ys.len(),
            );
            let share = 100.0 * q.blob.len() as f64 / f32_bytes as f64;
            let is_default = options == default;
            // Finer than top-1: the outputs' relative L2 error against f32.
            let rel_l2 = paoding_core::fidelity::compare(&f32_out, &out, per).relative_l2;
            println!(
                "{:<28} {:<26} {:>8.2} {:>8.2} {:>+7.2} {:>9.2} {:>7.4} {:>9} {:>5.1}%{}",
                f.file.trim_end_matches(".onnx"),
                name,
                f32_acc,
                acc,
                acc - f32_acc,
                agreement,
                rel_l2,
                q.blob.len(),
                share,
                if is_default { "  <- default" } else { "" }
            );
            scores.push((name.clone(), acc - f32_acc, agreement, rel_l2));
            if is_default {
                default_rows.push((f.file.clone(), f32_acc, acc, agreement, share));
            }
        }
    }
    println!("\nper variant over the fixtures: mean accuracy change, worst change, mean agreement, worst agreement, mean relative L2 against f32");
    for (name, _) in variants() {
        let rows: Vec<_> = scores.iter().filter(|r| r.0 == name).collect();
        let n = rows.len().max(1) as f64;
        println!(
            "  {:<26} {:>+7.2} {:>+7.2} {:>8.2} {:>8.2} {:>8.4}",
            name,
            rows.iter().map(|r| r.1).sum::<f64>() / n,
            rows.iter().map(|r| r.1).fold(f64::INFINITY, f64::min),
            rows.iter().map(|r| r.2).sum::<f64>() / n,
            rows.iter().map(|r| r.2).fold(f64::INFINITY, f64::min),
            rows.iter().map(|r| r.3).sum::<f64>() / n,
        );
    }
    println!("\ndefault ({}) against the targets (accuracy within {ACCURACY_DROP} points, agreement >= {AGREEMENT} %, blob <= {BLOB_SHARE} % of f32):", default.describe());
    for (file, f32_acc, acc, agreement, share) in &default_rows {
        let ok = f32_acc - acc <= ACCURACY_DROP && *agreement >= AGREEMENT && *share <= BLOB_SHARE;
        println!(
            "  {:<32} accuracy {f32_acc:.2} -> {acc:.2}, agreement {agreement:.2} %, blob {share:.1} % of f32: {}",
            file,
            if ok { "meets" } else { "MISSES" }
        );
    }

    println!("\n== pruned + int8 vs f32 pruned, both fitted to a quarter of the f32 blob (paoding fit, qemu-mps2-an500)");
    for file in [
        "mlp_torch.onnx",
        "cnn_pool_torch.onnx",
        "dscnn_torch.onnx",
        "cnn_residual_bn_torch.onnx",
    ] {
        if !file.contains(&only) {
            continue;
        }
        let (g, xs, ys) = load_fixture(file);
        let quarter = Usage::of(&g).expect("usage").flash_bytes / 4;
        let mut line = format!(
            "  {:<28} budget {:>7} B:",
            file.trim_end_matches(".onnx"),
            quarter
        );
        for dtype in [DtypeChoice::F32, DtypeChoice::Int8] {
            let mut options = FitOptions {
                dtype: Some(dtype),
                ..Default::default()
            };
            options.overrides.flash_bytes = Some(quarter);
            options.probes.cache_dir = Some(cache.clone());
            let fitted =
                paoding_cli::fit::fit(&fixtures_dir().join(file), "qemu-mps2-an500", &options)
                    .expect("fit runs");
            let text = match (&fitted.blob, fitted.ok()) {
                (Some(blob), true) => {
                    let out = paoding_core::blob::run_batch(blob, &xs).expect("runs");
                    let pred = predictions(&out, g.values[g.output].len());
                    let acc = percent(
                        pred.iter().zip(&ys).filter(|(p, y)| p == y).count(),
                        ys.len(),
                    );
                    format!("{:?} {} B, accuracy {acc:.2} %", dtype, blob.len())
                }
                _ => format!("{dtype:?}: {}", fitted.report.message),
            };
            line.push_str(&format!("  {text};"));
        }
        println!("{line}");
    }

    println!("\n== MLPerf Tiny models (../shared/models) quantized without data");
    for path in shared_models() {
        if !path.display().to_string().contains(&only) {
            continue;
        }
        let imported = paoding_cli::import::import_onnx(&path).expect("imports");
        let g = &imported.graph;
        let s = settings(&imported, &cache);
        let probes = calibration_probes(g, &s);
        let q = quantize(g, &probes.probes, &probes.description, &default).expect("quantizes");
        let f32_out = paoding_core::interp::run_batch(g, &probes.probes.data).expect("f32 runs");
        let out = paoding_core::blob::run_batch(&q.blob, &probes.probes.data).expect("int8 runs");
        let f = paoding_core::fidelity::compare(&f32_out, &out, g.values[g.output].len());
        println!(
            "  {}: blob {} B ({:.1} % of f32), relative L2 {:.4} (SNR {:.1} dB), top-1 agreement {:.2} % on {} calibration probes; f32 layers: {:?}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            q.blob.len(),
            100.0 * q.blob.len() as f64 / Usage::of(g).expect("usage").flash_bytes as f64,
            f.relative_l2,
            f.snr_db,
            100.0 * f.agreement,
            probes.probes.count(),
            q.f32_nodes()
        );
    }

    println!("\n== time to quantize the digits CNN (cnn_pool_torch) with cached probes");
    let path = fixtures_dir().join("cnn_pool_torch.onnx");
    let t = Instant::now();
    let imported = paoding_cli::import::import_onnx(&path).expect("imports");
    let s = settings(&imported, &cache);
    let probes = calibration_probes(&imported.graph, &s);
    let q = quantize(
        &imported.graph,
        &probes.probes,
        &probes.description,
        &default,
    )
    .expect("q");
    println!(
        "  in process (import, cached probes, calibrate, correct, write {} B): {:.1} ms",
        q.blob.len(),
        1e3 * t.elapsed().as_secs_f64()
    );
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/paoding");
    if binary.is_file() {
        let out = cache.join("q.pdg");
        let run = || {
            std::process::Command::new(&binary)
                .args([
                    "fit",
                    &path.display().to_string(),
                    "--profile",
                    "qemu-mps2-an500",
                    "--flash",
                    "32K",
                    "--dtype",
                    "int8",
                    "--cache-dir",
                ])
                .arg(&cache)
                .arg("-o")
                .arg(&out)
                .output()
                .expect("runs")
        };
        run(); // warms the probe and check-set caches
        let t = Instant::now();
        let o = run();
        println!(
            "  whole process, `paoding fit --dtype int8` (release, caches warm, fidelity check included): {:.1} ms (exit {:?})",
            1e3 * t.elapsed().as_secs_f64(),
            o.status.code()
        );
    } else {
        println!("  (build target/release/paoding for the whole-process figure)");
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("paoding-int8-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cache dir");
    dir
}
