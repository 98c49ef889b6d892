//! Precision policies (PRX Part 2, "bf16 handling").
//!
//! - `fp32`: everything in fp32.
//! - `bf16_mixed` (the right way): matmuls in bf16 (autocast), master weights and optimizer
//!   state in fp32; norms, softmax and RoPE computed in fp32 (see `model::layers`), the
//!   residual stream kept in fp32.
//! - `bf16_stored` (the bug): weights, optimizer moments and activations all in bf16, so an
//!   update smaller than half a bf16 ulp of the weight rounds away and training stalls.

use candle_core::DType;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PrecisionPolicy {
    #[default]
    Fp32,
    Bf16Mixed,
    Bf16Stored,
}

impl PrecisionPolicy {
    /// dtype of the trainable weights and optimizer state.
    pub fn param(self) -> DType {
        match self {
            Self::Bf16Stored => DType::BF16,
            _ => DType::F32,
        }
    }

    /// dtype of matmuls and elementwise work.
    pub fn compute(self) -> DType {
        match self {
            Self::Fp32 => DType::F32,
            _ => DType::BF16,
        }
    }

    /// dtype of the residual stream and of the latents fed to the model.
    pub fn stream(self) -> DType {
        self.param()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, OptimConfig, Param};
    use candle_core::{Device, Result, Tensor, Var};

    /// A weight near 1.0 receiving a steady small push: in bf16 storage (ulp 2^-7 at 1.0)
    /// an lr of 1e-4 can never move it, while fp32 master weights accumulate the updates.
    #[test]
    fn bf16_stored_weights_stall_small_updates() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = OptimConfig { lr: 1e-4, warmup_steps: 0, ..Default::default() };
        let mut moved = vec![];
        for policy in [PrecisionPolicy::Fp32, PrecisionPolicy::Bf16Mixed, PrecisionPolicy::Bf16Stored] {
            let w = Var::from_tensor(&Tensor::new(&[1.0f32, -1.0, 0.5], &dev)?.to_dtype(policy.param())?)?;
            let start = w.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?;
            let mut opt = AdamW::new(&cfg, vec![Param { name: "w".into(), var: w.clone() }])?;
            for _ in 0..50 {
                let loss = w.as_tensor().to_dtype(policy.compute())?.sum_all()?.to_dtype(DType::F32)?;
                opt.step(&loss.backward()?, cfg.lr)?;
            }
            let end = w.as_tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?;
            moved.push(start.iter().zip(&end).map(|(a, b)| (a - b).abs()).sum::<f32>());
        }
        // fp32 and mixed: each weight moved by ~50 * 1e-4
        assert!((moved[0] - 3.0 * 50.0 * 1e-4).abs() < 1e-4, "{moved:?}");
        assert!((moved[1] - moved[0]).abs() < 1e-5, "{moved:?}");
        assert_eq!(moved[2], 0.0, "bf16-stored weights moved: {moved:?}");
        Ok(())
    }
}
