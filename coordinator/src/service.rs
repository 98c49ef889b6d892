//! The gRPC services: thin translations between ablate.v1 and [`Core`], through `wire`.
//! Every call first asks its caller's identity (set by the token check, `auth`) for the
//! role it needs; worker calls also for the worker, job and rank they speak for.

use ablate_proto::v1::{self, admin_service_server::AdminService, job_service_server::JobService, worker_service_server::WorkerService};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{caller, Identity, Role, ADMIN, READERS, SUBMITTERS};
use crate::core::Core;
use crate::domain::{Event, Generation, JobId, Progress, SweepId};
use crate::wire;

#[derive(Clone)]
pub struct Jobs(pub Arc<Core>);

#[derive(Clone)]
pub struct Workers(pub Arc<Core>);

#[derive(Clone)]
pub struct Admin(pub Arc<Core>);

/// The caller, if one of `roles` may do `what`.
fn allowed<T>(r: &Request<T>, roles: &[Role], what: &str) -> Result<Identity, Status> {
    let who = caller(r)?;
    who.require(roles, what)?;
    Ok(who)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(&self, r: Request<v1::SubmitJobRequest>) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let who = allowed(&r, SUBMITTERS, "submit jobs")?;
        let mut spec: crate::domain::JobSpec = r.into_inner().into();
        // a job added to an existing sweep (a sweep that grows): only by the sweep's owner
        if let Some(first) = spec.sweep.as_ref().and_then(|s| self.0.list(&[], Some(s)).into_iter().next()) {
            own(&who, &first, "add jobs to the sweep of")?;
        }
        spec.owner = who.name;
        let job = self.0.submit(spec)?;
        Ok(Response::new(v1::SubmitJobResponse { job: Some(job.into()) }))
    }

    async fn submit_sweep(&self, r: Request<v1::SubmitSweepRequest>) -> Result<Response<v1::SubmitSweepResponse>, Status> {
        let who = allowed(&r, SUBMITTERS, "submit sweeps")?;
        let r = r.into_inner();
        let specs = r.jobs.into_iter().map(|j| crate::domain::JobSpec { owner: who.name.clone(), ..j.into() }).collect();
        let (sweep, jobs) = self.0.submit_sweep(&r.name, specs)?;
        Ok(Response::new(v1::SubmitSweepResponse { sweep: sweep.0, jobs: jobs.into_iter().map(Into::into).collect() }))
    }

    async fn get_sweep_results(&self, r: Request<v1::GetSweepResultsRequest>) -> Result<Response<v1::GetSweepResultsResponse>, Status> {
        allowed(&r, READERS, "read results")?;
        let sweep = SweepId(r.into_inner().sweep);
        let mut jobs = self.0.list(&[], Some(&sweep));
        if jobs.is_empty() {
            return Err(crate::error::CoordinatorError::NoSweep(sweep.0).into());
        }
        jobs.sort_by_key(|j| j.sequence);
        Ok(Response::new(v1::GetSweepResultsResponse { sweep: sweep.0, jobs: jobs.into_iter().map(Into::into).collect() }))
    }

    async fn get_job(&self, r: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        allowed(&r, READERS, "read jobs")?;
        Ok(Response::new(self.0.get(&JobId(r.into_inner().id))?.into()))
    }

    async fn list_jobs(&self, r: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        allowed(&r, READERS, "list jobs")?;
        let r = r.into_inner();
        let states = wire::job_states(&r.states)?;
        let sweep = (!r.sweep.is_empty()).then_some(SweepId(r.sweep));
        let (jobs, next) = self.0.list_page(&states, sweep.as_ref(), r.page_size as usize, &r.page_token);
        Ok(Response::new(v1::ListJobsResponse { jobs: jobs.into_iter().map(Into::into).collect(), next_page_token: next.unwrap_or_default() }))
    }

    async fn cancel_job(&self, r: Request<v1::CancelJobRequest>) -> Result<Response<v1::Job>, Status> {
        let who = allowed(&r, SUBMITTERS, "cancel jobs")?;
        let r = r.into_inner();
        let id = JobId(r.id);
        own(&who, &self.0.get(&id)?, "cancel")?;
        let reason = if r.reason.is_empty() { format!("cancelled by {}", who.name) } else { format!("{} (cancelled by {})", r.reason, who.name) };
        Ok(Response::new(self.0.cancel(&id, &reason)?.into()))
    }

    async fn retry_job(&self, r: Request<v1::RetryJobRequest>) -> Result<Response<v1::Job>, Status> {
        let who = allowed(&r, SUBMITTERS, "retry jobs")?;
        let id = JobId(r.into_inner().id);
        own(&who, &self.0.get(&id)?, "retry")?;
        Ok(Response::new(self.0.retry(&id)?.into()))
    }

    async fn extend_job(&self, r: Request<v1::ExtendJobRequest>) -> Result<Response<v1::Job>, Status> {
        let who = allowed(&r, SUBMITTERS, "extend jobs")?;
        let r = r.into_inner();
        let id = JobId(r.id);
        own(&who, &self.0.get(&id)?, "extend")?;
        Ok(Response::new(self.0.extend(&id, r.config_toml)?.into()))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(&self, r: Request<v1::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        allowed(&r, READERS, "watch jobs")?;
        let id = JobId(r.into_inner().id);
        // subscribe before reading the state, so no change falls between the two
        let mut rx = self.0.events.subscribe();
        let first = self.0.get(&id)?;
        let (tx, out) = tokio::sync::mpsc::channel(256);
        let core = self.0.clone();
        tokio::spawn(async move {
            let done = first.state.is_terminal();
            if tx.send(Ok(Event::State(Box::new(first)).into())).await.is_err() || done {
                return;
            }
            loop {
                let got = tokio::select! {
                    _ = tx.closed() => return,         // the client went away
                    _ = core.closing.cancelled() => return,
                    got = rx.recv() => got,
                };
                match got {
                    Ok((job, ev)) if job == id => {
                        let end = matches!(&ev, Event::State(j) if j.state.is_terminal());
                        if tx.send(Ok(ev.into())).await.is_err() || end {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // events were skipped, maybe the last one: look at the job itself
                        tracing::warn!("watcher of {id} skipped {n} events");
                        if let Ok(j) = core.get(&id) {
                            if j.state.is_terminal() {
                                let _ = tx.send(Ok(Event::State(Box::new(j)).into())).await;
                                return;
                            }
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn get_metrics(&self, r: Request<v1::GetMetricsRequest>) -> Result<Response<v1::GetMetricsResponse>, Status> {
        allowed(&r, READERS, "read metrics")?;
        let r = r.into_inner();
        let id = JobId(r.id);
        Ok(Response::new(v1::GetMetricsResponse { points: self.0.metrics(&id, r.from_step)?, evals: self.0.evals(&id)? }))
    }

    async fn get_logs(&self, r: Request<v1::GetLogsRequest>) -> Result<Response<v1::GetLogsResponse>, Status> {
        allowed(&r, READERS, "read logs")?;
        let r = r.into_inner();
        let (lines, next_line) = self.0.logs(&JobId(r.id), r.from_line)?;
        Ok(Response::new(v1::GetLogsResponse { lines, next_line }))
    }

    async fn get_eval_samples(&self, r: Request<v1::GetEvalSamplesRequest>) -> Result<Response<v1::EvalSamples>, Status> {
        allowed(&r, READERS, "read evaluation data")?;
        let id = JobId(r.into_inner().id);
        match self.0.eval_samples(&id)? {
            Some(s) => Ok(Response::new(s)),
            None => Err(Status::not_found(format!("job {id} has no per-image evaluation data (no final evaluation, or it has not finished)"))),
        }
    }

    async fn drain_worker(&self, r: Request<v1::DrainWorkerRequest>) -> Result<Response<v1::WorkerInfo>, Status> {
        allowed(&r, ADMIN, "drain workers")?;
        let r = r.into_inner();
        let id = crate::domain::WorkerId(r.worker_id);
        let w = if r.cordon { self.0.cordon(&id, r.undo)? } else { self.0.drain(&id, r.undo)? };
        Ok(Response::new((&w).into()))
    }

    async fn list_workers(&self, r: Request<v1::ListWorkersRequest>) -> Result<Response<v1::ListWorkersResponse>, Status> {
        allowed(&r, READERS, "list workers")?;
        Ok(Response::new(v1::ListWorkersResponse { workers: self.0.workers().iter().map(Into::into).collect() }))
    }
}

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn register(&self, r: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let who = caller(&r)?;
        let reg = wire::worker(r.into_inner().registration)?;
        who.worker(Some(reg.id.as_str()))?;
        self.0.register(reg)?;
        let o = &self.0.opts;
        Ok(Response::new(v1::RegisterResponse { heartbeat_interval_ms: o.heartbeat.as_millis() as u64, expiry_ms: o.worker_expiry.as_millis() as u64 }))
    }

    async fn heartbeat(&self, r: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let who = caller(&r)?;
        let r = r.into_inner();
        let reg = wire::worker(r.registration)?;
        who.worker(Some(reg.id.as_str()))?;
        let running: Vec<_> = r.running.into_iter().map(Into::into).collect();
        let (assignments, drain) = self.0.heartbeat(reg, &running)?;
        Ok(Response::new(v1::HeartbeatResponse { assignments: assignments.iter().map(Into::into).collect(), drain }))
    }

    async fn rendezvous_publish(&self, r: Request<v1::RendezvousPublishRequest>) -> Result<Response<v1::RendezvousPublishResponse>, Status> {
        let me = caller(&r)?.worker(None)?;
        let p: crate::domain::Publication = r.into_inner().into();
        self.0.may_act_for(&p.job, p.generation, Some(p.rank), &me)?;
        self.0.rendezvous_publish(p)?;
        Ok(Response::new(v1::RendezvousPublishResponse {}))
    }

    async fn rendezvous_fetch(&self, r: Request<v1::RendezvousFetchRequest>) -> Result<Response<v1::RendezvousFetchResponse>, Status> {
        let me = caller(&r)?.worker(None)?;
        let r = r.into_inner();
        let (job, generation) = (JobId(r.job_id), Generation(r.generation));
        self.0.may_act_for(&job, generation, None, &me)?;
        let wait = Duration::from_millis(r.timeout_ms.clamp(1, 600_000));
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.0.rendezvous_changed.notified();
            match self.0.rendezvous_table(&job, generation)? {
                Ok(addresses) => return Ok(Response::new(v1::RendezvousFetchResponse { addresses })),
                Err(present) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let world = self.0.get(&job)?.world_size as usize;
                        return Err(crate::error::CoordinatorError::RendezvousTimeout { job: job.0, generation: generation.0, present, world, waited_ms: wait.as_millis() as u64 }.into());
                    }
                    // wake on any publish, and poll now and then (a lost notification costs 200 ms)
                    let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
                }
            }
        }
    }

    async fn report_metrics(&self, r: Request<v1::ReportMetricsRequest>) -> Result<Response<v1::ReportMetricsResponse>, Status> {
        let me = caller(&r)?.worker(None)?;
        let p: Progress = r.into_inner().into();
        self.0.ran_on(&p.job, &me)?;
        self.0.report_progress(p)?;
        Ok(Response::new(v1::ReportMetricsResponse {}))
    }

    async fn report_checkpoint(&self, r: Request<v1::ReportCheckpointRequest>) -> Result<Response<v1::ReportCheckpointResponse>, Status> {
        let me = caller(&r)?.worker(None)?;
        let r = r.into_inner();
        self.0.ran_on(&JobId(r.job_id.clone()), &me)?;
        let line = format!("[checkpoint] step {} at {}", r.step, r.path);
        self.0.report_progress(Progress { job: JobId(r.job_id), generation: Generation(r.generation), points: Vec::new(), evals: Vec::new(), log_lines: vec![line] })?;
        Ok(Response::new(v1::ReportCheckpointResponse {}))
    }

    async fn report_completion(&self, r: Request<v1::ReportCompletionRequest>) -> Result<Response<v1::ReportCompletionResponse>, Status> {
        let who = caller(&r)?;
        let c: crate::domain::Completion = r.into_inner().into();
        let me = who.worker(Some(c.worker.as_str()))?;
        self.0.ran_on(&c.job, &me)?;
        self.0.report_completion(c)?;
        Ok(Response::new(v1::ReportCompletionResponse {}))
    }
}

fn token_info(t: &crate::auth::TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.label().into(),
        worker_id: t.worker.clone().unwrap_or_default(),
        created_unix_ms: t.created_unix_ms,
        revoked: t.revoked,
        created_by: t.created_by.clone(),
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    type ExportStoreStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::StoreBatch, Status>> + Send>>;

    async fn export_store(&self, r: Request<v1::ExportStoreRequest>) -> Result<Response<Self::ExportStoreStream>, Status> {
        let who = allowed(&r, ADMIN, "export the store")?;
        let entries = self.0.export()?;
        tracing::info!(by = %who.name, "store exported: {} keys", entries.len());
        let total = entries.len() as u64;
        let mut batches: Vec<Result<v1::StoreBatch, Status>> = entries.chunks(500).map(|c| Ok(v1::StoreBatch { entries: c.iter().map(|e| v1::StoreEntry { key: e.key.clone(), value: e.value.clone() }).collect(), total: 0, last: false })).collect();
        batches.push(Ok(v1::StoreBatch { entries: vec![], total, last: true }));
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn create_token(&self, r: Request<v1::CreateTokenRequest>) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let who = allowed(&r, ADMIN, "create tokens")?;
        let r = r.into_inner();
        let role = Role::parse(&r.role).ok_or_else(|| Status::invalid_argument(format!("role {:?}: expected admin, researcher, viewer or worker", r.role)))?;
        let worker = Some(r.worker_id.as_str()).filter(|w| !w.is_empty());
        let (rec, token) = self.0.auth.create(&r.name, role, worker, &who.name)?;
        tracing::info!(by = %who.name, "token {} created for {} (role {})", rec.id, rec.name, role.label());
        Ok(Response::new(v1::CreateTokenResponse { info: Some(token_info(&rec)), token }))
    }

    async fn list_tokens(&self, r: Request<v1::ListTokensRequest>) -> Result<Response<v1::ListTokensResponse>, Status> {
        allowed(&r, ADMIN, "list tokens")?;
        Ok(Response::new(v1::ListTokensResponse { tokens: self.0.auth.list()?.iter().map(token_info).collect() }))
    }

    async fn revoke_token(&self, r: Request<v1::RevokeTokenRequest>) -> Result<Response<v1::TokenInfo>, Status> {
        let who = allowed(&r, ADMIN, "revoke tokens")?;
        let rec = self.0.auth.revoke(&r.into_inner().id)?;
        tracing::info!(by = %who.name, "token {} of {} revoked", rec.id, rec.name);
        Ok(Response::new(token_info(&rec)))
    }
}

/// Whether `who` may `what` `job`: its owner or an admin.
fn own(who: &crate::auth::Identity, job: &crate::domain::Job, what: &str) -> Result<(), Status> {
    if who.role == Role::Admin || job.owner == who.name {
        return Ok(());
    }
    let owner = if job.owner.is_empty() { "nobody recorded".to_string() } else { job.owner.clone() };
    Err(crate::auth::denied(format!("{} may {what} its own jobs only: job {} belongs to {owner} (an admin may {what} any)", who.name, job.id)))
}
