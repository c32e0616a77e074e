//! Any byte string goes through the whole ONNX import: the protobuf decoder and paoding's
//! checks, tract's parsing and typing, the mapping onto the IR and its simplification. An
//! error is fine; a panic, a hang (> 1 s) or memory beyond 512 MiB is a bug. External data
//! is looked up beside a model path that does not exist, so no input reads a file.
//!
//! The importer calls tract under `catch_unwind` and turns its panics into errors, as the
//! `paoding` binary does; libFuzzer's panic hook would abort on them first, so panics raised
//! inside tract's own source are left to that `catch_unwind`. Any other panic aborts.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;

mod common;

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tract = info.location().is_some_and(|l| l.file().contains("/tract-"));
            if !in_tract {
                abort(info);
            }
        }));
    });
    common::within_a_cpu_second(|| {
        let _ = paoding_cli::import::import_onnx_bytes(data, "/nonexistent/fuzz.onnx".as_ref());
    });
});
