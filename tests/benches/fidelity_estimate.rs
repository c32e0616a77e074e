//! The data-free fidelity estimate against real agreement:
//! `cargo bench -p paoding-tests --bench fidelity_estimate`.
//!
//! Every model is pruned as `paoding prune MODEL --ratio R` prunes it (merge, uniform scope,
//! `--probes auto`, seeds 0–2), then measured twice: on the default data-free check set
//! (what `prune`, `fit` and `eval` print without data) and on the model's real held-out
//! test images (what it should have printed). The fixtures are what the check set was
//! calibrated on; tests/unseen holds models trained elsewhere and never tuned on, reported
//! separately. Then the MLPerf Tiny models in ../shared/models: whether the check set
//! exercises them (not degenerate) and the figure that means something for each.
//!
//! `ONLY=name` restricts to models whose file contains `name`; `SEEDS=0,1` picks seeds.

use paoding_cli::prune::PruneDtype;
use paoding_cli::quantize::Int8Options;
use std::path::{Path, PathBuf};
use std::time::Instant;

use paoding_cli::check::{CheckSet, CheckSource, DataArgs};
use paoding_cli::probes::{self, ProbeSettings};
use paoding_cli::progress::Progress;
use paoding_core::prune::{Method, PruneOptions, Scope};
use paoding_tests::*;

/// Targets of the issue: |estimate − real| ≤ 3 points, never over by more than 2
/// (floor: 5 and 3).
const TARGET_ERROR: f64 = 3.0;
const TARGET_OVER: f64 = 2.0;

struct Row {
    model: String,
    estimate: f64,
    interval: (f64, f64),
    plausible: (f64, f64),
    real: f64,
    uniform: f64,
    robustness: (Option<f64>, Option<f64>),
}

/// The settings `paoding prune` uses; `--input-range` given only for inputs outside [0, 1],
/// as the README tells a user to.
fn settings(
    imported: &paoding_cli::import::Imported,
    range: (f32, f32),
    seed: u64,
    cache: &Path,
) -> ProbeSettings {
    ProbeSettings::for_model(
        imported,
        (range != (0.0, 1.0)).then_some(range),
        ProbeSettings {
            seed,
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        },
    )
    .expect("settings")
}

/// Estimated and real agreement of `file` pruned at each ratio, per seed; prints each row.
fn study(dir: &Path, f: &Fixture, seeds: &[u64], cache: &Path) -> Vec<Row> {
    let file = f.file.as_str();
    let imported = paoding_cli::import::import_onnx(&dir.join(file)).expect("imports");
    let g = &imported.graph;
    let data = DataArgs {
        data: Some(dir.join(&f.test_x)),
        labels: Some(dir.join(&f.test_y)),
    };
    let hidden = Progress::hidden();
    let mut rows = Vec::new();
    for &seed in seeds {
        let s = settings(&imported, f.input_range, seed, cache);
        // Timed first: the set with real data builds the data-free one too (and caches it).
        let t = Instant::now();
        let check = CheckSet::build(g, &s, &DataArgs::default(), &hidden).expect("check set");
        let check_time = t.elapsed().as_secs_f64();
        let real = CheckSet::build(g, &s, &data, &hidden).expect("data");
        let uniform = CheckSet::build(
            g,
            &ProbeSettings {
                check: CheckSource::Uniform,
                ..s.clone()
            },
            &DataArgs::default(),
            &hidden,
        )
        .expect("uniform set");
        let t = Instant::now();
        probes::resolve(g, &s.source, &s, s.cache_dir.as_deref(), &hidden).expect("refit probes");
        let refit_time = t.elapsed().as_secs_f64();
        for ratio in [0.25, 0.5] {
            let options = PruneOptions {
                ratio,
                method: Method::Merge,
                scope: Scope::Uniform,
                input_range: s.input_range,
                ..Default::default()
            };
            let pruned = paoding_cli::prune::prune(
                file,
                g,
                None,
                &options,
                &s,
                (PruneDtype::F32, &Int8Options::default()),
                &check,
                &hidden,
            )
            .expect("prunes")
            .graph;
            let est = check.measure(&pruned).expect("estimate");
            let truth = real.measure(&pruned).expect("real");
            let row = Row {
                model: file.trim_end_matches(".onnx").into(),
                estimate: 100.0 * est.fidelity.agreement,
                interval: (
                    100.0 * est.fidelity.agreement_interval.0,
                    100.0 * est.fidelity.agreement_interval.1,
                ),
                plausible: est
                    .plausible_on_real_data
                    .map_or((0.0, 100.0), |(lo, hi)| (100.0 * lo, 100.0 * hi)),
                real: 100.0 * truth.fidelity.agreement,
                uniform: 100.0 * uniform.fidelity(&pruned).expect("uniform").agreement,
                robustness: (
                    est.robustness.and_then(|r| r.retention),
                    truth.robustness.and_then(|r| r.retention),
                ),
            };
            println!(
                "{:<26} {:>4} {:>5} {:>7.1} ({:>5.1}-{:>5.1}) {:>7.1} {:>+6.1} {:>9.1} {:>+6.1} {:>8} {:>8} {:>6.2}s {:>6.2}s",
                row.model,
                seed,
                ratio,
                row.estimate,
                row.interval.0,
                row.interval.1,
                row.real,
                row.estimate - row.real,
                row.uniform,
                row.uniform - row.real,
                pct(row.robustness.0),
                pct(row.robustness.1),
                check_time,
                refit_time,
            );
            rows.push(row);
        }
    }
    rows
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

fn header() {
    println!(
        "{:<26} {:>4} {:>5} {:>21} {:>7} {:>6} {:>9} {:>6} {:>8} {:>8} {:>7} {:>7}",
        "model",
        "seed",
        "ratio",
        "estimate (95 % int.)",
        "real",
        "error",
        "uniform",
        "error",
        "FGSM est",
        "FGSM real",
        "check",
        "refit"
    );
}

fn summary(name: &str, rows: &[Row]) {
    let errors: Vec<f64> = rows.iter().map(|r| r.estimate - r.real).collect();
    let worst = errors.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let over = errors.iter().fold(f64::NEG_INFINITY, |m, &e| m.max(e));
    let mean = errors.iter().sum::<f64>() / errors.len().max(1) as f64;
    let within = errors.iter().filter(|e| e.abs() <= TARGET_ERROR).count();
    let uniform_worst = rows
        .iter()
        .fold(0.0f64, |m, r| m.max((r.uniform - r.real).abs()));
    let covered = rows
        .iter()
        .filter(|r| r.interval.0 <= r.real && r.real <= r.interval.1)
        .count();
    let plausible = rows
        .iter()
        .filter(|r| r.plausible.0 <= r.real && r.real <= r.plausible.1)
        .count();
    println!(
        "{name}: {} rows; estimate − real: mean {mean:+.1}, largest |error| {worst:.1} (target ≤ {TARGET_ERROR}), \
         largest over {over:+.1} (target ≤ +{TARGET_OVER}); {within}/{} within {TARGET_ERROR} points; \
         real inside the 95 % interval {covered}/{}, inside the range the report calls plausible on real inputs \
         {plausible}/{}; uniform noise (the old figure): largest |error| {uniform_worst:.1}",
        rows.len(),
        rows.len(),
        rows.len(),
        rows.len()
    );
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let seeds: Vec<u64> = std::env::var("SEEDS")
        .unwrap_or_else(|_| "0,1,2".into())
        .split(',')
        .map(|s| s.trim().parse().expect("seed"))
        .collect();
    let cache = tempfile_dir();

    println!("== fixtures (calibration set): estimated vs real top-1 agreement, %");
    header();
    let mut rows = Vec::new();
    for f in fixtures() {
        let calibration = [
            "mlp_torch.onnx",
            "cnn_pool_torch.onnx",
            "dscnn_torch.onnx",
            "cnn_residual_bn_torch.onnx",
            "cnn_keras_tf2onnx.onnx",
        ];
        if calibration.contains(&f.file.as_str()) && f.file.contains(&only) {
            rows.extend(study(&fixtures_dir(), &f, &seeds, &cache));
        }
    }
    summary("fixtures", &rows);

    println!("\n== models never tuned on (tests/unseen): estimated vs real top-1 agreement, %");
    header();
    let unseen = unseen_dir();
    let mut rows = Vec::new();
    for f in unseen_models() {
        if f.file.contains(&only) {
            rows.extend(study(&unseen, &f, &seeds, &cache));
        }
    }
    summary("unseen", &rows);

    println!(
        "\n== MLPerf Tiny models (../shared/models): does the default check set exercise them?"
    );
    for path in shared_models() {
        if !path.display().to_string().contains(&only) {
            continue;
        }
        let imported = paoding_cli::import::import_onnx(&path).expect("imports");
        let s = ProbeSettings::for_model(
            &imported,
            None,
            ProbeSettings {
                cache_dir: Some(cache.clone()),
                ..Default::default()
            },
        )
        .expect("settings");
        let t = Instant::now();
        let set = CheckSet::build(
            &imported.graph,
            &s,
            &DataArgs::default(),
            &Progress::hidden(),
        )
        .expect("check set");
        println!(
            "{}: {:?}; {}\n  spread: {} distinct classes, top class {:.1} %, relative output spread {:.3}; {}; built in {:.1} s",
            path.file_name().unwrap_or_default().to_string_lossy(),
            set.task,
            set.description,
            set.spread.distinct_classes,
            100.0 * set.spread.top_class_share,
            set.spread.relative_spread,
            if set.warnings.is_empty() {
                "not degenerate".to_string()
            } else {
                format!("DEGENERATE: {}", set.warnings.join("; "))
            },
            t.elapsed().as_secs_f64()
        );
        let options = PruneOptions {
            ratio: 0.25,
            input_range: s.input_range,
            ..Default::default()
        };
        let report = paoding_cli::prune::prune(
            "mlperf",
            &imported.graph,
            None,
            &options,
            &s,
            (PruneDtype::F32, &Int8Options::default()),
            &set,
            &Progress::hidden(),
        )
        .expect("prunes")
        .report;
        print!("  pruned at ratio 0.25:\n{}", report.fidelity.to_text("  "));
    }
}

fn tempfile_dir() -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("paoding-fidelity-estimate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cache folder");
    dir
}
