//! Kernels, one file per operator family: f32 (`conv`, `eltwise`, `pool`, `layout`) and int8
//! (`qconv`, `qeltwise`; int8 pooling in `pool`, the layout operators generic over the element
//! type). Every kernel trusts the lengths that [`crate::Model::from_bytes`] proved once; it
//! still never indexes out of bounds (slices are walked with iterators and chunks, so a
//! violated assumption computes garbage, not UB).
//!
//! The arena is one byte buffer; [`cast`] views a validated region as the element type of its
//! value (f32 regions are 4-byte aligned: the arena is a `[f32]`, the offsets are validated).

pub(crate) mod conv;
pub(crate) mod eltwise;
pub(crate) mod layout;
pub(crate) mod pool;
pub(crate) mod qconv;
pub(crate) mod qeltwise;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::format::{Act, MAX_RANK};
use core::mem::MaybeUninit;

/// A shape with `usize` dimensions, batch first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub d: [usize; MAX_RANK],
    pub rank: usize,
}

impl Dims {
    /// Dimension `i`, or 1 past the rank.
    #[inline]
    pub fn at(&self, i: usize) -> usize {
        self.d.get(i).copied().unwrap_or(1)
    }

    /// The used dimensions.
    #[inline]
    pub fn dims(&self) -> &[usize] {
        self.d.get(..self.rank).unwrap_or(&[])
    }

    /// Product of the dimensions in `from..to`.
    // Out of line (flash): six per-node callers each had the loop; never in a kernel's loop.
    #[inline(never)]
    pub fn product(&self, from: usize, to: usize) -> usize {
        self.d.get(from..to).map_or(1, |s| s.iter().product())
    }
}

impl Act {
    /// Apply the activation to one value (as paoding-core's reference does).
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::Identity => x,
            Act::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            Act::Clip { min, max } => clip(x, min, max),
            Act::LeakyRelu { alpha } => leaky(x, alpha),
            Act::Sigmoid | Act::Tanh => self.apply_smooth(x),
        }
    }

    /// Sigmoid and tanh, out of line, so that every caller of [`Act::apply`] keeps the cheap
    /// activations inline without its own copy of the `expf` path (only those two reach it).
    #[inline(never)]
    fn apply_smooth(self, x: f32) -> f32 {
        match self {
            Act::Sigmoid => 1.0 / (1.0 + expf(-x)),
            Act::Tanh => tanh(x),
            _ => x,
        }
    }

    /// Apply the activation in place; the match is hoisted out of the loop.
    ///
    /// ReLU, and a clip from +0 (ReLU6), work on the bit patterns: a negative float has its
    /// sign bit set, which one `bic` with the sign spread over the word clears to +0, and
    /// non-negative floats order as their bit patterns do, so the upper bound is an unsigned
    /// `min`. An FPU without `vmaxnm` (the Cortex-M4F's) takes two compares, two status moves
    /// and two conditional moves for the same clip. The values are those of
    /// [`Act::apply`] except for NaNs (a positive one gives the upper bound, +∞ for ReLU; a
    /// negative one +0) and −0 (here +0).
    pub fn apply_slice(self, xs: &mut [f32]) {
        let top = match self {
            Act::Relu => f32::INFINITY.to_bits(),
            Act::Clip { min, max } if min.to_bits() == 0 && max.to_bits() >> 31 == 0 => {
                max.to_bits()
            }
            Act::Identity => return,
            Act::Clip { min, max } => {
                return xs.iter_mut().for_each(|x| *x = clip(*x, min, max));
            }
            Act::Sigmoid | Act::Tanh => {
                return xs.iter_mut().for_each(|x| *x = self.apply_smooth(*x));
            }
            Act::LeakyRelu { alpha } => {
                return xs.iter_mut().for_each(|x| *x = leaky(*x, alpha));
            }
        };
        // Thumb-2: four values per load- and store-multiple, 5 instructions a value against
        // the loop's 8; the loop below takes the rest.
        #[cfg(paoding_thumb2)]
        let xs = {
            let quads = xs.len() / 4;
            // SAFETY: reads and writes the first 4 quads floats of `xs`, in place.
            unsafe { clamp_quads(xs.as_mut_ptr(), quads, top) };
            xs.get_mut(quads * 4..).unwrap_or(&mut [])
        };
        xs.iter_mut()
            .for_each(|x| *x = f32::from_bits(zero_negatives(*x).min(top)));
    }
}

/// `xs[i] = min(max(xs[i], +0), top)` on the bit patterns, as [`Act::apply_slice`] does, for
/// `4 quads` values: each quad one `ldm`, per value `bic` (the sign spread over the word
/// clears a negative to +0) and an unsigned `min` (compare, conditional move), one `stm`.
///
/// # Safety
/// `xs` is valid for reads and writes of `4 quads` floats.
#[cfg(paoding_thumb2)]
#[inline(always)]
unsafe fn clamp_quads(xs: *mut f32, quads: usize, top: u32) {
    // SAFETY: reads and writes 4 quads words from `xs` (the caller's contract), none for
    // quads = 0; writes only its registers otherwise.
    unsafe {
        core::arch::asm!(
            "cmp {n}, #0",
            "beq 3f",
            "2:",
            "ldm {p}, {{r3, r4, r5, r12}}",
            "bic r3, r3, r3, asr #31",
            "cmp r3, {top}",
            "it hi",
            "movhi r3, {top}",
            "bic r4, r4, r4, asr #31",
            "cmp r4, {top}",
            "it hi",
            "movhi r4, {top}",
            "bic r5, r5, r5, asr #31",
            "cmp r5, {top}",
            "it hi",
            "movhi r5, {top}",
            "bic r12, r12, r12, asr #31",
            "cmp r12, {top}",
            "it hi",
            "movhi r12, {top}",
            "stm {p}!, {{r3, r4, r5, r12}}",
            "subs {n}, #1",
            "bne 2b",
            "3:",
            p = inout(reg) xs => _,
            n = inout(reg) quads => _,
            top = in(reg) top,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r12") _,
            options(nostack),
        );
    }
}

/// `z` set to `[0.0; N]` in place: on Thumb-2 four words per store-multiple, a quarter of a
/// store loop's instructions, for the 2 KB window every depthwise layer starts from zeroed.
#[inline(always)]
pub(crate) fn zeroed<const N: usize>(z: &mut MaybeUninit<[f32; N]>) -> &mut [f32; N] {
    #[cfg(paoding_thumb2)]
    if N.is_multiple_of(4) {
        // SAFETY: `zero_quads` writes all N / 4 quads, every element, and +0.0 is the all-zero
        // bit pattern: the array is initialized.
        return unsafe {
            zero_quads(z.as_mut_ptr().cast::<f32>(), N / 4);
            z.assume_init_mut()
        };
    }
    z.write(splat(0.0))
}

/// Zero `4 quads` words from `p`, one `stm` of four zero registers per quad.
///
/// # Safety
/// `p` is valid for writes of `4 quads` words and aligned for them.
#[cfg(paoding_thumb2)]
#[inline(always)]
unsafe fn zero_quads(p: *mut f32, quads: usize) {
    // SAFETY: writes 4 quads words from `p` (the caller's contract), none for quads = 0.
    unsafe {
        core::arch::asm!(
            "cmp {n}, #0",
            "beq 3f",
            "movs r3, #0",
            "movs r4, #0",
            "movs r5, #0",
            "mov r12, #0",
            "2:",
            "stm {p}!, {{r3, r4, r5, r12}}",
            "subs {n}, #1",
            "bne 2b",
            "3:",
            p = inout(reg) p => _,
            n = inout(reg) quads => _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r12") _,
            options(nostack),
        );
    }
}

/// `x` at and above zero, `alpha x` below (paoding-core's reference).
#[inline(always)]
fn leaky(x: f32, alpha: f32) -> f32 {
    if x < 0.0 {
        x * alpha
    } else {
        x
    }
}

/// The bits of `max(x, +0)` for any `x` but a negative NaN (which gives +0).
#[inline(always)]
fn zero_negatives(x: f32) -> u32 {
    let b = x.to_bits() as i32;
    (b & !(b >> 31)) as u32
}

/// Comparisons rather than `f32::max`/`min`, which compile to out-of-line `fmaxf`/`fminf`
/// calls on Cortex-M.
#[inline(always)]
fn clip(x: f32, min: f32, max: f32) -> f32 {
    if x < min {
        min
    } else if x > max {
        max
    } else {
        x
    }
}

/// tanh through the [`expf`] that sigmoid and softmax already link, instead of libm's `tanhf`
/// and its `expm1f` (half a kilobyte of flash). Within 2e-7 of `tanhf`.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let a = if x < 0.0 { -x } else { x };
    let t = if a < 0.004 {
        // (e - 1) would cancel; the series is exact to f32 here.
        a - a * a * a / 3.0
    } else if a > 9.0 {
        1.0
    } else {
        let e = expf(2.0 * a);
        (e - 1.0) / (e + 1.0)
    };
    if x < 0.0 {
        -t
    } else {
        t
    }
}

/// e^x: Cody and Waite's reduction by ln 2 and Cephes' degree-7 polynomial (`expf.c`), within
/// 2 ulp of libm's `expf`; a result below the least normal f32 flushes to 0. A third of
/// libm's flash on a Cortex-M; softmax, sigmoid and tanh call it.
#[inline(never)]
pub(crate) fn expf(x: f32) -> f32 {
    // A NaN fails both tests and comes out of the polynomial as NaN.
    if x > 88.722_84 {
        return f32::INFINITY;
    }
    if x < -87.336_54 {
        return 0.0;
    }
    // x = k ln 2 + r, |r| <= ln 2 / 2; ln 2 in two parts, so that k ln 2 is exact enough.
    let k = (x * core::f32::consts::LOG2_E + if x < 0.0 { -0.5 } else { 0.5 }) as i32;
    let kf = k as f32;
    let r = x - kf * 0.693_359_4 - kf * -2.121_944_4e-4;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^k as an f32's exponent field (k = 128 only just below the overflow: halve it).
    let (k, e) = if k > 127 { (k - 1, e * 2.0) } else { (k, e) };
    f32::from_bits(((k + 127) as u32) << 23) * e
}

/// `dst = src` over the shorter of the two (lengths are equal after validation; no
/// panicking length assertion). On Cortex-M a word at a time where both are aligned and a
/// whole number of words long (the arena's f32 values are), else a byte at a time.
#[inline(never)]
pub(crate) fn copy(dst: &mut [u8], src: &[u8]) {
    #[cfg(target_arch = "arm")]
    if let (Some(d), Some(s)) = (cast_mut::<i32>(dst), cast::<i32>(src)) {
        return copy_values(d, s);
    }
    copy_values(dst, src)
}

/// `dst = src`, element by element over the shorter of the two (see [`keep_loop`]).
#[inline]
pub(crate) fn copy_values<T: Copy>(dst: &mut [T], src: &[T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
        keep_loop();
    }
}

/// Every element of `dst` = `v` (see [`keep_loop`]).
#[inline]
pub(crate) fn fill<T: Copy>(dst: &mut [T], v: T) {
    for d in dst {
        *d = v;
        keep_loop();
    }
}

/// `[v; N]`, stored without a `memset` call on Cortex-M (see [`keep_loop`]): LLVM cannot tell
/// an opaque value's bytes are all alike.
#[inline(always)]
pub(crate) fn splat<T: Word, const N: usize>(v: T) -> [T; N] {
    // Opaque in a register (`black_box` went through the stack: 144 B over the image).
    #[cfg(target_arch = "arm")]
    let v = {
        let mut bits = v.bits();
        // SAFETY: an empty instruction sequence.
        unsafe {
            core::arch::asm!("/* {0} */", inout(reg) bits, options(pure, nomem, nostack, preserves_flags))
        };
        T::from_bits(bits)
    };
    [v; N]
}

/// A value of one 32-bit word, for [`splat`] (which hides it on Cortex-M only).
#[cfg_attr(not(target_arch = "arm"), allow(dead_code))]
pub(crate) trait Word: Copy {
    fn bits(self) -> u32;
    fn from_bits(bits: u32) -> Self;
}

impl Word for u32 {
    fn bits(self) -> u32 {
        self
    }
    fn from_bits(bits: u32) -> Self {
        bits
    }
}

impl Word for i32 {
    fn bits(self) -> u32 {
        self as u32
    }
    fn from_bits(bits: u32) -> Self {
        bits as i32
    }
}

impl Word for f32 {
    fn bits(self) -> u32 {
        self.to_bits()
    }
    fn from_bits(bits: u32) -> Self {
        f32::from_bits(bits)
    }
}

// Cortex-M's `usize` is one word; on the host, where it is not, `splat` does not call these.
impl Word for usize {
    fn bits(self) -> u32 {
        self as u32
    }
    fn from_bits(bits: u32) -> Self {
        bits as usize
    }
}

/// Ends a loop body on Cortex-M: LLVM keeps the loop as written instead of calling `memcpy` or
/// `memset`, whose compiler_builtins versions are about 1 KB of flash there (more than any
/// kernel), for copies and fills that are a few bytes to a few kilobytes long.
#[inline(always)]
pub(crate) fn keep_loop() {
    // SAFETY: an empty instruction sequence.
    #[cfg(target_arch = "arm")]
    unsafe {
        core::arch::asm!("", options(nomem, nostack, preserves_flags))
    }
}

/// Plain data the arena and the weights hold: every bit pattern is a value, no padding.
pub(crate) trait Pod: Copy {}
impl Pod for f32 {}
impl Pod for i32 {}
impl Pod for i8 {}

/// `b` as a slice of `T`, if it is aligned for `T` and a whole number of `T` long.
#[inline]
pub(crate) fn cast<T: Pod>(b: &[u8]) -> Option<&[T]> {
    let size = core::mem::size_of::<T>();
    if !(b.as_ptr() as usize).is_multiple_of(core::mem::align_of::<T>())
        || !b.len().is_multiple_of(size)
    {
        return None;
    }
    // SAFETY: the pointer is non-null and aligned for T (checked), valid for reads of
    // `b.len()` bytes = `b.len() / size` values for the borrow's lifetime, which the result
    // keeps; every bit pattern is a T (`Pod`), and on the little-endian targets the runtime
    // accepts (`Model::from_bytes`) the bytes are the format's little-endian encoding.
    Some(unsafe { core::slice::from_raw_parts(b.as_ptr().cast::<T>(), b.len() / size) })
}

/// [`cast`], mutable.
#[inline]
pub(crate) fn cast_mut<T: Pod>(b: &mut [u8]) -> Option<&mut [T]> {
    let size = core::mem::size_of::<T>();
    if !(b.as_ptr() as usize).is_multiple_of(core::mem::align_of::<T>())
        || !b.len().is_multiple_of(size)
    {
        return None;
    }
    // SAFETY: as `cast`, and the result borrows `b` mutably, so it is the only access; any
    // value written is some bytes, which `b` may hold.
    Some(unsafe { core::slice::from_raw_parts_mut(b.as_mut_ptr().cast::<T>(), b.len() / size) })
}

/// The bytes of `x`.
#[inline]
pub(crate) fn bytes<T: Pod>(x: &[T]) -> &[u8] {
    // SAFETY: `x` is valid for reads of `size_of_val(x)` bytes, u8 needs no alignment, and a
    // `Pod` has no padding (every byte is initialised).
    unsafe { core::slice::from_raw_parts(x.as_ptr().cast::<u8>(), core::mem::size_of_val(x)) }
}

/// The bytes of `x`, mutable: any bytes written leave a valid `T` (`Pod`).
// Out of line (flash): called once per run, never in a loop.
#[inline(never)]
pub(crate) fn bytes_mut<T: Pod>(x: &mut [T]) -> &mut [u8] {
    let len = core::mem::size_of_val(x);
    // SAFETY: as `bytes`; the result borrows `x` mutably, and every bit pattern is a `T`.
    unsafe { core::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn expf_matches_libm_within_two_ulp() {
        let mut worst = 0.0f32;
        for i in -87_336..=88_722 {
            for x in [i as f32 * 1e-3, i as f32 * 1e-3 + 3.7e-4] {
                let (got, want) = (super::expf(x), libm::expf(x));
                worst = worst.max((got - want).abs() / want);
            }
        }
        assert!(worst <= 2.4e-7, "largest relative difference {worst}");
        assert_eq!(super::expf(0.0), 1.0);
        assert_eq!(super::expf(89.0), f32::INFINITY);
        assert_eq!(super::expf(-88.0), 0.0);
        assert!(super::expf(f32::NAN).is_nan());
        assert_eq!(super::expf(f32::NEG_INFINITY), 0.0);
    }

    /// A leaky ReLU scales negatives only, the same in place as value by value.
    #[test]
    fn leaky_relu_scales_negatives_only() {
        use super::Act;
        let act = Act::LeakyRelu { alpha: 0.25 };
        let xs = [-8.0f32, -0.5, -0.0, 0.0, 0.5, 3.0, f32::NEG_INFINITY];
        let mut got = xs;
        act.apply_slice(&mut got);
        assert_eq!(got, [-2.0, -0.125, -0.0, 0.0, 0.5, 3.0, f32::NEG_INFINITY]);
        for (&x, &y) in xs.iter().zip(&got) {
            assert_eq!(act.apply(x).to_bits(), y.to_bits());
        }
    }

    /// The bit-pattern ReLU and ReLU6 give `Act::apply`'s values, compared bit for bit over
    /// every sign and magnitude class (zeros, subnormals, normals, the bounds, infinities).
    #[test]
    fn relu_and_relu6_on_bits_equal_the_float_comparisons() {
        use super::Act;
        let mut xs = std::vec::Vec::new();
        for m in [
            0x0000_0001u32,
            0x0040_0000,
            0x0080_0000,
            0x3f80_0000,
            0x40c0_0000,
            0x40bf_ffff,
            0x40c0_0001,
            0x4b00_0000,
            0x7f7f_ffff,
            0x7f80_0000,
        ] {
            xs.extend([f32::from_bits(m), f32::from_bits(m | 0x8000_0000)]);
        }
        xs.push(0.0);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f32::from_bits(state as u32);
            if !x.is_nan() && x.to_bits() != 0x8000_0000 {
                xs.push(x);
            }
        }
        let bounds = [
            (0.0f32, 6.0f32),
            (0.0, 1.0),
            (0.0, f32::INFINITY),
            (-1.0, 1.0),
            (0.5, 2.0),
        ];
        for act in [Act::Relu]
            .into_iter()
            .chain(bounds.map(|(min, max)| Act::Clip { min, max }))
        {
            let mut got = xs.clone();
            act.apply_slice(&mut got);
            for (&x, y) in xs.iter().zip(&got) {
                assert_eq!(y.to_bits(), act.apply(x).to_bits(), "{act:?} of {x:e}");
            }
        }
        // What differs: NaNs pass as the bound, and −0 comes out +0.
        let mut odd = [f32::NAN, -0.0];
        Act::Clip { min: 0.0, max: 6.0 }.apply_slice(&mut odd);
        assert_eq!(odd.map(f32::to_bits), [6.0f32.to_bits(), 0]);
    }

    #[test]
    fn tanh_matches_libm_everywhere() {
        let mut worst = 0.0f32;
        for i in -12_000..=12_000 {
            let x = i as f32 * 1e-3;
            worst = worst.max((super::tanh(x) - libm::tanhf(x)).abs());
        }
        for x in [1e-9f32, -1e-9, 3.9e-3, 4.1e-3, 8.99, 9.01, 50.0, -50.0] {
            worst = worst.max((super::tanh(x) - libm::tanhf(x)).abs());
        }
        assert!(worst <= 2e-7, "largest difference {worst}");
    }
}
