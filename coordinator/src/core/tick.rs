//! The periodic pass: silent workers are lost (their jobs restart or fail), placed jobs
//! whose ranks did not start in time go elsewhere, queued jobs are placed. Planned on
//! copies under the state lock ([`tick_plan`]), committed like every change of a job.

use super::*;

impl Core {
    /// Expires silent workers, requeues what they held and what never launched, places
    /// queued jobs; then forgets what is over (rendezvous tables, long-lost workers).
    pub fn tick(&self) -> Result<(), CoordinatorError> {
        let _w = self.write();
        let plan = {
            let mut g = self.lock();
            let expiry = self.opts.worker_expiry;
            for w in g.workers.values_mut() {
                if w.alive && w.last_seen.elapsed() > expiry {
                    w.alive = false;
                    tracing::warn!(worker = %w.reg.id, "worker lost: no heartbeat for {:?}", expiry);
                }
            }
            // after a coordinator restart, workers get one expiry period to re-attach
            tick_plan(&mut g, &self.opts, self.started.elapsed() > expiry)
        };
        let committed = self.commit(plan);
        let mut g = self.lock();
        // rendezvous tables of generations that are over
        let live: std::collections::HashSet<(JobId, Generation)> = g.jobs.values().filter(|j| !j.state.is_terminal()).map(|j| (j.id.clone(), j.generation)).collect();
        g.rendezvous.retain(|k, _| live.contains(k));
        // workers lost long ago with nothing placed on them are forgotten
        let held = busy_slots(g.jobs.values());
        let expiry = self.opts.worker_expiry;
        g.workers.retain(|id, w| w.alive || w.last_seen.elapsed() < expiry * 10 || held.iter().any(|(h, _)| h == id));
        let gauges = cluster_gauges(&g);
        drop(g);
        crate::metrics::cluster(&gauges);
        committed
    }
}

/// The jobs one pass changes, as changed copies (memory's jobs untouched; only the launch
/// clock of a scheduled job found without one, after a coordinator restart, starts here).
fn tick_plan(g: &mut Inner, opts: &Options, grace_over: bool) -> Vec<Job> {
    let expiry = opts.worker_expiry;
    let alive: std::collections::HashSet<WorkerId> = g.workers.values().filter(|w| w.alive).map(|w| w.reg.id.clone()).collect();
    let mut work: BTreeMap<JobId, Job> = BTreeMap::new();
    if grace_over {
        for job in g.jobs.values().filter(|j| j.state.is_placed()) {
            if let Some(lost) = job.placement.iter().find(|p| !alive.contains(&p.worker)) {
                let mut j = job.clone();
                requeue(&mut j, &format!("worker {} lost (no heartbeat for {:?})", lost.worker, expiry), Retry::Infrastructure);
                work.insert(j.id.clone(), j);
            }
        }
    }
    // placed jobs whose ranks did not all start in time go elsewhere (a worker that took the
    // assignment and never ran it); after a coordinator restart the clock starts over
    let deadline = opts.launch_deadline;
    let scheduled: Vec<JobId> = g.jobs.values().filter(|j| j.state == JobState::Scheduled && !work.contains_key(&j.id)).map(|j| j.id.clone()).collect();
    for id in scheduled {
        let since = *g.placed_at.entry(id.clone()).or_insert_with(Instant::now);
        if since.elapsed() <= deadline {
            continue;
        }
        let mut j = g.jobs[&id].clone();
        let waiting: Vec<String> = j.placement.iter().filter(|p| p.pid == 0).map(|p| format!("rank {} on {}", p.rank, p.worker)).collect();
        requeue(&mut j, &format!("not started within {deadline:?} ({})", waiting.join(", ")), Retry::Infrastructure);
        work.insert(id, j);
    }
    let g: &Inner = g;
    // place queued jobs on the free slots of live workers (as the jobs stand after the above)
    let busy = busy_slots(g.jobs.values().map(|j| work.get(&j.id).unwrap_or(j)));
    let mut slots = Vec::new();
    // a draining worker (preemption, or drained by an operator) or a cordoned one takes nothing new
    let open = |w: &WorkerEntry| w.alive && !w.reg.draining && !g.drained.contains(&w.reg.id) && !g.cordoned.contains(&w.reg.id);
    for w in g.workers.values().filter(|w| open(w)) {
        let mut by_kind: BTreeMap<DeviceKind, Vec<u32>> = BTreeMap::new();
        for d in &w.reg.devices {
            if !busy.contains(&(w.reg.id.clone(), d.index)) {
                by_kind.entry(d.kind).or_default().push(d.index);
            }
        }
        slots.extend(by_kind.into_iter().map(|(kind, free)| WorkerSlots { worker: w.reg.id.clone(), kind, free }));
    }
    // a gang larger than the live workers' slots of any one kind cannot be placed until more
    // register: it waits with a reason that says so and, once the re-attach grace is over, no
    // longer holds up the strict queue behind it
    let mut capacity: BTreeMap<DeviceKind, usize> = BTreeMap::new();
    for d in g.workers.values().filter(|w| open(w)).flat_map(|w| &w.reg.devices) {
        *capacity.entry(d.kind).or_default() += 1;
    }
    let largest = capacity.values().copied().max().unwrap_or(0);
    let mut queue = Vec::new();
    let mut reasons = Vec::new();
    for j in g.jobs.values().map(|j| work.get(&j.id).unwrap_or(j)).filter(|j| j.state == JobState::Queued) {
        let fits = j.world_size as usize <= largest;
        if grace_over {
            let waiting = (!fits).then(|| format!("{WAITING}a gang of {} needs that many slots of one kind; the live workers have {largest}", j.world_size));
            let own = j.reason.is_empty() || j.reason.starts_with(WAITING);
            match waiting {
                Some(w) if own && j.reason != w => reasons.push((j.clone(), w)),
                None if j.reason.starts_with(WAITING) => reasons.push((j.clone(), String::new())),
                _ => {}
            }
            if !fits {
                continue;
            }
        }
        queue.push(Pending { job: j.id.clone(), priority: j.priority, sequence: j.sequence, world: j.world_size });
    }
    for (mut j, reason) in reasons {
        j.reason = reason;
        work.insert(j.id.clone(), j);
    }
    for p in scheduler::schedule(&slots, &queue) {
        let mut job = work.remove(&p.job).unwrap_or_else(|| g.jobs[&p.job].clone());
        job.generation = Generation(job.generation.0 + 1);
        job.state = JobState::Scheduled;
        job.ranks_done = vec![false; job.world_size as usize];
        job.result = None;
        job.placement = p.ranks.into_iter().enumerate().map(|(r, (worker, slot))| RankPlacement { rank: Rank(r as u32), worker, slot, pid: 0 }).collect();
        work.insert(p.job, job);
    }
    work.into_values().collect()
}

/// What the cluster's gauges show now.
fn cluster_gauges(g: &Inner) -> crate::metrics::ClusterGauges {
    let busy = busy_slots(g.jobs.values());
    let mut slots: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for w in g.workers.values().filter(|w| w.alive && !w.reg.draining && !g.drained.contains(&w.reg.id) && !g.cordoned.contains(&w.reg.id)) {
        for d in &w.reg.devices {
            let e = slots.entry(d.kind.label()).or_default();
            e.0 += 1;
            e.1 += usize::from(busy.contains(&(w.reg.id.clone(), d.index)));
        }
    }
    crate::metrics::ClusterGauges {
        states: state_counts(&g.jobs),
        alive: g.workers.values().filter(|w| w.alive).count(),
        lost: g.workers.values().filter(|w| !w.alive).count(),
        slots: slots.into_iter().map(|(k, (t, b))| (k, t, b)).collect(),
        oldest_queued: g.jobs.values().filter(|j| j.state == JobState::Queued).filter_map(|j| g.queued_at.get(&j.id)).map(|t| t.elapsed()).max().unwrap_or_default(),
        unplaceable: g.jobs.values().filter(|j| j.state == JobState::Queued && j.reason.starts_with(WAITING)).count(),
        heartbeats: g.workers.values().map(|w| (w.reg.id.to_string(), w.last_seen.elapsed())).collect(),
    }
}
