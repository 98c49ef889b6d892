//! Prometheus metrics through the `metrics` facade. Names follow
//! `ablate_<subsystem>_<name>_<unit>`; labels are bounded (`job_id`, `sweep`, `arm`: one
//! series per job, dropped an hour after its last update; never step or rank). The job's
//! label is `job_id`, not `job`, which Prometheus keeps for the scrape target's name (it would
//! rename ours `exported_job`). Histograms have explicit buckets. `metrics_http` serves
//! them; `deploy/grafana/ablate.json` and `deploy/prometheus/alerts.yml` read them.

use ablate_proto::v1;

use crate::domain::{Job, JobState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .expect("bucket list is not empty")
                .idle_timeout(metrics_util::MetricKindMask::GAUGE | metrics_util::MetricKindMask::HISTOGRAM, Some(Duration::from_secs(3600)))
                .build_recorder();
            let handle = recorder.handle();
            // a recorder installed by someone else (an embedding program) keeps working
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!("ablate_build_info", "version" => env!("CARGO_PKG_VERSION"), "protocol" => ablate_proto::PROTOCOL_VERSION.to_string()).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    metrics::describe_gauge!("ablate_jobs", "Jobs by state");
    metrics::describe_gauge!("ablate_workers", "Registered workers by state (alive, lost)");
    metrics::describe_gauge!("ablate_job_train_loss", "Last reported training loss of a job");
    metrics::describe_gauge!("ablate_job_samples_per_second", "Last reported training throughput of a job (all ranks)");
    metrics::describe_gauge!("ablate_job_step", "Last reported step of a job");
    metrics::describe_gauge!("ablate_job_grad_norm", "Last reported gradient norm of a job");
    metrics::describe_gauge!("ablate_job_learning_rate", "Last reported learning rate of a job");
    metrics::describe_gauge!("ablate_job_fd_scenes", "Final FD-scenes of a job (scene evaluator features)");
    metrics::describe_gauge!("ablate_job_mmd", "Final MMD of a job (scene evaluator embedding)");
    metrics::describe_gauge!("ablate_job_accuracy", "Final compositional accuracy of a job");
    metrics::describe_gauge!("ablate_job_fid", "Final FID of a job (Inception-v3), when its weights are installed");
    metrics::describe_gauge!("ablate_job_cmmd", "Final CMMD of a job (CLIP embeddings), when its weights are installed");
    metrics::describe_gauge!("ablate_job_dino_mmd", "Final DINO-MMD of a job (DINOv2 embeddings), when its weights are installed");
    metrics::describe_gauge!("ablate_job_data_seconds", "Data loading time of a job's last reported step");
    metrics::describe_gauge!("ablate_job_compute_seconds", "Forward and backward time of a job's last reported step");
    metrics::describe_gauge!("ablate_job_comm_seconds", "Gradient exchange time of a job's last reported step (0 on one rank)");
    metrics::describe_gauge!("ablate_job_last_step_timestamp_seconds", "Unix time the coordinator received a job's last step");
    metrics::describe_gauge!("ablate_job_running", "1 while a job is running, 0 once it left that state");
    metrics::describe_gauge!("ablate_slots", "Slots of live, undrained workers by device kind: total and busy");
    metrics::describe_gauge!("ablate_queue_oldest_age_seconds", "How long the job queued longest has waited since it was last queued (0: none queued)");
    metrics::describe_gauge!("ablate_jobs_unplaceable", "Queued gangs larger than the live workers' slots of any one kind");
    metrics::describe_gauge!("ablate_worker_heartbeat_age_seconds", "Seconds since each registered worker's last heartbeat");
    metrics::describe_gauge!("ablate_build_info", "1, labelled with the coordinator's version and protocol");
    metrics::describe_histogram!("ablate_collective_allreduce_seconds", metrics::Unit::Seconds, "Gradient all-reduce time per step, by job");
    metrics::describe_histogram!("ablate_job_step_seconds", metrics::Unit::Seconds, "Training step time, by job");
    metrics::describe_histogram!("ablate_scheduler_queue_wait_seconds", metrics::Unit::Seconds, "Time from queued to placed");
    metrics::describe_histogram!("ablate_rendezvous_duration_seconds", metrics::Unit::Seconds, "Time from the first rank's arrival to a complete group");
    metrics::describe_counter!("ablate_job_transitions_total", "Job state transitions, by the state entered");
    metrics::describe_counter!("ablate_auth_rejections_total", "Calls refused by the token check, by gRPC code (unauthenticated: no valid token; permission_denied: a role or worker that may not)");
    metrics::describe_counter!("ablate_job_restarts_total", "Jobs sent back to the queue after a failure, by class (job: may be its own, e.g. a stuck rank; infrastructure: the cluster's)");
}

fn labels(job: &Job) -> [(&'static str, String); 3] {
    let sweep = job.sweep.as_ref().map(|s| s.to_string()).unwrap_or_default();
    [("job_id", job.id.to_string()), ("sweep", sweep), ("arm", job.arm.clone())]
}

pub fn job_state_changed(job: &Job) {
    metrics::counter!("ablate_job_transitions_total", "state" => job.state.label()).increment(1);
    metrics::gauge!("ablate_job_running", &labels(job)).set(if job.state == JobState::Running { 1.0 } else { 0.0 });
}

pub fn job_points(job: &Job, points: &[v1::MetricPoint]) {
    let Some(last) = points.last() else { return };
    let l = labels(job);
    metrics::gauge!("ablate_job_train_loss", &l).set(last.loss);
    metrics::gauge!("ablate_job_samples_per_second", &l).set(last.samples_per_sec);
    metrics::gauge!("ablate_job_step", &l).set(last.step as f64);
    metrics::gauge!("ablate_job_grad_norm", &l).set(last.grad_norm);
    metrics::gauge!("ablate_job_learning_rate", &l).set(last.lr);
    metrics::gauge!("ablate_job_data_seconds", &l).set(last.data_seconds);
    metrics::gauge!("ablate_job_compute_seconds", &l).set(last.compute_seconds);
    metrics::gauge!("ablate_job_comm_seconds", &l).set(last.comm_seconds);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    metrics::gauge!("ablate_job_last_step_timestamp_seconds", &l).set(now);
    for p in points {
        metrics::histogram!("ablate_collective_allreduce_seconds", &l).record(p.comm_seconds);
        metrics::histogram!("ablate_job_step_seconds", &l).record(p.step_seconds);
    }
}

/// The final evaluation of a finished job (FD-scenes, MMD, accuracy; FID, CMMD, DINO-MMD when available).
pub fn job_eval(job: &Job) {
    let Some(r) = job.result.as_ref().and_then(|r| r.eval.as_ref()) else { return };
    let l = labels(job);
    for (m, name) in [(&r.fd_scenes, "ablate_job_fd_scenes"), (&r.mmd_scenes, "ablate_job_mmd"), (&r.accuracy, "ablate_job_accuracy"), (&r.fid, "ablate_job_fid"), (&r.cmmd, "ablate_job_cmmd"), (&r.dino_mmd, "ablate_job_dino_mmd")] {
        if let Some(m) = m {
            metrics::gauge!(name, &l).set(m.value);
        }
    }
}

/// A job sent back to the queue, by the class of its failure (`job`, `infrastructure`).
pub fn job_restarted(class: &'static str) {
    metrics::counter!("ablate_job_restarts_total", "class" => class).increment(1);
}

/// A call refused by the token check (`unauthenticated`, `permission_denied`).
pub fn auth_rejected(code: &'static str) {
    metrics::counter!("ablate_auth_rejections_total", "code" => code).increment(1);
}

pub fn queue_wait(d: Duration) {
    metrics::histogram!("ablate_scheduler_queue_wait_seconds").record(d.as_secs_f64());
}

pub fn rendezvous_done(d: Duration) {
    metrics::histogram!("ablate_rendezvous_duration_seconds").record(d.as_secs_f64());
}

/// The cluster's gauges, published after every scheduling pass.
#[derive(Debug, Default)]
pub struct ClusterGauges {
    pub states: Vec<(JobState, usize)>,
    pub alive: usize,
    pub lost: usize,
    /// (device kind, total, busy) over live, undrained workers.
    pub slots: Vec<(&'static str, usize, usize)>,
    pub oldest_queued: Duration,
    pub unplaceable: usize,
    /// (worker, time since its last heartbeat)
    pub heartbeats: Vec<(String, Duration)>,
}

pub fn cluster(g: &ClusterGauges) {
    for (s, n) in &g.states {
        metrics::gauge!("ablate_jobs", "state" => s.label()).set(*n as f64);
    }
    metrics::gauge!("ablate_workers", "state" => "alive").set(g.alive as f64);
    metrics::gauge!("ablate_workers", "state" => "lost").set(g.lost as f64);
    for (kind, total, busy) in &g.slots {
        metrics::gauge!("ablate_slots", "kind" => *kind, "state" => "total").set(*total as f64);
        metrics::gauge!("ablate_slots", "kind" => *kind, "state" => "busy").set(*busy as f64);
    }
    metrics::gauge!("ablate_queue_oldest_age_seconds").set(g.oldest_queued.as_secs_f64());
    metrics::gauge!("ablate_jobs_unplaceable").set(g.unplaceable as f64);
    for (w, age) in &g.heartbeats {
        metrics::gauge!("ablate_worker_heartbeat_age_seconds", "worker" => w.clone()).set(age.as_secs_f64());
    }
}
