//! The Frechet distance between two Gaussians, as pytorch-fid defines it:
//! `|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`.
//!
//! pytorch-fid takes a general (Schur-based, complex) matrix square root of the non-symmetric
//! product `S1 S2`. Both covariances are symmetric positive semi-definite, so the eigenvalues
//! of `S1 S2` are those of the symmetric `S1^(1/2) S2 S1^(1/2)`: two symmetric
//! eigendecompositions give the trace term exactly, in real arithmetic, several times faster
//! and without the spurious imaginary parts sqrtm produces on singular covariances (N < D).
//! Eigenvalues that rounding pushes slightly below zero are clamped. If a decomposition does
//! not converge, or the result is not finite, the computation is retried once with `eps` added
//! to both diagonals (pytorch-fid's fallback) and the offset is reported.

use faer::{Mat, Side};

use super::stats::GaussianStats;
use super::EvalError;

/// pytorch-fid's diagonal offset for its retry.
pub const FD_EPS: f64 = 1e-6;

/// The distance and its parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrechetDistance {
    pub value: f64,
    /// `|mu1 - mu2|^2`.
    pub mean_term: f64,
    /// `tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`.
    pub cov_term: f64,
    /// The diagonal offset the retry needed, if any.
    pub eps_offset: Option<f64>,
}

pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<FrechetDistance, EvalError> {
    a.validate("first statistics")?;
    b.validate("second statistics")?;
    if a.dim() != b.dim() {
        return Err(EvalError::Shape(format!(
            "cannot compare {}-dimensional features with {}-dimensional ones (different networks?)",
            a.dim(),
            b.dim()
        )));
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let trace = |s: &[f64]| (0..a.dim()).map(|i| s[i * a.dim() + i]).sum::<f64>();
    let (tr_a, tr_b) = (trace(&a.sigma), trace(&b.sigma));
    let (sqrt_trace, eps_offset) = match trace_sqrt_product(&a.sigma, &b.sigma, a.dim(), 0.0) {
        Some(t) => (t, None),
        None => {
            let t = trace_sqrt_product(&a.sigma, &b.sigma, a.dim(), FD_EPS).ok_or_else(|| {
                EvalError::NonFinite("the covariance square root did not converge even with the eps offset".into())
            })?;
            (t, Some(FD_EPS))
        }
    };
    let cov_term = tr_a + tr_b - 2.0 * sqrt_trace;
    Ok(FrechetDistance { value: mean_term + cov_term, mean_term, cov_term, eps_offset })
}

/// `tr((S1 S2)^(1/2))` through symmetric eigendecompositions; `None` when it fails.
///
/// Otherwise, with `S1 = U diag(w) U^T` and `W = U diag(sqrt(max(w, 0)))`, the matrix
/// `S1^(1/2) S2 S1^(1/2) = U (W^T S2 W) U^T` has the eigenvalues of the smaller `W^T S2 W`,
/// where columns with `w <= 0` are dropped (they contribute exactly nothing): two products
/// instead of three, and for N < D only rank(S1) columns remain.
fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize, eps: f64) -> Option<f64> {
    let t = trace_sqrt_product_faer(s1, s2, d, eps);
    crate::kernels::clear_upper_vector_state_everywhere();
    t
}

fn trace_sqrt_product_faer(s1: &[f64], s2: &[f64], d: usize, eps: f64) -> Option<f64> {
    let sym = |s: &[f64]| Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (s[i * d + j] + s[j * d + i]) + if i == j { eps } else { 0.0 });
    let (m1, m2) = (sym(s1), sym(s2));
    // Positive definite S1 (N > D, the usual case): with S1 = L L^T, the symmetric L^T S2 L is
    // similar to S1 S2 and to S1^(1/2) S2 S1^(1/2), so its eigenvalues are the same, and a
    // Cholesky factor costs a fraction of an eigendecomposition with vectors. The factor must
    // be well conditioned for that; otherwise (singular or nearly so, e.g. N <= D) the
    // eigendecomposition below handles the null space exactly.
    if let Ok(llt) = m1.llt(Side::Lower) {
        let l = llt.L();
        let diag: Vec<f64> = (0..d).map(|i| l[(i, i)]).collect();
        let (lo, hi) = diag.iter().fold((f64::INFINITY, 0f64), |(a, b), v| (a.min(*v), b.max(*v)));
        if lo > 0.0 && hi / lo < 1e4 {
            let t = &m2 * l;
            let c = l.transpose() * &t;
            let c = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (c[(i, j)] + c[(j, i)]));
            let lambda = c.self_adjoint_eigenvalues(Side::Lower).ok()?;
            let t: f64 = lambda.iter().map(|l| l.max(0.0).sqrt()).sum();
            return t.is_finite().then_some(t);
        }
    }
    let e1 = m1.self_adjoint_eigen(Side::Lower).ok()?;
    let (u, w) = (e1.U(), e1.S().column_vector());
    let keep: Vec<usize> = (0..d).filter(|&j| w[j] > 0.0).collect();
    if keep.is_empty() {
        return Some(0.0);
    }
    let wm = Mat::<f64>::from_fn(d, keep.len(), |i, k| u[(i, keep[k])] * w[keep[k]].sqrt());
    let t = &m2 * &wm;
    let c = wm.transpose() * &t;
    let n = keep.len();
    let c = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (c[(i, j)] + c[(j, i)]));
    let lambda = c.self_adjoint_eigenvalues(Side::Lower).ok()?;
    let t: f64 = lambda.iter().map(|l| l.max(0.0).sqrt()).sum();
    t.is_finite().then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::stats::FeatureStats;
    use crate::rng::Rng;

    fn stats(seed: u64, n: usize, d: usize, scale: f64, shift: f64) -> GaussianStats {
        let mut r = Rng::new(seed);
        let x: Vec<f64> = (0..n * d).map(|_| r.normal() * scale + shift).collect();
        let mut s = FeatureStats::new(d);
        s.add_rows(&x).unwrap();
        s.finish().unwrap()
    }

    #[test]
    fn identical_is_zero_and_closed_form_for_diagonals() {
        let a = stats(3, 300, 16, 1.0, 0.0);
        let fd = frechet_distance(&a, &a).unwrap();
        assert!(fd.value.abs() < 1e-9, "{fd:?}");
        // Diagonal covariances: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
        let d = 5;
        let mk = |mu: f64, v: &[f64]| GaussianStats {
            mu: vec![mu; d],
            sigma: (0..d * d).map(|k| if k / d == k % d { v[k / d] } else { 0.0 }).collect(),
            n: Some(10),
        };
        let va = [1.0, 2.0, 3.0, 4.0, 0.0];
        let vb = [4.0, 1.0, 0.5, 4.0, 9.0];
        let fd = frechet_distance(&mk(0.0, &va), &mk(1.0, &vb)).unwrap();
        let want: f64 = d as f64 + va.iter().zip(&vb).map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2)).sum::<f64>();
        assert!((fd.value - want).abs() < 1e-10, "{} vs {want}", fd.value);
    }

    #[test]
    fn errors_name_the_problem() {
        let a = stats(1, 10, 4, 1.0, 0.0);
        let b = stats(2, 10, 3, 1.0, 0.0);
        assert!(frechet_distance(&a, &b).unwrap_err().to_string().contains("4-dimensional"));
        let mut c = a.clone();
        c.sigma[5] = f64::INFINITY;
        assert!(frechet_distance(&a, &c).unwrap_err().to_string().contains("sigma[1, 1]"));
    }
}
