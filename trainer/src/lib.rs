//! # ablate-trainer
//!
//! Everything that runs on one rank and needs candle: a faithful small-scale version of the
//! PRX text-to-image training recipe with every ablation knob of the PRX Part 2 study.
//!
//! # Layout
//! - `config`: the TOML configuration of one run (one ablation arm), validated up front.
//! - `model/`: the PRX-style denoiser (blocks, RoPE, adaLN-zero), the learned text encoder,
//!   deterministic parameter creation.
//! - `device`: the compute device (`cpu`, `cuda:N`), synchronisation, peak memory.
//! - `kernels/`: fused CPU kernels with exact backward passes (attention, RMSNorm, softmax, adaLN norm,
//!   RoPE, gated GELU), their CUDA kernels (`kernels/cuda/`, `--features cuda`) and launch geometry.
//! - `objective/`: flow matching, x-prediction, contrastive FM, REPA.
//! - `routing/`: TREAD and SPRINT token routing.
//! - `optim/`: AdamW and Muon with saveable state, clipping, schedule, EMA.
//! - `precision`: fp32, bf16 mixed (fp32 master weights), bf16-stored (the bug).
//! - `data/`: the synthetic scene world, captions, tokenizer, phases, loader thread.
//! - `latent/`: pixel space and the project's convolutional autoencoders (REPA-E).
//! - `teacher/`: frozen REPA teachers and their training.
//! - `sample/`: Euler sampling with classifier-free guidance, PNG grids.
//! - `checkpoint`: atomic safetensors checkpoints.
//! - `ckpt_store`: the checkpoint store shared by workers (published steps with a manifest of
//!   checksums, the last K kept, a corrupt one passed over for the one before).
//! - `collective`: the data-parallel group as a trait (implemented in ablate-worker) and the
//!   gradient exchange built on it;
//! - `train`: one rank's trainer; `run`: the single-process training loop with metrics,
//!   checkpoints, resume and samples.
//! - `rng`: the deterministic random streams everything draws from.
//! - `fsutil`: durable file writes (temporary file, fsync, rename, directory fsync), used by
//!   every writer of checkpoints, results, state and caches; `hash`: the one stable hash (FNV-1a).

pub mod checkpoint;
pub mod ckpt_store;
pub mod collective;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod fsutil;
pub mod hash;
pub mod kernels;
pub mod latent;
pub mod model;
pub mod objective;
pub mod optim;
pub mod plan;
pub mod precision;
pub mod rng;
pub mod routing;
pub mod run;
pub mod sample;
pub mod teacher;
pub mod train;

pub use config::{ConfigError, TrainConfig};
pub use train::{StepStats, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("non-finite {what} at step {step}: training diverged (lower optim.lr or raise optim.grad_clip)")]
    NonFinite { step: usize, what: String },
    #[error("data: {0}")]
    Data(String),
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error(transparent)]
    Collective(collective::CollectiveError),
    /// Asked to stop (SIGTERM: preemption, a drained worker): the group stopped together
    /// after step `step` and rank 0 wrote its checkpoint there.
    #[error("preempted: the group stopped after step {step} with a checkpoint there")]
    Preempted { step: usize },
}

impl TrainError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }
}
