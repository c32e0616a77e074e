//! ONNX import: read the file, refuse what is unsafe before anything is loaded, let tract
//! type the graph (batch fixed to 1), map tract's typed operators onto the IR, then simplify.

mod checks;
mod map;
mod qdq;

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

use paoding_core::ir::Graph;
use paoding_core::quant::Quantized;
use paoding_runtime::format::Dtype;
use tract_onnx::prelude::*;

use crate::error::ImportError;

/// What the importer learned about a model besides its graph.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model, simplified and checked.
    pub graph: Graph,
    /// Producer recorded in the file (e.g. `pytorch 2.5`, `tf2onnx 1.17`).
    pub producer: String,
    /// Default-domain operator set version.
    pub opset: i64,
    /// The model before its batch norms are folded, when the file has batch norms with
    /// running statistics: each is one [`paoding_core::ir::Op::BatchNorm`] carrying its running
    /// mean and variance (what BatchNorm-statistics matching needs). Same input and output as
    /// `graph`, and the same function.
    pub with_bn_stats: Option<Graph>,
    /// The input range the file implies (an input normalisation, the first batch norm's
    /// statistics: [`paoding_core::estimate::implied_input_range`]), for data-free probes.
    pub input_range: Option<paoding_core::estimate::InputRange>,
    /// The file's own quantization, when it is a quantized (QDQ) model: see [`FileQuant`].
    pub quant: Option<FileQuant>,
}

/// A quantized file's int8 form, as the file has it (scales, zero points, integer weights
/// and biases), on [`Imported::graph`] (whose weights are the file's, dequantized).
#[derive(Debug, Clone)]
pub struct FileQuant {
    /// Per value its parameters, per layer its int8 weights. For a file that quantizes only
    /// its weights, every value is `None` and each layer's bias is empty (see
    /// [`paoding_core::quant::imported::apply_file_weights`]).
    pub quantized: Quantized,
    /// The dtype of the model's input and output: int8 when the file's are integer tensors.
    pub io: Dtype,
    /// Whether the file's input and output were uint8 (their codes are shifted by 128 into
    /// int8, with their zero points).
    pub unsigned_io: [bool; 2],
}

impl FileQuant {
    /// Whether the file quantizes its weights only (its activations are f32).
    pub fn weights_only(&self) -> bool {
        self.quantized.values.iter().all(Option::is_none)
    }
}

/// Import an ONNX file into the IR.
///
/// ```no_run
/// let model = paoding_cli::import::import_onnx("model.onnx".as_ref())?;
/// println!("{} parameters", model.graph.param_count());
/// # Ok::<(), paoding_cli::error::ImportError>(())
/// ```
pub fn import_onnx(path: &Path) -> Result<Imported, ImportError> {
    let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import(Source::Owned(bytes), path)
}

/// Import an ONNX model already in memory. `path` names it in messages, and external data is
/// looked up in its folder (a path whose folder does not exist allows none).
///
/// ```
/// let err = paoding_cli::import::import_onnx_bytes(b"not a model", "x.onnx".as_ref());
/// assert!(err.is_err());
/// ```
pub fn import_onnx_bytes(bytes: &[u8], path: &Path) -> Result<Imported, ImportError> {
    import(Source::Borrowed(bytes), path)
}

/// The bytes of a model: a file's are freed as soon as they are decoded.
enum Source<'a> {
    Owned(Vec<u8>),
    Borrowed(&'a [u8]),
}

/// Every copy of the weights is freed as soon as the next one exists (the file's bytes once
/// decoded, the protobuf once tract has its tensors, tract's model once the IR has them): an
/// 11 M-parameter model (45 MB of weights) peaks at about twice its size, not five times.
fn import(source: Source<'_>, path: &Path) -> Result<Imported, ImportError> {
    // Exporters annotate intermediate shapes with symbolic batch sizes; the batch is fixed to 1
    // below, so those annotations would only conflict with it.
    let onnx = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let bytes = match &source {
        Source::Owned(b) => b.as_slice(),
        Source::Borrowed(b) => b,
    };
    let proto = onnx
        .proto_model_for_read(&mut &bytes[..])
        .map_err(|e| malformed(path, &e))?;
    drop(source);
    // External data lies beside the model (a bare file name's folder is the current one).
    let dir = crate::output::folder(path).to_path_buf();
    checks::check_proto(path, &dir, &proto, &onnx)?;
    let mut proto = proto;
    let qdq = qdq::rewrite(path, &mut proto)?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let producer = format!("{} {}", proto.producer_name, proto.producer_version)
        .trim()
        .to_string();

    // tract is third-party code: a panic inside it must become an error, never a crash.
    quiet_panics_while_importing();
    IMPORTING.with(|i| i.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| {
        map::load_and_map(path, &dir, proto, &onnx, qdq.as_ref())
    }));
    IMPORTING.with(|i| i.set(false));
    let (graph, with_bn_stats, input_range, quant) = result.unwrap_or_else(|panic| {
        Err(ImportError::Tract {
            path: path.to_path_buf(),
            reason: format!("internal panic: {}", panic_message(&*panic)),
        })
    })?;
    Ok(Imported {
        graph,
        producer,
        opset,
        with_bn_stats,
        input_range,
        quant,
    })
}

thread_local! {
    /// Whether this thread is inside the importer's `catch_unwind`.
    static IMPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Install, once, a panic hook that stays silent while this thread imports: such a panic
/// (tract's) is caught and its message goes into the error, so printing it, and capturing a
/// backtrace under `RUST_BACKTRACE=1` (250 MB and 0.2 s for a debug build), would only cost.
/// Every other panic goes to the hook that was there before.
fn quiet_panics_while_importing() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IMPORTING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn malformed(path: &Path, e: &TractError) -> ImportError {
    ImportError::Malformed {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    }
}
