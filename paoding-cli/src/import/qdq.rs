//! Quantized ONNX (QDQ): the file's int8 form read before tract sees the model.
//!
//! QDQ files keep float operators and put the quantization beside them:
//! `DequantizeLinear` of an integer constant for weights and biases, a
//! `QuantizeLinear` → `DequantizeLinear` pair on each activation, an integer graph input read
//! through a `DequantizeLinear` and an integer output written by a `QuantizeLinear`. This pass
//! checks every one of them (scales finite and positive, zero points inside their type,
//! per-axis parameters of the right length on an existing axis, output types that agree with
//! the zero point), records the parameters by tensor name, and rewrites the protobuf into the
//! float model they describe: constant dequantizations become float initializers (computed as
//! ONNX defines them, `(q - zero_point) * scale` in f32), activation pairs and the io
//! conversions become `Identity`, integer graph inputs and outputs become float. tract then
//! imports a float model; the importer maps the recorded parameters onto the IR
//! ([`super::map`]).
//!
//! Nothing is requantized: a `DequantizeLinear` whose parameters differ from the
//! `QuantizeLinear` it reads, an integer tensor read by anything but a layout operator or a
//! `DequantizeLinear`, or a quantized operator paoding does not map is an error naming the node.
//! uint8 tensors are int8 ones with every code and zero point shifted by 128 (the same reals,
//! the same integer arithmetic).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use paoding_core::quant::imported::FileLayer;
use paoding_core::quant::params::QParams;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::{type_proto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use crate::error::ImportError;

/// The file's quantization, by ONNX name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Qdq {
    /// Float tensors (after the rewrite) and their int8 parameters (uint8 ones shifted).
    pub values: HashMap<String, QParams>,
    /// Dense and convolution nodes (by name) whose weights the file stores as integers.
    pub layers: HashMap<String, FileLayer>,
    /// The graph input's parameters, when the file's input is an integer tensor; and whether
    /// it was uint8.
    pub input: Option<(QParams, bool)>,
    /// The graph output's, likewise.
    pub output: Option<(QParams, bool)>,
    /// Whether any activation is quantized (else the file quantizes weights only).
    pub activations: bool,
}

/// A decoded constant.
#[derive(Debug, Clone)]
enum Values {
    Floats(Vec<f32>),
    Ints(Vec<i32>),
}

#[derive(Debug, Clone)]
struct Const {
    data_type: i32,
    dims: Vec<usize>,
    values: Values,
}

/// The integer types a quantized tensor may have.
#[derive(Debug, Clone, Copy, PartialEq)]
enum IntType {
    I8,
    U8,
    I32,
}

impl IntType {
    fn of(data_type: i32) -> Option<IntType> {
        match DataType::try_from(data_type).ok()? {
            DataType::Int8 => Some(IntType::I8),
            DataType::Uint8 => Some(IntType::U8),
            DataType::Int32 => Some(IntType::I32),
            _ => None,
        }
    }

    fn range(self) -> (i64, i64) {
        match self {
            IntType::I8 => (-128, 127),
            IntType::U8 => (0, 255),
            IntType::I32 => (i32::MIN.into(), i32::MAX.into()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            IntType::I8 => "int8",
            IntType::U8 => "uint8",
            IntType::I32 => "int32",
        }
    }
}

/// A Quantize/DequantizeLinear's checked parameters.
#[derive(Debug, Clone)]
struct LinearParams {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    ty: IntType,
    /// The axis of per-axis parameters (normalized), `None` per tensor.
    axis: Option<usize>,
}

impl LinearParams {
    /// Per-tensor int8 parameters (uint8 shifted).
    fn qparams(&self) -> QParams {
        let shift = if self.ty == IntType::U8 { 128 } else { 0 };
        QParams {
            scale: self.scales[0],
            zero_point: (self.zero_points[0] - shift) as i32,
        }
    }
}

/// Whether the model has quantization operators this pass reads.
pub(crate) fn is_quantized(proto: &ModelProto) -> bool {
    proto.graph.iter().flat_map(|g| &g.node).any(|n| {
        matches!(
            n.op_type.as_str(),
            "QuantizeLinear"
                | "DequantizeLinear"
                | "QLinearConv"
                | "QLinearMatMul"
                | "MatMulInteger"
                | "ConvInteger"
                | "DynamicQuantizeLinear"
        )
    })
}

/// Operators that move codes without computing on them: they may read integer tensors.
fn is_layout(op: &str) -> bool {
    matches!(
        op,
        "Reshape" | "Flatten" | "Transpose" | "Squeeze" | "Unsqueeze" | "Identity" | "MaxPool"
    )
}

/// Read the quantization of a QDQ model and rewrite it into its float model (see the module
/// documentation). `None` when the model has no quantization operator.
pub(crate) fn rewrite(path: &Path, proto: &mut ModelProto) -> Result<Option<Qdq>, ImportError> {
    if !is_quantized(proto) {
        return Ok(None);
    }
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(None);
    };
    // Names for unnamed (or twice-named) nodes: the importer matches layers by node name.
    let mut seen = HashSet::new();
    for (i, node) in graph.node.iter_mut().enumerate() {
        if node.name.is_empty() || !seen.insert(node.name.clone()) {
            node.name = format!("{}_{i}", node.op_type);
            seen.insert(node.name.clone());
        }
    }
    expand_qlinear(graph, path)?;
    fold_constant_chains(graph);
    let err = |node: &NodeProto, reason: String| ImportError::Quantization {
        path: path.to_path_buf(),
        node: node.name.clone(),
        op: node.op_type.clone(),
        reason,
    };
    // Only the constants quantization operators read are decoded (their codes, scales and
    // zero points); every constant's name is known.
    let needed: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut const_names: HashSet<String> = HashSet::new();
    let mut consts: HashMap<String, Const> = HashMap::new();
    for t in &graph.initializer {
        const_names.insert(t.name.clone());
        if needed.contains(t.name.as_str()) {
            if let Some(c) = decode(t) {
                consts.insert(t.name.clone(), c);
            }
        }
    }
    for node in &graph.node {
        if node.op_type == "Constant" {
            if let (Some(out), Some(t)) = (
                node.output.first(),
                node.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref()),
            ) {
                const_names.insert(out.clone());
                if needed.contains(out.as_str()) {
                    if let Some(c) = decode(t) {
                        consts.insert(out.clone(), c);
                    }
                }
            }
        }
    }
    // Declared types of tensors (graph io and value_info), to check Q outputs against.
    let declared: HashMap<String, i32> = graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
        .filter_map(|v| Some((v.name.clone(), elem_type(v)?)))
        .collect();
    let input_names: HashSet<String> = graph
        .input
        .iter()
        .map(|v| v.name.clone())
        .filter(|n| !const_names.contains(n))
        .collect();

    let mut qdq = Qdq::default();
    // Integer activation tensors: name -> root (a Q output or an integer graph input).
    let mut int_root: HashMap<String, String> = HashMap::new();
    // Root -> (parameters once known, type, node that set them).
    let mut roots: HashMap<String, (Option<LinearParams>, String)> = HashMap::new();
    let mut unsigned_input = false;
    for v in &graph.input {
        if input_names.contains(&v.name) {
            if let Some(t) = elem_type(v).and_then(IntType::of) {
                if t == IntType::I32 {
                    continue;
                }
                unsigned_input = t == IntType::U8;
                int_root.insert(v.name.clone(), v.name.clone());
                roots.insert(v.name.clone(), (None, String::new()));
            }
        }
    }
    // Constant dequantizations to replace by float initializers.
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut removed: HashSet<usize> = HashSet::new();
    // DequantizeLinear outputs of integer constants: their codes' parameters.
    let mut dq_consts: HashMap<String, (LinearParams, Const)> = HashMap::new();

    let order = topological(graph.node.as_slice());
    for &i in &order {
        let node = graph.node[i].clone();
        let op = node.op_type.as_str();
        match op {
            "MatMulInteger" | "ConvInteger" | "DynamicQuantizeLinear" => {
                return Err(err(
                    &node,
                    "dynamic quantization (activations quantized at run time, int32 results \
                     rescaled in float) has no static int8 form; quantize the model statically \
                     (onnxruntime's quantize_static, QDQ or QOperator format)"
                        .into(),
                ))
            }
            "QLinearAdd"
            | "QLinearMul"
            | "QLinearConcat"
            | "QLinearAveragePool"
            | "QLinearGlobalAveragePool"
            | "QLinearSigmoid"
            | "QLinearLeakyRelu" => {
                return Err(err(
                    &node,
                    "this quantized operator (com.microsoft) is not mapped; export the model in \
                     QDQ form (onnxruntime's quantize_static with QuantFormat.QDQ)"
                        .into(),
                ))
            }
            "QuantizeLinear" | "DequantizeLinear" => {}
            _ => {
                // Integer tensors may only be moved by layout operators.
                let int_inputs: Vec<&String> = node
                    .input
                    .iter()
                    .filter(|n| int_root.contains_key(*n))
                    .collect();
                if let Some(first) = int_inputs.first() {
                    // PyTorch's exporter casts each quantized tensor to the type it already has.
                    let root_type = roots
                        .get(&int_root[*first])
                        .and_then(|(p, _)| p.as_ref())
                        .map(|p| p.ty);
                    let same_type_cast = op == "Cast"
                        && root_type.is_some()
                        && node
                            .attribute
                            .iter()
                            .find(|a| a.name == "to")
                            .and_then(|a| IntType::of(a.i as i32))
                            == root_type;
                    if same_type_cast {
                        let n = &mut graph.node[i];
                        n.op_type = "Identity".into();
                        n.attribute.clear();
                    }
                    if (is_layout(op) || same_type_cast) && node.input.first() == Some(*first) {
                        let root = int_root[*first].clone();
                        for out in &node.output {
                            int_root.insert(out.clone(), root.clone());
                        }
                        if let Some((Some(p), _)) = roots.get(&root) {
                            for out in &node.output {
                                qdq.values.insert(out.clone(), p.qparams());
                            }
                        }
                        continue;
                    }
                    return Err(err(
                        &node,
                        format!(
                            "reads the integer tensor '{first}'; only layout operators \
                             (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Identity), a \
                             Cast to the type it has, and DequantizeLinear may read quantized \
                             tensors in a QDQ model"
                        ),
                    ));
                }
                continue;
            }
        }
        let params = linear_params(&node, &consts).map_err(|r| err(&node, r))?;
        let x = node.input.first().cloned().unwrap_or_default();
        let y = node.output.first().cloned().unwrap_or_default();
        if op == "QuantizeLinear" {
            if consts.contains_key(&x) {
                return Err(err(
                    &node,
                    "quantizes a constant at run time; store the weights as integers with a \
                     DequantizeLinear"
                        .into(),
                ));
            }
            if params.ty == IntType::I32 {
                return Err(err(&node, "quantizes activations to int32".into()));
            }
            if let Some(&t) = declared.get(&y) {
                if IntType::of(t) != Some(params.ty) {
                    return Err(err(
                        &node,
                        format!(
                            "its output '{y}' is declared {} but its zero point is {}",
                            type_name(t),
                            params.ty.name()
                        ),
                    ));
                }
            }
            if params.axis.is_some() {
                return Err(err(
                    &node,
                    "quantizes an activation per axis; TFLite's kernels (and paoding's) \
                     quantize activations per tensor"
                        .into(),
                ));
            }
            let p = params.qparams();
            if let Some(&old) = qdq.values.get(&x) {
                if old != p {
                    return Err(err(
                        &node,
                        format!(
                            "quantizes '{x}' with scale {} and zero point {}, which already has \
                             scale {} and zero point {}",
                            p.scale, p.zero_point, old.scale, old.zero_point
                        ),
                    ));
                }
            }
            qdq.values.insert(x.clone(), p);
            qdq.values.insert(y.clone(), p);
            qdq.activations = true;
            int_root.insert(y.clone(), y.clone());
            roots.insert(y.clone(), (Some(params), node.name.clone()));
            let n = &mut graph.node[i];
            n.op_type = "Identity".into();
            n.domain.clear();
            n.input.truncate(1);
            n.attribute.clear();
            continue;
        }
        // DequantizeLinear.
        if let Some(c) = consts.get(&x) {
            let data = dequantize(c, &params).map_err(|r| err(&node, r))?;
            new_inits.push(float_tensor(&y, &c.dims, &data));
            dq_consts.insert(y.clone(), (params, c.clone()));
            removed.insert(i);
            continue;
        }
        let Some(root) = int_root.get(&x).cloned() else {
            return Err(err(
                &node,
                format!("dequantizes '{x}', which is neither an integer constant nor a quantized tensor"),
            ));
        };
        if params.axis.is_some() {
            return Err(err(
                &node,
                "dequantizes an activation per axis; TFLite's kernels (and paoding's) quantize \
                 activations per tensor"
                    .into(),
            ));
        }
        let p = params.qparams();
        let slot = roots.entry(root.clone()).or_insert((None, String::new()));
        match &slot.0 {
            Some(q) if q.qparams() != p || q.ty != params.ty => {
                let (qp, by) = (q.qparams(), slot.1.clone());
                return Err(err(
                    &node,
                    format!(
                        "dequantizes '{x}' with scale {} and zero point {}, but '{by}' quantized \
                         it with scale {} and zero point {}: a requantization, which paoding \
                         does not make silently",
                        p.scale, p.zero_point, qp.scale, qp.zero_point
                    ),
                ));
            }
            Some(_) => {}
            None => {
                // The integer graph input: its parameters are its first reader's.
                *slot = (Some(params.clone()), node.name.clone());
                for (t, r) in &int_root {
                    if *r == root {
                        qdq.values.insert(t.clone(), p);
                    }
                }
            }
        }
        qdq.values.insert(x.clone(), p);
        qdq.values.insert(y.clone(), p);
        qdq.activations = true;
        let n = &mut graph.node[i];
        n.op_type = "Identity".into();
        n.domain.clear();
        n.input.truncate(1);
        n.attribute.clear();
    }

    // Weights and biases: by the node that reads them.
    for node in &graph.node {
        let (w_slot, b_slot, out_axis) = match node.op_type.as_str() {
            "Conv" => (1, Some(2), 0),
            "MatMul" => (1, None, 1),
            "Gemm" => {
                let trans_b = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "transB")
                    .is_some_and(|a| a.i != 0);
                (1, Some(2), if trans_b { 0 } else { 1 })
            }
            _ => continue,
        };
        let Some((wp, wc)) = node.input.get(w_slot).and_then(|w| dq_consts.get(w)) else {
            continue;
        };
        if wp.ty == IntType::I32 {
            return Err(err(
                node,
                "its weights are int32; paoding runs int8 weights".into(),
            ));
        }
        let channels = wc.dims.get(out_axis).copied().unwrap_or(0);
        let scales = match wp.axis {
            None => vec![wp.scales[0]],
            Some(a) if a == out_axis => wp.scales.clone(),
            Some(a) => {
                return Err(err(
                    node,
                    format!(
                        "its weights are quantized along axis {a}; per-channel weights need \
                         the output-channel axis ({out_axis})"
                    ),
                ))
            }
        };
        let mut layer = FileLayer { scales, bias: None };
        // The bias: the node's own input, or the Add that reads a MatMul's output alone.
        let bias_name = match b_slot {
            Some(b) => node.input.get(b).cloned(),
            None => node.output.first().and_then(|out| {
                let readers: Vec<&NodeProto> = graph
                    .node
                    .iter()
                    .filter(|n| n.input.contains(out))
                    .collect();
                match readers.as_slice() {
                    [add] if add.op_type == "Add" => add.input.iter().find(|n| *n != out).cloned(),
                    _ => None,
                }
            }),
        };
        if let Some((bp, bc)) = bias_name.and_then(|b| dq_consts.get(&b)) {
            if bp.ty == IntType::I32 {
                let Values::Ints(codes) = &bc.values else {
                    continue;
                };
                if bc.dims.iter().product::<usize>() != channels && codes.len() != 1 {
                    return Err(err(
                        node,
                        format!(
                            "has {} int32 biases for {channels} output channels",
                            codes.len()
                        ),
                    ));
                }
                let zps = &bp.zero_points;
                let biased: Vec<i32> = codes
                    .iter()
                    .enumerate()
                    .map(|(k, &q)| {
                        let z = zps.get(k).or(zps.first()).copied().unwrap_or(0);
                        (i64::from(q) - z).clamp(i32::MIN.into(), i32::MAX.into()) as i32
                    })
                    .collect();
                layer.bias = Some((biased, bp.scales.clone()));
            }
        }
        qdq.layers.insert(node.name.clone(), layer);
    }

    // The graph output: an integer output is a quantized tensor, now float.
    let mut output = None;
    for v in &mut graph.output {
        if let Some(root) = int_root.get(&v.name) {
            let Some((Some(p), by)) = roots.get(root) else {
                return Err(ImportError::Quantization {
                    path: path.to_path_buf(),
                    node: v.name.clone(),
                    op: "graph output".into(),
                    reason: "an integer output with no quantization parameters".into(),
                });
            };
            let _ = by;
            output = Some((p.qparams(), p.ty == IntType::U8));
            set_float(v);
        }
    }
    qdq.output = output;
    // The graph input: an integer input, now float, takes its reader's parameters.
    for v in &mut graph.input {
        if !input_names.contains(&v.name) {
            continue;
        }
        if let Some((p, _)) = roots.get(&v.name) {
            let Some(p) = p else {
                return Err(ImportError::Quantization {
                    path: path.to_path_buf(),
                    node: v.name.clone(),
                    op: "graph input".into(),
                    reason: "an integer input that no DequantizeLinear reads".into(),
                });
            };
            qdq.input = Some((p.qparams(), unsigned_input));
            qdq.values.insert(v.name.clone(), p.qparams());
            set_float(v);
        }
    }
    // Value infos of rewritten tensors would contradict the float model: tract ignores them
    // (the importer asks it to), but drop those of integer tensors anyway.
    graph.value_info.retain(|v| !int_root.contains_key(&v.name));
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        !removed.contains(&(k - 1))
    });
    graph.initializer.extend(new_inits);
    Ok(Some(qdq))
}

/// Rewrite every QLinearConv and QLinearMatMul into the QDQ form it stands for, in place:
/// `DequantizeLinear` of its input and of its integer weights (and of its int32 bias, at the
/// input's scale times the weights'), the float operator, a `QuantizeLinear` of its output
/// with the output's parameters. The main pass then reads them as any QDQ file.
fn expand_qlinear(graph: &mut tract_onnx::pb::GraphProto, path: &Path) -> Result<(), ImportError> {
    if !graph
        .node
        .iter()
        .any(|n| matches!(n.op_type.as_str(), "QLinearConv" | "QLinearMatMul"))
    {
        return Ok(());
    }
    let consts: HashMap<String, Const> = graph
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.clone(), decode(t)?)))
        .collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut inits = Vec::new();
    for node in std::mem::take(&mut graph.node) {
        let conv = node.op_type == "QLinearConv";
        if !conv && node.op_type != "QLinearMatMul" {
            nodes.push(node);
            continue;
        }
        let bad = |reason: &str| ImportError::Quantization {
            path: path.to_path_buf(),
            node: node.name.clone(),
            op: node.op_type.clone(),
            reason: reason.to_string(),
        };
        if node.input.len() < 8 || node.output.len() != 1 {
            return Err(bad("needs its eight quantization inputs and one output"));
        }
        let name = &node.name;
        let i = |k: usize| node.input[k].clone();
        let dq = |x: String, s: String, z: String, out: String, axis: Option<i64>| NodeProto {
            name: format!("{out}_dq"),
            op_type: "DequantizeLinear".into(),
            input: vec![x, s, z],
            output: vec![out],
            attribute: axis
                .map(|a| tract_onnx::pb::AttributeProto {
                    name: "axis".into(),
                    r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
                    i: a,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let (x_f, w_f, y_f) = (
            format!("{name}/x"),
            format!("{name}/w"),
            format!("{name}/y"),
        );
        // Weights per output channel: axis 0 of a convolution's, axis 1 of a matmul's.
        let w_axis = if conv { 0 } else { 1 };
        nodes.push(dq(i(0), i(1), i(2), x_f.clone(), None));
        nodes.push(dq(i(3), i(4), i(5), w_f.clone(), Some(w_axis)));
        let mut float_inputs = vec![x_f, w_f];
        if conv && node.input.len() > 8 && !node.input[8].is_empty() {
            // The int32 bias is at the input's scale times each channel's weight scale.
            let scale = |k: usize| match consts.get(&node.input[k]).map(|c| &c.values) {
                Some(Values::Floats(v)) if !v.is_empty() => Ok(v.clone()),
                _ => Err(bad("its scales must be float constants")),
            };
            let (xs, ws) = (scale(1)?, scale(4)?);
            let bias_scale: Vec<f32> = ws.iter().map(|w| xs[0] * w).collect();
            let b_scale = format!("{name}/bias_scale");
            let dims = if bias_scale.len() == 1 {
                vec![]
            } else {
                vec![bias_scale.len()]
            };
            inits.push(float_tensor(&b_scale, &dims, &bias_scale));
            let b_f = format!("{name}/b");
            let mut b = dq(i(8), b_scale, String::new(), b_f.clone(), Some(0));
            b.input.truncate(2);
            nodes.push(b);
            float_inputs.push(b_f);
        }
        nodes.push(NodeProto {
            name: name.clone(),
            op_type: if conv { "Conv" } else { "MatMul" }.into(),
            input: float_inputs,
            output: vec![y_f.clone()],
            attribute: if conv { node.attribute.clone() } else { vec![] },
            ..Default::default()
        });
        nodes.push(NodeProto {
            name: format!("{name}/quantize"),
            op_type: "QuantizeLinear".into(),
            input: vec![y_f, i(6), i(7)],
            output: node.output.clone(),
            ..Default::default()
        });
    }
    graph.node = nodes;
    graph.initializer.extend(inits);
    Ok(())
}

/// The checked parameters of a Quantize/DequantizeLinear (scale and zero point constants).
fn linear_params(
    node: &NodeProto,
    consts: &HashMap<String, Const>,
) -> Result<LinearParams, String> {
    let x = node.input.first().ok_or("has no input")?;
    let scale_name = node.input.get(1).ok_or("has no scale")?;
    let scale = consts
        .get(scale_name)
        .ok_or_else(|| format!("its scale '{scale_name}' is not a constant"))?;
    let Values::Floats(scales) = &scale.values else {
        return Err(format!(
            "its scale '{scale_name}' is {}, not a float",
            type_name(scale.data_type)
        ));
    };
    if scales.is_empty() {
        return Err(format!("its scale '{scale_name}' is empty"));
    }
    for &s in scales {
        if !(s.is_finite() && s > 0.0) {
            return Err(format!(
                "scale {s} in '{scale_name}': a scale must be positive and finite"
            ));
        }
    }
    let zp_name = node.input.get(2).filter(|n| !n.is_empty());
    let (zero_points, ty) = match zp_name {
        None => {
            // ONNX's default: uint8, zero point 0 (a DequantizeLinear takes its input's type).
            let ty = if node.op_type == "DequantizeLinear" {
                match consts.get(x) {
                    Some(c) => IntType::of(c.data_type).ok_or_else(|| {
                        format!(
                            "dequantizes a {} constant; paoding reads int8, uint8 and int32",
                            type_name(c.data_type)
                        )
                    })?,
                    None => IntType::U8,
                }
            } else {
                IntType::U8
            };
            (vec![0; scales.len()], ty)
        }
        Some(name) => {
            let zp = consts
                .get(name)
                .ok_or_else(|| format!("its zero point '{name}' is not a constant"))?;
            let ty = IntType::of(zp.data_type).ok_or_else(|| {
                format!(
                    "its zero point '{name}' is {}; paoding reads int8, uint8 and int32",
                    type_name(zp.data_type)
                )
            })?;
            let Values::Ints(z) = &zp.values else {
                return Err(format!("its zero point '{name}' is not an integer"));
            };
            let (lo, hi) = ty.range();
            if let Some(bad) = z.iter().find(|&&v| i64::from(v) < lo || i64::from(v) > hi) {
                return Err(format!(
                    "zero point {bad} in '{name}' is outside {} ([{lo}, {hi}])",
                    ty.name()
                ));
            }
            (z.iter().map(|&v| i64::from(v)).collect(), ty)
        }
    };
    if node.op_type == "DequantizeLinear" {
        if let Some(c) = consts.get(x) {
            if IntType::of(c.data_type) != Some(ty) {
                return Err(format!(
                    "dequantizes a {} constant with a {} zero point",
                    type_name(c.data_type),
                    ty.name()
                ));
            }
        }
    }
    if scale.dims.len() > 1 {
        return Err(format!(
            "its scale '{scale_name}' has rank {}; ONNX allows a scalar or one scale per \
             element of an axis",
            scale.dims.len()
        ));
    }
    let axis = if scales.len() > 1 {
        let Some(c) = consts.get(x) else {
            return Err(
                "quantizes an activation per axis; TFLite's kernels (and paoding's) \
                        quantize activations per tensor"
                    .into(),
            );
        };
        let rank = c.dims.len();
        let a = node
            .attribute
            .iter()
            .find(|a| a.name == "axis")
            .map_or(1, |a| a.i);
        let norm = if a < 0 { a + rank as i64 } else { a };
        if !(0..rank as i64).contains(&norm) {
            return Err(format!(
                "per-axis parameters on axis {a}, which its rank-{rank} input does not have"
            ));
        }
        let len = c.dims[norm as usize];
        if scales.len() != len {
            return Err(format!(
                "{} per-axis scales for axis {a}, of length {len}",
                scales.len()
            ));
        }
        Some(norm as usize)
    } else {
        None
    };
    if zero_points.len() != scales.len() {
        return Err(format!(
            "has {} scales but {} zero points",
            scales.len(),
            zero_points.len()
        ));
    }
    Ok(LinearParams {
        scales: scales.clone(),
        zero_points,
        ty,
        axis,
    })
}

/// `(q - zero_point) * scale` in f32 along the parameters' axis, as ONNX defines it.
fn dequantize(c: &Const, p: &LinearParams) -> Result<Vec<f32>, String> {
    let Values::Ints(q) = &c.values else {
        return Err("dequantizes a float constant".into());
    };
    if IntType::of(c.data_type) != Some(p.ty) {
        return Err(format!(
            "dequantizes a {} constant with a {} zero point",
            type_name(c.data_type),
            p.ty.name()
        ));
    }
    let inner: usize = match p.axis {
        Some(a) => c.dims[a + 1..].iter().product(),
        None => 1,
    };
    let len = p.scales.len();
    Ok(q.iter()
        .enumerate()
        .map(|(k, &v)| {
            let ch = if p.axis.is_some() {
                (k / inner.max(1)) % len
            } else {
                0
            };
            (i64::from(v) - p.zero_points[ch]) as f32 * p.scales[ch]
        })
        .collect())
}

/// Decode a small constant: float, or any integer type (else `None`: not read here).
fn decode(t: &TensorProto) -> Option<Const> {
    use tract_onnx::pb::tensor_proto::DataLocation;
    if t.data_location == Some(DataLocation::External as i32) {
        return None;
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    let count: usize = dims.iter().product();
    let raw = &t.raw_data;
    let values = match DataType::try_from(t.data_type).ok()? {
        DataType::Float => Values::Floats(if raw.is_empty() {
            t.float_data.clone()
        } else {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }),
        // int32_data holds int8 and uint8 values widened (and may hold any int32: the range
        // of a zero point is checked where it is read).
        DataType::Int8 => Values::Ints(if raw.is_empty() {
            t.int32_data.clone()
        } else {
            raw.iter().map(|&b| (b as i8).into()).collect()
        }),
        DataType::Uint8 => Values::Ints(if raw.is_empty() {
            t.int32_data.clone()
        } else {
            raw.iter().map(|&b| b.into()).collect()
        }),
        DataType::Int32 => Values::Ints(if raw.is_empty() {
            t.int32_data.clone()
        } else {
            raw.chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }),
        _ => return None,
    };
    let n = match &values {
        Values::Floats(v) => v.len(),
        Values::Ints(v) => v.len(),
    };
    (n == count).then_some(Const {
        data_type: t.data_type,
        dims,
        values,
    })
}

/// Most elements a folded constant may have (zero points and shapes are small; this keeps a
/// hostile shape from allocating).
const MAX_FOLDED: usize = 1 << 16;

/// Fold `ConstantOfShape` of a constant shape, and `Cast` of a constant, into `Constant`
/// nodes: PyTorch's exporter computes some zero points so (`Cast(ConstantOfShape(shape))`),
/// and the parameters read below must be constants.
fn fold_constant_chains(graph: &mut tract_onnx::pb::GraphProto) {
    let read: HashSet<String> = graph
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "ConstantOfShape" | "Cast"))
        .filter_map(|n| n.input.first().cloned())
        .collect();
    let mut known: HashMap<String, TensorProto> = graph
        .initializer
        .iter()
        .filter(|t| read.contains(&t.name))
        .map(|t| (t.name.clone(), t.clone()))
        .collect();
    for i in topological(graph.node.as_slice()) {
        let node = &graph.node[i];
        let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
        if node.op_type == "Constant" {
            if let Some(out) = node.output.first().filter(|o| read.contains(*o)) {
                if let Some(t) = attr("value").and_then(|a| a.t.as_ref()) {
                    known.insert(out.clone(), t.clone());
                }
            }
            continue;
        }
        let (Some(input), Some(output)) = (node.input.first(), node.output.first()) else {
            continue;
        };
        let folded = match node.op_type.as_str() {
            "ConstantOfShape" => known.get(input).and_then(|shape| {
                let dims: Vec<i64> = numbers(shape)?.iter().map(|&d| d as i64).collect();
                let count = dims
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))?;
                let fill = attr("value").and_then(|a| a.t.as_ref());
                let (ty, value) = match fill {
                    Some(t) => (t.data_type, *numbers(t)?.first()?),
                    None => (DataType::Float as i32, 0.0),
                };
                (count <= MAX_FOLDED).then(|| tensor_of(output, &dims, ty, &vec![value; count]))?
            }),
            "Cast" => known.get(input).and_then(|t| {
                let to = attr("to")?.i as i32;
                let values = numbers(t)?;
                (values.len() <= MAX_FOLDED).then(|| tensor_of(output, &t.dims, to, &values))?
            }),
            _ => None,
        };
        if let Some(t) = folded {
            known.insert(output.clone(), t.clone());
            let n = &mut graph.node[i];
            n.op_type = "Constant".into();
            n.input.clear();
            n.attribute = vec![tract_onnx::pb::AttributeProto {
                name: "value".into(),
                r#type: tract_onnx::pb::attribute_proto::AttributeType::Tensor as i32,
                t: Some(t),
                ..Default::default()
            }];
        }
    }
}

/// The values of a constant of a numeric type the folding handles, as f64 (exact for them).
fn numbers(t: &TensorProto) -> Option<Vec<f64>> {
    let raw = &t.raw_data;
    let from_raw = |size: usize, f: &dyn Fn(&[u8]) -> f64| -> Vec<f64> {
        raw.chunks_exact(size).map(f).collect()
    };
    Some(match DataType::try_from(t.data_type).ok()? {
        DataType::Float if raw.is_empty() => t.float_data.iter().map(|&v| v.into()).collect(),
        DataType::Float => from_raw(4, &|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).into()),
        DataType::Int8 | DataType::Uint8 | DataType::Int32 if raw.is_empty() => {
            t.int32_data.iter().map(|&v| v.into()).collect()
        }
        DataType::Int8 => from_raw(1, &|b| (b[0] as i8).into()),
        DataType::Uint8 => from_raw(1, &|b| b[0].into()),
        DataType::Int32 => from_raw(4, &|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]).into()),
        DataType::Int64 if raw.is_empty() => t.int64_data.iter().map(|&v| v as f64).collect(),
        DataType::Int64 => from_raw(8, &|b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64
        }),
        _ => return None,
    })
}

/// A constant of type `ty` (one the folding handles) holding `values`, as ONNX's Cast
/// converts them (saturating `as` casts: ONNX leaves out-of-range casts undefined).
fn tensor_of(name: &str, dims: &[i64], ty: i32, values: &[f64]) -> Option<TensorProto> {
    let raw: Vec<u8> = match DataType::try_from(ty).ok()? {
        DataType::Float => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        DataType::Int8 => values.iter().map(|&v| v as i8 as u8).collect(),
        DataType::Uint8 => values.iter().map(|&v| v as u8).collect(),
        DataType::Int32 => values
            .iter()
            .flat_map(|&v| (v as i32).to_le_bytes())
            .collect(),
        DataType::Int64 => values
            .iter()
            .flat_map(|&v| (v as i64).to_le_bytes())
            .collect(),
        _ => return None,
    };
    Some(TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: ty,
        raw_data: raw,
        ..Default::default()
    })
}

fn float_tensor(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t.elem_type),
    }
}

fn set_float(v: &mut ValueInfoProto) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.elem_type = DataType::Float as i32;
    }
}

fn type_name(data_type: i32) -> String {
    DataType::try_from(data_type)
        .map(|t| format!("{t:?}").to_lowercase())
        .unwrap_or_else(|_| format!("type {data_type}"))
}

/// Node indices in an order where every producer comes before its readers (file order when
/// it already is; nodes in a cycle, which the checks refuse earlier, last).
fn topological(nodes: &[NodeProto]) -> Vec<usize> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.output {
            producer.insert(o.as_str(), i);
        }
    }
    let mut done = vec![false; nodes.len()];
    let mut order = Vec::with_capacity(nodes.len());
    // Depth-first with an explicit stack.
    for start in 0..nodes.len() {
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if done[i] {
                continue;
            }
            if expanded {
                done[i] = true;
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for inp in &nodes[i].input {
                if let Some(&p) = producer.get(inp.as_str()) {
                    if !done[p] && p != i && !stack.iter().any(|&(s, e)| s == p && e) {
                        stack.push((p, false));
                    }
                }
            }
        }
    }
    order
}
