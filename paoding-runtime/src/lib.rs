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
