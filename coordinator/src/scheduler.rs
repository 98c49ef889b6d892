//! The gang scheduler: a pure function from a cluster snapshot (free slots per worker, the
//! queue) to placements. A job of world size W gets W slots at once or nothing.
//!
//! Order: priority (higher first), then submission order. The queue is strict: when the
//! head job cannot be placed, nothing behind it is (no backfill), so a large gang is never
//! starved by a stream of small ones. A gang uses one device kind (CUDA when enough GPUs
//! are free, else CPU slots). Packing: a gang that fits on one worker goes to the worker
//! with the fewest free slots that still holds it (best fit, leaving big holes for big
//! gangs); otherwise it spans the workers with the most free slots first. Rank 0 lands on
//! the first worker chosen.

use std::collections::BTreeMap;

use crate::domain::{DeviceKind, JobId, WorkerId};

/// One worker's free slots of one device kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSlots {
    pub worker: WorkerId,
    pub kind: DeviceKind,
    pub free: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub job: JobId,
    pub priority: i32,
    pub sequence: u64,
    pub world: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: JobId,
    /// (worker, slot) of rank 0, 1, ...
    pub ranks: Vec<(WorkerId, u32)>,
}

const CUDA: DeviceKind = DeviceKind::Cuda;

pub fn schedule(workers: &[WorkerSlots], queue: &[Pending]) -> Vec<Placement> {
    // free slots per (kind, worker), sorted, deduplicated
    let mut free: BTreeMap<(DeviceKind, WorkerId), Vec<u32>> = BTreeMap::new();
    for w in workers {
        let e = free.entry((w.kind, w.worker.clone())).or_default();
        e.extend(&w.free);
        e.sort_unstable();
        e.dedup();
    }
    let mut order: Vec<&Pending> = queue.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.sequence.cmp(&b.sequence)).then(a.job.cmp(&b.job)));
    let mut out = Vec::new();
    for job in order {
        let world = job.world as usize;
        if world == 0 {
            continue;
        }
        let total = |kind: DeviceKind| free.iter().filter(|((k, _), _)| *k == kind).map(|(_, v)| v.len()).sum::<usize>();
        let kind = if total(CUDA) >= world {
            CUDA
        } else if let Some(k) = free.keys().map(|(k, _)| *k).filter(|k| *k != CUDA).find(|k| total(*k) >= world) {
            k
        } else {
            break; // strict queue: the head waits for slots
        };
        let mut cands: Vec<(WorkerId, usize)> = free.iter().filter(|((k, _), v)| *k == kind && !v.is_empty()).map(|((_, w), v)| (w.clone(), v.len())).collect();
        let fits: Option<WorkerId> = cands.iter().filter(|(_, n)| *n >= world).min_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0))).map(|(w, _)| w.clone());
        let chosen: Vec<WorkerId> = match fits {
            Some(w) => vec![w],
            None => {
                cands.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                cands.into_iter().map(|(w, _)| w).collect()
            }
        };
        let mut ranks = Vec::with_capacity(world);
        for w in chosen {
            let slots = free.get_mut(&(kind, w.clone())).expect("candidate exists");
            while ranks.len() < world && !slots.is_empty() {
                ranks.push((w.clone(), slots.remove(0)));
            }
            if ranks.len() == world {
                break;
            }
        }
        out.push(Placement { job: job.job.clone(), ranks });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(w: &str, n: u32) -> WorkerSlots {
        WorkerSlots { worker: w.into(), kind: DeviceKind::Cpu, free: (0..n).collect() }
    }
    fn job(id: &str, priority: i32, sequence: u64, world: u32) -> Pending {
        Pending { job: id.into(), priority, sequence, world }
    }
    fn at(w: &str, slot: u32) -> (WorkerId, u32) {
        (w.into(), slot)
    }

    #[test]
    fn a_gang_waits_for_all_its_slots() {
        assert_eq!(schedule(&[cpu("a", 1), cpu("b", 1)], &[job("j", 0, 1, 3)]), vec![]);
        let p = schedule(&[cpu("a", 1), cpu("b", 1), cpu("c", 1)], &[job("j", 0, 1, 3)]);
        assert_eq!(p[0].ranks, vec![at("a", 0), at("b", 0), at("c", 0)]);
    }

    #[test]
    fn priority_then_fifo_and_the_head_blocks() {
        let q = [job("old", 0, 1, 1), job("urgent", 5, 3, 1), job("new", 0, 2, 1)];
        let p = schedule(&[cpu("a", 2)], &q);
        assert_eq!(p.iter().map(|p| p.job.as_str()).collect::<Vec<_>>(), ["urgent", "old"]);
        // a blocked head keeps smaller jobs behind it queued
        let p = schedule(&[cpu("a", 2)], &[job("big", 0, 1, 3), job("small", 0, 2, 1)]);
        assert!(p.is_empty());
    }

    #[test]
    fn best_fit_packing_and_gpus_first() {
        // the 2-slot gang goes to the worker with 2 free, keeping the 4-slot one whole
        let p = schedule(&[cpu("big", 4), cpu("small", 2)], &[job("j", 0, 1, 2)]);
        assert_eq!(p[0].ranks, vec![at("small", 0), at("small", 1)]);
        let gpu = WorkerSlots { worker: "g".into(), kind: DeviceKind::Cuda, free: vec![0, 1] };
        let p = schedule(&[cpu("c", 8), gpu], &[job("j", 0, 1, 2)]);
        assert!(p[0].ranks.iter().all(|(w, _)| w.as_str() == "g"));
    }
}
