//! Probe inputs: what the data-free stages (refit, fidelity checks) feed the model instead of
//! training data. A clean, swappable input: seeded uniform draws from the input range, or any
//! batch the caller supplies (real data, synthesized probes).

use alloc::vec::Vec;

use crate::error::{Error, Result};

/// A batch of model inputs, sample after sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Probes {
    /// `count * sample_len` values.
    pub data: Vec<f32>,
    /// Values in one sample (the model input's element count).
    pub sample_len: usize,
    /// Synthesized from the model alone ([`crate::synth`], class inversion without
    /// BatchNorm statistics): plausible to the model but off the data's distribution, so the
    /// refit trusts them less (see [`crate::prune::SYNTHESIZED_RIDGE`]). Probes that matched
    /// the training data's BatchNorm statistics are not: the refit's normal equations are
    /// the layers' second moments, which such probes were fitted to.
    pub off_distribution: bool,
}

impl Probes {
    /// Seeded uniform draws in `[lo, hi)`; the same seed gives the same probes everywhere.
    ///
    /// ```
    /// let p = paoding_core::probes::Probes::uniform(4, 3, 0.0, 1.0, 7);
    /// assert_eq!(p.count(), 3);
    /// assert!(p.data.iter().all(|&v| (0.0..1.0).contains(&v)));
    /// assert_eq!(p, paoding_core::probes::Probes::uniform(4, 3, 0.0, 1.0, 7));
    /// ```
    pub fn uniform(sample_len: usize, count: usize, lo: f32, hi: f32, seed: u64) -> Self {
        let mut rng = SplitMix64(seed);
        let data = (0..sample_len * count)
            .map(|_| lo + (hi - lo) * rng.next_f32())
            .collect();
        Probes {
            data,
            sample_len,
            off_distribution: false,
        }
    }

    /// Wrap a caller's batch; its length must be a whole number of samples.
    pub fn from_batch(data: Vec<f32>, sample_len: usize) -> Result<Self> {
        if sample_len == 0 || data.is_empty() || !data.len().is_multiple_of(sample_len) {
            return Err(Error::InputLength {
                got: data.len(),
                expected: sample_len,
                shape: alloc::vec![sample_len],
            });
        }
        Ok(Probes {
            data,
            sample_len,
            off_distribution: false,
        })
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.data.len() / self.sample_len.max(1)
    }

    /// One sample.
    pub fn sample(&self, i: usize) -> &[f32] {
        &self.data[i * self.sample_len..(i + 1) * self.sample_len]
    }
}

/// SplitMix64: tiny, fast, and fixed forever, so seeded results never change with a crate update.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values uniform in `[-scale, scale)` (test data for this crate's unit tests).
    #[cfg(test)]
    pub(crate) fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_f32() * 2.0 - 1.0) * scale)
            .collect()
    }

    /// A dense layer with random weights in ±0.5 and biases in ±0.3 (unit tests).
    #[cfg(test)]
    pub(crate) fn dense_op(
        &mut self,
        inputs: usize,
        units: usize,
        activation: crate::ir::Activation,
    ) -> crate::ir::Op {
        crate::ir::Op::Dense(crate::ir::Dense {
            units,
            inputs,
            weights: self.vec(units * inputs, 0.5),
            bias: self.vec(units, 0.3),
            activation,
        })
    }

    /// A convolution with random weights in ±0.6 and biases in ±0.3 (unit tests).
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_op(
        &mut self,
        cin: usize,
        cout: usize,
        groups: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: [usize; 4],
        activation: crate::ir::Activation,
    ) -> crate::ir::Op {
        crate::ir::Op::Conv2d(crate::ir::Conv2d {
            out_channels: cout,
            in_channels: cin,
            kernel,
            stride,
            dilation,
            padding,
            groups,
            weights: self.vec(cout * cin / groups * kernel[0] * kernel[1], 0.6),
            bias: self.vec(cout, 0.3),
            activation,
        })
    }
}
