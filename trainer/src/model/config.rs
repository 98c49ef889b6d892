//! Denoiser architecture configuration and its named presets.

use serde::{Deserialize, Serialize};

/// Architecture of the PRX-style denoiser. `in_channels` and `text_dim` come from the latent
/// space and the text encoder; the rest from a preset, optionally overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenoiserConfig {
    pub hidden: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_ratio: f64,
    /// Patch size on the latent grid.
    pub patch: usize,
    /// Channels of the latent (3 for pixels).
    pub in_channels: usize,
    /// Width of the text encoder's output.
    pub text_dim: usize,
    pub rope_theta: f64,
    pub time_embed_dim: usize,
}

impl DenoiserConfig {
    /// CPU sweeps: ~6.6M parameters.
    pub fn tiny() -> Self {
        Self { hidden: 192, depth: 8, heads: 6, mlp_ratio: 3.5, patch: 2, in_channels: 3, text_dim: 128, rope_theta: 10000.0, time_embed_dim: 256 }
    }

    /// GPU smoke tests: ~90M parameters.
    pub fn mini() -> Self {
        Self { hidden: 640, depth: 10, heads: 10, mlp_ratio: 3.5, patch: 2, in_channels: 16, text_dim: 384, rope_theta: 10000.0, time_embed_dim: 256 }
    }

    /// The published PRX-1.2B (preset `prx-1.2b`, also `prx-small`): 16 blocks, hidden 1792, 28 heads (head dim 64), MLP ratio 3.5,
    /// patch 2 over FLUX.1 latents (16 channels), T5Gemma-2B text width 2304.
    pub fn prx_small() -> Self {
        Self { hidden: 1792, depth: 16, heads: 28, mlp_ratio: 3.5, patch: 2, in_channels: 16, text_dim: 2304, rope_theta: 10000.0, time_embed_dim: 256 }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "mini" => Some(Self::mini()),
            "prx-small" | "prx-1.2b" => Some(Self::prx_small()),
            _ => None,
        }
    }

    pub const PRESETS: [&'static str; 4] = ["tiny", "mini", "prx-small", "prx-1.2b"];

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.hidden as f64 * self.mlp_ratio).round() as usize
    }

    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.patch * self.patch
    }

    /// Trainable parameters of the denoiser (without text encoder or routing extras).
    pub fn param_count(&self) -> usize {
        let (h, m) = (self.hidden, self.mlp_hidden());
        let dh = self.head_dim();
        let block = 3 * h * h + h * h + 2 * h * h + 3 * h * m + h * 6 * h + 6 * h + 3 * dh;
        let embed = self.patch_dim() * h + h + self.text_dim * h + h;
        let time = self.time_embed_dim * h + h + h * h + h;
        let fin = h * 2 * h + 2 * h + h * self.patch_dim() + self.patch_dim();
        self.depth * block + embed + time + fin
    }

    /// Matmul FLOPs (2 per multiply-add) of one forward pass for one sample with `n_img`
    /// image tokens and `n_txt` text tokens: every Linear plus the attention score and value
    /// products; element-wise work is not counted (the MFU convention). A training step
    /// costs three times this (forward, and backward for inputs and weights).
    pub fn forward_flops(&self, n_img: usize, n_txt: usize) -> f64 {
        let (h, m, pd) = (self.hidden as f64, self.mlp_hidden() as f64, self.patch_dim() as f64);
        let (n, t) = (n_img as f64, n_txt as f64);
        let block = 2.0 * h * 6.0 * h // adaLN modulation (per sample)
            + 2.0 * n * h * 3.0 * h // image qkv
            + 2.0 * t * h * 2.0 * h // text k, v
            + 2.0 * 2.0 * n * (n + t) * h // q k^T and attention x v
            + 2.0 * n * h * h // output projection
            + 2.0 * n * h * m * 3.0; // gate, up, down
        let embed = 2.0 * n * pd * h + 2.0 * t * self.text_dim as f64 * h + 2.0 * (self.time_embed_dim as f64 * h + h * h);
        let fin = 2.0 * h * 2.0 * h + 2.0 * n * h * pd;
        self.depth as f64 * block + embed + fin
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.hidden == 0 || self.heads == 0 {
            return Err(format!("model.hidden and model.heads must be positive, got {} and {}", self.hidden, self.heads));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return Err(format!("model.mlp_ratio must be a positive number, got {}", self.mlp_ratio));
        }
        if self.hidden % self.heads != 0 {
            return Err(format!("model.hidden ({}) must be divisible by model.heads ({})", self.hidden, self.heads));
        }
        if self.head_dim() % 4 != 0 {
            return Err(format!("head dim {} (hidden / heads) must be divisible by 4 for 2-axis RoPE", self.head_dim()));
        }
        if self.depth == 0 || self.patch == 0 || self.mlp_ratio <= 0.0 {
            return Err("model.depth, model.patch and model.mlp_ratio must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_documented_sizes() {
        let t = DenoiserConfig::tiny().param_count();
        assert!((2_000_000..8_000_000).contains(&t), "tiny {t}");
        let m = DenoiserConfig::mini().param_count();
        assert!((50_000_000..100_000_000).contains(&m), "mini {m}");
        let p = DenoiserConfig::prx_small().param_count();
        assert!((1_100_000_000..1_300_000_000).contains(&p), "prx-small {p}");
        assert_eq!(DenoiserConfig::prx_small().head_dim(), 64);
    }

    #[test]
    fn forward_flops_are_about_two_per_weight_per_token() {
        // every block matrix applied per image token costs 2 FLOPs per weight per token;
        // attention, embeddings and the per-sample modulation add a few percent
        let c = DenoiserConfig::prx_small();
        let f = c.forward_flops(256, 0);
        let (h, m) = (c.hidden, c.mlp_hidden());
        let lower = 2.0 * 256.0 * (c.depth * (4 * h * h + 3 * h * m)) as f64;
        assert!(f > lower && f < 1.1 * lower, "{f} vs {lower}");
    }
}
