//! The rank process: what `ablate rank` runs, one per rank, launched by the worker. It
//! joins the group through the coordinator's rendezvous, trains with
//! `ablate_trainer::run::run_distributed` on its shard, and reports on stdout
//! ([`crate::events`]). Rank 0 owns the job directory; rank r > 0 works in `rank-r/`.
//!
//! SIGTERM asks the rank to stop: its group agrees on the step (every rank stops after the
//! same one), rank 0 checkpoints there, and the rank reports a retryable "preempted"
//! failure, so the job is placed again at once and resumes from that checkpoint. A second
//! SIGTERM, 3 s or more after the first, ends the process at once (one sooner is the same
//! request twice: Slurm signals the rank and its agent, which forwards its own).
//!
//! The gradient exchange ([`Backend`]): NCCL for a CUDA rank of a `--features nccl` build,
//! the TCP ring otherwise; `ABLATE_COLLECTIVE=ring|nccl` overrides the choice (every rank of
//! a job must make the same one: the rendezvous refuses a mixed group).

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ablate_trainer::run::{MetricPoint, Progress, RunOptions};
use ablate_trainer::TrainConfig;

use ablate_trainer::collective::Collective;
use candle_core::Device;

use crate::collective::rendezvous::RendezvousRing;
use crate::events::{Event, Outcome};
use crate::journal::Kind;

#[derive(Debug, Clone)]
pub struct RankArgs {
    pub coordinator: String,
    /// The worker's token and the group's secret (from the agent, through the environment).
    pub credentials: crate::collective::rendezvous::Credentials,
    pub job: String,
    pub generation: u64,
    pub rank: usize,
    pub world: usize,
    pub config: PathBuf,
    /// The job directory (rank 0 writes here).
    pub job_dir: PathBuf,
    pub device: String,
    pub advertise_host: String,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
    /// This job's folder in the shared checkpoint store (rank 0 uses it).
    pub checkpoint_store: Option<ablate_trainer::ckpt_store::CheckpointStore>,
}

/// Events to the agent (stdout), messages to the log (stderr), and the rank's own journal.
struct Reporter {
    journal: crate::journal::Journal,
    /// Steps done so far (for the journal's end entry).
    last_step: usize,
}

/// Set by SIGTERM.
static STOP: AtomicBool = AtomicBool::new(false);
/// When the first SIGTERM came (CLOCK_MONOTONIC milliseconds).
static FIRST_TERM_MS: AtomicU64 = AtomicU64::new(0);
/// A second SIGTERM this soon after the first is the same request arriving twice: a batch
/// system (Slurm) signals every process of a job step, the rank and its agent alike, and the
/// agent then forwards its own.
const SAME_REQUEST_MS: u64 = 3000;

fn monotonic_ms() -> u64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe and writes only the timespec given
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

extern "C" fn on_sigterm(_: libc::c_int) {
    // only async-signal-safe calls in here
    let now = monotonic_ms().max(1);
    if !STOP.swap(true, Ordering::SeqCst) {
        FIRST_TERM_MS.store(now, Ordering::SeqCst);
    } else if now.saturating_sub(FIRST_TERM_MS.load(Ordering::SeqCst)) >= SAME_REQUEST_MS {
        // a second request: no more waiting
        // SAFETY: _exit is async-signal-safe and ends the process without unwinding
        unsafe { libc::_exit(143) };
    }
}

/// Routes SIGTERM to [`STOP`] (the first) and to an immediate exit (a second one, 3 s or
/// more after the first).
fn stop_on_sigterm() {
    // SAFETY: the handler only touches an atomic and calls _exit, both async-signal-safe
    unsafe {
        libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
    }
}

fn emit(e: &Event) {
    let mut out = std::io::stdout().lock();
    // the agent reads these lines: without it nobody supervises this rank, so stop
    if writeln!(out, "{}", e.line()).and_then(|_| out.flush()).is_err() {
        eprintln!("the worker agent is gone (stdout closed): stopping");
        std::process::exit(3);
    }
}

impl Progress for Reporter {
    fn started(&mut self, first_step: usize, total: usize, params: usize) {
        self.last_step = first_step;
        self.journal.record(Kind::Started, first_step);
        emit(&Event::Started { first_step, total, params });
    }
    fn step(&mut self, point: &MetricPoint, _total: usize) {
        self.last_step = point.step + 1;
        self.journal.record(Kind::Step, self.last_step);
        emit(&Event::Step { point: point.clone() });
    }
    fn checkpoint_begun(&mut self, step: usize) {
        self.journal.record(Kind::CheckpointBegun, step);
    }
    fn checkpoint_saved(&mut self, step: usize, _published: bool) {
        self.journal.record(Kind::CheckpointSaved, step);
    }
    fn message(&mut self, msg: &str) {
        eprintln!("{msg}");
    }
    fn phase(&mut self, name: &str) {
        emit(&Event::Phase { name: name.to_string() });
    }
    fn evaluated(&mut self, report: &ablate_trainer::eval::suite::EvalReport) {
        emit(&Event::Evaluated { report: report.clone() });
    }
    fn stop_requested(&mut self) -> bool {
        STOP.load(Ordering::SeqCst)
    }
}

/// Runs the rank to its end. Returns the process exit code (0: done).
pub fn main(a: &RankArgs) -> i32 {
    stop_on_sigterm();
    // fencing: stop at once when this worker's lease with the coordinator ends
    if let Some(p) = std::env::var_os(crate::lease::ENV) {
        crate::lease::watch(p.into(), Duration::from_secs(5));
    }
    let _ = std::fs::create_dir_all(&a.job_dir);
    let mut reporter = Reporter { journal: crate::journal::Journal::open(&a.job_dir, a.generation, a.rank), last_step: 0 };
    let outcome = run(a, &mut reporter);
    reporter.journal.record(Kind::Ended, reporter.last_step);
    match outcome {
        Ok(o) => {
            emit(&Event::Done(o));
            0
        }
        Err((reason, retryable)) => {
            eprintln!("rank {} failed: {reason}", a.rank);
            emit(&Event::Failed { reason, retryable });
            1
        }
    }
}

/// Err: (reason, retryable).
fn run(a: &RankArgs, reporter: &mut Reporter) -> Result<Outcome, (String, bool)> {
    let cfg = TrainConfig::load(&a.config).map_err(|e| (e.to_string(), false))?;
    let device = ablate_trainer::device::open(&a.device).map_err(|e| (e.to_string(), false))?;
    let out = if a.rank == 0 { a.job_dir.clone() } else { a.job_dir.join(format!("rank-{}", a.rank)) };
    let backend = Backend::choose(std::env::var("ABLATE_COLLECTIVE").ok().as_deref(), &device).map_err(|e| (e, false))?;
    let mut group = group(a, backend, &device).map_err(|e| (e, false))?;
    // the job's own checkpoint store, else the worker's (rank 0 publishes and restores)
    let keep = a.checkpoint_store.as_ref().map_or(3, |s| s.keep);
    let store = match cfg.train.checkpoint_store.as_deref().filter(|_| a.rank == 0) {
        Some(spec) => Some(crate::s3::open(&crate::s3::for_job(spec, &a.job), keep).map_err(|e| (format!("train.checkpoint_store: {e}"), false))?),
        None => a.checkpoint_store.clone(),
    };
    // a restarted generation continues from rank 0's checkpoint
    let opts = RunOptions { out, resume: true, samples: a.rank == 0, eval_cache: std::env::var_os(ablate_trainer::run::EVAL_CACHE_ENV).map(PathBuf::from), checkpoint_store: store };
    eprintln!("rank {}/{} of job {} (generation {}) on {}, gradients over {}", a.rank, a.world, a.job, a.generation, a.device, backend.label());
    let s = ablate_trainer::run::run_distributed(cfg, &opts, &device, reporter, group.as_mut()).map_err(|e| {
        // the group broke (a peer died, a deadline passed) or was asked to stop: a restart
        // can help; the rest (non-finite loss, config, data, files) would happen again
        let retryable = matches!(e, ablate_trainer::TrainError::Collective(_) | ablate_trainer::TrainError::Preempted { .. });
        (e.to_string(), retryable)
    })?;
    Ok(Outcome {
        steps: s.steps,
        checksum: s.checksum,
        final_loss: s.mean_loss_last50,
        samples_per_sec: s.samples_per_sec,
        wall_seconds: s.wall_seconds,
        eval: s.final_eval,
    })
}

/// How a rank exchanges gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Ring,
    Nccl,
}

impl Backend {
    /// `wanted`: `ABLATE_COLLECTIVE` (`ring`, `nccl`, or unset/empty for the default).
    pub fn choose(wanted: Option<&str>, device: &Device) -> Result<Self, String> {
        let nccl_built = cfg!(feature = "nccl");
        match wanted.map(str::trim).filter(|w| !w.is_empty()) {
            None => Ok(if device.is_cuda() && nccl_built { Self::Nccl } else { Self::Ring }),
            Some("ring") => Ok(Self::Ring),
            Some("nccl") if !nccl_built => Err("ABLATE_COLLECTIVE=nccl, but this ablate was built without NCCL (build it with deploy/cuda/build.sh)".into()),
            Some("nccl") if !device.is_cuda() => Err(format!("ABLATE_COLLECTIVE=nccl needs a CUDA rank; this one runs on {device:?}")),
            Some("nccl") => Ok(Self::Nccl),
            Some(other) => Err(format!("ABLATE_COLLECTIVE={other:?}: expected ring or nccl")),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Ring => "the TCP ring",
            Self::Nccl => "NCCL",
        }
    }
}

fn group(a: &RankArgs, backend: Backend, device: &Device) -> Result<Box<dyn Collective>, String> {
    match backend {
        Backend::Ring => Ok(Box::new(RendezvousRing::new(a.coordinator.clone(), a.credentials.clone(), a.job.clone(), a.generation, a.rank, a.world, a.advertise_host.clone(), a.rendezvous_timeout, a.collective_timeout))),
        #[cfg(feature = "nccl")]
        Backend::Nccl => crate::collective::nccl::NcclGroup::new(a.coordinator.clone(), a.credentials.clone(), a.job.clone(), a.generation, a.rank, a.world, device, a.rendezvous_timeout, a.collective_timeout)
            .map(|g| Box::new(g) as Box<dyn Collective>)
            .map_err(|e| e.to_string()),
        #[cfg(not(feature = "nccl"))]
        Backend::Nccl => unreachable!("Backend::choose({device:?}) never picks NCCL without the nccl feature"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ranks_use_the_ring_and_bad_choices_are_named() {
        assert_eq!(Backend::choose(None, &Device::Cpu), Ok(Backend::Ring));
        assert_eq!(Backend::choose(Some(""), &Device::Cpu), Ok(Backend::Ring));
        assert_eq!(Backend::choose(Some("ring"), &Device::Cpu), Ok(Backend::Ring));
        let e = Backend::choose(Some("nccl"), &Device::Cpu).unwrap_err();
        assert!(e.contains(if cfg!(feature = "nccl") { "needs a CUDA rank" } else { "built without NCCL" }), "{e}");
        assert!(Backend::choose(Some("gloo"), &Device::Cpu).unwrap_err().contains("expected ring or nccl"));
    }
}
