//! Checks on the raw protobuf, before tract reads any tensor: sizes that are absurd or
//! inconsistent, external data that points outside the model's folder, operators that no
//! importer knows.

use std::path::Path;

use tract_onnx::pb::{tensor_proto::DataLocation, GraphProto, ModelProto, TensorProto};

use crate::error::ImportError;

/// Largest tensor accepted, in bytes: far above any microcontroller model, far below what
/// would exhaust the host.
const MAX_TENSOR_BYTES: u64 = 1 << 31;

pub(super) fn check_proto(
    path: &Path,
    dir: &Path,
    proto: &ModelProto,
    onnx: &tract_onnx::Onnx,
) -> Result<(), ImportError> {
    let graph = proto.graph.as_ref().ok_or_else(|| ImportError::Malformed {
        path: path.to_path_buf(),
        reason: "the file holds no graph".into(),
    })?;
    if graph.node.is_empty() {
        return Err(ImportError::Malformed {
            path: path.to_path_buf(),
            reason: "the graph has no node".into(),
        });
    }
    check_graph(path, dir, graph, onnx)
}

fn check_graph(
    path: &Path,
    dir: &Path,
    graph: &GraphProto,
    onnx: &tract_onnx::Onnx,
) -> Result<(), ImportError> {
    for t in &graph.initializer {
        check_tensor(path, dir, t)?;
    }
    for node in &graph.node {
        let known =
            node.domain.is_empty() || node.domain == "ai.onnx" || node.domain == "ai.onnx.ml";
        if !known || !onnx.op_register.0.contains_key(&node.op_type) {
            return Err(ImportError::Unsupported {
                path: path.to_path_buf(),
                op: if known {
                    node.op_type.clone()
                } else {
                    format!("{}:{}", node.domain, node.op_type)
                },
                node: node.name.clone(),
                detail: String::new(),
            });
        }
        for attr in &node.attribute {
            if let Some(t) = &attr.t {
                check_tensor(path, dir, t)?;
            }
            for t in &attr.tensors {
                check_tensor(path, dir, t)?;
            }
            if let Some(g) = &attr.g {
                check_graph(path, dir, g, onnx)?;
            }
        }
    }
    Ok(())
}

/// Bytes per element of an ONNX data type, `None` for strings and unknown codes.
fn element_bytes(data_type: i32) -> Option<u64> {
    Some(match data_type {
        1 | 6 | 12 => 4,      // float, int32, uint32
        2 | 3 | 9 => 1,       // uint8, int8, bool
        4 | 5 | 10 | 16 => 2, // uint16, int16, float16, bfloat16
        7 | 11 | 13 => 8,     // int64, double, uint64
        _ => return None,
    })
}

fn check_tensor(path: &Path, dir: &Path, t: &TensorProto) -> Result<(), ImportError> {
    let bad = |reason: String| ImportError::BadTensor {
        path: path.to_path_buf(),
        tensor: t.name.clone(),
        reason,
    };
    let mut count: u64 = 1;
    for &d in &t.dims {
        let d =
            u64::try_from(d).map_err(|_| bad(format!("negative dimension {d} in {:?}", t.dims)))?;
        count = count
            .checked_mul(d)
            .ok_or_else(|| bad(format!("dimensions {:?} overflow", t.dims)))?;
    }
    let Some(elem) = element_bytes(t.data_type) else {
        return Ok(()); // strings and exotic types: tract decides, they never reach the IR
    };
    let bytes = count
        .checked_mul(elem)
        .filter(|&b| b <= MAX_TENSOR_BYTES)
        .ok_or_else(|| {
            bad(format!(
                "declared size {:?} is absurd (over {MAX_TENSOR_BYTES} bytes)",
                t.dims
            ))
        })?;

    if t.data_location == Some(DataLocation::External as i32) {
        return check_external(dir, t, bytes).map_err(bad);
    }
    if !t.raw_data.is_empty() && t.raw_data.len() as u64 != bytes {
        return Err(bad(format!(
            "holds {} bytes of data but its shape {:?} needs {bytes}",
            t.raw_data.len(),
            t.dims
        )));
    }
    Ok(())
}

fn check_external(dir: &Path, t: &TensorProto, bytes: u64) -> Result<(), String> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let location = entry("location").ok_or("external data without a location")?;
    let rel = Path::new(location);
    if rel.is_absolute()
        || rel.components().any(|c| {
            !matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
    {
        return Err(format!("external data location '{location}' is not a plain relative path inside the model's folder"));
    }
    let file = dir.join(rel);
    let (canon_dir, canon_file) = match (dir.canonicalize(), file.canonicalize()) {
        (Ok(d), Ok(f)) => (d, f),
        _ => {
            return Err(format!(
                "external data file '{}' cannot be opened",
                file.display()
            ))
        }
    };
    if !canon_file.starts_with(&canon_dir) {
        return Err(format!(
            "external data location '{location}' resolves outside the model's folder"
        ));
    }
    let size = std::fs::metadata(&canon_file)
        .map_err(|e| format!("external data file '{}': {e}", file.display()))?
        .len();
    let parse = |key: &str| -> Result<u64, String> {
        entry(key).map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| format!("external data {key} '{v}' is not a number"))
        })
    };
    let offset = parse("offset")?;
    let length = match entry("length") {
        Some(_) => parse("length")?,
        None => bytes,
    };
    if length != bytes {
        return Err(format!(
            "external data length {length} differs from the {bytes} bytes its shape {:?} needs",
            t.dims
        ));
    }
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data [{offset}, {offset}+{length}) lies past the end of '{}' ({size} bytes)",
            file.display()
        ));
    }
    Ok(())
}
