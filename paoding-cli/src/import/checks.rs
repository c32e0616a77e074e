//! Checks on the raw protobuf, before tract reads any tensor: sizes that are absurd or
//! inconsistent, external data that points outside the model's folder, operators that no
//! importer knows or that paoding never maps (recurrent layers, control flow).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tract_onnx::pb::{tensor_proto::DataLocation, GraphProto, ModelProto, TensorProto};

use crate::error::ImportError;

/// Most elements any value of a model may have, a weight, a constant or an activation:
/// 16 Mi: 64 MiB of f32 (128 MiB for 8-byte types), far above any microcontroller's memory,
/// and within the 256 MiB an import may use even when tract folds such a constant.
pub(super) const MAX_ELEMENTS: u64 = 1 << 24;

/// Operators tract reads but paoding never maps: recurrent layers and control flow. Named
/// up front, so the error is about them and not about a node tract lowered them into (a GRU
/// with `batch_first` first failed as a transpose that moves the batch axis).
const NEVER_MAPPED: &[(&[&str], &str)] = &[
    (
        &["GRU", "LSTM", "RNN"],
        ": recurrent layers are not supported",
    ),
    (&["Scan", "If"], ": control flow is not supported"),
];

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
    check_graph(path, dir, graph, onnx)?;
    check_inputs(path, graph)?;
    check_structure(path, graph)
}

/// The graph inputs' declared shapes: no zero-sized or negative dimension after the batch
/// axis, and at most [`MAX_ELEMENTS`] in all.
fn check_inputs(path: &Path, graph: &GraphProto) -> Result<(), ImportError> {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value, type_proto};
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for input in &graph.input {
        if initializers.contains(input.name.as_str()) {
            continue; // a default value, checked as a tensor
        }
        let Some(type_proto::Value::TensorType(t)) =
            input.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            continue;
        };
        let Some(shape) = &t.shape else { continue };
        let mut elements: u64 = 1;
        for (axis, dim) in shape.dim.iter().enumerate() {
            let Some(Value::DimValue(d)) = dim.value else {
                continue;
            };
            if axis > 0 && d <= 0 {
                return Err(ImportError::Model {
                    path: path.to_path_buf(),
                    reason: format!(
                        "input '{}': dimension {axis} is {d}; every dimension after the batch must be at least 1",
                        input.name
                    ),
                });
            }
            elements = elements.saturating_mul(d.max(1) as u64);
        }
        if elements > MAX_ELEMENTS {
            return Err(ImportError::Model {
                path: path.to_path_buf(),
                reason: format!(
                    "input '{}' declares {} elements, more than {MAX_ELEMENTS}",
                    input.name,
                    if elements == u64::MAX {
                        "2^64 or more".to_string()
                    } else {
                        elements.to_string()
                    }
                ),
            });
        }
    }
    Ok(())
}

/// Every value has exactly one source (a graph input, an initializer or one node's output),
/// every name a node or the graph's output reads has one, and the nodes form no cycle.
fn check_structure(path: &Path, graph: &GraphProto) -> Result<(), ImportError> {
    let err = |reason: String| ImportError::Model {
        path: path.to_path_buf(),
        reason,
    };
    let node_name = |i: usize| {
        let n = &graph.node[i];
        if n.name.is_empty() {
            format!("#{i} ({})", n.op_type)
        } else {
            format!("'{}' ({})", n.name, n.op_type)
        }
    };
    // Where each value comes from: None for inputs and initializers, Some(node) for outputs.
    let mut source: HashMap<&str, Option<usize>> = HashMap::new();
    for t in &graph.initializer {
        if source.insert(t.name.as_str(), None).is_some() {
            return Err(err(format!("initializer '{}' is declared twice", t.name)));
        }
    }
    let mut inputs = HashSet::new();
    for i in &graph.input {
        // An input may share its name with an initializer (its default value), once.
        if !inputs.insert(i.name.as_str()) {
            return Err(err(format!("graph input '{}' is declared twice", i.name)));
        }
        source.entry(i.name.as_str()).or_insert(None);
    }
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if let Some(previous) = source.insert(out.as_str(), Some(i)) {
                let first = match previous {
                    Some(p) => format!("node {}", node_name(p)),
                    None => "a graph input or initializer".into(),
                };
                return Err(err(format!(
                    "value '{out}' is produced by node {} and by {first}",
                    node_name(i)
                )));
            }
        }
    }
    for (i, node) in graph.node.iter().enumerate() {
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            if !source.contains_key(input.as_str()) {
                return Err(err(format!(
                    "node {} reads '{input}', which no input, initializer or node defines",
                    node_name(i)
                )));
            }
        }
    }
    for out in &graph.output {
        if !source.contains_key(out.name.as_str()) {
            return Err(err(format!(
                "the graph output '{}' is not defined by any node",
                out.name
            )));
        }
    }
    // Kahn's algorithm: the nodes left when no more can be ordered lie on or after a cycle.
    let mut waiting: Vec<usize> = graph
        .node
        .iter()
        .map(|n| {
            n.input
                .iter()
                .filter(|v| matches!(source.get(v.as_str()), Some(Some(_))))
                .count()
        })
        .collect();
    let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for v in &node.input {
            if let Some(Some(p)) = source.get(v.as_str()) {
                readers.entry(*p).or_default().push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..waiting.len()).filter(|&i| waiting[i] == 0).collect();
    let mut ordered = 0;
    while let Some(i) = ready.pop() {
        ordered += 1;
        for &r in readers.get(&i).into_iter().flatten() {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.push(r);
            }
        }
    }
    if ordered < graph.node.len() {
        // From a node left waiting, step to a waiting producer as many times as there are
        // nodes: that lands on the cycle itself, not on a node downstream of it.
        let mut at = (0..waiting.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
        for _ in 0..graph.node.len() {
            let producer = graph.node[at]
                .input
                .iter()
                .find_map(|v| match source.get(v.as_str()) {
                    Some(Some(p)) if waiting[*p] > 0 => Some(*p),
                    _ => None,
                });
            match producer {
                Some(p) => at = p,
                None => break,
            }
        }
        return Err(err(format!(
            "the nodes form a cycle: node {} depends on its own output",
            node_name(at)
        )));
    }
    Ok(())
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
        if let Some((_, why)) = NEVER_MAPPED
            .iter()
            .find(|(ops, _)| ops.contains(&node.op_type.as_str()))
        {
            return Err(ImportError::Unsupported {
                path: path.to_path_buf(),
                op: node.op_type.clone(),
                node: node.name.clone(),
                detail: why.to_string(),
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
            if node.op_type == "Transpose" && attr.name == "perm" && !is_permutation(&attr.ints) {
                // tract evaluates a constant Transpose with a repeated axis without checking,
                // and ran out of memory on it (found by the `import` fuzz target).
                return Err(ImportError::Model {
                    path: path.to_path_buf(),
                    reason: format!(
                        "node '{}' (Transpose): perm {:?} is not a permutation of 0..{}",
                        node.name,
                        attr.ints,
                        attr.ints.len()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Whether `perm` holds each of 0..perm.len() exactly once.
fn is_permutation(perm: &[i64]) -> bool {
    let mut seen = vec![false; perm.len()];
    perm.iter().all(|&p| {
        usize::try_from(p)
            .ok()
            .and_then(|p| seen.get_mut(p))
            .is_some_and(|s| !std::mem::replace(s, true))
    })
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
        count = count.saturating_mul(d);
    }
    if count > MAX_ELEMENTS {
        return Err(bad(format!(
            "declares {} elements ({:?}), more than {MAX_ELEMENTS}",
            if count == u64::MAX {
                "2^64 or more".to_string()
            } else {
                count.to_string()
            },
            t.dims
        )));
    }
    let Some(elem) = element_bytes(t.data_type) else {
        // Strings and exotic types never reach the IR; their count is still bounded.
        return if t.data_type == 8 && t.string_data.len() as u64 != count {
            Err(bad(format!(
                "declares {count} strings ({:?}) but holds {}",
                t.dims,
                t.string_data.len()
            )))
        } else {
            Ok(())
        };
    };
    let bytes = count * elem;
    if t.data_location == Some(DataLocation::External as i32) {
        return check_external(dir, t, bytes).map_err(bad);
    }
    if !t.raw_data.is_empty() {
        if t.raw_data.len() as u64 != bytes {
            return Err(bad(format!(
                "holds {} bytes of data but its shape {:?} needs {bytes}",
                t.raw_data.len(),
                t.dims
            )));
        }
        return Ok(());
    }
    let (field, held) = typed_data(t);
    if held != count {
        return Err(bad(format!(
            "declares {count} elements ({:?}) but holds {held} in {field}",
            t.dims
        )));
    }
    Ok(())
}

/// The field where a tensor of this type keeps its values when not in `raw_data`, and how
/// many it holds there (ONNX's TensorProto: small integer and half types widen to int32).
fn typed_data(t: &TensorProto) -> (&'static str, u64) {
    let (field, n) = match t.data_type {
        1 => ("float_data", t.float_data.len()),
        7 => ("int64_data", t.int64_data.len()),
        11 => ("double_data", t.double_data.len()),
        12 | 13 => ("uint64_data", t.uint64_data.len()),
        _ => ("int32_data", t.int32_data.len()),
    };
    (field, n as u64)
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
