//! `ablate eval`: FID and Frechet distances from image folders, statistics files and
//! feature matrices, the pytorch-fid way, always printed with the protocol.

use ablate_trainer::eval::files::{load_stats, save_stats, stats_from_npy};
use ablate_trainer::eval::inception::{default_weights_path, sha256_hex, InceptionFid, FEATURE_DIM};
use ablate_trainer::eval::{frechet_distance, FeatureStats, GaussianStats, Protocol};
use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum EvalCmd {
    /// FID between two image folders or statistics files (.safetensors from `eval stats`, or
    /// pytorch-fid .npz), with pytorch-fid's Inception.
    Fid {
        a: PathBuf,
        b: PathBuf,
        /// Converted Inception weights (default: assets/eval/pt_inception-2015-12-05-6726825d.safetensors
        /// or $ABLATE_INCEPTION_WEIGHTS).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
        batch: u16,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Inception statistics of an image folder, saved for later `eval fid` (.npz for pytorch-fid).
    Stats {
        dir: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
        batch: u16,
    },
    /// Evaluate a run's checkpoint again under its config's protocol (FD-scenes, MMD,
    /// compositional accuracy, FID when the weights are installed) and print the report as
    /// JSON; the run folder is left as it is.
    Checkpoint {
        /// A run folder (`ablate train --out`, or `<run>/work/jobs/<job>` of a sweep).
        dir: PathBuf,
        /// Generated images to evaluate (default: the config's `eval.samples`).
        #[arg(long)]
        samples: Option<usize>,
    },
    /// Frechet distance between two feature matrices (.npy, N x D, f32 or f64).
    Fd {
        #[arg(long, num_args = 2, value_names = ["A", "B"], required = true)]
        features: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// The protocol of a number computed from given images or features (no sampler involved).
fn image_set_protocol(metric: impl Into<String>, network: impl Into<String>, weights_sha256: impl Into<String>, samples: u64, reference: String, resize: impl Into<String>) -> Protocol {
    Protocol {
        metric: metric.into(),
        network: network.into(),
        weights_sha256: weights_sha256.into(),
        samples,
        sampler_steps: None,
        guidance: None,
        seed: None,
        reference,
        resize: resize.into(),
    }
}

const RESIZE: &str = "bilinear to 299x299 (align_corners=false, no antialias), [-1,1]";

fn image_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg")))
        .collect();
    files.sort();
    if files.len() < 2 {
        bail!("{} holds {} PNG/JPEG images; FID needs at least 2", dir.display(), files.len());
    }
    Ok(files)
}

/// Inception statistics of a folder, batching consecutive images of equal size.
fn folder_stats(net: &InceptionFid, dir: &Path, batch: usize) -> anyhow::Result<GaussianStats> {
    let files = image_files(dir)?;
    let mut stats = FeatureStats::new(FEATURE_DIM);
    let t0 = Instant::now();
    let mut pending: Vec<(u32, u32, Vec<f32>)> = Vec::new();
    let flush = |pending: &mut Vec<(u32, u32, Vec<f32>)>, stats: &mut FeatureStats| -> anyhow::Result<()> {
        if let Some(&(w, h, _)) = pending.first() {
            let data: Vec<f32> = pending.iter().flat_map(|p| p.2.iter().copied()).collect();
            let x = Tensor::from_vec(data, (pending.len(), 3, h as usize, w as usize), &Device::Cpu)?;
            stats.add_rows(&net.features(&x)?.flatten_all()?.to_vec1::<f32>()?)?;
            pending.clear();
        }
        Ok(())
    };
    for (i, f) in files.iter().enumerate() {
        let img = image::open(f).with_context(|| format!("decoding {}", f.display()))?.to_rgb8();
        let (w, h) = img.dimensions();
        if pending.first().is_some_and(|p| (p.0, p.1) != (w, h)) || pending.len() == batch {
            flush(&mut pending, &mut stats)?;
        }
        // CHW floats in [0, 1], as torchvision's ToTensor gives pytorch-fid
        let mut chw = vec![0f32; 3 * (w * h) as usize];
        for (k, px) in img.pixels().enumerate() {
            for c in 0..3 {
                chw[c * (w * h) as usize + k] = px[c] as f32 / 255.0;
            }
        }
        pending.push((w, h, chw));
        if (i + 1) % 64 == 0 {
            eprintln!("{}: {}/{} images ({:.1} images/s)", dir.display(), i + 1, files.len(), (i + 1) as f64 / t0.elapsed().as_secs_f64());
        }
    }
    flush(&mut pending, &mut stats)?;
    eprintln!("{}: {} images in {:.1}s ({:.1} images/s)", dir.display(), files.len(), t0.elapsed().as_secs_f64(), files.len() as f64 / t0.elapsed().as_secs_f64());
    Ok(stats.finish()?)
}

fn load_net(weights: Option<PathBuf>) -> anyhow::Result<InceptionFid> {
    Ok(InceptionFid::load(&weights.unwrap_or_else(default_weights_path), &Device::Cpu)?)
}

/// Statistics and a description of where they came from.
fn stats_of(p: &Path, net: &mut Option<InceptionFid>, weights: &Option<PathBuf>, batch: usize) -> anyhow::Result<(GaussianStats, String, Option<Protocol>)> {
    if p.is_dir() {
        if net.is_none() {
            *net = Some(load_net(weights.clone())?);
        }
        let s = folder_stats(net.as_ref().expect("loaded"), p, batch)?;
        return Ok((s, format!("folder {}", p.display()), None));
    }
    let (s, proto) = load_stats(p)?;
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok((s, format!("stats {} (sha256 {})", p.display(), &sha256_hex(&bytes)[..12]), proto))
}

fn checkpoint(dir: &std::path::Path, samples: Option<usize>) -> anyhow::Result<()> {
    use ablate_trainer::config::TrainConfig;
    let mut cfg = TrainConfig::load(&dir.join("config.toml")).with_context(|| format!("{} is not a run folder", dir.display()))?;
    if let Some(n) = samples {
        anyhow::ensure!(n > 0, "--samples must be positive");
        cfg.eval.samples = n;
    }
    anyhow::ensure!(cfg.eval.samples > 0, "the run's config evaluates no samples (eval.samples = 0): pass --samples N");
    let device = candle_core::Device::Cpu;
    let mut trainer = ablate_trainer::train::Trainer::new(cfg.clone(), &device)?;
    let ckpt = dir.join("checkpoint.safetensors");
    trainer.load(&ckpt).with_context(|| format!("loading {}", ckpt.display()))?;
    eprintln!("evaluating {} at step {} ({} samples)", dir.display(), trainer.step, cfg.eval.samples);
    let ev = ablate_trainer::eval::suite::Evaluator::new(&cfg.eval, cfg.latent.image_size, std::env::temp_dir().join("ablate-eval-cache"), &device)?;
    let report = ev.evaluate(&trainer)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

pub fn eval(cmd: EvalCmd) -> anyhow::Result<()> {
    match cmd {
        EvalCmd::Checkpoint { dir, samples } => checkpoint(&dir, samples)?,
        EvalCmd::Fid { a, b, weights, batch, output } => {
            let mut net = None;
            let (sa, da, pa) = stats_of(&a, &mut net, &weights, batch as usize)?;
            let (sb, db, pb) = stats_of(&b, &mut net, &weights, batch as usize)?;
            if sa.dim() != FEATURE_DIM || sb.dim() != FEATURE_DIM {
                bail!("FID compares 2048-d Inception pool features; got {} and {} dimensions (use `eval fd` for other features)", sa.dim(), sb.dim());
            }
            // Statistics files made under a recorded protocol must agree on the network.
            let hash = match (&net, &pa, &pb) {
                (Some(n), _, _) => n.weights_hash.clone(),
                (None, Some(p), _) | (None, None, Some(p)) => p.weights_sha256.clone(),
                _ => "unrecorded (pytorch-fid .npz)".into(),
            };
            for p in [&pa, &pb].into_iter().flatten() {
                if p.weights_sha256 != hash {
                    bail!("the two sides were computed with different Inception weights ({} vs {hash}); refusing to compare", p.weights_sha256);
                }
            }
            let fd = frechet_distance(&sa, &sb)?;
            let protocol = image_set_protocol("fid", "pytorch-fid inception-v3 pool3", hash, sa.n.unwrap_or(0), format!("{db} (n={})", sb.n.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into())), RESIZE);
            print_value("FID", fd.value, &protocol, &da, output, fd.eps_offset);
        }
        EvalCmd::Stats { dir, out, weights, batch } => {
            let net = load_net(weights)?;
            let s = folder_stats(&net, &dir, batch as usize)?;
            let protocol = image_set_protocol("fid", "pytorch-fid inception-v3 pool3", net.weights_hash.clone(), s.n.unwrap_or(0), format!("folder {}", dir.display()), RESIZE);
            save_stats(&out, &s, Some(&protocol))?;
            println!("wrote {} ({} images, 2048-d; {})", out.display(), s.n.unwrap_or(0), protocol.describe());
        }
        EvalCmd::Fd { features, output } => {
            let t0 = Instant::now();
            let sa = stats_from_npy(&features[0])?;
            let sb = stats_from_npy(&features[1])?;
            let fd = frechet_distance(&sa, &sb)?;
            let protocol = image_set_protocol("fd", "features given", "n/a", sa.n.unwrap_or(0), format!("{} (n={})", features[1].display(), sb.n.unwrap_or(0)), "n/a");
            print_value("FD", fd.value, &protocol, &features[0].display().to_string(), output, fd.eps_offset);
            eprintln!("computed in {:.2}s (features to number)", t0.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

fn print_value(name: &str, value: f64, p: &Protocol, first: &str, output: Output, eps: Option<f64>) {
    match output {
        Output::Json => println!("{}", serde_json::json!({ "metric": name.to_lowercase(), "value": value, "first": first, "eps_offset": eps, "protocol": p })),
        Output::Text => {
            println!("{name}: {value:.6}");
            println!("  first:     {first} (n={})", p.samples);
            println!("  protocol:  {}", p.describe());
            if let Some(e) = eps {
                println!("  note:      covariances needed a {e:e} diagonal offset (pytorch-fid's fallback)");
            }
        }
    }
}

/// `ablate bench fd`: FD for D-dimensional features, from feature files to number, next to
/// pytorch-fid's NumPy/SciPy computation (`bench/fd_scipy.py`) on the same files.
pub fn bench_fd(n: usize, d: usize, python: &str) -> anyhow::Result<()> {
    use ablate_trainer::eval::detvalues;
    let dir = std::env::temp_dir().join(format!("ablate-bench-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
    let shift = detvalues::syms("bench/shift", d);
    let fa: Vec<f32> = detvalues::syms("bench/a", n * d).into_iter().map(|v| v as f32).collect();
    let fb: Vec<f32> = detvalues::syms("bench/b", n * d).into_iter().enumerate().map(|(k, v)| (0.8 * v + 0.05 * shift[k % d]) as f32).collect();
    Tensor::from_vec(fa, (n, d), &Device::Cpu)?.write_npy(&a)?;
    Tensor::from_vec(fb, (n, d), &Device::Cpu)?.write_npy(&b)?;
    println!("FD benchmark: N = {n} per set, D = {d}, f32 features in .npy; {} threads", rayon::current_num_threads());
    let t0 = Instant::now();
    let (sa, sb) = (stats_from_npy(&a)?, stats_from_npy(&b)?);
    let t_stats = t0.elapsed().as_secs_f64();
    let fd = frechet_distance(&sa, &sb)?;
    let t_total = t0.elapsed().as_secs_f64();
    println!("ablate (f64 streaming stats + symmetric eigendecompositions): FD {:.9}  stats {t_stats:.2}s  FD {:.2}s  total {t_total:.2}s", fd.value, t_total - t_stats);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/fd_scipy.py");
    let out = std::process::Command::new(python).arg(&script).arg(&a).arg(&b).output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("parsing bench/fd_scipy.py output")?;
            let (ref_fd, ref_t, ref_fd_t) = (v["fd"].as_f64().unwrap_or(f64::NAN), v["seconds_total"].as_f64().unwrap_or(f64::NAN), v["seconds_fd"].as_f64().unwrap_or(f64::NAN));
            println!("pytorch-fid (np.cov + scipy.linalg.sqrtm):                      FD {ref_fd:.9}  stats {:.2}s  FD {ref_fd_t:.2}s  total {ref_t:.2}s", ref_t - ref_fd_t);
            println!("speed-up (total): {:.1}x   relative difference of the values: {:.1e}", ref_t / t_total, (fd.value - ref_fd).abs() / ref_fd.abs());
        }
        Ok(o) => println!("pytorch-fid reference failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")),
        Err(e) => println!("pytorch-fid reference not run ({python}: {e}); it needs numpy and scipy"),
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// `ablate bench inception`: images per second of FID feature extraction on this machine
/// (deterministic weights: the speed does not depend on the values).
pub fn bench_inception(batch: usize, size: usize, batches: usize) -> anyhow::Result<()> {
    let net = InceptionFid::deterministic(&Device::Cpu)?;
    let x = Tensor::from_vec(
        ablate_trainer::eval::detvalues::units("bench/images", batch * 3 * size * size).into_iter().map(|v| v as f32).collect::<Vec<_>>(),
        (batch, 3, size, size),
        &Device::Cpu,
    )?;
    net.features(&x)?; // warm-up
    let t0 = Instant::now();
    for _ in 0..batches {
        net.features(&x)?;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "Inception-v3 FID features, CPU, {} threads: batch {batch} of {size}x{size} images -> {:.2} images/s ({:.0} ms per image)",
        rayon::current_num_threads(),
        (batch * batches) as f64 / s,
        1000.0 * s / (batch * batches) as f64
    );
    Ok(())
}
