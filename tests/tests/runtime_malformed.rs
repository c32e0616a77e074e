//! Hostile and corrupted blobs, f32 and int8: truncated at every length, every byte flipped,
//! wrong version, huge lengths and offsets, and corrupted descriptions and quantization
//! parameters whose CRC is recomputed so that the validation itself is exercised. Every one must
//! be an `Err` (or, where a corruption still describes a valid model, run without panicking) —
//! never a panic, never an out-of-bounds read.

use std::path::Path;

use paoding_cli::import::import_onnx;
use paoding_core::{
    blob,
    ir::{Activation, BatchNorm, Conv2d, Dense, Graph, Op, Pool},
    plan::MemoryPlan,
    probes::Probes,
    quant,
};
use paoding_runtime::format::{
    blob_crc, DescHead, Dtype, Header, NodeRec, OpRec, WRef, HEADER_LEN, VERSION, WEIGHTS_ALIGN,
};
use paoding_runtime::Model;
use paoding_runtime::{Error, Reason};
use paoding_tests::{fixtures_dir, seeded_uniform};

/// A small graph touching most operators (conv, depthwise, pools, batch norm, add, concat,
/// pad, transpose, reshape, dense, softmax).
fn zoo() -> Graph {
    let w = |n: usize, seed: u64| seeded_uniform(n, seed, -0.5, 0.5);
    let mut g = Graph::new("x", vec![1, 2, 6, 6]);
    let conv = |out, inp, groups, k: usize, pad, seed| {
        Op::Conv2d(Conv2d {
            out_channels: out,
            in_channels: inp,
            kernel: [k, k],
            stride: [1, 1],
            dilation: [1, 1],
            padding: [pad; 4],
            groups,
            weights: w(out * inp / groups * k * k, seed),
            bias: w(out, seed + 1),
            activation: Activation::Relu,
        })
    };
    let c1 = g.push("c1", conv(4, 2, 1, 3, 1, 1), &[g.input]).unwrap();
    let dw = g.push("dw", conv(4, 4, 4, 3, 1, 2), &[c1]).unwrap();
    let bn = g
        .push(
            "bn",
            Op::BatchNorm(BatchNorm::affine(w(4, 3), w(4, 4))),
            &[dw],
        )
        .unwrap();
    let add = g.push("add", Op::Add, &[bn, c1]).unwrap();
    let act = g
        .push("act", Op::Activation(Activation::Sigmoid), &[add])
        .unwrap();
    let pool = Pool {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0; 4],
        count_include_pad: false,
    };
    let mp = g.push("mp", Op::MaxPool(pool.clone()), &[act]).unwrap();
    let ap = g.push("ap", Op::AveragePool(pool), &[act]).unwrap();
    let cat = g.push("cat", Op::Concat { axis: 1 }, &[mp, ap]).unwrap();
    let pad = g
        .push(
            "pad",
            Op::Pad {
                pads: vec![(0, 0), (0, 0), (1, 0), (0, 1)],
                value: 0.5,
            },
            &[cat],
        )
        .unwrap();
    let tr = g
        .push(
            "tr",
            Op::Transpose {
                perm: vec![0, 2, 3, 1],
            },
            &[pad],
        )
        .unwrap();
    let gap_in = g
        .push(
            "tr2",
            Op::Transpose {
                perm: vec![0, 3, 1, 2],
            },
            &[tr],
        )
        .unwrap();
    let gap = g.push("gap", Op::GlobalAveragePool, &[gap_in]).unwrap();
    let flat = g
        .push("flat", Op::Reshape { shape: vec![1, 8] }, &[gap])
        .unwrap();
    let fc = g
        .push(
            "fc",
            Op::Dense(Dense {
                units: 3,
                inputs: 8,
                weights: w(24, 5),
                bias: w(3, 6),
                activation: Activation::Tanh,
            }),
            &[flat],
        )
        .unwrap();
    g.output = g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap();
    g.check().unwrap();
    g
}

fn zoo_blob() -> Vec<u8> {
    let g = zoo();
    blob::write_blob(&g, &MemoryPlan::new(&g)).unwrap()
}

/// A graph every node of which has an int8 form: convolution, depthwise (ReLU6), residual
/// add, ReLU, max and average pooling (one counting its padding), concat, pad, transposes,
/// global average, flatten, dense, softmax.
fn int8_zoo() -> Graph {
    let w = |n: usize, seed: u64| seeded_uniform(n, seed, -0.5, 0.5);
    let mut g = Graph::new("x", vec![1, 2, 6, 6]);
    let conv = |out, inp, groups, k: usize, pad, seed, activation| {
        Op::Conv2d(Conv2d {
            out_channels: out,
            in_channels: inp,
            kernel: [k, k],
            stride: [1, 1],
            dilation: [1, 1],
            padding: [pad; 4],
            groups,
            weights: w(out * inp / groups * k * k, seed),
            bias: w(out, seed + 1),
            activation,
        })
    };
    let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
    let c1 = g
        .push("c1", conv(4, 2, 1, 3, 1, 1, Activation::Relu), &[g.input])
        .unwrap();
    let dw = g.push("dw", conv(4, 4, 4, 3, 1, 2, relu6), &[c1]).unwrap();
    let add = g.push("add", Op::Add, &[dw, c1]).unwrap();
    let act = g
        .push("act", Op::Activation(Activation::Relu), &[add])
        .unwrap();
    let pool = |p, count_include_pad| Pool {
        kernel: [2, 2],
        stride: [2, 2],
        padding: [p; 4],
        count_include_pad,
    };
    let mp = g.push("mp", Op::MaxPool(pool(0, false)), &[act]).unwrap();
    let ap = g
        .push("ap", Op::AveragePool(pool(1, true)), &[act])
        .unwrap();
    let ap2 = g.push("ap2", Op::MaxPool(pool(0, false)), &[ap]).unwrap();
    let mp2 = g
        .push(
            "mp2",
            Op::Pad {
                pads: vec![(0, 0), (0, 0), (0, 1), (0, 1)],
                value: 0.0,
            },
            &[mp],
        )
        .unwrap();
    let mp3 = g.push("mp3", Op::MaxPool(pool(0, false)), &[mp2]).unwrap();
    let cat = g.push("cat", Op::Concat { axis: 1 }, &[mp3, ap2]).unwrap();
    let tr = g
        .push(
            "tr",
            Op::Transpose {
                perm: vec![0, 2, 3, 1],
            },
            &[cat],
        )
        .unwrap();
    let back = g
        .push(
            "back",
            Op::Transpose {
                perm: vec![0, 3, 1, 2],
            },
            &[tr],
        )
        .unwrap();
    let gap = g.push("gap", Op::GlobalAveragePool, &[back]).unwrap();
    let flat = g
        .push("flat", Op::Reshape { shape: vec![1, 8] }, &[gap])
        .unwrap();
    let fc = g
        .push(
            "fc",
            Op::Dense(Dense {
                units: 3,
                inputs: 8,
                weights: w(24, 5),
                bias: w(3, 6),
                activation: Activation::Identity,
            }),
            &[flat],
        )
        .unwrap();
    g.output = g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap();
    g.check().unwrap();
    g
}

/// The int8 zoo's blob with `io` input and output, every node in int8.
fn int8_zoo_blob(io: Dtype) -> Vec<u8> {
    let g = int8_zoo();
    let probes = Probes::uniform(72, 64, -1.0, 1.0, 3);
    let q = quant::quantize(&g, &probes, &Default::default()).unwrap();
    let low = blob::QuantizedBlob::new(&g, &q, io).unwrap();
    assert!(low.node_dtypes().iter().all(|&d| d == Dtype::I8));
    low.write(&low.plan()).unwrap()
}

/// Every blob the tests corrupt: f32 (the zoo, a fixture) and int8 (with f32 and int8 io).
fn all_blobs() -> Vec<Vec<u8>> {
    vec![
        zoo_blob(),
        fixture_blob(),
        int8_zoo_blob(Dtype::F32),
        int8_zoo_blob(Dtype::I8),
    ]
}

fn fixture_blob() -> Vec<u8> {
    let g = import_onnx(&fixtures_dir().join("dscnn_torch.onnx"))
        .unwrap()
        .graph;
    blob::write_blob(&g, &MemoryPlan::new(&g)).unwrap()
}

/// Recompute the header CRC after a corruption.
fn fix_crc(b: &mut [u8]) {
    let crc = blob_crc(b);
    b[92..96].copy_from_slice(&crc.to_le_bytes());
}

/// Run an accepted model on its io dtype (f32 or int8 input and output).
fn run(m: &Model, arena: &mut [f32]) -> Result<(), Error> {
    match m.io_dtype() {
        Dtype::F32 => m.run(
            &vec![0.5; m.input_len()],
            arena,
            &mut vec![0.0; m.output_len()],
        ),
        Dtype::I8 => m.run_i8(
            &vec![17; m.input_len()],
            arena,
            &mut vec![0; m.output_len()],
        ),
    }
}

/// Validate, and if the blob is accepted, run it: it must not panic either way.
fn exercise(b: &[u8]) -> Result<(), Error> {
    let m = Model::from_bytes(b)?;
    if m.arena_len() > 1 << 24 {
        let r = run(&m, &mut [0.0; 4]);
        assert!(matches!(r, Err(Error::ArenaTooSmall { .. })));
        return Ok(());
    }
    run(&m, &mut vec![0.0; m.arena_len()])
}

#[test]
fn valid_blobs_validate_and_run() {
    for b in all_blobs() {
        exercise(&b).expect("a valid blob runs");
    }
}

#[test]
fn the_zoo_matches_the_interpreter() {
    let g = zoo();
    let b = zoo_blob();
    let m = Model::from_bytes(&b).unwrap();
    let x = seeded_uniform(m.input_len(), 9, -1.0, 1.0);
    let mut arena = vec![0.0; m.arena_len()];
    let mut y = vec![0.0; m.output_len()];
    m.run(&x, &mut arena, &mut y).unwrap();
    let r = paoding_core::interp::run(&g, &x).unwrap();
    for (a, b) in y.iter().zip(&r) {
        assert!((a - b).abs() <= 1e-6, "{y:?} vs {r:?}");
    }
}

#[test]
fn truncated_at_every_length_is_an_error() {
    for b in all_blobs() {
        for len in 0..b.len() {
            assert!(
                Model::from_bytes(&b[..len]).is_err(),
                "truncated to {len} bytes of {}",
                b.len()
            );
        }
        // Trailing garbage is refused too.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 16]);
        assert!(Model::from_bytes(&longer).is_err());
    }
}

#[test]
fn every_flipped_byte_is_an_error() {
    let [zoo, fixture, int8_f32, int8_i8] = all_blobs().try_into().unwrap();
    for (b, step) in [(&zoo, 1), (&fixture, 3), (&int8_f32, 1), (&int8_i8, 1)] {
        for i in (0..b.len()).step_by(step) {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut c = b.clone();
                c[i] ^= mask;
                assert!(
                    Model::from_bytes(&c).is_err(),
                    "byte {i} ^ {mask:#x} went unnoticed"
                );
            }
        }
    }
}

#[test]
fn flipped_bytes_with_a_recomputed_crc_never_panic() {
    // The CRC no longer protects: the validation must catch (or safely accept) every change.
    for b in [
        zoo_blob(),
        int8_zoo_blob(Dtype::F32),
        int8_zoo_blob(Dtype::I8),
    ] {
        let desc_end = HEADER_LEN + u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
        let (mut refused, mut accepted) = (0, 0);
        for i in (0..desc_end).filter(|&i| !(92..96).contains(&i)) {
            for mask in [0x01u8, 0x02, 0x04, 0x10, 0x40, 0x80, 0xFF] {
                let mut c = b.clone();
                c[i] ^= mask;
                fix_crc(&mut c);
                match exercise(&c) {
                    Ok(()) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        println!("desc flips with fixed CRC: {refused} refused, {accepted} accepted and ran");
        assert!(refused > accepted, "{refused} refused, {accepted} accepted");
        // Weight flips (int8 quantization parameters among them) either keep a valid model,
        // which must still run, or are refused.
        for i in desc_end..b.len() {
            for mask in [0x40u8, 0x81] {
                let mut c = b.clone();
                c[i] ^= mask;
                fix_crc(&mut c);
                let _ = exercise(&c);
            }
        }
    }
}

#[test]
fn wrong_version_magic_flags_and_header_fields_are_errors() {
    let b = zoo_blob();
    let with = |at: usize, bytes: &[u8]| {
        let mut c = b.clone();
        c[at..at + bytes.len()].copy_from_slice(bytes);
        fix_crc(&mut c);
        c
    };
    assert_eq!(
        Model::from_bytes(&with(4, &(VERSION + 1).to_le_bytes())).unwrap_err(),
        Error::UnsupportedVersion(VERSION + 1)
    );
    assert_eq!(
        Model::from_bytes(&with(0, b"PDNX")).unwrap_err(),
        Error::BadMagic
    );
    assert_eq!(
        Model::from_bytes(&with(6, &1u16.to_le_bytes())).unwrap_err(),
        Error::UnsupportedFlags(1)
    );
    // Huge or wrong lengths and offsets, each with a correct CRC.
    for (at, v) in [
        (8, 97u32 as u16 as u32),
        (12, u32::MAX),
        (12, 0),
        (16, u32::MAX),
        (16, u32::MAX - 95),
        (16, b.len() as u32),
        (20, u32::MAX),
        (20, u32::MAX - 15),
        (20, 16),
        (20, HEADER_LEN as u32),
        (24, u32::MAX),
        (24, 4),
        (28, 2),
        (28, 0),
        (32, u32::MAX),
        (36, 7),
        (40, 2),
        (64, u32::MAX),
    ] {
        let c = if at == 8 {
            with(at, &(v as u16).to_le_bytes())
        } else {
            with(at, &v.to_le_bytes())
        };
        assert!(
            Model::from_bytes(&c).is_err(),
            "header field at {at} = {v} accepted"
        );
    }
    // Ranks beyond the limit.
    assert!(Model::from_bytes(&with(10, &[7])).is_err());
    assert!(Model::from_bytes(&with(11, &[0])).is_err());
    // A huge arena is legal in itself; running with a small one is an error.
    let c = with(28, &(u32::MAX - 3).to_le_bytes());
    let m = Model::from_bytes(&c).expect("a bigger arena is still a valid plan");
    let r = m.run(
        &vec![0.0; m.input_len()],
        &mut [0.0; 16],
        &mut vec![0.0; m.output_len()],
    );
    assert!(matches!(r, Err(Error::ArenaTooSmall { .. })));
}

#[test]
fn run_rejects_wrong_buffer_sizes() {
    let b = zoo_blob();
    let m = Model::from_bytes(&b).unwrap();
    let (i, o, a) = (m.input_len(), m.output_len(), m.arena_len());
    let mut arena = vec![0.0; a];
    assert!(matches!(
        m.run(&vec![0.0; i - 1], &mut arena, &mut vec![0.0; o]),
        Err(Error::InputLength { .. })
    ));
    assert!(matches!(
        m.run(&vec![0.0; i], &mut arena, &mut vec![0.0; o + 1]),
        Err(Error::OutputLength { .. })
    ));
    assert!(matches!(
        m.run(&vec![0.0; i], &mut vec![0.0; a - 1], &mut vec![0.0; o]),
        Err(Error::ArenaTooSmall { .. })
    ));
    // A larger arena is fine.
    m.run(&vec![0.0; i], &mut vec![0.0; a + 5], &mut vec![0.0; o])
        .unwrap();
}

#[test]
fn misaligned_blobs_are_refused() {
    let b = zoo_blob();
    let mut shifted = vec![0u8; b.len() + 1];
    shifted[1..].copy_from_slice(&b);
    let start = if !(shifted.as_ptr() as usize + 1).is_multiple_of(4) {
        1
    } else {
        0
    };
    if start == 1 {
        assert_eq!(
            Model::from_bytes(&shifted[1..]).unwrap_err(),
            Error::Misaligned
        );
    }
}

/// The description of a blob, decoded with the runtime's own record types.
fn decode(b: &[u8]) -> (Header, DescHead, Vec<NodeRec>, Vec<u8>) {
    let h = Header::parse(b).unwrap();
    let desc = &b[HEADER_LEN..HEADER_LEN + h.desc_len as usize];
    let (head, mut rest) = postcard::take_from_bytes::<DescHead>(desc).unwrap();
    let mut nodes = Vec::new();
    while !rest.is_empty() {
        let (n, r) = postcard::take_from_bytes::<NodeRec>(rest).unwrap();
        nodes.push(n);
        rest = r;
    }
    (h, head, nodes, b[h.weights_offset as usize..].to_vec())
}

/// Reassemble a blob from (possibly hostile) records, with consistent lengths and CRC.
fn encode(h: &Header, head: &DescHead, nodes: &[NodeRec], weights: &[u8]) -> Vec<u8> {
    let mut desc = postcard::to_allocvec(head).unwrap();
    for n in nodes {
        desc.extend(postcard::to_allocvec(n).unwrap());
    }
    let w_off = (HEADER_LEN + desc.len()).div_ceil(WEIGHTS_ALIGN) * WEIGHTS_ALIGN;
    let mut h = *h;
    h.desc_len = desc.len() as u32;
    h.weights_offset = w_off as u32;
    h.payload_len = (w_off + weights.len() - HEADER_LEN) as u32;
    let mut b = vec![0u8; HEADER_LEN];
    b.extend(desc);
    b.resize(w_off, 0);
    b.extend_from_slice(weights);
    let mut fixed = [0u8; HEADER_LEN];
    h.write(&mut fixed);
    b[..HEADER_LEN].copy_from_slice(&fixed);
    fix_crc(&mut b);
    b
}

#[test]
fn reencoding_an_unchanged_description_is_valid() {
    let b = zoo_blob();
    let (h, head, nodes, w) = decode(&b);
    assert_eq!(encode(&h, &head, &nodes, &w), b);
}

#[test]
fn hostile_descriptions_with_valid_crc_are_errors() {
    let b = zoo_blob();
    let (h, head, nodes, w) = decode(&b);
    let arena = h.arena_bytes;
    let mut cases = 0;
    let mut expect_err = |what: &str, j: usize, f: &dyn Fn(&mut NodeRec)| {
        let mut ns = nodes.clone();
        f(&mut ns[j]);
        if ns[j] == nodes[j] {
            return; // The mutation does not apply to this node.
        }
        let c = encode(&h, &head, &ns, &w);
        assert!(
            Model::from_bytes(&c).is_err(),
            "node {j} ({:?}): {what} accepted",
            nodes[j].op
        );
        cases += 1;
    };
    for j in 0..nodes.len() {
        expect_err("output offset u32::MAX", j, &|n| n.output.offset = u32::MAX);
        expect_err("output past the arena", j, &|n| n.output.offset = arena);
        expect_err("output id", j, &|n| n.output.id += 1);
        expect_err("output shape", j, &|n| {
            let last = n.output.shape.len() - 1;
            n.output.shape[last] += 1;
        });
        expect_err("output rank", j, &|n| {
            n.output.shape.push(1).unwrap();
        });
        expect_err("zero dim", j, &|n| n.output.shape[1] = 0);
        expect_err("batch 2", j, &|n| n.output.shape[0] = 2);
        expect_err("huge dims", j, &|n| {
            for d in n.output.shape.iter_mut() {
                *d = u32::MAX;
            }
        });
        expect_err("reads itself", j, &|n| n.inputs[0].id = j as u32 + 1);
        expect_err("reads a later value", j, &|n| n.inputs[0].id = 1000);
        expect_err("input offset", j, &|n| n.inputs[0].offset += 1);
        expect_err("input shape", j, &|n| n.inputs[0].shape[1] += 1);
        expect_err("no inputs", j, &|n| n.inputs.clear());
        expect_err("extra input", j, &|n| {
            if !matches!(n.op, OpRec::Concat { .. }) {
                let first = n.inputs[0].clone();
                n.inputs.push(first).unwrap();
            }
        });
        expect_err("output over its input", j, &|n| {
            if !matches!(
                n.op,
                OpRec::Activation(_)
                    | OpRec::BatchNorm { .. }
                    | OpRec::Softmax { .. }
                    | OpRec::Add
                    | OpRec::Reshape
            ) {
                n.output.offset = n.inputs[0].offset;
            }
        });
        expect_err("output straddles its input", j, &|n| {
            n.output.offset = n.inputs[0].offset + 1;
        });
        expect_err("weights", j, &|n| match &mut n.op {
            OpRec::Dense { weights, .. } => weights.offset = u32::MAX,
            OpRec::Conv2d(c) => c.bias.len += 1,
            OpRec::BatchNorm { shift, .. } => shift.offset = w.len() as u32,
            _ => {}
        });
        expect_err("parameters", j, &|n| match &mut n.op {
            OpRec::Conv2d(c) => c.params.stride[1] = 0,
            OpRec::MaxPool(p) | OpRec::AveragePool(p) => p.padding[0] = p.kernel[0],
            OpRec::Softmax { axis } | OpRec::Concat { axis } => *axis = 9,
            OpRec::Transpose { perm } => perm[1] = perm[2],
            OpRec::Pad { pads, .. } => pads[0] = [1, 0],
            OpRec::Dense { units, .. } => *units += 1,
            _ => {}
        });
        expect_err("conv groups", j, &|n| {
            if let OpRec::Conv2d(c) = &mut n.op {
                c.params.groups = 0;
            }
        });
        expect_err("conv dilation", j, &|n| {
            if let OpRec::Conv2d(c) = &mut n.op {
                c.params.dilation = [0, 0];
            }
        });
        expect_err("conv huge padding", j, &|n| {
            if let OpRec::Conv2d(c) = &mut n.op {
                c.params.padding = [u32::MAX; 4];
            }
        });
    }
    // Node count and graph output.
    let mut bad_head = head.clone();
    bad_head.n_nodes += 1;
    assert!(Model::from_bytes(&encode(&h, &bad_head, &nodes, &w)).is_err());
    let mut bad_head = head.clone();
    bad_head.n_nodes = u32::MAX;
    assert!(Model::from_bytes(&encode(&h, &bad_head, &nodes, &w)).is_err());
    let mut bad_head = head.clone();
    bad_head.output.id -= 1;
    assert!(Model::from_bytes(&encode(&h, &bad_head, &nodes, &w)).is_err());
    assert!(Model::from_bytes(&encode(&h, &head, &nodes[..nodes.len() - 1], &w)).is_err());
    // A value overwritten while still read later (c1 is read by `add` after `dw`, `bn`).
    let mut ns = nodes.clone();
    ns[1].output.offset = ns[0].output.offset; // dw over c1
    ns[2].inputs[0].offset = ns[1].output.offset;
    assert!(Model::from_bytes(&encode(&h, &head, &ns, &w)).is_err());
    println!("{cases} hostile descriptions refused");
    assert!(cases > 150, "only {cases} cases applied");
}

#[test]
fn random_garbage_never_panics() {
    for (k, b) in all_blobs().into_iter().enumerate() {
        garbage(&b, k as u64);
    }
}

/// Scramble 300 windows of `b` after its header (CRC recomputed) and exercise each.
fn garbage(b: &[u8], salt: u64) {
    for seed in (0..300u64).map(|s| s + 1000 * salt) {
        let noise = seeded_uniform(b.len(), seed, 0.0, 256.0);
        let mut c = b.to_vec();
        // Keep the header, scramble a window of the description or the weights.
        let start = HEADER_LEN + (seed as usize * 7) % (b.len() - HEADER_LEN);
        for (i, v) in noise.iter().enumerate().skip(start).take(24) {
            c[i] = *v as u8;
        }
        fix_crc(&mut c);
        let _ = exercise(&c);
    }
}

/// The first node of `nodes` whose operator `is`.
fn find(nodes: &[NodeRec], is: impl Fn(&OpRec) -> bool) -> usize {
    nodes.iter().position(|n| is(&n.op)).expect("such a node")
}

#[test]
fn hostile_int8_descriptions_with_valid_crc_are_errors() {
    for b in [int8_zoo_blob(Dtype::F32), int8_zoo_blob(Dtype::I8)] {
        let (h, head, nodes, w) = decode(&b);
        let mut cases = 0;
        // Each mutation must be refused; where one reason is certain, that one, naming the node.
        let mut expect = |what: &str, reason: Option<Reason>, f: &dyn Fn(&mut OpRec)| {
            for (j, node) in nodes.iter().enumerate() {
                let mut ns = nodes.clone();
                f(&mut ns[j].op);
                if ns[j] == *node {
                    continue; // The mutation does not apply to this node.
                }
                let c = encode(&h, &head, &ns, &w);
                let e = Model::from_bytes(&c)
                    .err()
                    .unwrap_or_else(|| panic!("node {j} ({:?}): {what} accepted", node.op));
                if let Some(reason) = reason {
                    let node = j as u32;
                    assert_eq!(e, Error::Invalid { node, reason }, "{what}");
                }
                cases += 1;
            }
        };
        expect("zero point", Some(Reason::ZeroPoint), &|op| match op {
            OpRec::QDense { quant, .. } => quant.input_zp = 128,
            OpRec::QConv2d(c) => c.quant.output_zp = -129,
            OpRec::QAdd(p) => p.input2.zp = 300,
            OpRec::QConcat { output_zp, .. } => *output_zp = 1000,
            _ => {}
        });
        expect("clamp", Some(Reason::ActRange), &|op| match op {
            OpRec::QDense { quant, .. } => (quant.act_min, quant.act_max) = (10, 5),
            OpRec::QConv2d(c) => c.quant.act_min = -129,
            OpRec::QAdd(p) => p.act_max = 128,
            OpRec::QClamp { min, .. } => *min = 200,
            _ => {}
        });
        expect("add shift", Some(Reason::AddShift), &|op| {
            if let OpRec::QAdd(p) = op {
                p.input1.shift = 1;
            }
        });
        expect("add output shift", Some(Reason::AddShift), &|op| {
            if let OpRec::QAdd(p) = op {
                p.output_shift = -32;
            }
        });
        expect("add left shift", Some(Reason::AddShift), &|op| {
            if let OpRec::QAdd(p) = op {
                p.left_shift = 21;
            }
        });
        expect("multiplier", Some(Reason::Multiplier), &|op| match op {
            OpRec::QAdd(p) => p.input2.multiplier = 5,
            OpRec::QSoftmax {
                input_multiplier, ..
            } => *input_multiplier = -(1 << 30),
            _ => {}
        });
        for (scale, zero_point) in [(0.0, 0), (f32::NAN, 0), (-1.0, 0), (f32::INFINITY, 0)] {
            expect("scale", Some(Reason::Scale), &|op| {
                if let OpRec::Quantize(q) | OpRec::Dequantize(q) = op {
                    (q.scale, q.zero_point) = (scale, zero_point);
                }
            });
        }
        expect("quantize zero point", Some(Reason::Scale), &|op| {
            if let OpRec::Quantize(q) | OpRec::Dequantize(q) = op {
                q.zero_point = -200;
            }
        });
        expect("softmax shift", Some(Reason::SoftmaxParams), &|op| {
            if let OpRec::QSoftmax {
                input_left_shift, ..
            } = op
            {
                *input_left_shift = 31;
            }
        });
        expect("softmax diff_min", Some(Reason::SoftmaxParams), &|op| {
            if let OpRec::QSoftmax {
                input_left_shift,
                diff_min,
                ..
            } = op
            {
                // Positive, then too large for the shift.
                *diff_min = if *input_left_shift == 30 { 1 } else { i32::MIN };
            }
        });
        expect("softmax axis", Some(Reason::SoftmaxAxis), &|op| {
            if let OpRec::QSoftmax { axis, .. } = op {
                *axis = 0;
            }
        });
        expect(
            "per-channel count",
            Some(Reason::QuantChannels),
            &|op| match op {
                OpRec::QDense { quant, .. } => quant.params.len -= 9,
                OpRec::QConv2d(c) => c.quant.params.len += 1,
                _ => {}
            },
        );
        expect(
            "per-channel alignment",
            Some(Reason::MisalignedWeights),
            &|op| {
                if let OpRec::QConv2d(c) = op {
                    c.quant.params.offset -= 1;
                }
            },
        );
        expect("rescalings", Some(Reason::ConcatRescales), &|op| {
            if let OpRec::QConcat { rescales, .. } = op {
                rescales.len += 3;
            }
        });
        expect(
            "weights outside",
            Some(Reason::OutsideWeights),
            &|op| match op {
                OpRec::QConv2d(c) => c.weights.offset = u32::MAX - 3,
                OpRec::QConcat { rescales, .. } => *rescales = WRef { offset: !3, len: 6 },
                _ => {}
            },
        );
        expect(
            "int8 pooling counting its padding",
            Some(Reason::PoolIncludePad),
            &|op| {
                if let OpRec::AveragePool(p) = op {
                    p.count_include_pad = true;
                }
            },
        );
        expect("pad axes", Some(Reason::PadAxes), &|op| {
            if let OpRec::QPad { pads, .. } = op {
                pads[0] = [1, 0];
            }
        });
        expect("conv groups", Some(Reason::ConvParams), &|op| {
            if let OpRec::QConv2d(c) = op {
                c.params.groups = 3;
            }
        });
        expect("dense inputs", Some(Reason::DenseInput), &|op| {
            if let OpRec::QDense { inputs, .. } = op {
                *inputs += 1;
            }
        });
        println!("{cases} hostile int8 descriptions refused");
        assert!(cases >= 30, "only {cases} cases applied");

        // Operands of the wrong dtype: an int8 operator over f32 values, and the reverse.
        for (j, node) in nodes.iter().enumerate() {
            let mut ns = nodes.clone();
            let NodeRec { inputs, output, .. } = &mut ns[j];
            for o in inputs.iter_mut().chain([output]) {
                o.dtype = match o.dtype {
                    Dtype::F32 => Dtype::I8,
                    Dtype::I8 => Dtype::F32,
                };
            }
            let c = encode(&h, &head, &ns, &w);
            assert!(
                Model::from_bytes(&c).is_err(),
                "node {j} ({:?}) with its dtypes swapped",
                node.op
            );
        }
    }
}

#[test]
fn int8_parameters_out_of_range_in_the_weights_are_errors() {
    let b = int8_zoo_blob(Dtype::F32);
    let (h, head, nodes, w) = decode(&b);
    // The blob with `bytes` written at `at` in its weights.
    let patch = |at: usize, bytes: &[u8]| {
        let mut w = w.clone();
        w[at..at + bytes.len()].copy_from_slice(bytes);
        encode(&h, &head, &nodes, &w)
    };
    let patched = |at: usize, bytes: &[u8]| Model::from_bytes(&patch(at, bytes)).map(|_| ());
    let invalid = |node: usize, reason| Error::Invalid {
        node: node as u32,
        reason,
    };
    // A convolution's per-channel run: biases, multipliers, then shifts.
    let j = find(&nodes, |op| matches!(op, OpRec::QConv2d(_)));
    let OpRec::QConv2d(c) = &nodes[j].op else {
        unreachable!()
    };
    let (at, channels) = (
        c.quant.params.offset as usize,
        c.params.out_channels as usize,
    );
    let multiplier = at + 4 * channels;
    let shift = at + 8 * channels;
    for m in [5i32, (1 << 30) - 1, -(1 << 30), i32::MIN] {
        assert_eq!(
            patched(multiplier + 4, &m.to_le_bytes()).unwrap_err(),
            invalid(j, Reason::Multiplier),
            "multiplier {m}"
        );
    }
    for s in [31i8, -32, i8::MIN, i8::MAX] {
        assert_eq!(
            patched(shift + channels - 1, &[s as u8]).unwrap_err(),
            invalid(j, Reason::Shift),
            "shift {s}"
        );
    }
    // The limits themselves are valid, and any bias is.
    for (at, bytes) in [
        (multiplier, 0i32.to_le_bytes()),
        (multiplier, i32::MAX.to_le_bytes()),
        (multiplier, (1i32 << 30).to_le_bytes()),
        (at, i32::MIN.to_le_bytes()),
    ] {
        let c = patch(at, &bytes);
        let m = Model::from_bytes(&c).expect("a valid parameter");
        let mut arena = vec![0.0; m.arena_len()];
        run(&m, &mut arena).expect("runs");
    }
    for s in [30u8, (-31i8) as u8] {
        patched(shift, &[s]).expect("a valid shift");
    }
    // A concatenation's rescalings: (zp, multiplier, shift) per input.
    let j = find(&nodes, |op| matches!(op, OpRec::QConcat { .. }));
    let OpRec::QConcat { rescales, .. } = &nodes[j].op else {
        unreachable!()
    };
    let at = rescales.offset as usize;
    for (k, v, reason) in [
        (0, 128, Reason::ZeroPoint),
        (1, 12345, Reason::Multiplier),
        (2, 31, Reason::Shift),
        (5, -32, Reason::Shift),
    ] {
        assert_eq!(
            patched(at + 4 * k, &i32::to_le_bytes(v)).unwrap_err(),
            invalid(j, reason),
            "rescaling word {k} = {v}"
        );
    }
}

#[test]
fn run_and_run_i8_take_the_blob_s_io_dtype() {
    let (f32_blob, int8_blob) = (zoo_blob(), int8_zoo_blob(Dtype::I8));
    let m = Model::from_bytes(&f32_blob).unwrap();
    let mut arena = vec![0.0; m.arena_len()];
    let (i, o) = (m.input_len(), m.output_len());
    assert_eq!(
        m.run_i8(&vec![0; i], &mut arena, &mut vec![0; o]),
        Err(Error::IoDtype(Dtype::F32))
    );
    assert_eq!((m.input_quant(), m.output_quant()), (None, None));
    let m = Model::from_bytes(&int8_blob).unwrap();
    let mut arena = vec![0.0; m.arena_len()];
    let (i, o) = (m.input_len(), m.output_len());
    assert_eq!(
        m.run(&vec![0.0; i], &mut arena, &mut vec![0.0; o]),
        Err(Error::IoDtype(Dtype::I8))
    );
    assert!(matches!(
        m.run_i8(&vec![0; i - 1], &mut arena, &mut vec![0; o]),
        Err(Error::InputLength { .. })
    ));
    assert!(m.input_quant().is_some());
    // The softmax output: steps of 1/256 from -128.
    let q = m.output_quant().unwrap();
    assert_eq!((q.scale, q.zero_point), (1.0 / 256.0, -128));
    let mut y = vec![0; o];
    m.run_i8(&vec![3; i], &mut arena, &mut y).unwrap();
    // Probabilities that sum to one, within a step per class.
    let sum: i32 = y.iter().map(|&v| i32::from(v) + 128).sum();
    assert!((sum - 256).abs() <= o as i32, "{y:?}");

    // The description's io quantization must match the io dtype and be valid.
    let (h, head, nodes, w) = decode(&int8_blob);
    let mut bad = head.clone();
    bad.input_quant = None;
    assert_eq!(
        Model::from_bytes(&encode(&h, &bad, &nodes, &w)).unwrap_err(),
        Error::Decode
    );
    let mut bad = head.clone();
    bad.output_quant.as_mut().unwrap().zero_point = 128;
    assert_eq!(
        Model::from_bytes(&encode(&h, &bad, &nodes, &w)).unwrap_err(),
        Error::Decode
    );
    // And the header's dtype bytes must match the operands and each other.
    let mut c = int8_blob.clone();
    c[89] = 0;
    fix_crc(&mut c);
    assert_eq!(
        Model::from_bytes(&c).unwrap_err(),
        Error::BadHeader("dtype")
    );
    let mut c = f32_blob.clone();
    c[88..90].copy_from_slice(&[1, 1]);
    fix_crc(&mut c);
    assert!(Model::from_bytes(&c).is_err());
}

/// The fuzzers' runtime findings (`fuzz/regressions/runtime/`), replayed as the target runs
/// them (as they are, and with their CRC recomputed): each once panicked.
/// `int8-window-band-above-the-input.pdg`: an int8 convolution whose first band of output rows
/// reads only padding rows above the input; the host kernel computed the band's first input
/// row by a wrapping subtraction, then multiplied it by the row length, which overflowed (a
/// panic with overflow checks, as the fuzz build and debug builds have them).
#[test]
fn fuzz_regressions_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/runtime");
    let mut found = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions folder") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        // 16-aligned, as the fuzz target and firmware place a blob.
        let mut words = vec![0u128; bytes.len().div_ceil(16)];
        // SAFETY: u128 storage is valid as bytes; the view borrows `words` mutably.
        let aligned = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 16)
        };
        aligned[..bytes.len()].copy_from_slice(&bytes);
        let blob = &mut aligned[..bytes.len()];
        let _ = exercise(blob);
        if blob.len() >= paoding_runtime::format::HEADER_LEN {
            fix_crc(blob);
            let _ = exercise(blob);
        }
        found += 1;
    }
    assert!(found >= 1, "{}", dir.display());
}
