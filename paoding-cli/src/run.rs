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
    /// All outputs, sample after sample (an int8 model's codes, exactly).
    pub data: Vec<f32>,
    /// Whether the outputs are int8 codes (a model with int8 input and output).
    pub int8: bool,
    /// The comparison with `--reference`, when asked.
    pub comparison: Option<Comparison>,
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

/// Where a run's outputs differ from a reference's (`paoding run --reference`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Output values compared.
    pub values: usize,
    /// Values that differ (for int8 outputs: codes not identical; for f32, not equal).
    pub differing: usize,
    /// The largest absolute difference.
    pub max_abs_diff: f64,
    /// Where it is: sample and index within the sample.
    pub max_at: Option<(usize, usize)>,
    /// Samples whose top-1 (largest output) is the reference's.
    pub top1_agree: usize,
    /// Samples compared.
    pub samples: usize,
}

impl Comparison {
    /// Compare `got` with `want`, both `samples` rows of equal length.
    pub fn new(got: &[f32], want: &[f64], samples: usize) -> Comparison {
        let per = got.len() / samples.max(1);
        let (mut differing, mut max_abs_diff, mut max_at) = (0, 0.0f64, None);
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            let d = (f64::from(g) - w).abs();
            if d > 0.0 || d.is_nan() {
                differing += 1;
            }
            if d > max_abs_diff || (d.is_nan() && !max_abs_diff.is_nan()) {
                max_abs_diff = d;
                max_at = Some((k / per.max(1), k % per.max(1)));
            }
        }
        let argmax = |row: &mut dyn Iterator<Item = f64>| {
            row.enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        };
        let top1_agree = (0..samples)
            .filter(|&s| {
                let a = argmax(&mut got[s * per..(s + 1) * per].iter().map(|&v| f64::from(v)));
                let b = argmax(&mut want[s * per..(s + 1) * per].iter().copied());
                a == b
            })
            .count();
        Comparison {
            values: got.len(),
            differing,
            max_abs_diff,
            max_at,
            top1_agree,
            samples,
        }
    }

    /// The report line(s).
    pub fn to_text(&self) -> String {
        let identical = self.values - self.differing;
        let pct = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
        let mut s = format!(
            "reference: {identical} of {} output values identical ({:.2} %), {} differ; \
             largest difference {}",
            self.values,
            pct(identical, self.values),
            self.differing,
            self.max_abs_diff
        );
        if let (Some((sample, index)), true) = (self.max_at, self.differing > 0) {
            let _ = write!(s, " (sample {sample}, output {index})");
        }
        let _ = writeln!(
            s,
            "; top-1 identical on {} of {} samples",
            self.top1_agree, self.samples
        );
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
    let (shape, values, kind) = read_npy(path)?;
    if kind != NpyKind::Float {
        return Err(RunError::Input {
            path: path.to_path_buf(),
            reason: "expected a float32 array".into(),
        });
    }
    Ok((shape, values.into_iter().map(|v| v as f32).collect()))
}

/// What a `.npy` array holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NpyKind {
    /// float32 or float64.
    Float,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// Another integer type.
    Int,
}

/// Read a numeric `.npy` array (float32/64, int8/16/32/64, uint8; C order) as (shape,
/// values, kind).
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>, NpyKind), RunError> {
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
    let npyz::DType::Plain(t) = npy.dtype() else {
        return Err(bad(format!(
            "expected a numeric array, got {}",
            npy.dtype().descr()
        )));
    };
    let read = |e: std::io::Error| bad(format!("cannot read the array: {e}"));
    fn wide<T: Into<f64>>(v: Vec<T>) -> Vec<f64> {
        v.into_iter().map(Into::into).collect()
    }
    use npyz::TypeChar::{Float, Int, Uint};
    Ok(match (t.type_char(), t.size_field()) {
        (Float, 4) => (
            shape,
            wide(npy.into_vec::<f32>().map_err(read)?),
            NpyKind::Float,
        ),
        (Float, 8) => (shape, npy.into_vec::<f64>().map_err(read)?, NpyKind::Float),
        (Int, 1) => (
            shape,
            wide(npy.into_vec::<i8>().map_err(read)?),
            NpyKind::I8,
        ),
        (Uint, 1) => (
            shape,
            wide(npy.into_vec::<u8>().map_err(read)?),
            NpyKind::U8,
        ),
        (Int, 2) => (
            shape,
            wide(npy.into_vec::<i16>().map_err(read)?),
            NpyKind::Int,
        ),
        (Int, 4) => (
            shape,
            wide(npy.into_vec::<i32>().map_err(read)?),
            NpyKind::Int,
        ),
        (Int, 8) => {
            let v = npy.into_vec::<i64>().map_err(read)?;
            (
                shape,
                v.into_iter().map(|x| x as f64).collect(),
                NpyKind::Int,
            )
        }
        _ => {
            return Err(bad(format!(
                "expected a float32, float64, int8 or uint8 array, got {}",
                npy.dtype().descr()
            )))
        }
    })
}

/// Run a validated blob over a batch: `inputs` holds whole samples back to back. A blob with
/// int8 input and output takes its inputs quantized with its input's parameters and gives
/// its outputs dequantized with its output's (TFLite's conversions), so that every blob
/// compares with a float model.
pub fn run_batch(model: &Model<'_>, inputs: &[f32]) -> Result<Vec<f32>, RunError> {
    if let (paoding_runtime::format::Dtype::I8, Some(qi), Some(qo)) =
        (model.io_dtype(), model.input_quant(), model.output_quant())
    {
        let codes: Vec<i8> = inputs
            .iter()
            .map(|&v| paoding_runtime::quant::quantize(v, qi.scale, qi.zero_point))
            .collect();
        return Ok(run_batch_i8(model, &codes)?
            .into_iter()
            .map(|q| paoding_runtime::quant::dequantize(q, qo.scale, qo.zero_point))
            .collect());
    }
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

/// Run a validated int8-io blob over a batch of codes.
pub fn run_batch_i8(model: &Model<'_>, inputs: &[i8]) -> Result<Vec<i8>, RunError> {
    let per = model.input_len();
    let mut arena = vec![0.0f32; model.arena_len()];
    let mut out = vec![0i8; model.output_len()];
    let mut all = Vec::with_capacity(inputs.len() / per.max(1) * out.len());
    for (index, x) in inputs.chunks(per.max(1)).enumerate() {
        model
            .run_i8(x, &mut arena, &mut out)
            .map_err(|source| RunError::Run { index, source })?;
        all.extend_from_slice(&out);
    }
    Ok(all)
}

/// How `paoding run` runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions<'a> {
    /// Compare the outputs with this `.npy` ([`Comparison`]).
    pub reference: Option<&'a Path>,
    /// For an ONNX quantized model: run nodes without an exact int8 form in f32.
    pub allow_f32_islands: bool,
}

/// The runtime blob of an ONNX model, as `run` executes it: a quantized (QDQ) file's int8
/// model exactly as the file has it (int8 input and output when the file's are integers),
/// any other file's f32 model (a file that quantizes only its weights runs them dequantized,
/// as the file defines them).
///
/// Also says whether the file's input and output were uint8 (run as int8, codes shifted by
/// 128).
pub fn onnx_blob(
    path: &Path,
    allow_f32_islands: bool,
) -> Result<(Vec<u8>, [bool; 2]), crate::error::CliError> {
    let imported = crate::import::import_onnx(path)?;
    match &imported.quant {
        Some(q) if !q.weights_only() => Ok((
            crate::quantize::from_file(path, &imported.graph, q, allow_f32_islands)?.blob,
            q.unsigned_io,
        )),
        _ => {
            let g = &imported.graph;
            Ok((
                paoding_core::blob::write_blob(g, &paoding_core::plan::MemoryPlan::new(g))?,
                [false; 2],
            ))
        }
    }
}

/// `paoding run MODEL --input x.npy [--output y.npy] [--reference r.npy]`: run every sample
/// of the batch with the runtime (on the host), and write the outputs to `output` as a `.npy`
/// of shape `[batch, ...output shape without batch]` when given. Returns the outputs for
/// printing.
///
/// `MODEL` is a `.pdg` blob, or an ONNX file (lowered as [`onnx_blob`] does). A model with
/// int8 input and output takes int8 codes (an int8 `.npy`; a float one is quantized with the
/// input's parameters) and gives int8 codes (an int8 `.npy`); any other takes float32 (or
/// float64) values. `x.npy` has shape `[N, model input without its batch axis...]` exactly
/// ([`crate::npy::batch_len`]): an array with the right number of values per sample but
/// other axes (NHWC for an NCHW model, flattened images) is refused. The output location is
/// checked before anything runs.
///
/// With a reference, [`RunOutput::comparison`] says how many outputs differ from it, by how
/// much at most, and on how many samples the top-1 agrees.
///
/// A corrupted blob is [`RunError::Blob`] (the command exits 2).
pub fn run(
    model: &Path,
    input: &Path,
    output: Option<&Path>,
    options: RunOptions<'_>,
) -> Result<RunOutput, crate::error::CliError> {
    if let Some(path) = output {
        crate::output::check_writable(path)?;
    }
    let is_onnx = model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"));
    let (blob, unsigned) = if is_onnx {
        let (bytes, unsigned) = onnx_blob(model, options.allow_f32_islands)?;
        (BlobBytes::new(&bytes), unsigned)
    } else {
        (read_blob(model)?, [false; 2])
    };
    let m = Model::from_bytes(blob.as_bytes()).map_err(|source| RunError::Blob {
        path: model.to_path_buf(),
        source,
    })?;
    let (shape, xs, kind) = read_npy(input)?;
    let bad_input = |reason: String| RunError::Input {
        path: input.to_path_buf(),
        reason,
    };
    let model_input: Vec<usize> = m.input_shape().iter().map(|&d| d as usize).collect();
    let n = crate::npy::batch_len(&shape, &model_input).map_err(bad_input)?;
    let int8 = m.io_dtype() == paoding_runtime::format::Dtype::I8;
    let data: Vec<f32> = if int8 {
        let codes: Vec<i8> = match kind {
            NpyKind::I8 if !unsigned[0] => xs.iter().map(|&v| v as i8).collect(),
            // A uint8 input runs as int8: the same reals, codes shifted by 128.
            NpyKind::U8 if unsigned[0] => xs.iter().map(|&v| (v as i32 - 128) as i8).collect(),
            NpyKind::Float => {
                let p = m
                    .input_quant()
                    .ok_or_else(|| bad_input("the model has no input quantization".into()))?;
                xs.iter()
                    .map(|&v| paoding_runtime::quant::quantize(v as f32, p.scale, p.zero_point))
                    .collect()
            }
            _ => {
                let t = if unsigned[0] { "uint8" } else { "int8" };
                return Err(bad_input(format!(
                    "the model takes {t} codes: give a {t} (or float) array"
                ))
                .into());
            }
        };
        let shift = if unsigned[1] { 128.0 } else { 0.0 };
        run_batch_i8(&m, &codes)?
            .into_iter()
            .map(|q| f32::from(q) + shift)
            .collect()
    } else {
        if kind != NpyKind::Float {
            return Err(
                bad_input("the model takes float32 values: give a float array".into()).into(),
            );
        }
        let xs: Vec<f32> = xs.iter().map(|&v| v as f32).collect();
        run_batch(&m, &xs)?
    };
    let mut out_shape = vec![n];
    out_shape.extend(m.output_shape().iter().skip(1).map(|&d| d as usize));
    let comparison = match options.reference {
        Some(path) => {
            let (rshape, want, _) = read_npy(path)?;
            if rshape.iter().product::<usize>() != data.len() || rshape.first() != out_shape.first()
            {
                return Err(RunError::Input {
                    path: path.to_path_buf(),
                    reason: format!(
                        "the reference has shape {rshape:?}; the outputs have shape {out_shape:?}"
                    ),
                }
                .into());
            }
            Some(Comparison::new(&data, &want, n))
        }
        None => None,
    };
    if let Some(path) = output {
        if int8 && unsigned[1] {
            write_npy_of(path, &out_shape, data.iter().map(|&v| v as u8))?;
        } else if int8 {
            write_npy_of(path, &out_shape, data.iter().map(|&v| v as i8))?;
        } else {
            write_npy(path, &out_shape, &data)?;
        }
    }
    Ok(RunOutput {
        shape: out_shape,
        data,
        int8,
        comparison,
    })
}

/// Write an f32 `.npy` file (atomically, see [`crate::output`]).
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), RunError> {
    write_npy_of(path, shape, data.iter().copied())
}

/// Write a `.npy` file of `values`' element type (int8 and uint8 codes, held exactly as f32 by
/// the caller, are cast on the way), atomically.
fn write_npy_of<T: npyz::AutoSerialize>(
    path: &Path,
    shape: &[usize],
    values: impl Iterator<Item = T>,
) -> Result<(), RunError> {
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
    w.extend(values).map_err(io)?;
    w.finish().map_err(io)?;
    crate::output::write_atomic(path, &bytes).map_err(io)
}
