//! The evaluation networks behind FID, CMMD and DINO-MMD: which are installed and whether each
//! file is the network the metric is defined with (`ablate assets status`), and how fast each
//! embeds images here (`ablate bench embed`).

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
        println!("  not installed: put Hugging Face's {} model.safetensors there", kind.hub_name());
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
pub fn bench_embed(network: &str, batch: usize, size: usize, batches: usize) -> anyhow::Result<()> {
    let kind = match network {
        "clip" => EmbedKind::Clip,
        "dino" | "dinov2" => EmbedKind::Dino,
        other => anyhow::bail!("unknown --network \"{other}\" (clip or dino)"),
    };
    anyhow::ensure!(batch > 0 && batches > 0 && size >= 2, "--batch and --batches must be positive and --size at least 2");
    let t0 = Instant::now();
    let net = embed::deterministic_released(kind, &Device::Cpu)?;
    let built = t0.elapsed().as_secs_f64();
    let x = Tensor::from_vec(
        ablate_trainer::eval::detvalues::units("bench/images", batch * 3 * size * size).into_iter().map(|v| v as f32).collect::<Vec<_>>(),
        (batch, 3, size, size),
        &Device::Cpu,
    )?;
    net.embed(&x)?; // warm-up
    let t0 = Instant::now();
    for _ in 0..batches {
        net.embed(&x)?;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "{}, CPU, {} threads: batch {batch} of {size}x{size} images -> {:.2} images/s ({:.0} ms per image); weights built in {built:.1}s",
        net.network(),
        rayon::current_num_threads(),
        (batch * batches) as f64 / s,
        1000.0 * s / (batch * batches) as f64
    );
    Ok(())
}
