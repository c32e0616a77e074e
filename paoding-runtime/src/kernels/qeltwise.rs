//! int8 element-wise operators: Add with two input scales, clamp, softmax (all in place on
//! the output, which the executor first fills with the first input unless the plan already
//! put the output over it), and the f32 <-> int8 boundaries. The arithmetic is
//! [`crate::quant`]'s.

use crate::format::{QAddRec, QRescale, QuantParams};
use crate::quant::{
    dequantize as dequantize_one,
    multiply_by_quantized_multiplier_smaller_than_one_exp as scale_down, quantize as quantize_one,
    requantize, softmax_i8,
};

/// TFLite's reference int8 Add of one pair: each input offset by its zero point, shifted left
/// by `left_shift`, rescaled by its multiplier below one; the sum rescaled to the output,
/// offset by its zero point and clamped.
#[inline(never)]
fn add_one(p: &QAddRec, x: i8, y: i8) -> i8 {
    let side = |q: i8, r: &QRescale| {
        let shifted = i32::from(q)
            .wrapping_sub(r.zp)
            .wrapping_shl(p.left_shift as u32);
        scale_down(shifted, r.multiplier, r.shift)
    };
    let sum = side(x, &p.input1).wrapping_add(side(y, &p.input2));
    let v = scale_down(sum, p.output_multiplier, p.output_shift).wrapping_add(p.output_zp);
    v.max(p.act_min).min(p.act_max) as i8
}

/// `out = out + other` in the quantized domain. `out` holds input 1 when `out_is_first`
/// (`other` is input 2), else input 2.
pub(crate) fn qadd(p: &QAddRec, other: &[i8], out: &mut [i8], out_is_first: bool) {
    for (o, &y) in out.iter_mut().zip(other) {
        *o = if out_is_first {
            add_one(p, *o, y)
        } else {
            add_one(p, y, *o)
        };
    }
}

/// `x = min(max(x, min), max)`: ReLU, ReLU6 or Clip in the quantized domain (bounds inside
/// int8, validated).
pub(crate) fn qclamp(x: &mut [i8], min: i32, max: i32) {
    for v in x {
        *v = i32::from(*v).max(min).min(max) as i8;
    }
}

/// One element of a rescaling concatenation: `clamp(MBQM(q - zp, m, s) + out_zp)`.
#[inline]
pub(crate) fn rescale(r: &QRescale, output_zp: i32, q: i8) -> i8 {
    let v =
        requantize(i32::from(q).wrapping_sub(r.zp), r.multiplier, r.shift).wrapping_add(output_zp);
    v.clamp(-128, 127) as i8
}

/// f32 to int8 ([`crate::quant::quantize`]).
pub(crate) fn quantize(x: &[f32], q: QuantParams, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, q.scale, q.zero_point);
    }
}

/// int8 to f32 ([`crate::quant::dequantize`]).
pub(crate) fn dequantize(x: &[i8], q: QuantParams, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = dequantize_one(v, q.scale, q.zero_point);
    }
}

/// int8 softmax along the last axis, rows of `len` elements
/// ([`crate::quant::softmax_i8`] per row).
pub(crate) fn qsoftmax(
    x: &mut [i8],
    len: usize,
    input_multiplier: i32,
    input_left_shift: i32,
    diff_min: i32,
) {
    for row in x.chunks_exact_mut(len.max(1)) {
        softmax_i8(row, input_multiplier, input_left_shift, diff_min);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::quant::{quantize_multiplier_smaller_than_one_exp, softmax_params};

    /// TFLite's Prepare for int8 Add (left shift 20, twice the larger input scale).
    fn add_params(s1: f64, s2: f64, so: f64, zp: [i32; 3]) -> QAddRec {
        let twice_max = 2.0 * s1.max(s2);
        let q = |r: f64| quantize_multiplier_smaller_than_one_exp(r).unwrap_or((0, 0));
        let (m1, sh1) = q(s1 / twice_max);
        let (m2, sh2) = q(s2 / twice_max);
        let (mo, sho) = q(twice_max / ((1 << 20) as f64 * so));
        QAddRec {
            input1: QRescale {
                zp: zp[0],
                multiplier: m1,
                shift: sh1,
            },
            input2: QRescale {
                zp: zp[1],
                multiplier: m2,
                shift: sh2,
            },
            left_shift: 20,
            output_multiplier: mo,
            output_shift: sho,
            output_zp: zp[2],
            act_min: -128,
            act_max: 127,
        }
    }

    #[test]
    fn add_is_the_real_sum_rounded() {
        let (s1, s2, so) = (0.02, 0.05, 0.06);
        let p = add_params(s1, s2, so, [3, -7, 10]);
        let xs: std::vec::Vec<i8> = (-128..=127).step_by(3).map(|v| v as i8).collect();
        let ys: std::vec::Vec<i8> = xs.iter().rev().copied().collect();
        let mut out = xs.clone();
        qadd(&p, &ys, &mut out, true);
        let mut swapped = ys.clone();
        qadd(&p, &xs, &mut swapped, false);
        assert_eq!(out, swapped, "in place over either input");
        for ((&x, &y), &o) in xs.iter().zip(&ys).zip(&out) {
            let real = s1 * f64::from(i32::from(x) - 3) + s2 * f64::from(i32::from(y) + 7);
            let want = (real / so).round() + 10.0;
            let want = want.clamp(-128.0, 127.0);
            assert!(
                (f64::from(o) - want).abs() <= 1.0,
                "{x} + {y}: {o} vs {want}"
            );
        }
        // Hand-worked: equal scales 0.1 in and out, zero points 0: (3 + 4) -> 7 exactly.
        let p = add_params(0.1, 0.1, 0.1, [0, 0, 0]);
        let mut o = [3i8];
        qadd(&p, &[4], &mut o, true);
        assert_eq!(o, [7]);
        // The fused activation clamps.
        let mut p = add_params(0.1, 0.1, 0.1, [0, 0, 0]);
        p.act_min = 0;
        p.act_max = 6;
        let mut o = [3i8, -9];
        qadd(&p, &[4, 2], &mut o, true);
        assert_eq!(o, [6, 0]);
    }

    #[test]
    fn rescale_clamp_quantize_dequantize() {
        // 0.5 * (q - 4) + (-1).
        let r = QRescale {
            zp: 4,
            multiplier: 1 << 30,
            shift: 0,
        };
        assert_eq!(rescale(&r, -1, 9), 2); // 2.5 rounds up, then -1
        assert_eq!(rescale(&r, -1, -128), -67);
        let big = QRescale {
            zp: 0,
            multiplier: 1 << 30,
            shift: 3, // x4
        };
        assert_eq!(rescale(&big, 0, 100), 127);
        let mut x = [-128i8, -1, 0, 5, 127];
        qclamp(&mut x, -1, 5);
        assert_eq!(x, [-1, -1, 0, 5, 5]);
        let mut q = [0i8; 5];
        let p = QuantParams {
            scale: 0.1,
            zero_point: -2,
        };
        quantize(&[0.0, 0.05, -0.05, 0.149_999, 100.0], p, &mut q);
        assert_eq!(q, [-2, -1, -3, -1, 127]);
        let mut f = [0.0f32; 2];
        dequantize(&[-2, 8], p, &mut f);
        assert_eq!(f, [0.0, 1.0]);
    }

    #[test]
    fn softmax_runs_each_row() {
        let (m, s, d) = softmax_params(1.0, 0.1).unwrap_or((0, 0, 0));
        // Two rows of three.
        let mut x = [0i8, 0, 0, 10, -20, 30];
        qsoftmax(&mut x, 3, m, s, d);
        let mut row = [10i8, -20, 30];
        softmax_i8(&mut row, m, s, d);
        assert_eq!(x[..3], [-43; 3]); // 1/3 each: 256 / 3 - 128
        assert_eq!(x[3..], row);
    }
}
