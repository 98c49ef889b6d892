//! The rank process: what `ablate rank` runs, one per rank, launched by the worker. It
//! joins the group through the coordinator's rendezvous, trains with
//! `ablate_trainer::run::run_distributed` on its shard, and reports on stdout
//! ([`crate::events`]). Rank 0 owns the job directory; rank r > 0 works in `rank-r/`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use ablate_trainer::run::{MetricPoint, Progress, RunOptions};
use ablate_trainer::TrainConfig;

use crate::collective::rendezvous::RendezvousRing;
use crate::events::{Event, Outcome};

#[derive(Debug, Clone)]
pub struct RankArgs {
    pub coordinator: String,
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
}

struct Reporter;

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
        emit(&Event::Started { first_step, total, params });
    }
    fn step(&mut self, point: &MetricPoint, _total: usize) {
        emit(&Event::Step { point: point.clone() });
    }
    fn message(&mut self, msg: &str) {
        eprintln!("{msg}");
    }
    fn phase(&mut self, name: &str) {
        emit(&Event::Phase { name: name.to_string() });
    }
    fn evaluated(&mut self, step: usize, report_json: &str) {
        emit(&Event::Evaluated { step, eval_json: report_json.to_string() });
    }
}

/// Runs the rank to its end. Returns the process exit code (0: done).
pub fn main(a: &RankArgs) -> i32 {
    match run(a) {
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
fn run(a: &RankArgs) -> Result<Outcome, (String, bool)> {
    let cfg = TrainConfig::load(&a.config).map_err(|e| (e.to_string(), false))?;
    let device = ablate_trainer::device::open(&a.device).map_err(|e| (e.to_string(), false))?;
    let out = if a.rank == 0 { a.job_dir.clone() } else { a.job_dir.join(format!("rank-{}", a.rank)) };
    let mut group = RendezvousRing::new(a.coordinator.clone(), a.job.clone(), a.generation, a.rank, a.world, a.advertise_host.clone(), a.rendezvous_timeout, a.collective_timeout);
    // a restarted generation continues from rank 0's checkpoint
    let opts = RunOptions { out, resume: true, samples: a.rank == 0 };
    eprintln!("rank {}/{} of job {} (generation {}) on {}", a.rank, a.world, a.job, a.generation, a.device);
    let s = ablate_trainer::run::run_distributed(cfg, &opts, &device, &mut Reporter, &mut group).map_err(|e| {
        // the group broke (a peer died, a deadline passed): a restart can help; the rest
        // (non-finite loss, config, data, files) would happen again
        let retryable = matches!(e, ablate_trainer::TrainError::Collective(_));
        (e.to_string(), retryable)
    })?;
    Ok(Outcome {
        steps: s.steps,
        checksum: s.checksum,
        final_loss: s.mean_loss_last50,
        samples_per_sec: s.samples_per_sec,
        wall_seconds: s.wall_seconds,
        eval_json: s.final_eval.as_ref().map(|r| serde_json::to_string(r).expect("report serialises")).unwrap_or_default(),
    })
}
