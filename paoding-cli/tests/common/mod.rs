//! What the binary's tests share: running `paoding` and finding the models.
// Each test crate compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Run the `paoding` binary built with the tests.
pub fn paoding(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_paoding"))
        .args(args)
        .output()
        .expect("runs paoding")
}

/// A file of tests/fixtures.
pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// A third-party model of ../shared/models.
pub fn shared(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/models")
        .join(name)
        .display()
        .to_string()
}

/// A run's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
