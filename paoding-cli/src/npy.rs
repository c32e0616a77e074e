//! `.npy` files: batches of inputs (first axis = batch), labels, and outputs.

use std::path::Path;

use crate::error::CliError;

fn bad(path: &Path, reason: String) -> CliError {
    CliError::Usage(format!("{}: {reason}", path.display()))
}

/// Read a numeric `.npy` array (any float or integer dtype, C order) as (shape, f64 values).
fn read_numbers(path: &Path) -> Result<(Vec<usize>, Vec<f64>), CliError> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, format!("not a .npy file: {e}")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad(path, "Fortran-ordered arrays are not supported".into()));
    }
    let npyz::DType::Plain(t) = npy.dtype() else {
        return Err(bad(path, "expected a plain numeric array".into()));
    };
    let read = |e: std::io::Error| bad(path, format!("cannot read the array: {e}"));
    let values: Vec<f64> = match (t.type_char(), t.size_field()) {
        (npyz::TypeChar::Float, 4) => npy
            .into_vec::<f32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (npyz::TypeChar::Float, 8) => npy.into_vec::<f64>().map_err(read)?,
        (npyz::TypeChar::Int, 8) => npy
            .into_vec::<i64>()
            .map_err(read)?
            .into_iter()
            .map(|v| v as f64)
            .collect(),
        (npyz::TypeChar::Int, 4) => npy
            .into_vec::<i32>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (npyz::TypeChar::Int, 1) => npy
            .into_vec::<i8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        (npyz::TypeChar::Uint, 1) => npy
            .into_vec::<u8>()
            .map_err(read)?
            .into_iter()
            .map(f64::from)
            .collect(),
        _ => {
            return Err(bad(
                path,
                format!("unsupported dtype {}", npy.dtype().descr()),
            ))
        }
    };
    Ok((shape, values))
}

/// A batch of inputs known only by their length per sample (build scripts): the first axis
/// is the batch, the rest must hold `sample_len` values. Returns the samples back to back.
/// The commands check the axes themselves, with [`read_inputs`].
pub fn read_batch(path: &Path, sample_len: usize) -> Result<(usize, Vec<f32>), CliError> {
    let (shape, values) = read_numbers(path)?;
    let per: usize = shape.iter().skip(1).product();
    if shape.len() < 2 || per != sample_len || shape[0] == 0 {
        return Err(bad(path, format!("shape {shape:?} is not a batch of inputs of {sample_len} values (first axis = batch)")));
    }
    Ok((shape[0], values.into_iter().map(|v| v as f32).collect()))
}

/// A batch of inputs for a model whose input has shape `input` (batch axis first): the array
/// must have shape `[N, input[1..]...]` ([`batch_len`]). Returns N and the samples back to back.
pub fn read_inputs(path: &Path, input: &[usize]) -> Result<(usize, Vec<f32>), CliError> {
    read_inputs_quantized(path, input, None)
}

/// [`read_inputs`] for a model whose input is int8 with parameters `(scale, zero point)`
/// when given: an int8 array holds that input's codes, and is read as the reals they stand
/// for (TFLite's dequantization), which the int8 model quantizes back to the same codes.
/// Without parameters an int8 array is refused (the model takes reals).
pub fn read_inputs_quantized(
    path: &Path,
    input: &[usize],
    quant: Option<(f32, i32)>,
) -> Result<(usize, Vec<f32>), CliError> {
    let int8 = is_int8(path)?;
    let (shape, values) = read_numbers(path)?;
    let n = batch_len(&shape, input).map_err(|reason| bad(path, reason))?;
    Ok((
        n,
        match (int8, quant) {
            (false, _) => values.into_iter().map(|v| v as f32).collect(),
            (true, Some((scale, zp))) => values
                .into_iter()
                .map(|v| paoding_runtime::quant::dequantize(v as i8, scale, zp))
                .collect(),
            (true, None) => {
                return Err(bad(
                    path,
                    "an int8 array holds a quantized model's input codes; this model's input \
                     is f32: give its real values"
                        .into(),
                ))
            }
        },
    ))
}

/// Whether a `.npy` file holds int8 values.
fn is_int8(path: &Path) -> Result<bool, CliError> {
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, format!("not a .npy file: {e}")))?;
    Ok(matches!(npy.dtype(), npyz::DType::Plain(t)
        if t.type_char() == npyz::TypeChar::Int && t.size_field() == 1))
}

/// The number of samples in an array of shape `shape` that holds inputs of a model whose
/// input has shape `input` (batch axis first): exactly `[N, input[1..]...]`, N ≥ 1. Anything
/// else, even with the right number of values per sample, is refused with both shapes named
/// and, when the array looks like another layout of the same input, how to convert it.
///
/// ```
/// use paoding_cli::npy::batch_len;
/// assert_eq!(batch_len(&[450, 1, 8, 8], &[1, 1, 8, 8]), Ok(450));
/// let err = batch_len(&[450, 8, 8, 1], &[1, 1, 8, 8]).unwrap_err();
/// assert!(err.contains("[N, 1, 8, 8]") && err.contains("x.transpose(0, 3, 1, 2)"), "{err}");
/// ```
pub fn batch_len(shape: &[usize], input: &[usize]) -> Result<usize, String> {
    let dims = input.get(1..).unwrap_or_default();
    if shape.len() == input.len() && shape[1..] == *dims && shape[0] > 0 {
        return Ok(shape[0]);
    }
    let list = |d: &[usize]| {
        d.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let expected = format!("[N, {}]", list(dims));
    let sample = shape.get(1..).unwrap_or_default();
    let mut sorted = (sample.to_vec(), dims.to_vec());
    sorted.0.sort_unstable();
    sorted.1.sort_unstable();
    let hint = if shape == dims {
        format!(
            "; a single sample needs the batch axis: x.reshape(1, {})",
            list(dims)
        )
    } else if shape.first() == Some(&0) && sample == dims {
        "; the array holds no sample".to_string()
    } else if shape.len() == input.len() && sorted.0 == sorted.1 {
        let layout =
            layout(dims).map_or(String::new(), |l| format!("the model's input is {l} and "));
        let convert = match dims {
            [c, h, w] if sample == [*h, *w, *c] => "x.transpose(0, 3, 1, 2)",
            [h, w, c] if sample == [*c, *h, *w] => "x.transpose(0, 2, 3, 1)",
            _ => "transpose the array",
        };
        format!("; {layout}the array has its axes in another order: {convert}")
    } else if sample.iter().product::<usize>() == dims.iter().product::<usize>() {
        format!(
            "; the samples have as many values but other axes: x.reshape(-1, {}) if they are in the model's order",
            list(dims)
        )
    } else {
        String::new()
    };
    Err(format!(
        "array of shape {shape:?} is not a batch of the model's inputs: expected {expected}, \
         the model's input {input:?} without its batch axis{hint}"
    ))
}

/// The layout of an image input's axes (without the batch axis), when they tell: channels
/// first (NCHW) when the first axis is the shortest, channels last (NHWC) when the last is.
fn layout(dims: &[usize]) -> Option<&'static str> {
    match dims {
        [a, _, c] if a < c => Some("channels first (NCHW)"),
        [a, _, c] if c < a => Some("channels last (NHWC)"),
        _ => None,
    }
}

/// Class labels: one non-negative integer per sample.
pub fn read_labels(path: &Path, samples: usize) -> Result<Vec<usize>, CliError> {
    let (shape, values) = read_numbers(path)?;
    if values.len() != samples {
        return Err(bad(
            path,
            format!(
                "{} labels (shape {shape:?}) for {samples} samples",
                values.len()
            ),
        ));
    }
    values
        .into_iter()
        .map(|v| {
            if v >= 0.0 && v.fract() == 0.0 {
                Ok(v as usize)
            } else {
                Err(bad(path, format!("label {v} is not a class index")))
            }
        })
        .collect()
}
