//! Blobs of format version 2, written by paoding-core before version 3 (byte offsets, dtypes,
//! int8) replaced it, keep loading and computing exactly what they computed then: the blobs and
//! their outputs on a fixed input are committed in `tests/fixtures/blobs-v2/` (see its
//! README).

use std::path::PathBuf;

use paoding_runtime::Model;

/// The committed blobs and their reference runs.
const MODELS: [&str; 3] = ["zoo", "cnn_pool_torch", "dscnn_torch"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/blobs-v2")
}

/// A blob copied into 4-byte aligned storage, as firmware places it.
fn aligned(bytes: &[u8]) -> Vec<u32> {
    let mut words = vec![0u32; bytes.len().div_ceil(4)];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_ne_bytes(b);
    }
    words
}

/// The first `len` bytes of `words`.
fn as_bytes(words: &[u32], len: usize) -> &[u8] {
    assert!(len <= words.len() * 4);
    // SAFETY: `words` is valid for reads of `words.len() * 4 >= len` bytes, u8 needs no
    // alignment, and the result borrows `words`.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), len) }
}

fn floats(v: &serde_json::Value, key: &str) -> Vec<f32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

#[test]
fn version_2_blobs_load_and_compute_what_they_did() {
    for name in MODELS {
        let bytes = std::fs::read(dir().join(format!("{name}.pdg"))).expect("blob");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join(format!("{name}.json"))).expect("json"),
        )
        .expect("valid json");
        let (x, want) = (floats(&json, "input"), floats(&json, "output"));
        let words = aligned(&bytes);
        let blob = as_bytes(&words, bytes.len());
        assert_eq!(blob, &bytes[..]);
        let model = Model::from_bytes(blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(model.header().version, 2, "{name}");
        let mut arena = vec![f32::NAN; model.arena_len()];
        let mut y = vec![0.0f32; model.output_len()];
        model
            .run(&x, &mut arena, &mut y)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (got, want): (Vec<u32>, Vec<u32>) = (
            y.iter().map(|v| v.to_bits()).collect(),
            want.iter().map(|v| v.to_bits()).collect(),
        );
        assert_eq!(got, want, "{name}: outputs differ from version 2's");
    }
}
