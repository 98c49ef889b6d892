//! `ablate assets`: reproduce the small networks whose weights ship in `assets/`.

use ablate_trainer::latent::{ae_path, train::train_ae};
use ablate_trainer::teacher::{teacher_path, train::train_teacher};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum AssetsCmd {
    /// Train a built-in REPA teacher ("strong" or "weak") on the scene renderer's ground truth.
    TrainTeacher {
        name: String,
        /// Output file (default: assets/teachers/scene-<name>.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Train a built-in autoencoder: "lean", "rich", or "repa-e" (the lean one tuned end to
    /// end with REPA next to a tiny denoiser, then used as a drop-in autoencoder).
    TrainAe {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// REPA-E training steps (repa-e only).
        #[arg(long, default_value_t = 300)]
        steps: usize,
    },
}

pub fn assets(cmd: AssetsCmd) -> anyhow::Result<()> {
    match cmd {
        AssetsCmd::TrainTeacher { name, out, seed } => {
            let out = out.unwrap_or_else(|| teacher_path(&name));
            let t0 = Instant::now();
            let (tensors, acc_shape, acc_color) = train_teacher(&name, seed, |step, loss| eprintln!("teacher {name}: step {step:>4}  loss {loss:.4}"))?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            ablate_trainer::checkpoint::save_atomic(&out, &tensors)?;
            println!(
                "wrote {} in {:.0}s: held-out per-cell accuracy shape {:.1}%, colour {:.1}%",
                out.display(),
                t0.elapsed().as_secs_f64(),
                acc_shape * 100.0,
                acc_color * 100.0
            );
            Ok(())
        }
        AssetsCmd::TrainAe { name, out, seed, steps } => {
            let out = out.unwrap_or_else(|| ae_path(&name));
            let t0 = Instant::now();
            let (tensors, quality) = if name == "repa-e" {
                repa_e(seed, steps)?
            } else {
                let (t, psnr) = train_ae(&name, seed, |step, loss| eprintln!("autoencoder {name}: step {step:>4}  mse {loss:.5}"))?;
                (t, format!("held-out reconstruction PSNR {psnr:.2} dB"))
            };
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            ablate_trainer::checkpoint::save_atomic(&out, &tensors)?;
            println!("wrote {} in {:.0}s: {quality}", out.display(), t0.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

/// REPA-E: a tiny denoiser trained with REPA (strong teacher) on lean-autoencoder latents,
/// the autoencoder trained end to end through REPA + reconstruction; keeps the autoencoder.
fn repa_e(seed: u64, steps: usize) -> anyhow::Result<(std::collections::HashMap<String, candle_core::Tensor>, String)> {
    use ablate_trainer::run::{run, MetricPoint, Progress, RunOptions};
    let mut cfg = ablate_trainer::TrainConfig::default();
    cfg.name = "repa-e-autoencoder".into();
    cfg.seed = seed;
    cfg.latent.kind = "ae-lean".into();
    cfg.latent.end_to_end = true;
    cfg.repa.enabled = true;
    cfg.optim.lr = 1e-3;
    cfg.optim.grad_clip = 1.0;
    cfg.optim.warmup_steps = 50;
    cfg.train.steps = steps;
    cfg.train.batch_size = 12;
    cfg.train.checkpoint_every = 0;
    struct P;
    impl Progress for P {
        fn step(&mut self, p: &MetricPoint, total: usize) {
            if p.step % 25 == 0 || p.step + 1 == total {
                eprintln!("repa-e: step {:>4}/{total}  loss {:.4}  repa {:.4}", p.step, p.loss, p.repa.unwrap_or(f64::NAN));
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("ablate-repa-e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let summary = run(cfg, &RunOptions { out: dir.clone(), resume: false, samples: false }, &mut P)?;
    let ckpt = candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &candle_core::Device::Cpu)?;
    let mut tensors: std::collections::HashMap<String, candle_core::Tensor> =
        ckpt.into_iter().filter_map(|(k, v)| k.strip_prefix("param.ae.").map(|n| (n.to_string(), v))).collect();
    // latent normalisation stays that of the lean autoencoder (not trained)
    let lean = candle_core::safetensors::load(ae_path("lean"), &candle_core::Device::Cpu)?;
    for k in ["latent_shift", "latent_scale"] {
        tensors.insert(k.into(), lean[k].clone());
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((tensors, format!("{} REPA-E steps, final mean loss {:.4}", summary.steps, summary.mean_loss_last50)))
}
