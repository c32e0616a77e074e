//! Any byte string is validated with `Model::from_bytes`; an accepted model is run with
//! buffers of the sizes it declares (an arena capped at 1 Mi f32: a larger one must be
//! refused by `run`). Nothing may panic. Each input is tried as it is and with its CRC
//! rewritten, so that mutations get past the checksum to the description's validation.
//!
//! The seeds (`fuzz/seeds/runtime/`) are the blobs `paoding-tests` writes
//! (`tests/tests/fuzz_seeds.rs`): f32 and int8 models (with f32 or int8 input and output) of
//! format version 3, and a version 2 blob. `from_bytes` tells the kinds apart from the header;
//! a model is run with `run` or `run_i8` as its io dtype says.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;
use paoding_runtime::{format, Dtype, Model};

/// The largest arena the target hands to `run`, in f32.
const ARENA_CAP: usize = 1 << 20;

fn exercise(data: &[u8]) {
    // Copy into 16-aligned storage, as firmware places a blob in flash.
    let mut words = vec![0u128; data.len().div_ceil(16)];
    let bytes = as_bytes(&mut words);
    bytes[..data.len()].copy_from_slice(data);
    let blob = &bytes[..data.len()];
    let Ok(model) = Model::from_bytes(blob) else {
        return;
    };
    let mut arena = vec![0.0f32; model.arena_len().min(ARENA_CAP)];
    let result = match model.io_dtype() {
        Dtype::F32 => model.run(
            &vec![0.25f32; model.input_len()],
            &mut arena,
            &mut vec![0.0f32; model.output_len()],
        ),
        Dtype::I8 => model.run_i8(
            &vec![25i8; model.input_len()],
            &mut arena,
            &mut vec![0i8; model.output_len()],
        ),
    };
    if model.arena_len() > ARENA_CAP {
        assert!(result.is_err(), "run accepted an arena smaller than declared");
    }
}

fn as_bytes(words: &mut [u128]) -> &mut [u8] {
    let len = words.len() * 16;
    // SAFETY: u128 storage is valid as bytes; the view borrows `words` mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

fuzz_target!(|data: &[u8]| {
    common::within_a_cpu_second(|| {
        exercise(data);
        if data.len() >= format::HEADER_LEN {
            let mut fixed = data.to_vec();
            let crc = format::blob_crc(&fixed);
            fixed[92..96].copy_from_slice(&crc.to_le_bytes());
            exercise(&fixed);
        }
    });
});
