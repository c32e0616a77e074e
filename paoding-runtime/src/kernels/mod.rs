//! f32 kernels, one file per operator family. Every kernel trusts the lengths that
//! [`crate::Model::from_bytes`] proved once; it still never indexes out of bounds (slices are
//! walked with iterators and chunks, so a violated assumption computes garbage, not UB).

pub(crate) mod conv;
pub(crate) mod eltwise;
pub(crate) mod layout;
pub(crate) mod pool;

use crate::format::{Act, MAX_RANK};

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
    #[inline]
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
            Act::Sigmoid | Act::Tanh => self.apply_smooth(x),
        }
    }

    /// Sigmoid and tanh, out of line, so that every caller of [`Act::apply`] keeps the cheap
    /// activations inline without its own copy of the `expf` path (only those two reach it).
    #[inline(never)]
    fn apply_smooth(self, x: f32) -> f32 {
        match self {
            Act::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            Act::Tanh => tanh(x),
            _ => x,
        }
    }

    /// Apply the activation in place; the match is hoisted out of the loop.
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Act::Identity => {}
            Act::Relu => xs.iter_mut().for_each(|x| *x = Act::Relu.apply(*x)),
            Act::Clip { min, max } => xs.iter_mut().for_each(|x| *x = clip(*x, min, max)),
            Act::Sigmoid | Act::Tanh => xs.iter_mut().for_each(|x| *x = self.apply_smooth(*x)),
        }
    }
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

/// tanh through the `expf` that sigmoid and softmax already link, instead of libm's `tanhf`
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
        let e = libm::expf(2.0 * a);
        (e - 1.0) / (e + 1.0)
    };
    if x < 0.0 {
        -t
    } else {
        t
    }
}

/// `dst = src`, element by element over the shorter of the two (lengths are equal after
/// validation; no panicking length assertion).
#[inline]
pub(crate) fn copy(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

#[cfg(test)]
mod tests {
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
