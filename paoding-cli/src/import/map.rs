//! Map tract's typed graph (before decluttering, so operators stay close to ONNX) onto the IR.
//!
//! Any node whose inputs are all constants is evaluated by tract itself, so constant
//! subgraphs (weight dequantisation, shape arithmetic, transposed weights) fold whatever
//! operators they use. Every other node must map onto an IR operator; its output shape is
//! checked against tract's.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use paoding_core::estimate::InputRange;
use paoding_core::ir::{Activation, BatchNorm, Conv2d, Dense, Graph, Op, Pool, ValueId};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{Pad, PadMode, TypedConcat};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::identity::Identity;
use tract_onnx::tract_core::ops::nn::{
    DataFormat, LeakyRelu, Reduce, Reducer, Softmax, SoftmaxKind,
};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::infer::InferenceNode;

use super::checks::MAX_ELEMENTS;
use super::qdq::Qdq;
use super::FileQuant;
use crate::error::ImportError;
use paoding_core::quant::imported::{self, FileLayer};
use paoding_core::quant::params::QParams;
use paoding_runtime::format::Dtype;

#[derive(Clone)]
enum Mapped {
    Const(Arc<Tensor>),
    Value(ValueId),
}

/// What [`load_and_map`] gives: the graph, the graph before its batch norms are folded (when
/// they carry statistics), the input range the file implies, and a quantized file's int8 form.
pub(super) type Loaded = (Graph, Option<Graph>, Option<InputRange>, Option<FileQuant>);

pub(super) fn load_and_map(
    path: &Path,
    dir: &Path,
    proto: ModelProto,
    onnx: &tract_onnx::Onnx,
    qdq: Option<&Qdq>,
) -> Result<Loaded, ImportError> {
    let tract_err = |e: TractError| ImportError::Tract {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    };
    let model_err = |reason: String| ImportError::Model {
        path: path.to_path_buf(),
        reason,
    };
    // The ONNX node names and operator types, for messages; then the protobuf can go (tract
    // has copied its tensors).
    let onnx_nodes: HashMap<String, String> = proto
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .map(|n| (n.name.clone(), n.op_type.clone()))
        .collect();
    let parsed = onnx.parse(&proto, dir.to_str()).map_err(tract_err)?;
    drop(proto);
    if !parsed.unresolved_inputs.is_empty() {
        return Err(model_err(format!(
            "inputs {:?} are never defined",
            parsed.unresolved_inputs
        )));
    }
    let mut model = parsed.model;
    let n_inputs = model.input_outlets().map_err(tract_err)?.len();
    if n_inputs != 1 {
        return Err(model_err(format!(
            "the model has {n_inputs} inputs; paoding handles models with exactly one"
        )));
    }
    let fact = model.input_fact(0).map_err(tract_err)?.clone();
    if let Some(dt) = fact.datum_type.concretize() {
        if dt != f32::datum_type() {
            return Err(model_err(format!(
                "the input is {dt:?}; paoding handles f32 inputs"
            )));
        }
    }
    let dims = fact
        .shape
        .concretize()
        .ok_or_else(|| model_err("the input's rank is unknown".into()))?;
    let mut shape = Vec::with_capacity(dims.len());
    for (axis, d) in dims.iter().enumerate() {
        match d.to_i64() {
            Ok(n) if n > 0 => shape.push(n as usize),
            // The batch axis (symbolic or unknown) is fixed to 1.
            _ if axis == 0 => shape.push(1),
            _ => {
                return Err(model_err(format!(
                    "input dimension {axis} is not fixed ({d}); paoding needs static shapes"
                )))
            }
        }
    }
    if shape.first() != Some(&1) {
        return Err(model_err(format!(
            "the input shape {shape:?} has no batch axis of 1 first"
        )));
    }
    model
        .set_input_fact(0, f32::fact(&shape).into())
        .map_err(tract_err)?;
    // Only what the output depends on: tract's analysis visits every node, dead ones too,
    // and `bound_sizes` checks the live ones (a dead BatchNormalization of a vector reached
    // tract's unchecked indexing, found by the import fuzz target).
    let mut model = model.into_compact().map_err(tract_err)?;
    bound_sizes(&mut model, path)?;
    let bn_stats = bn_statistics(&model);
    let typed = model.into_typed().map_err(tract_err)?;
    let outputs = typed.output_outlets().map_err(tract_err)?.to_vec();
    if outputs.len() != 1 {
        return Err(model_err(format!(
            "the model has {} outputs; paoding handles models with exactly one",
            outputs.len()
        )));
    }
    let input_name = typed
        .node(typed.input_outlets().map_err(tract_err)?[0].node)
        .name
        .clone();
    let mut mapper = Mapper {
        path,
        typed: &typed,
        graph: Graph::new(input_name, shape),
        mapped: HashMap::new(),
        onnx_nodes,
        bn_stats,
    };
    for id in typed.eval_order().map_err(tract_err)? {
        mapper.map_node(id)?;
    }
    match mapper.mapped.get(&outputs[0]) {
        Some(Mapped::Value(v)) => mapper.graph.output = *v,
        _ => return Err(model_err("the output does not depend on the input".into())),
    }
    if let Some(qdq) = qdq {
        let mut tags = value_params(path, &typed, &mapper.mapped, mapper.graph.input, qdq)?;
        let mut graph = mapper.graph;
        drop(typed);
        let implied = paoding_core::estimate::implied_input_range(&graph);
        saturate(&mut graph, &tags);
        paoding_core::simplify::simplify_tagged(&mut graph, &mut tags).map_err(|source| {
            ImportError::Graph {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let quant = file_quant(path, &graph, tags, qdq)?;
        // An integer input spans its codes.
        let input_range = match qdq.input {
            Some((p, _)) => {
                let (lo, hi) = p.range();
                Some(InputRange {
                    lo,
                    hi,
                    source: "the int8 input's quantization".into(),
                })
            }
            None => implied,
        };
        return Ok((graph, None, input_range, Some(quant)));
    }
    let simplify = |mut graph: Graph| {
        paoding_core::simplify::simplify(&mut graph).map_err(|source| ImportError::Graph {
            path: path.to_path_buf(),
            source,
        })?;
        Ok::<_, ImportError>(graph)
    };
    let with_stats = mapper.graph;
    // The IR has its own copy of every weight now.
    drop(typed);
    let input_range = paoding_core::estimate::implied_input_range(&with_stats);
    let kept = with_stats
        .nodes
        .iter()
        .any(|n| matches!(&n.op, Op::BatchNorm(b) if b.stats.is_some()));
    if !kept {
        return Ok((simplify(with_stats)?, None, input_range, None));
    }
    let mut folded = with_stats.clone();
    for node in &mut folded.nodes {
        if let Op::BatchNorm(b) = &mut node.op {
            b.stats = None;
        }
    }
    Ok((
        simplify(folded)?,
        Some(simplify(with_stats)?),
        input_range,
        None,
    ))
}

/// The file's quantization parameters on the IR's values (before simplification), through
/// the ONNX tensor names tract keeps as outlet labels. Two names of one value (an `Identity`
/// between them) must agree.
fn value_params(
    path: &Path,
    typed: &TypedModel,
    mapped: &HashMap<OutletId, Mapped>,
    input: ValueId,
    qdq: &Qdq,
) -> Result<Vec<Option<QParams>>, ImportError> {
    let mut tags: Vec<Option<QParams>> = Vec::new();
    let mut set = |v: ValueId, p: QParams, name: &str| {
        if tags.len() <= v {
            tags.resize(v + 1, None);
        }
        match tags[v] {
            Some(old) if old != p => Err(ImportError::Quantization {
                path: path.to_path_buf(),
                node: name.to_string(),
                op: "tensor".into(),
                reason: format!(
                    "quantized with scale {} and zero point {}, and also with scale {} and \
                     zero point {}",
                    p.scale, p.zero_point, old.scale, old.zero_point
                ),
            }),
            _ => {
                tags[v] = Some(p);
                Ok(())
            }
        }
    };
    if let Some((p, _)) = qdq.input {
        set(input, p, "the graph input")?;
    }
    // In a fixed order, so that a conflict is reported the same way every time.
    let mut labels: Vec<(&OutletId, &String)> = typed.outlet_labels.iter().collect();
    labels.sort();
    for (outlet, label) in labels {
        if let (Some(&p), Some(Mapped::Value(v))) = (qdq.values.get(label), mapped.get(outlet)) {
            set(*v, p, label)?;
        }
    }
    Ok(tags)
}

/// Make the f32 graph saturate where the int8 model does: a quantized value cannot leave
/// the range its codes cover, so the layer or ReLU that writes it clips to that range (a
/// ReLU becomes a clip, a layer without activation gets one). The int8 model is unchanged
/// (the clip's codes are the whole int8 range), and the f32 graph — what pruning refits and
/// probes are synthesized on — stays the int8 model without its rounding, even for inputs
/// that drive activations out of their calibrated ranges.
fn saturate(graph: &mut Graph, tags: &[Option<QParams>]) {
    for node in &mut graph.nodes {
        let Some(Some(p)) = tags.get(node.output) else {
            continue;
        };
        let (lo, hi) = p.range();
        let slot = match &mut node.op {
            Op::Dense(d) if d.activation == Activation::Identity => &mut d.activation,
            Op::Conv2d(c) if c.activation == Activation::Identity => &mut c.activation,
            Op::Activation(a) => a,
            _ => continue,
        };
        *slot = match *slot {
            Activation::Identity => Activation::Clip { min: lo, max: hi },
            Activation::Relu => Activation::Clip {
                min: 0.0,
                max: hi.max(0.0),
            },
            Activation::Clip { min, max } => Activation::Clip {
                min: min.max(lo),
                max: max.min(hi).max(min.max(lo)),
            },
            other => other,
        };
    }
}

/// The file's int8 form on the simplified graph.
fn file_quant(
    path: &Path,
    graph: &Graph,
    tags: Vec<Option<QParams>>,
    qdq: &Qdq,
) -> Result<FileQuant, ImportError> {
    let layers: Vec<Option<FileLayer>> = graph
        .nodes
        .iter()
        .map(|n| {
            // tract names the nodes of an operator it expands `{onnx name}.{part}`.
            let mut name = n.name.as_str();
            loop {
                if let Some(l) = qdq.layers.get(name) {
                    return Some(l.clone());
                }
                name = name.rsplit_once('.')?.0;
            }
        })
        .collect();
    let quantized = imported::from_file(graph, tags, &layers).map_err(|e| {
        let node = &graph.nodes[e.node];
        ImportError::Quantization {
            path: path.to_path_buf(),
            node: node.name.clone(),
            op: node.op.kind().to_string(),
            reason: e.reason,
        }
    })?;
    let io = match (qdq.input, qdq.output) {
        (Some(_), Some(_)) => Dtype::I8,
        _ => Dtype::F32,
    };
    Ok(FileQuant {
        quantized,
        io,
        unsigned_io: [
            qdq.input.is_some_and(|(_, u)| u),
            qdq.output.is_some_and(|(_, u)| u),
        ],
    })
}

/// Walk the graph in order, as tract's analysis will, and refuse any node whose output
/// tract's shape rules declare larger than [`MAX_ELEMENTS`] *before* tract evaluates it:
/// tract computes every node whose inputs are all constants while it types the graph, so a
/// ConstantOfShape, Expand, Tile, Range or broadcast of small constants could otherwise
/// allocate terabytes. A node whose output size cannot be known before evaluating its
/// constant inputs is refused too, and so is a graph whose constants together would exceed a
/// budget.
fn bound_sizes(model: &mut InferenceModel, path: &Path) -> Result<(), ImportError> {
    /// Most elements all the values tract computes from constants may hold together: 8 Mi
    /// (64 MiB even of 8-byte types), far above any microcontroller model's weights. Each
    /// alone is bounded by `MAX_ELEMENTS`, but tract keeps them all (found by the import fuzz
    /// target: a chain of constant Pad, Gather and Transpose took 360 MB and 0.7 s).
    const MAX_FOLDED_ELEMENTS: u64 = 1 << 23;
    let tract_err = |e: TractError| ImportError::Tract {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    };
    let oversized = |node: &InferenceNode, why: &str| ImportError::Model {
        path: path.to_path_buf(),
        reason: format!(
            "node '{}' ({}): its output {why}",
            node.name,
            node.op.name()
        ),
    };
    // A panic in tract's rules or evaluation is caught here, to name the node.
    let panicked =
        |node: &InferenceNode, payload: Box<dyn std::any::Any + Send>| ImportError::Tract {
            path: path.to_path_buf(),
            reason: format!(
                "node '{}' ({}): internal panic: {}",
                node.name,
                node.op.name(),
                super::panic_message(&*payload)
            ),
        };
    // Elements of every constant tract will have computed so far: it keeps them all.
    let mut folded: u64 = 0;
    for id in model.eval_order().map_err(tract_err)? {
        let (inputs, outputs) = model.node_facts(id).map_err(tract_err)?;
        let inputs: TVec<InferenceFact> = inputs.into_iter().cloned().collect();
        let outputs: TVec<InferenceFact> = outputs.into_iter().cloned().collect();
        let observed: TVec<InferenceFact> = {
            let node = model.node(id);
            node.op
                .observe_outlets(model, node)
                .and_then(|o| o.iter().map(|o| model.outlet_fact(*o).cloned()).collect())
                .map_err(tract_err)?
        };
        if let Some(least) = least_rank(&model.node(id).op.name()) {
            let rank = inputs
                .first()
                .and_then(|f| f.shape.rank().concretize())
                .map(|r| r.max(0) as usize);
            if rank.is_some_and(|r| r < least) {
                let node = model.node(id);
                return Err(ImportError::Model {
                    path: path.to_path_buf(),
                    reason: format!(
                        "node '{}' ({}): its input has {} axes; it needs at least {least} (N, C{})",
                        node.name,
                        node.op.name(),
                        rank.unwrap_or_default(),
                        if least > 2 { ", spatial axes" } else { "" }
                    ),
                });
            }
        }
        let op = &mut model.node_mut(id).op;
        let (_, declared, _) = catch_unwind(AssertUnwindSafe(|| {
            op.infer_facts(refs(&inputs), refs(&outputs), refs(&observed))
        }))
        .map_err(|p| panicked(model.node(id), p))?
        .map_err(tract_err)?;
        let constant = !inputs.is_empty() && inputs.iter().all(|f| f.value.concretize().is_some());
        if constant && model.node(id).op.name() == "Range" {
            check_range_length(&inputs, MAX_ELEMENTS)
                .map_err(|why| oversized(model.node(id), &why))?;
        }
        for fact in &declared {
            let dims: Vec<Option<i64>> = fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect();
            // The known dimensions bound the size from below.
            let elements = dims
                .iter()
                .flatten()
                .try_fold(1u64, |n, &d| n.checked_mul(d.max(0) as u64));
            let unknown = fact.shape.is_open() || dims.contains(&None);
            if constant {
                folded = folded.saturating_add(elements.unwrap_or(u64::MAX));
            }
            let why = if elements.is_none_or(|n| n > MAX_ELEMENTS) {
                format!("would have more than {MAX_ELEMENTS} elements")
            } else if folded > MAX_FOLDED_ELEMENTS {
                format!(
                    "is computed from constants, and all such values would hold more than \
                     {MAX_FOLDED_ELEMENTS} elements together"
                )
            } else if constant && unknown {
                "is computed from constants but its size cannot be known before".into()
            } else {
                continue;
            };
            return Err(oversized(model.node(id), &why));
        }
        let op = &mut model.node_mut(id).op;
        let (_, inferred, _) = catch_unwind(AssertUnwindSafe(|| {
            op.infer(refs(&inputs), refs(&outputs), refs(&observed))
        }))
        .map_err(|p| panicked(model.node(id), p))?
        .map_err(tract_err)?;
        for (slot, fact) in inferred.into_iter().enumerate() {
            let outlet = OutletId::new(id, slot);
            let unified = model
                .outlet_fact(outlet)
                .and_then(|old| old.unify(&fact))
                .map_err(tract_err)?;
            model.set_outlet_fact(outlet, unified).map_err(tract_err)?;
        }
    }
    Ok(())
}

/// The fewest axes the first input of tract's channel-first operators must have: their shape
/// rules index the channel and spatial axes without checking (an out-of-bounds
/// `get_unchecked`, found by the `import` fuzz target on a BatchNormalization of a vector).
fn least_rank(op: &str) -> Option<usize> {
    match op {
        "BatchNorm" => Some(2),
        "ConvHir" | "ConvTranspose" | "MaxPool" | "OnnxMaxPoolIndices" | "SumPool" => Some(3),
        _ => None,
    }
}

/// A Range's length from its constant start, limit and delta: tract's shape rule for it
/// does not follow its evaluation for large lengths (it declared 0 elements for 2^40).
fn check_range_length(inputs: &[InferenceFact], max: u64) -> Result<(), String> {
    let scalar = |i: usize| -> Option<f64> {
        let t = inputs.get(i)?.value.concretize()?;
        let t = t.cast_to::<f64>().ok()?;
        t.try_as_plain_ram().ok()?.to_scalar::<f64>().ok().copied()
    };
    let (Some(start), Some(limit), Some(delta)) = (scalar(0), scalar(1), scalar(2)) else {
        return Err("is a Range whose bounds are not three numbers".into());
    };
    let length = ((limit - start) / delta).ceil();
    if length.is_nan() || length > max as f64 {
        return Err(format!(
            "would have {length} elements (Range from {start} to {limit} by {delta}), more than {max}"
        ));
    }
    Ok(())
}

fn refs(facts: &[InferenceFact]) -> TVec<&InferenceFact> {
    facts.iter().collect()
}

/// Running mean and variance of every ONNX BatchNormalization whose statistics are constants,
/// by node name. tract expands such a node into `{name}.mul` and `{name}` (an add), which
/// [`Mapper::push`] merges back into one batch norm carrying them.
fn bn_statistics(model: &InferenceModel) -> HashMap<String, (Vec<f32>, Vec<f32>)> {
    let mut out = HashMap::new();
    for node in model.nodes() {
        if node.op.name() != "BatchNorm" || node.inputs.len() < 5 {
            continue;
        }
        let read = |i: usize| -> Option<Vec<f32>> {
            let fact = model.outlet_fact(node.inputs[i]).ok()?;
            let t = fact.value.concretize()?;
            f32s(&t)
        };
        if let (Some(mean), Some(var)) = (read(3), read(4)) {
            if mean.len() == var.len() {
                out.insert(node.name.clone(), (mean, var));
            }
        }
    }
    out
}

struct Mapper<'a> {
    path: &'a Path,
    typed: &'a TypedModel,
    graph: Graph,
    mapped: HashMap<OutletId, Mapped>,
    /// ONNX node name → operator type, to name the source of a failing tract node.
    onnx_nodes: HashMap<String, String>,
    /// Running statistics of the ONNX batch norms, by node name.
    bn_stats: HashMap<String, (Vec<f32>, Vec<f32>)>,
}

impl Mapper<'_> {
    fn map_node(&mut self, id: usize) -> Result<(), ImportError> {
        let node = self.typed.node(id);
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for outlet in &node.inputs {
            match self.mapped.get(outlet) {
                Some(m) => inputs.push(m.clone()),
                None => return Err(self.unsupported(id, "reads a value that was not mapped")),
            }
        }
        if node.op_is::<TypedSource>() {
            self.mapped
                .insert(OutletId::new(id, 0), Mapped::Value(self.graph.input));
            return Ok(());
        }
        let consts: Option<TVec<TValue>> = inputs
            .iter()
            .map(|m| match m {
                Mapped::Const(t) => Some(t.clone().into_tvalue()),
                Mapped::Value(_) => None,
            })
            .collect();
        if let Some(consts) = consts {
            return self.fold_constant(id, consts);
        }
        self.check_output_size(id)?;
        let value = self.map_op(id, &inputs)?;
        self.mapped
            .insert(OutletId::new(id, 0), Mapped::Value(value));
        Ok(())
    }

    /// A value the model computes from its input has between 1 and [`MAX_ELEMENTS`] elements
    /// (tract has typed it; nothing of it is allocated yet).
    fn check_output_size(&self, id: usize) -> Result<(), ImportError> {
        let fact = self
            .typed
            .outlet_fact(OutletId::new(id, 0))
            .map_err(|e| self.unsupported(id, &format!("{e}")))?;
        let mut elements: u64 = 1;
        for d in fact.shape.iter() {
            match d.to_i64() {
                Ok(d) if d > 0 => elements = elements.saturating_mul(d as u64),
                Ok(d) => {
                    return Err(ImportError::Model {
                        path: self.path.to_path_buf(),
                        reason: format!(
                            "node '{}': its output has a dimension of {d} ({:?})",
                            self.typed.node(id).name,
                            fact.shape
                        ),
                    })
                }
                Err(_) => {} // symbolic: the batch, fixed to 1 when the graph is run
            }
        }
        if elements > MAX_ELEMENTS {
            return Err(ImportError::Model {
                path: self.path.to_path_buf(),
                reason: format!(
                    "node '{}': its output {:?} has more than {MAX_ELEMENTS} elements",
                    self.typed.node(id).name,
                    fact.shape
                ),
            });
        }
        Ok(())
    }

    fn fold_constant(&mut self, id: usize, inputs: TVec<TValue>) -> Result<(), ImportError> {
        let node = self.typed.node(id);
        let outputs = match node.op.eval_out_of_plan(inputs) {
            Ok(Some(outputs)) => outputs,
            Ok(None) => return Err(self.unsupported(id, "needs a runtime state to evaluate")),
            Err(e) => {
                return Err(
                    self.unsupported(id, &format!("cannot be evaluated on its constants: {e}"))
                )
            }
        };
        for (slot, t) in outputs.into_iter().enumerate() {
            self.mapped
                .insert(OutletId::new(id, slot), Mapped::Const(t.into_arc_tensor()));
        }
        Ok(())
    }

    /// Map one node that reads at least one non-constant value.
    fn map_op(&mut self, id: usize, inputs: &[Mapped]) -> Result<ValueId, ImportError> {
        let node = self.typed.node(id);
        let op = &node.op;
        let values: Vec<ValueId> = inputs
            .iter()
            .filter_map(|m| match m {
                Mapped::Value(v) => Some(*v),
                Mapped::Const(_) => None,
            })
            .collect();
        let x = values[0];
        let x_shape = self.graph.shape(x).to_vec();

        let ir_op = if op.is::<Identity>() {
            return Ok(x);
        } else if let Some(cast) = op.downcast_ref::<Cast>() {
            if cast.to != f32::datum_type() {
                return Err(self.unsupported(id, &format!("casts activations to {:?}", cast.to)));
            }
            return Ok(x);
        } else if windowed_spec(op.as_ref()).is_some() {
            return self.windowed(id, inputs, x, &x_shape);
        } else if let Some(reduce) = op.downcast_ref::<Reduce>() {
            return self.reduce(id, reduce, x, &x_shape);
        } else if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
            return self.binary(id, bin.0.name(), inputs, x, &x_shape);
        } else if let Some(ew) = op.downcast_ref::<ElementWiseOp>() {
            match ew.0.name().as_ref() {
                "Sigmoid" => Op::Activation(Activation::Sigmoid),
                "Tanh" => Op::Activation(Activation::Tanh),
                "LeakyRelu" => {
                    let alpha = ew.0.downcast_ref::<LeakyRelu>().map(|l| l.alpha);
                    match alpha {
                        Some(0.0) => Op::Activation(Activation::Relu),
                        // A positive slope keeps the sign: what backpropagation from the
                        // output and merging units rely on.
                        Some(alpha) if alpha > 0.0 && alpha.is_finite() => {
                            Op::Activation(Activation::LeakyRelu { alpha })
                        }
                        _ => {
                            let why = format!("has slope {alpha:?}; paoding takes a positive one");
                            return Err(self.unsupported_named(id, "LeakyRelu", &why));
                        }
                    }
                }
                other => return Err(self.unsupported_named(id, other, "")),
            }
        } else if let Some(einsum) = op.downcast_ref::<EinSum>() {
            self.einsum(id, einsum, inputs, &x_shape)?
        } else if let Some(softmax) = op.downcast_ref::<Softmax>() {
            if softmax.kind != SoftmaxKind::Softmax || softmax.axes.len() != 1 {
                return Err(self.unsupported(id, "is not a softmax over one axis"));
            }
            Op::Softmax {
                axis: softmax.axes[0],
            }
        } else if let Some(axis_op) = op.downcast_ref::<AxisOp>() {
            match axis_op {
                AxisOp::Move(from, to) => {
                    let mut perm: Vec<usize> = (0..x_shape.len()).collect();
                    let axis = perm.remove(*from);
                    perm.insert(*to, axis);
                    Op::Transpose { perm }
                }
                _ => Op::Reshape {
                    shape: self.output_shape(id)?,
                },
            }
        } else if let Some(concat) = op.downcast_ref::<TypedConcat>() {
            if values.len() != inputs.len() {
                return Err(self.unsupported(id, "concatenates constants with activations"));
            }
            Op::Concat { axis: concat.axis }
        } else if let Some(pad) = op.downcast_ref::<Pad>() {
            match &pad.mode {
                PadMode::Constant(v) if v.len() == 1 => Op::Pad {
                    pads: pad.pads.clone(),
                    value: scalar(v)
                        .ok_or_else(|| self.unsupported(id, "pads with a non-numeric value"))?,
                },
                _ => return Err(self.unsupported(id, "pads in reflect or edge mode")),
            }
        } else {
            return Err(self.unsupported(id, ""));
        };
        self.push(id, ir_op, &values)
    }

    /// Add an IR node for tract node `id` and check its shape against tract's.
    fn push(&mut self, id: usize, op: Op, inputs: &[ValueId]) -> Result<ValueId, ImportError> {
        let name = self.typed.node(id).name.clone();
        if let Some(v) = self.merge_batch_norm(&name, &op, inputs) {
            return Ok(v);
        }
        self.push_as(id, name, op, inputs)
    }

    /// [`Self::push`] under another name, without the batch-norm merge: the last node of a
    /// lowering that takes several.
    fn push_as(
        &mut self,
        id: usize,
        name: String,
        op: Op,
        inputs: &[ValueId],
    ) -> Result<ValueId, ImportError> {
        let expected = self.output_shape(id)?;
        let v = self
            .graph
            .push(name, op, inputs)
            .map_err(|source| ImportError::Graph {
                path: self.path.to_path_buf(),
                source,
            })?;
        if self.graph.shape(v) != expected.as_slice() {
            return Err(self.unsupported(
                id,
                &format!(
                    "maps to shape {:?} where tract computes {expected:?}",
                    self.graph.shape(v)
                ),
            ));
        }
        Ok(v)
    }

    /// The add of tract's `{name}.mul` → `{name}` expansion of a batch norm with known
    /// statistics: fold it into the mul node, which becomes the batch norm with its running
    /// mean and variance (describing the mul's input). `None` when `op` is not that.
    fn merge_batch_norm(&mut self, name: &str, op: &Op, inputs: &[ValueId]) -> Option<ValueId> {
        let (Op::BatchNorm(add), [x]) = (op, inputs) else {
            return None;
        };
        let stats = self.bn_stats.get(name)?;
        let p = self.graph.producer(*x)?;
        let mul_name = format!("{name}.mul");
        let node = &mut self.graph.nodes[p];
        let Op::BatchNorm(mul) = &mut node.op else {
            return None;
        };
        if node.name != mul_name
            || mul.stats.is_some()
            || mul.scale.len() != add.scale.len()
            || stats.0.len() != mul.scale.len()
        {
            return None;
        }
        for c in 0..mul.scale.len() {
            mul.shift[c] = mul.shift[c] * add.scale[c] + add.shift[c];
            mul.scale[c] *= add.scale[c];
        }
        mul.stats = Some(stats.clone());
        node.name = name.to_string();
        Some(*x)
    }

    fn output_shape(&self, id: usize) -> Result<Vec<usize>, ImportError> {
        let fact = self
            .typed
            .outlet_fact(OutletId::new(id, 0))
            .map_err(|e| self.unsupported(id, &format!("{e}")))?;
        if fact.datum_type != f32::datum_type() {
            return Err(self.unsupported(id, &format!("produces {:?} values", fact.datum_type)));
        }
        fact.shape
            .as_concrete()
            .map(<[usize]>::to_vec)
            .ok_or_else(|| self.unsupported(id, "has a dynamic output shape"))
    }

    /// A 2-D convolution, `spec` its geometry (the op's own, or a 1-D one's lifted to 2-D
    /// with [`lift_to_2d`]), `out` its output shape.
    fn conv(
        &self,
        id: usize,
        conv: &Conv,
        spec: &PoolSpec,
        inputs: &[Mapped],
        x_shape: &[usize],
        out: &[usize],
    ) -> Result<Op, ImportError> {
        if conv.q_params.is_some() {
            return Err(self.unsupported(id, "is quantized"));
        }
        if spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || x_shape.len() != 4
        {
            return Err(
                self.unsupported(id, "is not a 1-D or 2-D convolution over [N, C, L] or NCHW")
            );
        }
        let (Some(Mapped::Const(kernel)), Some(Mapped::Const(bias))) =
            (inputs.get(1), inputs.get(2))
        else {
            return Err(self.unsupported(id, "has non-constant weights"));
        };
        let kernel = f32s(kernel).ok_or_else(|| self.unsupported(id, "has non-float weights"))?;
        let (out_c, group) = (spec.output_channels, conv.group);
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let gi = x_shape[1] / group.max(1);
        // Reorder to OIHW whatever tract holds.
        let weights: Vec<f32> = match conv.kernel_fmt {
            KernelFormat::OIHW => kernel,
            KernelFormat::HWIO | KernelFormat::OHWI => {
                let mut w = vec![0.0; kernel.len()];
                for o in 0..out_c {
                    for i in 0..gi {
                        for y in 0..kh {
                            for x in 0..kw {
                                let from = match conv.kernel_fmt {
                                    KernelFormat::HWIO => ((y * kw + x) * gi + i) * out_c + o,
                                    _ => ((o * kh + y) * kw + x) * gi + i,
                                };
                                w[((o * gi + i) * kh + y) * kw + x] =
                                    *kernel.get(from).unwrap_or(&0.0);
                            }
                        }
                    }
                }
                w
            }
        };
        let bias = f32s(bias).ok_or_else(|| self.unsupported(id, "has a non-float bias"))?;
        let bias = match bias.len() {
            0 => vec![0.0; out_c],
            1 => vec![bias[0]; out_c],
            n if n == out_c => bias,
            n => return Err(self.unsupported(id, &format!("has {n} biases for {out_c} channels"))),
        };
        let dilation = spec.dilations.as_ref().map_or([1, 1], |d| [d[0], d[1]]);
        let stride = spec.strides.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let padding = padding(spec, x_shape, out, [kh, kw], dilation, stride);
        Ok(Op::Conv2d(Conv2d {
            out_channels: out_c,
            in_channels: x_shape[1],
            kernel: [kh, kw],
            stride,
            dilation,
            padding,
            groups: group,
            weights,
            bias,
            activation: Activation::Identity,
        }))
    }

    fn max_pool(
        &self,
        id: usize,
        pool: &MaxPool,
        spec: &PoolSpec,
        x_shape: &[usize],
        out: &[usize],
    ) -> Result<Pool, ImportError> {
        if pool.with_index_outputs.is_some() {
            return Err(self.unsupported(id, "returns indices"));
        }
        self.pool(id, spec, x_shape, out, false)
    }

    fn average_pool(
        &self,
        id: usize,
        pool: &SumPool,
        spec: &PoolSpec,
        x_shape: &[usize],
        out: &[usize],
    ) -> Result<Pool, ImportError> {
        if !pool.normalize {
            return Err(self.unsupported(id, "sums without averaging"));
        }
        self.pool(id, spec, x_shape, out, pool.count_include_pad)
    }

    /// A 2-D pooling, `spec` and `out` as for [`Self::conv`].
    fn pool(
        &self,
        id: usize,
        spec: &PoolSpec,
        x_shape: &[usize],
        out: &[usize],
        count_include_pad: bool,
    ) -> Result<Pool, ImportError> {
        if spec.data_format != DataFormat::NCHW
            || spec.kernel_shape.len() != 2
            || x_shape.len() != 4
        {
            return Err(self.unsupported(id, "is not a 1-D or 2-D pooling over [N, C, L] or NCHW"));
        }
        if spec
            .dilations
            .as_ref()
            .is_some_and(|d| d.iter().any(|&d| d != 1))
        {
            return Err(self.unsupported(id, "is dilated"));
        }
        let kernel = [spec.kernel_shape[0], spec.kernel_shape[1]];
        let stride = spec.strides.as_ref().map_or([1, 1], |s| [s[0], s[1]]);
        let padding = padding(spec, x_shape, out, kernel, [1, 1], stride);
        Ok(Pool {
            kernel,
            stride,
            padding,
            count_include_pad,
        })
    }

    /// A convolution or a pooling. A 1-D one (over `[N, C, L]`) is the 2-D op over
    /// `[N, C, 1, L]` between two reshapes (views: the runtime moves no byte for them), the op
    /// keeping the file's name; the kernel's values keep their order (a unit axis moves none),
    /// in every layout tract holds them in.
    fn windowed(
        &mut self,
        id: usize,
        inputs: &[Mapped],
        x: ValueId,
        x_shape: &[usize],
    ) -> Result<ValueId, ImportError> {
        let op = self.typed.node(id).op.as_ref();
        let Some(spec) = windowed_spec(op) else {
            return Err(self.unsupported(id, ""));
        };
        let out = self.output_shape(id)?;
        let one_d = spec.kernel_shape.len() == 1;
        let (spec, in_shape, out) = match (one_d, x_shape, &out[..]) {
            (false, _, _) => (spec.clone(), x_shape.to_vec(), out),
            (true, &[n, c, l], &[on, oc, ol]) => {
                (lift_to_2d(spec), vec![n, c, 1, l], vec![on, oc, 1, ol])
            }
            _ => {
                let why = "is not a 1-D convolution or pooling over [N, C, L]";
                return Err(self.unsupported(id, why));
            }
        };
        let lowered = if let Some(conv) = op.downcast_ref::<Conv>() {
            self.conv(id, conv, &spec, inputs, &in_shape, &out)?
        } else if let Some(pool) = op.downcast_ref::<MaxPool>() {
            Op::MaxPool(self.max_pool(id, pool, &spec, &in_shape, &out)?)
        } else if let Some(pool) = op.downcast_ref::<SumPool>() {
            Op::AveragePool(self.average_pool(id, pool, &spec, &in_shape, &out)?)
        } else {
            return Err(self.unsupported(id, ""));
        };
        if one_d {
            let (row, _) = self.as_row(id, x, x_shape)?;
            self.push_lowered(id, lowered, row)
        } else {
            self.push(id, lowered, &[x])
        }
    }

    /// `x` (`[N, C, L]`) viewed as `[N, C, 1, L]` for node `id`'s 2-D form, and that shape.
    fn as_row(
        &mut self,
        id: usize,
        x: ValueId,
        x_shape: &[usize],
    ) -> Result<(ValueId, Vec<usize>), ImportError> {
        let &[n, c, l] = x_shape else {
            return Err(self.unsupported(id, "has no length axis"));
        };
        let shape = vec![n, c, 1, l];
        let name = format!("{}.as_2d", self.typed.node(id).name);
        let op = Op::Reshape {
            shape: shape.clone(),
        };
        Ok((self.push_inner(name, op, &[x])?, shape))
    }

    /// The end of a 1-D op's 2-D form: `op` under the file's name, then the reshape back to
    /// tract's shape (checked).
    fn push_lowered(&mut self, id: usize, op: Op, input: ValueId) -> Result<ValueId, ImportError> {
        let name = self.typed.node(id).name.clone();
        let v = self.push_inner(name.clone(), op, &[input])?;
        let shape = self.output_shape(id)?;
        self.push_as(id, format!("{name}.as_1d"), Op::Reshape { shape }, &[v])
    }

    /// A node inside a lowering, whose shape tract does not know.
    fn push_inner(
        &mut self,
        name: String,
        op: Op,
        inputs: &[ValueId],
    ) -> Result<ValueId, ImportError> {
        self.graph
            .push(name, op, inputs)
            .map_err(|source| ImportError::Graph {
                path: self.path.to_path_buf(),
                source,
            })
    }

    fn reduce(
        &mut self,
        id: usize,
        reduce: &Reduce,
        x: ValueId,
        x_shape: &[usize],
    ) -> Result<ValueId, ImportError> {
        let mut axes = reduce.axes.to_vec();
        axes.sort_unstable();
        if let ([_, _, _], [2]) = (x_shape, &axes[..]) {
            // Over the length of [N, C, L]: the same over [N, C, 1, L].
            let (x, shape) = self.as_row(id, x, x_shape)?;
            return self.reduce_plane(id, reduce, x, &shape, true);
        }
        if x_shape.len() != 4 || axes != [2, 3] {
            return Err(self.unsupported(
                id,
                &format!("reduces axes {axes:?}; paoding reduces over H and W of NCHW"),
            ));
        }
        self.reduce_plane(id, reduce, x, x_shape, false)
    }

    /// A reduction over H and W of `x` (NCHW); `lifted` when `x` is a 1-D value made 2-D
    /// (the result then goes back to tract's three axes).
    fn reduce_plane(
        &mut self,
        id: usize,
        reduce: &Reduce,
        x: ValueId,
        x_shape: &[usize],
        lifted: bool,
    ) -> Result<ValueId, ImportError> {
        let (h, w) = (x_shape[2], x_shape[3]);
        let (op, input) = match reduce.reducer {
            Reducer::Sum => {
                let name = format!("{}.mean", self.typed.node(id).name);
                let mean = self.push_inner(name, Op::GlobalAveragePool, &[x])?;
                // tract expresses ReduceMean as a sum and a division; the division folds back.
                let scale = (h * w) as f32;
                let affine = BatchNorm::affine(vec![scale; x_shape[1]], vec![0.0; x_shape[1]]);
                (Op::BatchNorm(affine), mean)
            }
            Reducer::Max => {
                let pool = Pool {
                    kernel: [h, w],
                    stride: [1, 1],
                    padding: [0; 4],
                    count_include_pad: false,
                };
                (Op::MaxPool(pool), x)
            }
            _ => return Err(self.unsupported(id, &format!("reduces with {:?}", reduce.reducer))),
        };
        if lifted {
            self.push_lowered(id, op, input)
        } else {
            self.push(id, op, &[input])
        }
    }

    fn binary(
        &mut self,
        id: usize,
        name: &str,
        inputs: &[Mapped],
        x: ValueId,
        x_shape: &[usize],
    ) -> Result<ValueId, ImportError> {
        let constant = inputs.iter().position(|m| matches!(m, Mapped::Const(_)));
        let Some(k) = constant else {
            if name == "Add" {
                let values: Vec<ValueId> = inputs
                    .iter()
                    .filter_map(|m| {
                        if let Mapped::Value(v) = m {
                            Some(*v)
                        } else {
                            None
                        }
                    })
                    .collect();
                return self.push(id, Op::Add, &values);
            }
            return Err(self.unsupported_named(id, name, " between two activations"));
        };
        let Mapped::Const(c) = &inputs[k] else {
            unreachable!("position found a constant")
        };
        let const_first = k == 0;
        let channels = x_shape.get(1).copied().unwrap_or(1);
        let per_channel = channel_vector(c, x_shape).ok_or_else(|| {
            self.unsupported_named(
                id,
                name,
                &format!(
                    " with a constant of shape {:?} that varies along more than the channel axis",
                    c.shape()
                ),
            )
        })?;
        let scalar = per_channel
            .iter()
            .all(|&v| v == per_channel[0])
            .then_some(per_channel[0]);
        let affine =
            |scale: Vec<f32>, shift: Vec<f32>| Op::BatchNorm(BatchNorm::affine(scale, shift));
        let op = match (name, const_first) {
            ("Add", _) => affine(vec![1.0; channels], per_channel),
            ("Sub", false) => affine(
                vec![1.0; channels],
                per_channel.iter().map(|v| -v).collect(),
            ),
            ("Sub", true) => affine(vec![-1.0; channels], per_channel),
            ("Mul", _) => affine(per_channel, vec![0.0; channels]),
            ("Div", false) => affine(
                per_channel.iter().map(|v| 1.0 / v).collect(),
                vec![0.0; channels],
            ),
            ("Max", _) if scalar.is_some() => Op::Activation(Activation::Clip {
                min: scalar.unwrap_or(0.0),
                max: f32::INFINITY,
            }),
            ("Min", _) if scalar.is_some() => Op::Activation(Activation::Clip {
                min: f32::NEG_INFINITY,
                max: scalar.unwrap_or(0.0),
            }),
            _ => {
                return Err(self.unsupported_named(
                    id,
                    name,
                    &format!(" with a constant of shape {:?}", c.shape()),
                ))
            }
        };
        self.push(id, op, &[x])
    }

    fn einsum(
        &self,
        id: usize,
        einsum: &EinSum,
        inputs: &[Mapped],
        x_shape: &[usize],
    ) -> Result<Op, ImportError> {
        let expr = einsum.axes.to_string();
        let bad = |why: &str| self.unsupported(id, &format!("(einsum {expr}) {why}"));
        if einsum.q_params.is_some() || inputs.len() != 2 {
            return Err(bad("is quantized or has more than two operands"));
        }
        let (Mapped::Value(_), Mapped::Const(w)) = (&inputs[0], &inputs[1]) else {
            return Err(bad("is not activations times constant weights"));
        };
        let (lhs, out) = expr.split_once("->").ok_or_else(|| bad("cannot be read"))?;
        let (a, b) = lhs.split_once(',').ok_or_else(|| bad("cannot be read"))?;
        let (a, b, out): (Vec<char>, Vec<char>, Vec<char>) = (
            a.chars().collect(),
            b.chars().collect(),
            out.chars().collect(),
        );
        if a.len() != 2 || b.len() != 2 || out.len() != 2 || x_shape.len() != 2 || w.rank() != 2 {
            return Err(bad(
                "is not a matrix product of a [1, K] input with a 2-D weight",
            ));
        }
        // The contracted letter appears in both operands and not in the output.
        let k = a
            .iter()
            .find(|c| b.contains(c) && !out.contains(c))
            .ok_or_else(|| bad("contracts no axis"))?;
        if a[1] != *k || out[0] != a[0] {
            return Err(bad("does not contract the input's feature axis"));
        }
        let n = b
            .iter()
            .find(|c| *c != k)
            .ok_or_else(|| bad("has no output axis"))?;
        if out[1] != *n {
            return Err(bad("does not produce [1, N]"));
        }
        let data = f32s(w).ok_or_else(|| bad("has non-float weights"))?;
        let k_first = b[0] == *k;
        let (inputs_n, units) = if k_first {
            (w.shape()[0], w.shape()[1])
        } else {
            (w.shape()[1], w.shape()[0])
        };
        // Dense rows are output neurons: transpose a [K, N] weight.
        let weights = if k_first {
            (0..units)
                .flat_map(|u| (0..inputs_n).map(move |i| (i, u)))
                .map(|(i, u)| data[i * units + u])
                .collect()
        } else {
            data
        };
        Ok(Op::Dense(Dense {
            units,
            inputs: inputs_n,
            weights,
            bias: vec![0.0; units],
            activation: Activation::Identity,
        }))
    }

    fn unsupported(&self, id: usize, detail: &str) -> ImportError {
        self.unsupported_named(
            id,
            &self.typed.node(id).op.name(),
            if detail.is_empty() { "" } else { detail },
        )
    }

    /// An error naming the ONNX operator behind tract node `id` (found by name prefix).
    fn unsupported_named(&self, id: usize, tract_op: &str, detail: &str) -> ImportError {
        let name = &self.typed.node(id).name;
        let onnx = self
            .onnx_nodes
            .iter()
            .filter(|(n, _)| !n.is_empty() && name.starts_with(n.as_str()))
            .max_by_key(|(n, _)| n.len());
        let (op, node) = match onnx {
            Some((n, op)) if op != tract_op => (format!("{op} (as tract's {tract_op})"), n.clone()),
            Some((n, op)) => (op.clone(), n.clone()),
            None => (tract_op.to_string(), name.clone()),
        };
        let detail = if detail.is_empty() {
            String::new()
        } else if detail.starts_with(' ') {
            detail.to_string()
        } else {
            format!(": {detail}")
        };
        ImportError::Unsupported {
            path: self.path.to_path_buf(),
            op,
            node,
            detail,
        }
    }
}

/// Explicit padding (top, left, bottom, right) that reproduces tract's output size `out`, so
/// SAME padding and ONNX's ceil mode become plain padding.
fn padding(
    spec: &PoolSpec,
    x: &[usize],
    out: &[usize],
    kernel: [usize; 2],
    dilation: [usize; 2],
    stride: [usize; 2],
) -> [usize; 4] {
    let computed = spec.padding.compute(&x[2..4], &kernel, &dilation, &stride);
    let mut pads = [0usize; 4];
    for axis in 0..2 {
        let before = computed[axis].pad_before;
        let span = dilation[axis] * (kernel[axis] - 1) + 1;
        let needed =
            ((out[2 + axis].max(1) - 1) * stride[axis] + span).saturating_sub(x[2 + axis] + before);
        pads[axis] = before;
        pads[axis + 2] = needed.max(computed[axis].pad_after);
    }
    pads
}

/// The geometry of a convolution or pooling op.
fn windowed_spec(op: &dyn TypedOp) -> Option<&PoolSpec> {
    if let Some(c) = op.downcast_ref::<Conv>() {
        Some(&c.pool_spec)
    } else if let Some(p) = op.downcast_ref::<MaxPool>() {
        Some(&p.pool_spec)
    } else {
        op.downcast_ref::<SumPool>().map(|p| &p.pool_spec)
    }
}

/// A 1-D window's geometry over `[N, C, L]` as the 2-D one over `[N, C, 1, L]`: a unit
/// kernel row, stride, dilation and no padding along the new axis.
fn lift_to_2d(spec: &PoolSpec) -> PoolSpec {
    let unit_first = |v: &[usize], first: usize| -> TVec<usize> {
        std::iter::once(first).chain(v.iter().copied()).collect()
    };
    let padding = match &spec.padding {
        PaddingSpec::Explicit(before, after) => {
            PaddingSpec::Explicit(unit_first(before, 0), unit_first(after, 0))
        }
        PaddingSpec::ExplicitOnnxPool(before, after, ceil) => {
            PaddingSpec::ExplicitOnnxPool(unit_first(before, 0), unit_first(after, 0), *ceil)
        }
        other => other.clone(),
    };
    PoolSpec {
        kernel_shape: unit_first(&spec.kernel_shape, 1),
        padding,
        dilations: spec.dilations.as_ref().map(|d| unit_first(d, 1)),
        strides: spec.strides.as_ref().map(|s| unit_first(s, 1)),
        ..spec.clone()
    }
}

fn f32s(t: &Tensor) -> Option<Vec<f32>> {
    let t = t.cast_to::<f32>().ok()?;
    Some(
        t.to_plain_array_view::<f32>()
            .ok()?
            .iter()
            .copied()
            .collect(),
    )
}

fn scalar(t: &Tensor) -> Option<f32> {
    f32s(t)?.first().copied()
}

/// The per-channel (axis 1) values of a constant broadcast against `x_shape`, or `None` if
/// it varies along any other axis.
fn channel_vector(c: &Tensor, x_shape: &[usize]) -> Option<Vec<f32>> {
    let data = f32s(c)?;
    let channels = x_shape.get(1).copied().unwrap_or(1);
    if data.len() == 1 {
        return Some(vec![data[0]; channels]);
    }
    let shape = c.shape();
    if shape.len() > x_shape.len() {
        return None;
    }
    // Right-align the constant's axes with x's; only x's axis 1 may be non-unit.
    let offset = x_shape.len() - shape.len();
    for (i, &d) in shape.iter().enumerate() {
        let axis = i + offset;
        if d != 1 && !(axis == 1 && d == channels) {
            return None;
        }
    }
    (data.len() == channels).then_some(data)
}
