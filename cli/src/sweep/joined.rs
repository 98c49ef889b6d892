//! `ablate results A B ...`: one table from several sweeps (`ablate run` folders or sweep ids
//! of a coordinator), so a new arm is compared with the baseline already paid for. The first
//! sweep is the reference: its baseline is the table's. Each other sweep joins when its own
//! baseline is the reference's run but for the seed (the same config, step budget and
//! evaluation); otherwise the join is refused, naming the keys that differ. Its arms join
//! as they are named (with ` (label)` on a clash: its baseline becomes `baseline (label)`,
//! an A/A row across the sweeps), its job ids prefixed with the sweep's label.

use ablate_proto::v1;
use anyhow::{bail, Context};
use std::collections::HashMap;
use std::path::Path;

use super::iso::Series;
use super::results;
use ablate_trainer::eval::bootstrap::EvalSamples;

/// One sweep's table data.
pub struct Source {
    /// How the table names it: the folder's name or the sweep id.
    pub label: String,
    pub arms: Vec<String>,
    pub jobs: Vec<(String, v1::Job)>,
    pub series: HashMap<String, Series>,
    pub samples: HashMap<String, EvalSamples>,
}

/// The sweep `spec` names: an `ablate run` folder, or a sweep id of `coordinator`.
pub fn load(spec: &Path, coordinator: &str) -> anyhow::Result<Source> {
    let name = spec.display().to_string();
    if !spec.exists() {
        anyhow::ensure!(super::remote::is_sweep_id(&name), "{name} is neither a folder of `ablate run` nor a sweep id (s000001)");
        let r = super::remote::fetch(&name, coordinator)?;
        return Ok(Source { label: name, arms: r.arms, jobs: r.jobs, series: r.series, samples: r.samples });
    }
    let rec = super::local::read_record(spec)?.with_context(|| format!("{name} holds no sweep (no sweep.json): pass the --out folder of `ablate run`"))?;
    let core = super::local::open_state(spec)?;
    let jobs = super::local::jobs_of(&core, spec, &rec)?;
    let series = super::local::local_series(&core, spec, &jobs)?;
    let samples = jobs
        .iter()
        .filter_map(|(_, j)| Some((j.id.clone(), EvalSamples::load(&spec.join("work/jobs").join(&j.id).join(ablate_trainer::eval::bootstrap::SAMPLES_FILE)).ok()?)))
        .collect();
    let label = spec.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(name);
    Ok(Source { label, arms: rec.arms, jobs, series, samples })
}

fn baseline_config(s: &Source) -> anyhow::Result<&str> {
    s.jobs.iter().find(|(a, _)| a == "baseline").map(|(_, j)| j.config_toml.as_str()).with_context(|| format!("sweep {} has no baseline run to compare by", s.label))
}

/// Joins `sources` into one, the first as the reference (see the module's text).
pub fn join(mut sources: Vec<Source>) -> anyhow::Result<Source> {
    anyhow::ensure!(!sources.is_empty(), "no sweep to show");
    let mut out = sources.remove(0);
    let reference = baseline_config(&out)?.to_string();
    let mut labels = vec![out.label.clone()];
    for s in sources {
        let differ = super::grow::recipe_differences(&reference, baseline_config(&s)?);
        if !differ.is_empty() {
            bail!(
                "sweep {}'s baseline is not {}'s run (seeds aside), so its arms cannot be compared with it: {}",
                s.label,
                out.label,
                differ.iter().take(6).cloned().collect::<Vec<_>>().join("; ")
            );
        }
        anyhow::ensure!(!labels.contains(&s.label), "sweep {} is named twice", s.label);
        labels.push(s.label.clone());
        // arm names: kept unless taken; a renamed arm's comparisons follow it
        let renamed: HashMap<String, String> = s.arms.iter().map(|a| (a.clone(), if out.arms.contains(a) { format!("{a} ({})", s.label) } else { a.clone() })).collect();
        let id = |j: &str| format!("{}:{j}", s.label);
        for a in &s.arms {
            out.arms.push(renamed[a].clone());
        }
        for (arm, mut j) in s.jobs {
            let old = j.id.clone();
            j.id = id(&old);
            if let Some(b) = renamed.get(&j.baseline_arm).filter(|_| !j.baseline_arm.is_empty()) {
                j.baseline_arm = b.clone();
            }
            if let Some(x) = s.series.get(&old) {
                out.series.insert(j.id.clone(), Series { points: x.points.clone(), evals: x.evals.clone() });
            }
            if let Some(x) = s.samples.get(&old) {
                out.samples.insert(j.id.clone(), x.clone());
            }
            out.jobs.push((renamed.get(&arm).cloned().unwrap_or(arm), j));
        }
    }
    out.label = labels.join(" + ");
    Ok(out)
}

/// `ablate results A B ...`: the joined table, as `format`.
pub fn results(specs: &[std::path::PathBuf], coordinator: &str, format: &str, step: Option<u64>) -> anyhow::Result<()> {
    let sources = specs.iter().map(|p| load(p, coordinator)).collect::<anyhow::Result<Vec<_>>>()?;
    let s = join(sources)?;
    if format == "table" {
        println!("joined: {}", s.label);
    }
    results::print_sweep(&s.arms, &s.jobs, &s.series, &s.samples, format, step)
}
