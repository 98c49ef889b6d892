//! REPA (Yu et al. 2024, "Representation Alignment for Generation"): a 3-layer MLP projector
//! maps the denoiser's hidden states after one block to a frozen teacher's patch features;
//! the loss is `-lambda * mean over tokens of cos(projected, teacher)`. With token routing
//! only the tokens that went through the block count. REPA can be switched off after a
//! burn-in (`stop_after`), as PRX Part 2 and HASTE recommend.
//!
//! REPA-E (Leng et al. 2025) trains the autoencoder end to end through this loss; see
//! `crate::latent`.

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::model::{Lin, Params};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepaConfig {
    pub enabled: bool,
    /// Block whose output is aligned, counted from 1 (PRX: 8 of 16).
    pub block: usize,
    pub lambda: f64,
    /// Teacher name: "strong" or "weak" (built-in scene teachers), or "dinov2" (GPU users,
    /// weights from `teacher_weights`).
    pub teacher: String,
    pub teacher_weights: Option<String>,
    /// Hidden width of the projector MLP.
    pub projector_width: usize,
    /// Drop the REPA loss after this many steps (0 = never).
    pub stop_after: usize,
}

impl Default for RepaConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            block: 4,
            lambda: 0.5,
            teacher: "strong".into(),
            teacher_weights: None,
            projector_width: 512,
            stop_after: 0,
        }
    }
}

impl RepaConfig {
    pub fn active_at(&self, step: usize) -> bool {
        self.enabled && (self.stop_after == 0 || step < self.stop_after)
    }

    pub fn validate(&self, depth: usize) -> std::result::Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.block < 1 || self.block > depth {
            return Err(format!("repa.block = {} is outside the model's blocks 1..{depth}", self.block));
        }
        if self.lambda <= 0.0 {
            return Err(format!("repa.lambda must be positive, got {}", self.lambda));
        }
        Ok(())
    }
}

/// Linear-SiLU-Linear-SiLU-Linear.
#[derive(Debug, Clone)]
pub struct Projector {
    l1: Lin,
    l2: Lin,
    l3: Lin,
}

impl Projector {
    pub fn new(p: &Params, hidden: usize, width: usize, out: usize) -> Result<Self> {
        Ok(Self { l1: Lin::new(&p.pp("l1"), hidden, width, true)?, l2: Lin::new(&p.pp("l2"), width, width, true)?, l3: Lin::new(&p.pp("l3"), width, out, true)? })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.l3.forward(&self.l2.forward(&self.l1.forward(x)?.silu()?)?.silu()?)
    }
}

/// Picks per-sample token rows (B, N, D) -> (B, K, D) for the kept token positions.
pub fn select_tokens(x: &Tensor, tokens: &[Vec<u32>]) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    let k = tokens[0].len();
    let idx: Vec<u32> = tokens.iter().enumerate().flat_map(|(i, ts)| ts.iter().map(move |&t| (i * n) as u32 + t)).collect();
    let idx = Tensor::from_vec(idx, b * k, x.device())?;
    x.reshape((b * n, d))?.index_select(&idx, 0)?.reshape((b, k, d))
}

/// `-lambda * mean_tokens cos(projected, target)`; both (B, K, D).
pub fn repa_loss(projected: &Tensor, target: &Tensor, lambda: f64) -> Result<Tensor> {
    let p = projected.to_dtype(candle_core::DType::F32)?;
    let t = target.to_dtype(candle_core::DType::F32)?;
    let dot = (&p * &t)?.sum(D::Minus1)?;
    let np = p.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(1e-8, f64::INFINITY)?;
    let nt = t.sqr()?.sum(D::Minus1)?.sqrt()?.clamp(1e-8, f64::INFINITY)?;
    let cos = (dot / (np * nt)?)?;
    cos.mean_all()? * (-lambda)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn repa_loss_is_minus_lambda_mean_cosine() -> Result<()> {
        let dev = Device::Cpu;
        // token 1: parallel (cos 1); token 2: orthogonal (cos 0); token 3: opposite (cos -1);
        // token 4: 45 degrees (cos 1/sqrt 2)
        let p = Tensor::new(&[[[1f32, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]]], &dev)?;
        let t = Tensor::new(&[[[2f32, 0.0], [5.0, 0.0], [-1.0, 0.0], [0.0, 4.0]]], &dev)?;
        let l = repa_loss(&p, &t, 0.5)?.to_scalar::<f32>()?;
        let want = -0.5 * (1.0 + 0.0 - 1.0 + 1.0 / 2f32.sqrt()) / 4.0;
        assert!((l - want).abs() < 1e-6, "{l} vs {want}");
        Ok(())
    }

    #[test]
    fn select_tokens_picks_rows_per_sample() -> Result<()> {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((2, 3, 2))?;
        let s = select_tokens(&x, &[vec![2], vec![0]])?.to_vec3::<f32>()?;
        assert_eq!(s, vec![vec![vec![4.0, 5.0]], vec![vec![6.0, 7.0]]]);
        Ok(())
    }
}
