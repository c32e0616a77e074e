//! Writing output files safely: to a temporary file in the same folder, then renamed over the
//! target, so an error never leaves a partial file nor replaces a good one with a bad one.
//! Written files get the mode a plain create would (`0666 & !umask`), not the temporary
//! file's private `0600`.

use std::io::Write;
use std::path::{Path, PathBuf};

/// An output file that could not be written (or, checked before any work, could not be).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// Why: the folder is missing or read-only, the path is a folder, ...
    pub source: std::io::Error,
}

/// The folder a file goes into, or is read from (`.` for a bare file name).
pub(crate) fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A temporary file next to `path`, created with mode `0666 & !umask`. Its errors name the
/// folder, never the temporary file.
fn temporary(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = folder(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".paoding-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The kernel applies the umask, as for any newly created file.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).map_err(|e| {
        let reason = match std::fs::metadata(dir) {
            Err(_) => format!("folder {} does not exist", dir.display()),
            Ok(m) if !m.is_dir() => format!("{} is not a folder", dir.display()),
            // The kind alone: the temporary file's name means nothing to the user.
            Ok(_) => format!(
                "cannot create a file in folder {}: {}",
                dir.display(),
                std::io::Error::from(e.kind())
            ),
        };
        std::io::Error::new(e.kind(), reason)
    })
}

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
    let mut tmp = temporary(path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Check, before any work, that `path` can be written: its folder exists and takes new
/// files, and `path` is not itself a folder. Nothing is left behind.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// assert!(paoding_cli::output::check_writable(&dir.path().join("r.json")).is_ok());
/// let err = paoding_cli::output::check_writable(&dir.path().join("nodir/r.json")).unwrap_err();
/// assert!(err.to_string().contains("does not exist"), "{err}");
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn check_writable(path: &Path) -> Result<(), WriteError> {
    let error = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "it is a folder",
        )));
    }
    temporary(path).map(drop).map_err(error)
}

/// Write several files, all or none: every one goes to its temporary file first, and only
/// when all are complete are they renamed into place.
pub fn write_all(files: &[(PathBuf, Vec<u8>)]) -> Result<(), WriteError> {
    let mut staged = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        let error = |source| WriteError {
            path: path.clone(),
            source,
        };
        let mut tmp = temporary(path).map_err(error)?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(error)?;
        staged.push((path, tmp));
    }
    for (path, tmp) in staged {
        tmp.persist(path).map_err(|e| WriteError {
            path: path.clone(),
            source: e.error,
        })?;
    }
    Ok(())
}

/// Print `text` on standard output: every command's output goes through here, never through
/// `println!` (which panics on a closed pipe). `main` treats a closed pipe
/// (`paoding ... | head`) as a quiet success, as other Unix tools do.
pub fn print(text: &str) -> Result<(), crate::error::CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(crate::error::CliError::Stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_or_none_leaves_nothing_when_one_folder_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("a.pdg");
        let bad = dir.path().join("missing/r.json");
        let err = write_all(&[(good.clone(), b"model".to_vec()), (bad, b"{}".to_vec())])
            .expect_err("the second folder is missing");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!err.to_string().contains(".paoding-"), "{err}");
        assert!(!good.exists(), "the first file is not written either");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn a_folder_is_not_a_writable_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = check_writable(dir.path()).expect_err("a folder");
        assert!(err.to_string().contains("is a folder"), "{err}");
    }
}
