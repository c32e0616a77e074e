//! The check set: the inputs every fidelity figure is measured on — the user's data
//! (`--data`), or without it a data-free set held out from the refit (`--check-probes
//! auto|uniform|FILE.npy`) — with the original model's outputs on them, whether they exercise
//! the model, and the report every command prints from them.
//!
//! `auto`, the default, follows [`paoding_core::estimate`]: for a classifier, probes
//! synthesized by the refit's own method with their own seed, each taken deeper into its class
//! (p ≥ [`CHECK_STOP_CONFIDENCE`], or past the refit's p ≥ 0.99 until it stops improving:
//! [`synth::PLATEAU_STEPS`]); inverted from the model alone, they then get uniform noise
//! until the model's mean confidence is [`CHECK_CONFIDENCE`], the mix of clean evidence and
//! variation real inputs have; matched to BatchNorm statistics, they are used as they are. For
//! an autoencoder: its reconstructions of uniform noise. The set is cached like the refit's
//! probes.

use std::fmt::Write as _;
use std::path::PathBuf;

use paoding_core::estimate::{self, Spread, Task, CHECK_CONFIDENCE, CHECK_STOP_CONFIDENCE};
use paoding_core::fidelity::{self, Fidelity};
use paoding_core::ir::Graph;
use paoding_core::plan::MemoryPlan;
use paoding_core::probes::Probes;
use paoding_core::synth::{self, SynthMethod, SynthOptions, STOP_CONFIDENCE};
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::eval::{Attack, Model};
use crate::probes::{self, ProbeSettings, RangeSource, SYNTH_STEPS};
use crate::progress::Progress;

/// What the data-free fidelity check runs on (`--check-probes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckSource {
    /// Probes synthesized like the refit's, held out from it (the default).
    Auto,
    /// Seeded uniform draws from the input range.
    Uniform,
    /// Inputs from a `.npy` file (first axis = batch), unlabelled.
    File(PathBuf),
}

/// Parse `--check-probes` (a path may be any OS string).
pub fn parse_source(s: std::ffi::OsString) -> Result<CheckSource, String> {
    Ok(match s.to_str() {
        Some("auto") => CheckSource::Auto,
        Some("uniform") => CheckSource::Uniform,
        _ if std::path::Path::new(&s).extension() == Some(std::ffi::OsStr::new("npy")) => {
            CheckSource::File(PathBuf::from(s))
        }
        _ => {
            return Err(format!(
                "'{}' is not auto, uniform or a .npy file",
                s.to_string_lossy()
            ))
        }
    })
}

/// The clap parser of `--check-probes` (accepts non-UTF-8 paths).
pub fn source_parser() -> impl clap::builder::TypedValueParser<Value = CheckSource> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(parse_source)
}

/// Real inputs to measure fidelity on (`--data`, `--labels`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataArgs {
    /// Real inputs to measure fidelity on (.npy, float32 or float64, C order: [N, the model's
    /// input dims without its batch axis], in the model's layout). Without it, fidelity is
    /// estimated on a held-out data-free check set (--check-probes).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Labels of --data (.npy of class indices): accuracy before and after, and FGSM on
    /// correctly classified samples only.
    #[arg(long, requires = "data")]
    pub labels: Option<PathBuf>,
}

/// FGSM perturbation size of the robustness figure every report carries, as a fraction of
/// the width of the input range (0.05 for inputs in [0, 1], PAODING's ε).
pub const FGSM_EPSILON_OF_RANGE: f64 = 0.05;

/// The inputs fidelity is measured on, the original model's outputs on them, and what they are.
#[derive(Debug, Clone)]
pub struct CheckSet {
    /// The inputs.
    pub inputs: Probes,
    /// Their labels, when given with `--data`.
    pub labels: Option<Vec<usize>>,
    /// The original model's outputs on them.
    pub reference: Vec<f32>,
    /// Names the set, its size and how it was made.
    pub description: String,
    /// Whether these are probes rather than real data.
    pub data_free: bool,
    /// What the model's output is.
    pub task: Task,
    /// How much the original model's outputs vary over the set.
    pub spread: Spread,
    /// What makes the figures on this set doubtful (a degenerate set).
    pub warnings: Vec<String>,
    /// Input range FGSM clips to.
    pub input_range: (f32, f32),
    /// The original model's FGSM robustness at [`FGSM_EPSILON_OF_RANGE`] (classifiers).
    original_robustness: Option<crate::eval::Robustness>,
    /// The attack on the original (its predictions, its gradient's directions) and the digest
    /// of the graph it came from: a candidate attacked through that same graph and predicting
    /// the same classes (an unpruned int8 model) is attacked along the same directions, without
    /// computing them again.
    original_attack: Option<(u64, Vec<usize>, Attack)>,
    /// With real data: the data-free check set too, so that every report shows what the
    /// estimate would have said beside what the data says.
    without_data: Option<Box<CheckSet>>,
}

impl CheckSet {
    /// The check set for `g`: `data` when given, else the data-free set `settings.check`
    /// names (synthesized ones read from or written to the cache).
    pub fn build(
        g: &Graph,
        settings: &ProbeSettings,
        data: &DataArgs,
        progress: &Progress,
    ) -> Result<Self, CliError> {
        Self::build_for(g, None, settings, data, progress)
    }

    /// [`Self::build`] for a model the runtime blob `original` is (a quantized file's own
    /// int8 model), `g` its f32 graph: the set's inputs are made for `g`, but the outputs
    /// every candidate is compared with are the blob's.
    pub fn build_for(
        g: &Graph,
        original: Option<&Model>,
        settings: &ProbeSettings,
        data: &DataArgs,
        progress: &Progress,
    ) -> Result<Self, CliError> {
        // An int8 original takes int8 arrays: its input's codes.
        let quant = match original {
            Some(Model::Blob(b)) => paoding_runtime::Model::from_bytes(b.as_bytes())
                .ok()
                .and_then(|m| m.input_quant())
                .map(|q| (q.scale, q.zero_point)),
            _ => None,
        };
        if let Some(path) = &data.data {
            let (n, xs) = crate::npy::read_inputs_quantized(path, g.shape(g.input), quant)?;
            let labels = data
                .labels
                .as_deref()
                .map(|l| crate::npy::read_labels(l, n))
                .transpose()?;
            let description = format!(
                "{} ({n} samples{})",
                path.display(),
                if labels.is_some() { ", labelled" } else { "" }
            );
            let inputs = Probes::from_batch(xs, g.values[g.input].len())?;
            let mut set = Self::new_for(
                g,
                original,
                inputs,
                labels,
                description,
                false,
                settings.input_range,
            )?;
            set.without_data = Some(Box::new(Self::build_for(
                g,
                original,
                settings,
                &DataArgs::default(),
                progress,
            )?));
            return Ok(set);
        }
        let (inputs, made) = match &settings.check {
            CheckSource::File(path) => {
                let (n, xs) = crate::npy::read_inputs_quantized(path, g.shape(g.input), quant)?;
                (
                    Probes::from_batch(xs, g.values[g.input].len())?,
                    format!("{n} check inputs from {}", path.display()),
                )
            }
            CheckSource::Uniform => (
                settings.uniform_check_probes(g),
                format!(
                    "{} held-out uniform probes (seed {})",
                    settings.count_for(g),
                    settings.check_seed()
                ),
            ),
            CheckSource::Auto => synthesized(g, settings, progress)?,
        };
        let description = format!("{made}; {}", settings.range_text());
        let mut set = Self::new_for(
            g,
            original,
            inputs,
            None,
            description,
            true,
            settings.input_range,
        )?;
        if set.warnings.is_empty() && settings.range_source == RangeSource::Assumed {
            // Not degenerate, but only as good as the assumption: say what it rests on.
            set.description
                .push_str("; the estimate holds for inputs in that range");
        }
        Ok(set)
    }

    /// A check set of `inputs` (with `labels`, when real data), measured on `g` once.
    pub fn new(
        g: &Graph,
        inputs: Probes,
        labels: Option<Vec<usize>>,
        description: String,
        data_free: bool,
        input_range: (f32, f32),
    ) -> Result<Self, CliError> {
        Self::new_for(g, None, inputs, labels, description, data_free, input_range)
    }

    /// [`Self::new`] with the reference outputs (and robustness) of `original` when given
    /// (a runtime blob whose f32 graph is `g`).
    pub fn new_for(
        g: &Graph,
        original: Option<&Model>,
        inputs: Probes,
        labels: Option<Vec<usize>>,
        description: String,
        data_free: bool,
        input_range: (f32, f32),
    ) -> Result<Self, CliError> {
        let task = estimate::task(g);
        if labels.is_some() && !task.is_classifier() {
            return Err(CliError::Usage(format!(
                "--labels given, but the model's output {:?} is not a vector of class scores",
                g.shape(g.output)
            )));
        }
        let graph_model;
        let original = match original {
            Some(m) => m,
            None => {
                graph_model = Model::Graph(g.clone());
                &graph_model
            }
        };
        let reference = original.outputs(&inputs.data)?;
        let per = g.values[g.output].len();
        let spread = Spread::of(&reference, per, task);
        let mut warnings = Vec::new();
        if let Some(why) = spread.degenerate(task) {
            warnings.push(format!(
                "the check set says little about fidelity: {why}. The inputs are probably not what the model \
                 sees in use: give real inputs (--data), the model's input range (--input-range lo,hi), or \
                 representative inputs (--check-probes FILE.npy)"
            ));
        }
        let (original_robustness, original_attack) = match task {
            Task::Classifier { .. } => {
                let preds = crate::eval::predictions(&reference, per);
                let attack = Attack::prepare(g, &inputs, &preds, labels.as_deref())?;
                let epsilon = fgsm_epsilon(input_range);
                let robustness = attack.robustness(original, &inputs, epsilon, input_range)?;
                let digest = paoding_core::blob::digest(g, &MemoryPlan::new(g))?;
                (Some(robustness), Some((digest, preds, attack)))
            }
            _ => (None, None),
        };
        Ok(CheckSet {
            inputs,
            labels,
            reference,
            description,
            data_free,
            task,
            spread,
            warnings,
            input_range,
            original_robustness,
            original_attack,
            without_data: None,
        })
    }

    /// How close `candidate` stays to the original on this set (no robustness: the cheap
    /// figure a search compares).
    pub fn fidelity(&self, candidate: &Graph) -> Result<Fidelity, CliError> {
        Ok(self.compare(&crate::eval::outputs(candidate, &self.inputs.data)?))
    }

    /// [`Self::fidelity`] of any candidate: a graph, or a runtime blob (an int8 one).
    pub fn fidelity_of(&self, candidate: &Model) -> Result<Fidelity, CliError> {
        Ok(self.compare(&candidate.outputs(&self.inputs.data)?))
    }

    /// The candidate's outputs on this set against the original's.
    fn compare(&self, out: &[f32]) -> Fidelity {
        fidelity::compare(
            &self.reference,
            out,
            self.reference.len() / self.inputs.count().max(1),
        )
    }

    /// The full report on `candidate`: fidelity, accuracy with labels, FGSM robustness.
    pub fn measure(&self, candidate: &Graph) -> Result<FidelityReport, CliError> {
        self.measure_model(&Model::Graph(candidate.clone()), candidate)
    }

    /// [`Self::measure`] of any candidate. FGSM perturbs along the gradient of `surrogate`:
    /// the candidate itself when it is a graph; for a runtime blob, which carries no gradient,
    /// the f32 graph it was made from (an int8 blob's own pruned f32 model), so the attack
    /// is as close to white-box as the blob allows.
    pub fn measure_model(
        &self,
        candidate: &Model,
        surrogate: &Graph,
    ) -> Result<FidelityReport, CliError> {
        let per = self.reference.len() / self.inputs.count().max(1);
        let out = candidate.outputs(&self.inputs.data)?;
        let labels = self.labels.as_deref();
        let robustness = match self.original_robustness {
            Some(original) => {
                let preds = crate::eval::predictions(&out, per);
                let same = match &self.original_attack {
                    Some((digest, original_preds, attack)) if *original_preds == preds => {
                        let plan = MemoryPlan::new(surrogate);
                        (paoding_core::blob::digest(surrogate, &plan)? == *digest).then_some(attack)
                    }
                    _ => None,
                };
                let prepared;
                let attack = match same {
                    Some(a) => a,
                    None => {
                        prepared = Attack::prepare(surrogate, &self.inputs, &preds, labels)?;
                        &prepared
                    }
                };
                let pruned = attack.robustness(
                    candidate,
                    &self.inputs,
                    original.epsilon,
                    self.input_range,
                )?;
                Some(RobustnessEstimate {
                    epsilon: original.epsilon,
                    original: original.rate,
                    pruned: pruned.rate,
                    retention: (original.rate > 0.0).then(|| pruned.rate / original.rate),
                })
            }
            None => None,
        };
        let fidelity = fidelity::compare(&self.reference, &out, per);
        Ok(FidelityReport {
            inputs: self.description.clone(),
            data_free: self.data_free,
            task: self.task,
            plausible_on_real_data: (self.data_free && self.task.is_classifier())
                .then(|| estimate::plausible_real_agreement(fidelity.agreement_interval)),
            fidelity,
            accuracy_before: labels.map(|l| fidelity::accuracy(&self.reference, per, l)),
            accuracy_after: labels.map(|l| fidelity::accuracy(&out, per, l)),
            robustness,
            warnings: self.warnings.clone(),
            without_data: self
                .without_data
                .as_ref()
                .map(|set| set.measure_model(candidate, surrogate).map(Box::new))
                .transpose()?,
        })
    }
}

/// A check set built the first time it is needed: a fit whose model fits unpruned never
/// synthesizes one, and a fleet of boards shares one.
#[derive(Debug)]
pub struct LazyCheckSet<'a> {
    graph: &'a Graph,
    original: Option<Model>,
    settings: &'a ProbeSettings,
    data: DataArgs,
    set: std::cell::OnceCell<CheckSet>,
}

impl<'a> LazyCheckSet<'a> {
    /// The check set of [`CheckSet::build`], not built yet.
    pub fn new(graph: &'a Graph, settings: &'a ProbeSettings, data: DataArgs) -> Self {
        LazyCheckSet {
            graph,
            original: None,
            settings,
            data,
            set: std::cell::OnceCell::new(),
        }
    }

    /// The set of [`CheckSet::build_for`], whose reference outputs are `original`'s (a
    /// quantized file's own int8 blob), not built yet.
    pub fn for_original(mut self, original: Option<Model>) -> Self {
        self.original = original;
        self
    }

    /// The set, built on first use.
    pub fn get(&self, progress: &Progress) -> Result<&CheckSet, CliError> {
        if let Some(set) = self.set.get() {
            return Ok(set);
        }
        let set = CheckSet::build_for(
            self.graph,
            self.original.as_ref(),
            self.settings,
            &self.data,
            progress,
        )?;
        Ok(self.set.get_or_init(|| set))
    }
}

/// [`FGSM_EPSILON_OF_RANGE`] of the range's width.
pub fn fgsm_epsilon(range: (f32, f32)) -> f64 {
    FGSM_EPSILON_OF_RANGE * f64::from(range.1 - range.0)
}

/// The default data-free check set and its description (see the module documentation).
fn synthesized(
    g: &Graph,
    settings: &ProbeSettings,
    progress: &Progress,
) -> Result<(Probes, String), CliError> {
    let synth_graph = settings.synthesis_graph(g);
    let count = settings.count_for(g);
    let method = synth::auto_method(synth_graph);
    let seed = settings.check_seed();
    if method == SynthMethod::Uniform || probes::over_auto_budget(g, count) {
        let why = if method == SynthMethod::Uniform {
            "nothing to synthesize from: not a classifier, no BatchNorm statistics"
        } else {
            "synthesis would exceed its work budget on this model"
        };
        return Ok((
            settings.uniform_check_probes(g),
            format!("{count} held-out uniform probes (seed {seed}; {why})"),
        ));
    }
    let options = SynthOptions {
        count,
        steps: SYNTH_STEPS,
        input_range: settings.input_range,
        seed,
        method,
        stop_confidence: CHECK_STOP_CONFIDENCE,
        ..Default::default()
    };
    let noisy = method == SynthMethod::Invert;
    let tag = if noisy {
        format!("check, noise to mean confidence {CHECK_CONFIDENCE}")
    } else {
        "check".into()
    };
    let file = probes::cache_file(settings.cache_dir.as_deref(), synth_graph, &options, &tag)?;
    let name = probes::method_name(method);
    // How many steps ran, when this run made them: probes still short of their target
    // after all the steps say why the set took as long as it did.
    let how = |steps: Option<usize>| {
        let steps = steps.map_or(String::new(), |s| format!("{s} of "));
        if noisy {
            format!(
                " (each to p ≥ {CHECK_STOP_CONFIDENCE}, or past p = {STOP_CONFIDENCE} until it stops improving; {steps}at most {SYNTH_STEPS} steps), with uniform noise added until the model's mean confidence is {CHECK_CONFIDENCE}"
            )
        } else if method == SynthMethod::Reconstruct {
            String::new()
        } else {
            format!(" ({steps}at most {SYNTH_STEPS} steps)")
        }
    };
    if let Some(cached) = probes::read_cached(file.as_deref(), g, count) {
        return Ok((
            cached,
            format!(
                "{count} held-out probes by {name}, seed {seed}{} (cached {})",
                how(None),
                file.as_deref()
                    .map_or(String::new(), |f| f.display().to_string())
            ),
        ));
    }
    let what = format!("synthesizing {count} check probes, step");
    let (base, report) = synth::synthesize_with_progress(synth_graph, &options, &mut |s, n| {
        progress.steps(&what, s, n)
    });
    let mut description = format!(
        "{count} held-out probes by {name}, seed {seed}{}{}",
        how(Some(report.steps)),
        probes::on_target_text(&report)
    );
    let inputs = if noisy {
        let (probes, sigma) =
            estimate::add_calibrated_noise(g, &base, settings.input_range, CHECK_CONFIDENCE, seed)?;
        let _ = write!(description, "; noise ±{:.3} of the input range", sigma);
        probes
    } else {
        base
    };
    description.push_str(&probes::write_cached(file.as_deref(), g, &inputs));
    Ok((inputs, description))
}

/// FGSM robustness of the original and the candidate on the check set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RobustnessEstimate {
    /// Perturbation size (input units, L∞): [`FGSM_EPSILON_OF_RANGE`] of the input range.
    pub epsilon: f64,
    /// Share of the attacked inputs the original keeps its prediction on.
    pub original: f64,
    /// The same for the candidate.
    pub pruned: f64,
    /// `pruned / original` (`None` when the original keeps nothing).
    pub retention: Option<f64>,
}

/// Fidelity of a pruned model on the check set, and accuracy when labels were given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FidelityReport {
    /// The check set: what it is, its size, how it was made.
    pub inputs: String,
    /// Whether it is data-free (the figures are estimates).
    pub data_free: bool,
    /// What the model's output is (which figures mean something).
    pub task: Task,
    /// Agreement (with its interval), KL, relative L2 and SNR against the original.
    pub fidelity: Fidelity,
    /// Data-free estimates of a classifier: the agreement real inputs may plausibly give,
    /// from the estimate's errors measured on the benchmark's models
    /// ([`paoding_core::estimate::plausible_real_agreement`]).
    pub plausible_on_real_data: Option<(f64, f64)>,
    /// Accuracy of the original, with labels.
    pub accuracy_before: Option<f64>,
    /// Accuracy of the pruned model, with labels.
    pub accuracy_after: Option<f64>,
    /// FGSM robustness on the same set (classifiers).
    pub robustness: Option<RobustnessEstimate>,
    /// What makes the figures doubtful.
    pub warnings: Vec<String>,
    /// With real data: the same figures estimated on the data-free check set, to see how
    /// far the estimate is from the data on this model.
    pub without_data: Option<Box<FidelityReport>>,
}

impl FidelityReport {
    /// The agreement as reports print it: estimated or measured, with its interval.
    pub fn agreement_text(&self) -> String {
        let f = &self.fidelity;
        let real = self
            .plausible_on_real_data
            .map_or(String::new(), |(lo, hi)| {
                format!(
                    "; on real inputs expect {:.1}–{:.1} %",
                    100.0 * lo,
                    100.0 * hi
                )
            });
        format!(
            "top-1 agreement {:.2} % (95 % interval {:.1}–{:.1} %{}{real})",
            100.0 * f.agreement,
            100.0 * f.agreement_interval.0,
            100.0 * f.agreement_interval.1,
            if self.data_free { ", estimated" } else { "" }
        )
    }

    /// The human-readable lines, indented by `indent`.
    pub fn to_text(&self, indent: &str) -> String {
        let mut out = String::new();
        let f = &self.fidelity;
        let _ = writeln!(
            out,
            "{indent}fidelity {} {}:",
            if self.data_free {
                "estimated without data on"
            } else {
                "measured on"
            },
            self.inputs
        );
        if self.task.is_classifier() {
            let _ = writeln!(
                out,
                "{indent}  {}, KL mean {:.4} max {:.4}, relative L2 error {:.4}",
                self.agreement_text(),
                f.mean_kl,
                f.max_kl,
                f.relative_l2
            );
        } else {
            let _ = writeln!(
                out,
                "{indent}  relative L2 error {:.4} (SNR {:.1} dB) of the {}",
                f.relative_l2,
                f.snr_db,
                if self.task == Task::Autoencoder {
                    "reconstructions"
                } else {
                    "outputs"
                }
            );
        }
        if let (Some(x), Some(y)) = (self.accuracy_before, self.accuracy_after) {
            let _ = writeln!(
                out,
                "{indent}  accuracy {:.2} % -> {:.2} %",
                100.0 * x,
                100.0 * y
            );
        }
        if let Some(r) = &self.robustness {
            let _ = writeln!(
                out,
                "{indent}  FGSM robustness at ε = {:.3}: original keeps {:.1} %, pruned {:.1} % (retained {})",
                r.epsilon,
                100.0 * r.original,
                100.0 * r.pruned,
                r.retention
                    .map_or("-".to_string(), |x| format!("{:.1} %", 100.0 * x))
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "{indent}warning: {w}");
        }
        if let Some(e) = &self.without_data {
            let robust = e
                .robustness
                .and_then(|r| r.retention)
                .map_or(String::new(), |r| {
                    format!(", FGSM robustness retained {:.1} %", 100.0 * r)
                });
            let _ = writeln!(
                out,
                "{indent}  without data the estimate would have been: {}{robust}",
                if e.task.is_classifier() {
                    e.agreement_text()
                } else {
                    format!("relative L2 error {:.4}", e.fidelity.relative_l2)
                }
            );
        }
        out
    }
}
