//! Any text goes through the hardware profile parser (TOML, the schema, every key's value,
//! the budget arithmetic). An error is fine; a panic is a bug, and so is a profile that
//! parses but whose budget cannot be computed.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    common::within_a_cpu_second(|| {
        if let Ok(profile) = paoding_cli::profile::parse(text, "fuzz.toml") {
            assert!(profile.budget().is_ok(), "a parsed profile has no budget");
        }
    });
});
