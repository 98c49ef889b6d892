//! A rank's own journal: one JSON line for its start, every step, each checkpoint and its
//! end, with the wall time it happened, appended to `<job-dir>/rank-<r>.journal.jsonl` by
//! every generation that ran on this worker. It answers after the fact what the
//! coordinator's view cannot (a partitioned worker's ranks are out of its sight): which
//! process trained which step when, so that a job that ran twice at once (two generations'
//! steps overlapping in time) or resumed from a step it never checkpointed shows.
//!
//! The rank writes it itself (not its agent, whose timestamps would lag when it is frozen);
//! a journal that cannot be written is said once and training goes on without it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub unix_ms: u64,
    pub generation: u64,
    pub rank: usize,
    pub pid: u32,
    pub event: Kind,
    /// The step the event is at: the first step to train (`started`), the steps done after
    /// the step (`step`), the checkpoint's step, the last step (`ended`).
    pub step: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Started,
    Step,
    CheckpointBegun,
    CheckpointSaved,
    Ended,
}

/// The journal's file name for `rank`.
pub fn file_name(rank: usize) -> String {
    format!("rank-{rank}.journal.jsonl")
}

pub struct Journal {
    file: Option<std::fs::File>,
    path: PathBuf,
    generation: u64,
    rank: usize,
}

impl Journal {
    /// Opens (appends to) the journal of `rank` in `job_dir`.
    pub fn open(job_dir: &Path, generation: u64, rank: usize) -> Self {
        let path = job_dir.join(file_name(rank));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = &file {
            eprintln!("warning: cannot open the rank's journal {}: {e}; going on without it", path.display());
        }
        Self { file: file.ok(), path, generation, rank }
    }

    pub fn record(&mut self, event: Kind, step: usize) {
        let Some(f) = self.file.as_mut() else { return };
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let e = Entry { unix_ms, generation: self.generation, rank: self.rank, pid: std::process::id(), event, step };
        // one write per line: appends of whole lines from one process never interleave
        let line = serde_json::to_string(&e).expect("journal entry serialises") + "\n";
        if let Err(err) = f.write_all(line.as_bytes()) {
            eprintln!("warning: cannot write the rank's journal {}: {err}; going on without it", self.path.display());
            self.file = None;
        }
    }
}

/// Every entry of the journals under `dir` (a job directory), unordered. A line that does not
/// parse (a process killed mid-write leaves at most its last line cut) is skipped.
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".journal.jsonl")) {
            out.extend(std::fs::read_to_string(&p)?.lines().filter_map(|l| serde_json::from_str::<Entry>(l).ok()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 3, 1);
        j.record(Kind::Started, 10);
        j.record(Kind::Step, 11);
        j.record(Kind::CheckpointSaved, 11);
        std::fs::OpenOptions::new().append(true).open(dir.path().join(file_name(1))).unwrap().write_all(b"{\"unix_ms\":1,\"gen").unwrap();
        let got = read_dir(dir.path()).unwrap();
        assert_eq!(got.iter().map(|e| (e.event, e.step, e.generation, e.rank)).collect::<Vec<_>>(), vec![(Kind::Started, 10, 3, 1), (Kind::Step, 11, 3, 1), (Kind::CheckpointSaved, 11, 3, 1)]);
        assert!(got.iter().all(|e| e.pid == std::process::id() && e.unix_ms > 0));
    }
}
