//! Networks: the PRX-style denoiser and its parts, the learned text encoder, and the
//! frozen pretrained BERT-family text encoder.

pub mod frozen_text;
pub mod block;
pub mod config;
pub mod denoiser;
pub mod layers;
pub mod params;
pub mod text;

pub use config::DenoiserConfig;
pub use denoiser::{Denoiser, DenoiserOut};
pub use params::{Init, Lin, Params};
