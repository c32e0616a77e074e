//! Hardware profiles: the TOML files in `boards/`, built into the binary so that
//! `--profile cortex-m7` works from any directory. A file path always wins over a name.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;

use paoding_core::profile::{ByteSize, Profile, KEYS, REQUIRED_KEYS};
use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::error::{ProfileError, ProfileProblem};

/// The shipped profiles: (file name, TOML text).
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "cortex-m7.toml",
        include_str!("../../boards/cortex-m7.toml"),
    ),
    (
        "cortex-m4.toml",
        include_str!("../../boards/cortex-m4.toml"),
    ),
    (
        "cortex-m0plus.toml",
        include_str!("../../boards/cortex-m0plus.toml"),
    ),
    (
        "cortex-m33.toml",
        include_str!("../../boards/cortex-m33.toml"),
    ),
    ("esp32-s3.toml", include_str!("../../boards/esp32-s3.toml")),
    (
        "qemu-mps2-an500.toml",
        include_str!("../../boards/qemu-mps2-an500.toml"),
    ),
];

/// Largest profile file read: a profile is a few hundred bytes.
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// Parse a profile from TOML text; `source_name` names it in errors, and its file stem is the
/// profile's name unless the text sets `name`. Every problem is reported at once, each with
/// its key and line: syntax errors, unknown keys, missing required keys, values of the wrong
/// type or out of range, inconsistent budgets.
///
/// ```
/// let p = paoding_cli::profile::parse("flash_bytes = \"1M\"\nram_bytes = \"256K\"\n", "boards/my-board.toml")?;
/// assert_eq!((p.name.as_str(), p.budget()?.ram_bytes), ("my-board", 256 << 10));
///
/// let err = paoding_cli::profile::parse("flash_bytes = 0\nram = 5\n", "x.toml").unwrap_err();
/// assert_eq!(err.to_string(), "profile x.toml: 3 problems
///   line 1: flash_bytes: a budget of 0 bytes leaves no room for any model
///   line 2: ram: unknown key (known: name, description, target, clock_hz, flash_bytes, ram_bytes, \
/// reserved_flash_bytes, reserved_ram_bytes, weight_dtype, max_macs, max_latency_ms, cycles_per_mac, cycles_per_mac_int8, min_agreement, round_to)
///   ram_bytes: missing (required)");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn parse(text: &str, source_name: &str) -> Result<Profile, ProfileError> {
    let invalid = |problems: Vec<ProfileProblem>| ProfileError::Invalid {
        source_name: source_name.to_string(),
        problems,
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| {
            invalid(vec![ProfileProblem {
                key: None,
                line: e.span().map(|s| line_of(s.start)),
                message: format!(
                    "not valid TOML: {}",
                    e.message().trim_end().replace('\n', "; ")
                ),
            }])
        })?;
    let stem = Path::new(source_name)
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let mut p = Profile::new(stem, ByteSize(0), ByteSize(0));
    let mut problems = Vec::new();
    let mut lines = BTreeMap::new();
    for (key, value) in table {
        let line = line_of(key.span().start);
        let key = key.into_inner();
        let value = value.into_inner();
        let decoded = match key.as_str() {
            "name" => set(&mut p.name, value),
            "description" => set(&mut p.description, value),
            "target" => set(&mut p.target, value),
            "clock_hz" => set(&mut p.clock_hz, value),
            "flash_bytes" => set(&mut p.flash_bytes, value),
            "ram_bytes" => set(&mut p.ram_bytes, value),
            "reserved_flash_bytes" => set(&mut p.reserved_flash_bytes, value),
            "reserved_ram_bytes" => set(&mut p.reserved_ram_bytes, value),
            "weight_dtype" => set(&mut p.weight_dtype, value),
            "max_macs" => set(&mut p.max_macs, value),
            "max_latency_ms" => set(&mut p.max_latency_ms, value),
            "cycles_per_mac" => set(&mut p.cycles_per_mac, value),
            "cycles_per_mac_int8" => set(&mut p.cycles_per_mac_int8, value),
            "min_agreement" => set(&mut p.min_agreement, value),
            "round_to" => set(&mut p.round_to, value),
            _ => Err(format!("unknown key (known: {})", KEYS.join(", "))),
        };
        match decoded {
            Ok(()) => {
                lines.insert(key, line);
            }
            Err(message) => problems.push(ProfileProblem {
                key: Some(key),
                line: Some(line),
                message,
            }),
        }
    }
    let decoded_badly = |key: &str| problems.iter().any(|p| p.key.as_deref() == Some(key));
    let mut missing = Vec::new();
    for key in REQUIRED_KEYS {
        if !lines.contains_key(*key) && !decoded_badly(key) {
            missing.push(ProfileProblem {
                key: Some(key.to_string()),
                line: None,
                message: "missing (required)".into(),
            });
        }
    }
    // The arithmetic is checked on what was decoded; a key that did not decode keeps its
    // default, about which nothing more is said.
    let consistency: Vec<_> = p
        .problems()
        .into_iter()
        .filter(|q| {
            !decoded_badly(q.key) && !missing.iter().any(|m| m.key.as_deref() == Some(q.key))
        })
        .map(|q| ProfileProblem {
            key: Some(q.key.to_string()),
            line: lines.get(q.key).copied(),
            message: q.message,
        })
        .collect();
    problems.extend(consistency);
    problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
    problems.extend(missing);
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(invalid(problems))
    }
}

/// Decode one key's value into its field.
fn set<T: DeserializeOwned>(field: &mut T, value: toml::Value) -> Result<(), String> {
    *field = value
        .try_into()
        .map_err(|e: toml::de::Error| e.message().trim_end().to_string())?;
    Ok(())
}

/// Load a profile from a file path, or else from a built-in name (`cortex-m7` or
/// `cortex-m7.toml`). The path may be any OS path; it is shown lossily in messages.
pub fn load(spec: impl AsRef<OsStr>) -> Result<Profile, ProfileError> {
    let spec = spec.as_ref();
    let path = Path::new(spec);
    let shown = path.display().to_string();
    if path.is_file() {
        return parse(&read_limited(path, &shown)?, &shown);
    }
    let wanted = spec.to_str().map(|s| s.strip_suffix(".toml").unwrap_or(s));
    BUILT_IN
        .iter()
        .find(|(file, _)| wanted.is_some() && file.strip_suffix(".toml") == wanted)
        .map(|(file, text)| parse(text, file))
        .unwrap_or_else(|| {
            let names: Vec<&str> = BUILT_IN
                .iter()
                .map(|(f, _)| f.trim_end_matches(".toml"))
                .collect();
            Err(ProfileError::NotFound(shown, names.join(", ")))
        })
}

/// A profile file's text, refusing one larger than [`MAX_PROFILE_BYTES`] before reading it.
fn read_limited(path: &Path, shown: &str) -> Result<String, ProfileError> {
    let unreadable = |source: std::io::Error| ProfileError::Unreadable {
        source_name: shown.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > MAX_PROFILE_BYTES {
        return Err(ProfileError::Invalid {
            source_name: shown.to_string(),
            problems: vec![ProfileProblem {
                key: None,
                line: None,
                message: format!(
                    "the file has {len} bytes; a profile has at most {MAX_PROFILE_BYTES}"
                ),
            }],
        });
    }
    let mut text = String::new();
    file.take(MAX_PROFILE_BYTES)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    Ok(text)
}

/// Every built-in profile, parsed.
pub fn built_in() -> Result<Vec<Profile>, ProfileError> {
    BUILT_IN
        .iter()
        .map(|(file, text)| parse(text, file))
        .collect()
}
