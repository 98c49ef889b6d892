//! `ablate assets`: reproduce the small networks whose weights ship in `assets/`.

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
    }
}
