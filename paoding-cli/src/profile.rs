//! Hardware profiles: the TOML files in `boards/`, built into the binary so that
//! `--profile cortex-m7` works from any directory. A file path always wins over a name.

use std::path::Path;

use paoding_core::profile::Profile;

use crate::error::ProfileError;

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

/// Parse a profile from TOML text; `source_name` names it in errors.
///
/// ```
/// let p = paoding_cli::profile::parse(paoding_cli::profile::BUILT_IN[0].1, "cortex-m7")?;
/// assert_eq!(p.name, "cortex-m7");
/// # Ok::<(), paoding_cli::error::ProfileError>(())
/// ```
pub fn parse(text: &str, source_name: &str) -> Result<Profile, ProfileError> {
    let invalid = |reason: String| ProfileError::Invalid {
        source_name: source_name.to_string(),
        reason,
    };
    let profile: Profile =
        toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
    // Check the arithmetic (reserved shares, latency) up front, so every later use can trust it.
    profile.budget().map_err(|e| invalid(e.to_string()))?;
    Ok(profile)
}

/// Load a profile from a file path, or else from a built-in name (`cortex-m7` or `cortex-m7.toml`).
pub fn load(spec: &str) -> Result<Profile, ProfileError> {
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| ProfileError::Invalid {
            source_name: spec.to_string(),
            reason: e.to_string(),
        })?;
        return parse(&text, spec);
    }
    let wanted = spec.strip_suffix(".toml").unwrap_or(spec);
    BUILT_IN
        .iter()
        .find(|(file, _)| file.strip_suffix(".toml") == Some(wanted))
        .map(|(file, text)| parse(text, file))
        .unwrap_or_else(|| {
            let names: Vec<&str> = BUILT_IN
                .iter()
                .map(|(f, _)| f.trim_end_matches(".toml"))
                .collect();
            Err(ProfileError::NotFound(spec.to_string(), names.join(", ")))
        })
}

/// Every built-in profile, parsed.
pub fn built_in() -> Result<Vec<Profile>, ProfileError> {
    BUILT_IN
        .iter()
        .map(|(file, text)| parse(text, file))
        .collect()
}
