//! Conversions between the domain types (`domain`) and `ablate.v1`, in one place: requests
//! in, answers and events out, and the stored form of a job (the `v1::Job` encoding, so a
//! store written by an earlier version still opens). What the wire cannot express in the
//! domain (an unspecified state or device kind, a registration without an id) is refused
//! here with the reason, before `core` sees it.

use ablate_proto::v1;
use prost::Message;

use crate::domain::*;
use crate::error::CoordinatorError;

fn bad(msg: String) -> CoordinatorError {
    CoordinatorError::BadRequest(msg)
}

fn sweep_of(s: String) -> Option<SweepId> {
    (!s.is_empty()).then_some(SweepId(s))
}

fn sweep_str(s: &Option<SweepId>) -> String {
    s.as_ref().map(|s| s.0.clone()).unwrap_or_default()
}

// ---------------------------------------------------------------- states and kinds

impl From<JobState> for v1::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => Self::Queued,
            JobState::Scheduled => Self::Scheduled,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
        }
    }
}

pub fn job_state(s: v1::JobState) -> Result<JobState, CoordinatorError> {
    Ok(match s {
        v1::JobState::Unspecified => return Err(bad("job state unspecified (one of queued, scheduled, running, succeeded, failed, cancelled)".into())),
        v1::JobState::Queued => JobState::Queued,
        v1::JobState::Scheduled => JobState::Scheduled,
        v1::JobState::Running => JobState::Running,
        v1::JobState::Succeeded => JobState::Succeeded,
        v1::JobState::Failed => JobState::Failed,
        v1::JobState::Cancelled => JobState::Cancelled,
    })
}

/// The states of a `ListJobs` filter (unknown numbers refused, not dropped).
pub fn job_states(numbers: &[i32]) -> Result<Vec<JobState>, CoordinatorError> {
    numbers.iter().map(|n| v1::JobState::try_from(*n).map_err(|_| bad(format!("job state {n} is not one this coordinator knows"))).and_then(job_state)).collect()
}

impl From<DeviceKind> for v1::DeviceKind {
    fn from(k: DeviceKind) -> Self {
        match k {
            DeviceKind::Cpu => Self::Cpu,
            DeviceKind::Cuda => Self::Cuda,
        }
    }
}

// ---------------------------------------------------------------- requests in

impl From<v1::SubmitJobRequest> for JobSpec {
    fn from(r: v1::SubmitJobRequest) -> Self {
        JobSpec { name: r.name, config_toml: r.config_toml, world_size: r.world_size, priority: r.priority, sweep: sweep_of(r.sweep), arm: r.arm, baseline_arm: r.baseline_arm, owner: String::new() }
    }
}

pub fn worker(r: Option<v1::Registration>) -> Result<Worker, CoordinatorError> {
    let r = r.ok_or_else(|| bad("request without registration".into()))?;
    if r.worker_id.is_empty() {
        return Err(bad("registration without worker_id".into()));
    }
    let devices = r
        .devices
        .into_iter()
        .map(|d| {
            let kind = match v1::DeviceKind::try_from(d.kind) {
                Ok(v1::DeviceKind::Cpu) => DeviceKind::Cpu,
                Ok(v1::DeviceKind::Cuda) => DeviceKind::Cuda,
                _ => return Err(bad(format!("worker {}: device {} has kind {}, neither CPU (1) nor CUDA (2)", r.worker_id, d.index, d.kind))),
            };
            Ok(Device { kind, index: d.index, memory_bytes: d.memory_bytes, name: d.name })
        })
        .collect::<Result<_, _>>()?;
    Ok(Worker { id: WorkerId(r.worker_id), host: r.host, devices, labels: r.labels.into_iter().collect(), protocol_version: r.protocol_version, draining: r.draining })
}

impl From<v1::RunningRank> for RunningRank {
    fn from(r: v1::RunningRank) -> Self {
        RunningRank { job: JobId(r.job_id), generation: Generation(r.generation), rank: Rank(r.rank), pid: r.pid, step: r.step }
    }
}

impl From<v1::RendezvousPublishRequest> for Publication {
    fn from(r: v1::RendezvousPublishRequest) -> Self {
        Publication { job: JobId(r.job_id), generation: Generation(r.generation), rank: Rank(r.rank), address: r.address, params_hash: r.params_hash }
    }
}

impl From<v1::ReportMetricsRequest> for Progress {
    fn from(r: v1::ReportMetricsRequest) -> Self {
        Progress { job: JobId(r.job_id), generation: Generation(r.generation), points: r.points, evals: r.evals, log_lines: r.log_lines }
    }
}

impl From<v1::ReportCompletionRequest> for Completion {
    fn from(r: v1::ReportCompletionRequest) -> Self {
        let retry = match (r.retryable, r.infrastructure) {
            (false, _) => Retry::No,
            (true, false) => Retry::Job,
            (true, true) => Retry::Infrastructure,
        };
        let outcome = if r.success { Outcome::Succeeded { checksum: r.checksum, result: r.result.map(|x| Box::new(JobResult::from(x))) } } else { Outcome::Failed { reason: r.reason, retry } };
        Completion { worker: WorkerId(r.worker_id), job: JobId(r.job_id), generation: Generation(r.generation), rank: Rank(r.rank), outcome }
    }
}

impl From<v1::JobResult> for JobResult {
    fn from(r: v1::JobResult) -> Self {
        JobResult { steps: r.steps, final_loss: r.final_loss, samples_per_sec: r.samples_per_sec, wall_seconds: r.wall_seconds, rank_checksums: r.rank_checksums, eval: r.eval }
    }
}

// ---------------------------------------------------------------- answers out

impl From<&JobResult> for v1::JobResult {
    fn from(r: &JobResult) -> Self {
        v1::JobResult { steps: r.steps, final_loss: r.final_loss, samples_per_sec: r.samples_per_sec, wall_seconds: r.wall_seconds, rank_checksums: r.rank_checksums.clone(), eval: r.eval.clone() }
    }
}

impl From<&Job> for v1::Job {
    fn from(j: &Job) -> Self {
        v1::Job {
            id: j.id.0.clone(),
            name: j.name.clone(),
            state: v1::JobState::from(j.state) as i32,
            world_size: j.world_size,
            priority: j.priority,
            sweep: sweep_str(&j.sweep),
            arm: j.arm.clone(),
            baseline_arm: j.baseline_arm.clone(),
            generation: j.generation.0,
            placement: j.placement.iter().map(|p| v1::RankPlacement { rank: p.rank.0, worker_id: p.worker.0.clone(), slot: p.slot, pid: p.pid }).collect(),
            reason: j.reason.clone(),
            submitted_unix_ms: j.submitted_unix_ms,
            started_unix_ms: j.started_unix_ms,
            finished_unix_ms: j.finished_unix_ms,
            step: j.step,
            total_steps: j.total_steps,
            result: j.result.as_ref().map(v1::JobResult::from),
            config_toml: j.config_toml.clone(),
            sequence: j.sequence,
            restarts: j.restarts,
            max_restarts: j.max_restarts,
            infra_restarts: j.infra_restarts,
            max_infra_restarts: j.max_infra_restarts,
            ranks_done: j.ranks_done.clone(),
            owner: j.owner.clone(),
        }
    }
}

impl From<Job> for v1::Job {
    fn from(j: Job) -> Self {
        v1::Job::from(&j)
    }
}

/// A job as the wire (or an earlier store) holds it; refused when its state is unspecified.
pub fn job(j: v1::Job) -> Result<Job, CoordinatorError> {
    let state = job_state(j.state()).map_err(|_| bad(format!("job {:?} has state {}, which no job can be in", j.id, j.state)))?;
    Ok(Job {
        id: JobId(j.id),
        name: j.name,
        state,
        world_size: j.world_size,
        priority: j.priority,
        sweep: sweep_of(j.sweep),
        arm: j.arm,
        baseline_arm: j.baseline_arm,
        generation: Generation(j.generation),
        placement: j.placement.into_iter().map(|p| RankPlacement { rank: Rank(p.rank), worker: WorkerId(p.worker_id), slot: p.slot, pid: p.pid }).collect(),
        reason: j.reason,
        submitted_unix_ms: j.submitted_unix_ms,
        started_unix_ms: j.started_unix_ms,
        finished_unix_ms: j.finished_unix_ms,
        step: j.step,
        total_steps: j.total_steps,
        result: j.result.map(JobResult::from),
        config_toml: j.config_toml,
        sequence: j.sequence,
        restarts: j.restarts,
        max_restarts: j.max_restarts,
        infra_restarts: j.infra_restarts,
        max_infra_restarts: j.max_infra_restarts,
        ranks_done: j.ranks_done,
        owner: j.owner,
    })
}

impl From<&Assignment> for v1::Assignment {
    fn from(a: &Assignment) -> Self {
        v1::Assignment {
            job_id: a.job.0.clone(),
            generation: a.generation.0,
            rank: a.rank.0,
            world_size: a.world_size,
            slot: a.slot,
            config_toml: a.config_toml.clone(),
            sweep: sweep_str(&a.sweep),
            arm: a.arm.clone(),
            secret: a.secret.clone(),
        }
    }
}

impl From<&Worker> for v1::Registration {
    fn from(w: &Worker) -> Self {
        v1::Registration {
            worker_id: w.id.0.clone(),
            host: w.host.clone(),
            devices: w.devices.iter().map(|d| v1::Device { kind: v1::DeviceKind::from(d.kind) as i32, index: d.index, memory_bytes: d.memory_bytes, name: d.name.clone() }).collect(),
            labels: w.labels.clone().into_iter().collect(),
            protocol_version: w.protocol_version,
            draining: w.draining,
        }
    }
}

impl From<&WorkerStatus> for v1::WorkerInfo {
    fn from(w: &WorkerStatus) -> Self {
        v1::WorkerInfo { registration: Some(v1::Registration::from(&w.worker)), alive: w.alive, last_heartbeat_ms_ago: w.last_heartbeat_ms_ago, busy_slots: w.busy_slots, drained: w.drained, cordoned: w.cordoned }
    }
}

impl From<Event> for v1::JobEvent {
    fn from(e: Event) -> Self {
        use v1::job_event::Event as E;
        v1::JobEvent {
            event: Some(match e {
                Event::State(j) => E::State(v1::Job::from(&*j)),
                Event::Metric(p) => E::Metric(p),
                Event::Eval(e) => E::Eval(*e),
            }),
        }
    }
}

// ---------------------------------------------------------------- the stored form

pub fn encode_job(j: &Job) -> Vec<u8> {
    v1::Job::from(j).encode_to_vec()
}

/// Decodes a stored job; `key` names it in the error.
pub fn decode_job(key: &str, bytes: &[u8]) -> Result<Job, CoordinatorError> {
    let decoded = v1::Job::decode(bytes).map_err(|e| e.to_string()).and_then(|j| job(j).map_err(|e| e.to_string()));
    decoded.map_err(|message| crate::store::StoreError::Backend { op: "decode job", key: key.to_string(), message }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Job {
        Job {
            id: JobId("j000007".into()),
            name: "repa seed 1".into(),
            state: JobState::Running,
            world_size: 2,
            priority: 3,
            sweep: Some(SweepId("s000005".into())),
            arm: "repa".into(),
            baseline_arm: "baseline".into(),
            generation: Generation(2),
            placement: vec![RankPlacement { rank: Rank(0), worker: WorkerId("a".into()), slot: 1, pid: 42 }, RankPlacement { rank: Rank(1), worker: WorkerId("b".into()), slot: 0, pid: 0 }],
            reason: "restart 1 of 3: worker c lost".into(),
            submitted_unix_ms: 1,
            started_unix_ms: 2,
            finished_unix_ms: 0,
            step: 17,
            total_steps: 100,
            result: Some(JobResult { steps: 17, final_loss: 0.5, samples_per_sec: 3.0, wall_seconds: 4.0, rank_checksums: vec![1.0, 1.0], eval: Some(v1::EvalReport { step: 17, seconds: 2.0, ..Default::default() }) }),
            config_toml: "[train]\nsteps = 100\n".into(),
            sequence: 7,
            restarts: 1,
            max_restarts: 3,
            infra_restarts: 2,
            max_infra_restarts: 20,
            ranks_done: vec![true, false],
            owner: "ana".into(),
        }
    }

    #[test]
    fn a_job_round_trips_the_wire_and_the_store() {
        let j = sample();
        assert_eq!(job(v1::Job::from(&j)).unwrap(), j);
        assert_eq!(decode_job("jobs/j000007", &encode_job(&j)).unwrap(), j);
        let standalone = Job { sweep: None, result: None, ..sample() };
        assert_eq!(v1::Job::from(&standalone).sweep, "", "no sweep is the empty string on the wire");
        assert_eq!(job(v1::Job::from(&standalone)).unwrap(), standalone);
    }

    #[test]
    fn what_the_domain_cannot_hold_is_refused_with_its_reason() {
        let unspecified = v1::Job { id: "j1".into(), ..Default::default() };
        let e = decode_job("jobs/j1", &unspecified.encode_to_vec()).unwrap_err().to_string();
        assert!(e.contains("jobs/j1") && e.contains("state 0"), "{e}");
        assert!(worker(None).unwrap_err().to_string().contains("without registration"));
        let nameless = v1::Registration::default();
        assert!(worker(Some(nameless)).unwrap_err().to_string().contains("without worker_id"));
        let odd = v1::Registration { worker_id: "w".into(), devices: vec![v1::Device { kind: 0, index: 3, ..Default::default() }], ..Default::default() };
        let e = worker(Some(odd)).unwrap_err().to_string();
        assert!(e.contains("device 3") && e.contains("kind 0"), "{e}");
        assert!(job_states(&[1, 9]).unwrap_err().to_string().contains("job state 9"));
        assert_eq!(job_states(&[4, 1]).unwrap(), vec![JobState::Succeeded, JobState::Queued]);
    }

    #[test]
    fn a_worker_round_trips() {
        let w = Worker {
            id: WorkerId("gpu-node-1".into()),
            host: "10.0.0.1".into(),
            devices: vec![Device { kind: DeviceKind::Cuda, index: 0, memory_bytes: 80 << 30, name: "H100".into() }, Device { kind: DeviceKind::Cpu, index: 0, memory_bytes: 0, name: String::new() }],
            labels: [("zone".to_string(), "a".to_string())].into_iter().collect(),
            protocol_version: ablate_proto::PROTOCOL_VERSION,
            draining: true,
        };
        assert_eq!(worker(Some(v1::Registration::from(&w))).unwrap(), w);
    }
}
