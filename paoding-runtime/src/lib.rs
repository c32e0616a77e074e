//! paoding-runtime: reads paoding's compact model format and runs it on a microcontroller.
//!
//! `#![no_std]`, no allocator, no panicking paths: [`Model::from_bytes`] validates the whole
//! blob once (header, CRC32, every offset and length, every shape, dtype and quantization
//! parameter against its operator's rules, the arena plan), then [`Model::run`] (f32 input
//! and output) or [`Model::run_i8`] (int8) executes it with caller-provided buffers, reading
//! the weights in place from the blob (flash).
//!
//! Models are f32, int8 (TFLite's quantization scheme and reference arithmetic, in [`quant`])
//! or a mix of both. The format is described in [`format`]; paoding-core's `blob` module
//! writes it.
//!
//! Stack: on a Cortex-M, a few KiB (the firmware example measures its high-water mark). On an
//! x86-64 host with AVX2, an int8 convolution copies its input into a 52 KiB buffer on the
//! stack, so run models on a thread with at least 64 KiB of stack to spare.
//!
//! # Placing a blob in flash
//!
//! The weights section is 16-byte aligned from the blob start and its f32 and i32 runs are
//! read in place, so the blob itself must be at least 4-byte aligned in memory.
//! `include_bytes!` gives no alignment; wrap it in [`Aligned`]. The header can be read in
//! `const` context to size the `static` buffers:
//!
//! ```ignore
//! use paoding_runtime::{format, Aligned, Model};
//!
//! const RAW: &[u8] = include_bytes!("model.pdg");
//! static BLOB: Aligned<[u8; RAW.len()]> = Aligned(*include_bytes!("model.pdg"));
//! const ARENA_LEN: usize = format::arena_len(RAW);
//! const IN_LEN: usize = format::input_len(RAW);
//! const OUT_LEN: usize = format::output_len(RAW);
//!
//! static mut ARENA: [f32; ARENA_LEN] = [0.0; ARENA_LEN];
//!
//! fn infer(x: &[f32; IN_LEN], y: &mut [f32; OUT_LEN]) -> Result<(), paoding_runtime::Error> {
//!     let model = Model::from_bytes(&BLOB.0)?; // validate once, e.g. at boot
//!     // SAFETY (firmware): ARENA is only used from this one context.
//!     let arena = unsafe { &mut *core::ptr::addr_of_mut!(ARENA) };
//!     model.run(x, arena, y)
//! }
//! ```
//!
//! # int8 models
//!
//! An int8 model whose input and output are f32 (it quantizes its input and dequantizes its
//! output itself) runs with [`Model::run`], like an f32 one. One whose input and output are
//! int8 ([`Model::io_dtype`]) runs with [`Model::run_i8`]: [`Model::input_quant`] and
//! [`Model::output_quant`] say what its codes mean (`real = scale * (q - zero_point)`), and
//! [`quant::quantize`] and [`quant::dequantize`] convert exactly as the model would. Its arena
//! is still a `[f32]` (its f32 values, if any, need the alignment), sized in bytes by the plan.
//!
//! ```
//! # use paoding_core::{blob::QuantizedBlob, ir::{Activation, Dense, Graph, Op}};
//! # use paoding_core::{probes::Probes, quant::quantize};
//! use paoding_runtime::{quant, Dtype, Model};
//! # let mut g = Graph::new("x", vec![1, 2]);
//! # g.output = g.push("fc", Op::Dense(Dense {
//! #     units: 2, inputs: 2, weights: vec![1.0, -1.0, 0.5, 0.5], bias: vec![0.0, 0.1],
//! #     activation: Activation::Relu,
//! # }), &[g.input])?;
//! # let q = quantize(&g, &Probes::uniform(2, 32, -1.0, 1.0, 1), &Default::default())?;
//! # let low = QuantizedBlob::new(&g, &q, Dtype::I8)?;
//! # let blob = low.write(&low.plan())?;
//! // `blob`: an int8 model with int8 input and output (paoding-core's `QuantizedBlob`).
//! let model = Model::from_bytes(&blob)?;
//! assert_eq!(model.io_dtype(), Dtype::I8);
//! // An int8 model always carries its input's and output's quantization.
//! let (qi, qo) = model.input_quant().zip(model.output_quant()).ok_or("no io quantization")?;
//! let x = [0.5f32, -0.25].map(|v| quant::quantize(v, qi.scale, qi.zero_point));
//! let (mut arena, mut y) = (vec![0.0f32; model.arena_len()], [0i8; 2]);
//! model.run_i8(&x, &mut arena, &mut y)?;
//! let y = y.map(|c| quant::dequantize(c, qo.scale, qo.zero_point));
//! assert!((y[0] - 0.75).abs() < 0.02 && (y[1] - 0.225).abs() < 0.02, "{y:?}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limits
//!
//! At most [`format::MAX_RANK`] axes per value, [`format::MAX_INPUTS`] inputs per node,
//! [`format::MAX_NODES`] nodes and [`quant::SOFTMAX_MAX_LEN`] elements per int8 softmax;
//! little-endian targets only. Validation time is quadratic in
//! the node count (the description is re-read instead of being copied into RAM).
#![no_std]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::unreachable
    )
)]

#[cfg(feature = "std")]
extern crate std;

mod decode;
mod error;
pub mod format;
mod kernels;
mod model;
pub mod quant;

pub use error::{Error, Reason};
pub use format::{Dtype, Header};
pub use model::Model;

/// A 16-byte aligned wrapper, to place a blob from `include_bytes!` where its weights can be
/// read in place: `static BLOB: Aligned<[u8; N]> = Aligned(*include_bytes!("model.pdg"));`.
#[repr(C, align(16))]
#[derive(Debug)]
pub struct Aligned<T: ?Sized>(pub T);
