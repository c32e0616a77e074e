//! `fit` on every fixture and both third-party models, against budgets that force pruning
//! (in each board's dtype: int8 on the Cortex-M profiles, f32 on the QEMU board): the result
//! fits every constraint, one removal less would not, the blob the runtime loads is the model
//! that was measured, and impossible budgets are explained.

use paoding_cli::check::{CheckSource, DataArgs, LazyCheckSet};
use paoding_cli::fit::{fit_graph, BudgetOverrides, FitOptions, Status};
use paoding_cli::import::import_onnx;
use paoding_cli::profile;
use paoding_cli::progress::Progress;
use paoding_core::cost::WeightDtype;
use paoding_core::fit::Usage;
use paoding_core::interp;
use paoding_core::prune::Scope;
use paoding_runtime::Model;
use paoding_tests::*;

fn models() -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = fixtures()
        .iter()
        .map(|f| fixtures_dir().join(&f.file))
        .collect();
    paths.extend(shared_models());
    paths
}

#[test]
fn fitted_models_fit_and_one_step_less_would_not() {
    let boards = ["cortex-m7", "cortex-m4", "qemu-mps2-an500"];
    for path in models() {
        let g = import_onnx(&path).expect("imports").graph;
        // Fewer probes than the default, uniform: this test checks sizes, not refit quality.
        let mut probes = FitOptions::default().probes;
        probes.count = 200;
        probes.source = paoding_cli::probes::ProbeSource::Uniform;
        probes.check = CheckSource::Uniform;
        let check = LazyCheckSet::new(&g, &probes, DataArgs::default());
        for (i, board) in boards.iter().enumerate() {
            let p = profile::load(board).expect("profile");
            let int8 = p.weight_dtype == WeightDtype::Int8;
            let original = Usage::of_dtype(&g, p.weight_dtype).expect("usage");
            // Tighten a different resource per board so every constraint gets exercised.
            let overrides = match i {
                0 => BudgetOverrides {
                    flash_bytes: Some(original.flash_bytes * 6 / 10),
                    ..Default::default()
                },
                1 => BudgetOverrides {
                    macs: Some(original.macs / 2),
                    flash_bytes: Some(original.flash_bytes),
                    ..Default::default()
                },
                _ => BudgetOverrides {
                    ram_bytes: Some(original.ram_bytes * 7 / 10),
                    flash_bytes: Some(original.flash_bytes),
                    ..Default::default()
                },
            };
            for scope in [Scope::Global, Scope::Uniform] {
                let options = FitOptions {
                    overrides: overrides.clone(),
                    scope,
                    probes: probes.clone(),
                    ..Default::default()
                };
                let name = format!("{} on {board} ({scope:?})", path.display());
                let fitted = fit_graph(&name, &g, &p, &options, &check, &Progress::hidden())
                    .expect("fit runs");
                let r = &fitted.report;
                if r.status == Status::CannotFit {
                    // Only acceptable when even maximal pruning is over budget.
                    assert!(
                        !r.constraints.iter().all(|c| c.fits),
                        "{name}: 'cannot fit' but fits"
                    );
                    assert!(!r.shortfalls.is_empty(), "{name}: no explanation");
                    continue;
                }
                assert_eq!(r.status, Status::Pruned, "{name}: {}", r.message);
                assert!(
                    r.constraints.iter().all(|c| c.fits),
                    "{name}: {:?}",
                    r.constraints
                );
                let less = r
                    .one_step_less
                    .expect("a pruned result has a step before it");
                assert!(
                    !less.fits(&r.budget),
                    "{name}: one removal less also fits: over-pruned"
                );
                assert_eq!(r.dtype, p.weight_dtype, "{name}: the profile's dtype");
                // Every pruned layer keeps a multiple of the board's width, as the report says.
                let round_to = p.round_to.unwrap_or(1);
                assert_eq!(r.options.round_to, Some(round_to), "{name}");
                for l in &r.layers {
                    assert!(
                        l.after == l.before || l.after % round_to == 0,
                        "{name}: {} keeps {} of {}, not a multiple of {round_to}",
                        l.layer,
                        l.after,
                        l.before
                    );
                }
                let graph = fitted.graph.as_ref().expect("graph");
                if !int8 {
                    assert_eq!(
                        Usage::of(graph).expect("usage"),
                        r.fitted,
                        "{name}: report and model disagree"
                    );
                }
                // The blob is that model: its size is the flash figure, and the runtime agrees
                // with the reference interpreter on it.
                let blob = fitted.blob.as_ref().expect("blob");
                assert_eq!(blob.len() as u64, r.fitted.flash_bytes, "{name}");
                let aligned = paoding_cli::run::BlobBytes::new(blob);
                let model =
                    Model::from_bytes(aligned.as_bytes()).expect("runtime loads the fitted blob");
                assert_eq!(model.arena_bytes() as u64, r.fitted.ram_bytes, "{name}");
                let x = seeded_uniform(model.input_len(), 9, 0.0, 1.0);
                let mut arena = vec![0.0f32; model.arena_len()];
                let mut out = vec![0.0f32; model.output_len()];
                model.run(&x, &mut arena, &mut out).expect("runs");
                let reference = interp::run(graph, &x).expect("interpreter");
                // int8 rounds every activation to 1 of 256 steps of its range.
                let tolerance = if int8 { 0.1 } else { 1e-5 };
                let diff = relative_max_diff(&out, &reference);
                assert!(diff < tolerance, "{name}: runtime differs by {diff}");
            }
        }
    }
}

#[test]
fn a_model_that_fits_is_left_alone() {
    let g = import_onnx(&fixtures_dir().join("mlp_torch.onnx"))
        .expect("imports")
        .graph;
    let p = profile::load("cortex-m7").expect("profile");
    let options = FitOptions::default();
    let check = LazyCheckSet::new(&g, &options.probes, DataArgs::default());
    let fitted = fit_graph("mlp", &g, &p, &options, &check, &Progress::hidden()).expect("fit");
    assert_eq!(fitted.report.status, Status::FitsUnpruned);
    assert_eq!(fitted.graph.as_ref(), Some(&g));
}

#[test]
fn impossible_budgets_are_explained_per_constraint() {
    let path = &shared_models()[1]; // kws: its input alone is 1960 bytes
    let g = import_onnx(path).expect("imports").graph;
    let p = profile::load("cortex-m7").expect("profile");
    let options = FitOptions {
        overrides: BudgetOverrides {
            flash_bytes: Some(2048),
            ram_bytes: Some(1024),
            ..Default::default()
        },
        ..Default::default()
    };
    let check = LazyCheckSet::new(&g, &options.probes, DataArgs::default());
    let fitted = fit_graph("kws", &g, &p, &options, &check, &Progress::hidden()).expect("fit runs");
    let r = &fitted.report;
    assert_eq!(r.status, Status::CannotFit);
    assert!(fitted.blob.is_none() && fitted.graph.is_none());
    let resources: Vec<String> = r
        .shortfalls
        .iter()
        .map(|s| format!("{:?}", s.resource))
        .collect();
    assert_eq!(resources, ["Flash", "Ram"]);
    assert!(
        r.message.contains("input alone takes 1960 B"),
        "{}",
        r.message
    );
    assert!(r
        .shortfalls
        .iter()
        .all(|s| !s.dominated_by.is_empty() && s.used > s.budget));
}

#[test]
fn min_agreement_refuses_and_says_how_far_the_budget_must_grow() {
    let g = import_onnx(&fixtures_dir().join("mlp_torch.onnx"))
        .expect("imports")
        .graph;
    let p = profile::load("cortex-m7").expect("profile");
    let options = FitOptions {
        overrides: BudgetOverrides {
            flash_bytes: Some(12 * 1024),
            ..Default::default()
        },
        min_agreement: Some(0.995),
        ..Default::default()
    };
    let mut options = options;
    options.probes.source = paoding_cli::probes::ProbeSource::Uniform;
    let check = LazyCheckSet::new(&g, &options.probes, DataArgs::default());
    let fitted = fit_graph("mlp", &g, &p, &options, &check, &Progress::hidden()).expect("fit runs");
    let r = &fitted.report;
    assert_eq!(r.status, Status::FidelityTooLow, "{}", r.message);
    let needed = r.needed_for_agreement.expect("a larger budget is named");
    assert!(
        needed.flash_bytes > 12 * 1024 && needed.flash_bytes <= r.original.flash_bytes,
        "{needed:?}"
    );
    assert!(fitted.blob.is_none(), "a refused result is not written");
}
