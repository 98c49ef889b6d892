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

/// Tiny CLIP and DINOv2 networks of the real architectures with the fixtures' deterministic
/// weights (`tests/fixtures/embed`), written to `dir`: (clip, dino) paths.
pub fn tiny_embed_weights(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::collections::HashMap;
    std::fs::create_dir_all(dir).unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed");
    let mut out = Vec::new();
    for (names, size) in [("clip", 42), ("dino", 56)] {
        let entries: Vec<(String, Vec<usize>)> = std::fs::read_to_string(fixtures.join(format!("{names}_names.txt")))
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (n, d) = l.split_once(' ').unwrap();
                (n.to_string(), d.split(',').map(|x| x.parse().unwrap()).collect())
            })
            .collect();
        let path = dir.join(format!("{names}.safetensors"));
        let meta = HashMap::from([("num_attention_heads".to_string(), "4".to_string()), ("input_size".to_string(), size.to_string())]);
        ablate_trainer::eval::embed::write_deterministic(&path, &entries, meta).unwrap();
        out.push(path);
    }
    (out[0].clone(), out[1].clone())
}
