//! Training objectives: rectified flow matching and its PRX Part 2 variants (x-prediction,
//! contrastive flow matching), and the REPA representation-alignment loss.

pub mod flow;
pub mod repa;

pub use flow::{ObjectiveConfig, Prediction, TimestepConfig};
