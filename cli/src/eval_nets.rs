//! The evaluation networks behind FID, CMMD and DINO-MMD: which are installed and whether each
//! file is the network the metric is defined with (`ablate assets status`), installing a
//! downloaded checkpoint (`ablate assets convert`), and how fast each embeds images here
//! (`ablate bench embed`).

use ablate_trainer::eval::embed::{self, EmbedKind, Embedder};
use ablate_trainer::eval::inception::{default_weights_path, InceptionFid};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::time::Instant;

/// One line per network: installed and loadable, or what is wrong and where to get it.
pub fn status() -> anyhow::Result<()> {
    let mut missing = 0;
    let inception = default_weights_path();
    println!("FID (pytorch-fid Inception-v3): {}", inception.display());
    match InceptionFid::load(&inception, &Device::Cpu) {
        Ok(net) => println!("  installed, sha256 {}", net.weights_hash),
        Err(e) => {
            missing += 1;
            println!("  {e}");
        }
    }
    for kind in [EmbedKind::Clip, EmbedKind::Dino] {
        let path = kind.default_path();
        println!("{} ({}): {}", kind.metric().to_uppercase().replace('_', "-"), kind.hub_name(), path.display());
        missing += usize::from(!check(kind, &path));
    }
    println!("(set $ABLATE_INCEPTION_WEIGHTS, $ABLATE_CLIP_WEIGHTS, $ABLATE_DINO_WEIGHTS or eval.*_weights to use files elsewhere; docs/eval.md)");
    if missing > 0 {
        println!("{missing} of 3 not installed: those metrics are reported unavailable, never made up");
    }
    Ok(())
}

/// Whether `path` holds the released `kind` network (printing what is wrong when not).
fn check(kind: EmbedKind, path: &Path) -> bool {
    if !path.is_file() {
        println!("  not installed: download {}'s model.safetensors, then `ablate assets convert {} model.safetensors`", kind.hub_name(), if kind == EmbedKind::Clip { "clip" } else { "dino" });
        return false;
    }
    let loaded = match embed::read_weights(path, &Device::Cpu) {
        Ok(l) => l,
        Err(e) => {
            println!("  unreadable: {e}");
            return false;
        }
    };
    let issues = embed::check_released(kind, &loaded.tensors);
    let sha = loaded.sha256.clone();
    match Embedder::from_loaded(kind, loaded, path, &Device::Cpu) {
        Err(e) => println!("  does not load as the network: {e}"),
        Ok(net) if issues.is_empty() => {
            println!("  installed: the released layout, {} at {}px, sha256 {sha}", net.network(), net.input_size);
            return true;
        }
        Ok(net) => {
            let shown: Vec<&String> = issues.iter().take(3).collect();
            println!("  loads ({}) but is not the released network ({} differences, e.g. {shown:?}): its numbers will not compare with published ones", net.network(), issues.len());
        }
    }
    false
}

/// Images per second of one embedding network at its released size, with deterministic
/// weights (the real ones are not needed to time it).
pub fn bench_embed(network: &str, batch: usize, size: usize, batches: usize, device: &str) -> anyhow::Result<()> {
    let dev = ablate_trainer::device::open(device)?;
    let kind = match network {
        "clip" => EmbedKind::Clip,
        "dino" | "dinov2" => EmbedKind::Dino,
        other => anyhow::bail!("unknown --network \"{other}\" (clip or dino)"),
    };
    anyhow::ensure!(batch > 0 && batches > 0 && size >= 2, "--batch and --batches must be positive and --size at least 2");
    let t0 = Instant::now();
    let net = embed::deterministic_released(kind, &dev)?;
    let built = t0.elapsed().as_secs_f64();
    let x = Tensor::from_vec(
        ablate_trainer::eval::detvalues::units("bench/images", batch * 3 * size * size).into_iter().map(|v| v as f32).collect::<Vec<_>>(),
        (batch, 3, size, size),
        &dev,
    )?;
    net.embed(&x)?; // warm-up
    ablate_trainer::device::synchronize(&dev)?;
    let t0 = Instant::now();
    for _ in 0..batches {
        net.embed(&x)?;
    }
    ablate_trainer::device::synchronize(&dev)?;
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{}, {} ({} CPU threads): batch {batch} of {size}x{size} images -> {:.2} images/s ({:.0} ms per image); weights built in {built:.1}s",
        net.network(),
        ablate_trainer::device::describe(&dev),
        rayon::current_num_threads(),
        (batch * batches) as f64 / s,
        1000.0 * s / (batch * batches) as f64
    );
    Ok(())
}

/// Installs a downloaded CLIP or DINOv2 checkpoint (Hugging Face `model.safetensors`) where
/// evaluations look for it: only the tensors the network uses are kept (CLIP's text tower is
/// dropped), the file must load as the network and, unless `any_layout`, have the released
/// layout; `heads` goes into the file's metadata for networks whose head count is not width /
/// 64. PyTorch pickles (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused: ablate never unpickles.
pub fn convert(network: &str, input: &Path, out: Option<&Path>, heads: Option<usize>, any_layout: bool) -> anyhow::Result<()> {
    let kind = match network {
        "clip" => EmbedKind::Clip,
        "dino" | "dinov2" => EmbedKind::Dino,
        "inception" => anyhow::bail!("the FID Inception weights are a PyTorch pickle: convert them with `python3 scripts/convert_inception.py <pth> <out>` (docs/eval.md)"),
        other => anyhow::bail!("unknown network \"{other}\" (clip or dino)"),
    };
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    anyhow::ensure!(
        !["bin", "pt", "pth", "ckpt", "pkl"].contains(&ext.as_str()),
        "{} is a PyTorch pickle, which ablate never loads (unpickling runs code): take the repository's model.safetensors from {} instead",
        input.display(),
        kind.hub_name()
    );
    let mut loaded = embed::read_weights(input, &Device::Cpu)?;
    let keep: std::collections::HashSet<String> = embed::released_entries(kind).into_iter().map(|(n, _)| n).collect();
    let before = loaded.tensors.len();
    let used = |k: &String| keep.contains(&kind.checkpoint_name(k)) || (any_layout && (k.starts_with("vision_model.") || k.starts_with("visual_projection") || kind == EmbedKind::Dino));
    loaded.tensors.retain(|k, _| used(k));
    let issues = embed::check_released(kind, &loaded.tensors);
    anyhow::ensure!(any_layout || issues.is_empty(), "{} is not the released {} ({} differences, e.g. {:?}); pass --any-layout to install it anyway (its numbers will not compare with published ones)", input.display(), kind.hub_name(), issues.len(), issues.iter().take(3).collect::<Vec<_>>());
    let mut metadata = loaded.metadata.clone();
    if let Some(h) = heads {
        metadata.insert("num_attention_heads".into(), h.to_string());
    }
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| kind.default_path());
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    embed::write_weights(&out, &loaded.tensors, metadata)?;
    // the installed file must load as the network
    let net = Embedder::load(kind, &out, &Device::Cpu)?;
    println!("installed {} ({} of {before} tensors kept): {}, sha256 {}", out.display(), loaded.tensors.len(), net.network(), net.weights_sha256);
    Ok(())
}

