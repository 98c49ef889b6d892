//! Streaming Gaussian statistics of feature vectors (the inputs of a Frechet distance).
//!
//! Features arrive batch by batch (and rank by rank); [`FeatureStats`] keeps the count, the
//! mean and the co-moment matrix `sum (x - mean)(x - mean)^T` in f64, and merges two partial
//! statistics with Chan et al.'s pairwise update, so statistics gathered on several ranks or in
//! any batch split equal the single-pass ones up to f64 rounding. [`GaussianStats`] is the
//! finished form (mean, covariance with N-1, count) that FD consumes and files store.

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat};

use super::EvalError;

/// Accumulates mean and co-moment of D-dimensional features.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    dim: usize,
    n: u64,
    mean: Vec<f64>,
    /// Row-major D x D, `sum (x - mean)(x - mean)^T`.
    comoment: Vec<f64>,
}

impl FeatureStats {
    pub fn new(dim: usize) -> Self {
        Self { dim, n: 0, mean: vec![0.0; dim], comoment: vec![0.0; dim * dim] }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Adds `rows.len() / dim` feature vectors stored row-major. Refuses non-finite values
    /// (naming the first one) so one NaN cannot turn a whole evaluation into NaN silently.
    pub fn add_rows<T: Copy + Into<f64>>(&mut self, rows: &[T]) -> Result<(), EvalError> {
        let d = self.dim;
        if d == 0 || rows.len() % d != 0 {
            return Err(EvalError::Shape(format!(
                "{} values are not a whole number of {d}-dimensional feature rows",
                rows.len()
            )));
        }
        let b = rows.len() / d;
        if b == 0 {
            return Ok(());
        }
        if let Some(i) = rows.iter().position(|v| !(*v).into().is_finite()) {
            return Err(EvalError::NonFinite(format!(
                "feature row {} column {} is {}",
                i / d,
                i % d,
                rows[i].into()
            )));
        }
        let mut mean = vec![0.0f64; d];
        for r in rows.chunks_exact(d) {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += (*v).into();
            }
        }
        mean.iter_mut().for_each(|m| *m /= b as f64);
        // Centred rows, row-major like the input (a column-major copy would stride through it).
        let centred: Vec<f64> = rows.iter().enumerate().map(|(k, v)| (*v).into() - mean[k % d]).collect();
        let xc = faer::MatRef::from_row_major_slice(&centred, b, d);
        // Xc^T Xc is symmetric: compute the lower triangle only (half the flops), then mirror.
        let mut m = Mat::<f64>::zeros(d, d);
        triangular::matmul(
            m.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xc.transpose(),
            BlockStructure::Rectangular,
            xc,
            BlockStructure::Rectangular,
            1.0,
            faer::get_global_parallelism(),
        );
        crate::kernels::clear_upper_vector_state_everywhere();
        let mut comoment = vec![0.0f64; d * d];
        for j in 0..d {
            for i in j..d {
                let v = m[(i, j)];
                comoment[i * d + j] = v;
                comoment[j * d + i] = v;
            }
        }
        self.merge(&FeatureStats { dim: d, n: b as u64, mean, comoment })
    }

    /// The statistic as bytes (little-endian: dim, n, mean, comoment), for a gather across
    /// ranks; [`from_bytes`](Self::from_bytes) reads it back exactly.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * (self.mean.len() + self.comoment.len()));
        out.extend((self.dim as u64).to_le_bytes());
        out.extend(self.n.to_le_bytes());
        for v in self.mean.iter().chain(&self.comoment) {
            out.extend(v.to_le_bytes());
        }
        out
    }

    /// Reads [`to_bytes`](Self::to_bytes); returns the statistic and the bytes it used.
    pub fn from_bytes(b: &[u8]) -> Result<(Self, usize), EvalError> {
        let word = |k: usize| -> Result<[u8; 8], EvalError> { b.get(8 * k..8 * k + 8).and_then(|s| s.try_into().ok()).ok_or_else(|| EvalError::Shape("feature statistics cut short".into())) };
        let dim = u64::from_le_bytes(word(0)?) as usize;
        let n = u64::from_le_bytes(word(1)?);
        if dim > 1 << 16 {
            return Err(EvalError::Shape(format!("feature statistics of {dim} dimensions")));
        }
        let vals = (0..dim + dim * dim).map(|k| word(2 + k).map(f64::from_le_bytes)).collect::<Result<Vec<f64>, _>>()?;
        let (mean, comoment) = vals.split_at(dim);
        Ok((Self { dim, n, mean: mean.to_vec(), comoment: comoment.to_vec() }, 8 * (2 + dim + dim * dim)))
    }

    /// Folds another partial statistic in (Chan's parallel update).
    pub fn merge(&mut self, other: &FeatureStats) -> Result<(), EvalError> {
        if other.dim != self.dim {
            return Err(EvalError::Shape(format!(
                "cannot merge {}-dimensional statistics into {}-dimensional ones",
                other.dim, self.dim
            )));
        }
        if other.n == 0 {
            return Ok(());
        }
        if self.n == 0 {
            *self = other.clone();
            return Ok(());
        }
        let (na, nb) = (self.n as f64, other.n as f64);
        let n = na + nb;
        let delta: Vec<f64> = other.mean.iter().zip(&self.mean).map(|(b, a)| b - a).collect();
        let w = na * nb / n;
        let d = self.dim;
        for i in 0..d {
            for j in 0..d {
                self.comoment[i * d + j] += other.comoment[i * d + j] + delta[i] * delta[j] * w;
            }
        }
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb / n;
        }
        self.n += other.n;
        Ok(())
    }

    /// Mean and unbiased (N-1) covariance. Needs at least two samples.
    pub fn finish(&self) -> Result<GaussianStats, EvalError> {
        if self.n < 2 {
            return Err(EvalError::TooFewSamples(self.n));
        }
        let s = 1.0 / (self.n as f64 - 1.0);
        Ok(GaussianStats {
            mu: self.mean.clone(),
            sigma: self.comoment.iter().map(|v| v * s).collect(),
            n: Some(self.n),
        })
    }
}

/// Mean and covariance of a feature distribution: what FD compares and stats files hold.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    pub mu: Vec<f64>,
    /// Row-major D x D covariance (N-1 normalisation).
    pub sigma: Vec<f64>,
    /// Number of samples; unknown for statistics imported from pytorch-fid `.npz` files.
    pub n: Option<u64>,
}

impl GaussianStats {
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Checks shapes and finiteness.
    pub fn validate(&self, what: &str) -> Result<(), EvalError> {
        let d = self.mu.len();
        if d == 0 || self.sigma.len() != d * d {
            return Err(EvalError::Shape(format!(
                "{what}: mu has {d} values but sigma has {} (expected {d} x {d})",
                self.sigma.len()
            )));
        }
        if self.n.is_some_and(|n| n < 2) {
            return Err(EvalError::TooFewSamples(self.n.unwrap_or(0)));
        }
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite(format!("{what}: mu[{i}] = {}", self.mu[i])));
        }
        if let Some(i) = self.sigma.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite(format!(
                "{what}: sigma[{}, {}] = {}",
                i / d,
                i % d,
                self.sigma[i]
            )));
        }
        Ok(())
    }

    /// Back to an accumulator, to merge more features in. Needs the sample count.
    pub fn to_accumulator(&self) -> Result<FeatureStats, EvalError> {
        let n = self.n.ok_or_else(|| {
            EvalError::Shape("these statistics carry no sample count (pytorch-fid .npz), so they cannot be merged".into())
        })?;
        let s = n as f64 - 1.0;
        Ok(FeatureStats {
            dim: self.dim(),
            n,
            mean: self.mu.clone(),
            comoment: self.sigma.iter().map(|v| v * s).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rows(seed: u64, n: usize, d: usize) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n * d).map(|k| r.normal() + (k % d) as f64 * 0.1).collect()
    }

    #[test]
    fn streaming_and_merged_equal_single_pass() {
        let d = 7;
        let x = rows(1, 40, d);
        let mut one = FeatureStats::new(d);
        one.add_rows(&x).unwrap();
        let mut batched = FeatureStats::new(d);
        for c in x.chunks(3 * d) {
            batched.add_rows(c).unwrap();
        }
        let (mut r0, mut r1) = (FeatureStats::new(d), FeatureStats::new(d));
        r0.add_rows(&x[..13 * d]).unwrap();
        r1.add_rows(&x[13 * d..]).unwrap();
        r0.merge(&r1).unwrap();
        let a = one.finish().unwrap();
        // Direct two-pass reference.
        let n = 40.0;
        let mu: Vec<f64> = (0..d).map(|j| x.iter().skip(j).step_by(d).sum::<f64>() / n).collect();
        for other in [batched.finish().unwrap(), r0.finish().unwrap()] {
            for (p, q) in a.sigma.iter().zip(&other.sigma) {
                assert!((p - q).abs() < 1e-12, "{p} vs {q}");
            }
        }
        for i in 0..d {
            assert!((a.mu[i] - mu[i]).abs() < 1e-12);
            for j in 0..d {
                let c: f64 = x.chunks(d).map(|r| (r[i] - mu[i]) * (r[j] - mu[j])).sum::<f64>() / (n - 1.0);
                assert!((a.sigma[i * d + j] - c).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn refuses_bad_input() {
        let mut s = FeatureStats::new(3);
        assert!(matches!(s.add_rows(&[1.0f64, 2.0]), Err(EvalError::Shape(_))));
        let err = s.add_rows(&[1.0f64, f64::NAN, 2.0]).unwrap_err();
        assert!(err.to_string().contains("row 0 column 1"), "{err}");
        s.add_rows(&[1.0f32, 2.0, 3.0]).unwrap();
        assert!(matches!(s.finish(), Err(EvalError::TooFewSamples(1))));
    }
}
