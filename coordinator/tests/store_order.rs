//! Every change of a job is written to the store before memory shows it, and no store write
//! happens under the coordinator's state lock (issue 20, item 6):
//! - while a write hangs in the store (etcd slow or cut off), reads, the job list, worker
//!   status and a heartbeat that changes nothing are answered, and memory still shows the
//!   job as it was;
//! - a write the store refuses changes nothing in memory (a cancel, a placement by the
//!   periodic pass); once the store takes writes again the same calls go through, and a
//!   coordinator reopened on the store sees what memory saw.

use ablate_coordinator::domain::*;
use ablate_coordinator::store::{memory::MemoryStore, Compare, Entry, Kv, Op, StoreError, TxnResult};
use ablate_coordinator::{Core, Options};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A memory store whose writes can be held (until released) or refused.
#[derive(Default)]
struct Gate {
    inner: MemoryStore,
    held: Mutex<bool>,
    released: Condvar,
    holding: AtomicBool,
    refuse: AtomicBool,
}

impl Gate {
    fn pass(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(StoreError::Backend { op, key: key.into(), message: "the store is unreachable (test)".into() });
        }
        let mut held = self.held.lock().unwrap();
        while *held {
            self.holding.store(true, Ordering::SeqCst);
            held = self.released.wait(held).unwrap();
        }
        Ok(())
    }
    fn hold(&self, on: bool) {
        *self.held.lock().unwrap() = on;
        self.released.notify_all();
    }
}

impl Kv for Gate {
    fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key)
    }
    fn range(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.inner.range(prefix)
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.pass("put", key)?;
        self.inner.put(key, value)
    }
    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.pass("delete", key)?;
        self.inner.delete(key)
    }
    fn txn(&self, compares: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, StoreError> {
        self.pass("txn", "")?;
        self.inner.txn(compares, success, failure)
    }
    fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision()
    }
}

fn worker(id: &str) -> Worker {
    Worker {
        id: WorkerId(id.into()),
        host: "127.0.0.1".into(),
        devices: vec![Device { kind: DeviceKind::Cpu, index: 0, memory_bytes: 0, name: "cpu".into() }],
        labels: Default::default(),
        protocol_version: ablate_proto::PROTOCOL_VERSION,
        draining: false,
    }
}

fn open(gate: &Arc<Gate>, dir: &std::path::Path) -> Arc<Core> {
    Arc::new(Core::open(gate.clone(), Options { runs_dir: dir.to_path_buf(), ..Options::default() }).unwrap())
}

fn spec() -> JobSpec {
    JobSpec { config_toml: "[train]\nsteps = 10\n".into(), world_size: 1, ..Default::default() }
}

/// Runs `f` on a thread and gives its answer, or None when it takes longer than 5 s.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(5)).ok()
}

#[test]
fn a_write_hanging_in_the_store_blocks_no_reader_and_memory_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let core = open(&gate, dir.path());
    let id = core.submit(spec()).unwrap().id;
    core.register(worker("w0")).unwrap();
    gate.hold(true);
    let writer = {
        let (core, id) = (core.clone(), id.clone());
        std::thread::spawn(move || core.cancel(&id, "test"))
    };
    while !gate.holding.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    // the cancel is in the store now, held there; everything that only reads goes on
    let (c, i) = (core.clone(), id.clone());
    let seen = within(move || (c.get(&i).unwrap().state, c.list(&[], None).len(), c.workers().len())).expect("reads wait on a store write: the state lock is held across it");
    assert_eq!(seen, (JobState::Queued, 1, 1), "memory ran ahead of the store");
    let c = core.clone();
    let (assigned, drained) = within(move || c.heartbeat(worker("w0"), &[]).unwrap()).expect("a heartbeat that changes nothing waits on a store write");
    assert!(assigned.is_empty() && !drained);
    gate.hold(false);
    let cancelled = writer.join().unwrap().unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(core.get(&id).unwrap().state, JobState::Cancelled);
}

#[test]
fn a_refused_write_changes_nothing_in_memory_and_the_store_agrees_after() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let core = open(&gate, dir.path());
    let a = core.submit(spec()).unwrap().id;
    let b = core.submit(spec()).unwrap().id;
    gate.refuse.store(true, Ordering::SeqCst);
    assert!(core.cancel(&a, "test").is_err());
    assert_eq!(core.get(&a).unwrap().state, JobState::Queued);
    assert!(core.submit(spec()).is_err());
    assert_eq!(core.list(&[], None).len(), 2, "a job the store refused is not in memory");
    // a worker arrives; the periodic pass cannot store its placement, so nothing is placed
    core.register(worker("w0")).unwrap();
    assert!(core.tick().is_err());
    assert!(core.list(&[JobState::Scheduled], None).is_empty());
    assert!(core.heartbeat(worker("w0"), &[]).unwrap().0.is_empty(), "nothing is assigned that the store does not hold");
    // the store is back: the same calls go through
    gate.refuse.store(false, Ordering::SeqCst);
    core.tick().unwrap();
    let placed = core.list(&[JobState::Scheduled], None);
    assert_eq!(placed.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![a.clone()]);
    let assigned = core.heartbeat(worker("w0"), &[]).unwrap().0;
    assert_eq!(assigned.iter().map(|x| x.job.clone()).collect::<Vec<_>>(), vec![a.clone()]);
    core.cancel(&b, "test").unwrap();
    // a coordinator on the same store sees what this one's memory shows
    let reopened = Core::open(gate.clone(), Options { runs_dir: dir.path().to_path_buf(), ..Options::default() }).unwrap();
    for id in [&a, &b] {
        let (m, s) = (core.get(id).unwrap(), reopened.get(id).unwrap());
        assert_eq!((m.state, m.generation, m.placement.len()), (s.state, s.generation, s.placement.len()), "{id}");
    }
}
