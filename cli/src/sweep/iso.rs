//! Iso-compute comparison: every arm's evaluation numbers at an equal training-time budget and
//! at an equal number of samples seen, besides the usual "at equal steps". A faster arm
//! (TREAD, SPRINT) does more steps in the same time and a slower one (REPA, a rich
//! autoencoder) fewer, so comparing them at equal steps flatters the slow ones.
//!
//! Each evaluation along a run (`eval.every`) is placed on two axes from the run's metric
//! points: the training seconds before it (the sum of the steps' `step_seconds`: evaluation,
//! sampling and checkpoint time are not the arm's cost) and the samples seen before it (the
//! sum of `samples_per_sec x step_seconds`, all ranks). The budget on an axis is the smallest
//! final position among the runs (every run reached it); a run's value at the budget is the
//! linear interpolation between the two evaluations around it, or missing when its first
//! evaluation comes later.

use ablate_proto::v1;
use ablate_worker::evalwire::report_from_wire;

use super::stat::{stat, Stat};

/// The metrics compared (names as in the results JSON).
pub const METRICS: [&str; 6] = ["fd_scenes", "mmd", "accuracy", "fid", "cmmd", "dino_mmd"];

/// One run's history: its metric points (one per step) and its evaluations.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub points: Vec<v1::MetricPoint>,
    pub evals: Vec<v1::EvalPoint>,
}

/// An evaluation placed on the compute axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    pub step: f64,
    pub train_seconds: f64,
    pub samples_seen: f64,
    pub values: Vec<(&'static str, f64)>,
}

impl Placed {
    pub fn at(&self, axis: Axis) -> f64 {
        match axis {
            Axis::TrainSeconds => self.train_seconds,
            Axis::SamplesSeen => self.samples_seen,
        }
    }
    pub fn value(&self, m: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| *k == m).map(|(_, v)| *v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    TrainSeconds,
    SamplesSeen,
}

impl Axis {
    pub const ALL: [Axis; 2] = [Axis::TrainSeconds, Axis::SamplesSeen];
    pub fn key(self) -> &'static str {
        match self {
            Axis::TrainSeconds => "train_seconds",
            Axis::SamplesSeen => "samples_seen",
        }
    }
}


/// The run's evaluations on the compute axes, by step.
pub fn place(s: &Series) -> Vec<Placed> {
    let mut pts: Vec<&v1::MetricPoint> = s.points.iter().collect();
    pts.sort_by_key(|p| p.step);
    let mut evals: Vec<&v1::EvalPoint> = s.evals.iter().collect();
    evals.sort_by_key(|e| e.step);
    let (mut secs, mut seen, mut i) = (0.0, 0.0, 0);
    let mut out = Vec::new();
    for e in evals {
        // the metric point of step k is the (k+1)-th step; an evaluation at `step` follows `step` steps
        while i < pts.len() && pts[i].step < e.step {
            secs += pts[i].step_seconds;
            seen += pts[i].samples_per_sec * pts[i].step_seconds;
            i += 1;
        }
        let Some(report) = e.report.as_ref().and_then(|r| report_from_wire(r).ok()) else { continue };
        let values = METRICS.iter().filter_map(|m| Some((*m, report.value(m)?))).collect();
        out.push(Placed { step: e.step as f64, train_seconds: secs, samples_seen: seen.round(), values });
    }
    out
}

/// Linear interpolation of `get` at `x` over points sorted by `axis`; None before the first.
fn interpolate(placed: &[Placed], axis: Axis, x: f64, get: impl Fn(&Placed) -> Option<f64>) -> Option<f64> {
    let with: Vec<(f64, f64)> = placed.iter().filter_map(|p| Some((p.at(axis), get(p)?))).collect();
    let after = with.iter().position(|(a, _)| *a >= x)?;
    let (x1, y1) = with[after];
    if after == 0 || x1 == x {
        return (x1 == x || (x1 - x).abs() <= 1e-9 * x1.abs().max(1.0)).then_some(y1);
    }
    let (x0, y0) = with[after - 1];
    Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
}

/// An arm's numbers at an axis budget (mean and spread over its seeds).
#[derive(Debug, Clone)]
pub struct AtBudget {
    pub axis: Axis,
    pub budget: f64,
    /// The (interpolated) step at which the arm reached the budget.
    pub step: Option<Stat>,
    pub metrics: Vec<(&'static str, Option<Stat>)>,
}

impl AtBudget {
    pub fn get(&self, m: &str) -> Option<Stat> {
        self.metrics.iter().find(|(k, _)| *k == m).and_then(|(_, s)| *s)
    }
}

/// The budget on `axis`: the smallest last-evaluation position among the runs.
pub fn budget(runs: &[Vec<Placed>], axis: Axis) -> Option<f64> {
    runs.iter().filter_map(|r| r.last().map(|p| p.at(axis))).filter(|x| *x > 0.0).min_by(|a, b| a.total_cmp(b))
}

/// Every arm at the budget of each axis. `arms[i]` holds the placed evaluations of the arm's
/// seeds; the budget is taken over all runs of all arms.
pub fn compare(arms: &[Vec<Vec<Placed>>]) -> Vec<Vec<AtBudget>> {
    let all: Vec<Vec<Placed>> = arms.iter().flatten().cloned().collect();
    let budgets: Vec<(Axis, Option<f64>)> = Axis::ALL.iter().map(|a| (*a, budget(&all, *a))).collect();
    arms.iter()
        .map(|seeds| {
            budgets
                .iter()
                .filter_map(|(axis, b)| {
                    let b = (*b)?;
                    let per = |get: &dyn Fn(&Placed) -> Option<f64>| stat(&seeds.iter().filter_map(|p| interpolate(p, *axis, b, get)).collect::<Vec<_>>());
                    Some(AtBudget {
                        axis: *axis,
                        budget: b,
                        step: per(&|p: &Placed| Some(p.step)),
                        metrics: METRICS.iter().map(|m| (*m, per(&|p: &Placed| p.value(m)))).collect(),
                    })
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report with FD-scenes `fd`, MMD 1 and no accuracy (not finite).
    pub(crate) fn report(step: u64, fd: f64) -> v1::EvalReport {
        let m = |value: f64| Some(v1::Measured { value, protocol: Some(v1::EvalProtocol::default()) });
        v1::EvalReport { step, fd_scenes: m(fd), mmd_scenes: m(1.0), accuracy: m(f64::NAN), composition: Some(v1::Composition::default()), ..Default::default() }
    }

    fn series(step_seconds: f64, batch: f64, steps: u64, evals: &[(u64, f64)]) -> Series {
        Series {
            points: (0..steps).map(|s| v1::MetricPoint { step: s, step_seconds, samples_per_sec: batch / step_seconds, ..Default::default() }).collect(),
            evals: evals.iter().map(|(s, fd)| v1::EvalPoint { step: *s, report: Some(report(*s, *fd)) }).collect(),
        }
    }

    #[test]
    fn places_evaluations_by_the_steps_before_them() {
        let p = place(&series(0.5, 8.0, 100, &[(50, 10.0), (100, 5.0)]));
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].train_seconds, p[0].samples_seen), (25.0, 400.0));
        assert_eq!((p[1].train_seconds, p[1].samples_seen), (50.0, 800.0));
        assert_eq!(p[1].value("fd_scenes"), Some(5.0));
        assert_eq!(p[1].value("accuracy"), None);
    }

    #[test]
    fn a_faster_arm_is_compared_where_the_slower_one_ended() {
        // slow: 100 steps of 1 s (ends at 100 s); fast: 100 steps of 0.5 s, evaluated every 25
        let slow = place(&series(1.0, 8.0, 100, &[(100, 8.0)]));
        let fast = place(&series(0.5, 8.0, 100, &[(25, 20.0), (50, 12.0), (75, 9.0), (100, 6.0)]));
        let out = compare(&[vec![slow], vec![fast]]);
        let time = |i: usize| out[i].iter().find(|a| a.axis == Axis::TrainSeconds).unwrap().clone();
        // budget 50 s: the fast arm's own end; the slow arm has no evaluation that early
        assert_eq!(time(0).budget, 50.0);
        assert!(time(0).get("fd_scenes").is_none());
        assert_eq!(time(1).get("fd_scenes").unwrap().mean, 6.0);
        // equal samples (800 each): both at their end
        let seen = |i: usize| out[i].iter().find(|a| a.axis == Axis::SamplesSeen).unwrap().clone();
        assert_eq!(seen(0).budget, 800.0);
        assert_eq!(seen(0).get("fd_scenes").unwrap().mean, 8.0);
        assert_eq!(seen(1).get("fd_scenes").unwrap().mean, 6.0);
    }

    #[test]
    fn interpolates_between_evaluations() {
        let short = place(&series(1.0, 4.0, 60, &[(60, 3.0)]));
        let long = place(&series(1.0, 4.0, 100, &[(50, 10.0), (100, 5.0)]));
        let out = compare(&[vec![short], vec![long]]);
        let t = out[1].iter().find(|a| a.axis == Axis::TrainSeconds).unwrap();
        assert_eq!(t.budget, 60.0);
        assert!((t.get("fd_scenes").unwrap().mean - 9.0).abs() < 1e-12);
        assert!((t.step.unwrap().mean - 60.0).abs() < 1e-12);
    }
}
