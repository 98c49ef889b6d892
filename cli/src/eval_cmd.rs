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
        #[arg(long, default_value_t = 16)]
        batch: usize,
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
        #[arg(long, default_value_t = 16)]
        batch: usize,
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

pub fn eval(cmd: EvalCmd) -> anyhow::Result<()> {
    match cmd {
        EvalCmd::Fid { a, b, weights, batch, output } => {
            let mut net = None;
            let (sa, da, pa) = stats_of(&a, &mut net, &weights, batch)?;
            let (sb, db, pb) = stats_of(&b, &mut net, &weights, batch)?;
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
            let protocol = Protocol {
                metric: "fid".into(),
                network: "pytorch-fid inception-v3 pool3".into(),
                weights_sha256: hash,
                samples: sa.n.unwrap_or(0),
                sampler_steps: None,
                guidance: None,
                seed: None,
                reference: format!("{db} (n={})", sb.n.map(|n| n.to_string()).unwrap_or_else(|| "unknown".into())),
                resize: RESIZE.into(),
            };
            print_value("FID", fd.value, &protocol, &da, output, fd.eps_offset);
        }
        EvalCmd::Stats { dir, out, weights, batch } => {
            let net = load_net(weights)?;
            let s = folder_stats(&net, &dir, batch)?;
            let protocol = Protocol {
                metric: "fid".into(),
                network: "pytorch-fid inception-v3 pool3".into(),
                weights_sha256: net.weights_hash.clone(),
                samples: s.n.unwrap_or(0),
                sampler_steps: None,
                guidance: None,
                seed: None,
                reference: format!("folder {}", dir.display()),
                resize: RESIZE.into(),
            };
            save_stats(&out, &s, Some(&protocol))?;
            println!("wrote {} ({} images, 2048-d; {})", out.display(), s.n.unwrap_or(0), protocol.describe());
        }
        EvalCmd::Fd { features, output } => {
            let t0 = Instant::now();
            let sa = stats_from_npy(&features[0])?;
            let sb = stats_from_npy(&features[1])?;
            let fd = frechet_distance(&sa, &sb)?;
            let protocol = Protocol {
                metric: "fd".into(),
                network: "features given".into(),
                weights_sha256: "n/a".into(),
                samples: sa.n.unwrap_or(0),
                sampler_steps: None,
                guidance: None,
                seed: None,
                reference: format!("{} (n={})", features[1].display(), sb.n.unwrap_or(0)),
                resize: "n/a".into(),
            };
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
