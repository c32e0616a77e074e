//! Property tests: random small graphs (convolutions with random shapes, strides, groups,
//! paddings and dilations; pools; dense; add; concat; pad; transpose; batch norm;
//! activations; softmax) run by paoding-runtime must match the core reference interpreter.

use paoding_core::{
    blob, interp,
    ir::{Activation, BatchNorm, Conv2d, Dense, Graph, Op, Pool},
    plan::MemoryPlan,
};
use paoding_runtime::Model;
use paoding_tests::{relative_max_diff, seeded_uniform};
use proptest::prelude::*;

/// A tiny deterministic generator for the parameters of each layer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    fn weights(&mut self, n: usize) -> Vec<f32> {
        seeded_uniform(n, self.below(1 << 30) as u64, -0.7, 0.7)
    }
    fn activation(&mut self) -> Activation {
        match self.below(6) {
            0 => Activation::Identity,
            1 | 2 => Activation::Relu,
            3 => Activation::Clip { min: 0.0, max: 6.0 },
            4 => Activation::Sigmoid,
            _ => Activation::Tanh,
        }
    }
}

/// Build a graph from layer codes; layers whose random parameters do not fit are skipped.
fn build(seed: u64, codes: &[u8], c: usize, h: usize, w: usize) -> Graph {
    let mut r = Rng(seed | 1);
    let mut g = Graph::new("x", vec![1, c, h, w]);
    let mut cur = g.input;
    let mut history = vec![cur];
    for (i, &code) in codes.iter().enumerate() {
        let shape = g.shape(cur).to_vec();
        let name = format!("n{i}");
        let op = match code % 10 {
            0..=2 => {
                let in_c = shape[1];
                let divisors: Vec<usize> = (1..=in_c).filter(|&d| in_c.is_multiple_of(d)).collect();
                let groups = divisors[r.below(divisors.len())];
                let out_c = groups * r.range(1, 3);
                let kernel = [r.range(1, 3), r.range(1, 3)];
                Op::Conv2d(Conv2d {
                    out_channels: out_c,
                    in_channels: in_c,
                    kernel,
                    stride: [r.range(1, 2), r.range(1, 3)],
                    dilation: [r.range(1, 2), r.range(1, 2)],
                    padding: [r.below(3), r.below(3), r.below(3), r.below(3)],
                    groups,
                    weights: r.weights(out_c * in_c / groups * kernel[0] * kernel[1]),
                    bias: r.weights(out_c),
                    activation: r.activation(),
                })
            }
            3 => {
                let kernel = [r.range(1, 3), r.range(1, 3)];
                let p = Pool {
                    kernel,
                    stride: [r.range(1, 2), r.range(1, 2)],
                    padding: [
                        r.below(kernel[0]),
                        r.below(kernel[1]),
                        r.below(kernel[0]),
                        r.below(kernel[1]),
                    ],
                    count_include_pad: r.below(2) == 0,
                };
                if r.below(2) == 0 {
                    Op::MaxPool(p)
                } else {
                    Op::AveragePool(p)
                }
            }
            4 => Op::BatchNorm(BatchNorm::affine(r.weights(shape[1]), r.weights(shape[1]))),
            5 => Op::Activation(r.activation()),
            6 => Op::Pad {
                pads: vec![
                    (0, 0),
                    (r.below(2), r.below(2)),
                    (r.below(3), r.below(2)),
                    (r.below(2), r.below(3)),
                ],
                value: r.weights(1)[0],
            },
            7 => {
                let perms = [[0, 1, 3, 2], [0, 2, 1, 3], [0, 3, 1, 2], [0, 2, 3, 1]];
                Op::Transpose {
                    perm: perms[r.below(4)].to_vec(),
                }
            }
            8 => {
                // Residual Add with an earlier value of the same shape, else Softmax.
                match history
                    .iter()
                    .rev()
                    .skip(1)
                    .find(|&&v| g.shape(v) == shape.as_slice())
                {
                    Some(&v) => {
                        cur = g.push(&name, Op::Add, &[cur, v]).unwrap();
                        history.push(cur);
                        continue;
                    }
                    None => Op::Softmax {
                        axis: r.range(1, 3),
                    },
                }
            }
            _ => {
                // Concat along channels with an earlier value matching elsewhere, else with itself.
                let other = history
                    .iter()
                    .rev()
                    .skip(1)
                    .find(|&&v| {
                        let s = g.shape(v);
                        s[2..] == shape[2..]
                    })
                    .copied()
                    .unwrap_or(cur);
                Op::Concat { axis: 1 }.clone().then_push(
                    &mut g,
                    &name,
                    &[cur, other],
                    &mut cur,
                    &mut history,
                );
                continue;
            }
        };
        if let Ok(v) = g.push(&name, op, &[cur]) {
            // Keep the model small.
            if g.values[v].len() <= 4096 {
                cur = v;
                history.push(cur);
            } else {
                g.nodes.pop();
                g.values.pop();
            }
        }
    }
    // A dense head on the flattened result.
    let n = g.values[cur].len();
    let flat = g
        .push("flat", Op::Reshape { shape: vec![1, n] }, &[cur])
        .unwrap();
    let units = r.range(1, 6);
    let fc = g
        .push(
            "fc",
            Op::Dense(Dense {
                units,
                inputs: n,
                weights: r.weights(units * n),
                bias: r.weights(units),
                activation: r.activation(),
            }),
            &[flat],
        )
        .unwrap();
    g.output = if r.below(2) == 0 {
        g.push("sm", Op::Softmax { axis: 1 }, &[fc]).unwrap()
    } else {
        fc
    };
    g.check().unwrap();
    g
}

trait ThenPush {
    fn then_push(
        self,
        g: &mut Graph,
        name: &str,
        inputs: &[usize],
        cur: &mut usize,
        history: &mut Vec<usize>,
    );
}

impl ThenPush for Op {
    fn then_push(
        self,
        g: &mut Graph,
        name: &str,
        inputs: &[usize],
        cur: &mut usize,
        history: &mut Vec<usize>,
    ) {
        if let Ok(v) = g.push(name, self, inputs) {
            *cur = v;
            history.push(v);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_graphs_match_the_interpreter(
        seed in any::<u64>(),
        codes in proptest::collection::vec(any::<u8>(), 1..7),
        c in 1usize..5,
        h in 1usize..10,
        w in 1usize..10,
    ) {
        let g = build(seed, &codes, c, h, w);
        let plan = MemoryPlan::new(&g);
        let bytes = blob::write_blob(&g, &plan).unwrap();
        let model = Model::from_bytes(&bytes).unwrap();
        prop_assert_eq!(model.arena_bytes(), plan.arena_bytes);
        let x = seeded_uniform(model.input_len(), seed ^ 0x5eed, -1.0, 1.0);
        let mut arena = vec![f32::NAN; model.arena_len()];
        let mut y = vec![0.0; model.output_len()];
        model.run(&x, &mut arena, &mut y).unwrap();
        let reference = interp::run(&g, &x).unwrap();
        let diff = relative_max_diff(&y, &reference);
        prop_assert!(diff <= 1e-5, "diff {} on {:?}", diff, g.nodes.iter().map(|n| n.op.kind()).collect::<Vec<_>>());
    }
}

#[test]
fn the_generator_covers_every_operator() {
    let mut seen = std::collections::BTreeSet::new();
    let mut nodes = 0;
    for seed in 0..300u64 {
        let codes: Vec<u8> = (0..6).map(|i| (seed * 7 + i * 3) as u8).collect();
        let g = build(
            seed,
            &codes,
            1 + seed as usize % 4,
            3 + seed as usize % 6,
            4 + seed as usize % 5,
        );
        nodes += g.nodes.len();
        for n in &g.nodes {
            seen.insert(n.op.kind());
        }
    }
    println!("{nodes} nodes, kinds: {seen:?}");
    for kind in [
        "Conv2d",
        "DepthwiseConv2d",
        "MaxPool",
        "AveragePool",
        "BatchNorm",
        "Pad",
        "Transpose",
        "Add",
        "Concat",
        "Softmax",
        "Dense",
        "Reshape",
    ] {
        assert!(seen.contains(kind), "{kind} never generated");
    }
}
