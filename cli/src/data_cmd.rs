//! `ablate data preview`: look at what a run trains on.

use ablate_trainer::data::captions::{caption, CaptionMode};
use ablate_trainer::data::render::render;
use ablate_trainer::data::{Scene, Source};
use ablate_trainer::rng::Rng;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum DataCmd {
    /// Render a grid of training scenes with their captions.
    Preview {
        /// synthetic, photo or curated
        #[arg(long, default_value = "synthetic")]
        source: String,
        #[arg(long, default_value = "long")]
        captions: String,
        #[arg(long, default_value_t = 16)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "preview.png")]
        out: PathBuf,
    },
}

pub fn data(cmd: DataCmd) -> anyhow::Result<()> {
    let DataCmd::Preview { source, captions, count, size, seed, out } = cmd;
    let src: Source = serde_json::from_value(serde_json::Value::String(source.clone())).map_err(|_| anyhow::anyhow!("unknown --source \"{source}\" (expected synthetic, photo or curated)"))?;
    let style = src.style().ok_or_else(|| anyhow::anyhow!("--source {source} is real data: preview renders scenes only"))?;
    let mode: CaptionMode = serde_json::from_value(serde_json::Value::String(captions.clone())).map_err(|_| anyhow::anyhow!("unknown --captions \"{captions}\" (expected long, short or mixed)"))?;
    let mut images = Vec::with_capacity(count * 3 * size * size);
    let mut rng = Rng::new(seed);
    for i in 0..count as u64 {
        let scene = Scene::generate(seed, i, style);
        images.extend(render(&scene, size, seed ^ (i << 8) ^ style.tag()));
        println!("{i}: {}", caption(&scene, mode, &mut rng));
    }
    ablate_trainer::sample::grid::write_grid(&out, &images, count, size, 4, (128 / size).max(1))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
