//! `paoding eval`, `sweep` and `report` through the library: FGSM end to end, `.pdg`
//! candidates (transfer attack), data-free evaluation, the sweep's data, CSV, the chart's
//! structure (not its pixels) and the self-contained HTML page.

use std::path::PathBuf;

use paoding_cli::chart;
use paoding_cli::check::{CheckSet, DataArgs};
use paoding_cli::eval::{self, Model};
use paoding_cli::probes::ProbeSettings;
use paoding_cli::progress::Progress;
use paoding_cli::sweep::{self, SweepOptions, SweepReport};
use paoding_core::ir::Graph;
use paoding_core::prune::{Method, Scope};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn import(name: &str) -> Graph {
    paoding_cli::import::import_onnx(&fixture(name))
        .expect("fixture imports")
        .graph
}

fn digits(g: &Graph) -> CheckSet {
    let data = DataArgs {
        data: Some(fixture("digits_test_x_nchw.npy")),
        labels: Some(fixture("digits_test_y.npy")),
    };
    CheckSet::build(g, &ProbeSettings::default(), &data, &Progress::hidden()).expect("digits load")
}

#[test]
fn fgsm_keeps_everything_at_zero_and_is_non_increasing_in_epsilon() {
    let g = import("mlp_torch.onnx");
    let set = digits(&g);
    let epsilons = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2];
    let model = Model::Graph(g.clone());
    let r = eval::evaluate("mlp", &g, "mlp", &model, &set, &epsilons).unwrap();
    assert_eq!(r.fgsm.len(), epsilons.len());
    // Attacked: the correctly classified samples (440 of 450, see tests/fixtures/README.md).
    assert_eq!(r.fgsm[0].original.attacked, 440);
    assert_eq!(r.fgsm[0].original.kept, 440, "ε = 0 must keep 100 %");
    let rates: Vec<f64> = r.fgsm.iter().map(|p| p.original.rate).collect();
    assert!(
        rates.windows(2).all(|w| w[1] <= w[0]),
        "robustness must not grow with ε: {rates:?}"
    );
    assert!(rates[5] < 0.5, "ε = 0.2 must break most samples: {rates:?}");
    // The candidate is the same model: the same figures, retention 1.
    for p in &r.fgsm {
        assert_eq!(p.original, p.candidate);
        assert_eq!(p.retention, Some(1.0));
    }
    assert_eq!(r.fgsm_attack, "white-box");
    assert_eq!(r.accuracy_original, r.accuracy_candidate);
    assert!((r.accuracy_original.unwrap() - 440.0 / 450.0).abs() < 1e-9);
}

#[test]
fn batched_sign_gradients_match_the_single_sample_gradient() {
    let g = import("cnn_pool_torch.onnx");
    let set = digits(&g);
    let n = set.inputs.sample_len;
    let targets = [0usize, 3, 7, 9, 1];
    let xs = set.inputs.data[..targets.len() * n].to_vec();
    let batched = eval::sign_gradients(&g, &xs, &targets).unwrap();
    for (k, &t) in targets.iter().enumerate() {
        let (_, dx, _) =
            paoding_core::grad::class_gradient(&g, &xs[k * n..(k + 1) * n], t).unwrap();
        for (i, (&s, &d)) in batched[k * n..(k + 1) * n].iter().zip(&dx).enumerate() {
            let expected = if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            };
            // A gradient within rounding of zero may legitimately differ in sign.
            assert!(
                s == expected || d.abs() < 1e-6,
                "sample {k} element {i}: sign {s}, gradient {d}"
            );
        }
    }
}

#[test]
fn a_pdg_candidate_runs_on_the_runtime_and_is_attacked_by_transfer() {
    let g = import("cnn_pool_torch.onnx");
    let blob =
        paoding_core::blob::write_blob(&g, &paoding_core::plan::MemoryPlan::new(&g)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.pdg");
    std::fs::write(&path, blob).unwrap();
    let candidate = Model::load(&path).unwrap();
    assert!(candidate.graph().is_none());
    let set = digits(&g);
    let r = eval::evaluate("cnn", &g, "cnn.pdg", &candidate, &set, &[0.05]).unwrap();
    assert_eq!(r.candidate_kind, "pdg");
    assert_eq!(r.fgsm_attack, "transfer");
    assert!(r.notes.iter().any(|n| n.contains("transfer attack")));
    assert_eq!(r.fidelity.agreement, 1.0);
    // The runtime computes what the interpreter does, and the gradient is the original's:
    // the transfer attack on an unpruned blob is the white-box attack.
    let p = &r.fgsm[0];
    assert_eq!(p.original.attacked, p.candidate.attacked);
    assert!(
        (p.original.kept as i64 - p.candidate.kept as i64).abs() <= 1,
        "{p:?}"
    );
    // A corrupted blob is refused with a message, not a panic.
    let bad = dir.path().join("bad.pdg");
    std::fs::write(&bad, b"not a blob").unwrap();
    let err = Model::load(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.pdg"), "{err}");
}

#[test]
fn without_data_the_report_says_it_used_held_out_probes() {
    let g = import("mlp_torch.onnx");
    let settings = ProbeSettings {
        count: 64,
        cache_dir: None,
        ..Default::default()
    };
    let set = CheckSet::build(&g, &settings, &DataArgs::default(), &Progress::hidden()).unwrap();
    assert!(set.data_free && set.labels.is_none());
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let r = eval::evaluate("mlp", &g, "mlp", &Model::Graph(g.clone()), &set, &[0.05]).unwrap();
    assert!(r.data_free);
    assert!(
        r.inputs
            .contains("64 held-out probes by class-conditional inversion"),
        "{}",
        r.inputs
    );
    assert!(r.inputs.contains("assumed"), "{}", r.inputs);
    assert!(r.to_text().contains("estimated on"), "{}", r.to_text());
    assert_eq!(
        r.fgsm[0].original.attacked, 64,
        "without labels every sample is attacked"
    );
    assert_eq!(r.accuracy_original, None);
}

fn small_sweep() -> SweepReport {
    let g = import("mlp_torch.onnx");
    let set = digits(&g);
    let options = SweepOptions {
        methods: vec![Method::Merge, Method::Magnitude],
        ratios: vec![0.25, 0.5, 0.75],
        scope: Scope::Uniform,
        fgsm_eps: 0.05,
        probes: ProbeSettings {
            count: 200,
            source: paoding_cli::probes::ProbeSource::Uniform,
            cache_dir: None,
            ..Default::default()
        },
    };
    sweep::sweep("mlp_torch.onnx", &g, &options, &set, &Progress::hidden()).unwrap()
}

#[test]
fn sweep_measures_size_quality_and_robustness_and_charts_them() {
    let r = small_sweep();
    assert_eq!(r.methods(), ["merge", "magnitude"]);
    assert_eq!(r.points.len(), 6);
    assert_eq!(r.original.params, 33738);
    assert_eq!(r.original.robustness_retention, Some(1.0));
    for m in ["merge", "magnitude"] {
        let pts: Vec<_> = r.points.iter().filter(|p| p.method == m).collect();
        // More pruning: strictly smaller in every size measure.
        for w in pts.windows(2) {
            assert!(w[1].params < w[0].params && w[1].flash_bytes < w[0].flash_bytes);
            assert!(w[1].macs < w[0].macs && w[1].params_removed > w[0].params_removed);
        }
        assert!(pts[0].params < r.original.params);
        for p in &pts {
            assert!(p.accuracy.is_some() && p.robustness.is_some());
            assert!(p.robustness_retention.unwrap() > 0.0);
        }
    }
    // Flash bytes are the exact blob size.
    let g = import("mlp_torch.onnx");
    let blob =
        paoding_core::blob::write_blob(&g, &paoding_core::plan::MemoryPlan::new(&g)).unwrap();
    assert_eq!(r.original.flash_bytes, blob.len() as u64);
    // The default method keeps the digits MLP's accuracy and robustness at half the neurons.
    let merge_half = r
        .points
        .iter()
        .find(|p| p.method == "merge" && p.ratio == 0.5)
        .unwrap();
    assert!(
        merge_half.robustness_retention.unwrap() >= 0.8,
        "{merge_half:?}"
    );

    // The chart: title, axis labels, legend labels, the reference line, and per method and
    // panel one line through the original and every ratio.
    let svg = chart::sweep_svg(&r).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    for text in [
        "Pruning sweep of mlp_torch.onnx",
        "parameters removed (%)",
        "accuracy on the labelled data (%)",
        "robust samples (%)",
        "FGSM robustness at ε = 0.05",
        "merge",
        "magnitude",
        "original model (97.8 %)",
    ] {
        assert!(svg.contains(text), "the chart lacks '{text}'");
    }
    for (i, m) in ["merge", "magnitude"].iter().enumerate() {
        let color = chart::hex(chart::method_color(m, i));
        let lines: Vec<&str> = svg
            .lines()
            .filter(|l| {
                l.starts_with("<polyline")
                    && l.contains(&format!("stroke=\"{color}\""))
                    && l.contains("stroke-width=\"2\"")
            })
            .collect();
        assert_eq!(lines.len(), 2, "{m}: one line per panel");
        for l in lines {
            let points = l
                .split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            assert_eq!(
                points.split_whitespace().count(),
                4,
                "{m}: original + 3 ratios"
            );
        }
        let legend_swatches = svg
            .lines()
            .filter(|l| {
                l.starts_with("<polyline")
                    && l.contains(&format!("stroke=\"{color}\""))
                    && l.contains("stroke-width=\"3\"")
            })
            .count();
        assert_eq!(legend_swatches, 2, "{m}: one legend entry per panel");
    }
    // Markers: one per pruned point and panel.
    assert_eq!(svg.matches("<circle").count(), 2 * 6);

    // CSV round trip.
    let csv = r.to_csv();
    assert_eq!(csv.lines().count(), 1 + 1 + 6);
    assert!(csv.starts_with(sweep::CSV_HEADER));
    let back = SweepReport::from_csv(&csv).unwrap();
    assert_eq!(back.points.len(), 6);
    assert_eq!(back.fgsm_eps, 0.05);
    for (a, b) in back.points.iter().zip(&r.points) {
        assert_eq!(
            (a.method.as_str(), a.params, a.flash_bytes),
            (b.method.as_str(), b.params, b.flash_bytes)
        );
        assert!((a.accuracy.unwrap() - b.accuracy.unwrap()).abs() < 1e-6);
        assert!((a.robustness.unwrap() - b.robustness.unwrap()).abs() < 1e-6);
    }
    assert!(chart::sweep_svg(&back).unwrap().contains("merge"));

    // The HTML page: self-contained, with the constraints, the layers and the chart.
    let fit = paoding_cli::fit::fit(
        &fixture("mlp_torch.onnx"),
        "qemu-mps2-an500",
        &paoding_cli::fit::FitOptions {
            overrides: paoding_cli::fit::BudgetOverrides {
                flash_bytes: Some(64 * 1024),
                ..Default::default()
            },
            probes: ProbeSettings {
                count: 200,
                source: paoding_cli::probes::ProbeSource::Uniform,
                cache_dir: None,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let json = serde_json::to_value(&fit.report).unwrap();
    let page = paoding_cli::html::render(&json, Some(&r)).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for text in [
        "<style>",
        "<svg",
        "headroom",
        "Constraints",
        "Layers",
        "flash",
        "Pruning sweep",
    ] {
        assert!(page.contains(text), "the page lacks '{text}'");
    }
    for layer in &fit.report.layers {
        assert!(page.contains(&paoding_cli::html::escape(&layer.layer)));
    }
    for external in ["<script", "src=", "href=", "<link", "@import", "url("] {
        assert!(
            !page.contains(external),
            "the page loads something: '{external}'"
        );
    }
    let fleet = serde_json::json!({"schema": "paoding.fit-fleet/2", "all_fit": true, "boards": [json.clone(), json]});
    let page = paoding_cli::html::render(&fleet, None).unwrap();
    assert!(page.contains("2 boards") && !page.contains("Pruning sweep"));
    assert!(paoding_cli::html::render(&serde_json::json!({"schema": "x"}), None).is_err());
}

#[test]
fn ratios_parse_as_ranges_or_lists() {
    assert_eq!(
        sweep::parse_ratios("0.1:0.9:0.1").unwrap().0,
        vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    );
    assert_eq!(sweep::parse_ratios("0.25,0.5").unwrap().0, vec![0.25, 0.5]);
    assert!(sweep::parse_ratios("0.5:0.1:0.1").is_err());
    assert!(
        sweep::parse_ratios("0.5:1:0.25").is_err(),
        "1 is not a ratio"
    );
    assert!(sweep::parse_ratios("a").is_err());
    assert!(eval::parse_epsilon("-0.1").is_err());
}
