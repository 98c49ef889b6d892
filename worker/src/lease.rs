//! Fencing: a worker's ranks stop on their own when the worker has lost touch with the
//! coordinator for long enough that the coordinator may place their jobs elsewhere, so no
//! job ever runs twice at once (a partitioned worker, a frozen agent, a coordinator that is
//! gone).
//!
//! The coordinator declares a worker lost `expiry` after the last heartbeat it received,
//! and only then requeues its jobs (a restarted coordinator first waits one `expiry` for the
//! workers to re-attach). The agent holds a lease of [`lease_for`]`(expiry)`, shorter than
//! `expiry` by a margin, counted from the *sending* of each heartbeat the coordinator
//! answered (it arrived no earlier), and writes the lease's end (unix ms) to a file after
//! every answered heartbeat. Each rank runs a watchdog thread that reads the file every
//! [`POLL`] and, once the end has passed, exits at once with [`FENCED_EXIT`] without writing
//! to its pipes (a frozen agent no longer reads them, and a blocked write must not keep the
//! rank alive). So a rank is gone before its job can be placed again, even when its agent is
//! frozen (SIGSTOP) and cannot kill it. The agent reports such an exit as a failure of the
//! cluster's class.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that names the lease file for a rank.
pub const ENV: &str = "ABLATE_LEASE_FILE";
/// How often a rank's watchdog reads the lease.
pub const POLL: Duration = Duration::from_millis(200);
/// The exit code of a rank that fenced itself.
pub const FENCED_EXIT: i32 = 75;

/// The lease a worker holds when the coordinator expires workers after `expiry`: shorter by
/// a fifth (at least 1 s, and never under half of `expiry`), which covers the watchdog's
/// poll and the rank's exit.
pub fn lease_for(expiry: Duration) -> Duration {
    let margin = (expiry / 5).max(Duration::from_secs(1)).min(expiry / 2);
    expiry - margin
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Writes the lease's end (`until`) to `path` (atomically: a rank never reads half a number).
pub fn renew(path: &Path, until: SystemTime) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, unix_ms(until).to_string())?;
    std::fs::rename(&tmp, path)
}

/// The lease's end in unix ms, or None when the file cannot be read.
pub fn read(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether the lease in `path` has ended at `now`. An unreadable lease counts as ended only
/// once the last end read (`last`) has passed.
pub fn ended(path: &Path, last: &mut Option<u64>, now: SystemTime) -> bool {
    if let Some(v) = read(path) {
        *last = Some(v);
    }
    last.is_some_and(|end| unix_ms(now) > end)
}

/// Starts the rank's watchdog on `path`: once the lease has ended the process exits with
/// [`FENCED_EXIT`] at once. A rank started without a lease file it can read gets
/// `first_wait` to see one before it counts as ended.
pub fn watch(path: std::path::PathBuf, first_wait: Duration) {
    std::thread::Builder::new()
        .name("lease-watchdog".into())
        .spawn(move || {
            let mut last = read(&path).or_else(|| Some(unix_ms(SystemTime::now() + first_wait)));
            loop {
                std::thread::sleep(POLL);
                if ended(&path, &mut last, SystemTime::now()) {
                    // no write to stdout or stderr: a frozen agent no longer reads them
                    // SAFETY: _exit ends the process without unwinding or running
                    // destructors; nothing here holds state that must be flushed
                    unsafe { libc::_exit(FENCED_EXIT) };
                }
            }
        })
        .expect("a watchdog thread");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_end_before_the_coordinator_expires_the_worker() {
        for (expiry_ms, lease_ms) in [(10_000, 8_000), (5_000, 4_000), (2_000, 1_000), (600, 300)] {
            assert_eq!(lease_for(Duration::from_millis(expiry_ms)), Duration::from_millis(lease_ms), "expiry {expiry_ms} ms");
        }
    }

    #[test]
    fn a_lease_ends_when_its_time_passes_and_survives_an_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lease");
        let now = SystemTime::now();
        let mut last = None;
        assert!(!ended(&p, &mut last, now), "no lease read yet: not ended");
        renew(&p, now + Duration::from_secs(2)).unwrap();
        assert!(!ended(&p, &mut last, now));
        assert!(ended(&p, &mut last, now + Duration::from_secs(3)));
        // the file vanishes: the last end read still holds
        std::fs::remove_file(&p).unwrap();
        assert!(!ended(&p, &mut last, now + Duration::from_secs(1)));
        assert!(ended(&p, &mut last, now + Duration::from_secs(3)));
    }
}
