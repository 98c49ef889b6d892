//! Muon (Jordan et al. 2024): momentum SGD whose update for each weight matrix is replaced
//! by the nearest semi-orthogonal matrix, computed with 5 Newton-Schulz iterations.
//!
//! As PRX Part 2 ran it: Nesterov momentum 0.95, coefficients (3.4445, -4.7750, 2.0315) on
//! `G / (||G||_F + 1e-7)` (transposed when rows > cols), and the update scaled by
//! `0.2 * sqrt(max(rows, cols))` so that Muon shares AdamW's learning rate. Decoupled weight
//! decay as in AdamW.

use candle_core::{backprop::GradStore, DType, Result, Tensor};
use std::collections::HashMap;

use super::{OptimConfig, Param};

const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Approximately orthogonalises a 2-D matrix (computed in f32).
pub fn newton_schulz5(g: &Tensor) -> Result<Tensor> {
    let (a, b, c) = NS_COEFFS;
    let (rows, cols) = g.dims2()?;
    let mut x = g.to_dtype(DType::F32)?;
    let norm = x.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    x = (x / (norm + 1e-7))?;
    let transposed = rows > cols;
    if transposed {
        x = x.t()?.contiguous()?;
    }
    // f32 on CPU: faer's products (candle's run on one thread of the `gemm` crate's kernels)
    let mm = |p: &Tensor, q: &Tensor| if crate::kernels::applies(p) { crate::kernels::linear::matmul_2d(p, q) } else { p.matmul(q) };
    for _ in 0..5 {
        let am = mm(&x, &x.t()?)?;
        let bm = ((&am * b)? + (mm(&am, &am)? * c)?)?;
        x = ((&x * a)? + mm(&bm, &x)?)?;
    }
    if transposed {
        x = x.t()?.contiguous()?;
    }
    Ok(x)
}

pub struct Muon {
    params: Vec<Param>,
    momentum: Vec<Tensor>,
    mu: f64,
    wd: f64,
}

impl Muon {
    pub fn new(cfg: &OptimConfig, params: Vec<Param>) -> Result<Self> {
        let momentum = params.iter().map(|p| p.var.as_tensor().zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { params, momentum, mu: cfg.muon_momentum, wd: cfg.weight_decay })
    }

    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        let (mu, wd, momentum) = (self.mu, self.wd, &self.momentum);
        // one Newton-Schulz per matrix, the matrices shared among the cores
        let bufs = super::per_param(&self.params, |i, p| {
            let Some(g) = grads.get(p.var.as_tensor()) else { return Ok(None) };
            let w = p.var.as_tensor();
            let g = g.to_dtype(w.dtype())?.detach();
            let buf = ((&momentum[i] * mu)? + &g)?;
            let nesterov = (&g + (&buf * mu)?)?;
            let (rows, cols) = w.dims2()?;
            let scale = 0.2 * (rows.max(cols) as f64).sqrt();
            let update = newton_schulz5(&nesterov)?.to_dtype(w.dtype())?;
            let decayed = if wd > 0.0 { (w * (1.0 - lr * wd))? } else { w.clone() };
            p.var.set(&(decayed - (update * (lr * scale))?)?)?;
            Ok(Some(buf))
        })?;
        for (slot, buf) in self.momentum.iter_mut().zip(bufs) {
            if let Some(b) = buf {
                *slot = b;
            }
        }
        Ok(())
    }

    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        Ok(self.params.iter().zip(&self.momentum).map(|(p, m)| (format!("muon.momentum.{}", p.name), m.clone())).collect())
    }

    pub fn load_state(&mut self, t: &HashMap<String, Tensor>) -> Result<()> {
        for (p, slot) in self.params.iter().zip(self.momentum.iter_mut()) {
            let key = format!("muon.momentum.{}", p.name);
            let s = t.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks optimizer state \"{key}\"")))?;
            *slot = s.to_dtype(slot.dtype())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use candle_core::Device;

    /// Singular values of a small matrix via the eigenvalues of M^T M (Jacobi, f64).
    fn singular_values(m: &[Vec<f32>]) -> Vec<f64> {
        let (r, c) = (m.len(), m[0].len());
        let mut a = vec![vec![0f64; c]; c];
        for i in 0..c {
            for j in 0..c {
                a[i][j] = (0..r).map(|k| m[k][i] as f64 * m[k][j] as f64).sum();
            }
        }
        for _ in 0..100 {
            for p in 0..c {
                for q in p + 1..c {
                    if a[p][q].abs() < 1e-15 {
                        continue;
                    }
                    let th = 0.5 * (2.0 * a[p][q]).atan2(a[q][q] - a[p][p]);
                    let (s, co) = th.sin_cos();
                    for k in 0..c {
                        let (akp, akq) = (a[k][p], a[k][q]);
                        a[k][p] = co * akp - s * akq;
                        a[k][q] = s * akp + co * akq;
                    }
                    for k in 0..c {
                        let (apk, aqk) = (a[p][k], a[q][k]);
                        a[p][k] = co * apk - s * aqk;
                        a[q][k] = s * apk + co * aqk;
                    }
                }
            }
        }
        (0..c).map(|i| a[i][i].max(0.0).sqrt()).collect()
    }

    #[test]
    fn newton_schulz_output_is_near_orthogonal() -> Result<()> {
        let mut rng = Rng::new(5);
        for (rows, cols) in [(16, 8), (8, 16), (12, 12)] {
            let g = Tensor::from_vec(rng.normal_vec(rows * cols), (rows, cols), &Device::Cpu)?;
            let o = newton_schulz5(&g)?;
            assert_eq!(o.dims(), &[rows, cols]);
            let sv = singular_values(&if rows >= cols { o.to_vec2::<f32>()? } else { o.t()?.to_vec2::<f32>()? });
            // Muon's quintic iteration is tuned to land singular values in roughly [0.7, 1.2]
            for s in &sv {
                assert!((0.6..1.25).contains(s), "singular value {s} out of band for {rows}x{cols}: {sv:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn muon_without_block_matrices_is_refused() {
        use super::super::{OptimConfig, OptimKind, Optimizer, Param};
        let v = candle_core::Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        let cfg = OptimConfig { kind: OptimKind::Muon, ..Default::default() };
        let err = Optimizer::new(&cfg, vec![Param { name: "denoiser.final.out.bias".into(), var: v }]).err().unwrap().to_string();
        assert!(err.contains("optim.kind = \"muon\" but the model has no 2-D block weights"), "{err}");
    }

    #[test]
    fn only_block_matrices_go_to_muon() {
        use super::super::is_muon_param;
        assert!(is_muon_param("denoiser.blocks.0.attn.qkv.weight", &[576, 192]));
        assert!(!is_muon_param("denoiser.blocks.0.attn.q_norm.weight", &[32]));
        assert!(!is_muon_param("denoiser.patch_in.weight", &[192, 48]));
        assert!(!is_muon_param("denoiser.final.out.weight", &[48, 192]));
    }
}
