//! The little dense linear algebra pruning needs: ridge-regularised least squares through a
//! Cholesky factorisation, accumulated in f64.

use alloc::vec::Vec;

/// Normal equations of a least-squares problem, accumulated row by row:
/// `gram = Σ x xᵀ`, `cross = Σ x yᵀ`.
#[derive(Debug, Clone)]
pub struct NormalEquations {
    /// Features per row.
    pub features: usize,
    /// Targets per row.
    pub targets: usize,
    /// `features × features`, upper triangle filled while accumulating.
    pub gram: Vec<f64>,
    /// `features × targets`.
    pub cross: Vec<f64>,
}

impl NormalEquations {
    /// Empty equations.
    pub fn new(features: usize, targets: usize) -> Self {
        NormalEquations {
            features,
            targets,
            gram: alloc::vec![0.0; features * features],
            cross: alloc::vec![0.0; features * targets],
        }
    }

    /// Add one observation.
    pub fn add_row(&mut self, x: &[f64], y: &[f64]) {
        let f = self.features;
        for (i, &xi) in x.iter().enumerate() {
            if xi == 0.0 {
                continue;
            }
            let row = &mut self.gram[i * f..(i + 1) * f];
            for (g, &xj) in row[i..].iter_mut().zip(&x[i..]) {
                *g += xi * xj;
            }
            for (c, &yt) in self.cross[i * self.targets..(i + 1) * self.targets]
                .iter_mut()
                .zip(y)
            {
                *c += xi * yt;
            }
        }
    }

    /// Solve `(gram + λ·mean(diag)·I) w = cross`; returns `features × targets`.
    /// The ridge term keeps the system well posed when probes do not excite every feature.
    ///
    /// ```
    /// use paoding_core::linalg::NormalEquations;
    /// // y = 2 x + 1, with a bias feature.
    /// let mut eq = NormalEquations::new(2, 1);
    /// for x in [0.0, 1.0, 2.0, 3.0] {
    ///     eq.add_row(&[x, 1.0], &[2.0 * x + 1.0]);
    /// }
    /// let w = eq.solve(1e-9, None);
    /// assert!((w[0] - 2.0).abs() < 1e-6 && (w[1] - 1.0).abs() < 1e-6);
    /// ```
    ///
    /// With a `prior` (`features × targets`), the ridge pulls towards it instead of towards
    /// zero: `min ‖X w − Y‖² + λ‖w − prior‖²`. Where the observations say little, the prior
    /// stands.
    pub fn solve(&self, ridge: f64, prior: Option<&[f64]>) -> Vec<f64> {
        let f = self.features;
        let mean_diag = (0..f).map(|i| self.gram[i * f + i]).sum::<f64>() / f.max(1) as f64;
        let mut lambda = ridge * mean_diag.max(1e-12);
        loop {
            if let Some(l) = cholesky(&self.gram, f, lambda) {
                let mut rhs = self.cross.clone();
                if let Some(p) = prior {
                    rhs.iter_mut().zip(p).for_each(|(r, p)| *r += lambda * p);
                }
                return solve_with(&l, f, &rhs, self.targets);
            }
            lambda = (lambda * 10.0).max(1e-9);
        }
    }
}

/// `(A + λ·mean(diag A)·I)⁻¹` of a symmetric positive semi-definite `n × n` matrix given by
/// its upper triangle (row-major), as a full matrix; λ grows tenfold until the factorisation
/// succeeds, as in [`NormalEquations::solve`].
///
/// ```
/// let inv = paoding_core::linalg::ridge_inverse(&[4.0, 2.0, 0.0, 3.0], 2, 0.0);
/// // [[4, 2], [2, 3]]⁻¹ = [[3, -2], [-2, 4]] / 8
/// for (a, b) in inv.iter().zip([0.375, -0.25, -0.25, 0.5]) {
///     assert!((a - b).abs() < 1e-12);
/// }
/// ```
pub fn ridge_inverse(upper: &[f64], n: usize, ridge: f64) -> Vec<f64> {
    let mean_diag = (0..n).map(|i| upper[i * n + i]).sum::<f64>() / n.max(1) as f64;
    let mut lambda = ridge * mean_diag.max(1e-12);
    loop {
        if let Some(l) = cholesky(upper, n, lambda) {
            let mut identity = alloc::vec![0.0; n * n];
            (0..n).for_each(|i| identity[i * n + i] = 1.0);
            return solve_with(&l, n, &identity, n);
        }
        lambda = (lambda * 10.0).max(1e-9);
    }
}

/// Lower-triangular `L` with `L Lᵀ = A + λI` (A given by its upper triangle), or `None` if it
/// is not positive definite.
fn cholesky(upper: &[f64], n: usize, lambda: f64) -> Option<Vec<f64>> {
    let mut l = alloc::vec![0.0; n * n];
    for j in 0..n {
        let mut d = upper[j * n + j] + lambda;
        for k in 0..j {
            d -= l[j * n + k] * l[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = libm::sqrt(d);
        l[j * n + j] = d;
        for i in j + 1..n {
            let mut s = upper[j * n + i];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = s / d;
        }
    }
    Some(l)
}

fn solve_with(l: &[f64], n: usize, b: &[f64], m: usize) -> Vec<f64> {
    let mut x = b.to_vec();
    for t in 0..m {
        // Forward: L z = b.
        for i in 0..n {
            let mut s = x[i * m + t];
            for k in 0..i {
                s -= l[i * n + k] * x[k * m + t];
            }
            x[i * m + t] = s / l[i * n + i];
        }
        // Backward: Lᵀ w = z.
        for i in (0..n).rev() {
            let mut s = x[i * m + t];
            for k in i + 1..n {
                s -= l[k * n + i] * x[k * m + t];
            }
            x[i * m + t] = s / l[i * n + i];
        }
    }
    x
}

/// `X Xᵀ` (`n × n`, both triangles) for row-major `x` of `n` rows of `d` values: the dot
/// product of every pair of rows.
///
/// With `std`, matrixmultiply's DGEMM (SIMD, cache-blocked): the pairwise similarities of a
/// 512-unit layer of 3×3×512 filters take 0.1 s instead of a second for pair-by-pair sums.
/// Without, those sums. Either way in f64, so the order of the sums only moves the last bits.
///
/// ```
/// let g = paoding_core::linalg::gram(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
/// assert_eq!(g, vec![14.0, 32.0, 32.0, 77.0]);
/// ```
pub fn gram(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let x = &x[..n * d];
    let mut g = alloc::vec![0.0f64; n * n];
    if n == 0 || d == 0 {
        return g;
    }
    #[cfg(feature = "std")]
    // SAFETY: `x` holds n × d values row-major (read as X with strides (d, 1) and as Xᵀ with
    // strides (1, d)), `g` holds n × n row-major and is exclusively borrowed.
    unsafe {
        matrixmultiply::dgemm(
            n,
            d,
            n,
            1.0,
            x.as_ptr(),
            d as isize,
            1,
            x.as_ptr(),
            1,
            d as isize,
            0.0,
            g.as_mut_ptr(),
            n as isize,
            1,
        );
        // Exactly symmetric, whatever the kernel's order of sums.
        for a in 0..n {
            for b in a + 1..n {
                g[b * n + a] = g[a * n + b];
            }
        }
    }
    #[cfg(not(feature = "std"))]
    for a in 0..n {
        for b in a..n {
            let dot: f64 = x[a * d..(a + 1) * d]
                .iter()
                .zip(&x[b * d..(b + 1) * d])
                .map(|(p, q)| p * q)
                .sum();
            g[a * n + b] = dot;
            g[b * n + a] = dot;
        }
    }
    g
}
