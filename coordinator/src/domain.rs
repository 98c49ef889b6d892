//! The coordinator's own vocabulary: jobs, their states and placements, workers and their
//! devices, what a worker reports and what it is told to run, with typed ids. `core`, the
//! scheduler and the store speak these; `wire` converts them to and from `ablate.v1` at the
//! service boundary (and for the stored form of a job), so a wire change is a change of
//! `wire.rs`, not of the state machine.
//!
//! Metric and evaluation points (`v1::MetricPoint`, `v1::EvalPoint`) are records the
//! coordinator stores and forwards without reading them; they stay wire messages.

use ablate_proto::v1;
use std::collections::BTreeMap;

macro_rules! id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_string())
            }
        }
    };
}

id!(/// A training job (one arm x one seed of a sweep, or a standalone job): `j` and its
    /// submission sequence number.
    JobId);
id!(/// A sweep: a baseline and its arms; `s` and its first job's sequence number.
    SweepId);
id!(/// A registered worker (node agent), named by the worker.
    WorkerId);

/// A rank within a job's data-parallel group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rank(pub u32);

/// Rendezvous generation: bumped on every (re)start of a job's gang, so a stale rank can
/// never join a newer group. 0: never placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Generation(pub u64);

impl std::fmt::Display for Rank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a job is in its life: queued -> scheduled -> running -> succeeded | failed |
/// cancelled (a restart sends a placed job back to queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Queued,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [Self::Queued, Self::Scheduled, Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    /// Succeeded, failed or cancelled: nothing more happens to the job (the wire enum's
    /// rule, which the CLI reads on jobs it receives).
    pub fn is_terminal(self) -> bool {
        v1::JobState::from(self).is_terminal()
    }

    /// Scheduled or running: the job holds slots on workers.
    pub fn is_placed(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running)
    }

    /// Lowercase name as users see it (`queued`, `running`, ...), as on the wire.
    pub fn label(self) -> &'static str {
        v1::JobState::from(self).label()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn label(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

/// One slot a worker offers: a CUDA device or a CPU slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub kind: DeviceKind,
    /// CUDA ordinal, or the CPU slot number.
    pub index: u32,
    pub memory_bytes: u64,
    pub name: String,
}

/// A worker (node agent) as it registers: who it is, where, and the slots it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Worker {
    pub id: WorkerId,
    pub host: String,
    pub devices: Vec<Device>,
    pub labels: BTreeMap<String, String>,
    pub protocol_version: u32,
    /// Stopping its ranks to leave (preemption): nothing new is placed on it.
    pub draining: bool,
}

/// A registered worker as the coordinator sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub worker: Worker,
    pub alive: bool,
    pub last_heartbeat_ms_ago: u64,
    pub busy_slots: u32,
    /// Drained by an operator: nothing new is placed on it.
    pub drained: bool,
    /// Cordoned by an operator: nothing new is placed on it; its ranks go on.
    pub cordoned: bool,
}

/// Where one rank of a placed job runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankPlacement {
    pub rank: Rank,
    pub worker: WorkerId,
    pub slot: u32,
    /// The rank's process id on its worker (0 until it started).
    pub pid: u32,
}

/// What a finished job reports (rank 0's numbers, every rank's checksum).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobResult {
    pub steps: u64,
    pub final_loss: f64,
    pub samples_per_sec: f64,
    pub wall_seconds: f64,
    /// Parameter checksum of each rank at the end (all equal when data parallelism holds).
    pub rank_checksums: Vec<f64>,
    /// The final evaluation, when the config asks for one (a record the coordinator keeps and
    /// forwards; its per-image data lives in the job's run directory, not here).
    pub eval: Option<v1::EvalReport>,
}

/// A submission: what the user asks to run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobSpec {
    pub name: String,
    /// A training configuration (TOML, the format of `ablate train`).
    pub config_toml: String,
    pub world_size: u32,
    pub priority: i32,
    pub sweep: Option<SweepId>,
    pub arm: String,
    /// The arm `arm` is compared with (empty: "baseline").
    pub baseline_arm: String,
    /// Who submits it (the token's name; set by the service from the caller, not the request).
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub name: String,
    pub state: JobState,
    pub world_size: u32,
    pub priority: i32,
    pub sweep: Option<SweepId>,
    pub arm: String,
    /// The arm `arm` is compared with (empty: "baseline").
    pub baseline_arm: String,
    pub generation: Generation,
    pub placement: Vec<RankPlacement>,
    /// Why the job failed, was cancelled, restarted or waits.
    pub reason: String,
    pub submitted_unix_ms: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub step: u64,
    pub total_steps: u64,
    pub result: Option<JobResult>,
    pub config_toml: String,
    /// Submission order: FIFO tie-break within a priority.
    pub sequence: u64,
    /// Restarts after failures that may be the job's own (a stuck rank); the job fails once
    /// `max_restarts` is spent.
    pub restarts: u32,
    pub max_restarts: u32,
    /// Restarts after the cluster's failures (a lost worker, a dead peer, a killed rank, ranks
    /// that never started), under their own cap: they do not spend `max_restarts`.
    pub infra_restarts: u32,
    pub max_infra_restarts: u32,
    /// Per-rank "done" flags of the current generation.
    pub ranks_done: Vec<bool>,
    /// The name of the token that submitted it (empty: before tokens, or `ablate run`).
    pub owner: String,
}

impl Job {
    /// Whether `rank` of the current generation reported completion.
    pub fn rank_done(&self, rank: Rank) -> bool {
        self.ranks_done.get(rank.0 as usize).copied().unwrap_or(false)
    }
}

/// A rank a worker runs, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningRank {
    pub job: JobId,
    pub generation: Generation,
    pub rank: Rank,
    pub pid: u32,
    pub step: u64,
}

/// What a worker must run (the set is declarative: a rank not listed must stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job: JobId,
    pub generation: Generation,
    pub rank: Rank,
    pub world_size: u32,
    pub slot: u32,
    pub config_toml: String,
    pub sweep: Option<SweepId>,
    pub arm: String,
    /// The (job, generation)'s secret: the ring's handshake key (only placed workers get it).
    pub secret: Vec<u8>,
}

/// A rank's address for its group, and the layout of its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    pub job: JobId,
    pub generation: Generation,
    pub rank: Rank,
    /// TCP ring: host:port. NCCL: `nccl-id=<hex>` from rank 0, `nccl-member` from others.
    pub address: String,
    /// Hash of the ordered parameter names, shapes and dtypes: all ranks must agree.
    pub params_hash: String,
}

/// What a worker reports along a run: metric points, evaluations, log lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub job: JobId,
    pub generation: Generation,
    pub points: Vec<v1::MetricPoint>,
    pub evals: Vec<v1::EvalPoint>,
    pub log_lines: Vec<String>,
}

/// How a rank ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every rank sends its parameter checksum; rank 0 also its result.
    Succeeded { checksum: f64, result: Option<Box<JobResult>> },
    Failed { reason: String, retry: Retry },
}

/// Whether, and under which cap, a failed job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A restart would repeat it (non-finite loss, a bad config or dataset): fail at once.
    No,
    /// It may be the job's own (a stuck rank): restart under `max_restarts`.
    Job,
    /// The cluster's (a lost worker, a dead peer, a kill from outside, ranks that never
    /// started): restart under `max_infra_restarts`.
    Infrastructure,
}

/// A rank's completion report.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub worker: WorkerId,
    pub job: JobId,
    pub generation: Generation,
    pub rank: Rank,
    pub outcome: Outcome,
}

/// What watchers of a job see.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    State(Box<Job>),
    Metric(v1::MetricPoint),
    Eval(Box<v1::EvalPoint>),
}
