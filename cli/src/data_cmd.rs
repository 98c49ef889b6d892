//! `ablate data preview`: look at what a run trains on. `ablate data export`: write rendered
//! scenes as an image folder with `captions.jsonl`, the layout of a `folder` data source (a
//! stand-in for a user's own image-caption set, e.g. `examples/real-data.toml`).

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
    /// Write rendered scenes as PNG files and a captions.jsonl (a `folder` source).
    Export {
        /// synthetic, photo or curated
        #[arg(long, default_value = "photo")]
        source: String,
        #[arg(long, default_value = "long")]
        captions: String,
        #[arg(long, default_value_t = 256)]
        count: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The folder (created; refused when it already has a captions.jsonl)
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_source(source: &str, captions: &str) -> anyhow::Result<(ablate_trainer::data::scene::Style, CaptionMode)> {
    let src: Source = serde_json::from_value(serde_json::Value::String(source.to_string())).map_err(|_| anyhow::anyhow!("unknown --source \"{source}\" (expected synthetic, photo or curated)"))?;
    let style = src.style().ok_or_else(|| anyhow::anyhow!("--source {source} is real data: only scenes can be rendered"))?;
    let mode: CaptionMode = serde_json::from_value(serde_json::Value::String(captions.to_string())).map_err(|_| anyhow::anyhow!("unknown --captions \"{captions}\" (expected long, short or mixed)"))?;
    Ok((style, mode))
}

fn export(source: &str, captions: &str, count: usize, size: usize, seed: u64, out: &std::path::Path) -> anyhow::Result<()> {
    let (style, mode) = parse_source(source, captions)?;
    anyhow::ensure!(count > 0 && size >= 4, "--count must be positive and --size at least 4");
    let index = out.join("captions.jsonl");
    anyhow::ensure!(!index.exists(), "{} exists: export into a new folder", index.display());
    std::fs::create_dir_all(out)?;
    let mut rng = Rng::new(seed);
    let mut lines = String::new();
    for i in 0..count as u64 {
        let scene = Scene::generate(seed, i, style);
        let file = format!("{i:06}.png");
        ablate_trainer::sample::grid::write_grid(&out.join(&file), &render(&scene, size, seed ^ (i << 8) ^ style.tag()), 1, size, 1, 1)?;
        lines.push_str(&serde_json::json!({"file": file, "caption": caption(&scene, mode, &mut rng)}).to_string());
        lines.push('\n');
        if (i + 1) % 256 == 0 {
            eprint!("\r{}/{count} images", i + 1);
        }
    }
    ablate_trainer::fsutil::write_durable(&index, lines.as_bytes())?;
    eprintln!("\rwrote {count} images and {}", index.display());
    Ok(())
}

pub fn data(cmd: DataCmd) -> anyhow::Result<()> {
    let (source, captions, count, size, seed, out) = match cmd {
        DataCmd::Export { source, captions, count, size, seed, out } => return export(&source, &captions, count, size, seed, &out),
        DataCmd::Preview { source, captions, count, size, seed, out } => (source, captions, count, size, seed, out),
    };
    let (style, mode) = parse_source(&source, &captions)?;
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
