//! Firmware for QEMU's mps2-an500 (Cortex-M7) and mps2-an386 (Cortex-M4): runs the models that
//! build.rs fitted with `paoding fit` on a few sample inputs, prints every output and the
//! SysTick ticks of every inference over semihosting, and exits with success.
//!
//! Output (one record per line, space-separated, numbers exact):
//!
//! ```text
//! paoding-firmware 1
//! calib <instructions> <ticks>          a loop of known length, to turn ticks into instructions
//! requant <values checked>              the requantization's assembly agreed with its definition
//! model <name> <blob bytes> <crc32 hex> <arena bytes> <inputs> <outputs> <validate ticks>
//! y <name> <sample> <f32 bits hex>...   the outputs of one inference (f32 outputs)
//! q <name> <sample> <int8 value>...     the outputs of one inference (int8 outputs)
//! t <name> <sample> <ticks>             SysTick ticks of that inference
//! stack <high-water mark bytes> <painted bytes>
//! pc <address hex> <samples>            (feature `profile` only) program-counter histogram
//! done
//! ```
//!
//! Any error prints `error ...` and exits with failure, as does a panic.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};
use paoding_runtime::quant::{requantize, Requantizer};
use paoding_runtime::{Aligned, Model};

/// A model's sample inputs, back to back, in its input's dtype.
enum Samples {
    F32(&'static [f32]),
    I8(&'static [i8]),
}

impl Samples {
    /// How many samples there are for `model`.
    fn count(&self, model: &Model) -> usize {
        let n = model.input_len().max(1);
        match self {
            Samples::F32(xs) => xs.len() / n,
            Samples::I8(xs) => xs.len() / n,
        }
    }

    /// Run `model` on sample `i`; its outputs land in `out` (f32 outputs) or `out8` (int8).
    fn infer(
        &self,
        model: &Model,
        i: usize,
        arena: &mut [f32],
        out: &mut [f32],
        out8: &mut [i8],
    ) -> bool {
        let (n_in, n_out) = (model.input_len(), model.output_len());
        let inputs = i * n_in..(i + 1) * n_in;
        match (self, out.get_mut(..n_out), out8.get_mut(..n_out)) {
            (Samples::F32(xs), Some(out), _) => xs
                .get(inputs)
                .is_some_and(|x| model.run(x, arena, out).is_ok()),
            (Samples::I8(xs), _, Some(out)) => xs
                .get(inputs)
                .is_some_and(|x| model.run_i8(x, arena, out).is_ok()),
            _ => false,
        }
    }
}

// MODELS, ARENA_LEN, OUT_MAX, and each model's blob and inputs.
include!(concat!(env!("OUT_DIR"), "/models.rs"));

/// Stack painting pattern.
const PAINT: u32 = 0xDEAD_BEEF;

/// The int8 kernels' requantization (`Requantizer`, Thumb-2 assembly on this core) against its
/// two-step definition (`requantize`) on every shift a blob may hold, multipliers across their
/// range and every value in [-300, 300] (where the ties of both roundings fall) plus
/// pseudo-random ones: the models alone would reach few of these on the device.
fn check_requantizer(w: &mut Line) {
    let mut checked = 0u64;
    for m in [0, 1 << 30, 1_518_500_250, i32::MAX] {
        for shift in -31..=30 {
            let r = Requantizer::new(m, shift);
            let mut s = 0x9E37_79B9u32;
            for i in 0..700 {
                let x = if i <= 600 {
                    i - 300
                } else {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    s as i32
                };
                if r.apply(x) != requantize(x, m, shift) {
                    w.s("error requantizer ").int(x.into()).s(" ").int(m.into());
                    fail(w, " differs");
                }
                checked += 1;
            }
        }
    }
    w.s("requant ").dec(checked).end();
}

/// Called once before each model is validated, and does nothing else: `icount.py` splits its
/// trace into one section per model at this function's address. The `nop` keeps the call.
#[inline(never)]
fn next_model() {
    // SAFETY: a `nop`.
    unsafe { core::arch::asm!("nop", options(nomem, nostack, preserves_flags)) };
}

#[entry]
fn main() -> ! {
    // `static mut` in the entry function: cortex-m-rt turns these into `&'static mut`, so the
    // arena is a plain, statically sized buffer in .bss with no `unsafe`.
    static mut ARENA: [f32; ARENA_LEN] = [0.0; ARENA_LEN];
    static mut OUT: [f32; OUT_MAX] = [0.0; OUT_MAX];
    static mut OUT8: [i8; OUT_MAX] = [0; OUT_MAX];

    let painted = paint_stack();
    let mut w = Line::new();
    w.s("paoding-firmware 1").end();

    let Some(mut p) = cortex_m::Peripherals::take() else {
        fail(&mut w, "peripherals")
    };
    timer_start(&mut p.SYST, 0x00FF_FFFF);

    // Calibration: the loop runs exactly two instructions per iteration, so the difference
    // of two lengths is a known instruction count, whatever the call overhead.
    let (short, long) = (100_000u32, 1_100_000u32);
    let t0 = now();
    spin(short);
    let t1 = now();
    spin(long);
    let t2 = now();
    let ticks = (t2 - t1).wrapping_sub(t1 - t0);
    w.s("calib ")
        .dec(2 * u64::from(long - short))
        .s(" ")
        .dec(ticks)
        .end();

    check_requantizer(&mut w);

    for (name, blob, samples) in MODELS.iter() {
        next_model();
        let t0 = now();
        let model = match Model::from_bytes(blob) {
            Ok(m) => m,
            Err(_) => fail(w.s("error ").s(name), " does not validate"),
        };
        let validate = now() - t0;
        let h = model.header();
        w.s("model ")
            .s(name)
            .s(" ")
            .dec(blob.len() as u64)
            .s(" ")
            .hex(h.crc)
            .s(" ")
            .dec(model.arena_bytes() as u64)
            .s(" ")
            .dec(model.input_len() as u64)
            .s(" ")
            .dec(model.output_len() as u64)
            .s(" ")
            .dec(validate)
            .end();
        let n_out = model.output_len();
        for i in 0..samples.count(&model) {
            let t0 = now();
            let ok = samples.infer(&model, i, ARENA, OUT, OUT8);
            let ticks = now() - t0;
            if !ok {
                fail(w.s("error ").s(name), " run failed");
            }
            match samples {
                Samples::F32(_) => {
                    w.s("y ").s(name).s(" ").dec(i as u64);
                    for y in OUT.iter().take(n_out) {
                        w.s(" ").hex(y.to_bits());
                    }
                }
                Samples::I8(_) => {
                    w.s("q ").s(name).s(" ").dec(i as u64);
                    for &y in OUT8.iter().take(n_out) {
                        w.s(" ").int(i64::from(y));
                    }
                }
            }
            w.end();
            w.s("t ")
                .s(name)
                .s(" ")
                .dec(i as u64)
                .s(" ")
                .dec(ticks)
                .end();
        }
    }
    let hwm = stack_high_water();
    w.s("stack ")
        .dec(hwm as u64)
        .s(" ")
        .dec(painted as u64)
        .end();

    #[cfg(feature = "profile")]
    profile::run(&mut p.SYST, &mut w, ARENA, OUT, OUT8);

    w.s("done").end();
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

// ---------------------------------------------------------------------------------------------
// Time: SysTick on the core clock, counting down from its reload; the exception counts wraps.
// Under `-icount shift=0` QEMU's virtual clock advances a fixed time per instruction, so the
// counts are exact and reproducible (the calibration loop converts them to instructions).

/// SysTick exceptions since the timer started (written only by the handler).
static WRAPS: AtomicU32 = AtomicU32::new(0);
/// The reload value in force (ticks per wrap - 1).
static RELOAD: AtomicU32 = AtomicU32::new(0x00FF_FFFF);

fn timer_start(syst: &mut SYST, reload: u32) {
    syst.disable_counter();
    RELOAD.store(reload, Ordering::Relaxed);
    WRAPS.store(0, Ordering::Relaxed);
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(reload);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
    // The current value reads 0 until the first tick loads the reload value (without an
    // exception): wait for it, or the first reading would look like a whole wrap.
    while SYST::get_current() == 0 {}
}

/// Ticks since [`timer_start`] (64-bit: wraps included).
fn now() -> u64 {
    loop {
        let wraps = WRAPS.load(Ordering::Acquire);
        let cur = SYST::get_current();
        if WRAPS.load(Ordering::Acquire) == wraps {
            let per = u64::from(RELOAD.load(Ordering::Relaxed)) + 1;
            return u64::from(wraps) * per + u64::from(RELOAD.load(Ordering::Relaxed) - cur);
        }
    }
}

// The SysTick handler is a two-instruction stub that hands the exception frame (on the main
// stack: no RTOS here) to Rust, so the profiler can read the interrupted program counter.
// It replaces cortex-m-rt's default `SysTick` (a weak `PROVIDE` in link.x).
core::arch::global_asm!(
    ".section .text.SysTick,\"ax\",%progbits",
    ".global SysTick",
    ".type SysTick,%function",
    ".thumb_func",
    "SysTick:",
    "mrs r0, msp",
    "ldr r1, ={tick}",
    "bx r1",
    ".ltorg",
    ".size SysTick, . - SysTick",
    tick = sym on_systick,
);

/// Whether SysTick samples the program counter.
static PROFILING: AtomicBool = AtomicBool::new(false);

/// `frame` is the exception frame: r0, r1, r2, r3, r12, lr, pc, xpsr.
extern "C" fn on_systick(frame: *const u32) {
    // Only this handler writes WRAPS, and it does not preempt itself: load + store is enough
    // (ARMv6-M has no atomic read-modify-write).
    WRAPS.store(
        WRAPS.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Release,
    );
    if PROFILING.load(Ordering::Relaxed) {
        // SAFETY: `frame` is the hardware-stacked exception frame, eight words long.
        let pc = unsafe { frame.add(6).read_volatile() };
        sample(pc);
    }
}

#[cfg(feature = "profile")]
use profile::sample;
#[cfg(not(feature = "profile"))]
fn sample(_pc: u32) {}

/// A loop of exactly `2 * n` instructions (`n` >= 1).
#[inline(never)]
fn spin(n: u32) {
    // SAFETY: register-only arithmetic and a local branch.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs r0, #1",
            "bne 2b",
            inout("r0") n => _,
            options(nomem, nostack),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Stack high-water mark: paint the free stack at boot, find the deepest overwritten word later.

extern "C" {
    /// End of .bss/.uninit (cortex-m-rt): the stack may grow down to here.
    static mut __sheap: u32;
}

/// Word range `[bottom, limit)` that [`paint_stack`] painted.
static PAINTED: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// Paint from the end of .bss up to a little below the current stack pointer; returns the
/// bytes painted.
#[inline(never)]
fn paint_stack() -> usize {
    let bottom = core::ptr::addr_of_mut!(__sheap) as usize;
    // 256 bytes of margin below this function's own frame.
    let limit = (cortex_m::register::msp::read() as usize - 256) & !3;
    let mut a = bottom;
    while a < limit {
        // SAFETY: [bottom, limit) is free RAM between .bss and the live stack.
        unsafe { (a as *mut u32).write_volatile(PAINT) };
        a += 4;
    }
    PAINTED[0].store(bottom as u32, Ordering::Relaxed);
    PAINTED[1].store(limit as u32, Ordering::Relaxed);
    limit - bottom
}

/// Bytes from the top of the stack to the deepest word ever written.
fn stack_high_water() -> usize {
    extern "C" {
        static _stack_start: u32;
    }
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let (bottom, limit) = (
        PAINTED[0].load(Ordering::Relaxed) as usize,
        PAINTED[1].load(Ordering::Relaxed) as usize,
    );
    let mut a = bottom;
    // SAFETY: reads of RAM painted by `paint_stack`.
    while a < limit && unsafe { (a as *const u32).read_volatile() } == PAINT {
        a += 4;
    }
    top - a
}

// ---------------------------------------------------------------------------------------------
// Output: lines over semihosting, built without `core::fmt` (which would cost flash).

struct Line {
    buf: [u8; 128],
    len: usize,
}

impl Line {
    const fn new() -> Self {
        Line {
            buf: [0; 128],
            len: 0,
        }
    }

    fn byte(&mut self, b: u8) -> &mut Self {
        if self.len == self.buf.len() {
            self.flush();
        }
        self.buf[self.len] = b;
        self.len += 1;
        self
    }

    fn s(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.byte(b);
        }
        self
    }

    fn dec(&mut self, mut v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..n].iter().rev() {
            self.byte(d);
        }
        self
    }

    fn int(&mut self, v: i64) -> &mut Self {
        if v < 0 {
            self.byte(b'-');
        }
        self.dec(v.unsigned_abs())
    }

    fn hex(&mut self, v: u32) -> &mut Self {
        self.s("0x");
        for k in (0..8).rev() {
            let d = ((v >> (4 * k)) & 0xF) as u8;
            self.byte(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        }
        self
    }

    fn flush(&mut self) {
        if let Ok(mut out) = hio::hstdout() {
            let _ = out.write_all(&self.buf[..self.len]);
        }
        self.len = 0;
    }

    fn end(&mut self) {
        self.byte(b'\n');
        self.flush();
    }
}

/// Print `msg` after what `w` holds and exit with failure.
fn fail(w: &mut Line, msg: &str) -> ! {
    w.s(msg).end();
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    fail(&mut Line::new(), "error panic")
}

// ---------------------------------------------------------------------------------------------
// Profiler (feature `profile`): SysTick every 37 ticks (a prime, against aliasing with loops)
// samples the interrupted program counter into a histogram of 4-byte code slots; the host maps
// the addresses to functions and source files with addr2line.

#[cfg(feature = "profile")]
mod profile {
    use super::*;

    /// Code addresses covered: [0, 4 * SLOTS).
    const SLOTS: usize = 32 * 1024;
    static HIST: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
    static OUTSIDE: AtomicU32 = AtomicU32::new(0);

    pub(super) fn sample(pc: u32) {
        match HIST.get(pc as usize / 4) {
            Some(c) => c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
            None => OUTSIDE.store(OUTSIDE.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
        }
    }

    /// Repetitions of each inference while sampling.
    const REPEAT: usize = 8;

    pub(super) fn run(
        syst: &mut SYST,
        w: &mut Line,
        arena: &mut [f32],
        out: &mut [f32],
        out8: &mut [i8],
    ) {
        for (name, blob, samples) in MODELS.iter() {
            let Ok(model) = Model::from_bytes(blob) else {
                fail(w.s("error ").s(name), " does not validate")
            };
            for c in HIST.iter() {
                c.store(0, Ordering::Relaxed);
            }
            OUTSIDE.store(0, Ordering::Relaxed);
            timer_start(syst, 36);
            PROFILING.store(true, Ordering::Relaxed);
            let count = samples.count(&model);
            for _ in 0..REPEAT {
                for i in 0..count {
                    if !samples.infer(&model, i, arena, out, out8) {
                        fail(w.s("error ").s(name), " run failed");
                    }
                }
            }
            PROFILING.store(false, Ordering::Relaxed);
            timer_start(syst, 0x00FF_FFFF);
            w.s("profile ")
                .s(name)
                .s(" ")
                .dec((REPEAT * count) as u64)
                .s(" ")
                .dec(u64::from(OUTSIDE.load(Ordering::Relaxed)))
                .end();
            for (slot, c) in HIST.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n != 0 {
                    w.s("pc ")
                        .hex((slot * 4) as u32)
                        .s(" ")
                        .dec(u64::from(n))
                        .end();
                }
            }
        }
    }
}
