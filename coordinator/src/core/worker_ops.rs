//! What workers and ranks call: registration and heartbeats, the rendezvous, progress and
//! completion reports, and who may report for what.

use super::*;

impl Core {
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
    /// whether an operator drained it. Liveness and steps are memory only; a change of a job
    /// (a rank's pid, the job running, a vanished rank) is planned again and committed under
    /// the write lock.
    pub fn heartbeat(&self, reg: Worker, running: &[RunningRank]) -> Result<(Vec<Assignment>, bool), CoordinatorError> {
        Self::check_protocol(&reg)?;
        let wid = reg.id.clone();
        let changes = {
            let mut g = self.lock();
            g.workers.insert(wid.clone(), WorkerEntry { reg, last_seen: Instant::now(), alive: true });
            for r in running {
                if let Some(job) = g.jobs.get_mut(&r.job) {
                    if job.generation == r.generation && !job.state.is_terminal() && r.rank.0 < job.world_size {
                        job.step = job.step.max(r.step);
                    }
                }
            }
            !heartbeat_plan(&g, &wid, running).is_empty()
        };
        if changes {
            let _w = self.write();
            let plan = heartbeat_plan(&self.lock(), &wid, running);
            for j in plan.iter().filter(|j| !j.state.is_placed()) {
                tracing::warn!(job = %j.id, "{}", j.reason);
            }
            self.commit(plan)?;
        }
        let g = self.lock();
        let assignments = g
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
        Ok((assignments, g.drained.contains(&wid)))
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
        let _w = self.write();
        let current = self.get(&r.job)?;
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
            return self.runs.append_logs(r.job.as_str(), &[line]);
        }
        let mut job = current;
        let world = job.world_size as usize;
        let rank = r.rank.0 as usize;
        match r.outcome {
            Outcome::Failed { reason, retry } => {
                let reason = format!("rank {} on worker {}: {reason}", r.rank, r.worker);
                if retry == Retry::No {
                    finish(&mut job, JobState::Failed, &reason);
                } else {
                    // the whole gang restarts (from rank 0's last checkpoint) under a new generation
                    requeue(&mut job, &reason, retry);
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
        self.commit(vec![job])
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

}

/// The changes a heartbeat of `wid` running `running` makes to the jobs placed on it: a
/// rank's new pid, a scheduled job whose ranks all started runs, and a running job's rank
/// that the worker no longer runs (its agent restarted or lost the process, so it will never
/// finish) restarts the gang. Pure: the changed copies, memory untouched.
fn heartbeat_plan(g: &Inner, wid: &WorkerId, running: &[RunningRank]) -> Vec<Job> {
    let mut out = Vec::new();
    for j in g.jobs.values().filter(|j| j.state.is_placed() && j.placement.iter().any(|p| &p.worker == wid)) {
        let mut job = j.clone();
        let mut changed = false;
        for r in running.iter().filter(|r| r.job == j.id && r.generation == j.generation && r.rank.0 < j.world_size) {
            if let Some(p) = job.placement.iter_mut().find(|p| p.rank == r.rank && &p.worker == wid) {
                if r.pid != 0 && p.pid != r.pid {
                    p.pid = r.pid;
                    changed = true;
                }
            }
        }
        if job.state == JobState::Scheduled && job.placement.iter().all(|p| p.pid != 0) {
            job.state = JobState::Running;
            job.started_unix_ms = now_ms();
            changed = true;
        }
        if job.state == JobState::Running {
            let here = job.placement.iter().filter(|p| &p.worker == wid && !job.rank_done(p.rank)).map(|p| p.rank);
            let vanished = here.clone().find(|rank| !running.iter().any(|r| r.job == job.id && r.generation == job.generation && r.rank == *rank));
            if let Some(rank) = vanished {
                let why = format!("rank {rank} vanished from worker {wid} (its agent restarted or lost the process)");
                requeue(&mut job, &why, Retry::Infrastructure);
                changed = true;
            }
        }
        if changed {
            out.push(job);
        }
    }
    out
}
