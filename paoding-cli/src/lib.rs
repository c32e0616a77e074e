//! paoding-cli: the `paoding` command's library. It imports ONNX models through tract into
//! paoding-core's IR, loads hardware profiles, and builds the reports the binary prints.
//! Firmware build scripts can call it directly.

pub mod chart;
pub mod check;
pub mod error;
pub mod eval;
pub mod export;
pub mod fit;
pub mod html;
pub mod import;
pub mod names;
pub mod npy;
pub mod output;
pub mod probes;
pub mod profile;
pub mod progress;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod run;
pub mod sweep;
