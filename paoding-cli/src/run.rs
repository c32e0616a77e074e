//! `paoding run`: execute a `.pdg` blob with paoding-runtime on the host, over a batch of
//! inputs read from a `.npy` file (first axis = batch), printing or saving the outputs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use paoding_runtime::Model;

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The blob is corrupted, truncated, of another version, or otherwise refused by the
    /// runtime's validation.
    #[error("{path}: not a valid paoding model blob: {source}")]
    Blob {
        /// The blob file.
        path: PathBuf,
        /// The runtime's reason.
        source: paoding_runtime::Error,
    },
    /// The `.npy` file is not a float array the model can take.
    #[error("{path}: {reason}")]
    Input {
        /// The `.npy` file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The output file cannot be written (checked before running).
    #[error(transparent)]
    Write(#[from] crate::output::WriteError),
    /// The runtime refused to run a sample.
    #[error("sample {index}: {source}")]
    Run {
        /// Index of the sample in the batch.
        index: usize,
        /// The runtime's reason.
        source: paoding_runtime::Error,
    },
}

/// The outputs of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutput {
    /// `[batch, ...]`: the batch size, then the model's output shape without its batch axis.
    pub shape: Vec<usize>,
    /// All outputs, sample after sample.
    pub data: Vec<f32>,
}

impl RunOutput {
    /// One line per sample: its output values separated by spaces.
    pub fn to_text(&self) -> String {
        let per = self.shape.iter().skip(1).product::<usize>().max(1);
        let mut s = String::new();
        for row in self.data.chunks(per) {
            let line: Vec<String> = row.iter().map(|v| format!("{v}")).collect();
            let _ = writeln!(s, "{}", line.join(" "));
        }
        s
    }
}

/// A blob's bytes, 4-byte aligned in memory as the runtime requires.
#[derive(Debug, Clone)]
pub struct BlobBytes {
    words: Vec<u32>,
    len: usize,
}

impl BlobBytes {
    /// Copy `bytes` into aligned storage.
    pub fn new(bytes: &[u8]) -> Self {
        let words = bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_ne_bytes(w)
            })
            .collect();
        BlobBytes {
            words,
            len: bytes.len(),
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` owns `words.len() * 4 >= len` initialized bytes, u8 has no alignment
        // requirement nor invalid values, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Read a blob file into aligned memory.
pub fn read_blob(path: &Path) -> Result<BlobBytes, RunError> {
    let bytes = std::fs::read(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(BlobBytes::new(&bytes))
}

/// Read a `.npy` float array (f32 or f64, C order) as (shape, values).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), RunError> {
    let bad = |reason: String| RunError::Input {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| RunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(format!("not a .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad("Fortran-ordered arrays are not supported".into()));
    }
    let values = match npy.dtype() {
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
            npy.into_vec::<f32>()
        }
        npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => {
            npy.into_vec::<f64>()
                .map(|v| v.into_iter().map(|x| x as f32).collect())
        }
        other => {
            return Err(bad(format!(
                "expected a float32 array, got {}",
                other.descr()
            )))
        }
    }
    .map_err(|e| bad(format!("cannot read the array: {e}")))?;
    Ok((shape, values))
}

/// Run a validated blob over a batch: `inputs` holds whole samples back to back.
pub fn run_batch(model: &Model<'_>, inputs: &[f32]) -> Result<Vec<f32>, RunError> {
    let per = model.input_len();
    let mut arena = vec![0.0f32; model.arena_len()];
    let mut out = vec![0.0f32; model.output_len()];
    let mut all = Vec::with_capacity(inputs.len() / per.max(1) * out.len());
    for (index, x) in inputs.chunks(per.max(1)).enumerate() {
        model
            .run(x, &mut arena, &mut out)
            .map_err(|source| RunError::Run { index, source })?;
        all.extend_from_slice(&out);
    }
    Ok(all)
}

/// `paoding run MODEL.pdg --input x.npy [--output y.npy]`: validate the blob, run every
/// sample of the batch, and write the outputs to `output` as a `.npy` of shape
/// `[batch, ...output shape without batch]` when given. Returns the outputs for printing.
///
/// `x.npy` holds float32 (or float64) values, C order, of shape `[N, model input without its
/// batch axis...]` exactly ([`crate::npy::batch_len`]): an array with the right number of
/// values per sample but other axes (NHWC for an NCHW model, flattened images) is refused.
/// The output location is checked before anything runs.
///
/// A corrupted blob is [`RunError::Blob`] (the command exits 2).
pub fn run(model: &Path, input: &Path, output: Option<&Path>) -> Result<RunOutput, RunError> {
    if let Some(path) = output {
        crate::output::check_writable(path)?;
    }
    let blob = read_blob(model)?;
    let m = Model::from_bytes(blob.as_bytes()).map_err(|source| RunError::Blob {
        path: model.to_path_buf(),
        source,
    })?;
    let (shape, xs) = read_npy_f32(input)?;
    let model_input: Vec<usize> = m.input_shape().iter().map(|&d| d as usize).collect();
    let n = crate::npy::batch_len(&shape, &model_input).map_err(|reason| RunError::Input {
        path: input.to_path_buf(),
        reason,
    })?;
    let data = run_batch(&m, &xs)?;
    let mut out_shape = vec![n];
    out_shape.extend(m.output_shape().iter().skip(1).map(|&d| d as usize));
    if let Some(path) = output {
        write_npy(path, &out_shape, &data)?;
    }
    Ok(RunOutput {
        shape: out_shape,
        data,
    })
}

/// Write an f32 `.npy` file (atomically, see [`crate::output`]).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), RunError> {
    use npyz::WriterBuilder;
    let io = |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .writer(&mut bytes)
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    crate::output::write_atomic(path, &bytes).map_err(io)
}
