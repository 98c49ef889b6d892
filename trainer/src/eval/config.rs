//! `[eval]` of a training config: how many images an evaluation samples, how often, and
//! against which reference. Plain configuration, below the evaluation code (`suite`) and the
//! trainer, so `config::TrainConfig` can hold it without knowing either.

use serde::{Deserialize, Serialize};

use crate::data::scene::{Scene, Style};
use crate::data::Source;

/// `eval.set`: evaluate against the user's own image-caption pairs instead of the scene world.
/// Image `i` of an evaluation is prompted with caption `i` of the set and compared with the
/// set's images `0..samples`, in the set's order (a folder's `captions.jsonl` lines, or the
/// shards' samples sorted by shard and key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    /// `folder` or `webdataset`, read as training data is.
    pub source: Source,
    pub path: String,
    /// When the set is also a training source: its first `holdout` samples are held out of
    /// training (every phase reading the same path skips them) and the evaluation uses the
    /// first `samples` of those. 0: the set is separate, and a training phase that shares an
    /// image with it is refused.
    #[serde(default)]
    pub holdout: usize,
}

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
    /// The Inception weights file (default: `$ABLATE_INCEPTION_WEIGHTS`, else
    /// `assets/eval/pt_inception-2015-12-05-6726825d.safetensors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inception_weights: Option<String>,
    /// The CLIP weights file (default: `$ABLATE_CLIP_WEIGHTS`, else
    /// `assets/eval/clip-vit-large-patch14-336.safetensors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_weights: Option<String>,
    /// The DINOv2 weights file (default: `$ABLATE_DINO_WEIGHTS`, else
    /// `assets/eval/dinov2-base.safetensors`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dino_weights: Option<String>,
    /// EMA (when kept) or raw weights.
    pub weights: EvalWeights,
    /// The user's held-out image-caption set (default: the scene world).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<EvalSet>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { samples: 0, every: 0, sampler_steps: 20, guidance: 3.5, seed: 1234, reference: Style::Photo, fid: FidMode::Auto, cmmd: FidMode::Auto, dino_mmd: FidMode::Auto, inception_weights: None, clip_weights: None, dino_weights: None, weights: EvalWeights::Ema, set: None }
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
        if let Some(set) = &self.set {
            if set.source.style().is_some() {
                return Err(format!("eval.set.source must be \"folder\" or \"webdataset\" (the scene world is the default without eval.set), got \"{}\"", set.source.name()));
            }
            if set.path.trim().is_empty() {
                return Err("eval.set.path is empty".into());
            }
            if set.holdout > 0 && self.samples > set.holdout {
                return Err(format!("eval.samples = {} but eval.set.holdout = {}: the evaluation may use only held-out samples", self.samples, set.holdout));
            }
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
        match &self.set {
            Some(set) => format!("{}:{}{}", set.source.name(), set.path, if set.holdout > 0 { format!(" (first {} held out)", set.holdout) } else { String::new() }),
            None => format!("scenes-{:?}-seed{}", self.reference, self.seed).to_lowercase(),
        }
    }
}
