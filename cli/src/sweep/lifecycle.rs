//! A sweep's life on a coordinator after its submission: `ablate sweep grow ID FILE` (the
//! file's new arms and seeds are added, a larger step budget extends every job from its
//! checkpoint, a changed arm is refused: the rules of `grow`), `ablate sweep cancel ID`,
//! `ablate sweep retry ID` (its failed and cancelled jobs again) and `ablate sweep list`.

use ablate_proto::v1::{self, JobState};
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::grow::{self, Existing};
use super::api::{client, sweep_jobs};
use super::spec::Sweep;

#[derive(clap::Args)]
pub struct GrowArgs {
    /// The sweep id (s000001).
    sweep: String,
    /// The sweep file, grown: new arms or seeds, or a larger `steps`.
    file: PathBuf,
    /// Step budget of every job, overriding the file's.
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
}

#[derive(clap::Args)]
pub struct SweepIdArgs {
    /// The sweep id (s000001).
    sweep: String,
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// One JSON object per sweep.
    #[arg(long)]
    json: bool,
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

pub fn grow(a: GrowArgs) -> anyhow::Result<()> {
    let mut s = Sweep::load(&a.file)?;
    if let Some(n) = a.steps {
        anyhow::ensure!(n > 0, "--steps must be positive");
        for j in &mut s.jobs {
            j.config.train.steps = n;
        }
    }
    rt()?.block_on(async {
        let mut c = client(&a.coordinator).await?;
        let jobs = sweep_jobs(&mut c, &a.sweep).await?;
        let existing: Vec<Existing> = jobs.iter().map(|j| Existing { id: j.name.clone(), job: j.id.clone(), config_toml: j.config_toml.clone() }).collect();
        let g = grow::plan(&existing, &s, &a.sweep)?;
        if g.is_empty() {
            println!("sweep {}: nothing to grow ({} job(s) as they were)", a.sweep, g.kept);
            return Ok(());
        }
        for (job, j, _) in &g.extended {
            c.extend_job(v1::ExtendJobRequest { id: job.clone(), config_toml: j.config.to_toml() }).await.map_err(status)?;
        }
        for j in &g.added {
            let req = v1::SubmitJobRequest { config_toml: j.config.to_toml(), name: j.id.clone(), world_size: s.world_size, priority: s.priority, sweep: a.sweep.clone(), arm: j.arm.clone(), baseline_arm: j.baseline.clone() };
            c.submit_job(req).await.map_err(status)?;
        }
        println!("sweep {} grows: {}; follow it with `ablate watch {}`", a.sweep, g.summary(), a.sweep);
        Ok(())
    })
}

pub fn cancel(a: SweepIdArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let mut c = client(&a.coordinator).await?;
        let mut n = 0;
        for j in sweep_jobs(&mut c, &a.sweep).await?.iter().filter(|j| !j.state().is_terminal()) {
            c.cancel_job(v1::CancelJobRequest { id: j.id.clone(), reason: format!("sweep {} cancelled", a.sweep) }).await.map_err(status)?;
            n += 1;
        }
        println!("sweep {}: {n} job(s) cancelled (their ranks stop at a common step with a checkpoint)", a.sweep);
        Ok(())
    })
}

pub fn retry(a: SweepIdArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let mut c = client(&a.coordinator).await?;
        let mut n = 0;
        for j in sweep_jobs(&mut c, &a.sweep).await?.iter().filter(|j| matches!(j.state(), JobState::Failed | JobState::Cancelled)) {
            c.retry_job(v1::RetryJobRequest { id: j.id.clone() }).await.map_err(status)?;
            n += 1;
        }
        println!("sweep {}: {n} failed or cancelled job(s) queued again", a.sweep);
        Ok(())
    })
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let mut c = client(&a.coordinator).await?;
        let (mut jobs, mut page_token) = (Vec::new(), String::new());
        loop {
            let r = c.list_jobs(v1::ListJobsRequest { states: vec![], sweep: String::new(), page_size: 0, page_token }).await.map_err(status)?.into_inner();
            jobs.extend(r.jobs);
            if r.next_page_token.is_empty() {
                break;
            }
            page_token = r.next_page_token;
        }
        // sweep -> (arms in order, count by state)
        let mut sweeps: BTreeMap<String, (Vec<String>, BTreeMap<&'static str, usize>, usize)> = BTreeMap::new();
        for j in jobs.iter().filter(|j| !j.sweep.is_empty()) {
            let e = sweeps.entry(j.sweep.clone()).or_default();
            if !e.0.contains(&j.arm) {
                e.0.push(j.arm.clone());
            }
            *e.1.entry(j.state().label()).or_default() += 1;
            e.2 += 1;
        }
        if a.json {
            for (id, (arms, states, n)) in &sweeps {
                println!("{}", serde_json::json!({"sweep": id, "jobs": n, "arms": arms, "states": states}));
            }
            return Ok(());
        }
        if sweeps.is_empty() {
            println!("no sweeps on {}", a.coordinator);
            return Ok(());
        }
        println!("{:<9} {:>5}  {:<40} arms", "sweep", "jobs", "states");
        for (id, (arms, states, n)) in &sweeps {
            let st = states.iter().map(|(s, k)| format!("{k} {s}")).collect::<Vec<_>>().join(", ");
            println!("{id:<9} {n:>5}  {st:<40} {}", arms.join(", "));
        }
        Ok(())
    })
}
