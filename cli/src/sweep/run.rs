//! `ablate run <sweep.toml>`: validates the sweep, starts an embedded coordinator (state in
//! `<out>/state/`) and N local CPU workers, submits every arm x seed as one job, shows one
//! progress line per job, then prints the results table and writes
//! `<out>/results.{json,md,csv}`. Ctrl-C stops cleanly; running the same command again
//! resumes: finished jobs stay finished, interrupted ones continue from their last
//! checkpoint. Running it again on a grown file (new arms or seeds, more steps) trains only
//! what is new (`grow`). `ablate results <out>` prints the table again.

use ablate_coordinator::domain::{JobId, JobSpec, JobState};
use ablate_coordinator::Core;
use ablate_proto::v1;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::display::Display;
use super::local::{data, fingerprint, jobs_of, local_rows, local_series, open_state, read_record, Record, RecordJob};
use super::results;
use super::spec::Sweep;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The sweep file (docs/sweeps.md).
    sweep: PathBuf,
    /// Local CPU workers (jobs run in parallel as slots allow).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Results, state and checkpoints (default: runs/<sweep name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run the failed (and cancelled) jobs of an earlier run in --out again.
    #[arg(long)]
    rerun_failed: bool,
    /// Step budget of every job, overriding the file's (for a quick smoke run).
    #[arg(long)]
    steps: Option<usize>,
}

#[derive(clap::Args)]
pub struct ResultsArgs {
    /// The --out folder of `ablate run`, or a sweep id (s000001) of --coordinator. Several:
    /// one table, the first sweep's baseline the reference (the others' baselines must be
    /// its run but for the seed).
    #[arg(required = true, num_args = 1..)]
    dirs: Vec<PathBuf>,
    #[arg(long, default_value = "table", value_parser = ["table", "markdown", "csv", "json"])]
    format: String,
    /// Where to look up a sweep id.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
    /// The table at this evaluation step instead of the final one (every run's evaluation at
    /// that step; intervals over the seeds; no iso-compute tables).
    #[arg(long)]
    step: Option<u64>,
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let mut sweep = Sweep::load(&a.sweep)?;
    if let Some(s) = a.steps {
        anyhow::ensure!(s > 0, "--steps must be positive");
        for j in &mut sweep.jobs {
            j.config.train.steps = s;
        }
    }
    anyhow::ensure!(a.workers > 0, "--workers must be at least 1");
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&sweep.name));
    std::fs::create_dir_all(out.join("configs")).with_context(|| format!("creating {}", out.display()))?;
    let fp = fingerprint(&sweep);
    let previous = read_record(&out)?;
    // a re-run on a changed file: checked whole before anything changes
    let growth = match &previous {
        Some(p) if p.fingerprint != fp => {
            if p.name != sweep.name {
                bail!("{} holds the sweep {:?}, not {:?}; choose another --out", out.display(), p.name, sweep.name);
            }
            Some(super::grow::plan(&super::grow::recorded(p, &out)?, &sweep, &out.display().to_string())?)
        }
        _ => None,
    };
    for j in &sweep.jobs {
        std::fs::write(out.join("configs").join(format!("{}.toml", j.id)), j.config.to_toml())?;
    }
    // (re-running from the copy itself must not truncate it)
    let copy = out.join("sweep.toml");
    if std::fs::canonicalize(&a.sweep).ok() != std::fs::canonicalize(&copy).ok() {
        std::fs::copy(&a.sweep, &copy).with_context(|| format!("copying {}", a.sweep.display()))?;
    }
    println!(
        "sweep {}: {} arm(s) x {} seed(s) = {} job(s) of world size {}, {} local worker(s); results in {}",
        sweep.name,
        sweep.arms.len(),
        sweep.jobs.len() / sweep.arms.len().max(1),
        sweep.jobs.len(),
        sweep.world_size,
        a.workers,
        out.display()
    );
    if !sweep.description.is_empty() {
        println!("  {}", sweep.description);
    }
    for arm in &sweep.arms {
        let what = if arm.overrides.is_empty() { String::new() } else { arm.overrides.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ") };
        println!("  {:<24} {}{}", arm.name, what, if arm.description.is_empty() { String::new() } else { format!("  ({})", arm.description) });
    }
    let core = open_state(&out)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exe = std::env::current_exe().context("locating the ablate binary to start ranks")?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    rt.block_on(async move {
        let stop = CancellationToken::new();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", grpc.local_addr()?);
        let server = tokio::spawn(ablate_coordinator::server::serve(core.clone(), ablate_coordinator::server::Listeners { grpc, metrics: None, tls: None, metrics_token: None }, stop.clone()));
        let mut agents = Vec::new();
        for i in 0..a.workers {
            let worker_id = format!("local-{i}");
            let cfg = ablate_worker::agent::AgentConfig {
                coordinator: url.clone(),
                // a token of this process only: the embedded coordinator listens on loopback
                // and forgets it at exit
                token: Some(core.auth.ephemeral(&worker_id, ablate_coordinator::auth::Role::Worker, Some(&worker_id))),
                worker_id,
                // the user's own machine and sweep file: nothing to confine
                data_roots: Vec::new(),
                advertise_host: "127.0.0.1".into(),
                devices: ablate_worker::agent::parse_devices("cpu:1")?,
                labels: Default::default(),
                // shared by the local workers: an interrupted job resumes on any of them
                work_dir: out.join("work"),
                rank_command: vec![exe.display().to_string(), "rank".into()],
                stuck_after: Duration::from_secs(3600),
                rendezvous_timeout: Duration::from_secs(120),
                collective_timeout: Duration::from_secs(120),
                drain_timeout: Duration::from_secs(120),
                threads_per_rank: (cores / a.workers).max(1),
                // the work folder is shared already
                checkpoint_store: None,
                checkpoint_keep: 1,
                // agents and coordinator live in this one process: nothing can part them
                fence: false,
            };
            agents.push(tokio::spawn(ablate_worker::agent::run(cfg, stop.clone())));
        }
        let record = match previous {
            Some(mut rec) => {
                if let Some(g) = growth.as_ref().filter(|g| !g.is_empty()) {
                    println!("growing the sweep in {}: {}", out.display(), g.summary());
                    for (job, j, _) in &g.extended {
                        core.extend(&JobId(job.clone()), j.config.to_toml())?;
                    }
                    for j in &g.added {
                        let spec = JobSpec { config_toml: j.config.to_toml(), name: j.id.clone(), world_size: sweep.world_size, priority: sweep.priority, sweep: Some(ablate_coordinator::domain::SweepId(rec.sweep_id.clone())), arm: j.arm.clone(), baseline_arm: j.baseline.clone(), owner: String::new() };
                        let job = core.submit(spec)?;
                        rec.jobs.push(RecordJob { id: j.id.clone(), arm: j.arm.clone(), seed: j.seed, job: job.id.0, hidden: false });
                    }
                }
                for r in &mut rec.jobs {
                    r.hidden = !sweep.jobs.iter().any(|j| j.id == r.id);
                    let id = JobId(r.job.clone());
                    // a job the file dropped takes no slot (--rerun-failed brings it back with the file)
                    if r.hidden && !core.get(&id)?.state.is_terminal() {
                        core.cancel(&id, "no longer in the sweep file")?;
                    }
                }
                rec.fingerprint = fp;
                if a.rerun_failed {
                    for j in &rec.jobs {
                        let id = JobId(j.job.clone());
                        if matches!(core.get(&id)?.state, JobState::Failed | JobState::Cancelled) {
                            core.retry(&id)?;
                        }
                    }
                }
                rec.arms = sweep.arms.iter().map(|x| x.name.clone()).collect();
                ablate_trainer::fsutil::write_durable(&out.join("sweep.json"), serde_json::to_string_pretty(&rec)?.as_bytes())?;
                rec
            }
            None => {
                let reqs = sweep
                    .jobs
                    .iter()
                    .map(|j| JobSpec { config_toml: j.config.to_toml(), name: j.id.clone(), world_size: sweep.world_size, priority: sweep.priority, sweep: None, arm: j.arm.clone(), baseline_arm: j.baseline.clone(), owner: String::new() })
                    .collect();
                let (sweep_id, jobs) = core.submit_sweep(&sweep.name, reqs)?;
                let rec = Record {
                    name: sweep.name.clone(),
                    sweep_id: sweep_id.0,
                    fingerprint: fp,
                    arms: sweep.arms.iter().map(|x| x.name.clone()).collect(),
                    jobs: sweep.jobs.iter().zip(&jobs).map(|(s, j)| RecordJob { id: s.id.clone(), arm: s.arm.clone(), seed: s.seed, job: j.id.0.clone(), hidden: false }).collect(),
                };
                ablate_trainer::fsutil::write_durable(&out.join("sweep.json"), serde_json::to_string_pretty(&rec)?.as_bytes())?;
                rec
            }
        };
        let interrupted = progress(&core, &record).await?;
        stop.cancel();
        for h in agents {
            h.await??;
        }
        server.await??;
        let jobs = jobs_of(&core, &out, &record)?;
        report(&core, &out, &record, &jobs)?;
        if interrupted {
            println!("interrupted: run the same command again to continue (finished jobs are kept, the others resume from their checkpoints)");
        }
        Ok(())
    })
}

/// Redraws one line per job until every job ended (false) or Ctrl-C (true).
async fn progress(core: &Core, rec: &Record) -> anyhow::Result<bool> {
    let mut display = Display::new(rec.jobs.iter().map(|j| j.id.len()).max().unwrap_or(8));
    loop {
        let mut lines = Vec::new();
        let mut done = true;
        for j in rec.jobs.iter().filter(|j| !j.hidden) {
            let job = core.get(&JobId(j.job.clone()))?;
            let last = core.metrics(&job.id, job.step.saturating_sub(1))?.pop();
            done &= job.state.is_terminal();
            lines.push(display.line(&j.id, &job.into(), last.as_ref()));
        }
        display.draw(&lines, done);
        if done {
            return Ok(false);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                eprintln!("stopping: the ranks are stopped, their last checkpoints kept");
                return Ok(true);
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn report(core: &Core, out: &Path, rec: &Record, jobs: &[(String, v1::Job)]) -> anyhow::Result<()> {
    let d = data(core, out, rec, jobs.to_vec())?;
    let rows = &d.rows;
    println!();
    if let Some(p) = results::protocol(jobs) {
        println!("{p}");
    }
    print!("{}", results::text(rows, "table"));
    let write = |name: &str, text: String| ablate_trainer::fsutil::write_durable(&out.join(name), text.as_bytes());
    write("results.json", serde_json::to_string_pretty(&results::json(rows))?)?;
    write("results.md", results::text(rows, "markdown"))?;
    write("results.csv", results::text(rows, "csv"))?;
    super::report::write(&d, out)?;
    println!("wrote {}/results.json, results.md, results.csv, report.html", out.display());
    Ok(())
}

pub fn results_cmd(a: ResultsArgs) -> anyhow::Result<()> {
    if a.dirs.len() > 1 {
        return super::joined::results(&a.dirs, &a.coordinator, &a.format, a.step);
    }
    let dir = &a.dirs[0];
    if !dir.exists() {
        let id = dir.display().to_string();
        anyhow::ensure!(super::remote::is_sweep_id(&id), "{id} is neither a folder of `ablate run` nor a sweep id (s000001)");
        return super::remote::results(&id, &a.coordinator, &a.format, a.step);
    }
    let rec = read_record(dir)?.with_context(|| format!("{} holds no sweep (no sweep.json): pass the --out folder of `ablate run`", dir.display()))?;
    let core = open_state(dir)?;
    let jobs = jobs_of(&core, dir, &rec)?;
    let series = local_series(&core, dir, &jobs)?;
    if let Some(step) = a.step {
        let jobs = results::at_step(&jobs, &series, step)?;
        let mut rows = results::rows(&rec.arms, &jobs);
        results::add_intervals(&mut rows, &jobs, &|_| None);
        return results::print(&rows, &jobs, &a.format);
    }
    let rows = local_rows(dir, &rec, &jobs, &series);
    results::print(&rows, &jobs, &a.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress line shows the flow-matching MSE, not the total that REPA's negative
    /// cosine term pulls below zero.
    #[test]
    fn progress_line_shows_the_flow_matching_mse() {
        let job = v1::Job { id: "repa".into(), state: v1::JobState::Running as i32, step: 47, total_steps: 400, ..Default::default() };
        let point = v1::MetricPoint { step: 46, loss: -0.1592, mse: 0.2101, step_seconds: 0.25, ..Default::default() };
        let line = Display::new(8).line("repa", &job, Some(&point));
        assert!(line.contains("loss 0.2101"), "{line}");
        assert!(!line.contains("-0.1592"), "{line}");
        assert!(line.contains("47/400") && line.contains("ETA 1:28"), "{line}");
    }
}
