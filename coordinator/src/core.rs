//! The coordinator's state and every operation on it, synchronous and free of gRPC (the
//! services in `service.rs` translate). Jobs are cached in memory and written through to
//! the store on every change; workers, rendezvous tables and step counters live in memory
//! only (they are rebuilt from heartbeats after a restart).
//!
//! Job states: queued -> scheduled (placed, ranks launching) -> running (every rank
//! reported alive) -> succeeded | failed | cancelled. A retryable failure sends the job back
//! to queued; it is placed again under the next generation. Failures have classes: the
//! cluster's (a lost worker, a vanished rank, a dead peer, a rank killed from outside, ranks
//! not started within `launch_deadline`) restart up to `max_infra_restarts` times and do not
//! spend the job's own `max_restarts`, which only failures that may be the job's (a stuck
//! rank) count against. A failure that a restart would repeat (non-finite loss, bad config
//! or data) fails the job at once.

use ablate_proto::v1;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::auth::Auth;
use crate::domain::*;
use crate::error::CoordinatorError;
use crate::runs::Runs;
use crate::scheduler::{self, Pending, WorkerSlots};
use crate::store::{Compare, Kv, Op};

#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat: Duration,
    /// A worker silent this long is lost.
    pub worker_expiry: Duration,
    /// Restarts after failures that may be the job's own (a stuck rank).
    pub max_restarts: u32,
    /// Restarts after the cluster's failures (lost worker, dead peer, kill, no launch).
    pub max_infra_restarts: u32,
    /// A placed job whose ranks have not all started by then is placed again.
    pub launch_deadline: Duration,
    pub runs_dir: std::path::PathBuf,
    pub limits: Limits,
    /// The full check of a submitted training config (the trainer's, installed by
    /// `ablate coordinator` and `ablate run`: this crate has no candle and so no config
    /// types). Without one, a config is only checked to be TOML.
    pub config_check: Option<ConfigCheck>,
}

/// A check of a job's `config_toml`: Err names the offending key.
pub type CheckFn = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Checks a job's `config_toml`; the error names the offending key.
#[derive(Clone)]
pub struct ConfigCheck(pub std::sync::Arc<CheckFn>);

impl std::fmt::Debug for ConfigCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigCheck")
    }
}

/// Bounds on what a caller can make the coordinator store or hold: a request past one is
/// refused (INVALID_ARGUMENT or RESOURCE_EXHAUSTED, naming the bound) before anything is
/// stored; log lines past the rate are dropped with a marker line.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Jobs in one sweep.
    pub max_sweep_jobs: usize,
    /// Ranks of one job (no cluster holds an unbounded gang).
    pub max_world_size: u32,
    /// Bytes of a job's, arm's or sweep's name.
    pub max_name_bytes: usize,
    /// Bytes of a job's training config.
    pub max_config_bytes: usize,
    /// Log lines kept per job per minute (the rest are dropped and counted).
    pub max_log_lines_per_minute: usize,
    /// Bytes of one log line (longer ones are cut).
    pub max_log_line_bytes: usize,
    /// Jobs in one `ListJobs` answer, and lines in one `GetLogs` answer.
    pub max_page: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_sweep_jobs: 10_000, max_world_size: 4096, max_name_bytes: 256, max_config_bytes: 1 << 20, max_log_lines_per_minute: 20_000, max_log_line_bytes: 16 << 10, max_page: 1000 }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            worker_expiry: Duration::from_secs(10),
            max_restarts: 3,
            max_infra_restarts: 20,
            launch_deadline: Duration::from_secs(600),
            runs_dir: "ablate-runs".into(),
            limits: Limits::default(),
            config_check: None,
        }
    }
}

pub(crate) struct WorkerEntry {
    pub reg: Worker,
    pub last_seen: Instant,
    pub alive: bool,
}

#[derive(Default)]
struct Table {
    addresses: Vec<Option<(String, String)>>,
    opened: Option<Instant>,
}

struct Inner {
    jobs: BTreeMap<JobId, Job>,
    next_sequence: u64,
    workers: BTreeMap<WorkerId, WorkerEntry>,
    rendezvous: HashMap<(JobId, Generation), Table>,
    /// When each job was last queued (for the queue-wait histogram).
    queued_at: HashMap<JobId, Instant>,
    /// When each placed job was placed, until all its ranks started (the launch deadline).
    placed_at: HashMap<JobId, Instant>,
    /// Workers an operator drained (kept in the store under `drained/`).
    drained: std::collections::BTreeSet<WorkerId>,
    /// Every worker this coordinator placed a rank of each job on (its late reports are
    /// still the job's; anyone else's are refused).
    ran_on: HashMap<JobId, std::collections::BTreeSet<WorkerId>>,
    /// Each job's log lines this minute: (window start, kept, dropped).
    log_rate: HashMap<JobId, (Instant, usize, usize)>,
}

pub struct Core {
    store: Arc<dyn Kv>,
    pub opts: Options,
    /// The token table and the job-secret key (the services check every call against it).
    pub auth: Arc<Auth>,
    inner: Mutex<Inner>,
    runs: Runs,
    started: Instant,
    /// (job id, event) for watchers.
    pub events: tokio::sync::broadcast::Sender<(JobId, Event)>,
    pub rendezvous_changed: tokio::sync::Notify,
    /// Cancelled when the server shuts down: ends open watch streams.
    pub closing: tokio_util::sync::CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

const JOBS: &str = "jobs/";
const DRAINED: &str = "drained/";
/// The start of the reason of a queued gang too large for the live workers.
const WAITING: &str = "waiting: ";

impl Core {
    /// Loads every stored job: queued ones stay queued, placed ones wait for their workers
    /// to re-attach through heartbeats.
    pub fn open(store: Arc<dyn Kv>, opts: Options) -> Result<Self, CoordinatorError> {
        let mut jobs = BTreeMap::new();
        for e in store.range(JOBS)? {
            let job = crate::wire::decode_job(&e.key, &e.value)?;
            jobs.insert(job.id.clone(), job);
        }
        let next_sequence = jobs.values().map(|j| j.sequence).max().unwrap_or(0) + 1;
        let queued_at = jobs.values().filter(|j| j.state == JobState::Queued).map(|j| (j.id.clone(), Instant::now())).collect();
        let drained = store.range(DRAINED)?.into_iter().map(|e| WorkerId(e.key[DRAINED.len()..].to_string())).collect();
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let auth = Arc::new(Auth::open(store.clone())?);
        Ok(Self {
            auth,
            store,
            runs: Runs::new(opts.runs_dir.clone()),
            opts,
            inner: Mutex::new(Inner { jobs, next_sequence, workers: BTreeMap::new(), rendezvous: HashMap::new(), queued_at, placed_at: HashMap::new(), drained, ran_on: HashMap::new(), log_rate: HashMap::new() }),
            started: Instant::now(),
            events,
            rendezvous_changed: tokio::sync::Notify::new(),
            closing: tokio_util::sync::CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("coordinator state lock")
    }

    /// Writes the job through to the store and tells watchers; `entered` when its state
    /// changed (counted in `ablate_job_transitions_total`).
    fn persist(&self, job: &Job, entered: bool) -> Result<(), CoordinatorError> {
        self.store.put(&format!("{JOBS}{}", job.id), &crate::wire::encode_job(job))?;
        if entered {
            self.entered(job);
        }
        Ok(())
    }

    /// Tells watchers and the transition counter that `job` entered its state.
    fn entered(&self, job: &Job) {
        let _ = self.events.send((job.id.clone(), Event::State(Box::new(job.clone()))));
        crate::metrics::job_state_changed(job);
    }

    // ------------------------------------------------------------ user operations

    /// Checks a submission and builds its job (not yet stored).
    fn new_job(&self, req: JobSpec, seq: u64) -> Result<Job, CoordinatorError> {
        let l = &self.opts.limits;
        if req.world_size == 0 {
            return Err(CoordinatorError::InvalidJob("world_size must be at least 1".into()));
        }
        if req.world_size > l.max_world_size {
            return Err(CoordinatorError::InvalidJob(format!("world_size {} is past this coordinator's limit of {} ranks", req.world_size, l.max_world_size)));
        }
        for (what, v) in [("name", &req.name), ("arm", &req.arm), ("baseline_arm", &req.baseline_arm)] {
            if v.len() > l.max_name_bytes {
                return Err(CoordinatorError::InvalidJob(format!("{what} is {} bytes, past the limit of {}", v.len(), l.max_name_bytes)));
            }
        }
        if req.config_toml.len() > l.max_config_bytes {
            return Err(CoordinatorError::InvalidJob(format!("config_toml is {} bytes, past the limit of {}", req.config_toml.len(), l.max_config_bytes)));
        }
        let cfg: toml::Value = toml::from_str(&req.config_toml).map_err(|e| CoordinatorError::InvalidJob(format!("config_toml: {e}")))?;
        if let Some(check) = &self.opts.config_check {
            (check.0)(&req.config_toml).map_err(|e| CoordinatorError::InvalidJob(format!("config_toml: {e}")))?;
        }
        let total_steps = cfg.get("train").and_then(|t| t.get("steps")).and_then(|s| s.as_integer()).unwrap_or(0).max(0) as u64;
        let id = JobId(format!("j{seq:06}"));
        Ok(Job {
            name: if req.name.is_empty() { id.0.clone() } else { req.name },
            id,
            state: JobState::Queued,
            world_size: req.world_size,
            priority: req.priority,
            sweep: req.sweep,
            arm: req.arm,
            baseline_arm: req.baseline_arm,
            generation: Generation(0),
            placement: Vec::new(),
            reason: String::new(),
            submitted_unix_ms: now_ms(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            step: 0,
            total_steps,
            result: None,
            config_toml: req.config_toml,
            sequence: seq,
            restarts: 0,
            max_restarts: self.opts.max_restarts,
            infra_restarts: 0,
            max_infra_restarts: self.opts.max_infra_restarts,
            ranks_done: Vec::new(),
            owner: req.owner,
        })
    }

    /// Stores `jobs` (all or none) and queues them: one transaction, or, past the store's
    /// transaction size (etcd: 128 jobs), one per chunk, the chunks already written taken
    /// back if a later one fails. (A coordinator crash between chunks leaves the first chunks
    /// of a sweep queued.)
    fn queue(&self, g: &mut Inner, jobs: Vec<Job>) -> Result<Vec<Job>, CoordinatorError> {
        let mut written: Vec<String> = Vec::new();
        for chunk in jobs.chunks(self.store.max_txn_ops().max(1)) {
            // create-if-absent: a second coordinator on the same store can never overwrite a job
            let keys: Vec<String> = chunk.iter().map(|j| format!("{JOBS}{}", j.id)).collect();
            let compares: Vec<Compare> = keys.iter().map(|k| Compare::Exists(k.clone(), false)).collect();
            let puts: Vec<Op> = keys.iter().zip(chunk).map(|(k, j)| Op::Put(k.clone(), crate::wire::encode_job(j))).collect();
            let outcome = self.store.txn(&compares, &puts, &[]);
            if !matches!(outcome, Ok(ref t) if t.succeeded) {
                for k in &written {
                    if let Err(e) = self.store.delete(k) {
                        tracing::error!("could not take back {k} of a sweep whose write failed: {e}");
                    }
                }
                outcome?;
                return Err(CoordinatorError::InvalidJob("job ids are taken in the store (another coordinator on the same store?)".into()));
            }
            written.extend(keys);
        }
        g.next_sequence += jobs.len() as u64;
        for j in &jobs {
            g.jobs.insert(j.id.clone(), j.clone());
            g.queued_at.insert(j.id.clone(), Instant::now());
            self.entered(j);
        }
        Ok(jobs)
    }

    pub fn submit(&self, req: JobSpec) -> Result<Job, CoordinatorError> {
        let mut g = self.lock();
        let job = self.new_job(req, g.next_sequence)?;
        Ok(self.queue(&mut g, vec![job])?.remove(0))
    }

    /// A sweep's jobs, all or none; the sweep id is `s` + the first job's sequence number.
    /// Each spec's `sweep` is set here; `name` names the sweep in errors.
    pub fn submit_sweep(&self, name: &str, specs: Vec<JobSpec>) -> Result<(SweepId, Vec<Job>), CoordinatorError> {
        if specs.is_empty() {
            return Err(CoordinatorError::InvalidJob("a sweep needs at least one job".into()));
        }
        let l = &self.opts.limits;
        if specs.len() > l.max_sweep_jobs {
            return Err(CoordinatorError::InvalidJob(format!("sweep {name:?} has {} jobs, past this coordinator's limit of {}", specs.len(), l.max_sweep_jobs)));
        }
        if name.len() > l.max_name_bytes {
            return Err(CoordinatorError::InvalidJob(format!("the sweep's name is {} bytes, past the limit of {}", name.len(), l.max_name_bytes)));
        }
        let mut g = self.lock();
        let sweep = SweepId(format!("s{:06}", g.next_sequence));
        let mut jobs = Vec::with_capacity(specs.len());
        for (i, mut r) in specs.into_iter().enumerate() {
            r.sweep = Some(sweep.clone());
            let arm = r.arm.clone();
            jobs.push(self.new_job(r, g.next_sequence + i as u64).map_err(|e| CoordinatorError::InvalidJob(format!("sweep {name:?}, job {i} ({arm}): {e}")))?);
        }
        Ok((sweep, self.queue(&mut g, jobs)?))
    }

    pub fn get(&self, id: &JobId) -> Result<Job, CoordinatorError> {
        self.lock().jobs.get(id).cloned().ok_or_else(|| CoordinatorError::NoJob(id.to_string()))
    }

    /// Jobs in any of `states` (every state when empty) of `sweep` (every job when None).
    pub fn list(&self, states: &[JobState], sweep: Option<&SweepId>) -> Vec<Job> {
        self.lock().jobs.values().filter(|j| listed(j, states, sweep)).cloned().collect()
    }

    /// One page of [`Core::list`]: up to `size` jobs (0 or past the page limit: the limit)
    /// after the job id `after`, and the token of the next page when more follow.
    pub fn list_page(&self, states: &[JobState], sweep: Option<&SweepId>, size: usize, after: &str) -> (Vec<Job>, Option<String>) {
        let size = if size == 0 { self.opts.limits.max_page } else { size.min(self.opts.limits.max_page) };
        let g = self.lock();
        let mut it = g.jobs.values().filter(|j| (after.is_empty() || j.id.as_str() > after) && listed(j, states, sweep));
        let page: Vec<Job> = it.by_ref().take(size).cloned().collect();
        let more = it.next().is_some();
        let next = page.last().filter(|_| more).map(|j| j.id.to_string());
        (page, next)
    }

    pub fn cancel(&self, id: &JobId, reason: &str) -> Result<Job, CoordinatorError> {
        let mut g = self.lock();
        let mut job = g.jobs.get(id).cloned().ok_or_else(|| CoordinatorError::NoJob(id.to_string()))?;
        if job.state.is_terminal() {
            return Err(CoordinatorError::WrongState { job: id.to_string(), state: job.state.label(), what: "it cannot be cancelled" });
        }
        finish(&mut job, JobState::Cancelled, if reason.is_empty() { "cancelled by user" } else { reason });
        // store first, under the lock: memory never runs ahead of the store, writes keep order
        self.persist(&job, true)?;
        g.queued_at.remove(id);
        g.jobs.insert(id.clone(), job.clone());
        Ok(job)
    }

    /// Queues a failed or cancelled job again (`ablate run --rerun-failed`); its restarts
    /// start over.
    pub fn retry(&self, id: &JobId) -> Result<Job, CoordinatorError> {
        let mut g = self.lock();
        let mut job = g.jobs.get(id).cloned().ok_or_else(|| CoordinatorError::NoJob(id.to_string()))?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(CoordinatorError::WrongState { job: id.to_string(), state: job.state.label(), what: "only failed or cancelled jobs run again" });
        }
        job.state = JobState::Queued;
        job.reason = format!("rerun after: {}", job.reason);
        job.restarts = 0;
        job.infra_restarts = 0;
        job.placement.clear();
        job.ranks_done.clear();
        job.result = None;
        job.finished_unix_ms = 0;
        self.persist(&job, true)?;
        g.queued_at.insert(id.clone(), Instant::now());
        g.jobs.insert(id.clone(), job.clone());
        Ok(job)
    }

    pub fn metrics(&self, id: &JobId, from: u64) -> Result<Vec<v1::MetricPoint>, CoordinatorError> {
        self.get(id)?;
        self.runs.metrics(id.as_str(), from)
    }

    pub fn evals(&self, id: &JobId) -> Result<Vec<v1::EvalPoint>, CoordinatorError> {
        self.get(id)?;
        self.runs.evals(id.as_str())
    }

    /// The per-image data of the job's final evaluation (None when it has none).
    pub fn eval_samples(&self, id: &JobId) -> Result<Option<v1::EvalSamples>, CoordinatorError> {
        self.get(id)?;
        self.runs.eval_samples(id.as_str())
    }

    pub fn logs(&self, id: &JobId, from: u64) -> Result<(Vec<String>, u64), CoordinatorError> {
        self.get(id)?;
        self.runs.logs(id.as_str(), from, self.opts.limits.max_page)
    }

    pub fn workers(&self) -> Vec<WorkerStatus> {
        let g = self.lock();
        let busy = busy_slots(&g.jobs);
        g.workers
            .values()
            .map(|w| {
                let busy_slots = busy.iter().filter(|(wid, _)| *wid == w.reg.id).count() as u32;
                WorkerStatus { worker: w.reg.clone(), alive: w.alive, last_heartbeat_ms_ago: w.last_seen.elapsed().as_millis() as u64, busy_slots, drained: g.drained.contains(&w.reg.id) }
            })
            .collect()
    }

    /// Drains a worker (`undo`: ends the drain): nothing new is placed on it, and its next
    /// heartbeat tells it to stop its ranks gracefully. Stored first, so a coordinator restart
    /// keeps it.
    pub fn drain(&self, id: &WorkerId, undo: bool) -> Result<WorkerStatus, CoordinatorError> {
        let mut g = self.lock();
        if !g.workers.contains_key(id) {
            let known: Vec<&str> = g.workers.keys().map(|w| w.as_str()).collect();
            return Err(CoordinatorError::NoWorker(id.to_string(), if known.is_empty() { "none".into() } else { known.join(", ") }));
        }
        let key = format!("{DRAINED}{id}");
        if undo {
            self.store.delete(&key)?;
            g.drained.remove(id);
        } else {
            self.store.put(&key, b"drained by an operator")?;
            g.drained.insert(id.clone());
        }
        drop(g);
        Ok(self.workers().into_iter().find(|w| &w.worker.id == id).expect("checked above"))
    }

    // ------------------------------------------------------------ worker operations

    fn check_protocol(reg: &Worker) -> Result<(), CoordinatorError> {
        if reg.protocol_version != ablate_proto::PROTOCOL_VERSION {
            return Err(CoordinatorError::Protocol { worker: reg.id.to_string(), got: reg.protocol_version, want: ablate_proto::PROTOCOL_VERSION });
        }
        Ok(())
    }

    pub fn register(&self, reg: Worker) -> Result<(), CoordinatorError> {
        Self::check_protocol(&reg)?;
        let mut g = self.lock();
        g.workers.insert(reg.id.clone(), WorkerEntry { reg, last_seen: Instant::now(), alive: true });
        Ok(())
    }

    /// Records the worker's liveness and running ranks; answers with what it must run and
    /// whether an operator drained it.
    pub fn heartbeat(&self, reg: Worker, running: &[RunningRank]) -> Result<(Vec<Assignment>, bool), CoordinatorError> {
        Self::check_protocol(&reg)?;
        let wid = reg.id.clone();
        let mut changed = Vec::new();
        let mut g = self.lock();
        g.workers.insert(wid.clone(), WorkerEntry { reg, last_seen: Instant::now(), alive: true });
        for r in running {
            if let Some(job) = g.jobs.get_mut(&r.job) {
                if job.generation != r.generation || job.state.is_terminal() || r.rank.0 >= job.world_size {
                    continue;
                }
                job.step = job.step.max(r.step);
                if let Some(p) = job.placement.iter_mut().find(|p| p.rank == r.rank && p.worker == wid) {
                    if r.pid != 0 && p.pid != r.pid {
                        p.pid = r.pid;
                        changed.push((job.id.clone(), false));
                    }
                }
                if job.state == JobState::Scheduled && job.placement.iter().all(|p| p.pid != 0) {
                    job.state = JobState::Running;
                    job.started_unix_ms = now_ms();
                    changed.push((job.id.clone(), true));
                }
            }
        }
        let assignments: Vec<Assignment> = g
            .jobs
            .values()
            .filter(|j| j.state.is_placed())
            .flat_map(|j| {
                j.placement.iter().filter(|p| p.worker == wid && !j.rank_done(p.rank)).map(move |p| Assignment {
                    job: j.id.clone(),
                    generation: j.generation,
                    rank: p.rank,
                    world_size: j.world_size,
                    slot: p.slot,
                    config_toml: j.config_toml.clone(),
                    sweep: j.sweep.clone(),
                    arm: j.arm.clone(),
                    secret: self.auth.job_secret(&j.id, j.generation),
                })
            })
            .collect();
        // A running job's rank that this worker no longer runs (its agent restarted, or lost
        // the process without a report) will never finish: restart the gang.
        let vanished: Vec<(JobId, Rank)> = g
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running)
            .flat_map(|j| j.placement.iter().filter(|p| p.worker == wid && !j.rank_done(p.rank)).map(move |p| (j, p.rank)))
            .filter(|(j, rank)| !running.iter().any(|r| r.job == j.id && r.generation == j.generation && r.rank == *rank))
            .map(|(j, rank)| (j.id.clone(), rank))
            .collect();
        for (id, rank) in vanished {
            let job = g.jobs.get_mut(&id).expect("listed above");
            let why = format!("rank {rank} vanished from worker {wid} (its agent restarted or lost the process)");
            tracing::warn!(job = %id, "{why}");
            if requeue(job, &why, Retry::Infrastructure) {
                g.queued_at.insert(id.clone(), Instant::now());
            }
            changed.push((id, true));
        }
        // one write per job, under the lock (writes keep their order); an entered state counts once
        changed.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        changed.dedup_by(|a, b| a.0 == b.0);
        for (id, entered) in &changed {
            let j = g.jobs.get(id).expect("changed job exists");
            self.persist(j, *entered)?;
        }
        // ranks of a job requeued just now are no longer assigned
        let drain = g.drained.contains(&wid);
        Ok((assignments.into_iter().filter(|a| g.jobs.get(&a.job).is_some_and(|j| j.state.is_placed() && j.generation == a.generation)).collect(), drain))
    }

    fn current(&self, g: &Inner, job: &JobId, generation: Generation) -> Result<Job, CoordinatorError> {
        let j = g.jobs.get(job).ok_or_else(|| CoordinatorError::NoJob(job.to_string()))?;
        if j.generation != generation {
            return Err(CoordinatorError::StaleGeneration { job: job.to_string(), got: generation.0, current: j.generation.0 });
        }
        if !j.state.is_placed() {
            return Err(CoordinatorError::WrongState { job: job.to_string(), state: j.state.label(), what: "its ranks must stop" });
        }
        Ok(j.clone())
    }

    pub fn rendezvous_publish(&self, r: Publication) -> Result<(), CoordinatorError> {
        let mut g = self.lock();
        let job = self.current(&g, &r.job, r.generation)?;
        let world = job.world_size as usize;
        let refuse = |message: String| CoordinatorError::Rendezvous { job: r.job.to_string(), generation: r.generation.0, message };
        if r.rank.0 as usize >= world {
            return Err(refuse(format!("rank {} outside world size {world}", r.rank)));
        }
        let t = g.rendezvous.entry((r.job.clone(), r.generation)).or_default();
        t.addresses.resize(world, None);
        t.opened.get_or_insert_with(Instant::now);
        if let Some((_, other)) = t.addresses.iter().flatten().find(|(_, h)| *h != r.params_hash) {
            return Err(refuse(format!("rank {} has parameter layout {} but the group has {other}: the ranks run different configs or versions", r.rank, r.params_hash)));
        }
        t.addresses[r.rank.0 as usize] = Some((r.address, r.params_hash));
        if t.addresses.iter().all(|a| a.is_some()) {
            if let Some(opened) = t.opened {
                crate::metrics::rendezvous_done(opened.elapsed());
            }
        }
        drop(g);
        self.rendezvous_changed.notify_waiters();
        Ok(())
    }

    /// Every rank's address once all published, else how many have (the caller waits and
    /// retries).
    pub fn rendezvous_table(&self, job: &JobId, generation: Generation) -> Result<Result<Vec<String>, usize>, CoordinatorError> {
        let g = self.lock();
        self.current(&g, job, generation)?;
        let Some(t) = g.rendezvous.get(&(job.clone(), generation)) else { return Ok(Err(0)) };
        let present = t.addresses.iter().filter(|a| a.is_some()).count();
        if present == t.addresses.len() && present > 0 {
            Ok(Ok(t.addresses.iter().map(|a| a.as_ref().expect("all present").0.clone()).collect()))
        } else {
            Ok(Err(present))
        }
    }

    pub fn report_progress(&self, r: Progress) -> Result<(), CoordinatorError> {
        let job = {
            let mut g = self.lock();
            let Some(j) = g.jobs.get_mut(&r.job) else { return Err(CoordinatorError::NoJob(r.job.to_string())) };
            if let Some(last) = r.points.last() {
                if j.generation == r.generation {
                    j.step = j.step.max(last.step + 1);
                }
            }
            j.clone()
        };
        let id = r.job.as_str();
        // points of another generation (a partitioned old rank 0) would overwrite the curve
        if !r.points.is_empty() && r.generation == job.generation {
            self.runs.append_metrics(id, &r.points)?;
            crate::metrics::job_points(&job, &r.points);
            for p in &r.points {
                let _ = self.events.send((job.id.clone(), Event::Metric(*p)));
            }
        }
        if !r.evals.is_empty() && r.generation == job.generation {
            self.runs.append_evals(id, &r.evals)?;
            for e in r.evals {
                let _ = self.events.send((job.id.clone(), Event::Eval(Box::new(e))));
            }
        }
        if !r.log_lines.is_empty() {
            let lines = self.admit_logs(&r.job, r.log_lines);
            self.runs.append_logs(id, &lines)?;
        }
        Ok(())
    }

    /// The lines of a report that fit the job's log rate, each cut to the line limit; a
    /// marker line says how many an earlier window dropped.
    fn admit_logs(&self, job: &JobId, lines: Vec<String>) -> Vec<String> {
        let l = &self.opts.limits;
        let mut g = self.lock();
        let w = g.log_rate.entry(job.clone()).or_insert((Instant::now(), 0, 0));
        let mut out = Vec::new();
        if w.0.elapsed() >= Duration::from_secs(60) {
            if w.2 > 0 {
                out.push(format!("[coordinator] dropped {} log lines of this job: past the limit of {} per minute", w.2, l.max_log_lines_per_minute));
            }
            *w = (Instant::now(), 0, 0);
        }
        let room = l.max_log_lines_per_minute.saturating_sub(w.1);
        let n = lines.len();
        for mut line in lines.into_iter().take(room) {
            if line.len() > l.max_log_line_bytes {
                let mut cut = l.max_log_line_bytes;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push_str(" [cut]");
            }
            out.push(line);
        }
        w.1 += n.min(room);
        w.2 += n.saturating_sub(room);
        out
    }

    pub fn report_completion(&self, r: Completion) -> Result<(), CoordinatorError> {
        let mut g = self.lock();
        let Some(current) = g.jobs.get(&r.job) else { return Err(CoordinatorError::NoJob(r.job.to_string())) };
        if r.rank.0 >= current.world_size {
            return Err(CoordinatorError::InvalidJob(format!("rank {} reported for job {} of world size {}", r.rank, r.job, current.world_size)));
        }
        let placed_here = current.placement.iter().any(|p| p.rank == r.rank && p.worker == r.worker);
        if current.generation != r.generation || !current.state.is_placed() || !placed_here {
            // a late report (finished, requeued or restarted generation): keep it in the log only
            let how = match &r.outcome {
                Outcome::Succeeded { .. } => "succeeded",
                Outcome::Failed { reason, .. } => reason.as_str(),
            };
            let line = format!("[coordinator] late report from rank {} (generation {}): {how}", r.rank, r.generation);
            drop(g);
            return self.runs.append_logs(r.job.as_str(), &[line]);
        }
        let mut job = current.clone();
        let world = job.world_size as usize;
        let before = job.state;
        let mut requeued = false;
        let rank = r.rank.0 as usize;
        match r.outcome {
            Outcome::Failed { reason, retry } => {
                let reason = format!("rank {} on worker {}: {reason}", r.rank, r.worker);
                if retry == Retry::No {
                    finish(&mut job, JobState::Failed, &reason);
                } else {
                    // the whole gang restarts (from rank 0's last checkpoint) under a new generation
                    requeued = requeue(&mut job, &reason, retry);
                }
            }
            Outcome::Succeeded { checksum, mut result } => {
                // the per-image data goes to the run directory, not into the stored job
                if let Some(samples) = result.as_mut().and_then(|r| r.eval.as_mut()).and_then(|e| e.samples.take()) {
                    self.runs.save_eval_samples(r.job.as_str(), &samples)?;
                }
                job.ranks_done.resize(world, false);
                let res = job.result.get_or_insert_with(Default::default);
                res.rank_checksums.resize(world, f64::NAN);
                res.rank_checksums[rank] = checksum;
                if rank == 0 {
                    if let Some(mine) = result {
                        let sums = std::mem::take(&mut res.rank_checksums);
                        *res = JobResult { rank_checksums: sums, ..*mine };
                    }
                }
                job.ranks_done[rank] = true;
                if job.ranks_done.iter().all(|d| *d) {
                    let sums = &job.result.as_ref().expect("set above").rank_checksums;
                    if sums.windows(2).all(|w| w[0] == w[1]) {
                        finish(&mut job, JobState::Succeeded, "");
                        crate::metrics::job_eval(&job);
                    } else {
                        let reason = format!("ranks finished with different parameters (checksums {sums:?}): data parallelism broke");
                        finish(&mut job, JobState::Failed, &reason);
                    }
                }
            }
        }
        // store first: if the write fails the worker retries the same report
        self.persist(&job, job.state != before)?;
        if requeued {
            g.queued_at.insert(job.id.clone(), Instant::now());
        }
        g.jobs.insert(job.id.clone(), job);
        Ok(())
    }

    // ------------------------------------------------------------ who may report what

    /// Whether `worker` may speak for rank `rank` (any rank when None) of `job` in
    /// `generation`: it is placed there. A generation other than the current one is left to
    /// the rendezvous and report checks, which refuse it as stale or keep it as a late report.
    pub fn may_act_for(&self, job: &JobId, generation: Generation, rank: Option<Rank>, worker: &WorkerId) -> Result<(), CoordinatorError> {
        let g = self.lock();
        let j = g.jobs.get(job).ok_or_else(|| CoordinatorError::NoJob(job.to_string()))?;
        if j.generation != generation || j.placement.iter().any(|p| p.worker == *worker && rank.is_none_or(|r| p.rank == r)) {
            return Ok(());
        }
        let what = rank.map(|r| format!("rank {r}")).unwrap_or_else(|| "any rank".into());
        Err(CoordinatorError::NotPlaced(format!("worker {worker} runs no {what} of job {job} generation {generation}")))
    }

    /// Whether `worker` ever ran a rank of `job` under this coordinator (or runs one now): it
    /// may report the job's progress, late lines included.
    pub fn ran_on(&self, job: &JobId, worker: &WorkerId) -> Result<(), CoordinatorError> {
        let g = self.lock();
        let j = g.jobs.get(job).ok_or_else(|| CoordinatorError::NoJob(job.to_string()))?;
        if j.placement.iter().any(|p| p.worker == *worker) || g.ran_on.get(job).is_some_and(|w| w.contains(worker)) {
            return Ok(());
        }
        Err(CoordinatorError::NotPlaced(format!("worker {worker} never ran a rank of job {job}")))
    }

    // ------------------------------------------------------------ the periodic pass

    /// Expires silent workers (their jobs restart or fail), then places queued jobs.
    pub fn tick(&self) -> Result<(), CoordinatorError> {
        let mut changed = Vec::new();
        let mut g = self.lock();
        let expiry = self.opts.worker_expiry;
        for w in g.workers.values_mut() {
            if w.alive && w.last_seen.elapsed() > expiry {
                w.alive = false;
                tracing::warn!(worker = %w.reg.id, "worker lost: no heartbeat for {:?}", expiry);
            }
        }
        let alive: Vec<WorkerId> = g.workers.values().filter(|w| w.alive).map(|w| w.reg.id.clone()).collect();
        // after a coordinator restart, workers get one expiry period to re-attach
        let grace_over = self.started.elapsed() > expiry;
        let mut requeued = Vec::new();
        for job in g.jobs.values_mut() {
            if !job.state.is_placed() {
                continue;
            }
            let lost: Vec<WorkerId> = job.placement.iter().filter(|p| !alive.contains(&p.worker)).map(|p| p.worker.clone()).collect();
            if lost.is_empty() || !grace_over {
                continue;
            }
            let why = format!("worker {} lost (no heartbeat for {:?})", lost[0], expiry);
            if requeue(job, &why, Retry::Infrastructure) {
                requeued.push(job.id.clone());
            }
            changed.push(job.id.clone());
        }
        // placed jobs whose ranks did not all start in time go elsewhere (a worker that took
        // the assignment and never ran it); after a coordinator restart the clock starts over
        let deadline = self.opts.launch_deadline;
        let late: Vec<JobId> = g.jobs.values().filter(|j| j.state == JobState::Scheduled).map(|j| j.id.clone()).collect();
        for id in late {
            let since = *g.placed_at.entry(id.clone()).or_insert_with(Instant::now);
            if since.elapsed() <= deadline {
                continue;
            }
            let job = g.jobs.get_mut(&id).expect("listed above");
            let waiting: Vec<String> = job.placement.iter().filter(|p| p.pid == 0).map(|p| format!("rank {} on {}", p.rank, p.worker)).collect();
            let why = format!("not started within {deadline:?} ({})", waiting.join(", "));
            if requeue(job, &why, Retry::Infrastructure) {
                requeued.push(id.clone());
            }
            changed.push(id);
        }
        for id in requeued {
            g.placed_at.remove(&id);
            g.queued_at.insert(id, Instant::now());
        }
        // the clock stops once every rank started (or the job left the scheduled state)
        let scheduled: std::collections::HashSet<JobId> = g.jobs.values().filter(|j| j.state == JobState::Scheduled).map(|j| j.id.clone()).collect();
        g.placed_at.retain(|id, _| scheduled.contains(id));
        // place queued jobs on the free slots of live workers
        let busy = busy_slots(&g.jobs);
        let mut slots = Vec::new();
        // a draining worker (preemption, or drained by an operator) takes nothing new
        let open = |w: &WorkerEntry| w.alive && !w.reg.draining && !g.drained.contains(&w.reg.id);
        for w in g.workers.values().filter(|w| open(w)) {
            let mut by_kind: BTreeMap<DeviceKind, Vec<u32>> = BTreeMap::new();
            for d in &w.reg.devices {
                if !busy.contains(&(w.reg.id.clone(), d.index)) {
                    by_kind.entry(d.kind).or_default().push(d.index);
                }
            }
            slots.extend(by_kind.into_iter().map(|(kind, free)| WorkerSlots { worker: w.reg.id.clone(), kind, free }));
        }
        // a gang larger than the live workers' slots of any one kind cannot be placed until
        // more register: it waits with a reason that says so and, once the re-attach grace is
        // over, no longer holds up the strict queue behind it
        let mut capacity: BTreeMap<DeviceKind, usize> = BTreeMap::new();
        for d in g.workers.values().filter(|w| open(w)).flat_map(|w| &w.reg.devices) {
            *capacity.entry(d.kind).or_default() += 1;
        }
        let largest = capacity.values().copied().max().unwrap_or(0);
        let mut queue = Vec::new();
        for j in g.jobs.values_mut().filter(|j| j.state == JobState::Queued) {
            let fits = j.world_size as usize <= largest;
            if grace_over {
                let waiting = (!fits).then(|| format!("{WAITING}a gang of {} needs that many slots of one kind; the live workers have {largest}", j.world_size));
                let own = j.reason.is_empty() || j.reason.starts_with(WAITING);
                match waiting {
                    Some(w) if own && j.reason != w => {
                        j.reason = w;
                        changed.push(j.id.clone());
                    }
                    None if j.reason.starts_with(WAITING) => {
                        j.reason.clear();
                        changed.push(j.id.clone());
                    }
                    _ => {}
                }
                if !fits {
                    continue;
                }
            }
            queue.push(Pending { job: j.id.clone(), priority: j.priority, sequence: j.sequence, world: j.world_size });
        }
        for p in scheduler::schedule(&slots, &queue) {
            let waited = g.queued_at.remove(&p.job);
            let job = g.jobs.get_mut(&p.job).expect("queued job exists");
            job.generation = Generation(job.generation.0 + 1);
            job.state = JobState::Scheduled;
            job.ranks_done = vec![false; job.world_size as usize];
            job.result = None;
            job.placement = p.ranks.into_iter().enumerate().map(|(r, (worker, slot))| RankPlacement { rank: Rank(r as u32), worker, slot, pid: 0 }).collect();
            let placed: Vec<WorkerId> = job.placement.iter().map(|p| p.worker.clone()).collect();
            g.ran_on.entry(p.job.clone()).or_default().extend(placed);
            g.placed_at.insert(p.job.clone(), Instant::now());
            if let Some(t) = waited {
                crate::metrics::queue_wait(t.elapsed());
            }
            changed.push(p.job);
        }
        // rendezvous tables of generations that are over
        let live: Vec<(JobId, Generation)> = g.jobs.values().filter(|j| !j.state.is_terminal()).map(|j| (j.id.clone(), j.generation)).collect();
        g.rendezvous.retain(|k, _| live.contains(k));
        // workers lost long ago with nothing placed on them are forgotten
        let held = busy_slots(&g.jobs);
        g.workers.retain(|id, w| w.alive || w.last_seen.elapsed() < expiry * 10 || held.iter().any(|(h, _)| h == id));
        for id in &changed {
            let j = g.jobs.get(id).expect("changed job exists");
            self.persist(j, true)?;
        }
        let counts = state_counts(&g.jobs);
        let workers = (g.workers.values().filter(|w| w.alive).count(), g.workers.values().filter(|w| !w.alive).count());
        drop(g);
        crate::metrics::cluster(&counts, workers);
        Ok(())
    }
}

/// Whether `job` is in one of `states` (any when empty) and of `sweep` (any when None).
fn listed(job: &Job, states: &[JobState], sweep: Option<&SweepId>) -> bool {
    (states.is_empty() || states.contains(&job.state)) && (sweep.is_none() || job.sweep.as_ref() == sweep)
}

/// Sends a placed job back to the queue after a retryable failure, counted under the cap of
/// its class (`retry`: the cluster's failures never spend the job's own restarts), or fails
/// it when that cap is spent. Returns whether it requeued.
fn requeue(job: &mut Job, why: &str, retry: Retry) -> bool {
    let (used, cap, class) = match retry {
        Retry::Infrastructure => (&mut job.infra_restarts, job.max_infra_restarts, "infrastructure"),
        _ => (&mut job.restarts, job.max_restarts, "job"),
    };
    if *used < cap {
        *used += 1;
        let n = *used;
        job.state = JobState::Queued;
        job.placement.clear();
        job.ranks_done.clear();
        job.reason = match retry {
            Retry::Infrastructure => format!("infrastructure restart {n} of {cap}: {why}"),
            _ => format!("restart {n} of {cap}: {why}"),
        };
        crate::metrics::job_restarted(class);
        true
    } else {
        let used = *used;
        finish(job, JobState::Failed, &format!("{why}; no {class} restarts left ({used} used)"));
        false
    }
}

fn finish(job: &mut Job, state: JobState, reason: &str) {
    job.state = state;
    job.reason = reason.to_string();
    job.finished_unix_ms = now_ms();
}

/// (worker, slot) pairs held by placed jobs.
fn busy_slots(jobs: &BTreeMap<JobId, Job>) -> Vec<(WorkerId, u32)> {
    jobs.values().filter(|j| j.state.is_placed()).flat_map(|j| j.placement.iter().map(|p| (p.worker.clone(), p.slot))).collect()
}

fn state_counts(jobs: &BTreeMap<JobId, Job>) -> Vec<(JobState, usize)> {
    JobState::ALL.into_iter().map(|s| (s, jobs.values().filter(|j| j.state == s).count())).collect()
}
