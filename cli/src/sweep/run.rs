//! `ablate run <sweep.toml>`: validates the sweep, starts an embedded coordinator (state in
//! `<out>/state/`) and N local CPU workers, submits every arm x seed as one job, shows one
//! progress line per job, then prints the results table and writes
//! `<out>/results.{json,md,csv}`. Ctrl-C stops cleanly; running the same command again
//! resumes: finished jobs stay finished, interrupted ones continue from their last
//! checkpoint. `ablate results <out>` prints the table again.

use ablate_coordinator::{store::redb::RedbStore, Core, Options};
use ablate_proto::v1::{self, JobState};
use anyhow::{bail, Context};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::iso::Series;
use super::results;
use super::spec::Sweep;
use std::collections::HashMap;

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
    /// The --out folder of `ablate run`, or a sweep id (s000001) of --coordinator.
    dir: PathBuf,
    #[arg(long, default_value = "table", value_parser = ["table", "markdown", "csv", "json"])]
    format: String,
    /// Where to look up a sweep id.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
}

/// What `<out>/sweep.json` records: which job runs which arm, and a fingerprint of the
/// resolved configs so a different file cannot resume into the same folder.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    name: String,
    sweep_id: String,
    fingerprint: String,
    arms: Vec<String>,
    jobs: Vec<RecordJob>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RecordJob {
    id: String,
    arm: String,
    seed: u64,
    job: String,
}

fn fingerprint(s: &Sweep) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for j in &s.jobs {
        for b in j.id.bytes().chain(j.config.to_toml().into_bytes()) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn open_state(out: &Path) -> anyhow::Result<Arc<Core>> {
    let path = out.join("state/coordinator.redb");
    let store = RedbStore::open(&path).map_err(|e| anyhow::anyhow!("{e} (is another `ablate run` using {}?)", out.display()))?;
    let opts = Options { heartbeat: Duration::from_millis(200), worker_expiry: Duration::from_secs(3), max_restarts: 1000, runs_dir: out.join("state/runs") };
    Ok(Arc::new(Core::open(Arc::new(store), opts)?))
}

fn read_record(out: &Path) -> anyhow::Result<Option<Record>> {
    let p = out.join("sweep.json");
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("{} is damaged", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn jobs_of(core: &Core, rec: &Record) -> anyhow::Result<Vec<(String, v1::Job)>> {
    rec.jobs.iter().map(|j| Ok((j.arm.clone(), core.get(&j.job)?))).collect()
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
    if let Some(p) = &previous {
        if p.fingerprint != fp {
            bail!("{} holds a run of a different sweep (or other --steps); choose another --out", out.display());
        }
    }
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
        let server = tokio::spawn(ablate_coordinator::server::serve(core.clone(), ablate_coordinator::server::Listeners { grpc, metrics: None }, stop.clone()));
        let mut agents = Vec::new();
        for i in 0..a.workers {
            let cfg = ablate_worker::agent::AgentConfig {
                coordinator: url.clone(),
                worker_id: format!("local-{i}"),
                advertise_host: "127.0.0.1".into(),
                devices: ablate_worker::agent::parse_devices("cpu:1")?,
                labels: Default::default(),
                // shared by the local workers: an interrupted job resumes on any of them
                work_dir: out.join("work"),
                rank_command: vec![exe.display().to_string(), "rank".into()],
                stuck_after: Duration::from_secs(3600),
                rendezvous_timeout: Duration::from_secs(120),
                collective_timeout: Duration::from_secs(120),
                threads_per_rank: (cores / a.workers).max(1),
            };
            agents.push(tokio::spawn(ablate_worker::agent::run(cfg, stop.clone())));
        }
        let record = match previous {
            Some(mut rec) => {
                if a.rerun_failed {
                    for j in &rec.jobs {
                        if matches!(core.get(&j.job)?.state(), JobState::Failed | JobState::Cancelled) {
                            core.retry(&j.job)?;
                        }
                    }
                }
                rec.arms = sweep.arms.iter().map(|x| x.name.clone()).collect();
                rec
            }
            None => {
                let reqs = sweep
                    .jobs
                    .iter()
                    .map(|j| v1::SubmitJobRequest { config_toml: j.config.to_toml(), name: j.id.clone(), world_size: sweep.world_size, priority: sweep.priority, sweep: String::new(), arm: j.arm.clone() })
                    .collect();
                let (sweep_id, jobs) = core.submit_sweep(v1::SubmitSweepRequest { name: sweep.name.clone(), jobs: reqs })?;
                let rec = Record {
                    name: sweep.name.clone(),
                    sweep_id,
                    fingerprint: fp,
                    arms: sweep.arms.iter().map(|x| x.name.clone()).collect(),
                    jobs: sweep.jobs.iter().zip(&jobs).map(|(s, j)| RecordJob { id: s.id.clone(), arm: s.arm.clone(), seed: s.seed, job: j.id.clone() }).collect(),
                };
                let tmp = out.join("sweep.json.tmp");
                std::fs::write(&tmp, serde_json::to_string_pretty(&rec)?)?;
                std::fs::rename(&tmp, out.join("sweep.json"))?;
                rec
            }
        };
        let interrupted = progress(&core, &record).await?;
        stop.cancel();
        for h in agents {
            h.await??;
        }
        server.await??;
        let jobs = jobs_of(&core, &record)?;
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
        for j in &rec.jobs {
            let job = core.get(&j.job)?;
            let last = core.metrics(&job.id, job.step.saturating_sub(1))?.pop();
            done &= job.state().is_terminal();
            lines.push(display.line(&j.id, &job, last.as_ref()));
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

/// The live progress display: one line per job, redrawn in place on a terminal, printed
/// every 15 s otherwise (logs, CI).
pub struct Display {
    tty: bool,
    t0: Instant,
    last_plain: Option<Instant>,
    drawn: usize,
    width: usize,
}

impl Display {
    pub fn new(width: usize) -> Self {
        Self { tty: std::io::stderr().is_terminal(), t0: Instant::now(), last_plain: None, drawn: 0, width }
    }

    pub fn line(&self, name: &str, job: &v1::Job, last: Option<&v1::MetricPoint>) -> String {
        let total = job.total_steps.max(1);
        let step = job.step.min(total);
        let filled = (20 * step / total) as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(20 - filled));
        // the flow-matching MSE, comparable across arms (and what the results' "final loss"
        // averages); the total adds arm-specific terms such as REPA's negative cosine
        let loss = last.map(|p| format!("loss {:.4}", p.mse)).unwrap_or_default();
        let eta = match (last, job.state()) {
            (Some(p), JobState::Running) if p.step_seconds > 0.0 => {
                let s = (total - step) as f64 * p.step_seconds;
                format!("ETA {}:{:02}", (s / 60.0) as u64, (s % 60.0) as u64)
            }
            _ => String::new(),
        };
        let why = if job.state() == JobState::Failed { format!(": {}", job.reason) } else { String::new() };
        format!("{name:<w$} [{bar}] {step:>5}/{total:<5} {loss:<12} {eta:<10} {}{why}", job.state().label(), w = self.width)
    }

    pub fn draw(&mut self, lines: &[String], done: bool) {
        if self.tty {
            let mut err = std::io::stderr().lock();
            if self.drawn > 0 {
                let _ = write!(err, "\x1b[{}A", self.drawn);
            }
            for l in lines {
                let _ = writeln!(err, "\x1b[K{l}");
            }
            self.drawn = lines.len();
        } else if done || self.last_plain.is_none_or(|t| t.elapsed() > Duration::from_secs(15)) {
            eprintln!("[{:>5.0}s]", self.t0.elapsed().as_secs_f64());
            for l in lines {
                eprintln!("  {l}");
            }
            self.last_plain = Some(Instant::now());
        }
    }
}

/// Every job's metric points and evaluations, as the coordinator keeps them (evaluations from
/// the job's own `eval.jsonl` for runs the coordinator has none of).
fn local_series(core: &Core, out: &Path, jobs: &[(String, v1::Job)]) -> anyhow::Result<HashMap<String, Series>> {
    let mut all = HashMap::new();
    for (_, j) in jobs {
        let mut evals = core.evals(&j.id)?;
        if evals.is_empty() {
            let p = out.join("work/jobs").join(&j.id).join("eval.jsonl");
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let step = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64();
            evals = text.lines().filter_map(|l| Some(v1::EvalPoint { step: step(l)?, eval_json: l.to_string() })).collect();
        }
        all.insert(j.id.clone(), Series { points: core.metrics(&j.id, 0)?, evals });
    }
    Ok(all)
}

/// The table's rows, with intervals from the jobs' `eval-samples.safetensors` and the
/// iso-compute comparison.
fn local_rows(out: &Path, rec: &Record, jobs: &[(String, v1::Job)], series: &HashMap<String, Series>) -> Vec<results::Row> {
    let mut rows = results::rows(&rec.arms, jobs);
    let samples = |j: &v1::Job| ablate_trainer::eval::bootstrap::EvalSamples::load(&out.join("work/jobs").join(&j.id).join("eval-samples.safetensors")).ok();
    results::add_intervals(&mut rows, jobs, &samples);
    results::add_iso(&mut rows, jobs, series);
    rows
}

pub fn is_sweep_id(s: &str) -> bool {
    s.len() > 1 && s.starts_with('s') && s[1..].chars().all(|c| c.is_ascii_digit())
}

/// What the report of the run in `out` shows, with the state open (the jobs' sample grids
/// from their work folders).
fn data(core: &Core, out: &Path, rec: &Record, jobs: Vec<(String, v1::Job)>) -> anyhow::Result<super::report::SweepData> {
    let series = local_series(core, out, &jobs)?;
    let rows = local_rows(out, rec, &jobs, &series);
    let description = std::fs::read_to_string(out.join("sweep.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).and_then(|t| t.get("description")?.as_str().map(String::from)).unwrap_or_default();
    let mut samples = HashMap::new();
    for (_, j) in &jobs {
        let dir = out.join("work/jobs").join(&j.id);
        if let Ok(png) = std::fs::read(dir.join("samples.png")) {
            samples.insert(j.id.clone(), (png, std::fs::read_to_string(dir.join("samples.txt")).unwrap_or_default()));
        }
    }
    Ok(super::report::SweepData { name: rec.name.clone(), description, source: format!("ablate run --out {}", out.display()), jobs, rows, series, samples })
}

/// The report data of the `ablate run` folder `out`.
pub fn load(out: &Path) -> anyhow::Result<super::report::SweepData> {
    let rec = read_record(out)?.with_context(|| format!("{} holds no sweep (no sweep.json): pass the --out folder of `ablate run`", out.display()))?;
    let core = open_state(out)?;
    let jobs = jobs_of(&core, &rec)?;
    data(&core, out, &rec, jobs)
}

fn report(core: &Core, out: &Path, rec: &Record, jobs: &[(String, v1::Job)]) -> anyhow::Result<()> {
    let d = data(core, out, rec, jobs.to_vec())?;
    let rows = &d.rows;
    println!();
    if let Some(p) = results::protocol(jobs) {
        println!("{p}");
    }
    print!("{}", results::text(rows, "table"));
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(&results::json(rows))?)?;
    std::fs::write(out.join("results.md"), results::text(rows, "markdown"))?;
    std::fs::write(out.join("results.csv"), results::text(rows, "csv"))?;
    super::report::write(&d, out)?;
    println!("wrote {}/results.json, results.md, results.csv, report.html", out.display());
    Ok(())
}

pub fn results_cmd(a: ResultsArgs) -> anyhow::Result<()> {
    if !a.dir.exists() {
        let id = a.dir.display().to_string();
        anyhow::ensure!(is_sweep_id(&id), "{id} is neither a folder of `ablate run` nor a sweep id (s000001)");
        return super::remote::results(&id, &a.coordinator, &a.format);
    }
    let rec = read_record(&a.dir)?.with_context(|| format!("{} holds no sweep (no sweep.json): pass the --out folder of `ablate run`", a.dir.display()))?;
    let core = open_state(&a.dir)?;
    let jobs = jobs_of(&core, &rec)?;
    let series = local_series(&core, &a.dir, &jobs)?;
    let rows = local_rows(&a.dir, &rec, &jobs, &series);
    results::print(&rows, &jobs, &a.format)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The progress line shows the flow-matching MSE, not the total that REPA's negative
    /// cosine term pulls below zero.
    #[test]
    fn progress_line_shows_the_flow_matching_mse() {
        let job = v1::Job { id: "repa".into(), state: JobState::Running as i32, step: 47, total_steps: 400, ..Default::default() };
        let point = v1::MetricPoint { step: 46, loss: -0.1592, mse: 0.2101, step_seconds: 0.25, ..Default::default() };
        let line = Display::new(8).line("repa", &job, Some(&point));
        assert!(line.contains("loss 0.2101"), "{line}");
        assert!(!line.contains("-0.1592"), "{line}");
        assert!(line.contains("47/400") && line.contains("ETA 1:28"), "{line}");
    }
}
