//! Rectified flow matching (PRX baseline): `x_t = (1 - t) x0 + t eps`, t = 1 is noise,
//! velocity target `v = eps - x0`, MSE loss.
//!
//! Timesteps: `t = sigmoid(n)`, `n ~ N(mean, std)` (logit-normal, SD3), with a fraction of
//! samples uniform in [1e-3, 1], then the optional resolution shift `a t / (1 + (a - 1) t)`.
//! x-prediction (JiT): the network predicts x0; prediction and target are both turned into
//! velocities with `v = (x_t - x) / max(t, 0.05)`. Contrastive FM (DeltaFM):
//! `MSE(v_hat, v) - lambda * MSE(v_hat, v rolled by one sample along the batch)`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::layers::mean_squared_error;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    #[default]
    Velocity,
    X,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimestepConfig {
    pub logit_mean: f64,
    pub logit_std: f64,
    pub uniform_fraction: f64,
    pub shift: f64,
}

impl Default for TimestepConfig {
    fn default() -> Self {
        Self { logit_mean: 0.0, logit_std: 1.0, uniform_fraction: 0.1, shift: 1.0 }
    }
}

impl TimestepConfig {
    pub fn sample(&self, rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let t = if rng.chance(self.uniform_fraction) {
                    1e-3 + (1.0 - 1e-3) * rng.uniform()
                } else {
                    let z = self.logit_mean + self.logit_std * rng.normal();
                    1.0 / (1.0 + (-z).exp())
                };
                shift(t, self.shift) as f32
            })
            .collect()
    }
}

/// Resolution-dependent timestep shift.
pub fn shift(t: f64, a: f64) -> f64 {
    a * t / (1.0 + (a - 1.0) * t)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveConfig {
    pub prediction: Prediction,
    /// Contrastive flow matching weight (0 = off; PRX tried 0.05).
    pub contrastive_lambda: f64,
    /// Fraction of samples trained with the null prompt (enables CFG).
    pub caption_dropout: f64,
    pub timesteps: TimestepConfig,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self { prediction: Prediction::Velocity, contrastive_lambda: 0.0, caption_dropout: 0.1, timesteps: TimestepConfig::default() }
    }
}

pub const X_PRED_T_MIN: f64 = 0.05;

/// `x_t` and the velocity target for clean `x0`, noise `eps` and per-sample `t` (B,).
pub fn interpolate(x0: &Tensor, eps: &Tensor, t: &Tensor) -> Result<Tensor> {
    let tb = t.reshape((t.dim(0)?, 1, 1, 1))?.to_dtype(x0.dtype())?;
    x0.broadcast_mul(&(tb.ones_like()? - &tb)?)? + eps.broadcast_mul(&tb)?
}

/// Converts the network output into a velocity estimate.
pub fn velocity_of(pred: &Tensor, xt: &Tensor, t: &Tensor, prediction: Prediction) -> Result<Tensor> {
    match prediction {
        Prediction::Velocity => Ok(pred.clone()),
        Prediction::X => {
            let tb = t.clamp(X_PRED_T_MIN, 1.0)?.reshape((t.dim(0)?, 1, 1, 1))?.to_dtype(xt.dtype())?;
            (xt - pred)?.broadcast_div(&tb)
        }
    }
}

/// The velocity the network is trained to predict: `eps - x0`, or under x-prediction the
/// velocity that `x0` implies at `(xt, t)` (the same map the prediction goes through).
pub fn velocity_target(cfg: &ObjectiveConfig, x0: &Tensor, eps: &Tensor, xt: &Tensor, t: &Tensor) -> Result<Tensor> {
    match cfg.prediction {
        Prediction::Velocity => eps - x0,
        Prediction::X => velocity_of(x0, xt, t, Prediction::X),
    }
}

/// The flow-matching loss; returns (total, plain MSE) as scalars.
///
/// The contrastive term pairs every sample with the target of the sample before it,
/// cyclically over the batch. When this batch is one micro-batch of a larger one, `before`
/// is the velocity target (1, ..) of the sample preceding its first (the larger batch's last
/// for the first micro-batch), so the micro-batches' losses, weighted by their share, add up
/// to the whole batch's. `None`: this is the whole batch.
pub fn flow_loss(
    cfg: &ObjectiveConfig,
    pred: &Tensor,
    x0: &Tensor,
    eps: &Tensor,
    xt: &Tensor,
    t: &Tensor,
    before: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let pred = pred.to_dtype(candle_core::DType::F32)?;
    let v_hat = match cfg.prediction {
        Prediction::Velocity => pred,
        Prediction::X => velocity_of(&pred, xt, t, Prediction::X)?,
    };
    let v = velocity_target(cfg, x0, eps, xt, t)?;
    let mse = mean_squared_error(&v_hat, &v)?;
    let b = v.dim(0)?;
    if cfg.contrastive_lambda == 0.0 || (before.is_none() && b < 2) {
        return Ok((mse.clone(), mse));
    }
    let first = match before {
        Some(p) => p.to_dtype(v.dtype())?,
        None => v.narrow(0, b - 1, 1)?,
    };
    let rolled = if b == 1 { first } else { Tensor::cat(&[first, v.narrow(0, 0, b - 1)?], 0)? };
    let neg = mean_squared_error(&v_hat, &rolled)?;
    Ok(((&mse - (neg * cfg.contrastive_lambda)?)?, mse))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn timesteps_follow_logit_normal_with_uniform_tail() {
        let cfg = TimestepConfig::default();
        let mut rng = Rng::new(0);
        let ts = cfg.sample(&mut rng, 20000);
        assert!(ts.iter().all(|&t| t > 0.0 && t <= 1.0));
        let mean = ts.iter().map(|&t| t as f64).sum::<f64>() / ts.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        // logit-normal puts ~2.3% of mass above sigmoid(2) = 0.881 ; uniform adds 10% * 0.119
        let tail = ts.iter().filter(|&&t| t > 0.881).count() as f64 / ts.len() as f64;
        assert!((tail - (0.9 * 0.0228 + 0.1 * 0.119)).abs() < 0.006, "{tail}");
        assert!((shift(0.5, 3.0) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn losses_match_hand_computation() -> Result<()> {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev)?.reshape((2, 1, 1, 2))?;
        let eps = Tensor::new(&[0f32, 1.0, -1.0, 0.0], &dev)?.reshape((2, 1, 1, 2))?;
        let t = Tensor::new(&[0.5f32, 0.02], &dev)?;
        let xt = interpolate(&x0, &eps, &t)?;
        assert_eq!(xt.flatten_all()?.to_vec1::<f32>()?, vec![0.5, 1.5, 2.92, 3.92]);
        let pred = Tensor::zeros((2, 1, 1, 2), candle_core::DType::F32, &dev)?;
        let mut cfg = ObjectiveConfig::default();
        // v = eps - x0 = [-1, -1, -4, -4]; MSE to zero = (1 + 1 + 16 + 16) / 4
        let (l, _) = flow_loss(&cfg, &pred, &x0, &eps, &xt, &t, None)?;
        assert!((l.to_scalar::<f32>()? - 8.5).abs() < 1e-6);
        // contrastive: rolled v = [-4, -4, -1, -1]; MSE(0, rolled) = 8.5 too
        cfg.contrastive_lambda = 0.05;
        let (l, mse) = flow_loss(&cfg, &pred, &x0, &eps, &xt, &t, None)?;
        assert!((l.to_scalar::<f32>()? - (8.5 - 0.05 * 8.5)).abs() < 1e-5);
        assert!((mse.to_scalar::<f32>()? - 8.5).abs() < 1e-6);
        // x-prediction: predicting x0 exactly gives zero loss; t = 0.02 is clamped to 0.05
        cfg = ObjectiveConfig { prediction: Prediction::X, ..Default::default() };
        let (l, _) = flow_loss(&cfg, &x0, &x0, &eps, &xt, &t, None)?;
        assert!(l.to_scalar::<f32>()?.abs() < 1e-10);
        let v = velocity_of(&pred, &xt, &t, Prediction::X)?.flatten_all()?.to_vec1::<f32>()?;
        assert!((v[2] - 2.92 / 0.05).abs() < 1e-3 && (v[0] - 1.0).abs() < 1e-6);
        Ok(())
    }
}
