//! Sets `cfg(paoding_dsp)` where the int8 kernels may use the DSP extension's SIMD
//! multiply-accumulates (`qconv`'s `dsp` module): ARMv7E-M (Cortex-M4, M7) always has it;
//! ARMv8-M Mainline (Cortex-M33, M35P, M55, M85) when the build enables it (`-C
//! target-feature=+dsp`, or a `-C target-cpu` of one of those cores). Sets `cfg(paoding_thumb2)`
//! on every Cortex-M with the Thumb-2 instruction set (all but ARMv6-M and ARMv8-M Baseline:
//! the M0, M0+ and M23), where the activation loop uses load- and store-multiples.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(paoding_dsp)");
    println!("cargo::rustc-check-cfg=cfg(paoding_thumb2)");
    println!("cargo::rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let target = std::env::var("TARGET").unwrap_or_default();
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let v8m_dsp = [
        "+dsp",
        "cortex-m33",
        "cortex-m35p",
        "cortex-m55",
        "cortex-m85",
    ]
    .iter()
    .any(|f| flags.contains(f));
    if target.starts_with("thumbv7em") || (target.starts_with("thumbv8m.main") && v8m_dsp) {
        println!("cargo::rustc-cfg=paoding_dsp");
    }
    if target.starts_with("thumbv7") || target.starts_with("thumbv8m.main") {
        println!("cargo::rustc-cfg=paoding_thumb2");
    }
}
