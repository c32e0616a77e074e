//! Where probe inputs come from: `--probes uniform|invert|bn|auto|FILE.npy`.
//!
//! Synthesized probes are cached, keyed by a hash of the model and of the synthesis
//! settings, so a fit search or a re-run never synthesizes the same probes twice.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use paoding_core::ir::Graph;
use paoding_core::plan::MemoryPlan;
use paoding_core::probes::Probes;
use paoding_core::synth::{self, SynthMethod, SynthOptions};
use serde::Serialize;

use crate::error::CliError;
use crate::prune::ProbeSettings;

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
    /// For reports: kind, count, settings, cache file.
    pub description: String,
    /// The method actually used.
    pub method: String,
}

/// Number of optimisation steps synthesis takes.
pub const SYNTH_STEPS: usize = 200;

/// Most work (MACs, forward and backward over every probe and step) `auto` spends on
/// synthesis: about half a minute on one core with AVX2/FMA (the batched passes run near
/// 18 GMAC/s a core), usually much less as probes stop at their class targets.
pub const AUTO_SYNTH_WORK_MACS: u64 = 500_000_000_000;

/// Resolve `source` for `g`. Synthesized probes are read from, or written to, `cache`.
pub fn resolve(
    g: &Graph,
    source: &ProbeSource,
    settings: &ProbeSettings,
    cache: Option<&Path>,
) -> Result<ResolvedProbes, CliError> {
    let sample = g.values[g.input].len();
    // Synthesis runs on the model with its batch norms when the importer kept them (the same
    // function, the same input).
    let synth_graph = settings
        .with_bn_stats
        .as_deref()
        .filter(|s| s.shape(s.input) == g.shape(g.input) && s.shape(s.output) == g.shape(g.output))
        .unwrap_or(g);
    let method = match source {
        ProbeSource::File(path) => {
            let (n, xs) = crate::npy::read_batch(path, sample)?;
            return Ok(ResolvedProbes {
                probes: Probes::from_batch(xs, sample)?,
                description: format!("{n} probes from {}", path.display()),
                method: "file".into(),
            });
        }
        ProbeSource::Uniform => SynthMethod::Uniform,
        ProbeSource::Invert => SynthMethod::Invert,
        ProbeSource::Bn => SynthMethod::Bn,
        ProbeSource::Auto => synth::auto_method(synth_graph),
    };
    let count = settings.count_for(g);
    // `auto` never spends more than a bounded effort: on models too costly to invert in that
    // budget it keeps uniform probes (and says so); `invert`/`bn` asked explicitly always run.
    let macs = paoding_core::cost::ModelCost::new(g, Default::default())
        .macs
        .max(1);
    let synthesis_work = (count * SYNTH_STEPS) as u64 * 2 * macs;
    let method = if *source == ProbeSource::Auto
        && method != SynthMethod::Uniform
        && synthesis_work > AUTO_SYNTH_WORK_MACS
    {
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
        return Ok(ResolvedProbes {
            probes: settings.refit_probes(g),
            description: format!(
                "{count} uniform probes in [{}, {}], seed {}{why}",
                settings.input_range.0, settings.input_range.1, settings.seed
            ),
            method: name.into(),
        });
    }
    let options = SynthOptions {
        count,
        steps: SYNTH_STEPS,
        input_range: settings.input_range,
        seed: settings.seed,
        method,
        ..Default::default()
    };
    let key = cache_key(synth_graph, &options)?;
    let file = cache.map(|dir| dir.join(format!("probes-{key:016x}.npy")));
    if let Some(f) = &file {
        if let Ok((n, xs)) = crate::npy::read_batch(f, sample) {
            if n == count {
                let mut probes = Probes::from_batch(xs, sample)?;
                probes.off_distribution = !matches!(method, SynthMethod::Bn | SynthMethod::Both);
                return Ok(ResolvedProbes {
                    probes,
                    description: format!("{count} probes by {name} (cached {})", f.display()),
                    method: name.into(),
                });
            }
        }
    }
    let (probes, report) = synth::synthesize_with_report(synth_graph, &options);
    let derived = if report.optimised < count {
        format!(
            "; {} optimised within the work budget, {} derived from them by shifts, mixing and jitter",
            report.optimised,
            count - report.optimised
        )
    } else {
        String::new()
    };
    let mut description = format!(
        "{count} probes by {} ({} of at most {SYNTH_STEPS} steps, seed {}; {} of {count} classified as their target{derived})",
        method_name(report.method),
        report.steps,
        settings.seed,
        report.on_target
    );
    if let Some(f) = &file {
        // A cache that cannot be written is not an error: the probes are still good.
        if f.parent()
            .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
            && write_probes(f, g, &probes).is_ok()
        {
            description.push_str(&format!("; cached {}", f.display()));
        }
    }
    Ok(ResolvedProbes {
        probes,
        description,
        method: method_name(report.method).into(),
    })
}

fn method_name(m: SynthMethod) -> &'static str {
    match m {
        SynthMethod::Uniform => "uniform",
        SynthMethod::Invert => "class-conditional inversion",
        SynthMethod::Bn => "BatchNorm-statistics matching",
        SynthMethod::Both => "inversion with BatchNorm-statistics matching",
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

/// FNV-1a over the model's runtime blob (its exact weights and structure) and the settings.
fn cache_key(g: &Graph, options: &SynthOptions) -> Result<u64, CliError> {
    let blob = paoding_core::blob::write_blob(g, &MemoryPlan::new(g))?;
    let settings = serde_json::to_vec(options).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in blob.iter().chain(&settings) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(h)
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
