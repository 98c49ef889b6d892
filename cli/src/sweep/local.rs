//! The folder of an `ablate run` (`--out`): its record of which job runs which arm
//! (`sweep.json`, with a fingerprint of the resolved configs), the embedded coordinator's
//! state, and the report data read back from both. Below the local runner (`run`), the
//! report (`report`) and `ablate results`, none of which it knows.

use ablate_coordinator::domain::JobId;
use ablate_coordinator::{store::redb::RedbStore, Core, Options};
use ablate_proto::v1;
use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::data::SweepData;
use super::iso::Series;
use super::results;
use super::spec::Sweep;

/// What `<out>/sweep.json` records: which job runs which arm, and a fingerprint of the
/// resolved configs so a different file cannot resume into the same folder.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub(super) name: String,
    pub(super) sweep_id: String,
    pub(super) fingerprint: String,
    pub(super) arms: Vec<String>,
    pub(super) jobs: Vec<RecordJob>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct RecordJob {
    pub(super) id: String,
    pub(super) arm: String,
    pub(super) seed: u64,
    pub(super) job: String,
    /// A job the sweep file no longer has: kept (the file may bring it back), not shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) hidden: bool,
}

pub(super) fn fingerprint(s: &Sweep) -> String {
    let mut h = ablate_trainer::hash::Fnv1a::default();
    for j in &s.jobs {
        h.write(j.id.as_bytes()).write(j.config.to_toml().as_bytes());
    }
    format!("{:016x}", h.finish())
}

pub(super) fn open_state(out: &Path) -> anyhow::Result<Arc<Core>> {
    let path = out.join("state/coordinator.redb");
    let store = RedbStore::open(&path).map_err(|e| anyhow::anyhow!("{e} (is another `ablate run` using {}?)", out.display()))?;
    let opts = Options { heartbeat: Duration::from_millis(200), worker_expiry: Duration::from_secs(3), max_restarts: 1000, max_infra_restarts: 1000, runs_dir: out.join("state/runs"), config_check: Some(crate::config_check::trainer_config_check()), ..Options::default() };
    Ok(Arc::new(Core::open(Arc::new(store), opts)?))
}

pub(super) fn read_record(out: &Path) -> anyhow::Result<Option<Record>> {
    let p = out.join("sweep.json");
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(serde_json::from_str(&t).with_context(|| format!("{} is damaged", p.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The sweep's jobs as the folder's coordinator state has them. A job finished by an older
/// version (its report stored as JSON, which this one no longer reads) gets its final
/// evaluation from its own `eval.jsonl`, so old folders keep their numbers.
pub(super) fn jobs_of(core: &Core, out: &Path, rec: &Record) -> anyhow::Result<Vec<(String, v1::Job)>> {
    rec.jobs
        .iter()
        .filter(|j| !j.hidden)
        .map(|j| {
            let mut job: v1::Job = core.get(&JobId(j.job.clone()))?.into();
            if let Some(r) = job.result.as_mut().filter(|r| r.eval.is_none()) {
                r.eval = job_reports(out, &job.id).into_iter().rfind(|e| e.step as u64 == r.steps).map(|e| ablate_worker::evalwire::report_to_wire(&e, false));
            }
            Ok((j.arm.clone(), job))
        })
        .collect()
}

/// The evaluations a job's rank 0 wrote to its directory (`eval.jsonl`).
fn job_reports(out: &Path, job: &str) -> Vec<ablate_trainer::eval::suite::EvalReport> {
    let text = std::fs::read_to_string(out.join("work/jobs").join(job).join("eval.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Every job's metric points and evaluations, as the coordinator keeps them (evaluations from
/// the job's own `eval.jsonl` for runs the coordinator has none of).
pub(super) fn local_series(core: &Core, out: &Path, jobs: &[(String, v1::Job)]) -> anyhow::Result<HashMap<String, Series>> {
    let mut all = HashMap::new();
    for (_, j) in jobs {
        let id = JobId(j.id.clone());
        let mut evals = core.evals(&id)?;
        // none kept, or kept by an older version in a form this one does not read
        if evals.iter().all(|e| e.report.is_none()) {
            evals = job_reports(out, &j.id).iter().map(|r| v1::EvalPoint { step: r.step as u64, report: Some(ablate_worker::evalwire::report_to_wire(r, false)) }).collect();
        }
        all.insert(j.id.clone(), Series { points: core.metrics(&id, 0)?, evals });
    }
    Ok(all)
}

/// The table's rows, with intervals from the jobs' `eval-samples.safetensors` and the
/// iso-compute comparison.
pub(super) fn local_rows(out: &Path, rec: &Record, jobs: &[(String, v1::Job)], series: &HashMap<String, Series>) -> Vec<results::Row> {
    let mut rows = results::rows(&rec.arms, jobs);
    let samples = |j: &v1::Job| ablate_trainer::eval::bootstrap::EvalSamples::load(&out.join("work/jobs").join(&j.id).join(ablate_trainer::eval::bootstrap::SAMPLES_FILE)).ok();
    results::add_intervals(&mut rows, jobs, &samples);
    results::add_iso(&mut rows, jobs, series);
    rows
}

/// What the report of the run in `out` shows, with the state open (the jobs' sample grids
/// from their work folders).
pub(super) fn data(core: &Core, out: &Path, rec: &Record, jobs: Vec<(String, v1::Job)>) -> anyhow::Result<SweepData> {
    let series = local_series(core, out, &jobs)?;
    let rows = local_rows(out, rec, &jobs, &series);
    let description = std::fs::read_to_string(out.join("sweep.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).and_then(|t| t.get("description")?.as_str().map(String::from)).unwrap_or_default();
    let mut samples = HashMap::new();
    for (_, j) in &jobs {
        let dir = out.join("work/jobs").join(&j.id);
        if let Ok(png) = std::fs::read(dir.join("samples.png")) {
            samples.insert(j.id.clone(), (png, std::fs::read_to_string(dir.join("samples.txt")).unwrap_or_default()));
        }
    }
    Ok(SweepData { name: rec.name.clone(), description, source: format!("ablate run --out {}", out.display()), jobs, rows, series, samples })
}

/// The report data of the `ablate run` folder `out`.
pub fn load(out: &Path) -> anyhow::Result<SweepData> {
    let rec = read_record(out)?.with_context(|| format!("{} holds no sweep (no sweep.json): pass the --out folder of `ablate run`", out.display()))?;
    let core = open_state(out)?;
    let jobs = jobs_of(&core, out, &rec)?;
    data(&core, out, &rec, jobs)
}
