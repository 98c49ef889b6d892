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
//! - `eval-cache/`: reference statistics and embeddings cached by (reference set, network hash, N)
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
    /// Where reference statistics and embeddings are cached (None: `<out>/eval-cache`). A
    /// worker gives all its jobs one folder (`ABLATE_EVAL_CACHE`), so the jobs of a sweep
    /// embed the same reference set once.
    pub eval_cache: Option<PathBuf>,
    /// A store shared by the workers that every checkpoint is also published to, and that
    /// a resume restores from when it holds a newer step than the run directory (a gang
    /// placed on other workers). Rank 0 only.
    pub checkpoint_store: Option<crate::ckpt_store::CheckpointStore>,
}

/// The environment variable a worker names its shared evaluation cache in, for its ranks.
pub const EVAL_CACHE_ENV: &str = "ABLATE_EVAL_CACHE";

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
    /// An evaluation finished (also re-announced on resume for the evaluations the
    /// checkpoint covers, so a supervisor that missed one still gets it). The per-image data
    /// stays in the run directory (`eval::bootstrap::SAMPLES_FILE`).
    fn evaluated(&mut self, _report: &crate::eval::suite::EvalReport) {}
    /// Whether this rank was asked to stop (SIGTERM). Checked after every step; in a group
    /// the ranks agree (one asks, all stop after the same step), rank 0 checkpoints there and
    /// the run ends with [`TrainError::Preempted`].
    fn stop_requested(&mut self) -> bool {
        false
    }
    /// Rank 0 starts writing its checkpoint of `step` (a kill may stop it half way; the
    /// write is atomic, so then there is no checkpoint of that step).
    fn checkpoint_begun(&mut self, _step: usize) {}
    /// Rank 0's checkpoint of `step` is on disk and, when `published`, in the checkpoint store.
    fn checkpoint_saved(&mut self, _step: usize, _published: bool) {}
}

pub struct NoProgress;

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
    crate::fsutil::write_durable(path, bytes).map_err(|e| TrainError::io(path, e))
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

/// The files of a run directory (see the module header), and the checkpoint store they are
/// published to.
struct RunFiles {
    out: PathBuf,
    config: PathBuf,
    ckpt: PathBuf,
    metrics: PathBuf,
    evals: PathBuf,
    store: Option<crate::ckpt_store::CheckpointStore>,
}

/// What a published checkpoint carries besides the checkpoint: what a resume elsewhere needs.
const PUBLISHED: [&str; 5] = [crate::ckpt_store::CHECKPOINT, "config.toml", "metrics.jsonl", "eval.jsonl", crate::eval::bootstrap::SAMPLES_FILE];

impl RunFiles {
    fn new(out: &Path, store: Option<crate::ckpt_store::CheckpointStore>) -> Self {
        Self { out: out.to_path_buf(), config: out.join("config.toml"), ckpt: out.join(crate::ckpt_store::CHECKPOINT), metrics: out.join("metrics.jsonl"), evals: out.join("eval.jsonl"), store }
    }

    /// Rank 0's checkpoint: written to the run directory, then published to the store (a
    /// store that fails is said and training goes on: the local checkpoint stands).
    fn checkpoint(&self, trainer: &Trainer, progress: &mut dyn Progress) -> Result<(), TrainError> {
        self.save(trainer, progress)?;
        self.publish(trainer.step, progress);
        Ok(())
    }

    /// Writes rank 0's checkpoint to the run directory (not yet published).
    fn save(&self, trainer: &Trainer, progress: &mut dyn Progress) -> Result<(), TrainError> {
        progress.checkpoint_begun(trainer.step);
        trainer.save(&self.ckpt)
    }

    /// Publishes the run directory's checkpoint (of `step`) and files to the store.
    fn publish(&self, step: usize, progress: &mut dyn Progress) {
        let mut published = false;
        if let Some(store) = &self.store {
            match store.publish(step, &self.out, &PUBLISHED) {
                Ok(_) => published = true,
                Err(e) => progress.message(&format!("warning: step {step} not published to the checkpoint store: {e}")),
            }
        }
        progress.checkpoint_saved(step, published);
    }

    /// Before a resume: when the store holds a newer whole step than the run directory,
    /// restores it (the run directory's step, when it has one, is read from its checkpoint).
    fn restore_newer(&self, progress: &mut dyn Progress) -> Result<(), TrainError> {
        let Some(store) = &self.store else { return Ok(()) };
        let at = store.objects.describe();
        let local = if self.ckpt.exists() { crate::checkpoint::read_step(&self.ckpt).ok() } else { None };
        let restored = store
            .restore_newest(&self.out, local, &mut |step, why| progress.message(&format!("checkpoint store: step {step} is unusable ({why}); trying the one before")))
            .map_err(|e| TrainError::Resume(format!("checkpoint store {at}: {e}")))?;
        if let Some(step) = restored {
            progress.message(&format!("restored step {step} from the checkpoint store ({at})"));
        }
        Ok(())
    }
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
    cfg.train.rank_batch(group.world())?;
    let files = RunFiles::new(&opts.out, if group.rank() == 0 { opts.checkpoint_store.clone() } else { None });
    std::fs::create_dir_all(&opts.out).map_err(|e| TrainError::io(&opts.out, e))?;
    let mut trainer = join_group(&cfg, opts.resume, &files, device, progress, group)?;
    write_atomic(&files.config, cfg.to_toml().as_bytes())?;
    let (first, total) = (trainer.step, cfg.train.steps);
    let mut metrics = MetricsLog::open(&files.metrics, first)?;
    progress.started(first, total, trainer.param_count());
    let lead = group.rank() == 0;
    // every rank samples its share of an evaluation; rank 0 computes and records the numbers
    let evaluator = if cfg.eval.samples > 0 {
        Some(crate::eval::suite::Evaluator::new(&cfg.eval, cfg.latent.image_size, opts.eval_cache.clone().unwrap_or_else(|| opts.out.join("eval-cache")), device).map_err(|e| TrainError::Data(format!("evaluation: {e}")))?)
    } else {
        None
    };
    let mut evals = EvalLog::restore(&files.evals, first, total, evaluator.is_some() && lead, progress)?;
    let (trained_samples, seconds) = train_loop(&cfg, &files, &mut trainer, group, progress, &mut metrics, evaluator.as_ref(), &mut evals)?;
    // Training time only: evaluation is reported separately.
    let wall = seconds - evals.seconds;
    if opts.samples && lead {
        write_samples(&cfg, &files.out, &trainer, progress)?;
    }
    let mean = |xs: &[MetricPoint]| if xs.is_empty() { f64::NAN } else { xs.iter().map(|m| m.mse).sum::<f64>() / xs.len() as f64 };
    let history = &metrics.history;
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
        final_eval: evals.last_final,
    })
}

/// Builds this rank's trainer and brings every rank to the same starting point: rank 0
/// resumes from its checkpoint (checked against the stored configuration) or starts fresh,
/// and sends the checkpoint (or, fresh, its initial weights) to the others.
fn join_group(cfg: &TrainConfig, resume: bool, files: &RunFiles, device: &Device, progress: &mut dyn Progress, group: &mut dyn crate::collective::Collective) -> Result<Trainer, TrainError> {
    let (rank, world) = (group.rank(), group.world());
    let (lead, ckpt) = (rank == 0, &files.ckpt);
    let mut trainer = Trainer::new(cfg.clone(), device)?;
    trainer.rank = rank;
    trainer.world = world;
    group.connect(&crate::collective::params_hash(&trainer.params)).map_err(TrainError::Collective)?;
    if !lead {
        // rank 0's checkpoint, or nothing (a fresh start): then rank 0's initial weights
        let mut bytes = Vec::new();
        group.broadcast_bytes(&mut bytes, 0).map_err(TrainError::Collective)?;
        if bytes.is_empty() {
            crate::collective::broadcast_params(group, &trainer.params)?;
            let _ = std::fs::remove_file(ckpt);
        } else {
            write_atomic(ckpt, &bytes)?;
        }
    }
    if lead && resume {
        files.restore_newer(progress)?;
    }
    if lead && resume && ckpt.exists() {
        let (mut stored, mut asked) = (TrainConfig::load(&files.config)?, cfg.clone());
        // the step budget and where checkpoints are shared may change between runs
        (stored.train.steps, stored.train.checkpoint_store) = (0, None);
        (asked.train.steps, asked.train.checkpoint_store) = (0, None);
        if stored != asked {
            return Err(TrainError::Resume(format!("{} was written by a different configuration; use a new --out or drop --resume", files.out.display())));
        }
        trainer.load(ckpt)?;
        progress.message(&format!("resumed from step {} ({})", trainer.step, ckpt.display()));
    } else if !lead && ckpt.exists() {
        trainer.load(ckpt)?;
    } else if !resume && ckpt.exists() {
        return Err(TrainError::Resume(format!("{} already holds a run; pass --resume to continue it or choose another --out", files.out.display())));
    }
    if lead && world > 1 {
        let mut bytes = if trainer.step > 0 { std::fs::read(ckpt).map_err(|e| TrainError::io(ckpt, e))? } else { Vec::new() };
        group.broadcast_bytes(&mut bytes, 0).map_err(TrainError::Collective)?;
        if bytes.is_empty() {
            crate::collective::broadcast_params(group, &trainer.params)?;
        }
    }
    Ok(trainer)
}

/// `metrics.jsonl`: the records the checkpoint covers (rewritten without the steps a resume
/// redoes) and the file open for appending.
struct MetricsLog {
    path: PathBuf,
    history: Vec<MetricPoint>,
    file: std::fs::File,
}

impl MetricsLog {
    fn open(path: &Path, first: usize) -> Result<Self, TrainError> {
        let history = read_metrics(path, first)?;
        let text: String = history.iter().map(|m| serde_json::to_string(m).expect("metric serialises") + "\n").collect();
        write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| TrainError::io(path, e))?;
        Ok(Self { path: path.to_path_buf(), history, file })
    }

    fn push(&mut self, point: MetricPoint) -> Result<(), TrainError> {
        writeln!(self.file, "{}", serde_json::to_string(&point).expect("metric serialises")).map_err(|e| TrainError::io(&self.path, e))?;
        self.history.push(point);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), TrainError> {
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

/// `eval.jsonl` and what the run reports of its evaluations.
struct EvalLog {
    path: PathBuf,
    /// The evaluation at the last step, once there is one.
    last_final: Option<crate::eval::suite::EvalReport>,
    /// Time spent evaluating (not training).
    seconds: f64,
}

impl EvalLog {
    /// Keeps the evaluations of the steps the checkpoint covers (a resume redoes the rest;
    /// lines this version cannot read are kept as they are) and re-announces them.
    fn restore(path: &Path, first: usize, total: usize, evaluating: bool, progress: &mut dyn Progress) -> Result<Self, TrainError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io(path, e)),
        };
        let step_of = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v["step"].as_u64());
        let kept: Vec<&str> = text.lines().filter(|l| step_of(l).is_none_or(|s| s as usize <= first)).collect();
        let last_final = kept.iter().rev().find_map(|l| serde_json::from_str::<crate::eval::suite::EvalReport>(l).ok()).filter(|r| r.step == total);
        if evaluating || !kept.is_empty() {
            let body: String = kept.iter().map(|l| format!("{l}\n")).collect();
            write_atomic(path, body.as_bytes())?;
        }
        for report in kept.iter().filter_map(|l| serde_json::from_str::<crate::eval::suite::EvalReport>(l).ok()) {
            progress.evaluated(&report);
        }
        Ok(Self { path: path.to_path_buf(), last_final, seconds: 0.0 })
    }

    /// Appends a finished evaluation.
    fn record(&mut self, report: crate::eval::suite::EvalReport, progress: &mut dyn Progress) -> Result<(), TrainError> {
        let line = serde_json::to_string(&report).expect("report serialises");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| TrainError::io(&self.path, e))?;
        writeln!(f, "{line}").map_err(|e| TrainError::io(&self.path, e))?;
        progress.evaluated(&report);
        self.seconds += report.seconds;
        self.last_final = Some(report);
        Ok(())
    }
}

/// Trains from the trainer's step to `cfg.train.steps`: batches from the loader thread,
/// gradients exchanged over the group, a metrics record per step, evaluations when due (rank
/// 0; the others wait at a barrier) and periodic checkpoints. Returns the samples trained on
/// and the seconds from the loader's start to the last checkpoint.
#[allow(clippy::too_many_arguments)]
fn train_loop(
    cfg: &TrainConfig,
    files: &RunFiles,
    trainer: &mut Trainer,
    group: &mut dyn crate::collective::Collective,
    progress: &mut dyn Progress,
    metrics: &mut MetricsLog,
    evaluator: Option<&crate::eval::suite::Evaluator>,
    evals: &mut EvalLog,
) -> Result<(usize, f64), TrainError> {
    let (rank, world, total) = (group.rank(), group.world(), cfg.train.steps);
    let lead = rank == 0;
    let spec = BatchSpec::new(cfg, rank, world).map_err(|e| TrainError::Data(e.to_string()))?;
    let loader = Loader::start(spec, trainer.step, total);
    let t0 = Instant::now();
    let mut trained_samples = 0usize;
    while trainer.step < total {
        let (point, samples) = train_step(cfg, trainer, &loader, group)?;
        trained_samples += samples;
        metrics.push(point.clone())?;
        progress.step(&point, total);
        if stop_agreed(group, progress)? {
            metrics.flush()?;
            if lead {
                files.checkpoint(trainer, progress)?;
            }
            // nobody leaves before the checkpoint is on disk: a rank's exit report requeues
            // the job, and the requeue would stop rank 0 mid-write
            if world > 1 {
                group.barrier(std::time::Duration::from_secs(600)).map_err(TrainError::Collective)?;
            }
            progress.message(&format!("rank {rank}: asked to stop; the group stops after step {} (checkpoint {})", trainer.step, if lead { "written" } else { "by rank 0" }));
            return Err(TrainError::Preempted { step: trainer.step });
        }
        if let Some(ev) = evaluator.filter(|_| cfg.eval.due(trainer.step, total)) {
            metrics.flush()?;
            // rank 0 checkpoints first (a failed evaluation must not cost training) and
            // publishes after, so a resume elsewhere has this step's evaluation too
            if lead {
                files.save(trainer, progress)?;
                progress.message(&format!("evaluating at step {} ({} samples over {} rank(s))", trainer.step, cfg.eval.samples, world));
            }
            let recorded = evaluate(files, trainer, ev, group, progress, evals);
            if lead {
                files.publish(trainer.step, progress);
            }
            if !recorded? {
                continue;
            }
        }
        let every = cfg.train.checkpoint_every;
        if lead && every > 0 && trainer.step % every == 0 && trainer.step < total {
            metrics.flush()?;
            files.checkpoint(trainer, progress)?;
        }
    }
    metrics.flush()?;
    if lead {
        files.checkpoint(trainer, progress)?;
    }
    Ok((trained_samples, t0.elapsed().as_secs_f64()))
}

/// Whether the group stops now: any rank asked to (one float summed over the ranks after
/// every step, so all stop after the same step).
fn stop_agreed(group: &mut dyn crate::collective::Collective, progress: &mut dyn Progress) -> Result<bool, TrainError> {
    let mine = progress.stop_requested();
    if group.world() <= 1 {
        return Ok(mine);
    }
    let mut flag = [if mine { 1.0f32 } else { 0.0 }];
    group.all_reduce_sum(&mut flag).map_err(TrainError::Collective)?;
    Ok(flag[0] > 0.0)
}

/// One optimizer step on the next batch, with its gradients averaged over the group: its
/// metrics record and the samples the group trained on.
fn train_step(cfg: &TrainConfig, trainer: &mut Trainer, loader: &Loader, group: &mut dyn crate::collective::Collective) -> Result<(MetricPoint, usize), TrainError> {
    let world = group.world();
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
    Ok((point, batch.size * world))
}

/// The group's evaluation at the current step (rank 0 has checkpointed it): every rank
/// samples its share, rank 0 records the
/// report and the per-image numbers. A failed evaluation is reported and training goes on
/// (false); a broken group fails the run.
fn evaluate(
    files: &RunFiles,
    trainer: &Trainer,
    ev: &crate::eval::suite::Evaluator,
    group: &mut dyn crate::collective::Collective,
    progress: &mut dyn Progress,
    evals: &mut EvalLog,
) -> Result<bool, TrainError> {
    let lead = group.rank() == 0;
    progress.phase("evaluating");
    // long evaluations say how far they are, about every tenth of this rank's images
    let mut next = 0.1;
    let result = ev.evaluate_in_with(trainer, group, &mut |done, total| {
        let f = done as f64 / total.max(1) as f64;
        if lead && total >= 256 && f >= next && done < total {
            progress.message(&format!("evaluating: {done}/{total} images of this rank"));
            next = (f * 10.0).floor() / 10.0 + 0.1;
        }
    });
    progress.phase("training");
    let report = match result {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(true), // another rank records it
        Err(TrainError::Collective(e)) => return Err(TrainError::Collective(e)),
        Err(e) => {
            progress.message(&format!("evaluation at step {} failed, training goes on: {e}", trainer.step));
            return Ok(false);
        }
    };
    progress.message(&format!("step {}: {} ({:.0}s)", report.step, report.summary(), report.seconds));
    if let Some(samples) = &report.samples {
        // the per-image numbers of the latest evaluation, for intervals between runs
        let p = files.out.join(crate::eval::bootstrap::SAMPLES_FILE);
        if let Err(e) = samples.save(&p) {
            progress.message(&format!("could not save {}: {e}", p.display()));
        }
    }
    evals.record(report, progress)?;
    Ok(true)
}

/// The sample grid and its prompts at the end of a run.
fn write_samples(cfg: &TrainConfig, out: &Path, trainer: &Trainer, progress: &mut dyn Progress) -> Result<(), TrainError> {
    progress.message("sampling");
    progress.phase("sampling");
    let prompts = sample_prompts(cfg, cfg.sample.count);
    let imgs = trainer.sample(&prompts, cfg.sample.seed, cfg.sample.steps, cfg.sample.guidance)?;
    let (n, s) = (prompts.len(), cfg.latent.image_size);
    let flat = imgs.flatten_all()?.to_vec1::<f32>()?;
    let png = out.join("samples.png");
    crate::sample::grid::write_grid(&png, &flat, n, s, 4, (128 / s).max(1)).map_err(|e| TrainError::io(&png, e))?;
    let txt: String = prompts.iter().enumerate().map(|(i, p)| format!("{i}: {p}\n")).collect();
    write_atomic(&out.join("samples.txt"), txt.as_bytes())
}
