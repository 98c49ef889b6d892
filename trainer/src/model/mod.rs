//! Networks: the PRX-style denoiser and its parts, and the learned text encoder.

pub mod block;
pub mod config;
pub mod denoiser;
pub mod layers;
pub mod params;
pub mod text;

pub use config::DenoiserConfig;
pub use denoiser::{Denoiser, DenoiserOut};
pub use params::{Init, Lin, Params};
