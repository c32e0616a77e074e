//! paoding-core: the model IR, its reference interpreter, the cost model, the static memory
//! planner and hardware profiles — everything about a model that does not need `std`.
//!
//! Data flow: an importer (the CLI, through tract) builds an [`ir::Graph`]; [`cost::ModelCost`]
//! and [`plan::MemoryPlan`] say what it costs; [`profile::Profile`] says what a board allows.
//!
//! ```
//! use paoding_core::{cost::{ModelCost, WeightDtype}, interp, ir::{Activation, Dense, Graph, Op}};
//!
//! let mut g = Graph::new("x", vec![1, 2]);
//! g.output = g.push("fc", Op::Dense(Dense {
//!     units: 2, inputs: 2, weights: vec![1.0, 0.0, 0.0, 1.0], bias: vec![0.0, 1.0],
//!     activation: Activation::Identity,
//! }), &[g.input])?;
//! g.check()?;
//! assert_eq!(interp::run(&g, &[2.0, 3.0])?, vec![2.0, 4.0]);
//! assert_eq!(ModelCost::new(&g, WeightDtype::F32).params, 6);
//! # Ok::<(), paoding_core::Error>(())
//! ```
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod blob;
pub mod cost;
pub mod error;
pub mod estimate;
pub mod fidelity;
pub mod fit;
pub mod grad;
pub mod interp;
pub mod ir;
pub mod linalg;
pub mod ops;
pub mod plan;
pub mod probes;
pub mod profile;
pub mod prune;
pub mod quant;
pub mod simplify;
pub mod synth;

pub use error::{Error, Result};
