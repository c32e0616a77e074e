//! `paoding eval ORIGINAL.onnx CANDIDATE.{onnx,pdg}`: how close a candidate (a pruned or
//! fitted model) stays to the original — accuracy with labels, top-1 agreement, KL and
//! relative L2 error — and how robust both are to FGSM, measured the way PAODING measures it.
//!
//! **FGSM robustness.** Among the samples a model classifies correctly (with `--labels`), or
//! among all samples with the model's own prediction as the target (without), each sample is
//! moved by `ε · sign(∇ₓ CE(x, predicted class))` (cross-entropy on the pre-softmax logits,
//! the gradient from [`paoding_core::grad`]'s backward pass through the IR), clipped to the
//! input range, and counted as robust when the model's prediction does not change. The
//! robustness at `ε` is the fraction of attacked samples that keep their prediction; the
//! candidate's *retention* is its robustness divided by the original's.
//!
//! **`.pdg` candidates.** A runtime blob carries no gradient (and paoding has no blob-to-IR
//! reader), so a blob's outputs come from the runtime but its perturbations are computed with
//! the *original* model's gradient (against the candidate's predicted class): a transfer
//! attack, usually weaker than a white-box one. The report says so; for a white-box figure,
//! evaluate the pruned ONNX instead (`paoding fit --onnx`, `paoding prune -o`).
//!
//! Without `--data`, the figures are estimated on the data-free check set
//! ([`crate::check`]: by default probes synthesized like a refit's, held out from it; the
//! same set `paoding prune` and `fit` measure on), and the report says so.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use paoding_core::fidelity::{self, Fidelity};
use paoding_core::grad;
use paoding_core::ir::Graph;
use paoding_core::probes::Probes;
use serde::{Deserialize, Serialize};

use crate::check::{CheckSet, DataArgs};
use crate::error::CliError;
use crate::run::BlobBytes;

/// Version tag of the JSON layout of `paoding eval --json`.
pub const EVAL_SCHEMA: &str = "paoding.eval/2";

/// Samples differentiated together: bounds the memory of a batched pass.
const CHUNK: usize = 128;

/// A model to evaluate: an IR graph (white-box) or a runtime blob (outputs only).
#[derive(Debug, Clone)]
pub enum Model {
    /// An imported ONNX model.
    Graph(Graph),
    /// A `.pdg` runtime blob, validated.
    Blob(BlobBytes),
}

impl Model {
    /// Load an `.onnx` (imported) or a `.pdg` (validated by the runtime).
    pub fn load(path: &Path) -> Result<Self, CliError> {
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("pdg"))
        {
            let blob = crate::run::read_blob(path).map_err(|e| CliError::Usage(e.to_string()))?;
            paoding_runtime::Model::from_bytes(blob.as_bytes()).map_err(|e| {
                CliError::Usage(format!(
                    "{}: not a valid paoding model blob: {e}",
                    path.display()
                ))
            })?;
            Ok(Model::Blob(blob))
        } else {
            // A quantized file is its own int8 model.
            let imported = crate::import::import_onnx(path)?;
            match crate::fit::original_model(path, &imported, false)? {
                Some(m) => Ok(m),
                None => Ok(Model::Graph(imported.graph)),
            }
        }
    }

    /// The graph, when the model has one (and so a gradient).
    pub fn graph(&self) -> Option<&Graph> {
        match self {
            Model::Graph(g) => Some(g),
            Model::Blob(_) => None,
        }
    }

    /// Values in one input and one output.
    pub fn io_len(&self) -> (usize, usize) {
        match self {
            Model::Graph(g) => (g.values[g.input].len(), g.values[g.output].len()),
            Model::Blob(b) => match paoding_runtime::Model::from_bytes(b.as_bytes()) {
                Ok(m) => (m.input_len(), m.output_len()),
                Err(_) => (0, 0),
            },
        }
    }

    /// Outputs over a batch of inputs (whole samples back to back).
    pub fn outputs(&self, xs: &[f32]) -> Result<Vec<f32>, CliError> {
        match self {
            Model::Graph(g) => outputs(g, xs),
            Model::Blob(b) => {
                let m = paoding_runtime::Model::from_bytes(b.as_bytes())
                    .map_err(|e| CliError::Usage(format!("not a valid model blob: {e}")))?;
                crate::run::run_batch(&m, xs).map_err(|e| CliError::Usage(e.to_string()))
            }
        }
    }
}

/// Outputs of a graph over a batch, evaluated in batched chunks.
pub fn outputs(g: &Graph, xs: &[f32]) -> Result<Vec<f32>, CliError> {
    Ok(grad::outputs_batch(g, xs)?)
}

/// Top-1 class of every sample.
pub fn predictions(outputs: &[f32], per_sample: usize) -> Vec<usize> {
    outputs
        .chunks_exact(per_sample.max(1))
        .map(fidelity::argmax)
        .collect()
}

/// `sign(∇ₓ CE(x, target))` of each sample (−1, 0 or +1 per element; 0 where the gradient is
/// exactly zero), the gradient taken on the pre-softmax logits by a batched backward pass.
pub fn sign_gradients(g: &Graph, xs: &[f32], targets: &[usize]) -> Result<Vec<f32>, CliError> {
    let sample = g.values[g.input].len();
    if xs.len() != sample * targets.len() {
        return Err(CliError::Usage(format!(
            "{} input values for {} samples of {sample}",
            xs.len(),
            targets.len()
        )));
    }
    let logits = grad::logits_value(g);
    let classes = g.values[logits].len();
    if let Some(&t) = targets.iter().find(|&&t| t >= classes) {
        return Err(CliError::Usage(format!(
            "class {t} does not exist: the model has {classes} outputs"
        )));
    }
    let mut out = Vec::with_capacity(xs.len());
    for (chunk, ts) in xs.chunks(sample * CHUNK).zip(targets.chunks(CHUNK)) {
        let values = grad::forward_batch(g, chunk, ts.len())?;
        let mut seed = Vec::with_capacity(classes * ts.len());
        for (z, &t) in values[logits].chunks_exact(classes).zip(ts) {
            seed.extend(grad::cross_entropy(z, t).1);
        }
        let dx = grad::backward_batch(g, &values, ts.len(), vec![(logits, seed)]);
        out.extend(dx.into_iter().map(|d| {
            if d > 0.0 {
                1.0
            } else if d < 0.0 {
                -1.0
            } else {
                0.0
            }
        }));
    }
    Ok(out)
}

/// The FGSM robustness of one model at one ε.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Robustness {
    /// Perturbation size (in input units, L∞).
    pub epsilon: f64,
    /// Samples attacked: correctly classified ones (with labels), else all.
    pub attacked: usize,
    /// Attacked samples whose prediction did not change.
    pub kept: usize,
    /// `kept / attacked` (0 when nothing was attacked).
    pub rate: f64,
}

/// The samples one model is attacked on, their targets, and the perturbation directions.
#[derive(Debug, Clone)]
pub struct Attack {
    /// Indices of the attacked samples in the evaluation set.
    pub indices: Vec<usize>,
    /// The predicted class of each attacked sample (what it must keep).
    pub targets: Vec<usize>,
    /// `sign(∇ₓ CE)` of each attacked sample, back to back.
    pub signs: Vec<f32>,
}

impl Attack {
    /// Prepare the attack of a model whose predictions are `preds`: eligible samples are
    /// those it classifies correctly (with `labels`) or all (without); the perturbation
    /// directions come from `gradient_model`'s gradient against the predicted class (the
    /// model itself for a white-box attack, another for a transfer attack).
    pub fn prepare(
        gradient_model: &Graph,
        inputs: &Probes,
        preds: &[usize],
        labels: Option<&[usize]>,
    ) -> Result<Self, CliError> {
        let indices: Vec<usize> = (0..preds.len())
            .filter(|&i| labels.is_none_or(|l| l[i] == preds[i]))
            .collect();
        let targets: Vec<usize> = indices.iter().map(|&i| preds[i]).collect();
        let mut xs = Vec::with_capacity(indices.len() * inputs.sample_len);
        for &i in &indices {
            xs.extend_from_slice(inputs.sample(i));
        }
        let signs = sign_gradients(gradient_model, &xs, &targets)?;
        Ok(Attack {
            indices,
            targets,
            signs,
        })
    }

    /// Robustness of `model` at `epsilon`: perturb, clip to `range`, re-classify.
    pub fn robustness(
        &self,
        model: &Model,
        inputs: &Probes,
        epsilon: f64,
        range: (f32, f32),
    ) -> Result<Robustness, CliError> {
        let (_, per_out) = model.io_len();
        let n = inputs.sample_len;
        let eps = epsilon as f32;
        let mut xs = Vec::with_capacity(self.indices.len() * n);
        for (k, &i) in self.indices.iter().enumerate() {
            let s = &self.signs[k * n..(k + 1) * n];
            xs.extend(
                inputs
                    .sample(i)
                    .iter()
                    .zip(s)
                    .map(|(&x, &d)| (x + eps * d).clamp(range.0, range.1)),
            );
        }
        let kept = if xs.is_empty() {
            0
        } else {
            predictions(&model.outputs(&xs)?, per_out)
                .iter()
                .zip(&self.targets)
                .filter(|(p, t)| p == t)
                .count()
        };
        let attacked = self.indices.len();
        Ok(Robustness {
            epsilon,
            attacked,
            kept,
            rate: if attacked == 0 {
                0.0
            } else {
                kept as f64 / attacked as f64
            },
        })
    }
}

/// FGSM robustness of the original and the candidate at one ε.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FgsmPoint {
    /// Perturbation size.
    pub epsilon: f64,
    /// The original's robustness.
    pub original: Robustness,
    /// The candidate's robustness.
    pub candidate: Robustness,
    /// `candidate.rate / original.rate` (`None` when the original keeps nothing).
    pub retention: Option<f64>,
}

/// Everything `paoding eval` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// [`EVAL_SCHEMA`].
    pub schema: String,
    /// The original model file.
    pub original: String,
    /// The candidate model file.
    pub candidate: String,
    /// `onnx` or `pdg`.
    pub candidate_kind: String,
    /// What the comparison ran on.
    pub inputs: String,
    /// Whether the inputs are probes, not data.
    pub data_free: bool,
    /// Whether the model is treated as a classifier.
    pub classifier: bool,
    /// Agreement, KL and relative L2 error of the candidate against the original.
    pub fidelity: Fidelity,
    /// Accuracy of the original, with labels.
    pub accuracy_original: Option<f64>,
    /// Accuracy of the candidate, with labels.
    pub accuracy_candidate: Option<f64>,
    /// Input range FGSM clips to.
    pub input_range: (f32, f32),
    /// How the candidate is attacked: `white-box` or `transfer`.
    pub fgsm_attack: String,
    /// Per ε.
    pub fgsm: Vec<FgsmPoint>,
    /// Caveats, for people.
    pub notes: Vec<String>,
}

/// Evaluate `candidate` against `original` on `set`, with FGSM at each of `epsilons`.
pub fn evaluate(
    original_path: &str,
    original: &Graph,
    candidate_path: &str,
    candidate: &Model,
    set: &CheckSet,
    epsilons: &[f64],
) -> Result<EvalReport, CliError> {
    let (n_in, n_out) = (
        original.values[original.input].len(),
        original.values[original.output].len(),
    );
    if candidate.io_len() != (n_in, n_out) {
        let (a, b) = candidate.io_len();
        return Err(CliError::Usage(format!(
            "{candidate_path}: takes {a} input values and gives {b} outputs, but {original_path} takes {n_in} and gives {n_out}"
        )));
    }
    if let Some(e) = epsilons.iter().find(|e| !e.is_finite() || **e < 0.0) {
        return Err(CliError::Usage(format!(
            "--fgsm: epsilon {e} must be a finite number ≥ 0"
        )));
    }
    let classifier = set.task.is_classifier();
    let input_range = set.input_range;
    let xs = &set.inputs;
    let a = &set.reference;
    let b = candidate.outputs(&xs.data)?;
    let labels = set.labels.as_deref();
    let mut notes = set.warnings.clone();
    if set.data_free {
        notes.push(format!(
            "no --data: every figure is estimated on {}",
            set.description
        ));
    }
    let white_box = candidate.graph().is_some();
    let mut fgsm = Vec::new();
    if classifier && !epsilons.is_empty() {
        let pa = predictions(a, n_out);
        let pb = predictions(&b, n_out);
        let attack_a = Attack::prepare(original, xs, &pa, labels)?;
        let attack_b = match candidate.graph() {
            Some(g) => Attack::prepare(g, xs, &pb, labels)?,
            None => Attack::prepare(original, xs, &pb, labels)?,
        };
        let original_model = Model::Graph(original.clone());
        for &eps in epsilons {
            let ra = attack_a.robustness(&original_model, xs, eps, input_range)?;
            let rb = attack_b.robustness(candidate, xs, eps, input_range)?;
            fgsm.push(FgsmPoint {
                epsilon: eps,
                retention: (ra.rate > 0.0).then(|| rb.rate / ra.rate),
                original: ra,
                candidate: rb,
            });
        }
        if !white_box {
            notes.push(
                "FGSM on the .pdg candidate is a transfer attack: a runtime blob carries no gradient, so its \
                 perturbations follow the ORIGINAL model's gradient (against the candidate's own predictions). \
                 Transfer attacks are weaker than white-box ones; for a white-box figure evaluate the pruned \
                 ONNX (paoding fit --onnx, paoding prune -o)."
                    .into(),
            );
        }
    } else if !classifier && !epsilons.is_empty() {
        notes.push(
            "not a classifier: FGSM, agreement and KL are skipped; see the relative L2 error"
                .into(),
        );
    }
    Ok(EvalReport {
        schema: EVAL_SCHEMA.into(),
        original: original_path.into(),
        candidate: candidate_path.into(),
        candidate_kind: if white_box { "onnx" } else { "pdg" }.into(),
        inputs: set.description.clone(),
        data_free: set.data_free,
        classifier,
        fidelity: fidelity::compare(a, &b, n_out),
        accuracy_original: labels.map(|l| fidelity::accuracy(a, n_out, l)),
        accuracy_candidate: labels.map(|l| fidelity::accuracy(&b, n_out, l)),
        input_range,
        fgsm_attack: if white_box { "white-box" } else { "transfer" }.into(),
        fgsm,
        notes,
    })
}

impl EvalReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "original   {}", self.original);
        let _ = writeln!(
            out,
            "candidate  {}{}",
            self.candidate,
            if self.candidate_kind == "pdg" {
                " (runtime blob, run by paoding-runtime)"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "inputs     {}", self.inputs);
        let f = &self.fidelity;
        let _ = writeln!(out, "\n{:<22} {:>10} {:>10}", "", "original", "candidate");
        if let (Some(a), Some(b)) = (self.accuracy_original, self.accuracy_candidate) {
            let _ = writeln!(
                out,
                "{:<22} {:>8.2} % {:>8.2} %",
                "accuracy",
                100.0 * a,
                100.0 * b
            );
        }
        if self.classifier {
            let _ = writeln!(
                out,
                "{:<22} {:>10} {:>8.2} %  (95 % interval {:.1}–{:.1} %{})",
                "top-1 agreement",
                "",
                100.0 * f.agreement,
                100.0 * f.agreement_interval.0,
                100.0 * f.agreement_interval.1,
                if self.data_free { ", estimated" } else { "" }
            );
            let _ = writeln!(
                out,
                "{:<22} {:>10} {:>10}",
                "KL mean / max (nats)",
                "",
                format!("{:.4} / {:.4}", f.mean_kl, f.max_kl)
            );
        }
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>10.4}  (SNR {:.1} dB)",
            "relative L2 error", "", f.relative_l2, f.snr_db
        );
        if !self.fgsm.is_empty() {
            let _ = writeln!(
                out,
                "\nFGSM robustness ({}; inputs clipped to [{}, {}]): share of {} that keep their prediction",
                self.fgsm_attack,
                self.input_range.0,
                self.input_range.1,
                if self.accuracy_original.is_some() {
                    "correctly classified samples"
                } else {
                    "samples"
                }
            );
            let _ = writeln!(
                out,
                "  {:>8} {:>20} {:>20} {:>10}",
                "epsilon", "original", "candidate", "retained"
            );
            let cell =
                |r: &Robustness| format!("{:.1} % ({}/{})", 100.0 * r.rate, r.kept, r.attacked);
            for p in &self.fgsm {
                let _ = writeln!(
                    out,
                    "  {:>8} {:>20} {:>20} {:>10}",
                    p.epsilon,
                    cell(&p.original),
                    cell(&p.candidate),
                    p.retention
                        .map_or("-".to_string(), |r| format!("{:.1} %", 100.0 * r))
                );
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "\nnote: {n}");
        }
        out
    }
}

/// Parse one ε of `--fgsm` (a comma-separated list: `0.01,0.05`).
pub fn parse_epsilon(s: &str) -> Result<f64, String> {
    let e: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if e.is_finite() && e >= 0.0 {
        Ok(e)
    } else {
        Err(format!("epsilon {e} must be finite and ≥ 0"))
    }
}

/// Arguments of `paoding eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// The original ONNX model.
    pub original: PathBuf,
    /// The candidate: a pruned ONNX model, or a runtime blob (.pdg; FGSM is then a transfer
    /// attack with the original's gradient, since a blob carries no gradient).
    pub candidate: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub probes: crate::probes::ProbeArgs,
    /// FGSM perturbation sizes (L∞, in input units), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05", value_parser = parse_epsilon)]
    pub fgsm: Vec<f64>,
    /// Print the report as JSON (schema paoding.eval/2).
    #[arg(long)]
    pub json: bool,
}

/// `paoding eval`: print the report; exit code 0.
pub fn run_eval(args: EvalArgs) -> Result<u8, CliError> {
    let imported = crate::import::import_onnx(&args.original)?;
    let candidate = Model::load(&args.candidate)?;
    let settings = args
        .probes
        .settings(&imported, crate::probes::ProbeSource::Auto)?;
    let progress = crate::progress::Progress::on_stderr(!args.json);
    // A quantized original is its own int8 model (int8 .npy data are its input codes).
    let original = crate::fit::original_model(&args.original, &imported, false)?;
    let set = CheckSet::build_for(
        &imported.graph,
        original.as_ref(),
        &settings,
        &args.data,
        &progress,
    )?;
    drop(progress);
    let report = evaluate(
        &args.original.display().to_string(),
        &imported.graph,
        &args.candidate.display().to_string(),
        &candidate,
        &set,
        &args.fgsm,
    )?;
    if args.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| CliError::Usage(e.to_string()))?;
        crate::output::print(&(json + "\n"))?;
    } else {
        crate::output::print(&report.to_text())?;
    }
    Ok(0)
}
