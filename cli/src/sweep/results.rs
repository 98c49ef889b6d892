//! The results of a sweep: per arm the final evaluation numbers, throughput, loss, steps and
//! wall time, mean and standard deviation over seeds, and the delta vs baseline (absolute
//! and %). Printed as a table, markdown, CSV or JSON (stable field names, docs/sweeps.md).
//!
//! Every evaluation number is read from the trainer's `EvalReport` (converted from the wire
//! by `ablate_worker::evalwire`), whichever way it came: a local run or a coordinator.
//!
//! Is a difference real? For FD-scenes, MMD and accuracy, when the runs' per-image
//! evaluation numbers are at hand (a local run's `eval-samples.safetensors`, or the
//! coordinator's copy, `GetEvalSamples`): with two or more
//! seeds, a 95% t-interval of the per-seed deltas vs baseline (each seed's run paired with
//! the baseline's run of the same seed, so training noise, data order and evaluation noise
//! are all inside it); a delta whose interval excludes zero is marked significant. With one
//! seed there is no verdict: the interval then resamples the evaluation images of one
//! training run (`ablate_trainer::eval::bootstrap`), which says nothing about training noise,
//! and A/A comparisons starred 7 of 9 times that way.
//!
//! Iso-compute (`iso`): the same metrics at an equal training-time budget and an equal number
//! of samples seen, from the evaluations along the runs.

use ablate_proto::v1::{self, JobState};
use ablate_trainer::eval::bootstrap::EvalSamples;
use ablate_trainer::eval::protocol::Protocol;
use ablate_trainer::eval::suite::EvalReport;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::iso::{self, AtBudget, Axis, Series};

pub const METRICS: [&str; 9] = ["fd_scenes", "mmd", "accuracy", "fid", "cmmd", "dino_mmd", "samples_per_sec", "final_loss", "wall_seconds"];

/// The evaluation metrics, each with its protocol (FID, CMMD and DINO-MMD only where their
/// networks' weights are installed).
pub const EVAL_METRICS: [&str; 6] = ["fd_scenes", "mmd", "accuracy", "fid", "cmmd", "dino_mmd"];

/// The metrics whose seed-level interval comes from the jobs' own values (no per-image data
/// needed): one number per seed, paired with the baseline's of the same seed.
const VALUE_INTERVAL_METRICS: [&str; 3] = ["fid", "cmmd", "dino_mmd"];

pub use super::stat::{stat, Stat};

#[derive(Debug, Clone)]
pub struct Row {
    pub arm: String,
    /// The arm this one is compared with: "baseline", another arm that leads a comparison
    /// group of its own (`baseline = "..."` in the sweep file), or empty for the baseline.
    pub baseline: String,
    pub job_ids: Vec<String>,
    /// "succeeded" when every seed did, else the worst state seen.
    pub status: String,
    pub steps: u64,
    pub metrics: Vec<(&'static str, Option<Stat>)>,
    /// 95% interval of the delta vs baseline, per metric that has one: over seeds when
    /// `n_seeds` >= 2, over the evaluation images of the one seed otherwise.
    pub ci95: Vec<(&'static str, (f64, f64))>,
    /// Seeds paired with the baseline's behind `ci95` (0: no interval).
    pub n_seeds: usize,
    /// How this arm's evaluation protocol differs from the baseline's (another sample count,
    /// reference, sampler...): its evaluation numbers are then not compared (no delta), since
    /// FD in particular depends on N and on the reference set.
    pub protocol_note: Option<String>,
    /// The metrics at equal training time and at equal samples seen, at the budgets of the
    /// group in which this arm is compared with its baseline.
    pub iso: Vec<AtBudget>,
    /// For an arm that leads a group of its own: its metrics at that group's budgets.
    pub iso_as_base: Vec<AtBudget>,
    /// The best value of each evaluation metric over the evaluations along the runs (mean
    /// over seeds of each seed's best).
    pub best: Vec<(&'static str, Stat)>,
}

impl Row {
    pub fn get(&self, m: &str) -> Option<Stat> {
        self.metrics.iter().find(|(k, _)| *k == m).and_then(|(_, s)| *s)
    }
}

/// The row `r` is compared with (None for the baseline, or a baseline missing from `rows`).
pub fn base_of<'a>(rows: &'a [Row], r: &Row) -> Option<&'a Row> {
    rows.iter().find(|x| !r.baseline.is_empty() && x.arm == r.baseline)
}

/// The comparison groups: (the leading row, its members), the sweep's baseline first, then
/// every arm that other arms name as their baseline, in row order. Indices into `rows`.
pub fn groups(rows: &[Row]) -> Vec<(usize, Vec<usize>)> {
    rows.iter()
        .enumerate()
        .filter(|(_, lead)| lead.baseline.is_empty() || rows.iter().any(|r| r.baseline == lead.arm))
        .map(|(i, lead)| (i, rows.iter().enumerate().filter(|(_, r)| r.baseline == lead.arm).map(|(k, _)| k).collect()))
        .collect()
}

/// A job's final evaluation, if it has one the wire could carry whole (a damaged one is
/// reported on stderr and left out).
pub fn report(job: &v1::Job) -> Option<EvalReport> {
    let wire = job.result.as_ref()?.eval.as_ref()?;
    ablate_worker::evalwire::report_from_wire(wire).map_err(|e| eprintln!("job {}: {e}", job.id)).ok()
}

fn value(job: &v1::Job, metric: &str) -> Option<f64> {
    let r = job.result.as_ref().filter(|_| job.state() == JobState::Succeeded)?;
    match metric {
        "samples_per_sec" => Some(r.samples_per_sec),
        "final_loss" => Some(r.final_loss),
        "wall_seconds" => Some(r.wall_seconds),
        m => report(job)?.value(m),
    }
}

/// The headline protocol (FD-scenes', else FID's, CMMD's or DINO-MMD's) of the first of `arm`'s
/// jobs that has an evaluation.
fn eval_protocol(jobs: &[(String, v1::Job)], arm: &str) -> Option<Protocol> {
    jobs.iter().filter(|(a, _)| a == arm).find_map(|(_, j)| Some(report(j)?.headline()?.protocol.clone()))
}

/// Rows in arm order (`arms`), from the sweep's jobs (`(arm, job)` pairs).
pub fn rows(arms: &[String], jobs: &[(String, v1::Job)]) -> Vec<Row> {
    arms.iter()
        .map(|arm| {
            let mine: Vec<&v1::Job> = jobs.iter().filter(|(a, _)| a == arm).map(|(_, j)| j).collect();
            let baseline = match mine.first().map(|j| j.baseline_arm.as_str()) {
                _ if arm == "baseline" => String::new(),
                Some("") | None => "baseline".to_string(),
                Some(b) => b.to_string(),
            };
            let rank = |s: JobState| match s {
                JobState::Failed => 0,
                JobState::Cancelled => 1,
                JobState::Running => 2,
                JobState::Scheduled => 3,
                JobState::Queued => 4,
                _ => 5,
            };
            let status = mine.iter().map(|j| j.state()).min_by_key(|s| rank(*s)).map(|s| s.label()).unwrap_or("missing").to_string();
            let metrics = METRICS.iter().map(|m| (*m, stat(&mine.iter().filter_map(|j| value(j, m)).collect::<Vec<_>>()))).collect();
            let steps = mine.iter().filter_map(|j| j.result.as_ref().map(|r| r.steps)).max().unwrap_or_else(|| mine.iter().map(|j| j.step).max().unwrap_or(0));
            let protocol_note = match (eval_protocol(jobs, &baseline), eval_protocol(jobs, arm)) {
                (Some(b), Some(p)) => Some(p.differences(&b).join(", ")).filter(|d| !d.is_empty()),
                _ => None,
            };
            Row { arm: arm.clone(), baseline, job_ids: mine.iter().map(|j| j.id.clone()).collect(), status, steps, metrics, ci95: vec![], n_seeds: 0, protocol_note, iso: vec![], iso_as_base: vec![], best: vec![] }
        })
        .collect()
}

/// The jobs as they stood at evaluation step `step`: each job's result carries its
/// evaluation of that step (from `series`) instead of its final one, and `step` as its steps
/// (none when it has no evaluation there). An error lists the steps evaluated when no job has
/// that one.
pub fn at_step(jobs: &[(String, v1::Job)], series: &HashMap<String, Series>, step: u64) -> anyhow::Result<Vec<(String, v1::Job)>> {
    let mut evaluated = std::collections::BTreeSet::new();
    let mut found = false;
    let out = jobs
        .iter()
        .map(|(arm, j)| {
            let point = series.get(&j.id).and_then(|s| {
                evaluated.extend(s.evals.iter().map(|e| e.step));
                s.evals.iter().find(|e| e.step == step).and_then(|e| e.report.clone())
            });
            found |= point.is_some();
            let mut j = j.clone();
            if let Some(r) = j.result.as_mut() {
                r.eval = point;
                r.steps = step;
            }
            (arm.clone(), j)
        })
        .collect();
    let list = evaluated.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    anyhow::ensure!(found, "no run was evaluated at step {step} (evaluations at steps: {})", if list.is_empty() { "none".into() } else { list });
    Ok(out)
}

/// Bootstrap resamples per interval.
pub const REPS: usize = 1000;

/// `arm`'s value of metric `m` minus `base`'s, seed by seed (the i-th job of each shares a
/// seed), for the seeds where both have one.
fn value_deltas(jobs: &[(String, v1::Job)], arm: &str, base: &str, m: &str) -> Vec<f64> {
    let values = |arm: &str| -> Vec<Option<f64>> { jobs.iter().filter(|(a, _)| a == arm).map(|(_, j)| value(j, m)).collect() };
    values(arm).iter().zip(values(base)).filter_map(|(a, b)| Some((*a)? - b?)).collect()
}

/// Fills `ci95` of every arm from the per-image numbers `samples` gives for a job (pairing
/// seed s of an arm with seed s of the baseline, by position).
pub fn add_intervals(rows: &mut [Row], jobs: &[(String, v1::Job)], samples: &dyn Fn(&v1::Job) -> Option<EvalSamples>) {
    use ablate_trainer::eval::bootstrap::{paired_interval, per_seed_deltas, t_interval, Metric};
    // every arm's jobs come in the order of `seeds`, so the i-th job of an arm and the i-th of
    // the baseline share a seed; a pair counts only when both succeeded and left samples
    let of = |arm: &str| -> Vec<Option<EvalSamples>> { jobs.iter().filter(|(a, _)| a == arm).map(|(_, j)| (j.state() == JobState::Succeeded).then(|| samples(j)).flatten()).collect() };
    for row in rows.iter_mut().filter(|r| !r.baseline.is_empty()) {
        let base = of(&row.baseline);
        let mine = of(&row.arm);
        let pairs: Vec<(&EvalSamples, &EvalSamples)> = mine.iter().zip(&base).filter_map(|(a, b)| Some((a.as_ref()?, b.as_ref()?))).collect();
        if pairs.len() < 2 {
            // no per-image data for two seeds (an earlier evaluation step keeps only its
            // numbers): the seed-level t-interval needs only those
            let mut from_values = Vec::new();
            for name in ["fd_scenes", "mmd", "accuracy"] {
                let d = value_deltas(jobs, &row.arm, &row.baseline, name);
                if d.len() >= 2 {
                    if let Some(ci) = t_interval(&d) {
                        from_values.push((name, ci, d.len()));
                    }
                }
            }
            if !from_values.is_empty() {
                row.n_seeds = from_values.iter().map(|x| x.2).max().unwrap_or(0);
                row.ci95.extend(from_values.into_iter().map(|(n, ci, _)| (n, ci)));
                continue;
            }
        }
        if pairs.is_empty() {
            continue;
        }
        row.n_seeds = pairs.len();
        for (name, m) in [("fd_scenes", Metric::FdScenes), ("mmd", Metric::Mmd), ("accuracy", Metric::Accuracy)] {
            let ci = if pairs.len() >= 2 {
                per_seed_deltas(&pairs, m).and_then(|d| t_interval(&d).ok_or_else(|| ablate_trainer::eval::EvalError::Shape(format!("a seed's delta is not finite: {d:?}"))))
            } else {
                paired_interval(&pairs, m, REPS, 0x5eed)
            };
            match ci {
                Ok(ci) => row.ci95.push((name, ci)),
                Err(e) => eprintln!("no interval for {} {name}: {e}", row.arm),
            }
        }
    }
    // FID, CMMD and DINO-MMD: a t-interval over the per-seed differences of the jobs' values
    for row in rows.iter_mut().filter(|r| !r.baseline.is_empty() && r.protocol_note.is_none()) {
        for m in VALUE_INTERVAL_METRICS {
            let d = value_deltas(jobs, &row.arm, &row.baseline, m);
            if d.len() >= 2 {
                if let Some(ci) = ablate_trainer::eval::bootstrap::t_interval(&d) {
                    row.ci95.push((m, ci));
                    row.n_seeds = row.n_seeds.max(d.len());
                }
            }
        }
    }
}

/// Fills `iso` of every arm from the runs' histories (`series` by job id; succeeded jobs only).
/// Each comparison group gets its own budgets (the shortest run of the group), so a group
/// of slow arms is not read at the time of the sweep's fastest.
pub fn add_iso(rows: &mut [Row], jobs: &[(String, v1::Job)], series: &HashMap<String, Series>) {
    let placed: Vec<Vec<Vec<iso::Placed>>> = rows
        .iter()
        .map(|r| jobs.iter().filter(|(a, j)| *a == r.arm && j.state() == JobState::Succeeded).filter_map(|(_, j)| series.get(&j.id)).map(iso::place).filter(|p| !p.is_empty()).collect())
        .collect();
    for (lead, members) in groups(rows) {
        let ids: Vec<usize> = std::iter::once(lead).chain(members.iter().copied()).collect();
        let at = iso::compare(&ids.iter().map(|&i| placed[i].clone()).collect::<Vec<_>>());
        for (&i, a) in ids.iter().zip(at) {
            if i == lead && !rows[i].baseline.is_empty() {
                rows[i].iso_as_base = a;
            } else {
                rows[i].iso = a;
            }
        }
    }
    for (row, seeds) in rows.iter_mut().zip(&placed) {
        row.best = iso::METRICS
            .iter()
            .filter_map(|m| {
                let pick = |a: f64, b: f64| if *m == "accuracy" { a.max(b) } else { a.min(b) };
                let per_seed: Vec<f64> = seeds.iter().filter_map(|p| p.iter().filter_map(|e| e.value(m)).reduce(pick)).collect();
                Some((*m, stat(&per_seed)?))
            })
            .collect();
    }
}

/// Whether the delta of `m` is significant at 95%: only from a seed-level interval (two or
/// more seeds); None where there is no verdict (one seed, or no interval).
pub fn significant(r: &Row, m: &str) -> Option<bool> {
    if r.n_seeds < 2 {
        return None;
    }
    r.ci95.iter().find(|(k, _)| *k == m).map(|(_, (lo, hi))| *lo > 0.0 || *hi < 0.0)
}

/// The evaluation protocol, stated once (from the baseline's report).
pub fn protocol(jobs: &[(String, v1::Job)]) -> Option<String> {
    let r = jobs.iter().filter(|(a, _)| a == "baseline").find_map(|(_, j)| report(j))?;
    let p = &r.headline()?.protocol;
    let opt = |x: Option<String>| x.unwrap_or_else(|| "none".into());
    let scene = match &r.fd_scenes {
        Some(f) => format!("FD-scenes, MMD, accuracy: {} (weights sha256 {}...), ", f.protocol.network, f.protocol.weights_sha256.chars().take(12).collect::<String>()),
        None => "Evaluation: ".to_string(),
    };
    Some(format!(
        "{scene}{} generated images at step {}, {} sampler steps, guidance {}, seed {}, reference {}{}",
        p.samples,
        r.step,
        opt(p.sampler_steps.map(|s| s.to_string())),
        opt(p.guidance.map(|g| g.to_string())),
        opt(p.seed.map(|s| s.to_string())),
        p.reference,
        [("FID", &r.fid, &r.fid_unavailable), ("CMMD", &r.cmmd, &r.cmmd_unavailable), ("DINO-MMD", &r.dino_mmd, &r.dino_mmd_unavailable)]
            .into_iter()
            .map(|(name, m, why)| match (m, why) {
                (Some(m), _) => format!("; {name}: {} (weights sha256 {}...), resize {}", m.protocol.network, m.protocol.weights_sha256.chars().take(12).collect::<String>(), m.protocol.resize),
                (None, Some(why)) if why.contains("weights") && why.contains("not there") => format!("; {name} unavailable (weights not installed)"),
                (None, Some(why)) => format!("; {name} unavailable ({why})"),
                (None, None) => format!("; {name} unavailable"),
            })
            .collect::<String>()
    ))
}

/// (absolute, %) change of `m` against `base`; the % is NaN when the baseline is 0.
/// None too for an evaluation metric when the arm was evaluated under another protocol.
pub fn delta(row: &Row, base: &Row, m: &str) -> Option<(f64, f64)> {
    if row.protocol_note.is_some() && EVAL_METRICS.contains(&m) {
        return None;
    }
    let (a, b) = (row.get(m)?, base.get(m)?);
    Some((a.mean - b.mean, if b.mean != 0.0 { 100.0 * (a.mean - b.mean) / b.mean.abs() } else { f64::NAN }))
}

pub fn json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                let base = base_of(rows, r);
                let mut o = json!({"arm": r.arm, "job_id": r.job_ids.first(), "job_ids": r.job_ids, "status": r.status, "steps": r.steps});
                if !r.baseline.is_empty() {
                    o["baseline"] = json!(r.baseline);
                }
                for m in METRICS {
                    o[m] = r.get(m).map(|s| json!(s.mean)).unwrap_or(Value::Null);
                    if r.job_ids.len() > 1 {
                        o[format!("{m}_std")] = r.get(m).map(|s| json!(s.std)).unwrap_or(Value::Null);
                    }
                }
                if let Some(b) = base {
                    o["delta_vs_baseline"] = Value::Object(METRICS.iter().map(|m| (m.to_string(), delta(r, b, m).map(|d| json!(d.0)).unwrap_or(Value::Null))).collect());
                    o["delta_pct_vs_baseline"] = Value::Object(METRICS.iter().map(|m| (m.to_string(), delta(r, b, m).map(|d| json!(d.1)).unwrap_or(Value::Null))).collect());
                }
                if !r.best.is_empty() {
                    o["best"] = Value::Object(r.best.iter().map(|(m, s)| (m.to_string(), json!(s.mean))).collect());
                }
                if !r.iso.is_empty() {
                    o["iso_compute"] = Value::Object(
                        r.iso
                            .iter()
                            .map(|a| {
                                let mut v = json!({"budget": a.budget, "step": a.step.map(|s| s.mean)});
                                for (m, st) in &a.metrics {
                                    v[*m] = st.map(|s| json!(s.mean)).unwrap_or(Value::Null);
                                }
                                (a.axis.key().to_string(), v)
                            })
                            .collect(),
                    );
                }
                if !r.ci95.is_empty() {
                    o["ci95"] = Value::Object(r.ci95.iter().map(|(m, (lo, hi))| (m.to_string(), json!([lo, hi]))).collect());
                    o["significant"] = Value::Object(r.ci95.iter().map(|(m, _)| (m.to_string(), json!(significant(r, m)))).collect());
                    o["n_seeds"] = json!(r.n_seeds);
                    o["interval"] = json!(if r.n_seeds >= 2 { "seeds-t" } else { "evaluation-images-bootstrap" });
                }
                if let Some(note) = &r.protocol_note {
                    o["protocol_differs"] = json!(note);
                }
                o
            })
            .collect(),
    )
}

fn cell(r: &Row, base: Option<&Row>, m: &str, scale: f64, digits: usize) -> String {
    let Some(s) = r.get(m) else { return "-".into() };
    let mut out = format!("{:.*}", digits, s.mean * scale);
    if s.n > 1 {
        out.push_str(&format!(" ±{:.*}", digits, s.std * scale));
    }
    if let Some(b) = base.filter(|b| b.arm != r.arm) {
        if let Some((d, pct)) = delta(r, b, m) {
            let mark = if significant(r, m) == Some(true) { "*" } else { "" };
            out.push_str(&format!(" ({:+.*}, {:+.0}%){mark}", digits, d * scale, pct));
        }
    }
    out
}

/// One line per arm evaluated under another protocol than the baseline.
pub fn protocol_notes(rows: &[Row]) -> Vec<String> {
    rows.iter().filter_map(|r| Some(format!("{}: evaluated under another protocol than {} ({}): no deltas of its evaluation numbers", r.arm, r.baseline, r.protocol_note.as_ref()?))).collect()
}

fn footnote(rows: &[Row]) -> String {
    let mut notes: String = protocol_notes(rows).iter().map(|l| format!("{l}\n")).collect();
    for (lead, members) in groups(rows).iter().filter(|(l, _)| !rows[*l].baseline.is_empty()) {
        let names: Vec<&str> = members.iter().map(|&i| rows[i].arm.as_str()).collect();
        notes.push_str(&format!("{}: compared with {} (their own group), not with the baseline\n", names.join(", "), rows[*lead].arm));
    }
    let with_ci: Vec<&Row> = rows.iter().filter(|r| !r.ci95.is_empty()).collect();
    if with_ci.is_empty() {
        let one_seed = rows.iter().all(|r| r.job_ids.len() < 2);
        return match one_seed {
            true => format!("{notes}one seed per arm: no significance marks, no intervals (list seeds = [0, 1, 2] or more for seed-level intervals)\n"),
            false => format!("{notes}(no confidence intervals: the per-image evaluation numbers are not at hand)\n"),
        };
    }
    let mut out = notes;
    if let Some(n) = with_ci.iter().map(|r| r.n_seeds).filter(|&n| n >= 2).min() {
        out.push_str(&format!("* the 95% t-interval of the delta over the paired seeds ({n} or more per arm) excludes 0\n"));
    }
    if with_ci.iter().any(|r| r.n_seeds < 2) {
        out.push_str("one seed per arm: no significance marks. Training noise is not covered: the intervals in results.json resample the evaluation images of one run (list seeds = [0, 1, 2] or more for seed-level intervals)\n");
    }
    out
}

/// The seed-level 95% intervals of the deltas behind the stars, one line per arm with two or
/// more paired seeds (empty when none has): what a star means, and how wide "not
/// significant" is.
pub fn intervals_text(rows: &[Row], format: &str) -> String {
    let seeded: Vec<&Row> = rows.iter().filter(|r| r.n_seeds >= 2).collect();
    if seeded.is_empty() {
        return String::new();
    }
    let range = |r: &Row, m: &str, scale: f64, digits: usize| match r.ci95.iter().find(|(k, _)| *k == m) {
        Some((_, (lo, hi))) => format!("{:+.*} .. {:+.*}{}", digits, lo * scale, digits, hi * scale, if significant(r, m) == Some(true) { " *" } else { "" }),
        None => "-".into(),
    };
    let head = ["arm", "seeds", "FD-scenes", "MMD", "accuracy %"];
    let body: Vec<Vec<String>> = seeded.iter().map(|r| vec![r.arm.clone(), r.n_seeds.to_string(), range(r, "fd_scenes", 1.0, 1), range(r, "mmd", 1.0, 3), range(r, "accuracy", 100.0, 1)]).collect();
    format!("95% t-intervals of the delta vs each arm's baseline over the paired seeds:\n{}", grid(&head, &body, format))
}

/// Whether every run reaches the budget exactly at its last step: the iso-compute table is then
/// the main table again (equal samples seen when every arm ran the same steps and batch).
pub(crate) fn at_every_final_step(ats: &[(&Row, &AtBudget)]) -> bool {
    ats.iter().all(|(r, a)| a.step.is_some_and(|s| (s.mean - r.steps as f64).abs() < 1e-6 && s.std < 1e-9))
}

/// The iso-compute tables (one per axis and comparison group) for "table" or "markdown";
/// empty without evaluations. A table that would repeat the main one (every run at its last
/// step) is one line instead.
pub fn iso_text(rows: &[Row], format: &str) -> String {
    let mut out = String::new();
    let groups = groups(rows);
    for (lead, members) in &groups {
        let lead_row = &rows[*lead];
        let lead_iso = if lead_row.baseline.is_empty() { &lead_row.iso } else { &lead_row.iso_as_base };
        let group = if groups.len() > 1 { format!(", group of {}", lead_row.arm) } else { String::new() };
        for axis in Axis::ALL {
            let find = |iso: &'_ [AtBudget]| iso.iter().position(|a| a.axis == axis);
            let mut ats: Vec<(&Row, &AtBudget)> = Vec::new();
            if let Some(k) = find(lead_iso) {
                ats.push((lead_row, &lead_iso[k]));
            }
            ats.extend(members.iter().filter_map(|&i| Some((&rows[i], &rows[i].iso[find(&rows[i].iso)?]))));
            let Some((_, first)) = ats.first() else { continue };
            if at_every_final_step(&ats) {
                let what = match axis {
                    Axis::TrainSeconds => format!("At equal training time ({:.0} s{group})", first.budget),
                    Axis::SamplesSeen => format!("At equal samples seen ({:.0}{group})", first.budget),
                };
                out.push_str(&format!("\n{what}: every run is at its last step, so the first table applies.\n"));
                continue;
            }
            let base = lead_iso.iter().find(|a| a.axis == axis);
            let title = match axis {
                Axis::TrainSeconds => format!("At equal training time ({:.0} s, the shortest run's{group}; linear between evaluations):", first.budget),
                Axis::SamplesSeen => format!("At equal samples seen ({:.0}, the fewest of any run{group}; linear between evaluations):", first.budget),
            };
            // the evaluation metrics some run of the sweep measured (the scene world's, or FID,
            // CMMD and DINO-MMD on a user's set)
            let measured = |m: &str| rows.iter().any(|r| r.get(m).is_some() || r.iso.iter().chain(&r.iso_as_base).any(|a| a.get(m).is_some()));
            let cols: Vec<(&str, &str, f64, usize)> = COLUMNS.into_iter().filter(|(m, ..)| iso::METRICS.contains(m) && measured(m)).collect();
            let mut head = vec!["arm", "step"];
            head.extend(cols.iter().map(|c| c.1));
            let cellf = |a: &AtBudget, m: &str, scale: f64, digits: usize| -> String {
                let Some(s) = a.get(m) else { return "- (no evaluation by then)".into() };
                let mut c = format!("{:.*}", digits, s.mean * scale);
                if let Some(b) = base.filter(|b| !std::ptr::eq(*b, a)).and_then(|b| b.get(m)) {
                    let d = s.mean - b.mean;
                    c.push_str(&format!(" ({:+.*}, {:+.0}%)", digits, d * scale, if b.mean != 0.0 { 100.0 * d / b.mean.abs() } else { f64::NAN }));
                }
                c
            };
            let body: Vec<Vec<String>> = ats
                .iter()
                .map(|(r, a)| {
                    let mut v = vec![r.arm.clone(), a.step.map(|s| format!("{:.0}", s.mean)).unwrap_or("-".into())];
                    v.extend(cols.iter().map(|(m, _, scale, digits)| cellf(a, m, *scale, *digits)));
                    v
                })
                .collect();
            out.push('\n');
            out.push_str(&title);
            out.push('\n');
            out.push_str(&grid(&head, &body, format));
        }
    }
    out
}

/// `head` and `body` as an aligned text table or a markdown table.
fn grid(head: &[&str], body: &[Vec<String>], format: &str) -> String {
    if format == "markdown" {
        let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
        for row in body {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        return out;
    }
    let widths: Vec<usize> = (0..head.len()).map(|i| body.iter().map(|r| r[i].chars().count()).chain([head[i].len()]).max().unwrap_or(0)).collect();
    let line = |cells: Vec<String>| cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect::<Vec<_>>().join("  ").trim_end().to_string() + "\n";
    let mut out = line(head.iter().map(|s| s.to_string()).collect());
    for row in body {
        out.push_str(&line(row.clone()));
    }
    out
}

/// A sweep's table from its arms, jobs, histories and per-image data, at the final step or
/// at evaluation step `step` (`ablate results` of a sweep id, or of several sweeps joined).
pub fn print_sweep(arms: &[String], jobs: &[(String, v1::Job)], series: &HashMap<String, Series>, samples: &HashMap<String, EvalSamples>, format: &str, step: Option<u64>) -> anyhow::Result<()> {
    if let Some(step) = step {
        let jobs = at_step(jobs, series, step)?;
        let mut rows = rows(arms, &jobs);
        add_intervals(&mut rows, &jobs, &|_| None);
        return print(&rows, &jobs, format);
    }
    let mut rows = rows(arms, jobs);
    add_intervals(&mut rows, jobs, &|j| samples.get(&j.id).cloned());
    add_iso(&mut rows, jobs, series);
    print(&rows, jobs, format)
}

/// Prints `rows` as `format` ("table", "markdown", "csv" or "json"); the protocol line above
/// the human formats.
pub fn print(rows: &[Row], jobs: &[(String, v1::Job)], format: &str) -> anyhow::Result<()> {
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(&json(rows))?),
        f => {
            if f != "csv" {
                if let Some(p) = protocol(jobs) {
                    println!("{p}\n");
                }
            }
            print!("{}", text(rows, f));
        }
    }
    Ok(())
}

/// The table's metric columns: (metric, title, scale, digits).
pub const COLUMNS: [(&str, &str, f64, usize); 8] = [
    ("fd_scenes", "FD-scenes", 1.0, 1),
    ("mmd", "MMD", 1.0, 3),
    ("accuracy", "accuracy %", 100.0, 1),
    ("fid", "FID", 1.0, 2),
    ("cmmd", "CMMD", 1.0, 3),
    ("dino_mmd", "DINO-MMD", 1.0, 3),
    ("samples_per_sec", "samples/s", 1.0, 1),
    ("final_loss", "final loss", 1.0, 4),
];

/// The metric columns of `rows`' table: CMMD and DINO-MMD only when some arm has them
/// (their networks are installed).
pub fn columns(rows: &[Row]) -> Vec<(&'static str, &'static str, f64, usize)> {
    COLUMNS.into_iter().filter(|(m, ..)| !matches!(*m, "cmmd" | "dino_mmd") || rows.iter().any(|r| r.get(m).is_some())).collect()
}

/// "table" (aligned text), "markdown" or "csv".
pub fn text(rows: &[Row], format: &str) -> String {
    let cols = columns(rows);
    let mut head = vec!["arm", "status"];
    head.extend(cols.iter().map(|c| c.1));
    head.extend(["steps", "wall s"]);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let base = base_of(rows, r);
            let mut v = vec![r.arm.clone(), r.status.clone()];
            v.extend(cols.iter().map(|(m, _, scale, digits)| cell(r, base, m, *scale, *digits)));
            v.extend([r.steps.to_string(), cell(r, None, "wall_seconds", 1.0, 0)]);
            v
        })
        .collect();
    match format {
        "csv" => {
            let mut out = String::from("arm,job_ids,status,steps");
            for m in METRICS {
                out.push_str(&format!(",{m},{m}_std,{m}_delta"));
            }
            out.push('\n');
            for r in rows {
                out.push_str(&format!("{},{},{},{}", r.arm, r.job_ids.join(" "), r.status, r.steps));
                for m in METRICS {
                    let s = r.get(m);
                    let d = base_of(rows, r).and_then(|b| delta(r, b, m));
                    out.push_str(&format!(
                        ",{},{},{}",
                        s.map(|s| s.mean.to_string()).unwrap_or_default(),
                        s.map(|s| s.std.to_string()).unwrap_or_default(),
                        d.map(|d| d.0.to_string()).unwrap_or_default()
                    ));
                }
                out.push('\n');
            }
            out
        }
        f => {
            let mut out = grid(&head, &body, f);
            out.push_str(&footnote(rows));
            out.push_str(&intervals_text(rows, f));
            out.push_str(&iso_text(rows, f));
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(axis: Axis, budget: f64, step: f64, fd: f64) -> AtBudget {
        AtBudget { axis, budget, step: Some(Stat { mean: step, std: 0.0, n: 1 }), metrics: vec![("fd_scenes", Some(Stat { mean: fd, std: 0.0, n: 1 }))] }
    }

    fn row(arm: &str, iso: Vec<AtBudget>) -> Row {
        let baseline = if arm == "baseline" { String::new() } else { "baseline".into() };
        Row { arm: arm.into(), baseline, job_ids: vec![], status: "succeeded".into(), steps: 400, metrics: vec![], ci95: vec![], n_seeds: 0, protocol_note: None, iso, iso_as_base: vec![], best: vec![] }
    }

    /// An arm evaluated on another number of images (or against another reference) than the
    /// baseline gets no deltas of its evaluation numbers, and the table says why; its
    /// throughput and loss deltas stay.
    #[test]
    fn another_evaluation_protocol_gets_no_evaluation_deltas() {
        let job = |id: &str, samples: u64, fd: f64| {
            let protocol = v1::EvalProtocol { metric: "fd_scenes".into(), network: "scene-evaluator".into(), weights_sha256: "ab".into(), samples, sampler_steps: Some(20), guidance: Some(3.5), seed: Some(1234), reference: "r".into(), resize: "none".into() };
            let m = |value: f64| Some(v1::Measured { value, protocol: Some(protocol.clone()) });
            let eval = v1::EvalReport { step: 400, fd_scenes: m(fd), mmd_scenes: m(1.0), accuracy: m(0.1), composition: Some(v1::Composition::default()), ..Default::default() };
            let result = v1::JobResult { steps: 400, samples_per_sec: 100.0, final_loss: 0.1, wall_seconds: 10.0, eval: Some(eval), ..Default::default() };
            v1::Job { id: id.into(), state: JobState::Succeeded as i32, result: Some(result), ..Default::default() }
        };
        let jobs = vec![("baseline".to_string(), job("b", 128, 100.0)), ("same".into(), job("s", 128, 90.0)), ("fewer".into(), job("f", 64, 120.0))];
        let rows = rows(&["baseline".into(), "same".into(), "fewer".into()], &jobs);
        assert_eq!(rows[1].protocol_note, None);
        assert_eq!(rows[2].protocol_note.as_deref(), Some("samples: 64 vs 128"));
        assert!(delta(&rows[1], &rows[0], "fd_scenes").is_some());
        assert_eq!(delta(&rows[2], &rows[0], "fd_scenes"), None);
        assert!(delta(&rows[2], &rows[0], "samples_per_sec").is_some(), "throughput still compares");
        let t = text(&rows, "table");
        assert!(t.contains("fewer: evaluated under another protocol than baseline (samples: 64 vs 128)"), "{t}");
    }

    /// `--step`: the table at an earlier evaluation, from each run's evaluation of that step,
    /// with seed-level t-intervals from the per-seed numbers (no per-image data there).
    #[test]
    fn the_table_at_an_earlier_step_uses_that_steps_evaluations() {
        let protocol = v1::EvalProtocol { metric: "fd_scenes".into(), samples: 64, ..Default::default() };
        let report = |step: u64, fd: f64| {
            let m = |value: f64| Some(v1::Measured { value, protocol: Some(protocol.clone()) });
            v1::EvalReport { step, fd_scenes: m(fd), mmd_scenes: m(fd / 1000.0), accuracy: m(0.1), composition: Some(v1::Composition::default()), ..Default::default() }
        };
        let mut jobs = Vec::new();
        let mut series = HashMap::new();
        // three seeds; the arm is 10 +- 1 better than the baseline at step 300, final 100 +- 5
        for (i, (b, a)) in [(1000.0, 989.0), (1100.0, 1090.0), (900.0, 891.0)].into_iter().enumerate() {
            for (arm, fd300) in [("baseline", b), ("better", a)] {
                let id = format!("{arm}-{i}");
                let fin = report(600, fd300 - if arm == "better" { 100.0 + 5.0 * i as f64 } else { 0.0 });
                let result = v1::JobResult { steps: 600, samples_per_sec: 100.0, final_loss: 0.1, wall_seconds: 10.0, eval: Some(fin.clone()), ..Default::default() };
                jobs.push((arm.to_string(), v1::Job { id: id.clone(), state: JobState::Succeeded as i32, result: Some(result), ..Default::default() }));
                series.insert(id, Series { points: vec![], evals: vec![v1::EvalPoint { step: 300, report: Some(report(300, fd300)) }, v1::EvalPoint { step: 600, report: Some(fin) }] });
            }
        }
        let arms = vec!["baseline".to_string(), "better".into()];
        let at300 = at_step(&jobs, &series, 300).unwrap();
        let mut rows = rows(&arms, &at300);
        add_intervals(&mut rows, &at300, &|_| None);
        assert_eq!(rows[1].steps, 300);
        assert_eq!(rows[1].n_seeds, 3);
        let (d, _) = delta(&rows[1], &rows[0], "fd_scenes").unwrap();
        assert!((d + 10.0).abs() < 1e-9, "{d}");
        let ci = rows[1].ci95.iter().find(|(m, _)| *m == "fd_scenes").unwrap().1;
        assert!(ci.1 < 0.0, "a consistent 9-11 point gain over three seeds is starred: {ci:?}");
        assert_eq!(significant(&rows[1], "fd_scenes"), Some(true));
        let e = at_step(&jobs, &series, 450).unwrap_err().to_string();
        assert!(e.contains("no run was evaluated at step 450 (evaluations at steps: 300, 600)"), "{e}");
    }

    /// An arm that names another arm as its baseline is compared with that arm: deltas,
    /// protocol check and iso-compute budgets all within its group, and the table says so.
    #[test]
    fn an_arm_is_compared_within_its_own_group() {
        let m = |value: f64| Some(v1::Measured { value, protocol: Some(v1::EvalProtocol { samples: 64, ..Default::default() }) });
        let report = |step: u64, fd: f64| v1::EvalReport { step, fd_scenes: m(fd), mmd_scenes: m(1.0), accuracy: m(0.5), composition: Some(v1::Composition::default()), ..Default::default() };
        let job = |id: &str, arm: &str, base: &str, fd: f64| {
            let result = v1::JobResult { steps: 100, samples_per_sec: 10.0, final_loss: 0.1, wall_seconds: 10.0, eval: Some(report(100, fd)), ..Default::default() };
            (arm.to_string(), v1::Job { id: id.into(), arm: arm.into(), baseline_arm: base.into(), state: JobState::Succeeded as i32, result: Some(result), ..Default::default() })
        };
        let jobs = vec![job("a", "baseline", "", 100.0), job("b", "big-base", "", 300.0), job("c", "big-arm", "big-base", 240.0)];
        let series = |step_seconds: f64, fd: f64| Series {
            points: (0..100).map(|s| v1::MetricPoint { step: s, step_seconds, samples_per_sec: 1.0 / step_seconds, ..Default::default() }).collect(),
            evals: vec![v1::EvalPoint { step: 50, report: Some(report(50, 2.0 * fd)) }, v1::EvalPoint { step: 100, report: Some(report(100, fd)) }],
        };
        let hist: HashMap<String, Series> = [("a".to_string(), series(0.1, 100.0)), ("b".into(), series(0.4, 300.0)), ("c".into(), series(0.3, 240.0))].into_iter().collect();
        let mut rows = rows(&["baseline".into(), "big-base".into(), "big-arm".into()], &jobs);
        add_iso(&mut rows, &jobs, &hist);
        assert_eq!((rows[0].baseline.as_str(), rows[1].baseline.as_str(), rows[2].baseline.as_str()), ("", "baseline", "big-base"));
        assert_eq!(base_of(&rows, &rows[2]).map(|r| r.arm.as_str()), Some("big-base"));
        assert_eq!(delta(&rows[2], base_of(&rows, &rows[2]).unwrap(), "fd_scenes"), Some((-60.0, -20.0)));
        let budget = |iso: &[AtBudget]| iso.iter().find(|a| a.axis == Axis::TrainSeconds).map(|a| a.budget.round());
        // the sweep's group: baseline (10 s) and big-base (40 s); big-base's group: 40 s and 30 s
        assert_eq!(budget(&rows[1].iso), Some(10.0));
        assert_eq!(budget(&rows[1].iso_as_base), Some(30.0));
        assert_eq!(budget(&rows[2].iso), Some(30.0));
        let t = text(&rows, "table");
        assert!(t.contains("big-arm: compared with big-base (their own group), not with the baseline"), "{t}");
        assert!(t.lines().any(|l| l.starts_with("big-arm") && l.contains("(-60.0, -20%)")), "{t}");
        assert!(t.contains("At equal training time (30 s, the shortest run's, group of big-base"), "{t}");
        assert_eq!(json(&rows)[2]["baseline"], "big-base");
    }

    /// A star only from a seed-level interval: the same interval excluding 0 gives no verdict
    /// from one seed (and the table says why) and a star from two.
    #[test]
    fn one_seed_gives_no_star_and_says_so() {
        let stat = |v: f64| Some(Stat { mean: v, std: 0.0, n: 1 });
        let mut base = row("baseline", vec![]);
        base.metrics = vec![("fd_scenes", stat(100.0))];
        let mut arm = row("arm", vec![]);
        arm.metrics = vec![("fd_scenes", stat(80.0))];
        arm.ci95 = vec![("fd_scenes", (-30.0, -10.0))];
        arm.n_seeds = 1;
        assert_eq!(significant(&arm, "fd_scenes"), None);
        let one = text(&[base.clone(), arm.clone()], "table");
        assert!(!one.contains(")*"), "{one}");
        assert!(one.contains("one seed per arm: no significance marks"), "{one}");
        assert!(!one.contains("95% t-intervals"), "no seed-level intervals to show: {one}");
        arm.n_seeds = 2;
        assert_eq!(significant(&arm, "fd_scenes"), Some(true));
        let two = text(&[base.clone(), arm.clone()], "table");
        assert!(two.contains("95% t-intervals of the delta vs each arm's baseline over the paired seeds"), "{two}");
        assert!(two.lines().any(|l| l.starts_with("arm ") && l.contains(" 2 ") && l.contains("-30.0 .. -10.0 *")), "{two}");
        let two = text(&[base, arm], "table");
        assert!(two.contains("(-20.0, -20%)*"), "{two}");
        assert!(two.contains("t-interval of the delta over the paired seeds") && !two.contains("one seed per arm"), "{two}");
    }

    /// An iso-compute table that would repeat the main table (every run at its last step) is
    /// one line; one where a run stops short is printed.
    #[test]
    fn iso_tables_that_repeat_the_main_table_are_one_line() {
        let rows = [
            row("baseline", vec![at(Axis::TrainSeconds, 66.0, 400.0, 7022.3), at(Axis::SamplesSeen, 6400.0, 400.0, 7022.3)]),
            row("repa", vec![at(Axis::TrainSeconds, 66.0, 265.0, 5629.2), at(Axis::SamplesSeen, 6400.0, 400.0, 5141.6)]),
        ];
        let text = iso_text(&rows, "table");
        assert!(text.contains("At equal samples seen (6400): every run is at its last step, so the first table applies."), "{text}");
        assert!(!text.contains("5141.6"), "{text}");
        assert!(text.contains("At equal training time (66 s, the shortest run's") && text.contains("5629.2 (-1393.1, -20%)"), "{text}");
    }
}
