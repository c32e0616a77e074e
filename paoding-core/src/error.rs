//! Errors of the core library, as types; the CLI turns them into messages at the edge.

use alloc::string::String;
use alloc::vec::Vec;

/// Everything that can go wrong while building, checking or evaluating a model in core.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A node's inputs do not have the shapes its operator needs.
    #[error("node '{node}': {reason}")]
    Shape {
        /// Name of the offending node.
        node: String,
        /// What is wrong with the shapes.
        reason: String,
    },
    /// The graph's structure is broken (dangling value, not topologically ordered, ...).
    #[error("invalid graph: {0}")]
    Graph(String),
    /// An input buffer handed to the interpreter has the wrong number of elements.
    #[error("input has {got} values, the model expects {expected} (shape {shape:?})")]
    InputLength {
        /// Number of values given.
        got: usize,
        /// Number of values the model's input holds.
        expected: usize,
        /// The model's input shape.
        shape: Vec<usize>,
    },
    /// A hardware profile is inconsistent.
    #[error("profile: {0}")]
    Profile(String),
    /// The runtime refused a blob, or could not run it.
    #[error("blob: {0}")]
    Blob(paoding_runtime::Error),
}

/// Shorthand for results of this crate.
pub type Result<T> = core::result::Result<T, Error>;

pub(crate) fn shape_error(node: &str, reason: impl Into<String>) -> Error {
    Error::Shape {
        node: node.into(),
        reason: reason.into(),
    }
}
