//! Shared helpers for the trainer's integration tests: a very small configuration that
//! still exercises every code path, so tests train in seconds on 2 cores.

#![allow(dead_code)]

use ablate_trainer::data::{Batch, BatchSpec, Tokenizer};
use ablate_trainer::TrainConfig;

pub fn small_config() -> TrainConfig {
    let mut c = TrainConfig::default();
    c.model.hidden = Some(32);
    c.model.depth = Some(4);
    c.model.heads = Some(2);
    c.latent.image_size = 16;
    c.text.max_tokens = 24;
    c.text.width = 32;
    c.text.layers = 1;
    c.text.heads = 2;
    c.train.batch_size = 4;
    c.optim.lr = 1e-3;
    c.optim.warmup_steps = 0;
    c.routing.start = 2;
    c.routing.end = 3;
    c.repa.block = 2;
    c.repa.projector_width = 32;
    c
}

pub fn batches(cfg: &TrainConfig, n: usize) -> Vec<Batch> {
    let spec = BatchSpec::new(cfg, 0, 1).unwrap();
    let tok = Tokenizer::new();
    (0..n).map(|s| spec.make(s, &tok)).collect()
}
