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

/// A batch of model inputs: the first axis is the batch, the rest must hold `sample_len`
/// values. Returns the samples back to back.
pub fn read_batch(path: &Path, sample_len: usize) -> Result<(usize, Vec<f32>), CliError> {
    let (shape, values) = read_numbers(path)?;
    let per: usize = shape.iter().skip(1).product();
    if shape.len() < 2 || per != sample_len || shape[0] == 0 {
        return Err(bad(path, format!("shape {shape:?} is not a batch of inputs of {sample_len} values (first axis = batch)")));
    }
    Ok((shape[0], values.into_iter().map(|v| v as f32).collect()))
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
