//! The single-process training loop behind `ablate train`: a loader thread feeds batches,
//! each step's measurements go to `metrics.jsonl`, checkpoints are written atomically, and
//! samples are drawn at the end. `--resume` continues from `checkpoint.safetensors`
//! exactly: the same batches, the same noise, the same loss sequence.
//!
//! Run directory:
//! - `config.toml`: the fully resolved configuration (a resume must match it)
//! - `metrics.jsonl`: one JSON object per step
//! - `checkpoint.safetensors`: weights + optimizer state + step
//! - `samples.png`, `samples.txt`: the sample grid and its prompts
//! - `eval.jsonl`: one `EvalReport` per evaluation (`[eval]`), each number with its protocol
//! - `eval-cache/`: reference statistics cached by (reference set, network hash, N)
//! - `eval-samples.safetensors`: per-image embeddings and scores of the latest evaluation

use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::TrainConfig;
use crate::data::{captions::long_caption, BatchSpec, Loader, Scene, Style};
use crate::train::{StepStats, Trainer};
use crate::TrainError;

pub struct RunOptions {
    pub out: PathBuf,
    pub resume: bool,
    /// Write samples at the end.
    pub samples: bool,
}

/// One step's record in `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MetricPoint {
    pub step: usize,
    pub loss: f64,
    pub mse: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub repa: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    pub samples_per_sec: f64,
    pub step_seconds: f64,
    pub data_seconds: f64,
    pub compute_seconds: f64,
    /// Gradient exchange (data parallelism); 0 on one rank.
    #[serde(default)]
    pub comm_seconds: f64,
    pub phase: String,
    /// Real samples skipped as unreadable so far.
    #[serde(default)]
    pub skipped_samples: u64,
}

/// Receives progress while a run goes on.
pub trait Progress {
    fn started(&mut self, _first_step: usize, _total: usize, _params: usize) {}
    fn step(&mut self, _point: &MetricPoint, _total: usize) {}
    fn message(&mut self, _msg: &str) {}
    /// The run enters "evaluating", "sampling" or (back to) "training": a supervisor
    /// watching for step progress gives the other phases longer.
    fn phase(&mut self, _name: &str) {}
    /// An evaluation finished: its `EvalReport` as JSON (also re-announced on resume for the
    /// evaluations the checkpoint covers, so a supervisor that missed one still gets it).
    fn evaluated(&mut self, _step: usize, _report_json: &str) {}
}

pub struct NoProgress;

/// How long the other ranks wait for rank 0's evaluation.
const EVAL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(3600);
impl Progress for NoProgress {}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub steps: usize,
    pub first_step: usize,
    pub mean_loss_first50: f64,
    pub mean_loss_last50: f64,
    pub samples_per_sec: f64,
    pub wall_seconds: f64,
    pub params: usize,
    pub checksum: f64,
    /// The evaluation at the last step, when `[eval]` is on.
    pub final_eval: Option<crate::eval::suite::EvalReport>,
}

/// Prompts used for sample grids: long captions of held-out scenes.
pub fn sample_prompts(cfg: &TrainConfig, n: usize) -> Vec<String> {
    (0..n as u64).map(|i| long_caption(&Scene::generate(cfg.data.seed ^ 0xE7A1, i, Style::Synthetic))).collect()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Reads `metrics.jsonl`, keeping only records before `step` (a resume redoes the rest).
pub fn read_metrics(path: &Path, before: usize) -> Result<Vec<MetricPoint>, TrainError> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str::<MetricPoint>(l).ok()).filter(|m| m.step < before).collect())
}

pub fn run(cfg: TrainConfig, opts: &RunOptions, progress: &mut dyn Progress) -> Result<RunSummary, TrainError> {
    run_on(cfg, opts, &Device::Cpu, progress)
}

/// `run` on `device` (the CPU or a CUDA device, see `crate::device::open`).
pub fn run_on(cfg: TrainConfig, opts: &RunOptions, device: &Device, progress: &mut dyn Progress) -> Result<RunSummary, TrainError> {
    run_distributed(cfg, opts, device, progress, &mut crate::collective::Solo)
}

/// One rank of a data-parallel run. `group.connect` is called once the model exists, with
/// the parameter-layout hash (the rendezvous compares it across ranks). Rank 0 owns the run
/// directory's checkpoint, evaluation and samples and is the source of truth on resume:
/// its checkpoint (if any) is sent to every rank; the other ranks only train.
pub fn run_distributed(
    cfg: TrainConfig,
    opts: &RunOptions,
    device: &Device,
    progress: &mut dyn Progress,
    group: &mut dyn crate::collective::Collective,
) -> Result<RunSummary, TrainError> {
    let device = device.clone();
    let (rank, world) = (group.rank(), group.world());
    let lead = rank == 0;
    std::fs::create_dir_all(&opts.out).map_err(|e| TrainError::io(&opts.out, e))?;
    let cfg_path = opts.out.join("config.toml");
    let ckpt = opts.out.join("checkpoint.safetensors");
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut trainer = Trainer::new(cfg.clone(), &device)?;
    trainer.rank = rank;
    trainer.world = world;
    group.connect(&crate::collective::params_hash(&trainer.params)).map_err(TrainError::Collective)?;
    if !lead {
        // rank 0's checkpoint, or nothing (a fresh start): then rank 0's initial weights
        let mut bytes = Vec::new();
        group.broadcast_bytes(&mut bytes, 0).map_err(TrainError::Collective)?;
        if bytes.is_empty() {
            crate::collective::broadcast_params(group, &trainer.params)?;
            let _ = std::fs::remove_file(&ckpt);
        } else {
            write_atomic(&ckpt, &bytes)?;
        }
    }
    if lead && opts.resume && ckpt.exists() {
        let stored = TrainConfig::load(&cfg_path)?;
        let mut a = stored.clone();
        let mut b = cfg.clone();
        a.train.steps = 0;
        b.train.steps = 0;
        if a != b {
            return Err(TrainError::Resume(format!("{} was written by a different configuration; use a new --out or drop --resume", opts.out.display())));
        }
        trainer.load(&ckpt)?;
        progress.message(&format!("resumed from step {} ({})", trainer.step, ckpt.display()));
    } else if !lead && ckpt.exists() {
        trainer.load(&ckpt)?;
    } else if !opts.resume && ckpt.exists() {
        return Err(TrainError::Resume(format!("{} already holds a run; pass --resume to continue it or choose another --out", opts.out.display())));
    }
    if lead && world > 1 {
        let mut bytes = if trainer.step > 0 { std::fs::read(&ckpt).map_err(|e| TrainError::io(&ckpt, e))? } else { Vec::new() };
        group.broadcast_bytes(&mut bytes, 0).map_err(TrainError::Collective)?;
        if bytes.is_empty() {
            crate::collective::broadcast_params(group, &trainer.params)?;
        }
    }
    write_atomic(&cfg_path, cfg.to_toml().as_bytes())?;
    let first = trainer.step;
    let total = cfg.train.steps;
    let mut history = read_metrics(&metrics_path, first)?;
    {
        let mut text = String::new();
        for m in &history {
            text.push_str(&serde_json::to_string(m).expect("metric serialises"));
            text.push('\n');
        }
        write_atomic(&metrics_path, text.as_bytes())?;
    }
    let mut metrics_file = std::fs::OpenOptions::new().append(true).open(&metrics_path).map_err(|e| TrainError::io(&metrics_path, e))?;
    progress.started(first, total, trainer.param_count());

    let evaluator = if cfg.eval.samples > 0 && lead {
        Some(crate::eval::suite::Evaluator::new(&cfg.eval, cfg.latent.image_size, opts.out.join("eval-cache"), &device).map_err(|e| TrainError::Data(format!("evaluation: {e}")))?)
    } else {
        None
    };
    let eval_path = opts.out.join("eval.jsonl");
    let mut final_eval;
    let mut eval_seconds = 0.0;
    {
        // Keep the evaluations of the steps the checkpoint covers (a resume redoes the rest);
        // lines this version cannot read are kept as they are.
        let text = match std::fs::read_to_string(&eval_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io(&eval_path, e)),
        };
        let step_of = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64());
        let kept: Vec<&str> = text.lines().filter(|l| step_of(l).is_none_or(|s| s as usize <= first)).collect();
        final_eval = kept
            .iter()
            .rev()
            .find_map(|l| serde_json::from_str::<crate::eval::suite::EvalReport>(l).ok())
            .filter(|r| r.step == total);
        if evaluator.is_some() || !kept.is_empty() {
            let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
            write_atomic(&eval_path, body.as_bytes())?;
        }
        for l in &kept {
            if let Some(s) = step_of(l) {
                progress.evaluated(s as usize, l);
            }
        }
    }

    let spec = BatchSpec::new(&cfg, rank, world).map_err(|e| TrainError::Data(e.to_string()))?;
    let loader = Loader::start(spec, first, total);
    let t0 = Instant::now();
    let mut trained_samples = 0usize;
    while trainer.step < total {
        let ts = Instant::now();
        let batch = loader.next().ok_or_else(|| TrainError::Resume("data loader stopped early".into()))?;
        let data_s = ts.elapsed().as_secs_f64();
        let tc = Instant::now();
        let (mut grads, mut stats) = trainer.compute_grads(&batch)?;
        let tx = Instant::now();
        crate::collective::exchange_grads(group, &trainer.params, &mut grads, &mut stats)?;
        let comm_s = tx.elapsed().as_secs_f64();
        let stats: StepStats = trainer.apply_grads(grads, stats)?;
        let compute_s = tc.elapsed().as_secs_f64() - comm_s;
        let step_s = ts.elapsed().as_secs_f64();
        trained_samples += batch.size * world;
        let point = MetricPoint {
            step: stats.step,
            loss: stats.loss,
            mse: stats.mse,
            repa: stats.repa,
            grad_norm: stats.grad_norm,
            lr: stats.lr,
            samples_per_sec: (batch.size * world) as f64 / step_s,
            step_seconds: step_s,
            data_seconds: data_s,
            compute_seconds: compute_s,
            comm_seconds: comm_s,
            phase: cfg.data.phase_at(stats.step).source.name().to_string(),
            skipped_samples: batch.skipped,
        };
        writeln!(metrics_file, "{}", serde_json::to_string(&point).expect("metric serialises")).map_err(|e| TrainError::io(&metrics_path, e))?;
        progress.step(&point, total);
        history.push(point);
        if world > 1 && !lead && cfg.eval.samples > 0 && cfg.eval.due(trainer.step, total) {
            // rank 0 evaluates alone; wait for it (a dead rank 0 still fails this at once)
            progress.phase("evaluating");
            group.barrier(EVAL_DEADLINE).map_err(TrainError::Collective)?;
            progress.phase("training");
        }
        if let Some(ev) = evaluator.as_ref().filter(|_| cfg.eval.due(trainer.step, total)) {
            // Checkpoint first: a failed evaluation must not cost training.
            metrics_file.flush().map_err(|e| TrainError::io(&metrics_path, e))?;
            trainer.save(&ckpt)?;
            progress.message(&format!("evaluating at step {} ({} samples)", trainer.step, cfg.eval.samples));
            progress.phase("evaluating");
            let result = ev.evaluate(&trainer);
            if world > 1 {
                group.barrier(EVAL_DEADLINE).map_err(TrainError::Collective)?;
            }
            progress.phase("training");
            let report = match result {
                Ok(r) => r,
                Err(e) => {
                    progress.message(&format!("evaluation at step {} failed, training goes on: {e}", trainer.step));
                    continue;
                }
            };
            progress.message(&format!(
                "step {}: FD-scenes {:.3}, MMD {:.3}, accuracy {:.1}%{} ({:.0}s)",
                report.step,
                report.fd_scenes.value,
                report.mmd_scenes.value,
                report.accuracy.value * 100.0,
                report.fid.as_ref().map(|f| format!(", FID {:.2}", f.value)).unwrap_or_default(),
                report.seconds
            ));
            if let Some(samples) = &report.samples {
                // the per-image numbers of the latest evaluation, for intervals between runs
                let p = opts.out.join("eval-samples.safetensors");
                if let Err(e) = samples.save(&p) {
                    progress.message(&format!("could not save {}: {e}", p.display()));
                }
            }
            let line = serde_json::to_string(&report).expect("report serialises");
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&eval_path).map_err(|e| TrainError::io(&eval_path, e))?;
            writeln!(f, "{line}").map_err(|e| TrainError::io(&eval_path, e))?;
            progress.evaluated(report.step, &line);
            eval_seconds += report.seconds;
            final_eval = Some(report);
        }
        let every = cfg.train.checkpoint_every;
        if lead && every > 0 && trainer.step % every == 0 && trainer.step < total {
            metrics_file.flush().map_err(|e| TrainError::io(&metrics_path, e))?;
            trainer.save(&ckpt)?;
        }
    }
    metrics_file.flush().map_err(|e| TrainError::io(&metrics_path, e))?;
    if lead {
        trainer.save(&ckpt)?;
    }
    // Training time only: evaluation is reported separately.
    let wall = t0.elapsed().as_secs_f64() - eval_seconds;
    if opts.samples && lead {
        progress.message("sampling");
        progress.phase("sampling");
        let prompts = sample_prompts(&cfg, cfg.sample.count);
        let imgs = trainer.sample(&prompts, cfg.sample.seed, cfg.sample.steps, cfg.sample.guidance)?;
        let n = prompts.len();
        let s = cfg.latent.image_size;
        let flat = imgs.flatten_all()?.to_vec1::<f32>()?;
        let png = opts.out.join("samples.png");
        crate::sample::grid::write_grid(&png, &flat, n, s, 4, (128 / s).max(1)).map_err(|e| TrainError::io(&png, e))?;
        let txt: String = prompts.iter().enumerate().map(|(i, p)| format!("{i}: {p}\n")).collect();
        write_atomic(&opts.out.join("samples.txt"), txt.as_bytes())?;
    }
    let mean = |xs: &[MetricPoint]| if xs.is_empty() { f64::NAN } else { xs.iter().map(|m| m.mse).sum::<f64>() / xs.len() as f64 };
    let k = history.len().min(50);
    Ok(RunSummary {
        steps: trainer.step,
        first_step: first,
        mean_loss_first50: mean(&history[..k]),
        mean_loss_last50: mean(&history[history.len() - k..]),
        samples_per_sec: trained_samples as f64 / wall.max(1e-9),
        wall_seconds: wall,
        params: trainer.param_count(),
        checksum: trainer.checksum()?,
        final_eval,
    })
}
