//! The client side of the coordinator: `submit`, `jobs`, `watch`, `cancel`, `logs`,
//! `workers`. Each talks to `--coordinator` (default http://127.0.0.1:7070).

use ablate_proto::v1::{self, job_service_client::JobServiceClient, JobState};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use ablate_proto::auth::Authed;

#[derive(Clone, Copy, ValueEnum, Default, PartialEq)]
pub enum Output {
    #[default]
    Text,
    Json,
}

#[derive(Args)]
pub struct Conn {
    /// The coordinator's gRPC URL; several, comma-separated, for coordinators sharing an
    /// etcd store (the first that answers is the leader).
    #[arg(long, global = true, default_value = "http://127.0.0.1:7070")]
    pub(crate) coordinator: String,
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub(crate) output: Output,
    /// A file holding your token (default: $ABLATE_TOKEN, or the file $ABLATE_TOKEN_FILE
    /// names); `ablate token create` makes one.
    #[arg(long, global = true)]
    pub(crate) token_file: Option<PathBuf>,
}


#[derive(Args)]
pub struct SubmitArgs {
    /// A training config (the format of `ablate train`).
    config: PathBuf,
    #[arg(long, default_value_t = 1)]
    world_size: u32,
    /// Higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Defaults to the file's stem.
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Every job (or those in --state).
    List {
        #[arg(long)]
        state: Vec<String>,
        #[arg(long, default_value = "")]
        sweep: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// One job in full.
    Show {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Queue a failed or cancelled job again (its restarts start over; it resumes from its
    /// checkpoint where one is found).
    Retry {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A job's metric points (step, loss, grad norm, lr, throughput, time split).
    Metrics {
        id: String,
        #[arg(long, default_value_t = 0)]
        from_step: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Args)]
pub struct IdArgs {
    id: String,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Args)]
pub struct LogsArgs {
    id: String,
    /// Keep printing new lines until the job ends.
    #[arg(long, short)]
    follow: bool,
    #[command(flatten)]
    conn: Conn,
}

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn client(c: &Conn) -> anyhow::Result<JobServiceClient<Authed>> {
    let token = crate::conn::token_from(c.token_file.as_deref())?;
    Ok(JobServiceClient::new(crate::conn::channel(&c.coordinator, token.as_deref()).await?))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub fn job_json(j: &v1::Job) -> serde_json::Value {
    json!({
        "id": j.id, "name": j.name, "state": j.state().label(), "world_size": j.world_size,
        "priority": j.priority, "sweep": j.sweep, "arm": j.arm, "generation": j.generation,
        "restarts": j.restarts, "max_restarts": j.max_restarts, "infra_restarts": j.infra_restarts, "max_infra_restarts": j.max_infra_restarts, "reason": j.reason, "owner": j.owner, "step": j.step, "total_steps": j.total_steps,
        "submitted_unix_ms": j.submitted_unix_ms, "started_unix_ms": j.started_unix_ms, "finished_unix_ms": j.finished_unix_ms,
        "placement": j.placement.iter().map(|p| json!({"rank": p.rank, "worker": p.worker_id, "slot": p.slot, "pid": p.pid})).collect::<Vec<_>>(),
        "result": j.result.as_ref().map(|r| json!({
            "steps": r.steps, "final_loss": r.final_loss, "samples_per_sec": r.samples_per_sec,
            "wall_seconds": r.wall_seconds, "rank_checksums": r.rank_checksums,
            "eval": r.eval.as_ref().and_then(|e| ablate_worker::evalwire::report_from_wire(e).ok()),
        })),
    })
}

fn line(j: &v1::Job) -> String {
    let progress = if j.total_steps > 0 { format!("{}/{}", j.step.min(j.total_steps), j.total_steps) } else { j.step.to_string() };
    let extra = match j.result.as_ref().filter(|_| j.state() == JobState::Succeeded) {
        Some(r) => format!("loss {:.4}, {:.1} samples/s", r.final_loss, r.samples_per_sec),
        None => j.reason.clone(),
    };
    format!("{:<9} {:<20} {:<10} {:>3} {:>11}  {}", j.id, truncate(&j.name, 20), j.state().label(), j.world_size, progress, extra)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}~", s.chars().take(n - 1).collect::<String>())
    }
}

pub fn submit(a: SubmitArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    // the full validation here, where the trainer's config types exist (the coordinator has none)
    let cfg = ablate_trainer::TrainConfig::from_toml_str(&text, &a.config.display().to_string())?;
    cfg.validate()?;
    if a.world_size == 0 {
        bail!("--world-size must be at least 1");
    }
    let name = a.name.unwrap_or_else(|| a.config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "job".into()));
    rt()?.block_on(async {
        let mut c = client(&a.conn).await?;
        let r = c
            .submit_job(v1::SubmitJobRequest { config_toml: cfg.to_toml(), name, world_size: a.world_size, priority: a.priority, ..Default::default() })
            .await
            .map_err(status)?
            .into_inner();
        let job = r.job.context("coordinator answered without the job")?;
        match a.conn.output {
            Output::Json => println!("{}", job_json(&job)),
            Output::Text => println!("submitted {} ({}, world size {}): follow it with `ablate watch {}`", job.id, job.name, job.world_size, job.id),
        }
        Ok(())
    })
}

pub fn jobs(cmd: JobsCmd) -> anyhow::Result<()> {
    rt()?.block_on(async {
        match cmd {
            JobsCmd::List { state, sweep, conn } => {
                let mut states = Vec::new();
                for s in &state {
                    states.push(JobState::parse(s).with_context(|| format!("unknown state {s:?} (queued, scheduled, running, succeeded, failed, cancelled)"))? as i32);
                }
                let mut c = client(&conn).await?;
                let (mut jobs, mut page_token) = (Vec::new(), String::new());
                loop {
                    let r = c.list_jobs(v1::ListJobsRequest { states: states.clone(), sweep: sweep.clone(), page_size: 0, page_token }).await.map_err(status)?.into_inner();
                    jobs.extend(r.jobs);
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    page_token = r.next_page_token;
                }
                match conn.output {
                    Output::Json => println!("{}", serde_json::Value::Array(jobs.iter().map(job_json).collect())),
                    Output::Text => {
                        println!("{:<9} {:<20} {:<10} {:>3} {:>11}  info", "id", "name", "state", "ws", "step");
                        for j in &jobs {
                            println!("{}", line(j));
                        }
                    }
                }
            }
            JobsCmd::Metrics { id, from_step, conn } => {
                let points = client(&conn).await?.get_metrics(v1::GetMetricsRequest { id, from_step }).await.map_err(status)?.into_inner().points;
                if conn.output == Output::Text {
                    println!("{:>6} {:>9} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8}", "step", "loss", "grad", "lr", "samples/s", "data s", "comp s", "comm s");
                }
                for p in points {
                    match conn.output {
                        Output::Json => println!(
                            "{}",
                            json!({"step": p.step, "loss": p.loss, "grad_norm": p.grad_norm, "lr": p.lr, "samples_per_sec": p.samples_per_sec, "step_seconds": p.step_seconds, "data_seconds": p.data_seconds, "compute_seconds": p.compute_seconds, "comm_seconds": p.comm_seconds})
                        ),
                        Output::Text => println!(
                            "{:>6} {:>9.4} {:>9.4} {:>10.2e} {:>10.1} {:>8.3} {:>8.3} {:>8.3}",
                            p.step, p.loss, p.grad_norm, p.lr, p.samples_per_sec, p.data_seconds, p.compute_seconds, p.comm_seconds
                        ),
                    }
                }
            }
            JobsCmd::Retry { id, conn } => {
                let j = client(&conn).await?.retry_job(v1::RetryJobRequest { id }).await.map_err(status)?.into_inner();
                match conn.output {
                    Output::Json => println!("{}", job_json(&j)),
                    Output::Text => println!("{}", line(&j)),
                }
            }
            JobsCmd::Show { id, conn } => {
                let j = client(&conn).await?.get_job(v1::GetJobRequest { id }).await.map_err(status)?.into_inner();
                match conn.output {
                    Output::Json => println!("{}", job_json(&j)),
                    Output::Text => println!("{}", serde_json::to_string_pretty(&job_json(&j))?),
                }
            }
        }
        Ok(())
    })
}

pub fn cancel(a: IdArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let j = client(&a.conn).await?.cancel_job(v1::CancelJobRequest { id: a.id, reason: String::new() }).await.map_err(status)?.into_inner();
        match a.conn.output {
            Output::Json => println!("{}", job_json(&j)),
            Output::Text => println!("{} {}", j.id, j.state().label()),
        }
        Ok(())
    })
}

/// Live progress until the job ends; exits non-zero when it did not succeed.
pub fn watch(a: IdArgs) -> anyhow::Result<()> {
    if a.id.starts_with('s') {
        return crate::sweep::remote::watch(&a.id, &a.conn.coordinator);
    }
    rt()?.block_on(async {
        let mut c = client(&a.conn).await?;
        let mut stream = c.watch_job(v1::WatchJobRequest { id: a.id.clone() }).await.map_err(status)?.into_inner();
        let mut total = 0;
        let mut last: Option<v1::Job> = None;
        while let Some(ev) = stream.message().await.map_err(status)? {
            match ev.event {
                Some(v1::job_event::Event::State(j)) => {
                    total = j.total_steps;
                    match a.conn.output {
                        Output::Json => println!("{}", json!({"state": job_json(&j)})),
                        Output::Text => eprintln!("\r\x1b[K{} {}{}", j.id, j.state().label(), if j.reason.is_empty() { String::new() } else { format!(": {}", j.reason) }),
                    }
                    last = Some(j);
                }
                Some(v1::job_event::Event::Metric(p)) => match a.conn.output {
                    Output::Json => println!("{}", json!({"step": p.step, "loss": p.loss, "grad_norm": p.grad_norm, "lr": p.lr, "samples_per_sec": p.samples_per_sec, "comm_seconds": p.comm_seconds})),
                    Output::Text => {
                        eprint!("\r\x1b[Kstep {}/{}  loss {:.4}  {:.1} samples/s  comm {:.0} ms", p.step + 1, total, p.mse, p.samples_per_sec, p.comm_seconds * 1e3);
                        let _ = std::io::stderr().flush();
                    }
                },
                Some(v1::job_event::Event::Eval(e)) => {
                    let r = e.report.as_ref().and_then(|r| ablate_worker::evalwire::report_from_wire(r).ok());
                    match a.conn.output {
                        Output::Json => println!("{}", json!({"eval": r})),
                        Output::Text => {
                            let what = r.as_ref().map(|r| r.summary()).unwrap_or_else(|| "a report this version cannot read".into());
                            eprintln!("\r\x1b[Kevaluation at step {}: {what}", e.step);
                        }
                    }
                }
                None => {}
            }
        }
        match last {
            Some(j) if j.state() == JobState::Succeeded => Ok(()),
            Some(j) => bail!("job {} {}: {}", j.id, j.state().label(), j.reason),
            None => bail!("the coordinator closed the stream"),
        }
    })
}

pub fn logs(a: LogsArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let mut c = client(&a.conn).await?;
        let mut from = 0;
        loop {
            let r = c.get_logs(v1::GetLogsRequest { id: a.id.clone(), from_line: from }).await.map_err(status)?.into_inner();
            for l in &r.lines {
                println!("{l}");
            }
            from = r.next_line;
            // a page at a time: the next one at once while lines keep coming
            if !r.lines.is_empty() {
                continue;
            }
            if !a.follow {
                return Ok(());
            }
            let j = c.get_job(v1::GetJobRequest { id: a.id.clone() }).await.map_err(status)?.into_inner();
            if j.state().is_terminal() && r.lines.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[derive(Args)]
pub struct WorkersArgs {
    #[command(subcommand)]
    action: Option<WorkersAction>,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
pub enum WorkersAction {
    /// Drain a worker for maintenance: nothing new is placed on it, its ranks stop at a
    /// common step with a checkpoint and their jobs go elsewhere (without spending their
    /// restarts). The worker stays registered until you stop it.
    Drain { id: String },
    /// End a drain: the worker takes ranks again.
    Undrain { id: String },
    /// Cordon a worker: nothing new is placed on it; its running ranks go on to their end.
    Cordon { id: String },
    /// End a cordon: the worker takes ranks again.
    Uncordon { id: String },
}

fn print_worker(w: v1::WorkerInfo, output: Output) {
    let r = w.registration.unwrap_or_default();
    let state = match (w.alive, w.drained || r.draining, w.cordoned) {
        (false, _, _) => "lost",
        (true, true, _) => "draining",
        (true, false, true) => "cordoned",
        (true, false, false) => "alive",
    };
    match output {
        Output::Json => println!("{}", json!({"id": r.worker_id, "host": r.host, "slots": r.devices.len(), "busy": w.busy_slots, "alive": w.alive, "drained": w.drained, "cordoned": w.cordoned, "draining": r.draining, "last_heartbeat_ms_ago": w.last_heartbeat_ms_ago})),
        Output::Text => println!("{:<24} {:<16} {} slot(s), {} busy, {state} ({} ms ago)", r.worker_id, r.host, r.devices.len(), w.busy_slots, w.last_heartbeat_ms_ago),
    }
}

pub fn workers(a: WorkersArgs) -> anyhow::Result<()> {
    rt()?.block_on(async {
        let mut c = client(&a.conn).await?;
        match a.action {
            None => {
                for w in c.list_workers(v1::ListWorkersRequest {}).await.map_err(status)?.into_inner().workers {
                    print_worker(w, a.conn.output);
                }
            }
            Some(WorkersAction::Drain { id }) => print_worker(c.drain_worker(v1::DrainWorkerRequest { worker_id: id, undo: false, cordon: false }).await.map_err(status)?.into_inner(), a.conn.output),
            Some(WorkersAction::Undrain { id }) => print_worker(c.drain_worker(v1::DrainWorkerRequest { worker_id: id, undo: true, cordon: false }).await.map_err(status)?.into_inner(), a.conn.output),
            Some(WorkersAction::Cordon { id }) => print_worker(c.drain_worker(v1::DrainWorkerRequest { worker_id: id, undo: false, cordon: true }).await.map_err(status)?.into_inner(), a.conn.output),
            Some(WorkersAction::Uncordon { id }) => print_worker(c.drain_worker(v1::DrainWorkerRequest { worker_id: id, undo: true, cordon: true }).await.map_err(status)?.into_inner(), a.conn.output),
        }
        Ok(())
    })
}
