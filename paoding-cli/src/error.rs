//! Errors of the CLI library, as types. `main` turns them into one message and an exit code.

use std::path::PathBuf;

/// Why an ONNX file could not become a paoding model.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The bytes are not a well-formed ONNX protobuf (truncated, corrupted, not ONNX at all).
    #[error("{path}: not a valid ONNX model: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        reason: String,
    },
    /// A weight tensor is refused before anything is read (absurd size, external data outside
    /// the model's folder, data shorter than declared).
    #[error("{path}: tensor '{tensor}': {reason}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// An operator paoding cannot map.
    #[error(
        "{path}: unsupported operator {op} at node '{node}'{detail}. paoding supports: {SUPPORTED}"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The ONNX operator type (or tract's name for it).
        op: String,
        /// The node's name.
        node: String,
        /// Why this instance cannot be mapped, if the operator itself is supported.
        detail: String,
    },
    /// The model as a whole is outside what paoding handles (several inputs, dynamic shapes...).
    #[error("{path}: {reason}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A quantization operator of a quantized (QDQ) model is invalid, or a quantized pattern
    /// has no exact int8 form.
    #[error("{path}: node '{node}' ({op}): {reason}")]
    Quantization {
        /// The file.
        path: PathBuf,
        /// The node's name (or the graph input's or output's).
        node: String,
        /// Its operator.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// tract refused the model.
    #[error("{path}: tract could not load the model: {reason}")]
    Tract {
        /// The file.
        path: PathBuf,
        /// tract's error chain.
        reason: String,
    },
    /// The imported graph is inconsistent (a mapping defect: please report it).
    #[error("{path}: {source}")]
    Graph {
        /// The file.
        path: PathBuf,
        /// The core library's error.
        source: paoding_core::Error,
    },
}

/// The ONNX operators paoding maps, for error messages and the README.
pub const SUPPORTED: &str =
    "Conv (2-D and 1-D, grouped and depthwise included), Gemm and MatMul with constant weights, \
BatchNormalization, Relu, Clip, LeakyRelu (positive slope), Sigmoid, Tanh, Softmax, MaxPool, \
AveragePool, GlobalAveragePool (2-D and 1-D), ReduceMean/ReduceSum/ReduceMax over H and W (or \
the length of [N, C, L]), Add, Sub/Mul/Div by a per-channel constant, Concat, Flatten, Reshape, \
Squeeze/Unsqueeze, Transpose, Pad (constant), Identity, Dropout, any operator whose inputs are \
all constants (Shape, Gather, Cast, DequantizeLinear, ...), and quantized models: \
QuantizeLinear/DequantizeLinear (QDQ), QLinearConv, QLinearMatMul";

/// Why a hardware profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not a path to a readable file, nor the name of a built-in profile.
    #[error("no profile '{0}': not a readable file, nor a built-in profile (built in: {1})")]
    NotFound(String, String),
    /// The file exists but cannot be read as text.
    #[error("profile {source_name}: {source}")]
    Unreadable {
        /// File path (lossy).
        source_name: String,
        /// The operating system's reason (or invalid UTF-8).
        source: std::io::Error,
    },
    /// The TOML does not follow the schema: every problem found, in the file's order.
    #[error("profile {source_name}: {}", list_problems(.problems))]
    Invalid {
        /// File path or built-in name.
        source_name: String,
        /// What is wrong, at least one.
        problems: Vec<ProfileProblem>,
    },
}

/// One problem of a profile file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileProblem {
    /// The key it is about (none for a syntax error).
    pub key: Option<String>,
    /// The line of the key or of the syntax error, counted from 1 (none for a missing key).
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ProfileProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

fn list_problems(problems: &[ProfileProblem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut out = format!("{} problems", many.len());
            for p in many {
                out.push_str("\n  ");
                out.push_str(&p.to_string());
            }
            out
        }
    }
}

/// Errors of the commands that transform models (`prune`, `fit`, ...).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or an impossible request.
    #[error("{0}")]
    Usage(String),
    /// The model could not be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The model could not be processed.
    #[error("{0}")]
    Core(#[from] paoding_core::Error),
    /// The result could not be exported.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// An output file could not be written, or (checked before any work) cannot be.
    #[error(transparent)]
    Write(#[from] crate::output::WriteError),
    /// A profile could not be loaded.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A runtime model could not be run.
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
    /// Standard output could not be written; a closed pipe (`paoding ... | head`) is a
    /// quiet success in `main`.
    #[error("cannot write to standard output: {0}")]
    Stdout(std::io::Error),
}
