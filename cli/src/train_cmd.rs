//! `ablate train` and `ablate bench train`.

use ablate_trainer::run::{run, MetricPoint, Progress, RunOptions};
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
    let out = a.out.unwrap_or_else(|| PathBuf::from("runs").join(&cfg.name));
    let mut console = Console { every: cfg.train.log_every.max(1), started: Instant::now(), first: 0, window: vec![] };
    let s = run(cfg, &RunOptions { out: out.clone(), resume: a.resume, samples: !a.no_samples }, &mut console).with_context(|| format!("training into {}", out.display()))?;
    println!("{}", serde_json::to_string_pretty(&s)?);
    eprintln!("wrote {}/metrics.jsonl, checkpoint.safetensors{}", out.display(), if a.no_samples { "" } else { ", samples.png" });
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Step time and samples/s of the training step for the baseline and each arm.
    Train(BenchTrainArgs),
}

#[derive(clap::Args)]
pub struct BenchTrainArgs {
    #[arg(long, default_value = "tiny")]
    preset: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Timed steps per arm (after 2 warm-up steps).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Comma-separated arms, or "all".
    #[arg(long, default_value = "all")]
    arms: String,
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

pub fn bench(cmd: BenchCmd) -> anyhow::Result<()> {
    let BenchCmd::Train(a) = cmd;
    anyhow::ensure!(a.device == "cpu", "--device {} needs a build with --features cuda (this build has CPU only)", a.device);
    let wanted: Vec<&str> = a.arms.split(',').map(str::trim).collect();
    let arms = bench_arms();
    for w in &wanted {
        anyhow::ensure!(*w == "all" || arms.iter().any(|(n, _)| n == w), "unknown arm \"{w}\" (known: {})", arms.iter().map(|a| a.0).collect::<Vec<_>>().join(", "));
    }
    println!("preset {}  batch {}  device cpu  threads {}  ({} timed steps after 2 warm-up)", a.preset, a.batch, rayon_threads(), a.steps);
    println!("{:<16} {:>10} {:>12} {:>12} {:>9}", "arm", "params", "step ms", "samples/s", "vs base");
    let mut base = None;
    for (name, change) in arms {
        if !wanted.contains(&"all") && !wanted.contains(&name) {
            continue;
        }
        let mut cfg = TrainConfig::default();
        cfg.model.preset = a.preset.clone();
        cfg.train.batch_size = a.batch;
        cfg.optim.warmup_steps = 0;
        cfg.optim.lr = 1e-3;
        cfg.routing.start = 2;
        cfg.routing.end = cfg.denoiser()?.depth - 2;
        change(&mut cfg);
        let mut trainer = match Trainer::new(cfg.clone(), &candle_core::Device::Cpu) {
            Ok(t) => t,
            Err(e) => {
                println!("{name:<16} skipped: {e}");
                continue;
            }
        };
        let spec = ablate_trainer::data::BatchSpec::new(&cfg, 0, 1)?;
        let tok = ablate_trainer::data::Tokenizer::new();
        let batches: Vec<_> = (0..a.steps + 2).map(|s| spec.make(s, &tok)).collect();
        for b in &batches[..2] {
            trainer.train_step(b)?;
        }
        let t = Instant::now();
        for b in &batches[2..] {
            trainer.train_step(b)?;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0 / a.steps as f64;
        let sps = a.batch as f64 / (ms / 1000.0);
        let rel = base.map(|b: f64| format!("{:.2}x", sps / b)).unwrap_or_else(|| "1.00x".into());
        if name == "baseline" {
            base = Some(sps);
        }
        println!("{name:<16} {:>10} {ms:>12.1} {sps:>12.2} {rel:>9}", trainer.param_count());
    }
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.to_string()).unwrap_or_else(|_| "?".into()))
}
