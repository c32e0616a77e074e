//! `cargo +nightly fuzz run from_bytes_run` (from paoding-runtime/): any byte string is
//! validated with `Model::from_bytes`; an accepted model is run with buffers of the sizes it
//! declares (an arena capped at 1 Mi f32; a larger one must be refused by `run`). Nothing may
//! panic. Seed the corpus with valid blobs (e.g. from `paoding-tests`' fixtures) so the fuzzer
//! starts past the CRC; the `crc-fixup` mode below rewrites the CRC so mutations reach the
//! description validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paoding_runtime::{format, Model};

fn exercise(data: &[u8]) {
    // Copy into 16-aligned storage, as firmware places a blob in flash.
    let mut words = vec![0u128; data.len().div_ceil(16)];
    let bytes: &mut [u8] = bytemuck_free_view(&mut words);
    bytes[..data.len()].copy_from_slice(data);
    let blob = &bytes[..data.len()];
    if let Ok(model) = Model::from_bytes(blob) {
        let input = vec![0.25f32; model.input_len()];
        let mut output = vec![0.0f32; model.output_len()];
        let mut arena = vec![0.0f32; model.arena_len().min(1 << 20)];
        let r = model.run(&input, &mut arena, &mut output);
        if model.arena_len() > 1 << 20 {
            assert!(r.is_err());
        }
    }
}

fn bytemuck_free_view(words: &mut [u128]) -> &mut [u8] {
    let len = words.len() * 16;
    // SAFETY: u128 storage is valid as bytes; the view borrows `words` mutably.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

fuzz_target!(|data: &[u8]| {
    exercise(data);
    // Same bytes with the CRC recomputed, to get past the checksum.
    if data.len() >= format::HEADER_LEN {
        let mut fixed = data.to_vec();
        let crc = format::blob_crc(&fixed);
        fixed[92..96].copy_from_slice(&crc.to_le_bytes());
        exercise(&fixed);
    }
});
