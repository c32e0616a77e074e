//! f32 kernels, one file per operator family. Every kernel trusts the lengths that
//! [`crate::Model::from_bytes`] proved once; it still never indexes out of bounds (slices are
//! walked with iterators and chunks, so a violated assumption computes garbage, not UB).

pub(crate) mod conv;
pub(crate) mod dense;
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
            Act::Clip { min, max } => x.max(min).min(max),
            Act::Sigmoid => 1.0 / (1.0 + libm::expf(-x)),
            Act::Tanh => libm::tanhf(x),
        }
    }

    /// Apply the activation in place; the match is hoisted out of the loop.
    pub fn apply_slice(self, xs: &mut [f32]) {
        match self {
            Act::Identity => {}
            Act::Relu => xs.iter_mut().for_each(|x| *x = Act::Relu.apply(*x)),
            Act::Clip { min, max } => xs.iter_mut().for_each(|x| *x = x.max(min).min(max)),
            Act::Sigmoid => xs.iter_mut().for_each(|x| *x = Act::Sigmoid.apply(*x)),
            Act::Tanh => xs.iter_mut().for_each(|x| *x = libm::tanhf(*x)),
        }
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
