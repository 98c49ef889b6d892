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

/// A rank's result at the end of training. Its numbers may be undefined (NaN: the mean loss
/// of a generation that resumed at its last step and trained none), which JSON writes as
/// null: they read back as NaN, so the report is never lost for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub steps: usize,
    #[serde(deserialize_with = "nan_if_null")]
    pub checksum: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub final_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_sec: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub wall_seconds: f64,
    /// The final evaluation (rank 0, when `[eval]` is on), without its per-image data.
    pub eval: Option<EvalReport>,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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

    /// A generation that resumed at its last step has no loss of its own: its Done line must
    /// still parse (it once read as no report at all, and the job failed).
    #[test]
    fn an_outcome_with_undefined_numbers_still_parses() {
        let done = Event::Done(Outcome { steps: 120, checksum: 1.5, final_loss: f64::NAN, samples_per_sec: f64::NAN, wall_seconds: 0.0, eval: None });
        match Event::parse(&done.line()) {
            Some(Event::Done(o)) => assert!(o.steps == 120 && o.checksum == 1.5 && o.final_loss.is_nan() && o.samples_per_sec.is_nan()),
            other => panic!("{other:?} from {}", done.line()),
        }
    }

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
