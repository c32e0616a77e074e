//! Any byte string goes through the whole ONNX import: the protobuf decoder and paoding's
//! checks, tract's parsing and typing, the mapping onto the IR and its simplification. An
//! error is fine; a panic in paoding's own code, an abort, more than 1 s of CPU or more than
//! 512 MiB is a bug. External data is looked up beside a model path that does not exist, so
//! no input reads a file.
//!
//! The importer calls tract under `catch_unwind` and turns its panics into errors naming the
//! node, as the `paoding` binary does (tract's shape rules assert on some malformed graphs).
//! libFuzzer's panic hook would abort on those first, so this target's hook aborts only on a
//! panic located in paoding's own source, and leaves the others to the importer.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

mod common;

static HOOK: Once = Once::new();

fn import(data: &[u8]) {
    let _ = paoding_cli::import::import_onnx_bytes(data, "/nonexistent/fuzz.onnx".as_ref());
}

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        // The importer installs its own hook (silent while importing) on first use: wrap it.
        import(b"");
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.location().is_some_and(|l| l.file().contains("paoding")) {
                eprintln!("{info}");
                std::process::abort();
            }
            quiet(info);
        }));
    });
    common::within_a_cpu_second(|| import(data));
});
