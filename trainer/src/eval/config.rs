//! `[eval]` of a training config: how many images an evaluation samples, how often, and
//! against which reference. Plain configuration, below the evaluation code (`suite`) and the
//! trainer, so `config::TrainConfig` can hold it without knowing either.

use serde::{Deserialize, Serialize};

use crate::data::scene::{Scene, Style};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FidMode {
    /// The metric when its network's weights are present, otherwise reported unavailable.
    Auto,
    /// Required: a missing weights file is an error.
    On,
    Off,
}

/// Which weights an evaluation samples with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalWeights {
    /// The EMA of the weights when the run keeps one (`optim.ema_decay` > 0), else the raw.
    #[default]
    Ema,
    /// The training weights, even when an EMA is kept.
    Raw,
}

/// `[eval]` of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Generated images per evaluation; 0 turns evaluation off.
    pub samples: usize,
    /// Also evaluate every this many steps (0: only at the end).
    pub every: usize,
    pub sampler_steps: usize,
    pub guidance: f64,
    /// Seed of the prompts and the starting noise.
    pub seed: u64,
    /// Style of the prompted scenes and of the reference renders.
    pub reference: Style,
    pub fid: FidMode,
    /// CMMD (CLIP ViT-L/14 at 336 px embeddings): auto = when the CLIP weights are installed.
    pub cmmd: FidMode,
    /// DINO-MMD (DINOv2 embeddings at 224 px): auto = when the DINOv2 weights are installed.
    pub dino_mmd: FidMode,
    /// The CLIP weights file (default: `ablate assets status` lists where it goes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_weights: Option<String>,
    /// The DINOv2 weights file (default: as for CLIP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dino_weights: Option<String>,
    /// EMA (when kept) or raw weights.
    pub weights: EvalWeights,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { samples: 0, every: 0, sampler_steps: 20, guidance: 3.5, seed: 1234, reference: Style::Photo, fid: FidMode::Auto, cmmd: FidMode::Auto, dino_mmd: FidMode::Auto, clip_weights: None, dino_weights: None, weights: EvalWeights::Ema }
    }
}

impl EvalConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.samples == 1 {
            return Err("eval.samples = 1: FD needs at least 2 images (0 turns evaluation off)".into());
        }
        if self.samples > 0 && self.sampler_steps == 0 {
            return Err("eval.sampler_steps must be at least 1".into());
        }
        if !self.guidance.is_finite() || self.guidance < 0.0 {
            return Err(format!("eval.guidance must be >= 0, got {}", self.guidance));
        }
        if self.reference == Style::Curated {
            return Err("eval.reference must be \"photo\" or \"synthetic\"".into());
        }
        Ok(())
    }

    pub fn due(&self, step: usize, total: usize) -> bool {
        self.samples > 0 && (step == total || (self.every > 0 && step % self.every == 0))
    }

    /// The scene prompted for image `i`.
    pub fn scene(&self, i: u64) -> Scene {
        Scene::generate(self.seed ^ 0xE7A1_5CE4, i, self.reference)
    }

    pub(crate) fn reference_name(&self) -> String {
        format!("scenes-{:?}-seed{}", self.reference, self.seed).to_lowercase()
    }
}
