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
//!
//! Every change of a job goes the same way, under the write lock (one change at a time):
//! plan it on a copy (reading memory under the state lock), write the store (holding no
//! state lock: reads, heartbeats without changes and progress reports go on meanwhile),
//! then apply what was written to memory ([`Core::commit`]). Memory never runs ahead of the
//! store, and the bookkeeping that follows a job's state (queue and launch clocks, restart
//! counters, watchers) is derived in one place from the old and the new job.
//!
//! Files: this one (state, user operations, the commit), `worker_ops.rs` (heartbeats,
//! rendezvous, reports), `tick.rs` (the periodic pass: lost workers, launch deadline,
//! placement).

mod tick;
mod worker_ops;

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
    /// Workers an operator cordoned (kept under `cordoned/`): no new placements.
    cordoned: std::collections::BTreeSet<WorkerId>,
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
    /// Held from the plan of a job's change through its store write to its apply: changes
    /// never race, and the state lock (`inner`) is never held across a store write.
    writer: Mutex<()>,
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
const CORDONED: &str = "cordoned/";
/// The start of the reason of a queued gang too large for the live workers.
const WAITING: &str = "waiting: ";
/// The store's schema version, written by the first coordinator that opens it.
const SCHEMA: &str = "meta/schema";
/// The schema this coordinator reads and writes. A store without the key predates versions
/// (its layout is version 1's).
pub const STORE_SCHEMA: u64 = 1;

/// Brings the store to [`STORE_SCHEMA`] before anything is read: a store without a version
/// is stamped (its layout is version 1's); one newer than this coordinator is refused
/// untouched, so an older binary never writes what a newer one stores in a form it does not
/// know. (Migrations from one version to the next go here, each in one transaction that also
/// moves the version, when a layout changes.)
fn migrate(store: &dyn Kv) -> Result<(), CoordinatorError> {
    let found = store.get(SCHEMA)?.map(|e| String::from_utf8_lossy(&e.value).trim().to_string());
    match found.as_deref().map(str::parse::<u64>) {
        None => {
            // create-if-absent: two coordinators starting at once stamp it once
            store.txn(&[Compare::Exists(SCHEMA.into(), false)], &[Op::Put(SCHEMA.into(), STORE_SCHEMA.to_string().into_bytes())], &[])?;
            Ok(())
        }
        Some(Ok(v)) if v <= STORE_SCHEMA => Ok(()),
        _ => Err(CoordinatorError::Schema { found: found.unwrap_or_default(), supported: STORE_SCHEMA }),
    }
}

impl Core {
    /// Loads every stored job: queued ones stay queued, placed ones wait for their workers
    /// to re-attach through heartbeats.
    pub fn open(store: Arc<dyn Kv>, opts: Options) -> Result<Self, CoordinatorError> {
        migrate(store.as_ref())?;
        let mut jobs = BTreeMap::new();
        for e in store.range(JOBS)? {
            let job = crate::wire::decode_job(&e.key, &e.value)?;
            jobs.insert(job.id.clone(), job);
        }
        let next_sequence = jobs.values().map(|j| j.sequence).max().unwrap_or(0) + 1;
        let queued_at = jobs.values().filter(|j| j.state == JobState::Queued).map(|j| (j.id.clone(), Instant::now())).collect();
        let drained = store.range(DRAINED)?.into_iter().map(|e| WorkerId(e.key[DRAINED.len()..].to_string())).collect();
        let cordoned = store.range(CORDONED)?.into_iter().map(|e| WorkerId(e.key[CORDONED.len()..].to_string())).collect();
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let auth = Arc::new(Auth::open(store.clone())?);
        Ok(Self {
            auth,
            store,
            runs: Runs::new(opts.runs_dir.clone()),
            opts,
            writer: Mutex::new(()),
            inner: Mutex::new(Inner { jobs, next_sequence, workers: BTreeMap::new(), rendezvous: HashMap::new(), queued_at, placed_at: HashMap::new(), drained, cordoned, ran_on: HashMap::new(), log_rate: HashMap::new() }),
            started: Instant::now(),
            events,
            rendezvous_changed: tokio::sync::Notify::new(),
            closing: tokio_util::sync::CancellationToken::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("coordinator state lock")
    }

    /// The write lock (taken before the state lock, never while holding it).
    fn write(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().expect("coordinator write lock")
    }

    /// Writes the changed `jobs` to the store, one put each, then applies the ones written to
    /// memory. The caller holds the write lock and planned the changes under it. A failed
    /// write is returned after the jobs before it are applied: memory is never ahead of the
    /// store, nor behind it.
    fn commit(&self, jobs: Vec<Job>) -> Result<(), CoordinatorError> {
        let mut failed = None;
        let mut written = Vec::with_capacity(jobs.len());
        for j in jobs {
            match self.store.put(&format!("{JOBS}{}", j.id), &crate::wire::encode_job(&j)) {
                Ok(_) => written.push(j),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let told: Vec<(Job, bool)> = {
            let mut g = self.lock();
            written.into_iter().filter_map(|j| apply(&mut g, j)).collect()
        };
        for (job, transitioned) in &told {
            self.tell(job, *transitioned);
        }
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Tells watchers of a job's change, and the transition counter when its state changed.
    fn tell(&self, job: &Job, transitioned: bool) {
        let _ = self.events.send((job.id.clone(), Event::State(Box::new(job.clone()))));
        if transitioned {
            crate::metrics::job_state_changed(job);
        }
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
    fn queue(&self, jobs: Vec<Job>) -> Result<Vec<Job>, CoordinatorError> {
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
        let told: Vec<(Job, bool)> = {
            let mut g = self.lock();
            g.next_sequence += jobs.len() as u64;
            jobs.iter().filter_map(|j| apply(&mut g, j.clone())).collect()
        };
        for (job, transitioned) in &told {
            self.tell(job, *transitioned);
        }
        Ok(jobs)
    }

    pub fn submit(&self, req: JobSpec) -> Result<Job, CoordinatorError> {
        let _w = self.write();
        let next = self.lock().next_sequence;
        let job = self.new_job(req, next)?;
        Ok(self.queue(vec![job])?.remove(0))
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
        let _w = self.write();
        let next = self.lock().next_sequence;
        let sweep = SweepId(format!("s{next:06}"));
        let mut jobs = Vec::with_capacity(specs.len());
        for (i, mut r) in specs.into_iter().enumerate() {
            r.sweep = Some(sweep.clone());
            let arm = r.arm.clone();
            jobs.push(self.new_job(r, next + i as u64).map_err(|e| CoordinatorError::InvalidJob(format!("sweep {name:?}, job {i} ({arm}): {e}")))?);
        }
        Ok((sweep, self.queue(jobs)?))
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
        let _w = self.write();
        let mut job = self.get(id)?;
        if job.state.is_terminal() {
            return Err(CoordinatorError::WrongState { job: id.to_string(), state: job.state.label(), what: "it cannot be cancelled" });
        }
        finish(&mut job, JobState::Cancelled, if reason.is_empty() { "cancelled by user" } else { reason });
        self.commit(vec![job])?;
        self.get(id)
    }

    /// Queues a failed or cancelled job again (`ablate run --rerun-failed`); its restarts
    /// start over.
    pub fn retry(&self, id: &JobId) -> Result<Job, CoordinatorError> {
        let _w = self.write();
        let mut job = self.get(id)?;
        if !matches!(job.state, JobState::Failed | JobState::Cancelled) {
            return Err(CoordinatorError::WrongState { job: id.to_string(), state: job.state.label(), what: "only failed or cancelled jobs run again" });
        }
        let reason = format!("rerun after: {}", job.reason);
        queue_afresh(&mut job, reason);
        self.commit(vec![job])?;
        self.get(id)
    }

    /// Every key of the store as one snapshot (the backends read a range in one transaction
    /// or at one revision); taken without the coordinator's locks.
    pub fn export(&self) -> Result<Vec<crate::store::Entry>, CoordinatorError> {
        Ok(self.store.range("")?)
    }

    /// Gives a job a new config, checked like a submission, in which only the step budget may
    /// differ (the caller, `ablate run` growing a sweep, compares the rest), and queues it
    /// again: a finished job trains on from its last checkpoint to the new budget; a placed
    /// one is withdrawn from its workers (its ranks stop at a common step with a checkpoint)
    /// and placed again. Its restarts start over.
    pub fn extend(&self, id: &JobId, config_toml: String) -> Result<Job, CoordinatorError> {
        let _w = self.write();
        let mut job = self.get(id)?;
        let differ = changed_keys(&job.config_toml, &config_toml);
        if !differ.is_empty() {
            return Err(CoordinatorError::InvalidJob(format!("job {id} can only be extended (train.steps): its config would change at {}", differ.join(", "))));
        }
        let spec = JobSpec { name: job.name.clone(), config_toml, world_size: job.world_size, priority: job.priority, sweep: job.sweep.clone(), arm: job.arm.clone(), baseline_arm: job.baseline_arm.clone(), owner: job.owner.clone() };
        let checked = self.new_job(spec, job.sequence)?;
        if checked.total_steps <= job.total_steps {
            return Err(CoordinatorError::InvalidJob(format!("job {id} has {} steps; an extension gives it more, not {}", job.total_steps, checked.total_steps)));
        }
        let reason = format!("extended from {} to {} steps", job.total_steps, checked.total_steps);
        job.config_toml = checked.config_toml;
        job.total_steps = checked.total_steps;
        queue_afresh(&mut job, reason);
        self.commit(vec![job])?;
        self.get(id)
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
        let busy = busy_slots(g.jobs.values());
        g.workers
            .values()
            .map(|w| {
                let busy_slots = busy.iter().filter(|(wid, _)| *wid == w.reg.id).count() as u32;
                WorkerStatus { worker: w.reg.clone(), alive: w.alive, last_heartbeat_ms_ago: w.last_seen.elapsed().as_millis() as u64, busy_slots, drained: g.drained.contains(&w.reg.id), cordoned: g.cordoned.contains(&w.reg.id) }
            })
            .collect()
    }

    /// Drains a worker (`undo`: ends the drain): nothing new is placed on it, and its next
    /// heartbeat tells it to stop its ranks gracefully. Stored first, so a coordinator restart
    /// keeps it.
    pub fn drain(&self, id: &WorkerId, undo: bool) -> Result<WorkerStatus, CoordinatorError> {
        self.mark(id, DRAINED, !undo, b"drained by an operator", |g| &mut g.drained)
    }

    /// Cordons a worker (`undo`: uncordons it): nothing new is placed on it, its running
    /// ranks go on (maintenance that waits for the jobs to end). Stored first, like a drain.
    pub fn cordon(&self, id: &WorkerId, undo: bool) -> Result<WorkerStatus, CoordinatorError> {
        self.mark(id, CORDONED, !undo, b"cordoned by an operator", |g| &mut g.cordoned)
    }

    /// Sets (`on`) or clears a registered worker's operator mark under `prefix` in the store,
    /// then in memory.
    fn mark(&self, id: &WorkerId, prefix: &str, on: bool, why: &[u8], set: impl Fn(&mut Inner) -> &mut std::collections::BTreeSet<WorkerId>) -> Result<WorkerStatus, CoordinatorError> {
        let _w = self.write();
        {
            let g = self.lock();
            if !g.workers.contains_key(id) {
                let known: Vec<&str> = g.workers.keys().map(|w| w.as_str()).collect();
                return Err(CoordinatorError::NoWorker(id.to_string(), if known.is_empty() { "none".into() } else { known.join(", ") }));
            }
        }
        let key = format!("{prefix}{id}");
        if on {
            self.store.put(&key, why)?;
            set(&mut self.lock()).insert(id.clone());
        } else {
            self.store.delete(&key)?;
            set(&mut self.lock()).remove(id);
        }
        Ok(self.workers().into_iter().find(|w| &w.worker.id == id).expect("checked above"))
    }
}

/// Sends a job back to the queue as if new (`retry`, `extend`): its restarts start over, its
/// placement, results and end are cleared.
fn queue_afresh(job: &mut Job, reason: String) {
    job.state = JobState::Queued;
    job.reason = reason;
    job.restarts = 0;
    job.infra_restarts = 0;
    job.placement.clear();
    job.ranks_done.clear();
    job.result = None;
    job.finished_unix_ms = 0;
}

/// Whether `job` is in one of `states` (any when empty) and of `sweep` (any when None).
fn listed(job: &Job, states: &[JobState], sweep: Option<&SweepId>) -> bool {
    (states.is_empty() || states.contains(&job.state)) && (sweep.is_none() || job.sweep.as_ref() == sweep)
}

/// The dotted keys at which two TOML configs differ, the step budget and where checkpoints
/// are shared left aside (what an extension may change).
fn changed_keys(old: &str, new: &str) -> Vec<String> {
    fn flat(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => t.iter().for_each(|(k, v)| flat(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)),
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let read = |text: &str| {
        let mut out = BTreeMap::new();
        if let Ok(t) = text.parse::<toml::Table>() {
            flat("", &toml::Value::Table(t), &mut out);
        }
        out.remove("train.steps");
        out.remove("train.checkpoint_store");
        out
    };
    let (a, b) = (read(old), read(new));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).map(|k| k.to_string()).collect()
}

/// Puts a job just written to the store into memory, with the bookkeeping that follows its
/// change from the version memory held: the step seen so far is kept (progress reports move
/// it without the write lock), the queue and launch clocks start and stop, restarts are
/// counted by class, the workers it is placed on may report for it. Returns the job and
/// whether its state changed, for watchers; None when nothing a watcher sees changed.
fn apply(g: &mut Inner, mut job: Job) -> Option<(Job, bool)> {
    let id = job.id.clone();
    let old = g.jobs.get(&id);
    let (state, generation) = (old.map(|o| o.state), old.map(|o| o.generation));
    let seen = old.is_some_and(|o| o.reason == job.reason && o.placement.iter().map(|p| p.pid).eq(job.placement.iter().map(|p| p.pid)));
    job.step = job.step.max(old.map_or(0, |o| o.step));
    for (class, before, now) in [("infrastructure", old.map_or(0, |o| o.infra_restarts), job.infra_restarts), ("job", old.map_or(0, |o| o.restarts), job.restarts)] {
        for _ in before..now {
            crate::metrics::job_restarted(class);
        }
    }
    if job.state == JobState::Queued {
        if state != Some(JobState::Queued) {
            g.queued_at.insert(id.clone(), Instant::now());
        }
    } else if let Some(t) = g.queued_at.remove(&id) {
        if job.state == JobState::Scheduled {
            crate::metrics::queue_wait(t.elapsed());
        }
    }
    if job.state == JobState::Scheduled {
        if state != Some(JobState::Scheduled) || generation != Some(job.generation) {
            g.placed_at.insert(id.clone(), Instant::now());
        }
    } else {
        g.placed_at.remove(&id);
    }
    if job.state.is_placed() {
        g.ran_on.entry(id.clone()).or_default().extend(job.placement.iter().map(|p| p.worker.clone()));
    }
    let transitioned = state != Some(job.state) || generation != Some(job.generation);
    g.jobs.insert(id, job.clone());
    (transitioned || !seen).then_some((job, transitioned))
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
fn busy_slots<'a>(jobs: impl Iterator<Item = &'a Job>) -> Vec<(WorkerId, u32)> {
    jobs.filter(|j| j.state.is_placed()).flat_map(|j| j.placement.iter().map(|p| (p.worker.clone(), p.slot))).collect()
}

fn state_counts(jobs: &BTreeMap<JobId, Job>) -> Vec<(JobState, usize)> {
    JobState::ALL.into_iter().map(|s| (s, jobs.values().filter(|j| j.state == s).count())).collect()
}
