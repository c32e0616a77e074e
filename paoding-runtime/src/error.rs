//! The runtime's one error type: plain data, `Copy`, no allocation.

use core::fmt;

/// Why a blob was refused or a run could not happen.
///
/// Every validation failure of [`crate::Model::from_bytes`] is one of these; nothing in the
/// runtime panics on a bad blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than its header says (or than a header).
    Truncated,
    /// The blob does not start with [`crate::format::MAGIC`].
    BadMagic,
    /// The blob was written for another format version.
    UnsupportedVersion(u16),
    /// The header sets flags this runtime does not know.
    UnsupportedFlags(u16),
    /// A header field is inconsistent (length, alignment, rank...).
    BadHeader(&'static str),
    /// The CRC32 over the blob does not match the header.
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the blob.
        computed: u32,
    },
    /// The weights section is not 4-byte aligned in memory: place the blob in an
    /// [`crate::Aligned`] wrapper.
    Misaligned,
    /// The graph description could not be decoded (truncated record, unknown tag...).
    Decode,
    /// The graph description is inconsistent: bad shape, out-of-bounds weights or arena region,
    /// forbidden aliasing, a reference to a value not computed before. `node` is the node's
    /// index (`u32::MAX` for the graph's input/output description).
    Invalid {
        /// Index of the offending node.
        node: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A documented limit of the runtime is exceeded (rank, inputs per node, node count).
    Limit(&'static str),
    /// The input slice does not hold the model's input element count.
    InputLength {
        /// Elements given.
        got: usize,
        /// Elements the model takes.
        expected: usize,
    },
    /// The output slice does not hold the model's output element count.
    OutputLength {
        /// Elements given.
        got: usize,
        /// Elements the model produces.
        expected: usize,
    },
    /// The arena is smaller than the model's plan.
    ArenaTooSmall {
        /// Elements (f32) given.
        got: usize,
        /// Elements (f32) needed.
        needed: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated => f.write_str("blob is truncated"),
            Error::BadMagic => f.write_str("not a paoding model blob (bad magic bytes)"),
            Error::UnsupportedVersion(v) => write!(
                f,
                "blob format version {v} is not supported (this runtime reads version {})",
                crate::format::VERSION
            ),
            Error::UnsupportedFlags(x) => write!(f, "blob sets unknown flags {x:#06x}"),
            Error::BadHeader(r) => write!(f, "bad blob header: {r}"),
            Error::BadCrc { stored, computed } => write!(
                f,
                "blob is corrupted: CRC32 {computed:#010x} does not match the stored {stored:#010x}"
            ),
            Error::Misaligned => f.write_str("blob weights are not 4-byte aligned in memory"),
            Error::Decode => f.write_str("blob graph description cannot be decoded"),
            Error::Invalid { node, reason } if node == u32::MAX => {
                write!(f, "invalid model: {reason}")
            }
            Error::Invalid { node, reason } => write!(f, "invalid model: node {node}: {reason}"),
            Error::Limit(r) => write!(f, "model exceeds a runtime limit: {r}"),
            Error::InputLength { got, expected } => {
                write!(f, "input has {got} values, the model takes {expected}")
            }
            Error::OutputLength { got, expected } => {
                write!(
                    f,
                    "output buffer has {got} values, the model produces {expected}"
                )
            }
            Error::ArenaTooSmall { got, needed } => {
                write!(f, "arena holds {got} f32, the model needs {needed}")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
