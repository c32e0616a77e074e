//! Data-free pruning on models nothing was tuned on:
//! `cargo bench -p paoding-tests --bench unseen_pruning`.
//!
//! Every model of tests/unseen is pruned by 40 % and 60 % of its parameters (merge + refit,
//! uniform scope, the ratio from [`Pruner::ratio_for_param_fraction`]) twice through the same
//! pipeline, `paoding_cli::probes::resolve` with `ProbeSettings::for_model`: once data-free
//! (`--probes auto`, what `paoding prune` does by default; seeds 0–2, mean and worst), once
//! with its real test images as probes (`--probes test_x.npy`, the ceiling). Accuracy is on
//! the real test set. The tabular model gets `--input-range` from its manifest, as its README
//! tells a user to; the others get the default behaviour. Targets of issue #21: data-free
//! within 2 points of real probes at 40 %, within 4 at 60 % (floor 4 / 8).
//!
//! Then the fixtures' figures of the README (`tests/tests/synth.rs`'s accuracy table: 512
//! inverted probes, seeds 0–2, as `--probes invert` prunes), to show the fixtures did not pay
//! for it.
//!
//! `ONLY=name` restricts to models whose file contains `name`; `SEEDS=0,1` picks seeds;
//! `FIXTURES=0` skips the fixtures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use paoding_cli::probes::{self, ProbeSettings, ProbeSource, ResolvedProbes};
use paoding_cli::progress::Progress;
use paoding_core::prune::{PruneOptions, Pruner};
use paoding_tests::*;

/// Parameters removed, and the targets (and floors) on the gap to real probes, in points.
const POINTS: [(f64, f64, f64); 2] = [(0.40, 2.0, 4.0), (0.60, 4.0, 8.0)];

/// Accuracy on the test set after removing `fraction` of the parameters with `probes` (the
/// refit's, and the ones that choose units when they have their own).
fn accuracy_after(
    pruner: &Pruner,
    fraction: f64,
    probes: &ResolvedProbes,
    xs: &[f32],
    ys: &[usize],
) -> f64 {
    let ratio = pruner.ratio_for_param_fraction(fraction).expect("ratio");
    let pruned = pruner
        .apply_with(
            &pruner.counts_for_ratio(ratio),
            &probes.probes,
            probes.selection(),
        )
        .expect("prunes");
    100.0 * accuracy_on(&pruned.graph, xs, ys)
}

/// One model's figures at each of [`POINTS`]: data-free per seed, real probes.
struct Study {
    model: String,
    original: f64,
    data_free: Vec<Vec<f64>>,
    real: Vec<f64>,
    description: String,
    synthesis_seconds: f64,
}

fn study(dir: &Path, f: &Fixture, seeds: &[u64], cache: &Path) -> Study {
    let imported = paoding_cli::import::import_onnx(&dir.join(&f.file)).expect("imports");
    let g = &imported.graph;
    let xs = read_npy(&dir.join(&f.test_x)).1;
    let ys: Vec<usize> = read_npy(&dir.join(&f.test_y))
        .1
        .iter()
        .map(|&y| y as usize)
        .collect();
    let given = (f.input_range != (0.0, 1.0)).then_some(f.input_range);
    let settings = |seed: u64, source: ProbeSource| {
        ProbeSettings::for_model(
            &imported,
            given,
            ProbeSettings {
                seed,
                source,
                cache_dir: Some(cache.to_path_buf()),
                ..Default::default()
            },
        )
        .expect("settings")
    };
    let hidden = Progress::hidden();
    let real_settings = settings(0, ProbeSource::File(dir.join(&f.test_x)));
    // What `paoding prune` does: the probes, and those that choose units when it needs them.
    let pruner = Pruner::new(
        g,
        &PruneOptions {
            input_range: real_settings.input_range,
            ..Default::default()
        },
    );
    let resolve = |s: &ProbeSettings| {
        let mut r =
            probes::resolve(g, &s.source, s, s.cache_dir.as_deref(), &hidden).expect("probes");
        if pruner.selects_by_probes() {
            r.add_selection(g, s, &hidden).expect("selection probes");
        }
        r
    };
    let real_probes = resolve(&real_settings);
    let real = POINTS
        .iter()
        .map(|&(fraction, _, _)| accuracy_after(&pruner, fraction, &real_probes, &xs, &ys))
        .collect();
    let mut data_free = vec![Vec::new(); POINTS.len()];
    let mut description = String::new();
    let mut synthesis_seconds = 0.0;
    for &seed in seeds {
        let s = settings(seed, ProbeSource::Auto);
        let t = Instant::now();
        let resolved = resolve(&s);
        synthesis_seconds += t.elapsed().as_secs_f64() / seeds.len() as f64;
        if seed == seeds[0] {
            description = resolved.description.clone();
        }
        for (i, &(fraction, _, _)) in POINTS.iter().enumerate() {
            data_free[i].push(accuracy_after(&pruner, fraction, &resolved, &xs, &ys));
        }
    }
    Study {
        model: f.file.trim_end_matches(".onnx").into(),
        original: 100.0 * accuracy_on(g, &xs, &ys),
        data_free,
        real,
        description,
        synthesis_seconds,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn worst(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The verdict on a gap (real − data-free, points) against a target and its floor.
fn verdict(gap: f64, target: f64, floor: f64) -> &'static str {
    if gap <= target {
        "met"
    } else if gap <= floor {
        "floor"
    } else {
        "MISSED"
    }
}

fn unseen_table(seeds: &[u64], only: &str, cache: &Path) {
    println!(
        "== tests/unseen: accuracy (%) on the real test set after pruning, data-free (--probes auto, \
         seeds {seeds:?}: mean, worst) vs the test images as probes"
    );
    println!(
        "{:<24} {:>6} | {:>6} {:>6} {:>6} {:>5} {:<6} | {:>6} {:>6} {:>6} {:>5} {:<6} | {:>6}",
        "model",
        "orig",
        "40 %",
        "worst",
        "real",
        "gap",
        "(≤2)",
        "60 %",
        "worst",
        "real",
        "gap",
        "(≤4)",
        "synth"
    );
    let mut gaps = vec![Vec::new(); POINTS.len()];
    let mut descriptions = Vec::new();
    for f in unseen_models().iter().filter(|f| f.file.contains(only)) {
        let s = study(&unseen_dir(), f, seeds, cache);
        let mut line = format!("{:<24} {:>6.1}", s.model, s.original);
        for (i, &(_, target, floor)) in POINTS.iter().enumerate() {
            let m = mean(&s.data_free[i]);
            let gap = s.real[i] - m;
            gaps[i].push(gap);
            line.push_str(&format!(
                " | {m:>6.1} {:>6.1} {:>6.1} {gap:>+5.1} {:<6}",
                worst(&s.data_free[i]),
                s.real[i],
                verdict(gap, target, floor)
            ));
        }
        println!("{line} | {:>5.2}s", s.synthesis_seconds);
        descriptions.push(format!("  {}: {}", s.model, s.description));
    }
    for (i, &(fraction, target, floor)) in POINTS.iter().enumerate() {
        let g = &gaps[i];
        println!(
            "at {:.0} % removed: gap (real − data-free) mean {:+.1}, largest {:+.1} points; {}/{} within {target} (target), {}/{} within {floor} (floor)",
            100.0 * fraction,
            mean(g),
            g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            g.iter().filter(|&&x| x <= target).count(),
            g.len(),
            g.iter().filter(|&&x| x <= floor).count(),
            g.len()
        );
    }
    println!("data-free probes (seed {}):", seeds[0]);
    descriptions.iter().for_each(|d| println!("{d}"));
}

/// The fixtures' accuracy table of the README, as `tests/tests/synth.rs` measures it.
fn fixture_table(seeds: &[u64]) {
    println!(
        "\n== fixtures (tuned on): accuracy (%) after pruning with 512 inverted probes, seeds {seeds:?}: mean (worst), against the README"
    );
    for (file, fraction, readme) in FIXTURE_ACCURACY_TABLE {
        let (g, xs, ys) = load_fixture(file);
        let accs: Vec<f64> = seeds
            .iter()
            .map(|&seed| 100.0 * inverted_pruned_accuracy(&g, &xs, &ys, fraction, seed))
            .collect();
        println!(
            "{file:<28} {:>5.1} % removed: {:>5.1} ({:>5.1})   README {readme:.1}",
            100.0 * fraction,
            mean(&accs),
            worst(&accs)
        );
    }
}

fn main() {
    let only = std::env::var("ONLY").unwrap_or_default();
    let seeds: Vec<u64> = std::env::var("SEEDS")
        .unwrap_or_else(|_| "0,1,2".into())
        .split(',')
        .map(|s| s.trim().parse().expect("seed"))
        .collect();
    let cache = cache_dir();
    unseen_table(&seeds, &only, &cache);
    if std::env::var("FIXTURES").map_or(true, |v| v != "0") {
        fixture_table(&seeds);
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// A fresh probe cache, so every synthesis is measured.
fn cache_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paoding-unseen-pruning-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("cache folder");
    dir
}
