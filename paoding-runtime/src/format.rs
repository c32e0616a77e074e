//! The blob format: a fixed little-endian header, a postcard-encoded graph description, and
//! a weights section read in place.
//!
//! ```text
//! offset  size  field
//!      0     4  magic b"PDNG"
//!      4     2  format version (u16, = VERSION; version 2 blobs are read too, see below)
//!      6     2  flags (u16, must be 0)
//!      8     2  header length (u16, = HEADER_LEN = 96)
//!     10     1  input rank
//!     11     1  output rank
//!     12     4  payload length: blob length - HEADER_LEN
//!     16     4  description length (bytes, starts at HEADER_LEN)
//!     20     4  weights offset from the blob start (multiple of 16)
//!     24     4  weights length (bytes; the section ends the blob)
//!     28     4  arena bytes (multiple of 4)
//!     32     4  input element count
//!     36     4  output element count
//!     40    24  input shape (6 x u32, unused dims 0)
//!     64    24  output shape (6 x u32)
//!     88     1  input dtype (Dtype: 0 = f32, 1 = i8)
//!     89     1  output dtype (equal to the input dtype)
//!     90     2  reserved (0)
//!     92     4  CRC32 (IEEE) of bytes [0, 92) followed by bytes [96, end)
//!     96     …  description: DescHead, then one NodeRec per node (postcard)
//!      …  0-15  zero padding to a multiple of 16 from the blob start
//!      …     …  weights: runs of f32, i32 (little-endian) and i8
//! ```
//!
//! All integers are little-endian. Value ids: 0 is the graph input, node `i` writes value
//! `i + 1`. Every [`Operand`] has a [`Dtype`]; its arena offset is in bytes, a multiple of 4
//! for f32 values. A [`WRef`] names a run of the weights section by its byte offset and its
//! element count; the element type is the field's (f32, i8 or i32, given per field below), and
//! f32 and i32 runs start at multiples of 4.
//!
//! A model's input and output have one dtype ([`crate::Model::run`] takes f32,
//! [`crate::Model::run_i8`] int8); for int8 the [`DescHead`] holds their [`QuantParams`].
//!
//! int8 values are TFLite's: `real = scale * (q - zero_point)` per tensor; int8 weights are
//! symmetric per output channel (zero point 0), biases i32 at `input scale * weight scale`; a
//! requantization multiplies by `multiplier * 2^(shift - 31)` as
//! [`crate::quant::multiply_by_quantized_multiplier`] does (multipliers in `[2^30, 2^31 - 1]`
//! or 0, shifts in `[-31, 30]`). The Q operators compute exactly TFLite's reference int8
//! kernels ([`crate::quant`] holds the arithmetic). MaxPool, AveragePool, GlobalAveragePool,
//! Reshape and Transpose take f32 or int8 (input and output of one dtype, and for int8 the
//! same scale and zero point; an int8 average rounds as TFLite's reference kernel and never
//! counts padding — a writer pads with the zero point first); BatchNorm, Activation, Softmax, Add, Concat and Pad are f32
//! only, their Q twins int8 only; Quantize and Dequantize cross between the two.
//!
//! **Version 2** (f32 only) is read unchanged by this runtime: its operands have no dtype
//! (all f32), its arena and weight offsets count f32 elements, its [`DescHead`] ends after the
//! output operand, and bytes 88..92 are 0; the decoder converts its offsets to bytes. The variant indices of [`OpRec`] are those of
//! version 2, the int8 operators appended after them.
//!
//! **Version 3** stored int8 filters in [`pack_filters`]' order; read in version 4's
//! ([`pack_filters_i8`]) they would compute garbage, so it is refused as unsupported: fit or
//! convert the model again (a blob is a build artifact).
//!
//! Filters (convolution and dense weights, f32 or int8) are stored in the order the kernels
//! read them: see [`pack_filters`] and [`pack_filters_i8`]. Every other weight run is stored
//! as the operator defines it.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// First four bytes of every blob.
pub const MAGIC: [u8; 4] = *b"PDNG";
/// Format version paoding-core writes (this runtime also reads [`VERSION_2`]).
pub const VERSION: u16 = 4;
/// The previous version, f32 only, still read (see the module documentation).
pub const VERSION_2: u16 = 2;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 96;
/// Alignment of the weights section, from the blob start.
pub const WEIGHTS_ALIGN: usize = 16;
/// Most axes a value may have (batch included).
pub const MAX_RANK: usize = 6;
/// Most inputs a node may read (Concat is the only operator with more than two).
pub const MAX_INPUTS: usize = 8;
/// Most nodes a model may have (bounds validation time).
pub const MAX_NODES: usize = 1024;

const CRC_AT: usize = 92;

/// A shape: at most [`MAX_RANK`] dimensions, batch first.
pub type Shape = heapless::Vec<u32, MAX_RANK>;

/// The element type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Dtype {
    /// 32-bit float.
    F32 = 0,
    /// 8-bit signed integer, affine-quantized.
    I8 = 1,
}

impl Dtype {
    /// Bytes per element.
    ///
    /// ```
    /// use paoding_runtime::format::Dtype;
    /// assert_eq!((Dtype::F32.size(), Dtype::I8.size()), (4, 1));
    /// ```
    pub const fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::I8 => 1,
        }
    }
}

/// A reference to a run of the weights section: its first byte and its element count (the
/// element type is the field's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WRef {
    /// Offset of the first element, in bytes from the section start (a multiple of 4 for f32
    /// and i32 runs).
    pub offset: u32,
    /// Number of elements.
    pub len: u32,
}

/// An element-wise activation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Act {
    /// No activation.
    Identity,
    /// max(x, 0).
    Relu,
    /// min(max(x, min), max).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// x for x >= 0, alpha x below.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
}

/// The geometry of a 2-D convolution over NCHW (f32 or int8): channels, window, groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvParams {
    /// Output channels.
    pub out_channels: u32,
    /// Input channels.
    pub in_channels: u32,
    /// Kernel height, width.
    pub kernel: [u32; 2],
    /// Stride along height, width.
    pub stride: [u32; 2],
    /// Dilation along height, width.
    pub dilation: [u32; 2],
    /// Padding: top, left, bottom, right (zeros in f32; an int8 convolution skips the taps
    /// over it, as TFLite's reference kernels do: padding with the input zero point).
    pub padding: [u32; 4],
    /// Channel groups (`in_channels` for a depthwise convolution).
    pub groups: u32,
}

/// 2-D convolution (NCHW; weights `[out][in / groups][kh][kw]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConvRec {
    /// Geometry.
    pub params: ConvParams,
    /// Filters `[out_channels][in_channels / groups][kh][kw]`, stored as [`pack_filters`]
    /// orders them.
    pub weights: WRef,
    /// One per output channel.
    pub bias: WRef,
    /// Fused activation.
    pub act: Act,
}

/// Pooling window parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRec {
    /// Window height, width.
    pub kernel: [u32; 2],
    /// Stride along height, width.
    pub stride: [u32; 2],
    /// Padding: top, left, bottom, right.
    pub padding: [u32; 4],
    /// Average only: divide by the full window even where it overlaps padding.
    pub count_include_pad: bool,
}

/// The requantization of an int8 convolution or dense layer, per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequantRec {
    /// Bytes (`9 * channels`, starting at a multiple of 4): three arrays of one value per
    /// output channel, one after the other — the i32 biases (at `input scale * weight
    /// scale`), then the i32 multipliers and the i8 shifts of `input scale * weight scale /
    /// output scale` as `multiplier * 2^(shift - 31)`
    /// ([`crate::quant::quantize_multiplier`]; multipliers in `[2^30, 2^31 - 1]` or 0, shifts
    /// in `[-31, 30]`).
    pub params: WRef,
    /// Zero point of the input, in `[-128, 127]`.
    pub input_zp: i32,
    /// Zero point of the output, in `[-128, 127]`.
    pub output_zp: i32,
    /// Smallest output (the fused activation's lower bound, quantized; -128 for none).
    pub act_min: i32,
    /// Largest output (127 for none); `-128 <= act_min <= act_max <= 127`.
    pub act_max: i32,
}

/// int8 2-D convolution: its geometry, int8 filters and their requantization. Taps over the
/// padding are skipped (as TFLite's reference kernels do: padding with the input zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QConvRec {
    /// Geometry.
    pub params: ConvParams,
    /// i8 filters `[out_channels][in_channels / groups][kh][kw]`, stored as
    /// [`pack_filters_i8`] orders them.
    pub weights: WRef,
    /// Bias and per-channel requantization.
    pub quant: RequantRec,
}

/// An int8 input's zero point and the fixed-point multiplier and shift that rescale it: each
/// input of [`OpRec::QAdd`] (and, as i32 triples in the weights section, of
/// [`OpRec::QConcat`]: `multiply_by_quantized_multiplier(q - zp, multiplier, shift)` plus the
/// output zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QRescale {
    /// Zero point of the input, in `[-128, 127]`.
    pub zp: i32,
    /// In `[2^30, 2^31 - 1]`, or 0.
    pub multiplier: i32,
    /// The shift of the multiplier (see the operator for its range).
    pub shift: i32,
}

/// TFLite's int8 Add: `(q - zp) << left_shift` per input, each rescaled by its multiplier
/// below one ([`crate::quant::multiply_by_quantized_multiplier_smaller_than_one_exp`], shifts
/// in `[-31, 0]`), the sum rescaled likewise by the output multiplier, plus the output zero
/// point, clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QAddRec {
    /// The first input's zero point and rescaling.
    pub input1: QRescale,
    /// The second input's.
    pub input2: QRescale,
    /// Left shift of both offset inputs, in `[0, 20]` (TFLite uses 20 for int8).
    pub left_shift: i32,
    /// In `[2^30, 2^31 - 1]`, or 0.
    pub output_multiplier: i32,
    /// In `[-31, 0]`.
    pub output_shift: i32,
    /// Zero point of the output, in `[-128, 127]`.
    pub output_zp: i32,
    /// Smallest output.
    pub act_min: i32,
    /// Largest output; `-128 <= act_min <= act_max <= 127`.
    pub act_max: i32,
}

/// One operator with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OpRec {
    /// `y = act(W x + b)`, weights `[units][inputs]` stored as [`pack_filters`] orders them
    /// (one group, one tap).
    Dense {
        /// Output neurons.
        units: u32,
        /// Inputs.
        inputs: u32,
        /// `units * inputs` weights.
        weights: WRef,
        /// `units` biases.
        bias: WRef,
        /// Fused activation.
        act: Act,
    },
    /// 2-D convolution.
    Conv2d(ConvRec),
    /// Per-channel affine map along axis 1.
    BatchNorm {
        /// One per channel.
        scale: WRef,
        /// One per channel.
        shift: WRef,
    },
    /// Stand-alone activation.
    Activation(Act),
    /// Softmax along an axis (batch axis counted).
    Softmax {
        /// The axis.
        axis: u8,
    },
    /// Max pooling.
    MaxPool(PoolRec),
    /// Average pooling.
    AveragePool(PoolRec),
    /// Mean over H and W.
    GlobalAveragePool,
    /// Element-wise sum of two equal shapes.
    Add,
    /// Concatenation along an axis.
    Concat {
        /// The axis.
        axis: u8,
    },
    /// Same elements, new shape: a free view (output region = input region).
    Reshape,
    /// Axis permutation: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: heapless::Vec<u8, MAX_RANK>,
    },
    /// Constant padding, `[before, after]` per axis.
    Pad {
        /// Per axis.
        pads: heapless::Vec<[u32; 2], MAX_RANK>,
        /// Fill value.
        value: f32,
    },
    /// int8 dense layer: `y = requant(W (x - input_zp) + bias)`, i8 weights `[units][inputs]`
    /// stored as [`pack_filters_i8`] orders them (one group, one tap).
    QDense {
        /// Output neurons.
        units: u32,
        /// Inputs.
        inputs: u32,
        /// `units * inputs` i8 weights.
        weights: WRef,
        /// Bias and per-unit requantization.
        quant: RequantRec,
    },
    /// int8 2-D convolution.
    QConv2d(QConvRec),
    /// int8 element-wise sum of two equal shapes, each with its own scale.
    QAdd(QAddRec),
    /// int8 concatenation along an axis, each input rescaled to the output:
    /// `clamp(multiply_by_quantized_multiplier(q - zp, multiplier, shift) + output_zp)`.
    QConcat {
        /// The axis.
        axis: u8,
        /// i32, one `(zp, multiplier, shift)` triple per input, in order ([`QRescale`]'s
        /// fields; multipliers in `[2^30, 2^31 - 1]` or 0, shifts in `[-31, 30]`).
        rescales: WRef,
        /// Zero point of the output, in `[-128, 127]`.
        output_zp: i32,
    },
    /// int8 constant padding, `[before, after]` per axis.
    QPad {
        /// Per axis.
        pads: heapless::Vec<[u32; 2], MAX_RANK>,
        /// Fill value (the output's quantized zero, or any value).
        value: i8,
    },
    /// int8 clamp: a stand-alone ReLU, ReLU6 or Clip in the quantized domain.
    QClamp {
        /// Lower bound.
        min: i32,
        /// Upper bound; `-128 <= min <= max <= 127`.
        max: i32,
    },
    /// f32 to int8 with the output's parameters: TFLite's `AffineQuantize`,
    /// [`crate::quant::quantize`].
    Quantize(QuantParams),
    /// int8 to f32 with the input's parameters: `scale * (q - zero_point)`,
    /// [`crate::quant::dequantize`].
    Dequantize(QuantParams),
    /// TFLite's reference int8 softmax ([`crate::quant::softmax_i8`]) along the last axis (as
    /// TFLite's), of at most [`crate::quant::SOFTMAX_MAX_LEN`] elements; the output has scale
    /// 1/256 and zero point -128. The parameters are [`crate::quant::softmax_params`]'.
    QSoftmax {
        /// The axis: the last one (batch axis counted).
        axis: u8,
        /// In `[2^30, 2^31 - 1]`, or 0.
        input_multiplier: i32,
        /// In `[0, 30]`.
        input_left_shift: i32,
        /// Differences to the row's largest value below this are skipped (exp = 0); at most
        /// 0, and `-diff_min << input_left_shift` fits in an i32.
        diff_min: i32,
    },
}

/// A value as a node sees it: its id, its place in the arena, its dtype and its shape.
#[derive(Debug, Clone, Eq, Serialize, Deserialize)]
pub struct Operand {
    /// Value id (0 = graph input, `i + 1` = output of node `i`).
    pub id: u32,
    /// Offset in the arena, in bytes (a multiple of 4 for f32).
    pub offset: u32,
    /// Element type.
    pub dtype: Dtype,
    /// Shape, batch first.
    pub shape: Shape,
}

impl PartialEq for Operand {
    fn eq(&self, other: &Operand) -> bool {
        (self.id, self.offset, self.dtype) == (other.id, other.offset, other.dtype)
            && same(&self.shape, &other.shape)
    }
}

/// `a == b` element by element: slice equality would link `memcmp` (116 B on a Cortex-M) for
/// the few shapes validation compares.
#[inline(never)]
pub(crate) fn same<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The affine map of an int8 tensor: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    /// Real value of one code step (finite, > 0).
    pub scale: f32,
    /// The code of real 0, in `[-128, 127]`.
    pub zero_point: i32,
}

impl QuantParams {
    /// Whether the scale is finite and positive and the zero point an int8 code.
    ///
    /// ```
    /// use paoding_runtime::format::QuantParams;
    /// assert!(QuantParams { scale: 0.5, zero_point: -128 }.valid());
    /// assert!(!QuantParams { scale: 0.0, zero_point: 0 }.valid());
    /// assert!(!QuantParams { scale: f32::NAN, zero_point: 0 }.valid());
    /// assert!(!QuantParams { scale: 1.0, zero_point: 128 }.valid());
    /// ```
    pub fn valid(&self) -> bool {
        // Positive finite floats are the bit patterns between +0 and +infinity, exclusive.
        (1..0x7F80_0000).contains(&self.scale.to_bits()) && (-128..=127).contains(&self.zero_point)
    }
}

/// First record of the description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DescHead {
    /// Number of [`NodeRec`]s that follow.
    pub n_nodes: u32,
    /// The graph input (id 0).
    pub input: Operand,
    /// The graph output.
    pub output: Operand,
    /// For an int8 input, its quantization (what the caller of [`crate::Model::run_i8`]
    /// quantizes with); `None` for f32 (and in version 2, which does not store it).
    pub input_quant: Option<QuantParams>,
    /// For an int8 output, its quantization; `None` for f32.
    pub output_quant: Option<QuantParams>,
}

/// One node: operator, inputs (with their places and shapes, repeated from their producers
/// so the executor never searches), and its output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRec {
    /// What it computes.
    pub op: OpRec,
    /// What it reads.
    pub inputs: heapless::Vec<Operand, MAX_INPUTS>,
    /// What it writes (id = node index + 1).
    pub output: Operand,
}

/// The fixed header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u16,
    /// Flags (0).
    pub flags: u16,
    /// Blob length minus the header.
    pub payload_len: u32,
    /// Bytes of the postcard description.
    pub desc_len: u32,
    /// Start of the weights section, from the blob start.
    pub weights_offset: u32,
    /// Bytes of weights.
    pub weights_len: u32,
    /// Bytes of activation arena the plan needs.
    pub arena_bytes: u32,
    /// Elements of the input.
    pub input_len: u32,
    /// Elements of the output.
    pub output_len: u32,
    /// Input rank.
    pub input_rank: u8,
    /// Output rank.
    pub output_rank: u8,
    /// Input shape (first `input_rank` used).
    pub input_shape: [u32; MAX_RANK],
    /// Output shape (first `output_rank` used).
    pub output_shape: [u32; MAX_RANK],
    /// Dtype of the input and of the output ([`crate::Model::run`] takes f32,
    /// [`crate::Model::run_i8`] int8); bytes 88 and 89 hold it twice.
    pub io_dtype: Dtype,
    /// Stored CRC32.
    pub crc: u32,
}

// The header readers are `const fn`, where `.get()` is not available: they index, after an
// explicit length check on the same slice, so the indexing cannot panic.
#[allow(clippy::indexing_slicing)]
const fn le_u32(b: &[u8], at: usize) -> u32 {
    if at > b.len() || b.len() - at < 4 {
        return 0;
    }
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The header as little-endian words, read in one loop (one copy of the reader in flash);
/// words past the end of a short blob read 0.
#[allow(clippy::indexing_slicing)] // `i < w.len()`.
pub(crate) const fn header_words(b: &[u8]) -> [u32; HEADER_LEN / 4] {
    // Opaque, so that LLVM does not zero it with a `memset` call (see `kernels::splat`, which
    // is not `const`).
    let mut w: [u32; HEADER_LEN / 4] = [core::hint::black_box(0); HEADER_LEN / 4];
    let mut i = 0;
    while i < w.len() {
        w[i] = le_u32(b, 4 * i);
        i += 1;
    }
    w
}

/// The shape of `MAX_RANK` words starting at word `at`.
#[allow(clippy::indexing_slicing)] // `at + MAX_RANK <= w.len()` at both call sites.
const fn shape_at(w: &[u32; HEADER_LEN / 4], at: usize) -> [u32; MAX_RANK] {
    let mut s = [0u32; MAX_RANK];
    let mut i = 0;
    while i < MAX_RANK && at + i < w.len() {
        s[i] = w[at + i];
        i += 1;
    }
    s
}

impl Header {
    /// Parse and sanity-check the fixed header (no CRC check: that needs the whole blob and
    /// happens in [`crate::Model::from_bytes`]). Usable in `const` context, so firmware can
    /// size `static` buffers from an `include_bytes!` blob.
    pub const fn parse(blob: &[u8]) -> Result<Header, Error> {
        if blob.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let w = header_words(blob);
        if w[0] != u32::from_le_bytes(MAGIC) {
            return Err(Error::BadMagic);
        }
        let version = w[1] as u16;
        if version != VERSION && version != VERSION_2 {
            return Err(Error::UnsupportedVersion(version));
        }
        let flags = (w[1] >> 16) as u16;
        if flags != 0 {
            return Err(Error::UnsupportedFlags(flags));
        }
        if (w[2] & 0xFFFF) as usize != HEADER_LEN {
            return Err(Error::BadHeader("header length"));
        }
        let (input_rank, output_rank) = ((w[2] >> 16) as u8, (w[2] >> 24) as u8);
        // Bytes 88..92: the input's and the output's dtype, equal, then two zero bytes (all
        // zero in version 2).
        let dtypes = w[22];
        let dtype = match dtypes {
            0 => Dtype::F32,
            0x101 if version != VERSION_2 => Dtype::I8,
            _ => return Err(Error::BadHeader("dtype")),
        };
        if input_rank as usize > MAX_RANK
            || output_rank as usize > MAX_RANK
            || input_rank == 0
            || output_rank == 0
        {
            return Err(Error::BadHeader("rank"));
        }
        let h = Header::from_words(&w, dtype);
        if !h.arena_bytes.is_multiple_of(4) {
            return Err(Error::BadHeader("arena bytes"));
        }
        Ok(h)
    }

    /// The fields of a header's words, unchecked ([`Header::parse`] checks them first).
    #[allow(clippy::indexing_slicing)] // Constant indices below `HEADER_LEN / 4`.
    pub(crate) const fn from_words(w: &[u32; HEADER_LEN / 4], io_dtype: Dtype) -> Header {
        Header {
            version: w[1] as u16,
            flags: (w[1] >> 16) as u16,
            payload_len: w[3],
            desc_len: w[4],
            weights_offset: w[5],
            weights_len: w[6],
            arena_bytes: w[7],
            input_len: w[8],
            output_len: w[9],
            input_rank: (w[2] >> 16) as u8,
            output_rank: (w[2] >> 24) as u8,
            input_shape: shape_at(w, 10),
            output_shape: shape_at(w, 16),
            io_dtype,
            crc: w[CRC_AT / 4],
        }
    }

    /// Arena size in f32 elements (the arena is a `[f32]`; int8 values use its bytes).
    pub const fn arena_len(&self) -> usize {
        self.arena_bytes as usize / 4
    }

    /// Input shape, batch first.
    pub fn input_shape(&self) -> &[u32] {
        self.input_shape
            .get(..self.input_rank as usize)
            .unwrap_or(&[])
    }

    /// Output shape, batch first.
    pub fn output_shape(&self) -> &[u32] {
        self.output_shape
            .get(..self.output_rank as usize)
            .unwrap_or(&[])
    }

    /// Serialize into the first [`HEADER_LEN`] bytes of `out`, with `crc` in its slot.
    /// (For writers; firmware never calls it.)
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        let mut w = |at: usize, bytes: &[u8]| {
            if let Some(dst) = out.get_mut(at..at + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        };
        w(0, &MAGIC);
        w(4, &self.version.to_le_bytes());
        w(6, &self.flags.to_le_bytes());
        w(8, &(HEADER_LEN as u16).to_le_bytes());
        w(10, &[self.input_rank, self.output_rank]);
        w(12, &self.payload_len.to_le_bytes());
        w(16, &self.desc_len.to_le_bytes());
        w(20, &self.weights_offset.to_le_bytes());
        w(24, &self.weights_len.to_le_bytes());
        w(28, &self.arena_bytes.to_le_bytes());
        w(32, &self.input_len.to_le_bytes());
        w(36, &self.output_len.to_le_bytes());
        for (i, (a, b)) in self.input_shape.iter().zip(&self.output_shape).enumerate() {
            w(40 + 4 * i, &a.to_le_bytes());
            w(64 + 4 * i, &b.to_le_bytes());
        }
        w(88, &[self.io_dtype as u8, self.io_dtype as u8, 0, 0]);
        w(CRC_AT, &self.crc.to_le_bytes());
    }
}

/// Arena size in f32 elements read from a blob's header, 0 if the header is invalid.
/// `const`, for `static mut ARENA: [f32; arena_len(BLOB)]`.
pub const fn arena_len(blob: &[u8]) -> usize {
    match Header::parse(blob) {
        Ok(h) => h.arena_len(),
        Err(_) => 0,
    }
}

/// Input element count read from a blob's header, 0 if the header is invalid.
pub const fn input_len(blob: &[u8]) -> usize {
    match Header::parse(blob) {
        Ok(h) => h.input_len as usize,
        Err(_) => 0,
    }
}

/// Output element count read from a blob's header, 0 if the header is invalid.
pub const fn output_len(blob: &[u8]) -> usize {
    match Header::parse(blob) {
        Ok(h) => h.output_len as usize,
        Err(_) => 0,
    }
}

/// CRC32 (IEEE 802.3, reflected, as zlib's) with a 16-entry nibble table: 64 bytes of flash.
#[derive(Debug, Clone, Copy)]
pub struct Crc32(u32);

#[allow(clippy::indexing_slicing)] // const evaluation: an out-of-bounds index fails the build.
const CRC_NIBBLES: [u32; 16] = {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 4 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline(always)]
fn nibble(c: u32) -> u32 {
    // `c & 15 < 16`: never the fallback.
    CRC_NIBBLES.get((c & 15) as usize).copied().unwrap_or(0)
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    /// A fresh digest.
    pub const fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    /// Feed bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c ^= b as u32;
            c = (c >> 4) ^ nibble(c);
            c = (c >> 4) ^ nibble(c);
        }
        self.0 = c;
    }

    /// The checksum.
    pub const fn finish(self) -> u32 {
        !self.0
    }
}

/// The CRC a blob's header must carry: bytes `[0, 92)` then `[96, end)`.
pub fn blob_crc(blob: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(blob.get(..CRC_AT).unwrap_or(&[]));
    c.update(blob.get(HEADER_LEN..).unwrap_or(&[]));
    c.finish()
}

/// Most output channels the kernels accumulate at once: filters are stored in blocks of this
/// many (the remainder in one block of 4 and single filters).
pub const FILTER_BLOCK: usize = 8;

/// Size of the next filter block when `left` filters of a group remain to be stored:
/// [`FILTER_BLOCK`] while that many remain, then a block of 4 if at least 4 remain, then
/// single filters.
///
/// ```
/// use paoding_runtime::format::block_len;
/// // 23 filters: 8, 8, 4, 1, 1, 1.
/// let (mut left, mut blocks) = (23, vec![]);
/// while left > 0 {
///     blocks.push(block_len(left));
///     left -= block_len(left);
/// }
/// assert_eq!(blocks, [8, 8, 4, 1, 1, 1]);
/// ```
pub const fn block_len(left: usize) -> usize {
    if left >= FILTER_BLOCK {
        FILTER_BLOCK
    } else if left >= 4 {
        4
    } else {
        1
    }
}

/// Rearrange f32 filters from ONNX order `[groups * per_group][inputs][taps]` (`taps` = kernel
/// height x width; a dense layer is one group of `units` filters with one tap) into the
/// stored order: per group, per block of filters ([`block_len`]), `[taps][inputs][block]`. A
/// kernel then reads, for one input pixel, the weights of a whole block as one contiguous run,
/// and walks the runs in order. Depthwise filters (one per group) keep their order. `src` and
/// `dst` must both hold `groups * per_group * inputs * taps` values; otherwise nothing is
/// written and `false` is returned. (int8 filters: [`pack_filters_i8`].)
///
/// ```
/// use paoding_runtime::format::pack_filters;
/// // Four 1x1 filters (one block of 4) over two inputs: the rows (1, 2), (3, 4), (5, 6),
/// // (7, 8) become one run of four weights per input.
/// let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
/// let mut dst = [0.0; 8];
/// assert!(pack_filters(&src, 1, 4, 2, 1, &mut dst));
/// assert_eq!(dst, [1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]);
/// ```
pub fn pack_filters(
    src: &[f32],
    groups: usize,
    per_group: usize,
    inputs: usize,
    taps: usize,
    dst: &mut [f32],
) -> bool {
    let shape = (groups, per_group, inputs, taps);
    pack_in(src, shape, dst, block_len, |c, put| {
        (0..inputs).for_each(|i| (0..c).for_each(|f| put(f, i)));
    })
}

/// int8 filters are stored in blocks of this many output channels (the remainder as single
/// filters): a Cortex-M kernel accumulates a block in 4 registers.
pub const I8_BLOCK: usize = 4;

/// Size of the next int8 filter block when `left` filters of a group remain to be stored:
/// [`I8_BLOCK`] while that many remain, then single filters.
///
/// ```
/// use paoding_runtime::format::i8_block_len;
/// assert_eq!((i8_block_len(9), i8_block_len(3)), (4, 1));
/// ```
pub const fn i8_block_len(left: usize) -> usize {
    if left >= I8_BLOCK {
        I8_BLOCK
    } else {
        1
    }
}

/// Rearrange int8 filters from ONNX order `[groups * per_group][inputs][taps]` into the
/// stored order: [`pack_filters`]' order with blocks of [`i8_block_len`], except that within a
/// block of 4 and a tap, the weights of two consecutive inputs `i`, `i + 1` (`i` even) are
/// interleaved by pairs of filters: `w[f][i], w[f+1][i], w[f][i+1], w[f+1][i+1]` for
/// `f = 0, 2`; an odd last input's 4 weights follow in filter order. A Cortex-M kernel loads
/// four bytes as one word and sign-extends them (SXTB16) into the two 16-bit pairs
/// `(w[f][i], w[f][i+1])` and `(w[f+1][i], w[f+1][i+1])` that one dual multiply-accumulate
/// (SMLAD) each takes against the pair of inputs. A single filter's weights are
/// `[taps][inputs]`. Same contract as [`pack_filters`].
///
/// ```
/// use paoding_runtime::format::pack_filters_i8;
/// // Five 1x1 filters (a block of 4 and a single one) over three inputs, filter f's weights
/// // f*10 + input.
/// let src: [i8; 15] = [0, 1, 2, 10, 11, 12, 20, 21, 22, 30, 31, 32, 40, 41, 42];
/// let mut dst = [0i8; 15];
/// assert!(pack_filters_i8(&src, 1, 5, 3, 1, &mut dst));
/// // Inputs 0 and 1 by filter pairs, input 2's weights, then the single filter.
/// assert_eq!(dst, [0, 10, 1, 11, 20, 30, 21, 31, 2, 12, 22, 32, 40, 41, 42]);
/// ```
pub fn pack_filters_i8(
    src: &[i8],
    groups: usize,
    per_group: usize,
    inputs: usize,
    taps: usize,
    dst: &mut [i8],
) -> bool {
    let shape = (groups, per_group, inputs, taps);
    pack_in(src, shape, dst, i8_block_len, |c, put| {
        let paired = if c == I8_BLOCK { inputs & !1 } else { 0 };
        for i in (0..paired).step_by(2) {
            for (f, di) in [
                (0, 0),
                (1, 0),
                (0, 1),
                (1, 1),
                (2, 0),
                (3, 0),
                (2, 1),
                (3, 1),
            ] {
                put(f, i + di);
            }
        }
        (paired..inputs).for_each(|i| (0..c).for_each(|f| put(f, i)));
    })
}

/// The walk both filter orders share: per group `(groups, per_group, inputs, taps)`, per block
/// of `block(left)` filters, per tap, `tap_order(c, put)` calls `put(filter of the block,
/// input)` once for each of the tap's `c * inputs` weights, in stored order.
fn pack_in<T: Copy>(
    src: &[T],
    (groups, per_group, inputs, taps): (usize, usize, usize, usize),
    dst: &mut [T],
    block: fn(usize) -> usize,
    tap_order: impl Fn(usize, &mut dyn FnMut(usize, usize)),
) -> bool {
    let filter = inputs * taps;
    let total = groups
        .checked_mul(per_group)
        .and_then(|f| f.checked_mul(filter));
    if total != Some(src.len()) || src.len() != dst.len() {
        return false;
    }
    let mut out = dst.iter_mut();
    let mut first = 0;
    for _ in 0..groups {
        let mut left = per_group;
        while left > 0 {
            let c = block(left);
            left -= c;
            for t in 0..taps {
                tap_order(c, &mut |f, i| {
                    let at = (first + f) * filter + i * taps + t;
                    if let (Some(d), Some(&s)) = (out.next(), src.get(at)) {
                        *d = s;
                    }
                });
            }
            first += c;
        }
    }
    true
}
