//! `paoding fit` on an 11 M-parameter model, against issue #21's target (≤ 2 s for the whole
//! process, peak memory ≤ 4× the model's f32 weights, the search's step unchanged):
//! `cargo bench -p paoding-tests --bench fit_large`.
//!
//! The model is torchvision's resnet18 with 10 classes at 32×32 input, as
//! `tests/large/export_resnet18.py` exports it (7×7 stride-2 stem, 3×3 stride-2 max pool,
//! BasicBlocks [2, 2, 2, 2] at 64-128-256-512, global average pooling, dense; batch norms
//! folded into the convolutions; 11,176,842 parameters, 37 M MACs), built here as ONNX with
//! seeded Kaiming-normal weights so that no Python is needed. The script's file (the same
//! network, torch's weights) can be timed instead: `RESNET18=path/to/resnet18_32.onnx`.
//!
//! Each fit runs in a child process (this executable again), so that its peak resident
//! memory is the fit's alone: once with an empty probe cache (the refit's 16 probes and the
//! 16 of the held-out check set are synthesized) and twice with the cache the first run left
//! (what every later fit of the model costs, e.g. for another board or budget).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use paoding_cli::fit::{fit, FitOptions};
use paoding_cli::probes::ProbeSettings;
use paoding_tests::onnx_builder::{Attr, OnnxBuilder};

/// Seeded normal draws (Box–Muller over a SplitMix64 stream).
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn vec(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.uniform().max(1e-300), self.uniform());
                (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }
}

/// torchvision's resnet18 (10 classes) at 32×32, batch norms folded (unit statistics: the
/// folded weights are the convolutions' own, biases zero), Kaiming-normal (fan out) weights.
fn resnet18(seed: u64) -> Vec<u8> {
    let mut b = OnnxBuilder::new(&[1, 3, 32, 32], 13);
    let mut rng = Normal(seed);
    let mut n = 0;
    let mut conv = |b: &mut OnnxBuilder, x: &str, cin: i64, cout: i64, k: i64, stride: i64| {
        n += 1;
        let (w, bias, out) = (format!("w{n}"), format!("b{n}"), format!("conv{n}"));
        let std = (2.0 / (cout * k * k) as f64).sqrt();
        b.weight(
            &w,
            &[cout, cin, k, k],
            rng.vec((cout * cin * k * k) as usize, std),
        );
        b.weight(&bias, &[cout], vec![0.0; cout as usize]);
        let pad = k / 2;
        b.node(
            "Conv",
            &[x, &w, &bias],
            &out,
            &[
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![stride, stride])),
                ("pads", Attr::Ints(vec![pad; 4])),
            ],
        );
        out
    };
    let relu = |b: &mut OnnxBuilder, x: &str| {
        let out = format!("{x}_relu");
        b.node("Relu", &[x], &out, &[]);
        out
    };
    let stem = conv(&mut b, "x", 3, 64, 7, 2);
    let stem = relu(&mut b, &stem);
    b.node(
        "MaxPool",
        &[&stem],
        "pool",
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1; 4])),
        ],
    );
    let (mut x, mut cin) = ("pool".to_string(), 64);
    for (cout, stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
        for block in 0..2 {
            let s = if block == 0 { stride } else { 1 };
            let h = conv(&mut b, &x, cin, cout, 3, s);
            let h = relu(&mut b, &h);
            let h = conv(&mut b, &h, cout, cout, 3, 1);
            let identity = if s != 1 || cin != cout {
                conv(&mut b, &x, cin, cout, 1, s)
            } else {
                x.clone()
            };
            let sum = format!("{h}_add");
            b.node("Add", &[&h, &identity], &sum, &[]);
            x = relu(&mut b, &sum);
            cin = cout;
        }
    }
    b.node("GlobalAveragePool", &[&x], "gap", &[]);
    b.node("Flatten", &["gap"], "flat", &[("axis", Attr::Int(1))]);
    b.weight("fc_w", &[10, 512], rng.vec(5120, (1.0 / 512f64).sqrt()));
    b.weight("fc_b", &[10], vec![0.0; 10]);
    b.node(
        "Gemm",
        &["flat", "fc_w", "fc_b"],
        "logits",
        &[("transB", Attr::Int(1))],
    );
    b.encode("logits")
}

/// Peak resident memory of this process so far (VmHWM), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// The child: one fit, then its time, peak memory and result on one line.
fn child(model: &Path, cache: &Path) {
    let t = Instant::now();
    let options = FitOptions {
        probes: ProbeSettings {
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        },
        // The target was set, and measured, for f32; the profile stores int8 since.
        dtype: Some(paoding_cli::fit::DtypeChoice::F32),
        ..Default::default()
    };
    let fitted = fit(model, "cortex-m7", &options).expect("fits");
    let r = &fitted.report;
    // The search's invariant: the step fits, one removal less does not.
    let less_fits = r
        .one_step_less
        .is_some_and(|u| u.check(&r.budget).iter().all(|c| c.fits));
    assert!(!less_fits, "one removal less fits too");
    println!(
        "{:.2} {} {} {}",
        t.elapsed().as_secs_f64(),
        peak_rss(),
        r.step,
        r.total_steps
    );
}

fn run(model: &Path, cache: &Path, weights_bytes: u64, what: &str) {
    let out = Command::new(std::env::current_exe().expect("this executable"))
        .arg("--fit-child")
        .arg(model)
        .arg(cache)
        .output()
        .expect("child runs");
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert!(
        f.len() >= 4,
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (secs, peak): (f64, u64) = (f[0].parse().expect("time"), f[1].parse().expect("rss"));
    println!(
        "{what:<34} {secs:>6.2} s {:>5} {:>7.0} MB {:>5.1}x {:>5} {} of {}",
        if secs <= 2.0 { "met" } else { "over" },
        peak as f64 / 1e6,
        peak as f64 / weights_bytes as f64,
        if peak <= 4 * weights_bytes {
            "met"
        } else {
            "over"
        },
        f[2],
        f[3]
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--fit-child") {
        child(Path::new(&args[2]), Path::new(&args[3]));
        return;
    }
    let dir = std::env::temp_dir().join(format!("paoding-fit-large-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary folder");
    let model: PathBuf = match std::env::var_os("RESNET18") {
        Some(p) => PathBuf::from(p),
        None => {
            let path = dir.join("resnet18_32.onnx");
            std::fs::write(&path, resnet18(0)).expect("model written");
            path
        }
    };
    let imported = paoding_cli::import::import_onnx(&model).expect("imports");
    let params = imported.graph.param_count() as u64;
    drop(imported);
    println!(
        "== paoding fit {} --profile cortex-m7 --dtype f32 (release; {params} parameters, {:.1} MB of f32 weights); targets: ≤ 2 s, ≤ 4x the weights in peak memory",
        model.display(),
        4.0 * params as f64 / 1e6
    );
    println!(
        "{:<34} {:>8} {:>5} {:>10} {:>6} {:>5} step (one less does not fit)",
        "run", "time", "≤ 2 s", "peak", "/ f32", "≤ 4x"
    );
    let cache = dir.join("cache");
    run(&model, &cache, 4 * params, "empty probe cache (synthesis)");
    for i in 1..=2 {
        run(
            &model,
            &cache,
            4 * params,
            &format!("probes cached, run {i}"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
