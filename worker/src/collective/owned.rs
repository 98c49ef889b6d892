//! A communicator owned by one thread, as NCCL wants it: the thread creates it, runs every
//! operation on it and destroys it. Callers hand it operations and wait with a deadline, so
//! a dead or stuck peer turns into an error instead of a hang:
//! - an operation that fails, or passes its deadline while polling, aborts the communicator
//!   on the owner thread (for NCCL: `ncclCommAbort`, which ends its kernels) and reports why;
//! - if the owner thread does not answer at all (stuck inside a library call), the caller
//!   gives up after the deadline plus a grace period;
//!
//! either way the group is broken: every later call fails at once with the first reason,
//! and the rank fails its generation. A thread left stuck ends with the rank's process.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use ablate_trainer::collective::CollectiveError;

/// What the owner thread does to a communicator that must stop now.
pub trait Abort: 'static {
    /// Ends the communicator's pending work; called once, on the owner thread.
    fn abort(&mut self);
}

type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

pub struct Owned<C: Abort> {
    rank: usize,
    grace: Duration,
    tx: Option<mpsc::Sender<Job<C>>>,
    thread: Option<thread::JoinHandle<()>>,
    broken: Option<String>,
}

impl<C: Abort> Owned<C> {
    /// Starts the owner thread and builds the communicator on it with `make(deadline)`;
    /// returns when it is ready, or fails with `make`'s reason or at `timeout` + `grace`.
    pub fn spawn<F>(name: &str, rank: usize, timeout: Duration, grace: Duration, make: F) -> Result<Self, CollectiveError>
    where
        F: FnOnce(Instant) -> Result<C, String> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job<C>>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let err = |message: String| CollectiveError { op: "init", rank, message };
        let deadline = Instant::now() + timeout;
        let thread = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut comm = match make(deadline) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = rx.recv() {
                    job(&mut comm);
                }
            })
            .map_err(|e| err(format!("cannot start the communicator thread: {e}")))?;
        match ready_rx.recv_timeout(timeout + grace) {
            Ok(Ok(())) => Ok(Self { rank, grace, tx: Some(tx), thread: Some(thread), broken: None }),
            Ok(Err(e)) => Err(err(e)),
            Err(RecvTimeoutError::Timeout) => Err(err(format!("the communicator was not ready within {timeout:?} (+{grace:?} grace)"))),
            Err(RecvTimeoutError::Disconnected) => Err(err("the communicator thread ended while creating it (panicked)".into())),
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The first failure, once the group is broken.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Runs `f(comm, deadline)` on the owner thread and waits for its answer. `f` must
    /// return by `deadline` (an error if the work did not finish: see [`wait_until`]).
    pub fn call<R, F>(&mut self, op: &'static str, timeout: Duration, f: F) -> Result<R, CollectiveError>
    where
        R: Send + 'static,
        F: FnOnce(&mut C, Instant) -> Result<R, String> + Send + 'static,
    {
        let rank = self.rank;
        let fail = |this: &mut Self, message: String| {
            this.broken = Some(format!("{op}: {message}"));
            Err(CollectiveError { op, rank, message })
        };
        if let Some(why) = &self.broken {
            return Err(CollectiveError { op, rank, message: format!("the group is broken since {why}") });
        }
        let deadline = Instant::now() + timeout;
        let (reply_tx, reply_rx) = mpsc::channel();
        let job: Job<C> = Box::new(move |comm: &mut C| {
            let r = f(comm, deadline);
            if r.is_err() {
                comm.abort();
            }
            let _ = reply_tx.send(r);
        });
        if self.tx.as_ref().map(|tx| tx.send(job)).is_none_or(|sent| sent.is_err()) {
            return fail(self, "the communicator thread has ended".into());
        }
        match reply_rx.recv_timeout(timeout + self.grace) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => fail(self, format!("{e} (communicator aborted)")),
            Err(RecvTimeoutError::Timeout) => fail(self, format!("no answer from the communicator thread within {timeout:?} (+{:?} grace)", self.grace)),
            Err(RecvTimeoutError::Disconnected) => fail(self, "the communicator thread panicked".into()),
        }
    }
}

impl<C: Abort> Drop for Owned<C> {
    /// Ends the thread, which destroys the communicator. A broken group's thread may be
    /// stuck: it is not waited for.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            if self.broken.is_none() {
                let _ = t.join();
            }
        }
    }
}

/// Polls `done` until it says yes, fails, or `deadline` passes (then the error names
/// `what`). Spins briefly, then sleeps up to 1 ms between polls.
pub fn wait_until(deadline: Instant, what: &str, mut done: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let start = Instant::now();
    let mut nap = Duration::from_micros(20);
    loop {
        if done()? {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("{what} did not complete within {:?}", now - start));
        }
        if now - start < Duration::from_micros(200) {
            std::hint::spin_loop();
        } else {
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its aborts; an operation "hangs" by polling a condition that never comes.
    struct Fake {
        aborts: Arc<AtomicUsize>,
        ops: usize,
    }

    impl Abort for Fake {
        fn abort(&mut self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn owned(timeout_ms: u64) -> (Owned<Fake>, Arc<AtomicUsize>) {
        let aborts = Arc::new(AtomicUsize::new(0));
        let a = aborts.clone();
        let o = Owned::spawn("comm-test", 1, Duration::from_millis(timeout_ms), Duration::from_millis(300), move |_| Ok(Fake { aborts: a, ops: 0 })).unwrap();
        (o, aborts)
    }

    #[test]
    fn operations_run_in_order_on_the_owner_thread() {
        let (mut o, aborts) = owned(1000);
        for i in 1..=3 {
            let (n, name) = o
                .call("op", Duration::from_secs(1), |c, _| {
                    c.ops += 1;
                    Ok((c.ops, thread::current().name().map(str::to_string)))
                })
                .unwrap();
            assert_eq!((n, name.as_deref()), (i, Some("comm-test")));
        }
        assert_eq!(aborts.load(Ordering::SeqCst), 0);
        assert!(o.broken().is_none());
    }

    #[test]
    fn a_stuck_operation_is_aborted_at_its_deadline_and_breaks_the_group() {
        let (mut o, aborts) = owned(1000);
        let t = Instant::now();
        let e = o.call("all_reduce", Duration::from_millis(200), |_, deadline| wait_until(deadline, "all_reduce", || Ok(false))).unwrap_err();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(450), "{took:?}");
        assert_eq!((e.op, e.rank), ("all_reduce", 1));
        assert!(e.message.contains("did not complete within") && e.message.contains("aborted"), "{e}");
        assert_eq!(aborts.load(Ordering::SeqCst), 1);
        // every later call fails at once, with the first reason, without running
        let t = Instant::now();
        let e = o.call("barrier", Duration::from_secs(5), |c, _| Ok(c.ops)).unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(50));
        assert!(e.message.contains("broken since all_reduce"), "{e}");
        assert_eq!(aborts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_operation_aborts_at_once() {
        let (mut o, aborts) = owned(1000);
        let t = Instant::now();
        let e = o.call("broadcast", Duration::from_secs(5), |_, _| Err::<(), _>("peer 0 closed the connection".into())).unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(100));
        assert!(e.message.contains("peer 0 closed"), "{e}");
        assert_eq!(aborts.load(Ordering::SeqCst), 1);
        assert!(o.broken().unwrap().contains("broadcast"));
    }

    #[test]
    fn an_owner_stuck_inside_a_call_is_given_up_after_the_grace() {
        let (mut o, _) = owned(1000);
        let t = Instant::now();
        // ignores its deadline, as a library call that blocks would
        let e = o.call("all_gather", Duration::from_millis(100), |_, _| {
            thread::sleep(Duration::from_secs(3));
            Ok(())
        });
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1500), "{took:?}");
        assert!(e.unwrap_err().message.contains("no answer from the communicator thread"));
        drop(o); // does not wait for the stuck thread
        assert!(t.elapsed() < Duration::from_millis(1500));
    }

    #[test]
    fn a_panicking_operation_breaks_the_group() {
        let (mut o, _) = owned(1000);
        let e = o.call("all_reduce", Duration::from_secs(1), |_, _| -> Result<(), String> { panic!("bug") }).unwrap_err();
        assert!(e.message.contains("panicked"), "{e}");
        assert!(o.call("all_reduce", Duration::from_secs(1), |_, _| Ok(())).is_err());
    }

    #[test]
    fn creation_fails_with_its_reason_or_at_the_deadline() {
        let e = Owned::<Fake>::spawn("c", 2, Duration::from_secs(1), Duration::ZERO, |_| Err("libnccl cannot be loaded".into())).err().unwrap();
        assert_eq!((e.op, e.rank), ("init", 2));
        assert!(e.message.contains("libnccl"), "{e}");
        let t = Instant::now();
        let e = Owned::<Fake>::spawn("c", 2, Duration::from_millis(100), Duration::from_millis(100), |_| {
            thread::sleep(Duration::from_secs(2));
            Err("late".into())
        })
        .err()
        .unwrap();
        assert!(t.elapsed() < Duration::from_millis(600));
        assert!(e.message.contains("not ready within"), "{e}");
    }

    #[test]
    fn wait_until_returns_when_done_and_passes_errors_on() {
        let mut n = 0;
        wait_until(Instant::now() + Duration::from_secs(1), "x", || {
            n += 1;
            Ok(n == 50)
        })
        .unwrap();
        assert_eq!(n, 50);
        let e = wait_until(Instant::now() + Duration::from_secs(1), "x", || Err("async error: remote process exited".into())).unwrap_err();
        assert!(e.contains("remote process exited"));
    }
}
