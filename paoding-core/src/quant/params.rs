//! Quantization parameters in the scheme TFLite and CMSIS-NN use: activations int8
//! asymmetric per tensor (scale, zero point), weights int8 symmetric per output channel
//! (zero point 0, codes in [-127, 127]), biases int32 at `scale_in * scale_w`.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// Lowest int8 code.
pub const QMIN: i32 = -128;
/// Highest int8 code.
pub const QMAX: i32 = 127;

/// The affine map between an int8 tensor and the reals: `real = scale * (q - zero_point)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QParams {
    /// Real value of one code step (> 0, finite).
    pub scale: f32,
    /// The code of real 0, in [-128, 127].
    pub zero_point: i32,
}

impl QParams {
    /// Parameters covering `[lo, hi]` the way TFLite chooses them
    /// (`ChooseQuantizationParams`): the range is widened to contain 0 (so that 0, and with it
    /// padding and ReLU's floor, is exact), the scale spreads it over the 256 codes, and the
    /// zero point is nudged to an integer from whichever end gives the smaller error.
    ///
    /// ```
    /// use paoding_core::quant::params::QParams;
    /// let p = QParams::from_range(0.0, 6.0);
    /// assert_eq!(p.zero_point, -128);
    /// assert!((p.scale - 6.0 / 255.0).abs() < 1e-7);
    /// assert_eq!(p.quantize(0.0), -128);
    /// assert_eq!(p.quantize(6.0), 127);
    /// ```
    pub fn from_range(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0) as f64, hi.max(0.0) as f64);
        let (qmin, qmax) = (QMIN as f64, QMAX as f64);
        if !(hi - lo).is_finite() || hi - lo <= f64::from(f32::MIN_POSITIVE) {
            // A tensor that is always 0: any scale represents it exactly.
            return QParams {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let scale = (hi - lo) / (qmax - qmin);
        let from_min = qmin - lo / scale;
        let from_max = qmax - hi / scale;
        let error_min = libm::fabs(qmin) + libm::fabs(lo / scale);
        let error_max = libm::fabs(qmax) + libm::fabs(hi / scale);
        let zp = if error_min < error_max {
            from_min
        } else {
            from_max
        };
        let zero_point = if zp < qmin {
            QMIN
        } else if zp > qmax {
            QMAX
        } else {
            libm::round(zp) as i32
        };
        QParams {
            scale: scale as f32,
            zero_point,
        }
    }

    /// The code of a real value: round half away from zero, clamped to int8 (TFLite's
    /// `AffineQuantize`, the runtime's [`paoding_runtime::quant::quantize`]).
    pub fn quantize(&self, x: f32) -> i8 {
        paoding_runtime::quant::quantize(x, self.scale, self.zero_point)
    }

    /// The real value of a code (the runtime's [`paoding_runtime::quant::dequantize`]).
    pub fn dequantize(&self, q: i8) -> f32 {
        paoding_runtime::quant::dequantize(q, self.scale, self.zero_point)
    }

    /// The real range the codes cover.
    pub fn range(&self) -> (f32, f32) {
        (self.dequantize(i8::MIN), self.dequantize(i8::MAX))
    }
}

/// Symmetric per-channel weight scales: `max |w| / 127` over each of `channels` equal runs of
/// `weights` (a channel of zeros gets scale 1, so its codes are 0).
///
/// ```
/// let s = paoding_core::quant::params::channel_scales(&[0.5, -1.27, 0.0, 0.0], 2);
/// assert_eq!(s, vec![0.01, 1.0]);
/// ```
pub fn channel_scales(weights: &[f32], channels: usize) -> Vec<f32> {
    let per = weights.len() / channels.max(1);
    weights
        .chunks(per.max(1))
        .take(channels)
        .map(|c| {
            let m = c.iter().fold(0.0f32, |m, &w| m.max(w.abs()));
            if m > 0.0 {
                m / 127.0
            } else {
                1.0
            }
        })
        .collect()
}

/// Weights rounded to their channel's codes: `round(w / s)` clamped to [-127, 127].
pub fn quantize_weights(weights: &[f32], scales: &[f32]) -> Vec<i8> {
    let per = weights.len() / scales.len().max(1);
    weights
        .chunks(per.max(1))
        .zip(scales)
        .flat_map(|(c, &s)| {
            c.iter()
                .map(move |&w| libm::roundf(w / s).clamp(-127.0, 127.0) as i8)
        })
        .collect()
}

/// Biases as int32 at `input_scale * weight_scale` per channel (round half away from zero,
/// saturated).
pub fn quantize_bias(bias: &[f32], input_scale: f32, weight_scales: &[f32]) -> Vec<i32> {
    bias.iter()
        .zip(weight_scales)
        .map(|(&b, &s)| {
            let q = libm::round(b as f64 / (input_scale as f64 * s as f64));
            q.clamp(i32::MIN as f64, i32::MAX as f64) as i32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_zero_and_hit_their_ends() {
        for (lo, hi) in [(-1.0f32, 1.0f32), (-3.0, 0.5), (0.2, 4.0), (-8.0, -1.0)] {
            let p = QParams::from_range(lo, hi);
            assert!((QMIN..=QMAX).contains(&p.zero_point));
            assert_eq!(p.dequantize(p.quantize(0.0)), 0.0, "{lo} {hi}");
            let (a, b) = p.range();
            assert!(
                a <= lo.min(0.0) + p.scale && b >= hi.max(0.0) - p.scale,
                "{lo} {hi}: {a} {b}"
            );
        }
        assert_eq!(QParams::from_range(0.0, 0.0).quantize(0.0), 0);
    }

    #[test]
    fn weights_and_biases_round_to_their_channel() {
        let w = [1.0f32, -0.5, 0.26, 0.0, 2.54, -1.3];
        let s = channel_scales(&w, 2);
        assert_eq!(quantize_weights(&w, &s), [127, -64, 33, 0, 127, -65]);
        assert_eq!(quantize_bias(&[0.5, -0.01], 0.5, &s), [127, -1]);
    }
}
