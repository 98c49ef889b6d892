//! Per-job run directories on the coordinator (`<runs>/<job>/`): the metric points the
//! workers report (`metrics.jsonl`, one JSON object per line), the evaluations along the run
//! (`evals.jsonl`), the ranks' log lines (`log.txt`), and the per-image data of the final
//! evaluation (`eval-samples.pb`: length-delimited `EvalSamples` records, appended; the last
//! whole one counts, so a restart's report replaces an earlier one and a torn tail is
//! ignored). Metric history lives here, not in the store.

use ablate_proto::v1::{EvalPoint, EvalSamples, MetricPoint};
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::CoordinatorError;

pub struct Runs {
    root: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CoordinatorError + '_ {
    move |source| CoordinatorError::Io { path: path.display().to_string(), source }
}

impl Runs {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn dir(&self, job: &str) -> Result<PathBuf, CoordinatorError> {
        let d = self.root.join(job);
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        Ok(d)
    }

    fn append(&self, job: &str, file: &str, bytes: &[u8]) -> Result<(), CoordinatorError> {
        let p = self.dir(job)?.join(file);
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(io(&p))?;
        f.write_all(bytes).map_err(io(&p))
    }

    /// Keeps the per-image data of a job's final evaluation (on disk before the completion
    /// that carries it is acknowledged).
    pub fn save_eval_samples(&self, job: &str, samples: &EvalSamples) -> Result<(), CoordinatorError> {
        let p = self.dir(job)?.join("eval-samples.pb");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&p).map_err(io(&p))?;
        f.write_all(&samples.encode_length_delimited_to_vec()).and_then(|_| f.sync_all()).map_err(io(&p))
    }

    /// The latest per-image data of a job's final evaluation, if any arrived.
    pub fn eval_samples(&self, job: &str) -> Result<Option<EvalSamples>, CoordinatorError> {
        let p = self.root.join(job).join("eval-samples.pb");
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&p)(e)),
        };
        let mut rest = bytes.as_slice();
        let mut last = None;
        while !rest.is_empty() {
            match EvalSamples::decode_length_delimited(&mut rest) {
                Ok(s) => last = Some(s),
                Err(_) => break, // a torn last record (a crash mid-write): the one before counts
            }
        }
        Ok(last)
    }

    pub fn append_metrics(&self, job: &str, points: &[MetricPoint]) -> Result<(), CoordinatorError> {
        let text: String = points.iter().map(|p| serde_json::to_string(p).expect("metric serialises") + "\n").collect();
        self.append(job, "metrics.jsonl", text.as_bytes())
    }

    pub fn append_evals(&self, job: &str, evals: &[EvalPoint]) -> Result<(), CoordinatorError> {
        let text: String = evals.iter().map(|e| serde_json::to_string(e).expect("eval serialises") + "\n").collect();
        self.append(job, "evals.jsonl", text.as_bytes())
    }

    pub fn append_logs(&self, job: &str, lines: &[String]) -> Result<(), CoordinatorError> {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.append(job, "log.txt", text.as_bytes())
    }

    fn read(&self, job: &str, file: &str) -> Result<String, CoordinatorError> {
        let p = self.root.join(job).join(file);
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// Points from `from_step` on; a restarted generation's repeats replace earlier ones.
    pub fn metrics(&self, job: &str, from_step: u64) -> Result<Vec<MetricPoint>, CoordinatorError> {
        let mut by_step = std::collections::BTreeMap::new();
        for p in self.read(job, "metrics.jsonl")?.lines().filter_map(|l| serde_json::from_str::<MetricPoint>(l).ok()).filter(|p| p.step >= from_step) {
            by_step.insert(p.step, p);
        }
        Ok(by_step.into_values().collect())
    }

    /// Every evaluation by step; a restart's repeat replaces the earlier one.
    pub fn evals(&self, job: &str) -> Result<Vec<EvalPoint>, CoordinatorError> {
        let mut by_step = std::collections::BTreeMap::new();
        for e in self.read(job, "evals.jsonl")?.lines().filter_map(|l| serde_json::from_str::<EvalPoint>(l).ok()) {
            by_step.insert(e.step, e);
        }
        Ok(by_step.into_values().collect())
    }

    /// Up to `max` lines from `from_line`, and the line number after the last one given.
    pub fn logs(&self, job: &str, from_line: u64, max: usize) -> Result<(Vec<String>, u64), CoordinatorError> {
        let text = self.read(job, "log.txt")?;
        let all: Vec<&str> = text.lines().collect();
        let from = (from_line as usize).min(all.len());
        let to = all.len().min(from.saturating_add(max.max(1)));
        Ok((all[from..to].iter().map(|s| s.to_string()).collect(), to as u64))
    }
}
