//! `ablate train` and `ablate bench train`.

use ablate_trainer::run::{run_on, MetricPoint, Progress, RunOptions};
use ablate_trainer::{TrainConfig, Trainer};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training config (TOML), e.g. examples/train-tiny.toml.
    config: PathBuf,
    /// Override train.steps.
    #[arg(long)]
    steps: Option<usize>,
    /// Run directory (default runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Skip drawing samples at the end.
    #[arg(long)]
    no_samples: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Validate the config and print its parameter count and memory per GPU at batch 1-8;
    /// train nothing.
    #[arg(long)]
    dry_run: bool,
}

struct Console {
    every: usize,
    started: Instant,
    first: usize,
    window: Vec<f64>,
}

fn fmt_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

impl Progress for Console {
    fn started(&mut self, first: usize, total: usize, params: usize) {
        self.first = first;
        self.started = Instant::now();
        eprintln!("training {params} parameters, steps {first}..{total}");
    }
    fn step(&mut self, p: &MetricPoint, total: usize) {
        self.window.push(p.loss);
        let done = p.step + 1;
        if done % self.every == 0 || done == total {
            let el = self.started.elapsed().as_secs_f64();
            let rate = (done - self.first) as f64 / el.max(1e-9);
            let loss = self.window.iter().sum::<f64>() / self.window.len() as f64;
            self.window.clear();
            eprintln!(
                "step {done:>6}/{total}  loss {loss:.4}  grad {:.3}  lr {:.2e}  {:.1} samples/s  elapsed {}  ETA {}",
                p.grad_norm,
                p.lr,
                p.samples_per_sec,
                fmt_secs(el),
                fmt_secs((total - done) as f64 / rate.max(1e-9))
            );
        }
    }
    fn message(&mut self, msg: &str) {
        eprintln!("{msg}");
    }
}

pub fn train(a: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = TrainConfig::load(&a.config)?;
    if let Some(s) = a.steps {
        cfg.train.steps = s;
    }
    cfg.validate()?;
    if a.dry_run {
        print!("{}", ablate_trainer::plan::Plan::of(&cfg)?.describe(&cfg));
        return Ok(());
    }
    let out = a.out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let mut console = Console { every: cfg.train.log_every.max(1), started: Instant::now(), first: 0, window: vec![] };
    let device = ablate_trainer::device::open(&a.device)?;
    let s = run_on(cfg, &RunOptions { out: out.clone(), resume: a.resume, samples: !a.no_samples, eval_cache: None, checkpoint_store: None }, &device, &mut console).with_context(|| format!("training into {}", out.display()))?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    eprintln!("wrote {}/metrics.jsonl, checkpoint.safetensors{}", out.display(), if a.no_samples { "" } else { ", samples.png" });
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Step time and samples/s of the training step for the baseline and each arm.
    Train(BenchTrainArgs),
    /// Frechet distance for D-dimensional features, from .npy files to number, next to
    /// pytorch-fid's NumPy/SciPy computation on the same files (bench/fd_scipy.py).
    Fd {
        #[arg(long, default_value_t = 10_000)]
        n: usize,
        #[arg(long, default_value_t = 2048)]
        dim: usize,
        /// Python with numpy and scipy for the reference.
        #[arg(long, default_value = "python3")]
        python: String,
    },
    /// TCP ring all-reduce bus bandwidth on loopback, next to raw loopback TCP throughput.
    Ring {
        /// Buffer sizes in MB.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        sizes: Vec<usize>,
        /// Group sizes.
        #[arg(long, value_delimiter = ',', default_value = "2,4")]
        ranks: Vec<usize>,
    },
    /// Gang-scheduler throughput on a simulated cluster, and submit-to-running latency.
    Scheduler {
        #[arg(long, default_value_t = 1000)]
        workers: usize,
        #[arg(long, default_value_t = 8)]
        slots: u32,
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// Store of the coordinator pass: `memory:` (default), a redb file path, or
        /// `etcd://host:port/namespace/` (an empty namespace; the bench removes its keys).
        #[arg(long, default_value = "memory:")]
        store: String,
    },
    /// Images per second of the CMMD (CLIP ViT-L/14-336) or DINO-MMD (DINOv2 ViT-B/14) network
    /// on the CPU, at the released size with deterministic weights.
    Embed {
        /// clip or dino
        #[arg(long, default_value = "clip")]
        network: String,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Input side in pixels (resized inside to the network's input).
        #[arg(long, default_value_t = 256)]
        size: usize,
        #[arg(long, default_value_t = 2)]
        batches: usize,
        /// cpu, cuda or cuda:N
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Images per second of FID (Inception-v3) feature extraction on the CPU.
    Inception {
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Input side in pixels (resized to 299 inside).
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 3)]
        batches: usize,
    },
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    /// Model preset: tiny, mini or prx-small.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps per arm.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed steps per arm before the clock starts.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Comma-separated arms, or "all".
    #[arg(long, default_value = "all")]
    arms: String,
    /// Image tokens per sample (a square number): sets latent.image_size for the arm's
    /// latent space and patch size (default: the config's 32-pixel images).
    #[arg(long)]
    image_tokens: Option<usize>,
    /// Override the preset's width (hidden size).
    #[arg(long)]
    hidden: Option<usize>,
    /// Override the preset's number of blocks.
    #[arg(long)]
    depth: Option<usize>,
    /// Override the preset's attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Override the preset's MLP ratio.
    #[arg(long)]
    mlp_ratio: Option<f64>,
    /// Text tokens per sample (text.max_tokens; default 64).
    #[arg(long)]
    text_tokens: Option<usize>,
    /// Precision policy of every arm (fp32, bf16_mixed, bf16_stored); the bf16 arms keep
    /// their own. Default: fp32 on the CPU, bf16_mixed on CUDA.
    #[arg(long)]
    precision: Option<String>,
    /// Dense bf16 peak of the device in TFLOP/s, for MFU (H100 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Also print one JSON object per arm (a line starting with `bench-json `).
    #[arg(long)]
    json: bool,
}

/// The arms the bench knows: name and the change to the baseline.
fn bench_arms() -> Vec<(&'static str, fn(&mut TrainConfig))> {
    use ablate_trainer::objective::Prediction;
    use ablate_trainer::optim::OptimKind;
    use ablate_trainer::precision::PrecisionPolicy;
    use ablate_trainer::routing::RoutingKind;
    vec![
        ("baseline", |_| {}),
        ("repa-strong", |c| c.repa.enabled = true),
        ("repa-weak", |c| {
            c.repa.enabled = true;
            c.repa.teacher = "weak".into()
        }),
        ("ae-lean", |c| c.latent.kind = "ae-lean".into()),
        ("ae-rich", |c| c.latent.kind = "ae-rich".into()),
        ("repa-e-ae+repa", |c| {
            c.latent.kind = "ae-repa-e".into();
            c.repa.enabled = true
        }),
        ("repa-e-training", |c| {
            c.latent.kind = "ae-lean".into();
            c.latent.end_to_end = true;
            c.repa.enabled = true
        }),
        ("contrastive-fm", |c| c.objective.contrastive_lambda = 0.05),
        ("x-prediction", |c| c.objective.prediction = Prediction::X),
        ("tread", |c| {
            c.routing.kind = RoutingKind::Tread;
            c.routing.rate = 0.5
        }),
        ("sprint", |c| {
            c.routing.kind = RoutingKind::Sprint;
            c.routing.rate = 0.75
        }),
        ("muon", |c| c.optim.kind = OptimKind::Muon),
        ("bf16-mixed", |c| c.precision.policy = PrecisionPolicy::Bf16Mixed),
        ("bf16-stored", |c| c.precision.policy = PrecisionPolicy::Bf16Stored),
    ]
}

/// Sets `latent.image_size` so that the arm's denoiser sees `tokens` image tokens.
fn set_image_tokens(cfg: &mut TrainConfig, tokens: usize) -> anyhow::Result<()> {
    let side = (tokens as f64).sqrt().round() as usize;
    anyhow::ensure!(side * side == tokens && side > 0, "--image-tokens {tokens} is not a square number");
    let patch = cfg.denoiser()?.patch;
    let down = cfg.latent.image_size / cfg.latent_size();
    cfg.latent.image_size = side * patch * down;
    Ok(())
}

/// Model FLOPs of one training step of `cfg` (3x the forward matmuls, dense: token routing
/// and REPA are not discounted or added).
fn train_flops(cfg: &TrainConfig, tokenizer_vocab: usize) -> anyhow::Result<f64> {
    let d = cfg.denoiser()?;
    let n_img = (cfg.latent_size() / d.patch).pow(2);
    let n_txt = cfg.text.max_tokens;
    let text = if cfg.text.encoder == "learned" { cfg.text_encoder(tokenizer_vocab).forward_flops(n_txt) } else { 0.0 };
    Ok(3.0 * cfg.train.batch_size as f64 * (d.forward_flops(n_img, n_txt) + text))
}

pub fn bench(cmd: BenchCmd) -> anyhow::Result<()> {
    use ablate_trainer::device;
    let a = match cmd {
        BenchCmd::Train(a) => a,
        BenchCmd::Fd { n, dim, python } => return crate::eval_cmd::bench_fd(n, dim, &python),
        BenchCmd::Inception { batch, size, batches } => return crate::eval_cmd::bench_inception(batch, size, batches),
        BenchCmd::Embed { network, batch, size, batches, device } => return crate::eval_nets::bench_embed(&network, batch, size, batches, &device),
        BenchCmd::Ring { sizes, ranks } => return crate::bench_cluster::ring(&sizes, &ranks),
        BenchCmd::Scheduler { workers, slots, jobs, store } => return crate::bench_cluster::scheduler(workers, slots, jobs, &store),
    };
    let dev = device::open(&a.device)?;
    let wanted: Vec<&str> = a.arms.split(',').map(str::trim).collect();
    let arms = bench_arms();
    for w in &wanted {
        anyhow::ensure!(*w == "all" || arms.iter().any(|(n, _)| n == w), "unknown arm \"{w}\" (known: {})", arms.iter().map(|a| a.0).collect::<Vec<_>>().join(", "));
    }
    let precision: ablate_trainer::precision::PrecisionPolicy = match &a.precision {
        Some(p) => serde_json::from_value(serde_json::Value::String(p.clone())).map_err(|_| anyhow::anyhow!("unknown --precision \"{p}\" (expected fp32, bf16_mixed or bf16_stored)"))?,
        None if dev.is_cpu() => Default::default(),
        None => ablate_trainer::precision::PrecisionPolicy::Bf16Mixed,
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "preset {}  batch {}  device {}  cpu threads {}  ({} timed steps after {} warm-up)",
        a.preset,
        a.batch,
        device::describe(&dev),
        rayon_threads(),
        a.steps,
        a.warmup
    );
    println!(
        "{:<16} {:>13} {:>7} {:>11} {:>10} {:>11} {:>9} {:>12} {:>7} {:>9}",
        "arm", "params", "tokens", "precision", "step ms", "samples/s", "vs base", "TFLOP/step", "MFU %", "peak GiB"
    );
    let mut base = None;
    for (name, change) in arms {
        if !wanted.contains(&"all") && !wanted.contains(&name) {
            continue;
        }
        let mut cfg = TrainConfig::default();
        cfg.model.preset = a.preset.clone();
        cfg.model.hidden = a.hidden;
        cfg.model.depth = a.depth;
        cfg.model.heads = a.heads;
        cfg.model.mlp_ratio = a.mlp_ratio;
        if let Some(t) = a.text_tokens {
            cfg.text.max_tokens = t;
        }
        cfg.validate()?;
        cfg.train.batch_size = a.batch;
        cfg.optim.warmup_steps = 0;
        cfg.optim.lr = 1e-3;
        cfg.routing.start = 2;
        cfg.routing.end = cfg.denoiser()?.depth - 2;
        cfg.precision.policy = precision;
        change(&mut cfg);
        if let Some(n) = a.image_tokens {
            set_image_tokens(&mut cfg, n)?;
        }
        let tokens = (cfg.latent_size() / cfg.denoiser()?.patch).pow(2);
        device::reset_peak_memory(&dev);
        let mut trainer = match Trainer::new(cfg.clone(), &dev) {
            Ok(t) => t,
            Err(e) => {
                println!("{name:<16} skipped: {e}");
                continue;
            }
        };
        let spec = ablate_trainer::data::BatchSpec::new(&cfg, 0, 1)?;
        let tok = ablate_trainer::data::Tokenizer::new();
        let batches: Vec<_> = (0..a.steps + a.warmup).map(|s| spec.make(s, &tok)).collect();
        let mut last_loss = f64::NAN;
        for b in &batches[..a.warmup] {
            last_loss = trainer.train_step(b)?.loss;
        }
        device::synchronize(&dev)?;
        let t = Instant::now();
        for b in &batches[a.warmup..] {
            last_loss = trainer.train_step(b)?.loss;
        }
        device::synchronize(&dev)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0 / a.steps.max(1) as f64;
        // Where a step's time goes: forward + backward vs optimizer (synchronised around each).
        if !dev.is_cpu() {
            let (mut fb, mut op) = (0.0, 0.0);
            let k = a.steps.clamp(1, 3);
            for b in &batches[a.warmup..a.warmup + k] {
                let t0 = Instant::now();
                let (g, st) = trainer.compute_grads(b)?;
                device::synchronize(&dev)?;
                let t1 = Instant::now();
                trainer.apply_grads(g, st)?;
                device::synchronize(&dev)?;
                fb += (t1 - t0).as_secs_f64();
                op += t1.elapsed().as_secs_f64();
            }
            println!("{name:<16} split over {k} steps: forward+backward {:.1} ms, optimizer (clip + AdamW + EMA) {:.1} ms", 1000.0 * fb / k as f64, 1000.0 * op / k as f64);
        }
        let sps = a.batch as f64 / (ms / 1000.0);
        let rel = base.map(|b: f64| format!("{:.2}x", sps / b)).unwrap_or_else(|| "1.00x".into());
        if name == "baseline" {
            base = Some(sps);
        }
        let flops = train_flops(&cfg, tok.vocab_size())?;
        let mfu = if dev.is_cpu() { None } else { Some(100.0 * flops / (ms / 1000.0) / (a.peak_tflops * 1e12)) };
        let mem = device::memory(&dev);
        let peak = mem.and_then(|m| m.peak_in_use);
        println!(
            "{name:<16} {:>13} {tokens:>7} {:>11} {ms:>10.1} {sps:>11.2} {rel:>9} {:>12.2} {:>7} {:>9}",
            trainer.param_count(),
            serde_json::to_value(cfg.precision.policy)?.as_str().unwrap_or("?"),
            flops / 1e12,
            mfu.map(|m| format!("{m:.1}")).unwrap_or_else(|| "-".into()),
            peak.map(|p| format!("{:.2}", gib(p))).unwrap_or_else(|| "-".into()),
        );
        if a.json {
            let d = cfg.denoiser()?;
            let j = serde_json::json!({
                "impl": "ablate", "arm": name, "preset": a.preset, "device": device::describe(&dev),
                "batch": a.batch, "image_tokens": tokens, "text_tokens": cfg.text.max_tokens,
                "image_size": cfg.latent.image_size, "precision": cfg.precision.policy,
                "params": trainer.param_count(), "denoiser": d, "text": cfg.text_encoder(tok.vocab_size()),
                "step_ms": ms, "samples_per_s": sps, "train_flops_per_step": flops,
                "mfu": mfu.map(|m| m / 100.0), "peak_tflops": a.peak_tflops,
                "peak_mem_bytes": peak, "device_mem_in_use_bytes": mem.map(|m| m.in_use),
                "last_loss": last_loss,
            });
            println!("bench-json {j}");
        }
    }
    if !dev.is_cpu() {
        println!("peak GiB: high-water mark of the CUDA memory pool candle allocates from (like torch.cuda.max_memory_allocated); MFU: model FLOPs / step time / {} TFLOP/s", a.peak_tflops);
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SelfcheckArgs {
    /// Device to check against the CPU (`cpu` checks the checks).
    #[arg(long, default_value = "cuda")]
    device: String,
}

/// Runs `ablate_trainer::device::selfcheck` and prints one PASS/FAIL line per check; fails
/// if any check failed.
pub fn selfcheck(a: SelfcheckArgs) -> anyhow::Result<()> {
    use ablate_trainer::device;
    let dev = device::open(&a.device)?;
    println!("selfcheck on {}", device::describe(&dev));
    let mut failed = Vec::new();
    for (name, outcome) in device::selfcheck::run_all(&dev) {
        match outcome {
            Ok(msg) => println!("PASS {name}: {}", msg.replace('\n', "\n    ")),
            Err(e) => {
                println!("FAIL {name}: {e}");
                failed.push(name);
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "selfcheck failed: {}", failed.join(", "));
    println!("selfcheck: all passed");
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()))
}
