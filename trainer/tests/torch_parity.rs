//! Writes what bench/torch_reference.py needs to check that its PyTorch model is ablate's
//! model, number for number: every trainable tensor of a `tiny` model after three training
//! steps (so the adaLN-zero layers are no longer zero), one batch of inputs, the text
//! encoder's output and the denoiser's prediction, in fp32 on the CPU.
//!
//! ```text
//! cargo test -p ablate-trainer --test torch_parity -- --ignored     # writes target/torch-parity.npz
//! python3 bench/torch_reference.py --check-ablate target/torch-parity.npz
//! ```
//! (`ABLATE_TORCH_PARITY_OUT` changes the path.)

use ablate_trainer::data::{BatchSpec, Tokenizer};
use ablate_trainer::model::text::LearnedTextEncoder;
use ablate_trainer::model::Params;
use ablate_trainer::rng::Rng;
use ablate_trainer::{TrainConfig, Trainer};
use candle_core::{DType, Device, Tensor};

#[test]
#[ignore = "writes a fixture for bench/torch_reference.py --check-ablate"]
fn write_forward_fixture_for_torch() -> anyhow::Result<()> {
    let out = std::env::var("ABLATE_TORCH_PARITY_OUT").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/torch-parity.npz").into());
    let dev = Device::Cpu;
    let mut cfg = TrainConfig::default();
    cfg.train.batch_size = 3;
    cfg.optim.warmup_steps = 0;
    cfg.optim.lr = 1e-2;
    let mut trainer = Trainer::new(cfg.clone(), &dev)?;
    let spec = BatchSpec::new(&cfg, 0, 1)?;
    let tok = Tokenizer::new();
    for s in 0..3 {
        trainer.train_step(&spec.make(s, &tok))?;
    }
    let batch = spec.make(3, &tok);
    let b = batch.size;
    let ids = Tensor::from_vec(batch.ids.clone(), (b, cfg.text.max_tokens), &dev)?;
    // the same tensors as the trainer's text encoder: Params hands back existing variables
    let p = Params::new(trainer.varmap.clone(), cfg.seed, DType::F32, &dev);
    let enc = LearnedTextEncoder::new(&cfg.text_encoder(tok.vocab_size()), &p.pp("text"))?;
    let txt = enc.forward(&ids, &batch.lens)?;
    let s = cfg.latent_size();
    let mut rng = Rng::new(11);
    let xt = Tensor::from_vec(rng.normal_vec(b * 3 * s * s), (b, 3, s, s), &dev)?;
    let t = Tensor::new(&[0.9f32, 0.5, 0.1][..b], &dev)?;
    let pred = trainer.denoiser.forward(&xt, &t, &txt, &batch.lens, DType::F32, None, None)?.pred;
    let lens = Tensor::from_vec(batch.lens.iter().map(|&l| l as u32).collect::<Vec<_>>(), b, &dev)?;
    let mut ts: Vec<(String, Tensor)> = trainer.params.iter().map(|p| (format!("param.{}", p.name), p.var.as_tensor().clone())).collect();
    ts.extend([("in.ids".into(), ids), ("in.lens".into(), lens), ("in.xt".into(), xt), ("in.t".into(), t), ("out.txt".into(), txt), ("out.pred".into(), pred)]);
    Tensor::write_npz(&ts, &out)?;
    println!("wrote {out}: {} tensors", ts.len());
    Ok(())
}
