//! Properties of the gang scheduler over random clusters and queues.

use ablate_coordinator::domain::{DeviceKind, JobId, WorkerId};
use ablate_coordinator::scheduler::{schedule, Pending, Placement, WorkerSlots};
use proptest::prelude::*;
use std::collections::HashSet;

fn cluster() -> impl Strategy<Value = Vec<WorkerSlots>> {
    prop::collection::vec((any::<bool>(), prop::collection::vec(0u32..8, 0..8)), 0..8)
        .prop_map(|ws| ws.into_iter().enumerate().map(|(i, (kind, free))| WorkerSlots { worker: WorkerId(format!("w{i}")), kind: if kind { DeviceKind::Cuda } else { DeviceKind::Cpu }, free }).collect())
}

fn queue() -> impl Strategy<Value = Vec<Pending>> {
    prop::collection::vec((-2i32..3, 1u32..6), 0..12)
        .prop_map(|js| js.into_iter().enumerate().map(|(i, (priority, world))| Pending { job: JobId(format!("j{i}")), priority, sequence: i as u64, world }).collect())
}

fn apply(workers: &[WorkerSlots], queue: &[Pending], placed: &[Placement]) -> (Vec<WorkerSlots>, Vec<Pending>) {
    let used: HashSet<(WorkerId, u32)> = placed.iter().flat_map(|p| p.ranks.iter().cloned()).collect();
    let jobs: HashSet<&str> = placed.iter().map(|p| p.job.as_str()).collect();
    let ws = workers.iter().map(|w| WorkerSlots { worker: w.worker.clone(), kind: w.kind, free: w.free.iter().copied().filter(|s| !used.contains(&(w.worker.clone(), *s))).collect() }).collect();
    (ws, queue.iter().filter(|j| !jobs.contains(j.job.as_str())).cloned().collect())
}

proptest! {
    #[test]
    fn never_double_books_and_gangs_are_whole(workers in cluster(), queue in queue()) {
        let placed = schedule(&workers, &queue);
        let mut seen = HashSet::new();
        let free: HashSet<(WorkerId, u32)> = workers.iter().flat_map(|w| w.free.iter().map(move |s| (w.worker.clone(), *s))).collect();
        for p in &placed {
            let job = queue.iter().find(|j| j.job == p.job).expect("placed job was queued");
            prop_assert_eq!(p.ranks.len(), job.world as usize, "all ranks or none");
            let kinds: HashSet<DeviceKind> = p.ranks.iter().map(|(w, _)| workers.iter().find(|x| &x.worker == w).unwrap().kind).collect();
            prop_assert_eq!(kinds.len(), 1, "one device kind per gang");
            for r in &p.ranks {
                prop_assert!(free.contains(r), "placed on a slot that was not free: {:?}", r);
                prop_assert!(seen.insert(r.clone()), "slot {:?} booked twice", r);
            }
        }
        let jobs: HashSet<&str> = placed.iter().map(|p| p.job.as_str()).collect();
        prop_assert_eq!(jobs.len(), placed.len(), "a job placed once");
    }

    #[test]
    fn deterministic_and_idempotent(workers in cluster(), queue in queue()) {
        let a = schedule(&workers, &queue);
        prop_assert_eq!(&a, &schedule(&workers, &queue));
        // applying the placements and scheduling again places nothing more
        let (ws, q) = apply(&workers, &queue, &a);
        prop_assert_eq!(schedule(&ws, &q), vec![]);
    }

    #[test]
    fn order_is_priority_then_fifo(workers in cluster(), queue in queue()) {
        let placed = schedule(&workers, &queue);
        let key = |id: &JobId| { let j = queue.iter().find(|j| &j.job == id).unwrap(); (-j.priority, j.sequence) };
        let keys: Vec<_> = placed.iter().map(|p| key(&p.job)).collect();
        prop_assert!(keys.windows(2).all(|w| w[0] <= w[1]));
        // everything ahead of a placed job in the order was placed too (strict queue)
        if let Some(last) = keys.last() {
            let ahead = queue.iter().filter(|j| (-j.priority, j.sequence) < *last).count();
            prop_assert_eq!(ahead + 1, placed.len());
        }
    }
}
