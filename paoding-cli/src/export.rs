//! ONNX export: turn an IR graph (typically a pruned one) back into an ONNX model, opset 13,
//! that tract, onnxruntime and the ONNX checker accept, and that paoding imports again into the
//! same IR.
//!
//! Mapping, one IR node to one or two ONNX nodes:
//!
//! | IR | ONNX |
//! |---|---|
//! | `Dense` | `Gemm` (`transB = 1`, weights `[units, inputs]`, bias `[units]`), then its activation |
//! | `Conv2d` | `Conv` (`kernel_shape`, `strides`, `dilations`, `pads` = top, left, bottom, right, `group`), then its activation |
//! | `Activation` | `Relu`, `Clip` (an infinite bound is an omitted input), `Sigmoid`, `Tanh`; identity emits nothing |
//! | `BatchNorm` | `Mul` by and `Add` of `[1, C, 1, …]` constants (a factor of one or a zero offset is left out) |
//! | `MaxPool`, `AveragePool` | the same, with explicit `pads` (and `count_include_pad`) |
//! | `GlobalAveragePool`, `Add`, `Softmax`, `Concat`, `Transpose` | the same, axes unchanged |
//! | `Reshape` | `Reshape` with an int64 shape whose batch entry is 0 (copy the input's batch) |
//! | `Pad` | `Pad` in constant mode, int64 `pads` `[begins…, ends…]` and a scalar `constant_value` |
//!
//! Every shape is written with a symbolic batch axis `N`, so the file runs at any batch size.
//! Multiplying by one, adding zero and leaving out an infinite clip bound are exact, so the
//! exported model computes exactly what the IR does. A batch norm's running statistics have no
//! exact ONNX form next to its folded scale and shift, and are not written.
//!
//! Names: ONNX nodes and the values they write are named after the IR's nodes, initializers
//! after their node (`conv1.weight`, `conv1.bias`, …). Characters outside `[A-Za-z0-9_./:-]`
//! become `_`, and clashes get a `_1`, `_2`, … suffix. The graph input keeps the IR input's
//! name and the graph output the IR output's name (when those are already safe).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use paoding_core::ir::{Activation, BatchNorm, Conv2d, Dense, Graph, Op, Pool, ValueId};
use prost::Message;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The default-domain operator set the exporter writes.
pub const OPSET: i64 = 13;

/// The ONNX IR version written: 7, the one that introduced opset 13.
pub const IR_VERSION: i64 = 7;

/// Name of the symbolic batch dimension of the graph's input, output and intermediate values.
pub const BATCH_DIM: &str = "N";

/// The largest message protobuf readers accept (2 GiB - 1); external data is not written.
const MAX_PROTO_BYTES: usize = i32::MAX as usize;

/// Why a graph could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The graph fails [`Graph::check`]: the exporter only writes consistent graphs.
    #[error("cannot export an inconsistent graph: {0}")]
    Graph(#[from] paoding_core::Error),
    /// The model does not fit in one protobuf message, or a size does not fit ONNX's int64.
    #[error("cannot export: {0}")]
    TooLarge(String),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// Serialize `graph` as an ONNX model (opset 13) and return the protobuf bytes.
///
/// `producer_note` becomes the model's `doc_string` (say, what the model was pruned from);
/// `producer_name` is `paoding` and `producer_version` this crate's version.
///
/// ```
/// use paoding_core::ir::{Activation, Dense, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 2]);
/// g.output = g.push(
///     "fc",
///     Op::Dense(Dense {
///         units: 1,
///         inputs: 2,
///         weights: vec![1.0, -1.0],
///         bias: vec![0.5],
///         activation: Activation::Relu,
///     }),
///     &[g.input],
/// )?;
/// let bytes = paoding_cli::export::write_onnx(&g, "pruned from mlp.onnx")?;
/// assert!(!bytes.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_onnx(graph: &Graph, producer_note: &str) -> Result<Vec<u8>, ExportError> {
    let model = to_model(graph, producer_note)?;
    let len = model.encoded_len();
    if len > MAX_PROTO_BYTES {
        return Err(ExportError::TooLarge(format!(
            "the model needs {len} bytes, over the {MAX_PROTO_BYTES} bytes one ONNX file can hold"
        )));
    }
    Ok(model.encode_to_vec())
}

/// [`write_onnx`] into a file, atomically (a temporary file renamed over `path`).
///
/// ```no_run
/// let model = paoding_cli::import::import_onnx("model.onnx".as_ref())?;
/// paoding_cli::export::save_onnx(&model.graph, "pruned by paoding", "pruned.onnx".as_ref())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save_onnx(graph: &Graph, producer_note: &str, path: &Path) -> Result<(), ExportError> {
    let bytes = write_onnx(graph, producer_note)?;
    crate::output::write_atomic(path, &bytes).map_err(|source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Build the ONNX model of `graph` without serializing it.
///
/// ```
/// use paoding_core::ir::{Activation, Graph, Op};
///
/// let mut g = Graph::new("x", vec![1, 3]);
/// g.output = g.push("act", Op::Activation(Activation::Tanh), &[g.input])?;
/// let model = paoding_cli::export::to_model(&g, "")?;
/// let graph = model.graph.as_ref().expect("a graph");
/// assert_eq!(graph.node[0].op_type, "Tanh");
/// assert_eq!(model.producer_name, "paoding");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_model(graph: &Graph, producer_note: &str) -> Result<ModelProto, ExportError> {
    graph.check()?;
    let mut b = Builder::new(graph);
    let input_name = b.values.reserve(&graph.values[graph.input].name, "input");
    b.names[graph.input] = Some(input_name.clone());
    let output_name = (graph.output != graph.input)
        .then(|| b.values.reserve(&graph.values[graph.output].name, "output"));
    if let Some(name) = &output_name {
        b.names[graph.output] = Some(name.clone());
    }
    for node in &graph.nodes {
        b.node(node)?;
    }
    let output_name = match output_name {
        Some(name) => name,
        None => {
            // No node between input and output: ONNX needs a node to produce the output.
            let name = b.values.reserve(
                &format!("{}_output", graph.values[graph.input].name),
                "output",
            );
            let node_name = b.nodes_names.reserve("output", "output");
            b.emit(
                "Identity",
                node_name,
                vec![input_name.clone()],
                &name,
                vec![],
            );
            name
        }
    };
    let input = value_info(&input_name, graph.shape(graph.input))?;
    let output = value_info(&output_name, graph.shape(graph.output))?;
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "paoding".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: producer_note.into(),
        graph: Some(GraphProto {
            name: "paoding".into(),
            node: b.nodes,
            initializer: b.initializers,
            input: vec![input],
            output: vec![output],
            value_info: b.value_info,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Names already used in one ONNX namespace (values and initializers, or nodes).
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    /// A safe, unused name close to `wanted` (or `fallback` if nothing of it is usable).
    fn reserve(&mut self, wanted: &str, fallback: &str) -> String {
        let base: String = wanted
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_./:-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = if base.is_empty() {
            fallback.to_string()
        } else {
            base
        };
        let mut name = base.clone();
        let mut n = 0usize;
        while self.0.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.0.insert(name.clone());
        name
    }
}

struct Builder<'g> {
    graph: &'g Graph,
    /// ONNX name of each IR value once written (aliases share their source's name).
    names: Vec<Option<String>>,
    values: Names,
    nodes_names: Names,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    value_info: Vec<ValueInfoProto>,
}

impl<'g> Builder<'g> {
    fn new(graph: &'g Graph) -> Self {
        Builder {
            graph,
            names: vec![None; graph.values.len()],
            values: Names::default(),
            nodes_names: Names::default(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            value_info: Vec::new(),
        }
    }

    fn name_of(&self, v: ValueId) -> Result<String, ExportError> {
        self.names[v].clone().ok_or_else(|| {
            // `Graph::check` guarantees the order; this only guards against a defect here.
            ExportError::Graph(paoding_core::Error::Graph(format!(
                "value '{}' is read before it is written",
                self.graph.values[v].name
            )))
        })
    }

    /// Export one IR node.
    fn node(&mut self, node: &paoding_core::ir::Node) -> Result<(), ExportError> {
        let inputs = node
            .inputs
            .iter()
            .map(|&v| self.name_of(v))
            .collect::<Result<Vec<_>, _>>()?;
        let out = node.output;
        let shape = self.graph.shape(out).to_vec();
        let n = node.name.as_str();
        let x = inputs.first().cloned().unwrap_or_default();
        match &node.op {
            Op::Dense(d) => {
                let y = self.pre_activation(n, out, d.activation, &shape)?;
                let (w, b) = self.dense_params(n, d)?;
                let name = self.nodes_names.reserve(n, "gemm");
                self.emit("Gemm", name, vec![x, w, b], &y, vec![int("transB", 1)]);
                self.finish_activation(n, out, d.activation, y)?;
            }
            Op::Conv2d(c) => {
                let y = self.pre_activation(n, out, c.activation, &shape)?;
                let (w, b) = self.conv_params(n, c)?;
                let name = self.nodes_names.reserve(n, "conv");
                let attrs = vec![
                    ints("kernel_shape", &c.kernel)?,
                    ints("strides", &c.stride)?,
                    ints("dilations", &c.dilation)?,
                    ints("pads", &c.padding)?,
                    int("group", to_i64(c.groups)?),
                ];
                self.emit("Conv", name, vec![x, w, b], &y, attrs);
                self.finish_activation(n, out, c.activation, y)?;
            }
            Op::Activation(a) => {
                if is_noop(*a) {
                    self.alias(n, out, x)?;
                } else {
                    let y = self.output_name(n, out, &shape)?;
                    self.activation(n, *a, x, &y, false);
                }
            }
            Op::BatchNorm(bn) => self.batch_norm(n, out, bn, x, &shape)?,
            Op::Softmax { axis } => {
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "softmax");
                self.emit(
                    "Softmax",
                    name,
                    vec![x],
                    &y,
                    vec![int("axis", to_i64(*axis)?)],
                );
            }
            Op::MaxPool(p) => {
                let y = self.output_name(n, out, &shape)?;
                let attrs = pool_attrs(p, false)?;
                let name = self.nodes_names.reserve(n, "maxpool");
                self.emit("MaxPool", name, vec![x], &y, attrs);
            }
            Op::AveragePool(p) => {
                let y = self.output_name(n, out, &shape)?;
                let attrs = pool_attrs(p, true)?;
                let name = self.nodes_names.reserve(n, "avgpool");
                self.emit("AveragePool", name, vec![x], &y, attrs);
            }
            Op::GlobalAveragePool => {
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "gap");
                self.emit("GlobalAveragePool", name, vec![x], &y, vec![]);
            }
            Op::Add => {
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "add");
                self.emit("Add", name, inputs, &y, vec![]);
            }
            Op::Concat { axis } => {
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "concat");
                self.emit(
                    "Concat",
                    name,
                    inputs,
                    &y,
                    vec![int("axis", to_i64(*axis)?)],
                );
            }
            Op::Reshape { shape: to } => {
                // 0 copies the input's batch, so the file runs at any batch size.
                let mut dims = vec![0i64];
                for &d in to.iter().skip(1) {
                    dims.push(to_i64(d)?);
                }
                let s = self.int64_init(&format!("{n}.shape"), &[to_i64(dims.len())?], &dims);
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "reshape");
                self.emit("Reshape", name, vec![x, s], &y, vec![]);
            }
            Op::Transpose { perm } => {
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "transpose");
                self.emit("Transpose", name, vec![x], &y, vec![ints("perm", perm)?]);
            }
            Op::Pad { pads, value } => {
                let mut flat = Vec::with_capacity(2 * pads.len());
                for &(before, _) in pads {
                    flat.push(to_i64(before)?);
                }
                for &(_, after) in pads {
                    flat.push(to_i64(after)?);
                }
                let p = self.int64_init(&format!("{n}.pads"), &[to_i64(flat.len())?], &flat);
                let v = self.f32_init(&format!("{n}.value"), &[], &[*value]);
                let y = self.output_name(n, out, &shape)?;
                let name = self.nodes_names.reserve(n, "pad");
                let mode = AttributeProto {
                    name: "mode".into(),
                    r#type: AttributeType::String as i32,
                    s: b"constant".to_vec(),
                    ..Default::default()
                };
                self.emit("Pad", name, vec![x, p, v], &y, vec![mode]);
            }
        }
        Ok(())
    }

    /// The name the IR value `v` gets in ONNX: reserved already for the graph output, else
    /// after its node; declared in `value_info` with a symbolic batch.
    fn output_name(
        &mut self,
        node: &str,
        v: ValueId,
        shape: &[usize],
    ) -> Result<String, ExportError> {
        if let Some(name) = &self.names[v] {
            return Ok(name.clone());
        }
        let name = self.values.reserve(node, "value");
        self.value_info.push(value_info(&name, shape)?);
        self.names[v] = Some(name.clone());
        Ok(name)
    }

    /// Where a Gemm or Conv writes: the node's output, or an intermediate value when an
    /// activation follows.
    fn pre_activation(
        &mut self,
        node: &str,
        v: ValueId,
        act: Activation,
        shape: &[usize],
    ) -> Result<String, ExportError> {
        if is_noop(act) {
            return self.output_name(node, v, shape);
        }
        let name = self.values.reserve(&format!("{node}.preact"), "preact");
        self.value_info.push(value_info(&name, shape)?);
        Ok(name)
    }

    /// The fused activation of a Gemm or Conv, reading `y` and writing the node's output.
    fn finish_activation(
        &mut self,
        node: &str,
        v: ValueId,
        act: Activation,
        y: String,
    ) -> Result<(), ExportError> {
        if is_noop(act) {
            return Ok(());
        }
        let shape = self.graph.shape(v).to_vec();
        let out = self.output_name(node, v, &shape)?;
        self.activation(node, act, y, &out, true);
        Ok(())
    }

    /// One activation node (never called for a no-op).
    fn activation(&mut self, node: &str, act: Activation, x: String, y: &str, fused: bool) {
        let wanted = if fused {
            format!("{node}.{}", act_suffix(act))
        } else {
            node.to_string()
        };
        let name = self.nodes_names.reserve(&wanted, "activation");
        match act {
            Activation::Relu => self.emit("Relu", name, vec![x], y, vec![]),
            Activation::Sigmoid => self.emit("Sigmoid", name, vec![x], y, vec![]),
            Activation::Tanh => self.emit("Tanh", name, vec![x], y, vec![]),
            Activation::Clip { min, max } => {
                // An infinite (or NaN, which `f32::max` ignores) bound is an omitted input.
                let lo = (min > f32::NEG_INFINITY)
                    .then(|| self.f32_init(&format!("{node}.min"), &[], &[min]));
                let hi = (max < f32::INFINITY)
                    .then(|| self.f32_init(&format!("{node}.max"), &[], &[max]));
                let mut inputs = vec![x, lo.unwrap_or_default()];
                if let Some(hi) = hi {
                    inputs.push(hi);
                } else if inputs[1].is_empty() {
                    inputs.pop();
                }
                self.emit("Clip", name, inputs, y, vec![]);
            }
            Activation::Identity => self.emit("Identity", name, vec![x], y, vec![]),
            Activation::LeakyRelu { alpha } => {
                let alpha = AttributeProto {
                    name: "alpha".into(),
                    r#type: AttributeType::Float as i32,
                    f: alpha,
                    ..Default::default()
                };
                self.emit("LeakyRelu", name, vec![x], y, vec![alpha]);
            }
        }
    }

    /// A node that changes nothing: its output is its input, unless it is the graph output,
    /// which an `Identity` node then writes.
    fn alias(&mut self, node: &str, v: ValueId, x: String) -> Result<(), ExportError> {
        if v == self.graph.output {
            let shape = self.graph.shape(v).to_vec();
            let y = self.output_name(node, v, &shape)?;
            let name = self.nodes_names.reserve(node, "identity");
            self.emit("Identity", name, vec![x], &y, vec![]);
        } else {
            self.names[v] = Some(x);
        }
        Ok(())
    }

    fn batch_norm(
        &mut self,
        n: &str,
        v: ValueId,
        bn: &BatchNorm,
        x: String,
        shape: &[usize],
    ) -> Result<(), ExportError> {
        let scales = bn.scale.iter().any(|&s| s != 1.0);
        let shifts = bn.shift.iter().any(|&t| t != 0.0);
        if !scales && !shifts {
            return self.alias(n, v, x);
        }
        // [1, C, 1, ...] broadcasts along axis 1 whatever the input's rank.
        let mut dims = vec![1i64; shape.len()];
        dims[1] = to_i64(shape[1])?;
        let mut x = x;
        if scales {
            let s = self.f32_init(&format!("{n}.scale"), &dims, &bn.scale);
            let y = if shifts {
                let y = self.values.reserve(&format!("{n}.scaled"), "scaled");
                self.value_info.push(value_info(&y, shape)?);
                y
            } else {
                self.output_name(n, v, shape)?
            };
            let name = self.nodes_names.reserve(
                &if shifts {
                    format!("{n}.mul")
                } else {
                    n.to_string()
                },
                "mul",
            );
            self.emit("Mul", name, vec![x, s], &y, vec![]);
            x = y;
        }
        if shifts {
            let t = self.f32_init(&format!("{n}.shift"), &dims, &bn.shift);
            let y = self.output_name(n, v, shape)?;
            let name = self.nodes_names.reserve(n, "add");
            self.emit("Add", name, vec![x, t], &y, vec![]);
        }
        Ok(())
    }

    fn dense_params(&mut self, n: &str, d: &Dense) -> Result<(String, String), ExportError> {
        let w = self.f32_init(
            &format!("{n}.weight"),
            &[to_i64(d.units)?, to_i64(d.inputs)?],
            &d.weights,
        );
        let b = self.f32_init(&format!("{n}.bias"), &[to_i64(d.units)?], &d.bias);
        Ok((w, b))
    }

    fn conv_params(&mut self, n: &str, c: &Conv2d) -> Result<(String, String), ExportError> {
        let dims = [
            to_i64(c.out_channels)?,
            to_i64(c.group_inputs())?,
            to_i64(c.kernel[0])?,
            to_i64(c.kernel[1])?,
        ];
        let w = self.f32_init(&format!("{n}.weight"), &dims, &c.weights);
        let b = self.f32_init(&format!("{n}.bias"), &[to_i64(c.out_channels)?], &c.bias);
        Ok((w, b))
    }

    fn f32_init(&mut self, wanted: &str, dims: &[i64], data: &[f32]) -> String {
        let name = self.values.reserve(wanted, "const");
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn int64_init(&mut self, wanted: &str, dims: &[i64], data: &[i64]) -> String {
        let name = self.values.reserve(wanted, "const");
        self.initializers.push(TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: DataType::Int64 as i32,
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn emit(
        &mut self,
        op: &str,
        name: String,
        input: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            op_type: op.into(),
            name,
            input,
            output: vec![output.into()],
            attribute,
            ..Default::default()
        });
    }
}

/// True for activations that change nothing (identity, or a clip with no finite bound).
fn is_noop(act: Activation) -> bool {
    match act {
        Activation::Identity => true,
        Activation::Clip { min, max } => {
            (min.is_nan() || min == f32::NEG_INFINITY) && (max.is_nan() || max == f32::INFINITY)
        }
        _ => false,
    }
}

fn act_suffix(act: Activation) -> &'static str {
    match act.name() {
        "" => "identity",
        name => name,
    }
}

fn pool_attrs(p: &Pool, average: bool) -> Result<Vec<AttributeProto>, ExportError> {
    let mut attrs = vec![
        ints("kernel_shape", &p.kernel)?,
        ints("strides", &p.stride)?,
        ints("pads", &p.padding)?,
    ];
    if average {
        attrs.push(int("count_include_pad", i64::from(p.count_include_pad)));
    }
    Ok(attrs)
}

fn to_i64(n: usize) -> Result<i64, ExportError> {
    i64::try_from(n).map_err(|_| ExportError::TooLarge(format!("size {n} does not fit in int64")))
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

fn ints(name: &str, values: &[usize]) -> Result<AttributeProto, ExportError> {
    Ok(AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values
            .iter()
            .map(|&v| to_i64(v))
            .collect::<Result<_, _>>()?,
        ..Default::default()
    })
}

/// A float tensor's type, batch axis symbolic.
fn value_info(name: &str, shape: &[usize]) -> Result<ValueInfoProto, ExportError> {
    use tensor_shape_proto::{dimension::Value, Dimension};
    let mut dim = Vec::with_capacity(shape.len());
    for (axis, &d) in shape.iter().enumerate() {
        dim.push(Dimension {
            value: Some(if axis == 0 {
                Value::DimParam(BATCH_DIM.into())
            } else {
                Value::DimValue(to_i64(d)?)
            }),
            ..Default::default()
        });
    }
    Ok(ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    })
}
