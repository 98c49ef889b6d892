//! What a rank process tells its worker: one JSON object per line on stdout. Everything a
//! human should read goes to stderr, which the worker forwards as log lines.

use ablate_trainer::eval::suite::EvalReport;
use ablate_trainer::run::MetricPoint;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started { first_step: usize, total: usize, params: usize },
    Step { point: MetricPoint },
    Checkpoint { step: usize, path: String },
    /// "training", "evaluating", "sampling".
    Phase { name: String },
    /// An evaluation (rank 0), without its per-image data (that stays in the job directory).
    Evaluated { report: EvalReport },
    Done(Outcome),
    Failed {
        reason: String,
        /// A restart can help (the group broke), as opposed to a failure it would repeat.
        #[serde(default)]
        retryable: bool,
    },
}

/// A rank's result at the end of training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub steps: usize,
    pub checksum: f64,
    pub final_loss: f64,
    pub samples_per_sec: f64,
    pub wall_seconds: f64,
    /// The final evaluation (rank 0, when `[eval]` is on), without its per-image data.
    pub eval: Option<EvalReport>,
}

impl Event {
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("event serialises")
    }

    /// None for lines that are not events (a library printing to stdout).
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rank event lines: whatever a rank's stdout holds gives an event or None, never a panic.
    #[test]
    fn event_lines_parse_or_are_ignored() {
        let seeds = vec![
            Event::Started { first_step: 0, total: 10, params: 5 }.line(),
            Event::Phase { name: "evaluating".into() }.line(),
            Event::Checkpoint { step: 3, path: "/x/checkpoint.safetensors".into() }.line(),
            Event::Failed { reason: "peer died".into(), retryable: true }.line(),
            Event::Done(Outcome { steps: 10, checksum: 1.5, final_loss: 0.2, samples_per_sec: 9.0, wall_seconds: 3.0, eval: None }).line(),
        ];
        for s in &seeds {
            assert!(Event::parse(s).is_some(), "{s}");
        }
        ablate_proto::fuzz::run("rank event line", ablate_proto::fuzz::text_mutations_of(seeds), |line| {
            if let Some(e) = Event::parse(&line) {
                // what parses, serialises and parses again
                Event::parse(&e.line()).ok_or_else(|| format!("{line:?} parsed, its re-serialisation did not"))?;
            }
            Ok(())
        });
    }
}
