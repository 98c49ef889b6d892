//! The node agent behind `ablate worker`: registers its devices, heartbeats (each beat
//! carries the full registration and the ranks running here, so a restarted coordinator
//! rebuilds its view), launches one process per assigned rank, supervises them (exit
//! status, stuck detection: no step advance within `stuck_after`), kills ranks whose
//! assignment disappeared (cancel, failure of a peer, restart), and batches metric points,
//! log lines and completion reports to the coordinator, retrying until they land.
//!
//! The assignment set in each heartbeat answer is declarative: the agent converges to it.

use ablate_proto::v1::{self, worker_service_client::WorkerServiceClient};
use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use ablate_proto::auth::Authed;

use crate::events::{Event, Outcome};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub coordinator: String,
    pub worker_id: String,
    /// Host name or IP other workers' ranks reach this worker's ranks at.
    pub advertise_host: String,
    pub devices: Vec<v1::Device>,
    pub labels: HashMap<String, String>,
    /// Job directories go under `<work_dir>/jobs/<job>/`.
    pub work_dir: PathBuf,
    /// The program and leading arguments that start a rank (`ablate rank`).
    pub rank_command: Vec<String>,
    pub stuck_after: Duration,
    pub rendezvous_timeout: Duration,
    pub collective_timeout: Duration,
    /// RAYON_NUM_THREADS of each CPU rank.
    pub threads_per_rank: usize,
    /// How long a drain (SIGTERM) waits for the ranks to stop at a common step and
    /// checkpoint before it kills them.
    pub drain_timeout: Duration,
    /// This worker's token (role worker, bound to `worker_id`); its ranks get it too, for
    /// the rendezvous.
    pub token: Option<String>,
    /// Resolved data roots (`crate::confine`): a job naming a path outside them is refused.
    /// Empty: no confinement.
    pub data_roots: Vec<PathBuf>,
    /// The checkpoint store shared by the cluster's workers (`<dir>/<job>/` per job), and
    /// how many published steps each job keeps there.
    /// The shared checkpoint store's spec (a folder or an s3:// URL: `crate::s3`).
    pub checkpoint_store: Option<String>,
    pub checkpoint_keep: usize,
    /// Fencing (`crate::lease`): the ranks stop on their own once this worker's lease with
    /// the coordinator ends. Off only where agents and coordinator share one process
    /// (`ablate run`), so no partition can part them.
    pub fence: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("bad --devices {spec:?}: {message} (expected cpu:N or cuda:0,1,...)")]
    Devices { spec: String, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("coordinator refused this worker: {0}")]
    Refused(String),
}

/// `cpu:N` (N CPU slots) or `cuda:0,1,...` (those GPUs; memory filled in by the caller).
pub fn parse_devices(spec: &str) -> Result<Vec<v1::Device>, WorkerError> {
    let bad = |message: &str| WorkerError::Devices { spec: spec.into(), message: message.into() };
    let (kind, rest) = spec.split_once(':').ok_or_else(|| bad("missing ':'"))?;
    match kind {
        "cpu" => {
            let n: u32 = rest.parse().map_err(|_| bad("the slot count is not a number"))?;
            if n == 0 {
                return Err(bad("at least one slot"));
            }
            Ok((0..n).map(|i| v1::Device { kind: v1::DeviceKind::Cpu as i32, index: i, memory_bytes: 0, name: format!("cpu slot {i}") }).collect())
        }
        "cuda" => {
            let mut out = Vec::new();
            for part in rest.split(',') {
                let i: u32 = part.trim().parse().map_err(|_| bad(&format!("GPU ordinal {part:?} is not a number")))?;
                if out.iter().any(|d: &v1::Device| d.index == i) {
                    return Err(bad(&format!("GPU {i} listed twice")));
                }
                out.push(v1::Device { kind: v1::DeviceKind::Cuda as i32, index: i, memory_bytes: 0, name: format!("cuda:{i}") });
            }
            Ok(out)
        }
        other => Err(bad(&format!("unknown device kind {other:?}"))),
    }
}

type Key = (String, u64, u32);

struct Running {
    pid: u32,
    slot: u32,
    step: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Per (job, generation) the outbox keeps at most this many points and log lines (the
/// newest; a coordinator outage must not eat the node's memory), and sends at most
/// `CHUNK` of each per request (gRPC messages are limited to 4 MiB).
const OUTBOX_CAP: usize = 50_000;
const CHUNK: usize = 2_000;

/// What waits to be sent for one (job, generation).
#[derive(Default)]
struct Batch {
    /// rank 0 only
    points: Vec<v1::MetricPoint>,
    /// rank 0 only; a handful per run, sent with the first chunk
    evals: Vec<v1::EvalPoint>,
    logs: Vec<String>,
}

#[derive(Default)]
struct Outbox {
    batches: HashMap<(String, u64), Batch>,
    completions: Vec<v1::ReportCompletionRequest>,
}

#[derive(Default)]
struct State {
    running: HashMap<Key, Running>,
    finished: HashSet<Key>,
    outbox: Outbox,
}

type Shared = Arc<Mutex<State>>;

fn registration(cfg: &AgentConfig, draining: bool) -> v1::Registration {
    v1::Registration {
        worker_id: cfg.worker_id.clone(),
        host: cfg.advertise_host.clone(),
        devices: cfg.devices.clone(),
        labels: cfg.labels.clone(),
        protocol_version: ablate_proto::PROTOCOL_VERSION,
        draining,
    }
}

/// Runs the agent until `shutdown`; then stops every local rank at once.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<(), WorkerError> {
    run_draining(cfg, CancellationToken::new(), shutdown).await
}

/// Runs the agent until `drain` or `kill`. A drain (preemption, `SIGTERM`) takes no new
/// ranks (the coordinator is told, so it places nothing here), asks every local rank to
/// stop (`SIGTERM`: its group stops after a step all its ranks agree on, rank 0 checkpoints
/// there, and each reports a retryable "preempted" failure, so the job is placed again at
/// once without spending its own restarts), and ends once the ranks have exited and their
/// reports are delivered, or after `drain_timeout`, killing what is left. `kill` ends at
/// once, killing the ranks.
pub async fn run_draining(cfg: AgentConfig, drain: CancellationToken, kill: CancellationToken) -> Result<(), WorkerError> {
    let shutdown = kill;
    let mut drain_started: Option<Instant> = None;
    // drained by an operator (`ablate workers drain`): like a drain, but the agent stays
    let mut drained = false;
    let jobs = cfg.work_dir.join("jobs");
    tokio::fs::create_dir_all(&jobs).await.map_err(|source| WorkerError::Io { path: jobs.display().to_string(), source })?;
    let state: Shared = Arc::default();
    let tasks = tokio_util::task::TaskTracker::new();
    let mut client: Option<WorkerServiceClient<Authed>> = None;
    let mut interval = Duration::from_millis(500);
    let mut lease = Duration::ZERO;
    let lease_file = lease_path(&cfg);
    let renew = |sent: std::time::SystemTime, lease: Duration| {
        if let Some(p) = &lease_file {
            if let Err(e) = crate::lease::renew(p, sent + lease) {
                tracing::warn!("cannot renew the lease file {}: {e}", p.display());
            }
        }
    };
    let mut last_warning = None::<Instant>;
    loop {
        if client.is_none() {
            let sent = std::time::SystemTime::now();
            match connect(&cfg).await {
                Ok((c, every, expiry)) => {
                    tracing::info!(worker = %cfg.worker_id, "registered with {}", cfg.coordinator);
                    client = Some(c);
                    interval = every;
                    lease = crate::lease::lease_for(expiry);
                    renew(sent, lease);
                }
                Err(e) => {
                    if let WorkerError::Refused(_) = e {
                        return Err(e);
                    }
                    if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!("coordinator {} unreachable, retrying: {e}", cfg.coordinator);
                        last_warning = Some(Instant::now());
                    }
                }
            }
        }
        if let Some(c) = client.as_mut() {
            let running: Vec<v1::RunningRank> = {
                let s = state.lock().expect("agent state");
                let mut v: Vec<v1::RunningRank> =
                    s.running.iter().map(|((job, g, r), x)| v1::RunningRank { job_id: job.clone(), generation: *g, rank: *r, pid: x.pid, step: x.step.load(Ordering::Relaxed) }).collect();
                // a finished rank whose report has not landed yet still counts as present
                v.extend(s.outbox.completions.iter().map(|c| v1::RunningRank { job_id: c.job_id.clone(), generation: c.generation, rank: c.rank, pid: 0, step: 0 }));
                v
            };
            let sent = std::time::SystemTime::now();
            match c.heartbeat(v1::HeartbeatRequest { registration: Some(registration(&cfg, drain_started.is_some())), running }).await {
                Ok(r) => {
                    renew(sent, lease);
                    let r = r.into_inner();
                    if r.drain && !drained {
                        tracing::info!(worker = %cfg.worker_id, "drained by an operator: stopping the local ranks, taking no new ones");
                        ask_ranks_to_stop(&state);
                    } else if !r.drain && drained {
                        tracing::info!(worker = %cfg.worker_id, "drain ended: taking ranks again");
                    }
                    drained = r.drain;
                    reconcile(&cfg, &state, &tasks, r.assignments, drain_started.is_some() || drained);
                }
                Err(s) if s.code() == tonic::Code::FailedPrecondition => return Err(WorkerError::Refused(s.message().to_string())),
                Err(s) => {
                    tracing::warn!("heartbeat failed ({}), reconnecting; local ranks keep running until the lease ends", s.message());
                    client = None;
                }
            }
            if let Some(c) = client.as_mut() {
                flush(c, &state, &cfg.worker_id).await;
            }
        }
        if let Some(t0) = drain_started {
            let s = state.lock().expect("agent state");
            let delivered = s.outbox.completions.is_empty() && s.outbox.batches.values().all(|b| b.points.is_empty() && b.evals.is_empty() && b.logs.is_empty());
            if s.running.is_empty() && delivered {
                tracing::info!(worker = %cfg.worker_id, "drained: every rank stopped and reported");
                break;
            }
            if t0.elapsed() > cfg.drain_timeout {
                tracing::warn!(worker = %cfg.worker_id, "drain: ranks still running after {:?}; killing them", cfg.drain_timeout);
                break;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = drain.cancelled(), if drain_started.is_none() => {
                drain_started = Some(Instant::now());
                tracing::info!(worker = %cfg.worker_id, "draining: asking the local ranks to stop at a common step");
                ask_ranks_to_stop(&state);
            }
            _ = tokio::time::sleep(if drain_started.is_some() { interval.min(Duration::from_millis(200)) } else { interval }) => {}
        }
    }
    for r in state.lock().expect("agent state").running.values() {
        r.stop.cancel();
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// This worker's lease file (one per worker: `ablate run`'s agents share a work folder), or
/// None without fencing.
fn lease_path(cfg: &AgentConfig) -> Option<PathBuf> {
    cfg.fence.then(|| cfg.work_dir.join(format!("lease-{}", cfg.worker_id)))
}

/// A client, the heartbeat interval and the coordinator's worker expiry.
async fn connect(cfg: &AgentConfig) -> Result<(WorkerServiceClient<Authed>, Duration, Duration), WorkerError> {
    let (_, channel) = ablate_proto::connect_authed(&cfg.coordinator, cfg.token.as_deref()).await.map_err(|e| WorkerError::Io { path: cfg.coordinator.clone(), source: std::io::Error::other(e) })?;
    let mut c = WorkerServiceClient::new(channel);
    let r = c.register(v1::RegisterRequest { registration: Some(registration(cfg, false)) }).await.map_err(|s| {
        if matches!(s.code(), tonic::Code::FailedPrecondition | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) {
            WorkerError::Refused(s.message().to_string())
        } else {
            WorkerError::Io { path: cfg.coordinator.clone(), source: std::io::Error::other(s.message().to_string()) }
        }
    })?;
    let r = r.into_inner();
    Ok((c, Duration::from_millis(r.heartbeat_interval_ms.clamp(50, 10_000)), Duration::from_millis(r.expiry_ms.max(500))))
}

/// Errors that retrying cannot fix: the batch is dropped.
fn permanent(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(code, NotFound | InvalidArgument | OutOfRange | ResourceExhausted | FailedPrecondition | PermissionDenied | Unimplemented)
}

/// Sends batched points and logs (in chunks), then completion reports; keeps what did not
/// land for the next round.
async fn flush(c: &mut WorkerServiceClient<Authed>, state: &Shared, worker: &str) {
    let (batches, completions) = {
        let mut s = state.lock().expect("agent state");
        (std::mem::take(&mut s.outbox.batches), std::mem::take(&mut s.outbox.completions))
    };
    let mut failed = Outbox::default();
    for ((job, generation), b) in batches {
        let (mut p, mut l, mut e) = (b.points.as_slice(), b.logs.as_slice(), b.evals.as_slice());
        while !p.is_empty() || !l.is_empty() || !e.is_empty() {
            let (pc, lc) = (p.len().min(CHUNK), l.len().min(CHUNK));
            let req = v1::ReportMetricsRequest { worker_id: worker.into(), job_id: job.clone(), generation, points: p[..pc].to_vec(), log_lines: l[..lc].to_vec(), evals: e.to_vec() };
            match c.report_metrics(req).await {
                Ok(_) => {}
                Err(s) if permanent(s.code()) => tracing::warn!(job = %job, "metrics dropped: {}", s.message()),
                Err(_) => {
                    failed.batches.insert((job.clone(), generation), Batch { points: p.to_vec(), evals: e.to_vec(), logs: l.to_vec() });
                    break;
                }
            }
            (p, l, e) = (&p[pc..], &l[lc..], &e[e.len()..]);
        }
    }
    for req in completions {
        if let Err(s) = c.report_completion(req.clone()).await {
            if !permanent(s.code()) {
                failed.completions.push(req);
            } else {
                tracing::warn!(job = %req.job_id, "completion report refused: {}", s.message());
            }
        }
    }
    let mut s = state.lock().expect("agent state");
    for (k, mut b) in failed.batches {
        let e = s.outbox.batches.entry(k).or_default();
        b.points.append(&mut e.points);
        b.evals.append(&mut e.evals);
        b.logs.append(&mut e.logs);
        *e = b;
    }
    let mut rest = failed.completions;
    rest.append(&mut s.outbox.completions);
    s.outbox.completions = rest;
}

/// SIGTERM to every local rank: each group stops after a step its ranks agree on, with a
/// checkpoint, and reports a retryable preempted failure. A rank not started yet is withdrawn.
fn ask_ranks_to_stop(state: &Shared) {
    let s = state.lock().expect("agent state");
    for r in s.running.values() {
        if r.pid == 0 {
            r.stop.cancel(); // not started yet: nothing to checkpoint
        } else {
            // SAFETY: kill(2) with a pid this agent started and still supervises
            unsafe { libc::kill(r.pid as libc::pid_t, libc::SIGTERM) };
        }
    }
}

fn reconcile(cfg: &AgentConfig, state: &Shared, tasks: &tokio_util::task::TaskTracker, assignments: Vec<v1::Assignment>, draining: bool) {
    let mut s = state.lock().expect("agent state");
    let wanted: HashSet<Key> = assignments.iter().map(|a| (a.job_id.clone(), a.generation, a.rank)).collect();
    for (k, r) in s.running.iter() {
        if !wanted.contains(k) {
            tracing::info!(job = %k.0, generation = k.1, rank = k.2, "assignment withdrawn: stopping the rank");
            r.stop.cancel();
        }
    }
    // a finished rank stays blocked from relaunch only while the coordinator still lists it
    s.finished.retain(|k| wanted.contains(k));
    for a in assignments {
        let key = (a.job_id.clone(), a.generation, a.rank);
        if draining || s.running.contains_key(&key) || s.finished.contains(&key) {
            continue;
        }
        // the slot's previous rank is still stopping: start on a later heartbeat
        if s.running.iter().any(|(k, r)| r.slot == a.slot && *k != key) {
            continue;
        }
        let stop = CancellationToken::new();
        let step = Arc::new(AtomicU64::new(0));
        // pid 0 until the process started; the coordinator waits for every rank's pid
        s.running.insert(key.clone(), Running { pid: 0, slot: a.slot, step: step.clone(), stop: stop.clone() });
        let (cfg, state) = (cfg.clone(), state.clone());
        tasks.spawn(async move {
            let report = supervise(&cfg, &state, &a, step, stop).await;
            let mut s = state.lock().expect("agent state");
            s.running.remove(&key);
            s.finished.insert(key);
            if let Some(r) = report {
                s.outbox.completions.push(r);
            }
        });
    }
}

fn push_log(state: &Shared, job: &str, generation: u64, line: String) {
    let mut s = state.lock().expect("agent state");
    let lines = &mut s.outbox.batches.entry((job.to_string(), generation)).or_default().logs;
    if lines.len() >= OUTBOX_CAP {
        lines.drain(..OUTBOX_CAP / 10);
    }
    lines.push(line);
}

fn push_point(state: &Shared, job: &str, generation: u64, p: &ablate_trainer::run::MetricPoint) {
    let mut s = state.lock().expect("agent state");
    let points = &mut s.outbox.batches.entry((job.to_string(), generation)).or_default().points;
    if points.len() >= OUTBOX_CAP {
        points.drain(..OUTBOX_CAP / 10);
    }
    points.push(wire(p));
}

fn push_eval(state: &Shared, job: &str, generation: u64, report: &ablate_trainer::eval::suite::EvalReport) {
    let mut s = state.lock().expect("agent state");
    let evals = &mut s.outbox.batches.entry((job.to_string(), generation)).or_default().evals;
    if evals.len() >= OUTBOX_CAP / 100 {
        evals.remove(0);
    }
    evals.push(v1::EvalPoint { step: report.step as u64, report: Some(crate::evalwire::report_to_wire(report, false)) });
}

fn wire(p: &ablate_trainer::run::MetricPoint) -> v1::MetricPoint {
    v1::MetricPoint {
        step: p.step as u64,
        loss: p.loss,
        grad_norm: p.grad_norm,
        lr: p.lr,
        samples_per_sec: p.samples_per_sec,
        step_seconds: p.step_seconds,
        data_seconds: p.data_seconds,
        compute_seconds: p.compute_seconds,
        comm_seconds: p.comm_seconds,
        mse: p.mse,
    }
}

/// Runs one rank process to its end. Returns the completion report (None when the agent
/// stopped it because its assignment went away: the coordinator already knows why).
async fn supervise(cfg: &AgentConfig, state: &Shared, a: &v1::Assignment, step: Arc<AtomicU64>, stop: CancellationToken) -> Option<v1::ReportCompletionRequest> {
    // (retryable, infrastructure): whether a restart can help, and whether the failure is
    // the cluster's (its restarts do not spend the job's own)
    const FATAL: (bool, bool) = (false, false);
    const JOB: (bool, bool) = (true, false);
    const INFRA: (bool, bool) = (true, true);
    let fail = |reason: String, (retryable, infrastructure): (bool, bool)| v1::ReportCompletionRequest {
        worker_id: cfg.worker_id.clone(),
        job_id: a.job_id.clone(),
        generation: a.generation,
        rank: a.rank,
        success: false,
        reason,
        retryable,
        infrastructure,
        ..Default::default()
    };
    if let Err(why) = crate::confine::check(&a.config_toml, &cfg.data_roots) {
        return Some(fail(format!("refused by worker {}: {why}", cfg.worker_id), FATAL));
    }
    let dir = cfg.work_dir.join("jobs").join(&a.job_id);
    let config = dir.join(format!("job-g{}-rank{}.toml", a.generation, a.rank));
    if let Err(e) = tokio::fs::create_dir_all(&dir).await.and(tokio::fs::write(&config, &a.config_toml).await) {
        return Some(fail(format!("cannot write {}: {e}", config.display()), INFRA));
    }
    let device = cfg.devices.iter().find(|d| d.index == a.slot).map(|d| if d.kind == v1::DeviceKind::Cuda as i32 { format!("cuda:{}", d.index) } else { "cpu".into() }).unwrap_or_else(|| "cpu".into());
    let mut cmd = tokio::process::Command::new(&cfg.rank_command[0]);
    cmd.args(&cfg.rank_command[1..])
        .args(["--coordinator", &cfg.coordinator, "--job", &a.job_id])
        .args(["--generation", &a.generation.to_string(), "--rank", &a.rank.to_string(), "--world", &a.world_size.to_string()])
        .arg("--config")
        .arg(&config)
        .arg("--job-dir")
        .arg(&dir)
        .args(["--device", &device, "--advertise-host", &cfg.advertise_host])
        .args(["--rendezvous-timeout-ms", &cfg.rendezvous_timeout.as_millis().to_string()])
        .args(["--collective-timeout-ms", &cfg.collective_timeout.as_millis().to_string()])
        .env("RAYON_NUM_THREADS", cfg.threads_per_rank.to_string())
        // the rank's own credentials: this worker's token (for the rendezvous) and the
        // group's secret (the ring's handshake); environment, not arguments, so `ps` shows neither
        .env(ablate_proto::auth::JOB_SECRET_ENV, ablate_proto::auth::hex(&a.secret))
        .env_remove(ablate_proto::auth::TOKEN_FILE_ENV)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(t) = &cfg.token {
        cmd.env(ablate_proto::auth::TOKEN_ENV, t);
    }
    if let Some(p) = lease_path(cfg) {
        cmd.env(crate::lease::ENV, p);
    }
    if let Some(store) = &cfg.checkpoint_store {
        cmd.args(["--checkpoint-store", &crate::s3::for_job(store, &a.job_id), "--checkpoint-keep", &cfg.checkpoint_keep.to_string()]);
    }
    // one evaluation cache for every job of this worker (unless the operator named one): the
    // reference set of a sweep is embedded once, not once per job
    if std::env::var_os(ablate_trainer::run::EVAL_CACHE_ENV).is_none() {
        cmd.env(ablate_trainer::run::EVAL_CACHE_ENV, cfg.work_dir.join("eval-cache"));
    }
    // the rank dies with this agent, even when the agent is SIGKILLed (Linux: the parent-death
    // signal fires when the spawning runtime thread exits, which lives as long as the agent)
    // SAFETY: prctl is async-signal-safe and touches nothing but the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Some(fail(format!("cannot start {}: {e}", cfg.rank_command[0]), INFRA)),
    };
    let pid = child.id().unwrap_or(0);
    if let Some(r) = state.lock().expect("agent state").running.get_mut(&(a.job_id.clone(), a.generation, a.rank)) {
        r.pid = pid;
    }
    let job = a.job_id.clone();
    let (generation, rank) = (a.generation, a.rank);
    push_log(state, &job, generation, format!("[worker {}] rank {rank} started as pid {pid} on {device}", cfg.worker_id));
    // stderr -> log lines (and the rank's log file)
    let stderr = child.stderr.take().expect("piped");
    let log_path = dir.join(format!("rank-{rank}.log"));
    let (st, j2) = (state.clone(), job.clone());
    let err_task = tokio::spawn(async move {
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&log_path).await.ok();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = f.write_all(format!("{l}\n").as_bytes()).await;
            }
            push_log(&st, &j2, generation, format!("[rank {rank}] {l}"));
        }
    });
    // stdout -> events
    let stdout = child.stdout.take().expect("piped");
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let out_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(e) = Event::parse(&l) {
                let _ = tx.send(e);
            }
        }
    });
    let mut last_progress = Instant::now();
    let mut phase = String::from("training");
    let mut outcome: Option<Outcome> = None;
    let mut reported: Option<(String, bool)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let verdict = loop {
        tokio::select! {
            status = child.wait() => break Ok(status),
            Some(e) = events.recv() => match e {
                Event::Step { point } => {
                    step.store(point.step as u64 + 1, Ordering::Relaxed);
                    last_progress = Instant::now();
                    if rank == 0 {
                        push_point(state, &job, generation, &point);
                    }
                }
                Event::Started { .. } => last_progress = Instant::now(),
                Event::Phase { name } => {
                    last_progress = Instant::now();
                    phase = name;
                }
                Event::Checkpoint { .. } => {}
                Event::Evaluated { report } => {
                    last_progress = Instant::now();
                    if rank == 0 {
                        push_eval(state, &job, generation, &report);
                    }
                }
                Event::Done(o) => outcome = Some(o),
                Event::Failed { reason, retryable } => reported = Some((reason, retryable)),
            },
            _ = stop.cancelled() => break Err(None),
            _ = tick.tick() => {
                // evaluation and sampling have no steps: they get an hour (the ranks' barrier deadline)
                let limit = if phase == "training" { cfg.stuck_after } else { cfg.stuck_after.max(Duration::from_secs(3600)) };
                if last_progress.elapsed() > limit {
                    break Err(Some(format!("no progress while {phase} within {limit:?}: the rank is stuck (killed)")));
                }
            }
        }
    };
    let status = match verdict {
        Ok(s) => s,
        Err(why) => {
            if why.is_none() && pid != 0 {
                // withdrawn (cancelled, requeued, the agent stopping): ask first, so the group
                // stops at a common step with a checkpoint; kill only what does not stop in time
                // SAFETY: kill(2) on the child this task supervises, not yet reaped
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
                let _ = tokio::time::timeout(cfg.drain_timeout, child.wait()).await;
            }
            let _ = child.kill().await;
            let _ = tokio::time::timeout(Duration::from_secs(5), out_task).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), err_task).await;
            push_log(state, &job, generation, format!("[worker {}] rank {rank} (pid {pid}) stopped: {}", cfg.worker_id, why.as_deref().unwrap_or("assignment withdrawn")));
            // stuck: a restart may help, but the hang may be the job's own; withdrawn: no report
            return why.map(|w| fail(w, JOB));
        }
    };
    // drain what the rank printed before it exited
    let _ = tokio::time::timeout(Duration::from_secs(5), out_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), err_task).await;
    while let Ok(e) = events.try_recv() {
        match e {
            Event::Done(o) => outcome = Some(o),
            Event::Failed { reason, retryable } => reported = Some((reason, retryable)),
            Event::Step { point } if rank == 0 => push_point(state, &job, generation, &point),
            Event::Evaluated { report } if rank == 0 => push_eval(state, &job, generation, &report),
            _ => {}
        }
    }
    match (status, outcome) {
        (Ok(s), Some(o)) if s.success() => Some(v1::ReportCompletionRequest {
            worker_id: cfg.worker_id.clone(),
            job_id: job,
            generation,
            rank,
            success: true,
            checksum: o.checksum,
            result: (rank == 0).then(|| v1::JobResult {
                steps: o.steps as u64,
                final_loss: o.final_loss,
                samples_per_sec: o.samples_per_sec,
                wall_seconds: o.wall_seconds,
                rank_checksums: vec![],
                eval: o.eval.map(|mut r| {
                    // the per-image data of the final evaluation, from rank 0's job directory
                    let p = dir.join(ablate_trainer::eval::bootstrap::SAMPLES_FILE);
                    r.samples = ablate_trainer::eval::bootstrap::EvalSamples::load(&p).ok().filter(|s| r.fd_scenes.as_ref().is_some_and(|f| s.n() as u64 == f.protocol.samples));
                    crate::evalwire::report_to_wire(&r, true)
                }),
            }),
            reason: String::new(),
            retryable: false,
            infrastructure: false,
        }),
        (Ok(s), _) => {
            let how = match (s.code(), s.signal()) {
                (_, Some(sig)) => format!("killed by signal {sig}"),
                (Some(c), _) => format!("exited with code {c}"),
                _ => "exited".into(),
            };
            Some(match reported {
                // a retryable report is a broken group (a peer died, a deadline passed)
                Some((r, retryable)) => fail(format!("{r} ({how})"), if retryable { INFRA } else { FATAL }),
                // killed from outside (OOM killer, an operator, preemption): a restart can
                // help; a crash without a report (a panic) would repeat itself
                None if s.code() == Some(crate::lease::FENCED_EXIT) => {
                    fail(format!("fenced: worker {} lost its lease with the coordinator (no heartbeat answered in time), so the rank stopped itself before the job could be placed again ({how})", cfg.worker_id), INFRA)
                }
                None => fail(format!("rank process {how}"), if s.signal().is_some() { INFRA } else { FATAL }),
            })
        }
        (Err(e), _) => Some(fail(format!("waiting for the rank process: {e}"), INFRA)),
    }
}
