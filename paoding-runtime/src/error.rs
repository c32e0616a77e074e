//! The runtime's one error type: plain data, `Copy`, no allocation.

use core::fmt;

use crate::format::Dtype;

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
        reason: Reason,
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
    /// The model's input and output have another dtype than the call's: [`crate::Model::run`]
    /// runs f32 models, [`crate::Model::run_i8`] int8 ones.
    IoDtype(Dtype),
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
            Error::IoDtype(Dtype::F32) => {
                f.write_str("the model's input and output are f32: call run")
            }
            Error::IoDtype(Dtype::I8) => {
                f.write_str("the model's input and output are int8: call run_i8")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// What is inconsistent in a graph description ([`Error::Invalid`]): a one-byte code, so that
/// passing an error up costs little flash; [`Reason::as_str`] and `Display` give the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Shape must start with a batch axis of 1.
    NoBatchAxis,
    /// Zero-sized dimension.
    ZeroDimension,
    /// Shape too large.
    ShapeTooLarge,
    /// Input value id must be 0.
    InputId,
    /// Input shape differs from the header.
    InputShapeVsHeader,
    /// Output shape differs from the header.
    OutputShapeVsHeader,
    /// Output does not match the value computed.
    OutputVsValue,
    /// More node records than declared.
    ExtraNodes,
    /// Fewer node records than declared.
    MissingNodes,
    /// Value lies outside the arena.
    OutsideArena,
    /// Reference to a value never computed.
    NeverComputed,
    /// Weight count does not match the shapes.
    WeightCount,
    /// Weights lie outside the weights section.
    OutsideWeights,
    /// Output value id must be node index + 1.
    OutputId,
    /// Wrong number of inputs.
    Arity,
    /// Reads a value not computed before it.
    ReadsLater,
    /// Input does not match its producer.
    InputVsProducer,
    /// Output partially overlaps an input.
    PartialOverlap,
    /// Output aliases an input where the operator cannot.
    BadAlias,
    /// Dense input shape.
    DenseInput,
    /// Dense too large.
    DenseTooLarge,
    /// BatchNorm needs a channel axis.
    BatchNormRank,
    /// Softmax axis (an int8 softmax runs along the last axis, of at most 511 elements).
    SoftmaxAxis,
    /// GlobalAveragePool needs NCHW.
    GlobalPoolRank,
    /// Add needs equal shapes.
    AddShapes,
    /// Concat axis.
    ConcatAxis,
    /// Concat shapes differ off the axis.
    ConcatShapes,
    /// Concat too large.
    ConcatTooLarge,
    /// Reshape changes the element count.
    ReshapeCount,
    /// Transpose permutation.
    Permutation,
    /// Pad must cover every axis but the batch.
    PadAxes,
    /// Pad too large.
    PadTooLarge,
    /// Output shape differs from the operator's.
    OutputShape,
    /// Conv2d parameters do not fit its input.
    ConvParams,
    /// Overwrites a value that is still read.
    Overwrite,
    /// Inconsistent after validation.
    Inconsistent,
    /// Pooling parameters do not fit its input.
    PoolParams,
    /// An f32 value at an arena offset that is not a multiple of 4.
    MisalignedF32,
    /// f32 or i32 weights at an offset that is not a multiple of 4.
    MisalignedWeights,
    /// An operand's dtype does not fit the operator (or differs from its producer's).
    OperandDtype,
    /// The graph's input or output dtype differs from the header.
    IoDtypeVsHeader,
    /// A per-channel array (bias, multiplier, shift) does not hold one value per output
    /// channel.
    QuantChannels,
    /// A requantization multiplier outside `[2^30, 2^31 - 1]` and not 0.
    Multiplier,
    /// A requantization shift outside `[-31, 30]`.
    Shift,
    /// A zero point outside `[-128, 127]`.
    ZeroPoint,
    /// An activation range whose minimum is above its maximum.
    ActRange,
    /// A quantized Add shift outside `[-31, 0]` (a multiplier below one), or a left shift
    /// above 20.
    AddShift,
    /// A quantized Concat with another number of rescalings than inputs.
    ConcatRescales,
    /// Quantization parameters with a scale that is not finite and positive, or a zero point
    /// outside `[-128, 127]`.
    Scale,
    /// Quantized softmax parameters out of range (left shift outside `[0, 30]`, `diff_min`
    /// above 0 or too large for the shift).
    SoftmaxParams,
    /// An int8 pooling with `count_include_pad` (an int8 average counts the taps inside the
    /// input only, as TFLite's; a writer pads with the zero point first).
    PoolIncludePad,
}

impl Reason {
    /// The reason in words.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoBatchAxis => "shape must start with a batch axis of 1",
            Reason::ZeroDimension => "zero-sized dimension",
            Reason::ShapeTooLarge => "shape too large",
            Reason::InputId => "input value id must be 0",
            Reason::InputShapeVsHeader => "input shape differs from the header",
            Reason::OutputShapeVsHeader => "output shape differs from the header",
            Reason::OutputVsValue => "output does not match the value computed",
            Reason::ExtraNodes => "more node records than declared",
            Reason::MissingNodes => "fewer node records than declared",
            Reason::OutsideArena => "value lies outside the arena",
            Reason::NeverComputed => "reference to a value never computed",
            Reason::WeightCount => "weight count does not match the shapes",
            Reason::OutsideWeights => "weights lie outside the weights section",
            Reason::OutputId => "output value id must be node index + 1",
            Reason::Arity => "wrong number of inputs",
            Reason::ReadsLater => "reads a value not computed before it",
            Reason::InputVsProducer => "input does not match its producer",
            Reason::PartialOverlap => "output partially overlaps an input",
            Reason::BadAlias => "output aliases an input where the operator cannot",
            Reason::DenseInput => "Dense input shape",
            Reason::DenseTooLarge => "Dense too large",
            Reason::BatchNormRank => "BatchNorm needs a channel axis",
            Reason::SoftmaxAxis => "softmax axis",
            Reason::GlobalPoolRank => "GlobalAveragePool needs NCHW",
            Reason::AddShapes => "Add needs equal shapes",
            Reason::ConcatAxis => "concat axis",
            Reason::ConcatShapes => "concat shapes differ off the axis",
            Reason::ConcatTooLarge => "concat too large",
            Reason::ReshapeCount => "reshape changes the element count",
            Reason::Permutation => "transpose permutation",
            Reason::PadAxes => "pad must cover every axis but the batch",
            Reason::PadTooLarge => "pad too large",
            Reason::OutputShape => "output shape differs from the operator's",
            Reason::ConvParams => "Conv2d parameters do not fit its input",
            Reason::Overwrite => "overwrites a value that is still read",
            Reason::Inconsistent => "inconsistent after validation",
            Reason::PoolParams => "pooling parameters do not fit its input",
            Reason::MisalignedF32 => "f32 value at an arena offset not a multiple of 4",
            Reason::MisalignedWeights => "f32 or i32 weights at an offset not a multiple of 4",
            Reason::OperandDtype => "operand dtype does not fit the operator",
            Reason::IoDtypeVsHeader => "input or output dtype differs from the header",
            Reason::QuantChannels => {
                "bias, multiplier or shift count differs from the output channels"
            }
            Reason::Multiplier => "requantization multiplier outside [2^30, 2^31 - 1] and not 0",
            Reason::Shift => "requantization shift outside [-31, 30]",
            Reason::ZeroPoint => "zero point outside [-128, 127]",
            Reason::ActRange => "activation minimum above its maximum",
            Reason::AddShift => "quantized Add shift outside [-31, 0] or left shift above 20",
            Reason::ConcatRescales => "quantized Concat rescalings differ from its inputs",
            Reason::Scale => {
                "quantization scale not finite and positive, or zero point outside int8"
            }
            Reason::SoftmaxParams => "quantized softmax shift or diff_min out of range",
            Reason::PoolIncludePad => "int8 pooling with count_include_pad",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
