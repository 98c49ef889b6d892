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
