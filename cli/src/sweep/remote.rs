//! Sweeps through a remote coordinator: `ablate sweep submit <file>` (validated and expanded
//! here, stored there all or none; what follows, `lifecycle`), `ablate watch <sweep id>` (the live display of `ablate
//! run`), `ablate results <sweep id>`.

use ablate_proto::auth::Authed;
use ablate_proto::v1::{self, job_service_client::JobServiceClient, JobState};
use std::path::PathBuf;
use std::time::Duration;

use super::iso::Series;
use ablate_trainer::eval::bootstrap::EvalSamples;
use super::results;
use std::collections::HashMap;
use super::api::{client, sweep_jobs};
use super::display::Display;
use super::spec::Sweep;

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// The sweep file (docs/sweeps.md).
    file: PathBuf,
    /// Step budget of every job, overriding the file's.
    #[arg(long)]
    steps: Option<usize>,
    /// The coordinator's URL (several, comma-separated, for coordinators sharing an etcd store).
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// Print the sweep as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum SweepCmd {
    /// Submit every arm x seed of a sweep file to a coordinator.
    Submit(SubmitArgs),
    /// Grow a submitted sweep from its file: new arms and seeds are added, a larger `steps`
    /// extends every job from its checkpoint; a changed arm is refused.
    Grow(super::lifecycle::GrowArgs),
    /// Cancel every job of a sweep that has not ended.
    Cancel(super::lifecycle::SweepIdArgs),
    /// Queue a sweep's failed and cancelled jobs again.
    Retry(super::lifecycle::SweepIdArgs),
    /// The sweeps of a coordinator, with their jobs by state and their arms.
    List(super::lifecycle::ListArgs),
}


pub fn sweep(cmd: SweepCmd) -> anyhow::Result<()> {
    let a = match cmd {
        SweepCmd::Submit(a) => a,
        SweepCmd::Grow(a) => return super::lifecycle::grow(a),
        SweepCmd::Cancel(a) => return super::lifecycle::cancel(a),
        SweepCmd::Retry(a) => return super::lifecycle::retry(a),
        SweepCmd::List(a) => return super::lifecycle::list(a),
    };
    let mut s = Sweep::load(&a.file)?;
    if let Some(n) = a.steps {
        anyhow::ensure!(n > 0, "--steps must be positive");
        for j in &mut s.jobs {
            j.config.train.steps = n;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let jobs = s
            .jobs
            .iter()
            .map(|j| v1::SubmitJobRequest { config_toml: j.config.to_toml(), name: j.id.clone(), world_size: s.world_size, priority: s.priority, sweep: String::new(), arm: j.arm.clone(), baseline_arm: j.baseline.clone() })
            .collect();
        let r = client(&a.coordinator).await?.submit_sweep(v1::SubmitSweepRequest { name: s.name.clone(), jobs }).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?.into_inner();
        if a.json {
            println!("{}", serde_json::json!({"sweep": r.sweep, "jobs": r.jobs.iter().map(|j| serde_json::json!({"id": j.id, "arm": j.arm, "name": j.name})).collect::<Vec<_>>()}));
        } else {
            println!("submitted sweep {} ({}): {} job(s); follow it with `ablate watch {}`", r.sweep, s.name, r.jobs.len(), r.sweep);
        }
        Ok(())
    })
}


/// Arms in submission order, and (arm, job) pairs.
fn arms_of(jobs: &[v1::Job]) -> (Vec<String>, Vec<(String, v1::Job)>) {
    let mut arms: Vec<String> = Vec::new();
    for j in jobs {
        if !arms.contains(&j.arm) {
            arms.push(j.arm.clone());
        }
    }
    (arms, jobs.iter().map(|j| (j.arm.clone(), j.clone())).collect())
}

/// `ablate watch s000001`: the live display until every job ended.
pub fn watch(id: &str, coordinator: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut c = client(coordinator).await?;
        let first = sweep_jobs(&mut c, id).await?;
        let mut display = Display::new(first.iter().map(|j| j.name.len()).max().unwrap_or(8));
        loop {
            let jobs = sweep_jobs(&mut c, id).await?;
            let mut lines = Vec::new();
            for j in &jobs {
                let last = c.get_metrics(v1::GetMetricsRequest { id: j.id.clone(), from_step: j.step.saturating_sub(1) }).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?.into_inner().points.pop();
                lines.push(display.line(&j.name, j, last.as_ref()));
            }
            let done = jobs.iter().all(|j| j.state().is_terminal());
            display.draw(&lines, done);
            if done {
                let (arms, pairs) = arms_of(&jobs);
                let samples = samples_of(&mut c, &jobs).await?;
                let mut rows = results::rows(&arms, &pairs);
                results::add_intervals(&mut rows, &pairs, &|j| samples.get(&j.id).cloned());
                print!("{}", results::text(&rows, "table"));
                anyhow::ensure!(jobs.iter().all(|j| j.state() == JobState::Succeeded), "some jobs of sweep {id} did not succeed");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Every job's metric points and evaluations from the coordinator.
async fn series_of(c: &mut JobServiceClient<Authed>, jobs: &[v1::Job]) -> anyhow::Result<HashMap<String, Series>> {
    let mut all = HashMap::new();
    for j in jobs {
        let r = c.get_metrics(v1::GetMetricsRequest { id: j.id.clone(), from_step: 0 }).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?.into_inner();
        all.insert(j.id.clone(), Series { points: r.points, evals: r.evals });
    }
    Ok(all)
}

/// The per-image data of every succeeded job's final evaluation, by job id, as the
/// coordinator kept it (jobs without any are left out).
async fn samples_of(c: &mut JobServiceClient<Authed>, jobs: &[v1::Job]) -> anyhow::Result<HashMap<String, EvalSamples>> {
    let mut all = HashMap::new();
    for j in jobs.iter().filter(|j| j.state() == JobState::Succeeded) {
        match c.get_eval_samples(v1::GetEvalSamplesRequest { id: j.id.clone() }).await {
            Ok(r) => {
                let s = ablate_worker::evalwire::samples_from_wire(&r.into_inner()).map_err(|e| anyhow::anyhow!("job {}: {e}", j.id))?;
                all.insert(j.id.clone(), s);
            }
            Err(e) if e.code() == tonic::Code::NotFound => {}
            Err(e) => anyhow::bail!("per-image evaluation data of job {}: {}", j.id, e.message()),
        }
    }
    Ok(all)
}

/// A remote sweep as `ablate results` reads it: its arms in order, its jobs (arm, job), every
/// job's history and the per-image data of every final evaluation.
pub struct Remote {
    pub arms: Vec<String>,
    pub jobs: Vec<(String, v1::Job)>,
    pub series: HashMap<String, Series>,
    pub samples: HashMap<String, EvalSamples>,
}

pub fn fetch(id: &str, coordinator: &str) -> anyhow::Result<Remote> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut c = client(coordinator).await?;
        let jobs = sweep_jobs(&mut c, id).await?;
        anyhow::ensure!(!jobs.is_empty(), "sweep {id} has no jobs on {coordinator}");
        let series = series_of(&mut c, &jobs).await?;
        let samples = samples_of(&mut c, &jobs).await?;
        let (arms, pairs) = arms_of(&jobs);
        Ok(Remote { arms, jobs: pairs, series, samples })
    })
}

/// `ablate results s000001 --coordinator URL`: the table from what the coordinator keeps
/// (results, histories, per-image data), with no worker's directory needed.
pub fn results(id: &str, coordinator: &str, format: &str, step: Option<u64>) -> anyhow::Result<()> {
    let r = fetch(id, coordinator)?;
    results::print_sweep(&r.arms, &r.jobs, &r.series, &r.samples, format, step)
}

/// Whether `s` is a sweep id of a coordinator (s000001), as opposed to a folder.
pub fn is_sweep_id(s: &str) -> bool {
    s.len() > 1 && s.starts_with('s') && s[1..].chars().all(|c| c.is_ascii_digit())
}
