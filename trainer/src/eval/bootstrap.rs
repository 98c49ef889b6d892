//! Is a difference between two runs real? Paired bootstrap confidence intervals of the
//! difference of FD-scenes, MMD and compositional accuracy between two runs evaluated under
//! the same protocol.
//!
//! Image i of every run answers the same prompt from the same starting noise, so the runs
//! are paired by image: one resample of the N image indices (with replacement) is applied to
//! both runs, the metric recomputed on each (against the same full reference set) and the
//! difference kept; the 2.5% and 97.5% quantiles of the differences bound the 95% interval.
//! With several seeds per arm, each resample averages the differences over the seed pairs.
//! This captures the sampling noise of the evaluation set, not run-to-run training noise
//! (replicate seeds for that).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

use faer::{Mat, Side};

use super::{EvalError, FeatureStats, Protocol};
use crate::rng::Rng;

/// Where a run directory keeps the per-image numbers of its latest evaluation.
pub const SAMPLES_FILE: &str = "eval-samples.safetensors";

/// The per-image numbers of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSamples {
    pub dim: usize,
    /// Scene-evaluator embeddings of the generated images, N x dim, by image index.
    pub generated: Vec<f32>,
    /// The same for the reference renders.
    pub reference: Vec<f32>,
    /// Compositional score per generated image (mean of the six categories of `composition`).
    pub scores: Vec<f32>,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    FdScenes,
    Mmd,
    Accuracy,
}

impl EvalSamples {
    pub fn n(&self) -> usize {
        self.scores.len()
    }

    /// Writes `path` atomically (safetensors; the protocol as JSON metadata).
    pub fn save(&self, path: &Path) -> Result<(), EvalError> {
        let n = self.n();
        let mut t = HashMap::new();
        t.insert("generated".to_string(), Tensor::from_slice(&self.generated, (n, self.dim), &Device::Cpu)?);
        t.insert("reference".to_string(), Tensor::from_slice(&self.reference, (self.reference.len() / self.dim.max(1), self.dim), &Device::Cpu)?);
        t.insert("scores".to_string(), Tensor::from_slice(&self.scores, n, &Device::Cpu)?);
        let proto = serde_json::to_vec(&self.protocol).expect("protocol serialises");
        t.insert("protocol_json".to_string(), Tensor::from_vec(proto.clone(), proto.len(), &Device::Cpu)?);
        crate::fsutil::write_durable_with(path, |tmp| candle_core::safetensors::save(&t, tmp).map_err(std::io::Error::other)).map_err(|e| EvalError::File { path: path.display().to_string(), msg: e.to_string() })
    }

    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let t = candle_core::safetensors::load(path, &Device::Cpu)?;
        let get = |k: &str| t.get(k).ok_or_else(|| EvalError::Shape(format!("{}: no tensor {k:?}", path.display())));
        let generated = get("generated")?;
        let dim = generated.dim(1)?;
        let proto: Vec<u8> = get("protocol_json")?.to_dtype(DType::U8)?.to_vec1()?;
        Ok(Self {
            dim,
            generated: generated.flatten_all()?.to_vec1()?,
            reference: get("reference")?.flatten_all()?.to_vec1()?,
            scores: get("scores")?.to_vec1()?,
            protocol: serde_json::from_slice(&proto).map_err(|e| EvalError::Shape(format!("{}: protocol: {e}", path.display())))?,
        })
    }

    fn metric(&self, m: Metric, idx: &[usize], reference: &Reference) -> Result<f64, EvalError> {
        Ok(match m {
            Metric::Accuracy => idx.iter().map(|&i| self.scores[i] as f64).sum::<f64>() / idx.len() as f64,
            Metric::Mmd => {
                let rows: Vec<f32> = idx.iter().flat_map(|&i| self.generated[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
                super::mmd::mmd(&rows, &self.reference, self.dim)?
            }
            Metric::FdScenes => reference.fd(&self.generated, self.dim, idx)?,
        })
    }
}

/// 95% interval of `mean over pairs of (arm - baseline)` for `m`, from `reps` paired
/// resamples. Every pair must share the protocol (and so the prompts and the reference).
pub fn paired_interval(pairs: &[(&EvalSamples, &EvalSamples)], m: Metric, reps: usize, seed: u64) -> Result<(f64, f64), EvalError> {
    let (a0, _) = pairs.first().ok_or_else(|| EvalError::Shape("no runs to compare".into()))?;
    let n = a0.n();
    for (a, b) in pairs {
        let d = a.protocol.differences(&b.protocol);
        if !d.is_empty() {
            return Err(EvalError::ProtocolMismatch(d.join(", ")));
        }
        if a.n() != n || b.n() != n || a.reference != b.reference {
            return Err(EvalError::Shape("runs with different image sets cannot be paired".into()));
        }
    }
    if n < 2 {
        return Err(EvalError::Shape("an interval needs at least 2 evaluation images".into()));
    }
    let reference = Reference::new(&a0.reference, a0.dim)?;
    let mut rng = Rng::derive(seed, &[0xb007]);
    let mut deltas = Vec::with_capacity(reps);
    for _ in 0..reps {
        let idx: Vec<usize> = (0..n).map(|_| ((rng.uniform() * n as f64) as usize).min(n - 1)).collect();
        let mut sum = 0.0;
        for (a, b) in pairs {
            sum += a.metric(m, &idx, &reference)? - b.metric(m, &idx, &reference)?;
        }
        deltas.push(sum / pairs.len() as f64);
    }
    deltas.sort_by(f64::total_cmp);
    let q = |p: f64| deltas[((p * (reps - 1) as f64).round() as usize).min(reps - 1)];
    Ok((q(0.025), q(0.975)))
}

/// The delta of `m` (arm minus baseline, over all evaluation images) of every pair: one per
/// seed when the pairs are the arm's and the baseline's runs with the same seed.
pub fn per_seed_deltas(pairs: &[(&EvalSamples, &EvalSamples)], m: Metric) -> Result<Vec<f64>, EvalError> {
    pairs
        .iter()
        .map(|(a, b)| {
            let d = a.protocol.differences(&b.protocol);
            if !d.is_empty() {
                return Err(EvalError::ProtocolMismatch(d.join(", ")));
            }
            let reference = Reference::new(&a.reference, a.dim)?;
            let all: Vec<usize> = (0..a.n()).collect();
            let both: Vec<usize> = (0..b.n()).collect();
            Ok(a.metric(m, &all, &reference)? - b.metric(m, &both, &reference)?)
        })
        .collect()
}

/// Two-sided 95% quantiles of Student's t (0.975) for 1 to 30 degrees of freedom.
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// 95% t-interval of the mean of `deltas` (per-seed deltas: training noise, data order and
/// evaluation noise all inside each one), `mean +- t(0.975, n - 1) * sd / sqrt(n)`; None
/// with fewer than two seeds, where training noise cannot be estimated.
pub fn t_interval(deltas: &[f64]) -> Option<(f64, f64)> {
    let n = deltas.len();
    if n < 2 || deltas.iter().any(|d| !d.is_finite()) {
        return None;
    }
    let mean = deltas.iter().sum::<f64>() / n as f64;
    let sd = (deltas.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    // beyond the table, the first-order expansion of t around the normal quantile
    let df = (n - 1) as f64;
    let t = T975.get(n - 2).copied().unwrap_or(1.959_964 + (1.959_964f64.powi(3) + 1.959_964) / (4.0 * df));
    let half = t * sd / (n as f64).sqrt();
    Some((mean - half, mean + half))
}

/// The fixed reference side of FD-scenes, prepared once for many resamples.
struct Reference {
    mu: Vec<f64>,
    sigma: Mat<f64>,
    trace: f64,
}

impl Reference {
    fn new(rows: &[f32], dim: usize) -> Result<Self, EvalError> {
        let mut st = FeatureStats::new(dim);
        st.add_rows(rows)?;
        let g = st.finish()?;
        let sigma = Mat::from_fn(dim, dim, |i, j| g.sigma[i * dim + j]);
        let trace = (0..dim).map(|i| g.sigma[i * dim + i]).sum();
        Ok(Self { mu: g.mu, sigma, trace })
    }

    /// FD of the rows `idx` of `gen` (N x dim) against the reference. With N generated rows
    /// the generated covariance is `Xc^T Xc / (N-1)`, so the nonzero eigenvalues of
    /// `S_r^(1/2) S_g S_r^(1/2)` are those of the N x N matrix `Xc S_r Xc^T / (N-1)`: one small
    /// symmetric eigenproblem per resample instead of a D x D one.
    fn fd(&self, gen: &[f32], dim: usize, idx: &[usize]) -> Result<f64, EvalError> {
        let n = idx.len();
        if n < 2 {
            return Err(EvalError::TooFewSamples(n as u64));
        }
        let mut mu = vec![0f64; dim];
        for &i in idx {
            for (m, x) in mu.iter_mut().zip(&gen[i * dim..(i + 1) * dim]) {
                *m += *x as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        let xc = Mat::from_fn(n, dim, |r, c| gen[idx[r] * dim + c] as f64 - mu[c]);
        let scale = 1.0 / (n - 1) as f64;
        let trace_g: f64 = (0..n).map(|r| (0..dim).map(|c| xc[(r, c)] * xc[(r, c)]).sum::<f64>()).sum::<f64>() * scale;
        let m = (&xc * &self.sigma) * xc.transpose() * scale;
        let lambda = m.self_adjoint_eigenvalues(Side::Lower).map_err(|e| EvalError::Shape(format!("eigenvalues: {e:?}")));
        crate::kernels::clear_upper_vector_state();
        let lambda = lambda?;
        // rank <= min(N-1, D): the rest are zeros up to rounding, whose square roots would add up
        let top = lambda.iter().cloned().fold(0f64, f64::max);
        let tsqrt: f64 = lambda.iter().filter(|l| **l > top * 1e-12).map(|l| l.sqrt()).sum();
        let dmu: f64 = mu.iter().zip(&self.mu).map(|(a, b)| (a - b) * (a - b)).sum();
        Ok(dmu + trace_g + self.trace - 2.0 * tsqrt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed-level interval on synthetic studies with a known truth: per-seed deltas are
    /// the effect plus training noise (normal) plus a small evaluation noise. Under the null
    /// (A/A) about 5% of 4000 studies are starred, at 2, 3 and 5 seeds; with a real effect of
    /// two noise standard deviations and 5 seeds the interval covers the true effect about
    /// 95% of the time and excludes 0 in most studies.
    #[test]
    fn t_interval_is_calibrated_on_synthetic_seed_noise() {
        let mut rng = Rng::derive(11, &[3]);
        let study = |rng: &mut Rng, effect: f64, seeds: usize| -> Vec<f64> { (0..seeds).map(|_| effect + 1.0 * rng.normal() + 0.2 * rng.normal()).collect() };
        for seeds in [2, 3, 5] {
            let starred = (0..4000).filter(|_| t_interval(&study(&mut rng, 0.0, seeds)).is_some_and(|(lo, hi)| lo > 0.0 || hi < 0.0)).count();
            let rate = starred as f64 / 4000.0;
            eprintln!("{seeds} seeds: A/A starred in {starred} of 4000 studies ({:.2}%)", 100.0 * rate);
            assert!((0.035..=0.065).contains(&rate), "{seeds} seeds: false-positive rate {rate}");
        }
        let (mut covered, mut detected) = (0, 0);
        for _ in 0..4000 {
            let (lo, hi) = t_interval(&study(&mut rng, 2.0, 5)).expect("5 seeds");
            covered += (lo <= 2.0 && 2.0 <= hi) as usize;
            detected += (lo > 0.0) as usize;
        }
        let coverage = covered as f64 / 4000.0;
        eprintln!("5 seeds, effect 2 sigma: covered in {covered} and detected in {detected} of 4000 studies");
        assert!((0.93..=0.97).contains(&coverage), "coverage {coverage}");
        assert!(detected as f64 / 4000.0 > 0.8, "a 2-sigma effect at 5 seeds detected in {detected} of 4000");
        assert_eq!(t_interval(&[1.0]), None, "one seed gives no interval");
    }

    fn samples(shift: f32, score: f32, n: usize) -> EvalSamples {
        let dim = 4;
        let mut r = Rng::derive(7, &[1]);
        let reference: Vec<f32> = r.normal_vec(n * dim);
        let mut g = Rng::derive(7, &[2]);
        let generated: Vec<f32> = g.normal_vec(n * dim).into_iter().map(|x| x + shift).collect();
        let scores = (0..n).map(|i| if i % 2 == 0 { score } else { 0.5 }).collect();
        let protocol = Protocol {
            metric: "fd_scenes".into(),
            network: "test".into(),
            weights_sha256: "0".into(),
            samples: n as u64,
            sampler_steps: Some(1),
            guidance: None,
            seed: Some(1),
            reference: "r".into(),
            resize: "none".into(),
        };
        EvalSamples { dim, generated, reference, scores, protocol }
    }

    #[test]
    fn a_real_shift_is_significant_and_no_shift_is_not() {
        let base = samples(0.0, 0.5, 200);
        let moved = samples(1.5, 0.9, 200);
        for m in [Metric::FdScenes, Metric::Mmd] {
            let (lo, hi) = paired_interval(&[(&moved, &base)], m, 200, 3).unwrap();
            assert!(lo > 0.0 && hi > lo, "{m:?}: [{lo}, {hi}]");
            let (lo, hi) = paired_interval(&[(&base, &base)], m, 50, 3).unwrap();
            assert!(lo.abs() < 1e-12 && hi.abs() < 1e-12, "identical runs differ by nothing");
        }
        // accuracy: 0.7 vs 0.5 on average, paired per image
        let (lo, hi) = paired_interval(&[(&moved, &base)], Metric::Accuracy, 500, 3).unwrap();
        assert!(lo > 0.1 && hi < 0.3 && lo < 0.2 && hi > 0.2, "[{lo}, {hi}]");
    }

    #[test]
    fn the_small_eigenproblem_gives_the_frechet_distance() {
        // N < D and N > D, against the reference implementation in fd.rs
        for (n, d) in [(12, 30), (40, 6)] {
            let mut r = Rng::derive(3, &[n as u64]);
            let gen: Vec<f32> = r.normal_vec(n * d).into_iter().enumerate().map(|(i, x)| x * (1.0 + (i % d) as f32 * 0.1) + 0.2).collect();
            let refr: Vec<f32> = r.normal_vec(50 * d);
            let reference = Reference::new(&refr, d).unwrap();
            let fast = reference.fd(&gen, d, &(0..n).collect::<Vec<_>>()).unwrap();
            let (mut a, mut b) = (FeatureStats::new(d), FeatureStats::new(d));
            a.add_rows(&gen).unwrap();
            b.add_rows(&refr).unwrap();
            let slow = super::super::frechet_distance(&a.finish().unwrap(), &b.finish().unwrap()).unwrap().value;
            assert!((fast - slow).abs() < 1e-8 * slow.abs().max(1.0), "n {n} d {d}: {fast} vs {slow}");
        }
    }

    #[test]
    fn runs_under_different_protocols_are_refused() {
        let a = samples(0.0, 0.5, 10);
        let mut b = samples(0.0, 0.5, 10);
        b.protocol.sampler_steps = Some(2);
        let e = paired_interval(&[(&a, &b)], Metric::Accuracy, 10, 1).unwrap_err().to_string();
        assert!(e.contains("sampler_steps: Some(1) vs Some(2)"), "{e}");
    }

    #[test]
    fn samples_round_trip_through_a_file() {
        let path = std::env::temp_dir().join(format!("ablate-eval-samples-{}.safetensors", std::process::id()));
        let a = samples(0.3, 0.75, 12);
        a.save(&path).unwrap();
        assert_eq!(EvalSamples::load(&path).unwrap(), a);
        let _ = std::fs::remove_file(path);
    }
}
