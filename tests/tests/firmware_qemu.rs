//! The whole chain on a microcontroller: ONNX → `paoding fit` (in the firmware's build.rs) →
//! blob in flash → paoding-runtime on QEMU's emulated Cortex-M7 (mps2-an500) and Cortex-M4
//! (mps2-an386), with the same answer as the host runtime; plus a build-only check for the
//! Cortex-M0+ (thumbv6m-none-eabi).
//!
//! These tests build the firmware crate `boards/qemu-mps2-an500` with cargo (its build script
//! compiles tract for the host: minutes the first time, incremental after, in
//! `target/firmware` or `$PAODING_FIRMWARE_TARGET_DIR`) and need `qemu-system-arm`, so they
//! are `#[ignore]`d in `cargo test --workspace`; `.ci/run` runs them with
//! `cargo test -p paoding-tests --test firmware_qemu -- --ignored --nocapture`. There a
//! missing QEMU fails, never skips.
//!
//! Measurements printed: flash (vector table + text + rodata + data image) and its parts, RAM
//! (data + bss + stack high-water mark), blob and arena sizes, and instructions per inference
//! and per MAC from SysTick under `-icount shift=0`, calibrated by a loop of known length.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use object::{Object, ObjectSection, ObjectSymbol};
use paoding_cli::fit::{fit, BudgetOverrides, DtypeChoice, FitOptions};
use paoding_core::cost::{ModelCost, WeightDtype};
use paoding_runtime::format::Dtype;
use paoding_runtime::quant::dequantize;
use paoding_runtime::Model;

/// Sample inputs of a model (as the firmware's build.rs takes them).
#[derive(Clone, Copy, PartialEq)]
enum Inputs {
    /// The digits test split, f32 NCHW.
    Digits,
    /// MLPerf Tiny's keyword-spotting inputs: int8 codes (an f32 model takes their reals).
    Kws,
}

/// An embedded model: (name, file relative to the workspace root, dtype (`None`: the file's
/// own choice), flash budget below the profile's, inputs).
type Embedded = (
    &'static str,
    &'static str,
    Option<DtypeChoice>,
    Option<u64>,
    Inputs,
);

/// The models the firmware embeds (same names, files, dtypes, budgets and inputs as its
/// build.rs).
const MODELS: &[Embedded] = &[
    (
        "cnn_pool",
        FIXTURE_POOL,
        Some(DtypeChoice::F32),
        None,
        Inputs::Digits,
    ),
    (
        "dscnn",
        FIXTURE_DSCNN,
        Some(DtypeChoice::F32),
        None,
        Inputs::Digits,
    ),
    (
        "mlp",
        FIXTURE_MLP,
        Some(DtypeChoice::F32),
        None,
        Inputs::Digits,
    ),
    (
        "cnn_pool_i8",
        FIXTURE_POOL,
        Some(DtypeChoice::Int8),
        None,
        Inputs::Digits,
    ),
    (
        "dscnn_i8",
        FIXTURE_DSCNN,
        Some(DtypeChoice::Int8),
        None,
        Inputs::Digits,
    ),
    (
        "mlp_i8",
        FIXTURE_MLP,
        Some(DtypeChoice::Int8),
        None,
        Inputs::Digits,
    ),
    ("kws", KWS_F32, Some(DtypeChoice::F32), None, Inputs::Kws),
    ("kws_i8", KWS_INT8, None, None, Inputs::Kws),
    ("kws_i8_24k", KWS_INT8, None, Some(24 * 1024), Inputs::Kws),
];
const FIXTURE_POOL: &str = "tests/fixtures/cnn_pool_torch.onnx";
const FIXTURE_DSCNN: &str = "tests/fixtures/dscnn_torch.onnx";
const FIXTURE_MLP: &str = "tests/fixtures/mlp_torch.onnx";
const KWS_F32: &str = "../shared/models/kws_dscnn.onnx";
const KWS_INT8: &str = "../shared/models/kws_dscnn_int8.onnx";
const KWS_INPUTS: &str = "../shared/models/kws_dscnn_int8.x.npy";
/// TFLite's reference kernels' outputs for [`KWS_INPUTS`], which `kws_i8` must give byte for
/// byte.
const KWS_REFERENCE: &str = "../shared/models/kws_dscnn_int8.tflite_ref.npy";
const PROFILE: &str = "boards/qemu-mps2-an500.toml";
const DIGITS: &str = "tests/fixtures/digits_test_x_nchw.npy";
const ELF_NAME: &str = "paoding-qemu-mps2-an500";
/// (QEMU machine, CPU) pairs the firmware runs on.
const MACHINES: &[(&str, &str)] = &[("mps2-an500", "cortex-m7"), ("mps2-an386", "cortex-m4")];
const QEMU_TIMEOUT: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn firmware_dir() -> PathBuf {
    root().join("boards/qemu-mps2-an500")
}

fn target_dir() -> PathBuf {
    std::env::var_os("PAODING_FIRMWARE_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/firmware"))
}

/// `cargo build --release [args]` in the firmware crate, with the environment cargo set for
/// this test cleaned so the firmware's own `.cargo/config.toml` and target dir apply.
fn cargo_build(args: &[&str]) -> Duration {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(firmware_dir())
        .args(["build", "--release"])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let cargo_var = k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR";
        if cargo_var || matches!(k.as_str(), "RUSTFLAGS" | "RUSTC_WORKSPACE_WRAPPER") {
            cmd.env_remove(&k);
        }
    }
    let start = Instant::now();
    let status = cmd.status().expect("cannot run cargo");
    let took = start.elapsed();
    assert!(
        status.success(),
        "firmware build failed: cargo build --release {} in {}",
        args.join(" "),
        firmware_dir().display()
    );
    println!(
        "firmware build (cargo build --release {}): {:.1} s",
        args.join(" "),
        took.as_secs_f64()
    );
    took
}

fn elf_path(target: &str) -> PathBuf {
    target_dir().join(target).join("release").join(ELF_NAME)
}

/// Fail loudly when QEMU is missing: CI must install it, never skip.
fn require_qemu() {
    match Command::new("qemu-system-arm").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout);
            println!("{}", v.lines().next().unwrap_or("qemu-system-arm"));
        }
        _ => panic!(
            "qemu-system-arm is not installed or does not run: the firmware test needs it \
             (apt-get install -y qemu-system-arm)"
        ),
    }
}

/// Run the ELF under QEMU and return its stdout; panics on a timeout or a failing exit.
fn run_qemu(machine: &str, cpu: &str, elf: &Path) -> String {
    let mut child = Command::new("qemu-system-arm")
        .args(["-M", machine, "-cpu", cpu, "-nographic"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .args(["-icount", "shift=0", "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start qemu-system-arm");
    // Read stdout on a thread so a chatty firmware never blocks on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for qemu") {
            break st;
        }
        if start.elapsed() > QEMU_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{machine}: QEMU still running after {QEMU_TIMEOUT:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = reader.join().expect("reader thread");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success(),
        "{machine}: firmware exited with {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    println!(
        "{machine} ({cpu}): QEMU ran for {:.2} s",
        start.elapsed().as_secs_f64()
    );
    out
}

/// What the firmware printed.
#[derive(Debug, Default)]
struct Run {
    calib_insns: u64,
    calib_ticks: u64,
    /// name → (blob bytes, crc, arena bytes, validate ticks).
    models: BTreeMap<String, (usize, u32, usize, u64)>,
    /// (name, sample) → output bits (f32 outputs).
    outputs: BTreeMap<(String, usize), Vec<u32>>,
    /// (name, sample) → outputs (int8 outputs).
    outputs_i8: BTreeMap<(String, usize), Vec<i8>>,
    /// (name, sample) → ticks.
    ticks: BTreeMap<(String, usize), u64>,
    stack_hwm: usize,
    /// Values on which the firmware's requantization agreed with its definition.
    requant_checked: u64,
    profile: BTreeMap<String, (u64, Vec<(u64, u64)>)>,
}

impl Run {
    fn insns_per_tick(&self) -> f64 {
        self.calib_insns as f64 / self.calib_ticks as f64
    }
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("hex {s}"))
}

fn num<T: std::str::FromStr>(s: &str) -> T {
    s.parse().unwrap_or_else(|_| panic!("number {s}"))
}

fn parse(out: &str) -> Run {
    let mut r = Run::default();
    let mut lines = out.lines();
    assert_eq!(
        lines.next().map(str::trim),
        Some("paoding-firmware 1"),
        "firmware banner missing:\n{out}"
    );
    let mut done = false;
    let mut current_profile = None;
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["calib", insns, ticks] => {
                r.calib_insns = num(insns);
                r.calib_ticks = num(ticks);
            }
            ["model", name, blob, crc, arena, _inputs, _outputs, validate] => {
                r.models.insert(
                    name.to_string(),
                    (num(blob), hex(crc) as u32, num(arena), num(validate)),
                );
            }
            ["y", name, sample, ys @ ..] => {
                let bits = ys.iter().map(|y| hex(y) as u32).collect();
                r.outputs.insert((name.to_string(), num(sample)), bits);
            }
            ["q", name, sample, ys @ ..] => {
                let values = ys.iter().map(|y| num(y)).collect();
                r.outputs_i8.insert((name.to_string(), num(sample)), values);
            }
            ["t", name, sample, ticks] => {
                r.ticks.insert((name.to_string(), num(sample)), num(ticks));
            }
            ["requant", checked] => r.requant_checked = num(checked),
            ["stack", hwm, _painted] => r.stack_hwm = num(hwm),
            ["profile", name, runs, _outside] => {
                r.profile.insert(name.to_string(), (num(runs), Vec::new()));
                current_profile = Some(name.to_string());
            }
            ["pc", addr, n] => {
                let name = current_profile.as_ref().expect("pc before profile");
                let p = r.profile.get_mut(name).expect("profile");
                p.1.push((hex(addr), num(n)));
            }
            ["done"] => done = true,
            ["error", ..] => panic!("firmware reported: {line}"),
            _ => panic!("unexpected firmware line: {line:?}"),
        }
    }
    assert!(done, "firmware output ends early:\n{out}");
    assert!(r.calib_ticks > 0, "no calibration");
    assert!(
        r.requant_checked > 100_000,
        "the firmware checked its requantization on {} values only",
        r.requant_checked
    );
    r
}

/// The host's side: the same fit, the same inputs, the host runtime.
struct HostModel {
    name: &'static str,
    /// Stored in int8 (TFLite's scheme): outputs must be bit-exact.
    int8: bool,
    blob: Vec<u8>,
    /// Total MACs, and those of dense and convolution layers.
    macs: u64,
    dense_conv_macs: u64,
    /// (op, MACs) per node.
    nodes: Vec<(String, u64)>,
    /// Per sample: f32 outputs, or (a model with int8 output) empty.
    outputs: Vec<Vec<f32>>,
    /// Per sample: int8 outputs (a model with int8 input and output).
    outputs_i8: Vec<Vec<i8>>,
}

/// The first `samples` rows of a `.npy` of inputs of `n` values.
fn rows(path: &str, n: usize, samples: usize) -> Vec<f32> {
    let (count, x) = paoding_cli::npy::read_batch(&root().join(path), n).expect("inputs");
    assert!(count >= samples, "{path}: {count} rows");
    x[..samples * n].to_vec()
}

fn host_models(samples: usize) -> Vec<HostModel> {
    let mut models = Vec::new();
    // The keyword spotter's int8 input parameters: an f32 model takes the reals of its codes.
    let kws = fit_entry("kws_i8", KWS_INT8, None, None)
        .blob
        .expect("blob");
    let kws_quant = Model::from_bytes(&kws)
        .expect("kws blob")
        .input_quant()
        .expect("int8 input");
    for &(name, file, dtype, flash, inputs) in MODELS {
        let fitted = fit_entry(name, file, dtype, flash);
        let blob = fitted.blob.clone().expect("blob");
        let graph = fitted.graph.as_ref().expect("graph");
        let cost = ModelCost::new(graph, WeightDtype::F32);
        let nodes: Vec<(String, u64)> = cost.nodes.iter().map(|n| (n.op.clone(), n.macs)).collect();
        let dense_conv_macs = nodes
            .iter()
            .filter(|(op, _)| op.contains("Conv") || op.starts_with("Dense"))
            .map(|(_, m)| m)
            .sum();
        let model = Model::from_bytes(&blob).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (n_in, n_out) = (model.input_len(), model.output_len());
        let x = match inputs {
            Inputs::Digits => rows(DIGITS, n_in, samples),
            Inputs::Kws => rows(KWS_INPUTS, n_in, samples),
        };
        let mut arena = vec![0.0f32; model.arena_len()];
        let (mut outputs, mut outputs_i8) = (Vec::new(), Vec::new());
        for x in x.chunks(n_in) {
            if model.io_dtype() == Dtype::I8 {
                let codes: Vec<i8> = x.iter().map(|&v| v as i8).collect();
                let mut y = vec![0i8; n_out];
                model.run_i8(&codes, &mut arena, &mut y).expect("host run");
                outputs_i8.push(y);
            } else {
                let reals: Vec<f32> = match inputs {
                    Inputs::Kws => x
                        .iter()
                        .map(|&v| dequantize(v as i8, kws_quant.scale, kws_quant.zero_point))
                        .collect(),
                    Inputs::Digits => x.to_vec(),
                };
                let mut y = vec![0.0f32; n_out];
                model.run(&reals, &mut arena, &mut y).expect("host run");
                outputs.push(y);
            }
        }
        models.push(HostModel {
            name,
            int8: fitted.report.dtype == WeightDtype::Int8,
            blob,
            macs: cost.macs,
            dense_conv_macs,
            nodes,
            outputs,
            outputs_i8,
        });
    }
    models
}

/// An int8 `.npy` of shape `[N, k]`, row by row.
fn read_i8_rows(path: &str, k: usize) -> Vec<Vec<i8>> {
    let (_, values) = paoding_cli::npy::read_batch(&root().join(path), k).expect("reference");
    values
        .chunks(k.max(1))
        .map(|r| r.iter().map(|&v| v as i8).collect())
        .collect()
}

/// What `fit` makes of `file` with `dtype` and `flash` on the firmware's profile (as build.rs
/// fits it); panics unless it fits.
fn fit_entry(
    name: &str,
    file: &str,
    dtype: Option<DtypeChoice>,
    flash: Option<u64>,
) -> paoding_cli::fit::Fitted {
    let options = FitOptions {
        dtype,
        overrides: BudgetOverrides {
            flash_bytes: flash,
            ..Default::default()
        },
        ..FitOptions::default()
    };
    let fitted = fit(
        &root().join(file),
        root().join(PROFILE).to_str().expect("utf-8 path"),
        &options,
    )
    .unwrap_or_else(|e| panic!("{name}: fit: {e}"));
    assert!(fitted.ok(), "{name}: {}", fitted.report.message);
    fitted
}

/// Section sizes of the ELF, and the code size of paoding-runtime's own functions.
struct Sizes {
    sections: BTreeMap<String, u64>,
    runtime_text: u64,
}

fn elf_sizes(elf: &Path) -> Sizes {
    let data = std::fs::read(elf).expect("read ELF");
    let file = object::File::parse(&*data).expect("parse ELF");
    let mut sections = BTreeMap::new();
    for s in file.sections() {
        if let Ok(name) = s.name() {
            if matches!(
                name,
                ".vector_table" | ".text" | ".rodata" | ".data" | ".bss" | ".uninit"
            ) {
                sections.insert(name.to_string(), s.size());
            }
        }
    }
    let runtime_text = file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text)
        .filter(|s| s.name().is_ok_and(|n| n.contains("paoding_runtime")))
        .map(|s| s.size())
        .sum();
    Sizes {
        sections,
        runtime_text,
    }
}

#[test]
#[ignore = "builds the firmware and needs qemu-system-arm: run by .ci/run with --ignored"]
fn firmware_on_qemu_matches_host_runtime() {
    require_qemu();
    cargo_build(&[]);
    let elf = elf_path("thumbv7em-none-eabihf");
    let runs: Vec<(&str, Run)> = MACHINES
        .iter()
        .map(|&(machine, cpu)| (machine, parse(&run_qemu(machine, cpu, &elf))))
        .collect();
    let samples = runs[0].1.ticks.len() / MODELS.len();
    assert!(samples >= 1, "no samples ran");
    let host = host_models(samples);

    // Same models (the fit is deterministic: the CRCs agree), same outputs.
    for (machine, run) in &runs {
        assert_eq!(run.models.len(), host.len(), "{machine}: models");
        let (mut values, mut exact, mut worst) = (0usize, 0usize, 0.0f64);
        for m in &host {
            let (blob_len, crc, arena, _) = run.models[m.name];
            let h = Model::from_bytes(&m.blob).expect("blob");
            assert_eq!(blob_len, m.blob.len(), "{machine} {}: blob size", m.name);
            assert_eq!(crc, h.header().crc, "{machine} {}: blob CRC", m.name);
            assert_eq!(arena, h.arena_bytes(), "{machine} {}: arena", m.name);
            for (i, want) in m.outputs.iter().enumerate() {
                let got = &run.outputs[&(m.name.to_string(), i)];
                assert_eq!(got.len(), want.len(), "{machine} {} #{i}: length", m.name);
                for (g, w) in got.iter().zip(want) {
                    let g = f32::from_bits(*g);
                    values += 1;
                    if g.to_bits() == w.to_bits() {
                        exact += 1;
                    }
                    // int8 arithmetic is integer up to the final dequantization, which both
                    // sides compute with the same single f32 operations: every bit agrees.
                    if m.int8 {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{machine} {} sample {i}: int8 firmware {g:e} vs host {w:e}",
                            m.name
                        );
                    }
                    let rel = f64::from((g - w).abs()) / f64::from(w.abs().max(1.0));
                    worst = worst.max(rel);
                    assert!(
                        rel <= 1e-6,
                        "{machine} {} sample {i}: firmware {g:e} vs host {w:e}",
                        m.name
                    );
                }
            }
        }
        // Models with int8 input and output: the same bytes.
        let mut bytes = 0;
        for m in &host {
            for (i, want) in m.outputs_i8.iter().enumerate() {
                let got = run
                    .outputs_i8
                    .get(&(m.name.to_string(), i))
                    .unwrap_or_else(|| panic!("{machine} {} #{i}: no int8 outputs", m.name));
                assert_eq!(
                    got, want,
                    "{machine} {} sample {i}: firmware vs host",
                    m.name
                );
                bytes += got.len();
            }
        }
        println!(
            "{machine}: {exact} of {values} f32 output values bit-exact with the host runtime \
             (largest relative difference {worst:e}); {bytes} of {bytes} int8 outputs identical"
        );
        // The keyword spotter as its file quantized it: TFLite's reference kernels' bytes.
        let kws = host.iter().find(|m| m.name == "kws_i8").expect("kws_i8");
        let reference = read_i8_rows(KWS_REFERENCE, kws.outputs_i8[0].len());
        let mut same = 0;
        for (i, want) in reference.iter().take(samples).enumerate() {
            let got = &run.outputs_i8[&("kws_i8".to_string(), i)];
            assert_eq!(got, want, "{machine} kws_i8 sample {i}: firmware vs TFLite");
            same += got.len();
        }
        println!(
            "{machine}: kws_dscnn_int8 {same} of {same} output bytes identical to TFLite's \
             reference kernels ({samples} samples of {KWS_INPUTS})"
        );
    }
    // Both CPUs compute the same bits.
    assert_eq!(
        (&runs[0].1.outputs, &runs[0].1.outputs_i8),
        (&runs[1].1.outputs, &runs[1].1.outputs_i8),
        "Cortex-M7 and Cortex-M4 outputs differ"
    );
    for m in &host {
        let y: Vec<String> = match (m.outputs.first(), m.outputs_i8.first()) {
            (Some(y), _) => y.iter().map(|v| format!("{v:.4}")).collect(),
            (_, Some(y)) => y.iter().map(|v| v.to_string()).collect(),
            _ => Vec::new(),
        };
        println!("{} sample 0 on the device: [{}]", m.name, y.join(", "));
    }

    // Measurements.
    let sizes = elf_sizes(&elf);
    let s = |n: &str| sizes.sections.get(n).copied().unwrap_or(0);
    let blobs: u64 = host.iter().map(|m| m.blob.len() as u64).sum();
    let flash = s(".vector_table") + s(".text") + s(".rodata") + s(".data");
    let m7 = &runs[0].1;
    let arena = host
        .iter()
        .map(|m| Model::from_bytes(&m.blob).expect("blob").arena_bytes())
        .max()
        .unwrap_or(0) as u64;
    let ram = s(".data") + s(".bss") + s(".uninit") + m7.stack_hwm as u64;
    println!(
        "\nfirmware {} (thumbv7em-none-eabihf, opt-level \"s\", LTO):",
        elf.display()
    );
    println!(
        "  flash {flash} B = vector table {} + text {} + rodata {} + data {}",
        s(".vector_table"),
        s(".text"),
        s(".rodata"),
        s(".data")
    );
    println!(
        "  of which model blobs {blobs} B ({}), code {} B (paoding-runtime's own functions {} B)",
        host.iter()
            .map(|m| format!("{} {}", m.name, m.blob.len()))
            .collect::<Vec<_>>()
            .join(", "),
        s(".text"),
        sizes.runtime_text
    );
    println!(
        "  RAM {ram} B = data {} + bss {} (arena {arena} + outputs, timer, stack paint bounds) + stack high-water mark {} B",
        s(".data"),
        s(".bss") + s(".uninit"),
        m7.stack_hwm
    );
    println!("  RAM beyond the arena: {} B", ram.saturating_sub(arena));
    // Instructions per MAC on the Cortex-M7 (the first run; the M4 counts the same).
    let mut per_mac = BTreeMap::new();
    for (machine, run) in &runs {
        let ipt = run.insns_per_tick();
        println!(
            "\n{machine}: calibration {} instructions in {} SysTick ticks = {ipt:.3} instructions per tick",
            run.calib_insns, run.calib_ticks
        );
        println!(
            "  {:<9} {:>6} {:>8} {:>9} {:>14} {:>10} {:>12}",
            "model", "blob B", "arena B", "MACs", "instr/infer", "instr/MAC", "validate"
        );
        for m in &host {
            let ticks: Vec<u64> = (0..samples)
                .map(|i| run.ticks[&(m.name.to_string(), i)])
                .collect();
            let mean = ticks.iter().sum::<u64>() as f64 / ticks.len() as f64;
            let insns = mean * ipt;
            let (_, _, arena, validate) = run.models[m.name];
            println!(
                "  {:<9} {:>6} {:>8} {:>9} {:>14.0} {:>10.2} {:>12.0}",
                m.name,
                m.blob.len(),
                arena,
                m.macs,
                insns,
                insns / m.macs as f64,
                validate as f64 * ipt
            );
            println!(
                "    dense+conv MACs {} of {} ({:.1} %); per-sample ticks {:?}; nodes {:?}",
                m.dense_conv_macs,
                m.macs,
                100.0 * m.dense_conv_macs as f64 / m.macs as f64,
                ticks,
                m.nodes
            );
            per_mac.entry(m.name).or_insert(insns / m.macs as f64);
        }
    }
    check_instructions(&per_mac);
}

/// The regression gate: every model's instructions per MAC (the M7 run's, exact under
/// `-icount`) within 5 % of `boards/qemu-mps2-an500/instructions.json`.
fn check_instructions(per_mac: &BTreeMap<&str, f64>) {
    let path = firmware_dir().join("instructions.json");
    let text = std::fs::read_to_string(&path).expect("instructions.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("instructions.json parses");
    let baseline = json["instructions_per_mac"]
        .as_object()
        .expect("instructions_per_mac");
    println!("\ninstructions per MAC against {}:", path.display());
    let mut worse = Vec::new();
    for (name, want) in baseline {
        let want = want.as_f64().expect("a number");
        let got = *per_mac
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{name} was not measured"));
        println!(
            "  {name:<11} {got:>8.3} (baseline {want:.3}, {:+.1} %)",
            100.0 * (got / want - 1.0)
        );
        if got > want * 1.05 {
            worse.push(format!(
                "{name}: {got:.3} instructions per MAC, over 5 % above {want:.3}"
            ));
        }
    }
    assert!(
        worse.is_empty(),
        "instructions per MAC regressed:\n{}",
        worse.join("\n")
    );
}

#[test]
#[ignore = "builds the firmware (tract for the build script): run by .ci/run with --ignored"]
fn firmware_builds_for_cortex_m0plus() {
    cargo_build(&["--target", "thumbv6m-none-eabi"]);
    let elf = elf_path("thumbv6m-none-eabi");
    let sizes = elf_sizes(&elf);
    println!(
        "thumbv6m-none-eabi firmware: text {} B, rodata {} B, bss {} B (not run: QEMU has no \
         Cortex-M0+ board with this memory map)",
        sizes.sections.get(".text").copied().unwrap_or(0),
        sizes.sections.get(".rodata").copied().unwrap_or(0),
        sizes.sections.get(".bss").copied().unwrap_or(0),
    );
}
