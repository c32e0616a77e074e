//! Writing output files safely: to a temporary file in the same folder, then renamed over the
//! target, so an error never leaves a partial file nor replaces a good one with a bad one.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.onnx");
/// paoding_cli::output::write_atomic(&path, b"bytes")?;
/// assert_eq!(std::fs::read(&path)?, b"bytes");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".paoding-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
