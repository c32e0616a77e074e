//! Times one convolution layer (for profiling the conv kernel with callgrind):
//! `cargo run --release -p paoding-runtime --example conv_profile -- C H W OC K`.
use paoding_core::{
    blob,
    ir::{Activation, Conv2d, Graph, Op},
    plan::MemoryPlan,
};
use paoding_runtime::Model;
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("a number"))
        .collect();
    let (c, h, w, oc, k) = match a.as_slice() {
        [c, h, w, oc, k] => (*c, *h, *w, *oc, *k),
        _ => (16, 4, 4, 32, 3),
    };
    let mut g = Graph::new("x", vec![1, c, h, w]);
    let n = oc * c * k * k;
    g.output = g
        .push(
            "conv",
            Op::Conv2d(Conv2d {
                out_channels: oc,
                in_channels: c,
                kernel: [k, k],
                stride: [1, 1],
                dilation: [1, 1],
                padding: [k / 2; 4],
                groups: 1,
                weights: (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect(),
                bias: vec![0.1; oc],
                activation: Activation::Relu,
            }),
            &[g.input],
        )
        .expect("conv");
    let bytes = blob::write_blob(&g, &MemoryPlan::new(&g)).expect("blob");
    let model = Model::from_bytes(&bytes).expect("valid");
    let x: Vec<f32> = (0..model.input_len())
        .map(|i| (i % 11) as f32 / 11.0)
        .collect();
    let mut arena = vec![0.0; model.arena_len()];
    let mut y = vec![0.0; model.output_len()];
    let iters = 2000;
    let t = Instant::now();
    for _ in 0..iters {
        model.run(&x, &mut arena, &mut y).expect("runs");
    }
    let macs = oc * c * k * k * h * w;
    let dt = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{:.2} µs per run, {:.2} MAC/ns",
        dt * 1e6,
        macs as f64 / dt / 1e9
    );
}
