//! Where probe inputs come from: `--probes uniform|invert|bn|auto|FILE.npy`, how many, over
//! which input range (given, implied by the file, or assumed), and the cache they are kept in.
//!
//! Synthesized probes are cached, keyed by a hash of the model and of the synthesis
//! settings, so a fit search or a re-run never synthesizes the same probes twice.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use paoding_core::cost::ModelCost;
use paoding_core::estimate::{self, InputRange, Task};
use paoding_core::ir::Graph;
use paoding_core::plan::MemoryPlan;
use paoding_core::probes::Probes;
use paoding_core::synth::{self, SynthMethod, SynthOptions};
use serde::Serialize;

use crate::check::CheckSource;
use crate::error::CliError;
use crate::import::Imported;
use crate::progress::Progress;

/// Most probe inputs by default, for every command (`prune`, `fit`, `sweep`, `eval`), so that
/// a sweep point reproduces `prune --ratio`.
pub const DEFAULT_PROBE_COUNT: usize = 512;

/// The probe options every command shares: the input range, how many probes, their seed,
/// the data-free check set, the cache.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Range of the model's inputs, lo,hi: data-free probes are drawn from it (and synthesized
    /// ones clamped to it), FGSM clips to it. Default: what the file implies (an input
    /// normalisation, the first batch norm's statistics, an autoencoder's reconstructions),
    /// else [0, 1], and every report says which.
    #[arg(long, value_parser = crate::prune::parse_range, allow_hyphen_values = true)]
    pub input_range: Option<(f32, f32)>,
    /// Most probe inputs, for the refit and for the data-free check set each (fewer on large
    /// models, within a work budget).
    #[arg(long, default_value_t = DEFAULT_PROBE_COUNT)]
    pub probe_count: usize,
    /// Seed of the probes (the check set takes a seed derived from it, never the refit's).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What fidelity is measured on without --data: auto (probes synthesized like the
    /// refit's but held out from it, the default), uniform, or a .npy file of inputs.
    #[arg(long, default_value = "auto", value_parser = crate::check::source_parser())]
    pub check_probes: CheckSource,
    /// Cache folder for synthesized probes (default: $PAODING_CACHE_DIR, else
    /// ~/.cache/paoding).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl ProbeArgs {
    /// The settings these arguments give for an imported model, with the refit's `source`.
    pub fn settings(
        &self,
        imported: &Imported,
        source: ProbeSource,
    ) -> Result<ProbeSettings, CliError> {
        if self.probe_count == 0 {
            return Err(CliError::Usage("--probe-count must be at least 1".into()));
        }
        ProbeSettings::for_model(
            imported,
            self.input_range,
            ProbeSettings {
                count: self.probe_count,
                seed: self.seed,
                source,
                check: self.check_probes.clone(),
                cache_dir: self.cache_dir.clone().or_else(default_cache_dir),
                ..Default::default()
            },
        )
    }
}

/// Where the input range of the data-free probes came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RangeSource {
    /// `--input-range`.
    Given,
    /// Implied by the model file ([`paoding_core::estimate::implied_input_range`], or an
    /// autoencoder's reconstructions).
    Implied {
        /// What in the file implied it.
        source: String,
    },
    /// Nothing tells it: [0, 1] is assumed.
    Assumed,
}

/// Where probe inputs come from, and how many.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSettings {
    /// Most probes (fewer on large models, see [`ProbeSettings::count_for`]).
    pub count: usize,
    /// Input range the probes are drawn from (and synthesized probes clamped to).
    pub input_range: (f32, f32),
    /// Where that range came from.
    pub range_source: RangeSource,
    /// Seed of the draws.
    pub seed: u64,
    /// What the refit's probes are.
    pub source: ProbeSource,
    /// What the data-free fidelity check runs on (without `--data`).
    pub check: CheckSource,
    /// Where synthesized probes are cached (`None`: not cached).
    pub cache_dir: Option<PathBuf>,
    /// The model with its batch norms and their running statistics
    /// ([`crate::import::Imported::with_bn_stats`]): synthesis runs on it, so `bn` and `auto`
    /// can match the statistics the folded graph no longer has.
    #[serde(skip)]
    pub with_bn_stats: Option<std::sync::Arc<Graph>>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            count: DEFAULT_PROBE_COUNT,
            input_range: (0.0, 1.0),
            range_source: RangeSource::Assumed,
            seed: 0,
            source: ProbeSource::Auto,
            check: CheckSource::Auto,
            cache_dir: default_cache_dir(),
            with_bn_stats: None,
        }
    }
}

/// Model evaluations (in MACs) one pass over the probes may cost: beyond it, fewer probes
/// are used, so that pruning a large model stays interactive. Convolutions see many
/// observations per probe (one per output position), so they need far fewer probes.
const PROBE_WORK_MACS: u64 = 400_000_000;
/// Fewest probes used, whatever the model costs.
const MIN_PROBES: usize = 16;

impl ProbeSettings {
    /// Settings for an imported model: its batch-norm statistics, and the input range
    /// `given` on the command line, else the one the file implies, else [0, 1] (assumed).
    pub fn for_model(
        imported: &Imported,
        given: Option<(f32, f32)>,
        base: ProbeSettings,
    ) -> Result<Self, CliError> {
        let (input_range, range_source) = match given {
            Some(r) => (r, RangeSource::Given),
            None => match implied_range(imported)? {
                Some(r) => ((r.lo, r.hi), RangeSource::Implied { source: r.source }),
                None => ((0.0, 1.0), RangeSource::Assumed),
            },
        };
        Ok(ProbeSettings {
            input_range,
            range_source,
            with_bn_stats: imported.with_bn_stats.clone().map(std::sync::Arc::new),
            ..base
        })
    }

    /// How many probes a model of this cost gets: the requested count, capped by the work budget.
    pub fn count_for(&self, g: &Graph) -> usize {
        let macs = ModelCost::new(g, Default::default()).macs.max(1);
        let affordable = (PROBE_WORK_MACS / macs) as usize;
        self.count.min(affordable.max(MIN_PROBES)).max(1)
    }

    /// The probes the refit uses when they are uniform.
    pub fn refit_probes(&self, g: &Graph) -> Probes {
        self.uniform(g, self.seed)
    }

    /// The seed of the held-out check set: never the refit's.
    pub fn check_seed(&self) -> u64 {
        self.seed ^ 0x5EED_F1DE
    }

    /// Uniform probes from the input range with another seed than the refit's.
    pub fn uniform_check_probes(&self, g: &Graph) -> Probes {
        self.uniform(g, self.check_seed())
    }

    fn uniform(&self, g: &Graph, seed: u64) -> Probes {
        let (lo, hi) = self.input_range;
        Probes::uniform(g.values[g.input].len(), self.count_for(g), lo, hi, seed)
    }

    /// The input range and where it came from, for reports.
    pub fn range_text(&self) -> String {
        let (lo, hi) = self.input_range;
        match &self.range_source {
            RangeSource::Given => format!("input range [{lo}, {hi}] (--input-range)"),
            RangeSource::Implied { source } => format!("input range [{lo}, {hi}] ({source})"),
            RangeSource::Assumed => format!(
                "input range [{lo}, {hi}] (assumed: nothing in the file tells it; pass --input-range lo,hi if the model's inputs lie elsewhere)"
            ),
        }
    }

    /// The model synthesis runs on: the one with its batch norms when the importer kept
    /// them (the same function, the same input).
    pub fn synthesis_graph<'a>(&'a self, g: &'a Graph) -> &'a Graph {
        self.with_bn_stats
            .as_deref()
            .filter(|s| {
                s.shape(s.input) == g.shape(g.input) && s.shape(s.output) == g.shape(g.output)
            })
            .unwrap_or(g)
    }
}

/// The input range the file implies: an input normalisation or the first batch norm's
/// statistics ([`estimate::implied_input_range`]), or for an autoencoder the range of its
/// reconstructions of uniform noise in [0, 1] (its decoder ends at the data's scale).
fn implied_range(imported: &Imported) -> Result<Option<InputRange>, CliError> {
    if let Some(r) = &imported.input_range {
        return Ok(Some(r.clone()));
    }
    let g = &imported.graph;
    if estimate::task(g) == Task::Autoencoder {
        let noise = Probes::uniform(g.values[g.input].len(), 64, 0.0, 1.0, 0x5CA1E);
        return Ok(estimate::reconstruction_range(g, &noise)?);
    }
    Ok(None)
}

/// What the refit's probes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeSource {
    /// Seeded uniform draws from the input range.
    Uniform,
    /// Class-conditional inversion of the model.
    Invert,
    /// BatchNorm-statistics matching.
    Bn,
    /// The best the model allows (see [`paoding_core::synth::auto_method`]).
    Auto,
    /// Inputs from a `.npy` file (first axis = batch).
    File(PathBuf),
}

/// Parse `--probes`: a method's name, or any OS path ending in `.npy`.
///
/// ```
/// use paoding_cli::probes::{parse_source, ProbeSource};
/// assert!(matches!(parse_source("bn".into()), Ok(ProbeSource::Bn)));
/// assert!(matches!(parse_source("x.npy".into()), Ok(ProbeSource::File(_))));
/// ```
pub fn parse_source(s: OsString) -> Result<ProbeSource, String> {
    Ok(match s.to_str() {
        Some("uniform") => ProbeSource::Uniform,
        Some("invert") => ProbeSource::Invert,
        Some("bn") => ProbeSource::Bn,
        Some("auto") => ProbeSource::Auto,
        _ if Path::new(&s).extension() == Some(OsStr::new("npy")) => {
            ProbeSource::File(PathBuf::from(s))
        }
        _ => {
            return Err(format!(
                "'{}' is not uniform, invert, bn, auto or a .npy file",
                s.to_string_lossy()
            ))
        }
    })
}

/// The clap parser of `--probes` (accepts non-UTF-8 paths).
pub fn source_parser() -> impl clap::builder::TypedValueParser<Value = ProbeSource> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().try_map(parse_source)
}

/// Probes ready for the refit, and what they are.
#[derive(Debug, Clone)]
pub struct ResolvedProbes {
    /// The inputs.
    pub probes: Probes,
    /// Probes of their own that choose the units no merge compensates
    /// ([`paoding_core::prune::Pruner::apply_with`]), once [`Self::add_selection`] made them;
    /// `None`: the refit's probes choose.
    pub selection: Option<Probes>,
    /// For reports: kind, count, settings, cache file.
    pub description: String,
    /// The method actually used.
    pub method: String,
    /// The class-conditional inversion that made `probes`, if one did.
    pub(crate) inversion: Option<SynthOptions>,
}

impl ResolvedProbes {
    /// Refit probes that are not synthesized (a file, uniform draws, none).
    pub fn given(probes: Probes, description: String, method: &str) -> Self {
        ResolvedProbes {
            probes,
            selection: None,
            description,
            method: method.into(),
            inversion: None,
        }
    }

    /// The probes that choose units: [`Self::selection`], else the refit's.
    pub fn selection(&self) -> &Probes {
        self.selection.as_ref().unwrap_or(&self.probes)
    }

    /// For a pruning whose units are partly chosen on probes
    /// ([`paoding_core::prune::Pruner::selects_by_probes`]) and refit probes inverted from the
    /// model alone: synthesize (or read from the cache) the probes that choose, the same
    /// inversion with its own seed taken to p ≥ [`synth::SELECTION_STOP_CONFIDENCE`]
    /// ([`synth::selection_options`] says why), and say so in the description. Real inputs,
    /// uniform draws and BatchNorm-matched probes choose as they are.
    pub fn add_selection(
        &mut self,
        g: &Graph,
        settings: &ProbeSettings,
        progress: &Progress,
    ) -> Result<(), CliError> {
        if self.selection.is_none() {
            if let Some((probes, said)) = self.selection_probes(g, settings, progress)? {
                self.description.push_str(&said);
                self.selection = Some(probes);
            }
        }
        Ok(())
    }

    /// What [`Self::add_selection`] adds, without changing `self`: the probes that choose
    /// and what to append to the description; `None` when the refit's probes choose.
    pub fn selection_probes(
        &self,
        g: &Graph,
        settings: &ProbeSettings,
        progress: &Progress,
    ) -> Result<Option<(Probes, String)>, CliError> {
        let Some(refit) = &self.inversion else {
            return Ok(None);
        };
        let options = synth::selection_options(refit);
        let synth_graph = settings.synthesis_graph(g);
        let file = cache_file(settings.cache_dir.as_deref(), synth_graph, &options, "")?;
        let count = options.count;
        let (mut probes, made) = match read_cached(file.as_deref(), g, count) {
            Some(p) => (
                p,
                format!(
                    " (cached {})",
                    file.as_deref()
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ),
            ),
            None => {
                let what = format!("synthesizing {count} probes that choose units, step");
                let (p, report) =
                    synth::synthesize_with_progress(synth_graph, &options, &mut |step, steps| {
                        progress.steps(&what, step, steps)
                    });
                let cached = write_cached(file.as_deref(), g, &p);
                (p, format!("{}{cached}", on_target_text(&report)))
            }
        };
        probes.off_distribution = true;
        let said = format!(
            "; the units no merge compensates chosen on {count} probes of their own by {}, each to p ≥ {} or past p = {} until it stops improving (seed {}{made})",
            method_name(SynthMethod::Invert),
            synth::SELECTION_STOP_CONFIDENCE,
            synth::STOP_CONFIDENCE,
            options.seed
        );
        Ok(Some((probes, said)))
    }
}

/// Number of optimisation steps synthesis takes.
pub const SYNTH_STEPS: usize = 200;

/// Most work (MACs, forward and backward over every probe and step) `auto` spends on
/// synthesis: about half a minute on one core with AVX2/FMA (the batched passes run near
/// 18 GMAC/s a core), usually much less as probes stop at their class targets.
pub const AUTO_SYNTH_WORK_MACS: u64 = 500_000_000_000;

/// Resolve `source` for `g`. Synthesized probes are read from, or written to, `cache`;
/// `progress` shows synthesis step by step.
pub fn resolve(
    g: &Graph,
    source: &ProbeSource,
    settings: &ProbeSettings,
    cache: Option<&Path>,
    progress: &Progress,
) -> Result<ResolvedProbes, CliError> {
    let sample = g.values[g.input].len();
    let synth_graph = settings.synthesis_graph(g);
    let method = match source {
        ProbeSource::File(path) => {
            let (n, xs) = crate::npy::read_inputs(path, g.shape(g.input))?;
            return Ok(ResolvedProbes::given(
                Probes::from_batch(xs, sample)?,
                format!("{n} probes from {}", path.display()),
                "file",
            ));
        }
        ProbeSource::Uniform => SynthMethod::Uniform,
        ProbeSource::Invert => SynthMethod::Invert,
        ProbeSource::Bn => SynthMethod::Bn,
        ProbeSource::Auto => synth::auto_method(synth_graph),
    };
    let count = settings.count_for(g);
    // `auto` never spends more than a bounded effort: on models too costly to invert in that
    // budget it keeps uniform probes (and says so); `invert`/`bn` asked explicitly always run.
    let method = if *source == ProbeSource::Auto && over_auto_budget(g, count) {
        SynthMethod::Uniform
    } else {
        method
    };
    let name = method_name(method);
    if method == SynthMethod::Uniform {
        let why = if *source == ProbeSource::Auto
            && synth::auto_method(synth_graph) != SynthMethod::Uniform
        {
            " (auto: synthesis would exceed its work budget on this model)"
        } else {
            ""
        };
        return Ok(ResolvedProbes::given(
            settings.refit_probes(g),
            format!(
                "{count} uniform probes in [{}, {}], seed {}{why}",
                settings.input_range.0, settings.input_range.1, settings.seed
            ),
            name,
        ));
    }
    let options = SynthOptions {
        count,
        steps: SYNTH_STEPS,
        input_range: settings.input_range,
        seed: settings.seed,
        method,
        ..Default::default()
    };
    // Class-conditional inversion from the model alone: the units no merge compensates are
    // chosen on probes of their own ([`ResolvedProbes::add_selection`]).
    let inversion = (method == SynthMethod::Invert && synth::classes(synth_graph).is_some())
        .then(|| options.clone());
    let file = cache_file(cache, synth_graph, &options, "")?;
    if let Some(mut probes) = read_cached(file.as_deref(), g, count) {
        probes.off_distribution = !matches!(method, SynthMethod::Bn | SynthMethod::Both);
        return Ok(ResolvedProbes {
            probes,
            selection: None,
            description: format!(
                "{count} probes by {name} (cached {})",
                file.as_deref()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            ),
            method: name.into(),
            inversion,
        });
    }
    let what = format!("synthesizing {count} probes, step");
    let (probes, report) =
        synth::synthesize_with_progress(synth_graph, &options, &mut |step, steps| {
            progress.steps(&what, step, steps)
        });
    let derived = if report.optimised < count {
        format!(
            "; {} optimised within the work budget, {} derived from them by shifts, mixing and jitter",
            report.optimised,
            count - report.optimised
        )
    } else {
        String::new()
    };
    let mut description = if report.optimised > 0 {
        format!(
            "{count} probes by {} ({} of at most {SYNTH_STEPS} steps, seed {}{}{derived})",
            method_name(report.method),
            report.steps,
            settings.seed,
            on_target_text(&report)
        )
    } else {
        format!(
            "{count} probes by {}, seed {}",
            method_name(report.method),
            settings.seed
        )
    };
    description.push_str(&write_cached(file.as_deref(), g, &probes));
    Ok(ResolvedProbes {
        probes,
        selection: None,
        description,
        method: method_name(report.method).into(),
        inversion,
    })
}

/// How many probes the model gives their target class, for a report (`; N of C classified
/// as their target`), when the synthesis aimed at classes.
pub(crate) fn on_target_text(report: &synth::SynthReport) -> String {
    if matches!(report.method, SynthMethod::Invert | SynthMethod::Both) {
        format!(
            "; {} of {} classified as their target",
            report.on_target, report.count
        )
    } else {
        String::new()
    }
}

/// Whether synthesizing `count` probes for `g` would exceed what `auto` may spend.
pub(crate) fn over_auto_budget(g: &Graph, count: usize) -> bool {
    let macs = ModelCost::new(g, Default::default()).macs.max(1);
    (count * SYNTH_STEPS) as u64 * 2 * macs > AUTO_SYNTH_WORK_MACS
}

/// How reports name a synthesis method.
pub(crate) fn method_name(m: SynthMethod) -> &'static str {
    match m {
        SynthMethod::Uniform => "uniform",
        SynthMethod::Invert => "class-conditional inversion",
        SynthMethod::Bn => "BatchNorm-statistics matching",
        SynthMethod::Both => "inversion with BatchNorm-statistics matching",
        SynthMethod::Reconstruct => "the autoencoder's reconstructions of uniform noise",
    }
}

/// The default cache folder: `$PAODING_CACHE_DIR`, else `$XDG_CACHE_HOME/paoding`, else
/// `~/.cache/paoding`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PAODING_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("paoding"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/paoding"))
}

/// The cache file of probes synthesized for `g` with `options` (`tag` tells apart what is
/// done to them afterwards): FNV-1a over the digest of the model's runtime blob (its exact
/// weights and structure, [`paoding_core::blob::digest`]), the settings and the tag. `None`
/// without a cache folder.
pub(crate) fn cache_file(
    cache: Option<&Path>,
    g: &Graph,
    options: &SynthOptions,
    tag: &str,
) -> Result<Option<PathBuf>, CliError> {
    let Some(dir) = cache else { return Ok(None) };
    let model = paoding_core::blob::digest(g, &MemoryPlan::new(g))?;
    let settings = serde_json::to_vec(options).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in model
        .to_le_bytes()
        .iter()
        .chain(&settings)
        .chain(tag.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(Some(dir.join(format!("probes-{h:016x}.npy"))))
}

/// Probes read back from the cache, when the file is there and holds `count` inputs of `g`.
pub(crate) fn read_cached(file: Option<&Path>, g: &Graph, count: usize) -> Option<Probes> {
    let (n, xs) = crate::npy::read_inputs(file?, g.shape(g.input)).ok()?;
    (n == count)
        .then(|| Probes::from_batch(xs, g.values[g.input].len()).ok())
        .flatten()
}

/// Write probes to the cache; says where for a report (`; cached FILE`), or nothing when
/// there is no cache or it cannot be written (not an error: the probes are still good).
pub(crate) fn write_cached(file: Option<&Path>, g: &Graph, probes: &Probes) -> String {
    match file {
        Some(f)
            if f.parent()
                .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
                && write_probes(f, g, probes).is_ok() =>
        {
            format!("; cached {}", f.display())
        }
        _ => String::new(),
    }
}

fn write_probes(path: &Path, g: &Graph, probes: &Probes) -> Result<(), CliError> {
    let mut shape = vec![probes.count()];
    shape.extend_from_slice(&g.shape(g.input)[1..]);
    let mut bytes = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape.iter().map(|&d| d as u64).collect::<Vec<_>>())
            .writer(&mut bytes)
            .begin_nd()
            .map_err(|source| CliError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        w.extend(probes.data.iter().copied())
            .map_err(|source| CliError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        w.finish().map_err(|source| CliError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    crate::output::write_atomic(path, &bytes).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })
}
