//! The integer arithmetic of int8 inference, written once: the runtime's int8 kernels, the
//! writers on the host (paoding-core) and the tests all call these functions, so host and
//! device agree bit for bit.
//!
//! It is TFLite's reference arithmetic (the default, double-rounding build, as TFLite Micro
//! compiles it), reimplemented from its definition: gemmlowp's fixed-point primitives
//! ([`saturating_rounding_doubling_high_mul`], [`rounding_divide_by_pot`]), TFLite's
//! requantization ([`multiply_by_quantized_multiplier`] and its two variants), the fixed-point
//! exponential and reciprocal of its int8 softmax, and — on the host, in `f64` through `libm`
//! as TFLite computes them in `double` — the conversion of a real multiplier into a 32-bit
//! multiplier and a shift ([`quantize_multiplier`]).
//!
//! A real multiplier `M` is represented as `multiplier * 2^(shift - 31)`, `multiplier` in
//! `[2^30, 2^31 - 1]` (or 0 for `M = 0`):
//!
//! ```
//! use paoding_runtime::quant::{multiply_by_quantized_multiplier, quantize_multiplier};
//! let (m, shift) = quantize_multiplier(0.003);
//! // 1000 * 0.003 = 3.
//! assert_eq!(multiply_by_quantized_multiplier(1000, m, shift), 3);
//! ```
//!
//! Every function is total: no input panics or overflows, in debug builds too. Where TFLite
//! leaves an argument outside a range undefined (a shift past 31), the argument is clamped into
//! it; validation keeps blobs inside the ranges.

/// gemmlowp's `SaturatingRoundingDoublingHighMul`: `a * b / 2^31` rounded to nearest, ties
/// upwards (gemmlowp adds a nudge of `2^30`, or `1 - 2^30` for a negative product, then
/// divides truncating towards zero: `floor((a * b + 2^30) / 2^31)`), saturating the one
/// overflow (`i32::MIN * i32::MIN`) to `i32::MAX`.
///
/// ```
/// use paoding_runtime::quant::saturating_rounding_doubling_high_mul as srdhm;
/// assert_eq!(srdhm(1 << 30, 1 << 30), 1 << 29); // 0.5 * 0.5 = 0.25
/// assert_eq!(srdhm(i32::MIN, i32::MIN), i32::MAX);
/// assert_eq!(srdhm(3, 1 << 30), 2); // 1.5 rounds up
/// assert_eq!(srdhm(-3, 1 << 30), -1); // -1.5 rounds up too
/// assert_eq!(srdhm(-5, 1 << 29), -1); // -1.25
/// ```
// One copy on Cortex-M (code size); inlined on the host, where the callers' loops then
// vectorise.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline)]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    srdhm(a, b)
}

/// [`saturating_rounding_doubling_high_mul`]'s body, inlined into
/// [`multiply_by_quantized_multiplier`] (one call per convolution output, not three).
#[inline(always)]
fn srdhm(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    srdhm_unsaturated(a, b)
}

/// [`srdhm`] but for its one saturating case (`a == b == i32::MIN`), which wraps here.
#[inline(always)]
fn srdhm_unsaturated(a: i32, b: i32) -> i32 {
    // gemmlowp's sign-dependent nudge and truncating division equal this floor (for a
    // negative product, trunc((ab + 1 - 2^30) / 2^31) = floor((ab + 2^30) / 2^31)), which is
    // one multiply-accumulate and a shift; the quotient fits in an i32 but for that case.
    ((i64::from(a) * i64::from(b) + (1 << 30)) >> 31) as i32
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent`, rounded to nearest with ties away from
/// zero (an arithmetic right shift that rounds). `exponent` is clamped to `[0, 31]`, the range
/// gemmlowp allows.
///
/// ```
/// use paoding_runtime::quant::rounding_divide_by_pot as rdbp;
/// assert_eq!(rdbp(5, 1), 3); // 2.5
/// assert_eq!(rdbp(-5, 1), -3); // -2.5
/// assert_eq!(rdbp(-3, 1), -2); // -1.5
/// assert_eq!(rdbp(7, 2), 2); // 1.75
/// assert_eq!(rdbp(i32::MIN, 31), -1);
/// ```
// One copy on Cortex-M (code size); inlined on the host, where the callers' loops then
// vectorise.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline)]
pub fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    rdbp(x, exponent)
}

/// [`rounding_divide_by_pot`]'s body, inlined as above.
#[inline(always)]
fn rdbp(x: i32, exponent: i32) -> i32 {
    rdbp_in_range(x, exponent.clamp(0, 31) as u32)
}

/// [`rdbp`] for an exponent already in `[0, 31]` (wrapping shifts past it: a wrong value,
/// never a panic).
#[inline(always)]
fn rdbp_in_range(x: i32, e: u32) -> i32 {
    let mask = 1u32.wrapping_shl(e).wrapping_sub(1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    // `x >> e` is at most 2^30 when e >= 1, and the increment is 0 when e == 0.
    x.wrapping_shr(e) + i32::from(remainder > threshold)
}

/// gemmlowp's `SaturatingRoundingMultiplyByPOT`: `x * 2^exponent`, saturating for a positive
/// exponent, [`rounding_divide_by_pot`] for a negative one. `exponent` is clamped to
/// `[-31, 31]`.
///
/// ```
/// use paoding_runtime::quant::saturating_rounding_multiply_by_pot as srmp;
/// assert_eq!(srmp(3, 2), 12);
/// assert_eq!(srmp(1 << 29, 2), i32::MAX);
/// assert_eq!(srmp(-(1 << 29), 2), i32::MIN);
/// assert_eq!(srmp(6, -2), 2); // 1.5 rounds away from zero
/// ```
#[inline]
pub fn saturating_rounding_multiply_by_pot(x: i32, exponent: i32) -> i32 {
    let e = exponent.clamp(-31, 31);
    if e <= 0 {
        return rounding_divide_by_pot(x, -e);
    }
    let threshold = i32::MAX >> e; // (1 << (31 - e)) - 1
    if x > threshold {
        i32::MAX
    } else if x < -threshold {
        i32::MIN
    } else {
        x << e
    }
}

/// TFLite's `MultiplyByQuantizedMultiplier` (double rounding): `x` times the real multiplier
/// `multiplier * 2^(shift - 31)` — `x` shifted left by `max(shift, 0)` (wrapping, as the C
/// multiplication does on every target), [`saturating_rounding_doubling_high_mul`] by
/// `multiplier`, then [`rounding_divide_by_pot`] by `max(-shift, 0)`. The requantization of
/// every convolution, dense layer and concatenation. `shift` is clamped to `[-31, 31]`
/// (blobs hold `[-31, 30]`).
///
/// ```
/// use paoding_runtime::quant::multiply_by_quantized_multiplier as mbqm;
/// assert_eq!(mbqm(100, 1 << 30, 1), 100); // 1.0
/// assert_eq!(mbqm(100, 1 << 30, 0), 50); // 0.5
/// assert_eq!(mbqm(-3, 1 << 30, -1), -1); // -0.75
/// assert_eq!(mbqm(5, 1_610_612_736, 2), 15); // 3.0
/// ```
// One copy on Cortex-M (code size); inlined on the host, where the callers' loops then
// vectorise.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline)]
pub fn multiply_by_quantized_multiplier(x: i32, multiplier: i32, shift: i32) -> i32 {
    let s = shift.clamp(-31, 31);
    let (left, right) = if s > 0 { (s, 0) } else { (0, -s) };
    // One call per output for the convolutions: the two steps inlined.
    rdbp(srdhm(x.wrapping_shl(left as u32), multiplier), right)
}

/// [`multiply_by_quantized_multiplier`] for the parameters validation admits in every blob (a
/// multiplier of 0 or in `[2^30, 2^31)`, a shift in `[-31, 30]`): the same value without the
/// clamps and the saturation those bounds exclude, about half the instructions on a
/// Cortex-M, once per output of every int8 convolution. Outside the bounds the result is
/// wrong but never a panic.
///
/// ```
/// use paoding_runtime::quant::{multiply_by_quantized_multiplier as mbqm, requantize};
/// for (x, m, s) in [(100, 1 << 30, 1), (-3, 1 << 30, -1), (i32::MIN, i32::MAX, -31)] {
///     assert_eq!(requantize(x, m, s), mbqm(x, m, s));
/// }
/// ```
// One copy on Cortex-M (code size); inlined on the host, where the callers' loops then
// vectorise.
#[cfg_attr(target_arch = "arm", inline(never))]
#[cfg_attr(not(target_arch = "arm"), inline)]
pub fn requantize(x: i32, multiplier: i32, shift: i32) -> i32 {
    // Its saturating case needs a multiplier of i32::MIN, which validation refuses.
    let (left, right) = (shift.max(0) as u32, shift.wrapping_neg().max(0) as u32);
    rdbp_in_range(srdhm_unsaturated(x.wrapping_shl(left), multiplier), right)
}

/// [`requantize`] by one channel's multiplier and shift, decoded once: a loop over many values
/// of one channel (the depthwise window's tiles, the int8 columns) applies it inline.
///
/// ```
/// use paoding_runtime::quant::{requantize, Requantizer};
/// let r = Requantizer::new(1 << 30, -2);
/// assert_eq!(r.apply(1000), requantize(1000, 1 << 30, -2)); // 125
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Requantizer {
    multiplier: i32,
    shift: i32,
    /// `2^(e - 1)` for a right shift `e >= 1` (a real multiplier below one half: every
    /// convolution of a trained model), else 0: [`requantize`] then.
    half: i32,
    /// `e - 1`.
    right: u32,
}

impl Requantizer {
    /// `multiplier * 2^(shift - 31)`, with the bounds validation admits (a multiplier of 0 or
    /// in `[2^30, 2^31)`, a shift in `[-31, 30]`).
    #[inline(always)]
    pub fn new(multiplier: i32, shift: i32) -> Self {
        // For shift = -e: e - 1, and 2^(e - 1); 0 for a shift >= 0 (a shift below -31, which
        // validation refuses, gives a wrong value, never a panic).
        let right = !shift as u32 & 31;
        Requantizer {
            multiplier,
            shift,
            half: ((shift as u32 >> 31) << right) as i32,
            right,
        }
    }

    /// [`requantize`] of `x`.
    ///
    /// For a right shift `e >= 1` the two roundings in one: with `P = x m + 2^30`, SRDHM is
    /// `s = floor(P / 2^31)` and the rounding division `floor((s + 2^(e-1) - [s < 0]) / 2^e)`,
    /// which is `floor((P + 2^31 (2^(e-1) - [s < 0])) / 2^(31+e))`: one multiply-accumulate
    /// onto that constant and the high word's shift by `e - 1`. `[s < 0]` is `[x < 0]` (with
    /// `m >= 0`, `x >= 0` gives `P > 0`; a negative `x` with `s = 0` rounds to 0 either way).
    /// Six instructions (the assembly below) where the two steps took about fourteen.
    #[inline(always)]
    pub fn apply(self, x: i32) -> i32 {
        if !self.one_step() {
            return requantize(x, self.multiplier, self.shift);
        }
        self.one_step_apply(x)
    }

    /// Whether [`Requantizer::apply`] takes the one-step form (a right shift of at least 1): a
    /// loop over many values tests it once, outside.
    #[inline(always)]
    pub(crate) fn one_step(&self) -> bool {
        self.half != 0
    }

    /// [`Requantizer::apply`] where [`Requantizer::one_step`] holds (elsewhere a wrong value,
    /// never a panic).
    #[inline(always)]
    pub(crate) fn one_step_apply(self, x: i32) -> i32 {
        #[cfg(paoding_thumb2)]
        {
            let (high, _low): (i32, u32);
            // SAFETY: register arithmetic only. LLVM added the constant after the product
            // (two more instructions) however the Rust below was phrased.
            unsafe {
                core::arch::asm!(
                    "add {c}, {half}, {x}, asr #31",
                    "lsl {lo}, {c}, #31",
                    "orr {lo}, {lo}, #0x40000000",
                    "asr {c}, {c}, #1",
                    "smlal {lo}, {c}, {x}, {m}",
                    "asr {c}, {c}, {right}",
                    x = in(reg) x,
                    m = in(reg) self.multiplier,
                    half = in(reg) self.half,
                    right = in(reg) self.right,
                    c = out(reg) high,
                    lo = out(reg) _low,
                    options(pure, nomem, nostack, preserves_flags),
                );
            }
            high
        }
        #[cfg(not(paoding_thumb2))]
        {
            let c = self.half - (x as u32 >> 31) as i32;
            let p = i64::from(x) * i64::from(self.multiplier) + (1 << 30) + (i64::from(c) << 31);
            ((p >> 32) as i32) >> self.right
        }
    }
}

/// TFLite's `MultiplyByQuantizedMultiplierSmallerThanOneExp` (double rounding): for a real
/// multiplier below 1, `left_shift <= 0` — [`saturating_rounding_doubling_high_mul`], then
/// [`rounding_divide_by_pot`] by `-left_shift`. TFLite's int8 Add rescales its inputs and its
/// sum with it. A positive `left_shift` divides by 1.
///
/// ```
/// use paoding_runtime::quant::multiply_by_quantized_multiplier_smaller_than_one_exp as f;
/// assert_eq!(f(1 << 20, 1 << 30, -1), 1 << 18); // 0.25
/// assert_eq!(f(-5, 1 << 30, 0), -2); // -2.5 rounds up (SRDHM's rounding)
/// assert_eq!(f(-5, 1 << 30, -1), -1); // -1.25: SRDHM's -2, halved away from zero
/// ```
#[inline]
pub fn multiply_by_quantized_multiplier_smaller_than_one_exp(
    x: i32,
    multiplier: i32,
    left_shift: i32,
) -> i32 {
    rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(x, multiplier),
        left_shift.saturating_neg(),
    )
}

/// TFLite's `MultiplyByQuantizedMultiplierGreaterThanOne` (double rounding): `x` shifted left
/// by `left_shift` (wrapping; clamped to `[0, 31]`), then
/// [`saturating_rounding_doubling_high_mul`]. The int8 softmax scales its input differences
/// with it.
///
/// ```
/// use paoding_runtime::quant::multiply_by_quantized_multiplier_greater_than_one as f;
/// assert_eq!(f(-3, 1 << 30, 4), -24); // -3 * 2^4 * 0.5
/// ```
#[inline]
pub fn multiply_by_quantized_multiplier_greater_than_one(
    x: i32,
    multiplier: i32,
    left_shift: i32,
) -> i32 {
    saturating_rounding_doubling_high_mul(
        x.wrapping_shl(left_shift.clamp(0, 31) as u32),
        multiplier,
    )
}

/// gemmlowp's `RoundingHalfSum`: `(a + b) / 2`, rounded to nearest with ties away from zero.
///
/// ```
/// use paoding_runtime::quant::rounding_half_sum;
/// assert_eq!(rounding_half_sum(1, 2), 2);
/// assert_eq!(rounding_half_sum(-1, -2), -2);
/// assert_eq!(rounding_half_sum(i32::MAX, i32::MAX), i32::MAX);
/// ```
#[inline]
pub fn rounding_half_sum(a: i32, b: i32) -> i32 {
    let sum = i64::from(a) + i64::from(b);
    let sign = if sum >= 0 { 1 } else { -1 };
    ((sum + sign) / 2) as i32
}

/// `1 << 30` in gemmlowp's `FixedPoint<i32, 0>` is one half; these are the Q0.31 constants of
/// the exponential (gemmlowp's `exp_on_interval_between_negative_one_quarter_and_0_excl`).
const EXP_MINUS_ONE_EIGHTH: i32 = 1_895_147_668; // exp(-1/8)
const ONE_THIRD: i32 = 715_827_883;

/// `exp(a)` for `a` in `[-1/4, 0)`, Q0.31 in and out: gemmlowp's Taylor expansion around
/// `-1/8`.
fn exp_on_interval_between_negative_one_quarter_and_0_excl(a: i32) -> i32 {
    let srdhm = saturating_rounding_doubling_high_mul;
    let x = a.wrapping_add(1 << 28); // a + 1/8
    let x2 = srdhm(x, x);
    let x3 = srdhm(x2, x);
    let x4 = srdhm(x2, x2);
    let x4_over_4 = rounding_divide_by_pot(x4, 2);
    let x4_over_24_plus_x3_over_6_plus_x2_over_2 = rounding_divide_by_pot(
        srdhm(x4_over_4.wrapping_add(x3), ONE_THIRD).wrapping_add(x2),
        1,
    );
    EXP_MINUS_ONE_EIGHTH.wrapping_add(srdhm(
        EXP_MINUS_ONE_EIGHTH,
        x.wrapping_add(x4_over_24_plus_x3_over_6_plus_x2_over_2),
    ))
}

/// Q0.31 `exp(-2^k)` for `k` in `-2..=4`: the factors gemmlowp's exponential multiplies in
/// for each bit of the whole quarters of its argument.
const EXP_BARREL: [i32; 7] = [
    1_672_461_947, // exp(-1/4)
    1_302_514_674, // exp(-1/2)
    790_015_084,   // exp(-1)
    290_630_308,   // exp(-2)
    39_332_535,    // exp(-4)
    720_401,       // exp(-8)
    242,           // exp(-16)
];

/// gemmlowp's `exp_on_negative_values` for the format TFLite's int8 softmax uses: `a <= 0`
/// in Q5.26 (`FixedPoint<i32, 5>`, the input differences scaled by beta), `exp(a)` in Q0.31.
/// `exp(0)` is `i32::MAX`, gemmlowp's one.
///
/// ```
/// use paoding_runtime::quant::exp_on_negative_values;
/// assert_eq!(exp_on_negative_values(0), i32::MAX);
/// let e = exp_on_negative_values(-(1 << 26)) as f64 / 2f64.powi(31); // exp(-1)
/// assert!((e - (-1f64).exp()).abs() < 3e-7);
/// ```
pub fn exp_on_negative_values(a: i32) -> i32 {
    const FRACTIONAL_BITS: u32 = 26;
    let one_quarter = 1 << (FRACTIONAL_BITS - 2);
    let a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter;
    // Rescaled from 5 integer bits to 0.
    let mut result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, 5),
    );
    let remainder = a_mod_quarter_minus_one_quarter.wrapping_sub(a);
    for (k, &factor) in EXP_BARREL.iter().enumerate() {
        // Bit FRACTIONAL_BITS - 2 + k of the remainder: 2^(k - 2) whole units.
        if remainder & (1 << (FRACTIONAL_BITS as usize - 2 + k)) != 0 {
            result = saturating_rounding_doubling_high_mul(result, factor);
        }
    }
    if a == 0 {
        i32::MAX
    } else {
        result
    }
}

/// gemmlowp's `one_over_one_plus_x_for_x_in_0_1`: `1 / (1 + a)` for `a` in `[0, 1)`, Q0.31 in
/// and out, by three Newton-Raphson steps from `48/17 - 32/17 d`.
///
/// ```
/// use paoding_runtime::quant::one_over_one_plus_x_for_x_in_0_1;
/// let r = one_over_one_plus_x_for_x_in_0_1(1 << 30) as f64 / 2f64.powi(31); // 1 / 1.5
/// assert!((r - 2.0 / 3.0).abs() < 1e-8);
/// ```
// Out of line (flash): once per softmax row.
#[inline(never)]
pub fn one_over_one_plus_x_for_x_in_0_1(a: i32) -> i32 {
    const FORTY_EIGHT_OVER_SEVENTEEN: i32 = 1_515_870_810; // Q2.29
    const MINUS_THIRTY_TWO_OVER_SEVENTEEN: i32 = -1_010_580_540; // Q2.29
    const ONE_Q2: i32 = 1 << 29;
    let srdhm = saturating_rounding_doubling_high_mul;
    let half_denominator = rounding_half_sum(a, i32::MAX);
    let mut x = FORTY_EIGHT_OVER_SEVENTEEN
        .wrapping_add(srdhm(half_denominator, MINUS_THIRTY_TWO_OVER_SEVENTEEN));
    for _ in 0..3 {
        let one_minus_half_denominator_times_x = ONE_Q2.wrapping_sub(srdhm(half_denominator, x));
        // A Q4.27 product rescaled to Q2.29.
        x = x.wrapping_add(saturating_rounding_multiply_by_pot(
            srdhm(x, one_minus_half_denominator_times_x),
            2,
        ));
    }
    // x / 2 as Q1.30 (the same bits), rescaled to Q0.31.
    saturating_rounding_multiply_by_pot(x, 1)
}

/// TFLite's `GetReciprocal`: for `x > 0` with `x_integer_digits` integer bits, returns
/// `(r, n)` with `1 / x = r / 2^31 / 2^n` (`r` in Q0.31, in `(1/2, 1]`).
///
/// ```
/// use paoding_runtime::quant::get_reciprocal;
/// // 2.5 in Q12.19: 1 / 2.5 = 0.8 / 2^1.
/// let (r, n) = get_reciprocal(5 << 18, 12);
/// assert_eq!(n, 1);
/// assert!((r as f64 / 2f64.powi(31) - 0.8).abs() < 1e-8);
/// ```
pub fn get_reciprocal(x: i32, x_integer_digits: i32) -> (i32, i32) {
    let headroom_plus_one = (x as u32).leading_zeros();
    let num_bits_over_unit = x_integer_digits - headroom_plus_one as i32;
    let shifted_sum_minus_one = (x as u32)
        .checked_shl(headroom_plus_one)
        .unwrap_or(0)
        .wrapping_sub(1 << 31) as i32;
    (
        one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one),
        num_bits_over_unit,
    )
}

/// Integer bits of the scaled input differences of the int8 softmax (TFLite's
/// `kScaledDiffIntegerBits`: Q5.26).
pub const SOFTMAX_DIFF_INTEGER_BITS: i32 = 5;
/// Integer bits of the int8 softmax's sum of exponentials (TFLite's
/// `kAccumulationIntegerBits`: Q12.19).
pub const SOFTMAX_ACCUMULATION_INTEGER_BITS: i32 = 12;
/// Most elements an int8 softmax may normalise over: beyond it the sum of exponentials can
/// reach 2^28, where TFLite's output shift leaves gemmlowp's range (its reference kernel
/// aborts).
pub const SOFTMAX_MAX_LEN: usize = 511;

/// One int8 softmax over the values of `x`, in place: TFLite's reference int8 softmax (output
/// scale 1/256, zero point -128). `input_multiplier`, `input_left_shift` and `diff_min` are
/// what [`softmax_params`] computes; `x` holds at most [`SOFTMAX_MAX_LEN`] values.
///
/// ```
/// use paoding_runtime::quant::{softmax_i8, softmax_params};
/// let (m, shift, diff_min) = softmax_params(1.0, 0.1).ok_or("TFLite refuses this scale")?;
/// let mut x = [10i8, 10, 10, 10];
/// softmax_i8(&mut x, m, shift, diff_min);
/// assert_eq!(x, [-64; 4]); // 0.25 = (-64 + 128) / 256
/// # Ok::<(), &str>(())
/// ```
pub fn softmax_i8(x: &mut [i8], input_multiplier: i32, input_left_shift: i32, diff_min: i32) {
    let max = x.iter().fold(i8::MIN, |m, &v| m.max(v));
    let exp_of = |v: i8| {
        let diff = i32::from(v) - i32::from(max);
        softmax_exp(diff, input_multiplier, input_left_shift, diff_min)
    };
    let mut sum: i32 = 0;
    for &v in x.iter() {
        // Rescaled from Q0.31 to Q12.19.
        sum = sum.wrapping_add(rounding_divide_by_pot(
            exp_of(v),
            SOFTMAX_ACCUMULATION_INTEGER_BITS,
        ));
    }
    let (scale, num_bits_over_unit) = get_reciprocal(sum, SOFTMAX_ACCUMULATION_INTEGER_BITS);
    for v in x.iter_mut() {
        // A skipped value (exp 0) gives 0, then -128: TFLite's output for it.
        let unsat = rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(scale, exp_of(*v)),
            num_bits_over_unit + 31 - 8,
        );
        *v = unsat.wrapping_sub(128).clamp(-128, 127) as i8;
    }
}

/// The exponential of one scaled softmax input difference `diff <= 0`, Q0.31; 0 for a
/// difference below `diff_min`, which TFLite skips (adding nothing to the sum, giving the
/// output -128).
#[inline(never)]
fn softmax_exp(diff: i32, input_multiplier: i32, input_left_shift: i32, diff_min: i32) -> i32 {
    if diff < diff_min {
        return 0;
    }
    exp_on_negative_values(multiply_by_quantized_multiplier_greater_than_one(
        diff,
        input_multiplier,
        input_left_shift,
    ))
}

/// TFLite's `QuantizeMultiplier` (host side, `f64` as TFLite's `double`): the 32-bit
/// multiplier and the shift with `real = multiplier * 2^(shift - 31)` — `frexp`, the mantissa
/// rounded to 31 bits (ties away from zero), a mantissa that rounds up to 2^31 halved with the
/// shift incremented, shifts below -31 flushed to `(0, 0)` and above 30 saturated to
/// `(2^31 - 1, 30)`. Negative reals give negative multipliers, as TFLite's; NaN gives
/// `(0, 0)` and an infinity the saturated pair.
///
/// ```
/// use paoding_runtime::quant::quantize_multiplier;
/// assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
/// assert_eq!(quantize_multiplier(0.75), (1_610_612_736, 0));
/// assert_eq!(quantize_multiplier(1.0 - 1e-12), (1 << 30, 1)); // rounds up to 2^31
/// assert_eq!(quantize_multiplier(1e-10), (0, 0)); // shift -33: flushed
/// assert_eq!(quantize_multiplier(0.0), (0, 0));
/// ```
pub fn quantize_multiplier(real: f64) -> (i32, i32) {
    if real == 0.0 || real.is_nan() {
        return (0, 0);
    }
    if real.is_infinite() {
        return (i32::MAX, 30);
    }
    let (q, mut shift) = libm::frexp(real);
    // |q| in [0.5, 1): |q_fixed| in [2^30, 2^31].
    let mut q_fixed = libm::round(q * (1i64 << 31) as f64) as i64;
    if q_fixed == 1 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    if shift > 30 {
        return (i32::MAX, 30);
    }
    (q_fixed as i32, shift)
}

/// TFLite's `QuantizeMultiplierSmallerThanOneExp`: [`quantize_multiplier`] for `real` in
/// `(0, 1)`, whose shift is then at most 0; `None` outside that range (where TFLite aborts).
/// The multipliers of [`crate::format::OpRec::QAdd`] are these.
///
/// ```
/// use paoding_runtime::quant::quantize_multiplier_smaller_than_one_exp as q;
/// assert_eq!(q(0.25), Some((1 << 30, -1)));
/// assert_eq!(q(1.0), None);
/// assert_eq!(q(1.0 - 1e-12), None); // rounds to 1.0
/// ```
pub fn quantize_multiplier_smaller_than_one_exp(real: f64) -> Option<(i32, i32)> {
    if !(real > 0.0 && real < 1.0) {
        return None;
    }
    let (m, shift) = quantize_multiplier(real);
    (shift <= 0).then_some((m, shift))
}

/// The parameters of an int8 softmax (TFLite Micro's `SoftmaxPrepare`, TFLite's
/// `PreprocessSoftmaxScaling` and `CalculateInputRadius`) for a `beta` and the input's scale:
/// `(input_multiplier, input_left_shift, diff_min)` as [`crate::format::OpRec::QSoftmax`]
/// holds them. `None` where TFLite refuses (`beta * input_scale * 2^26 <= 1`, or not finite).
///
/// ```
/// use paoding_runtime::quant::softmax_params;
/// let (m, shift, diff_min) = softmax_params(1.0, 1.0 / 16.0).ok_or("TFLite refuses this scale")?;
/// assert_eq!((m, shift), (1 << 30, 23)); // 2^22 = 2^30 * 2^(23 - 31)
/// assert_eq!(diff_min, -((31 << 26) >> 23));
/// # Ok::<(), &str>(())
/// ```
pub fn softmax_params(beta: f64, input_scale: f64) -> Option<(i32, i32, i32)> {
    let scaled = beta * input_scale * (1i64 << (31 - SOFTMAX_DIFF_INTEGER_BITS)) as f64;
    let real = if scaled < ((1i64 << 31) - 1) as f64 {
        scaled
    } else {
        ((1i64 << 31) - 1) as f64
    };
    // QuantizeMultiplierGreaterThanOne.
    if real.is_nan() || real <= 1.0 || real.is_infinite() {
        return None;
    }
    let (m, shift) = quantize_multiplier(real);
    if shift < 0 {
        return None;
    }
    // floor((2^5 - 1) * 2^26 / 2^shift), exactly.
    let radius = ((1i64 << SOFTMAX_DIFF_INTEGER_BITS) - 1) << (31 - SOFTMAX_DIFF_INTEGER_BITS);
    Some((m, shift, -((radius >> shift) as i32)))
}

/// TFLite's `AffineQuantize` of one value (`f32` in, int8 out): `round(x / scale) +
/// zero_point`, rounded half away from zero, clamped to `[-128, 127]`; NaN gives the zero
/// point. The quotient is the correctly rounded `f32` one (TFLite divides in `double`: the two
/// differ only where the exact quotient lies within half an `f32` ulp of a half-integer),
/// which keeps double-precision arithmetic — two kilobytes of soft-float on a Cortex-M4 —
/// out of the runtime.
///
/// ```
/// use paoding_runtime::quant::quantize;
/// assert_eq!(quantize(0.25, 0.5, -3), -2); // 0.5 rounds to 1
/// assert_eq!(quantize(-0.25, 0.5, 0), -1); // -0.5 rounds to -1
/// assert_eq!(quantize(0.74, 0.5, 0), 1);
/// assert_eq!(quantize(1e9, 0.1, 0), 127);
/// assert_eq!(quantize(f32::NAN, 0.1, 7), 7);
/// ```
#[inline]
pub fn quantize(x: f32, scale: f32, zero_point: i32) -> i8 {
    // `as` saturates (NaN to 0), so no quotient overflows the addition.
    let q = (libm::roundf(x / scale) as i32).saturating_add(zero_point);
    q.clamp(-128, 127) as i8
}

/// TFLite's `Dequantize` of one value (int8 in, `f32` out): `scale * (q - zero_point)`. TFLite
/// multiplies in `double` and rounds to `float`; with a `float` scale and a difference below
/// 2^24 the `f32` product here is the same correctly rounded value.
///
/// ```
/// use paoding_runtime::quant::dequantize;
/// assert_eq!(dequantize(-1, 0.5, -3), 1.0);
/// ```
#[inline]
pub fn dequantize(q: i8, scale: f32, zero_point: i32) -> f32 {
    scale * i32::from(q).wrapping_sub(zero_point) as f32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// SRDHM in exact arithmetic (i128): `floor((a * b + 2^30) / 2^31)` (round half up; `>>`
    /// floors), saturated.
    fn srdhm_exact(a: i32, b: i32) -> i32 {
        let ab = i128::from(a) * i128::from(b);
        ((ab + (1 << 30)) >> 31).clamp(i32::MIN.into(), i32::MAX.into()) as i32
    }

    /// gemmlowp's C++ for SRDHM, transcribed: the nudge, then a division truncating
    /// towards zero.
    fn srdhm_gemmlowp(a: i32, b: i32) -> i32 {
        let overflow = a == b && a == i32::MIN;
        let ab_64 = i64::from(a) * i64::from(b);
        let nudge: i64 = if ab_64 >= 0 { 1 << 30 } else { 1 - (1 << 30) };
        let ab_x2_high32 = ((ab_64 + nudge) / (1i64 << 31)) as i32;
        if overflow {
            i32::MAX
        } else {
            ab_x2_high32
        }
    }

    /// round(x / 2^e), ties away from zero, exactly.
    fn rdbp_exact(x: i32, e: u32) -> i32 {
        if e == 0 {
            return x;
        }
        let x = i64::from(x);
        let q = (x.abs() + (1 << (e - 1))) >> e;
        (if x < 0 { -q } else { q }) as i32
    }

    fn samples() -> std::vec::Vec<i32> {
        let mut v = std::vec![
            0,
            1,
            -1,
            2,
            -2,
            3,
            -3,
            i32::MIN,
            i32::MIN + 1,
            i32::MAX,
            i32::MAX - 1,
            1 << 30,
            -(1 << 30),
            (1 << 30) + 1,
            12345,
            -98765,
        ];
        let mut s: u64 = 0x1234_5678_9ABC_DEF1;
        for _ in 0..400 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            v.push(s as i32);
            v.push((s >> 40) as i32 - (1 << 23));
        }
        v
    }

    #[test]
    fn srdhm_is_the_rounded_doubled_high_product() {
        let xs = samples();
        for &a in &xs {
            for &b in xs.iter().step_by(7) {
                let got = saturating_rounding_doubling_high_mul(a, b);
                assert_eq!(got, srdhm_exact(a, b), "{a} * {b}");
                assert_eq!(got, srdhm_gemmlowp(a, b), "{a} * {b}");
            }
        }
        // Hand-computed: the saturation, the extremes, and ties on both sides of zero.
        let f = saturating_rounding_doubling_high_mul;
        assert_eq!(f(i32::MIN, i32::MIN), i32::MAX);
        assert_eq!(f(i32::MIN, i32::MAX), -i32::MAX);
        assert_eq!(f(i32::MAX, i32::MAX), i32::MAX - 1);
        assert_eq!(f(i32::MIN, 1), -1); // -1 exactly
        assert_eq!(f(1, 1 << 30), 1); // 0.5 -> 1
        assert_eq!(f(-1, 1 << 30), 0); // -0.5 -> 0
        assert_eq!(f(5, 1 << 30), 3); // 2.5 -> 3
        assert_eq!(f(-5, 1 << 30), -2); // -2.5 -> -2
        assert_eq!(f(-7, 1 << 29), -2); // -1.75 -> -2
    }

    #[test]
    fn requantizer_is_requantize_for_every_admitted_multiplier_and_shift() {
        // Every small value too: the ties of both roundings lie among them.
        let mut xs = samples();
        xs.extend(-3000..=3000);
        let mut ms = std::vec![0, 1 << 30, (1 << 30) + 1, i32::MAX, i32::MAX - 1];
        ms.extend(xs.iter().map(|&x| (1 << 30) | (x & 0x3FFF_FFFF)).step_by(9));
        for &m in &ms {
            for shift in -31..=30 {
                let r = Requantizer::new(m, shift);
                for &x in &xs {
                    let want = multiply_by_quantized_multiplier(x, m, shift);
                    assert_eq!(r.apply(x), want, "{x} * {m} * 2^({shift} - 31)");
                }
            }
        }
    }

    #[test]
    fn rounding_divide_rounds_half_away_from_zero() {
        for &x in &samples() {
            for e in 0..=31u32 {
                assert_eq!(
                    rounding_divide_by_pot(x, e as i32),
                    rdbp_exact(x, e),
                    "{x} / 2^{e}"
                );
            }
        }
        // Out-of-range exponents are clamped.
        assert_eq!(rounding_divide_by_pot(100, -3), 100);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 40), 1);
    }

    #[test]
    fn requantization_matches_the_real_product() {
        // For multipliers from quantize_multiplier, the double-rounded result is within one
        // of the exactly rounded real product, and exact on hand-worked values.
        for real in [0.5, 0.25, 0.003, 0.7, 1.0, 1.5, 3.0, 1e-5, 123.456] {
            let (m, s) = quantize_multiplier(real);
            for x in [-100_000, -1000, -7, -1, 0, 1, 7, 1000, 100_000] {
                let got = multiply_by_quantized_multiplier(x, m, s);
                let want = (f64::from(x) * real).round();
                assert!((f64::from(got) - want).abs() <= 1.0, "{x} * {real}: {got}");
            }
        }
        // 0.75 * 3 = 2.25 -> 2; 0.75 * -3 = -2.25 -> -2; 0.5 * 5 = 2.5 -> 3.
        let (m, s) = quantize_multiplier(0.75);
        assert_eq!(multiply_by_quantized_multiplier(3, m, s), 2);
        assert_eq!(multiply_by_quantized_multiplier(-3, m, s), -2);
        assert_eq!(multiply_by_quantized_multiplier(5, 1 << 30, 0), 3);
        // The double rounding TFLite does: 0.5 * 0.5 * 5 via SRDHM then a shift of 1:
        // SRDHM(5, 2^30) = 3 (2.5 up), then 3 / 2 = 2 (1.5 up) where 1.25 -> 1 exactly.
        assert_eq!(multiply_by_quantized_multiplier(5, 1 << 30, -1), 2);
        // Negative values: -2.5 -> -2 (SRDHM rounds half up); -1.25 -> SRDHM's -2, halved.
        assert_eq!(multiply_by_quantized_multiplier(-5, 1 << 30, 0), -2);
        assert_eq!(multiply_by_quantized_multiplier(-5, 1 << 30, -1), -1);
        // The shifts at the limits blobs may hold: 30 (x 2^29 for a multiplier of one half)
        // and -31 (2^30 / 2^31 = 0.5 rounds away from zero; -0.25 to 0; -0.99.. to -1).
        assert_eq!(multiply_by_quantized_multiplier(1, 1 << 30, 30), 1 << 29);
        assert_eq!(multiply_by_quantized_multiplier(i32::MAX, 1 << 30, -31), 1);
        assert_eq!(
            multiply_by_quantized_multiplier(-(1 << 30), 1 << 30, -31),
            0
        );
        assert_eq!(
            multiply_by_quantized_multiplier(i32::MIN, i32::MAX, -31),
            -1
        );
        // The left shift wraps, as TFLite's `x * (1 << left_shift)` does on every target:
        // 2^29 * 4 is i32::MIN, times one half.
        assert_eq!(
            multiply_by_quantized_multiplier(1 << 29, 1 << 30, 2),
            i32::MIN >> 1
        );
        // Extreme shifts never panic.
        for &x in &samples() {
            for s in [-40, -31, 0, 30, 31, 40] {
                let _ = multiply_by_quantized_multiplier(x, i32::MAX, s);
                let _ = multiply_by_quantized_multiplier_smaller_than_one_exp(x, i32::MIN, s);
                let _ = multiply_by_quantized_multiplier_greater_than_one(x, i32::MAX, s);
                let _ = saturating_rounding_multiply_by_pot(x, s);
            }
        }
    }

    #[test]
    fn requantize_is_mbqm_for_every_parameter_a_blob_may_hold() {
        let xs = samples();
        // Multipliers: 0, the bounds of [2^30, 2^31) and values between; every shift.
        let ms: std::vec::Vec<i32> = [0, 1 << 30, (1 << 30) + 1, i32::MAX - 1, i32::MAX]
            .into_iter()
            .chain(
                xs.iter()
                    .map(|&x| (1 << 30) | (x & ((1 << 30) - 1)))
                    .step_by(11),
            )
            .collect();
        for &x in &xs {
            for &m in &ms {
                for s in -31..=30 {
                    assert_eq!(
                        requantize(x, m, s),
                        multiply_by_quantized_multiplier(x, m, s),
                        "{x} * {m} * 2^({s} - 31)"
                    );
                }
            }
        }
    }

    #[test]
    fn quantize_multiplier_is_tflite_s() {
        for real in [1e-9, 1e-6, 0.001, 0.3, 0.5, 0.999, 1.0, 2.0, 1234.5, 1e9] {
            let (m, s) = quantize_multiplier(real);
            assert!((1 << 30..=i32::MAX).contains(&m), "{real}: {m}");
            assert!((-31..=30).contains(&s), "{real}: {s}");
            let back = f64::from(m) * 2f64.powi(s - 31);
            assert!((back / real - 1.0).abs() < 1e-9, "{real}: {back}");
        }
        assert_eq!(quantize_multiplier(2f64.powi(-32)), (1 << 30, -31));
        assert_eq!(quantize_multiplier(2f64.powi(-33)), (0, 0));
        assert_eq!(quantize_multiplier(2f64.powi(40)), (i32::MAX, 30));
        assert_eq!(quantize_multiplier(-0.75), (-1_610_612_736, 0));
        assert_eq!(quantize_multiplier(f64::NAN), (0, 0));
        assert_eq!(quantize_multiplier(f64::INFINITY), (i32::MAX, 30));
        assert_eq!(quantize_multiplier_smaller_than_one_exp(0.0), None);
        assert_eq!(quantize_multiplier_smaller_than_one_exp(-0.5), None);
        assert_eq!(
            quantize_multiplier_smaller_than_one_exp(0.75),
            Some((1_610_612_736, 0))
        );
    }

    #[test]
    fn exp_and_reciprocal_are_close_to_the_real_functions() {
        let mut worst: f64 = 0.0;
        for i in 0..=4000 {
            // a from 0 down to -31.25 in Q5.26.
            let a = -(i * (1 << 19));
            let got = f64::from(exp_on_negative_values(a)) / 2f64.powi(31);
            let want = (f64::from(a) / 2f64.powi(26)).exp();
            worst = worst.max((got - want).abs());
        }
        // gemmlowp's own test bound: the 4th-order Taylor expansion on [-1/4, 0) around -1/8
        // leaves (1/8)^5 / 5! = 2.5e-7.
        assert!(worst < 3e-7, "exp: {worst}");
        let mut worst: f64 = 0.0;
        for i in 0..1000 {
            let a = (i as i64 * (1i64 << 31) / 1000) as i32;
            let got = f64::from(one_over_one_plus_x_for_x_in_0_1(a)) / 2f64.powi(31);
            let want = 1.0 / (1.0 + f64::from(a) / 2f64.powi(31));
            worst = worst.max((got - want).abs());
        }
        assert!(worst < 2e-8, "reciprocal: {worst}");
    }

    #[test]
    fn softmax_is_close_to_the_real_softmax() {
        let (m, shift, diff_min) = softmax_params(1.0, 0.05).unwrap_or((0, 0, 0));
        let mut s: u32 = 7;
        for len in [1usize, 2, 3, 10, 100, SOFTMAX_MAX_LEN] {
            let mut x: std::vec::Vec<i8> = (0..len)
                .map(|_| {
                    s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (s >> 24) as i8
                })
                .collect();
            let reals: std::vec::Vec<f64> = x.iter().map(|&q| f64::from(q) * 0.05).collect();
            let max = reals.iter().cloned().fold(f64::MIN, f64::max);
            let sum: f64 = reals.iter().map(|r| (r - max).exp()).sum();
            softmax_i8(&mut x, m, shift, diff_min);
            for (q, r) in x.iter().zip(&reals) {
                let want = (r - max).exp() / sum * 256.0 - 128.0;
                assert!((f64::from(*q) - want).abs() <= 1.0, "{len}: {q} vs {want}");
            }
        }
        // Equal values share the probability: 1/3 is -43 (85.3 / 256, rounded).
        let mut x = [0i8, 0, 0];
        softmax_i8(&mut x, m, shift, diff_min);
        assert_eq!(x, [-43; 3]);
    }
}
