//! A run's size before it starts (`ablate train --dry-run`): trainable parameters, and the
//! training memory per GPU at batch 1-8 for data-parallel training (every rank holds the whole
//! model, gradients and optimizer state; no sharding yet).
//!
//! The static part is exact arithmetic on the parameter count: weights (an f32 master copy,
//! plus a bf16 copy under `bf16_mixed`; bf16 only under `bf16_stored`), gradients in the
//! weights' dtype, AdamW's two moments (Muon keeps one momentum for the 2-D block weights,
//! counted here as one for all), and the EMA (f32) when kept. The activations are an
//! *estimate*: per block and image token, the tensors the block keeps for its backward pass,
//! about 8 h + 3 m values (the norm inputs and outputs, q, k, v, the attention output, the
//! residual stream, the MLP's gate, up and activation), plus one attention probability per
//! head and attended token (no fused attention yet), and k, v per text token; in the
//! activations' dtype. Frozen text encoders and autoencoders are not counted. Measure a real
//! step with `ablate bench train --device cuda` before trusting the last gigabyte.

use crate::config::{ConfigError, TrainConfig};
use crate::optim::OptimKind;
use crate::precision::PrecisionPolicy;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub denoiser_params: usize,
    /// The learned text encoder's (0 for a frozen one).
    pub text_params: usize,
    pub image_tokens: usize,
    pub text_tokens: usize,
    /// Weights, gradients, optimizer state and EMA, bytes per rank.
    pub static_bytes: f64,
    /// Estimated activations of one sample, bytes.
    pub activation_bytes_per_sample: f64,
}

const GIB: f64 = (1u64 << 30) as f64;

impl Plan {
    pub fn of(cfg: &TrainConfig) -> Result<Self, ConfigError> {
        let d = cfg.denoiser()?;
        let text_params = match cfg.text.encoder.as_str() {
            "learned" => {
                let w = cfg.text.width;
                // per layer: qkv, projection, 4x MLP (12 w^2) with biases and two LayerNorms
                cfg.text.layers * (12 * w * w + 13 * w) + (crate::data::Tokenizer::new().vocab_size() + cfg.text.max_tokens) * w + 2 * w
            }
            _ => 0,
        };
        let trainable = (d.param_count() + text_params) as f64;
        let policy = cfg.precision.policy;
        let (weights, grads, act) = match policy {
            PrecisionPolicy::Fp32 => (4.0, 4.0, 4.0),
            PrecisionPolicy::Bf16Mixed => (6.0, 4.0, 2.0),
            PrecisionPolicy::Bf16Stored => (2.0, 2.0, 2.0),
        };
        let moment = if policy == PrecisionPolicy::Bf16Stored { 2.0 } else { 4.0 };
        let optimizer = match cfg.optim.kind {
            OptimKind::Adamw => 2.0 * moment,
            OptimKind::Muon => moment,
        };
        let ema = if cfg.optim.ema_decay > 0.0 { 4.0 } else { 0.0 };
        let side = cfg.latent_size() / d.patch;
        let (n, t) = (side * side, cfg.text.max_tokens);
        let (h, m) = (d.hidden as f64, d.mlp_hidden() as f64);
        let per_image_token = 8.0 * h + 3.0 * m + d.heads as f64 * (n + t) as f64;
        let per_block = n as f64 * per_image_token + t as f64 * 2.0 * h;
        Ok(Self {
            denoiser_params: d.param_count(),
            text_params,
            image_tokens: n,
            text_tokens: t,
            static_bytes: trainable * (weights + grads + optimizer + ema),
            activation_bytes_per_sample: act * d.depth as f64 * per_block,
        })
    }

    /// Total bytes per rank at a per-rank batch of `batch`.
    pub fn bytes_at(&self, batch: usize) -> f64 {
        self.static_bytes + batch as f64 * self.activation_bytes_per_sample
    }

    /// The report `ablate train --dry-run` prints.
    pub fn describe(&self, cfg: &TrainConfig) -> String {
        let mut s = format!(
            "{}: {:.1}M trainable parameters (denoiser {:.1}M, learned text encoder {:.1}M), {} image + {} text tokens, {:?}, {:?}\n",
            cfg.name,
            (self.denoiser_params + self.text_params) as f64 / 1e6,
            self.denoiser_params as f64 / 1e6,
            self.text_params as f64 / 1e6,
            self.image_tokens,
            self.text_tokens,
            cfg.precision.policy,
            cfg.optim.kind,
        );
        s.push_str(&format!("memory per GPU: {:.2} GiB static (weights, gradients, optimizer state, EMA) + about {:.2} GiB of activations per sample (estimate)\n", self.static_bytes / GIB, self.activation_bytes_per_sample / GIB));
        s.push_str("batch per GPU   memory (GiB)\n");
        for b in [1, 2, 4, 8] {
            s.push_str(&format!("{b:>13}   {:.1}\n", self.bytes_at(b) / GIB));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PRX-1.2B at 256x256 through FLUX latents: the published shape's parameter count, exact
    /// static bytes for AdamW under fp32 (16 per parameter), memory growing with the batch.
    #[test]
    fn the_prx_1_2b_plan_counts_its_parameters_and_bytes() {
        let mut cfg = TrainConfig::default();
        cfg.model.preset = "prx-1.2b".into();
        cfg.latent.kind = "flux1".into();
        cfg.latent.image_size = 256;
        let d = cfg.denoiser().unwrap();
        assert_eq!((d.depth, d.hidden, d.heads), (16, 1792, 28));
        let p = Plan::of(&cfg).unwrap();
        assert_eq!(p.denoiser_params, d.param_count());
        assert_eq!(p.image_tokens, 256, "256 px / 8 (FLUX) / patch 2 = 16 x 16 tokens");
        assert_eq!(p.static_bytes, 16.0 * (p.denoiser_params + p.text_params) as f64);
        assert!(p.bytes_at(8) > p.bytes_at(1) && p.activation_bytes_per_sample > 0.0);
        cfg.precision.policy = PrecisionPolicy::Bf16Mixed;
        let mixed = Plan::of(&cfg).unwrap();
        assert!(mixed.static_bytes > p.static_bytes && mixed.activation_bytes_per_sample < p.activation_bytes_per_sample);
        assert!(p.describe(&cfg).contains("batch per GPU"));
    }
}
