//! Evaluation: Frechet distances over feature statistics, the FID Inception network, the
//! built-in scene evaluator, MMD, compositional accuracy, and the protocol every number
//! carries. See `docs/eval.md`.

pub mod bootstrap;
pub mod composition;
pub mod config;
pub mod detvalues;
pub mod dino;
pub mod embed;
pub mod fd;
pub mod files;
pub mod images;
pub mod inception;
pub mod mmd;
pub mod protocol;
pub mod resize;
pub mod scenes;
pub mod stats;
pub mod suite;
pub mod weights;

pub use fd::{frechet_distance, FrechetDistance};
pub use composition::{Composition, CompositionCounts};
pub use inception::InceptionFid;
pub use protocol::{Measured, Protocol};
pub use stats::{FeatureStats, GaussianStats};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("shape: {0}")]
    Shape(String),
    #[error("non-finite input: {0}")]
    NonFinite(String),
    #[error("need at least 2 samples for a covariance, got {0}")]
    TooFewSamples(u64),
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
    #[error("images: {0}")]
    Images(String),
    #[error("protocols differ, refusing to compare: {0}")]
    ProtocolMismatch(String),
    #[error("{0} is unavailable: {1}")]
    Unavailable(String, String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
