//! Growing a sweep in place (`ablate run` again on a changed file, same `--out`): a job is
//! its arm and seed, so the file's new arms and seeds are added and only they train; a
//! larger step budget extends every job from its last checkpoint; everything else about an
//! existing job must stay as it was (it is refused, naming the job and the keys that
//! differ), and a smaller budget is refused (the earlier steps' table is `ablate results
//! --step N`). Jobs the file no longer has are kept in the folder, not shown (a file that brings
//! one back shows it again, as it was).

use anyhow::bail;
use std::collections::BTreeMap;
use std::path::Path;

use super::local::Record;

use super::spec::{Job as SweepJob, Sweep};

/// What a re-run does to each of the file's jobs.
#[derive(Debug, Default)]
pub(super) struct Growth {
    /// New arm x seed pairs: submitted.
    pub(super) added: Vec<SweepJob>,
    /// Existing jobs with a larger step budget: (coordinator job id, the job, old steps).
    pub(super) extended: Vec<(String, SweepJob, usize)>,
    /// Existing jobs as they were.
    pub(super) kept: usize,
}

impl Growth {
    pub(super) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.extended.is_empty()
    }

    pub(super) fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.added.is_empty() {
            let mut arms: Vec<&str> = self.added.iter().map(|j| j.arm.as_str()).collect();
            arms.dedup();
            parts.push(format!("{} job(s) added ({})", self.added.len(), arms.join(", ")));
        }
        if let Some((_, j, old)) = self.extended.first() {
            parts.push(format!("{} job(s) extended from {old} to {} steps", self.extended.len(), j.config.train.steps));
        }
        parts.push(format!("{} kept", self.kept));
        parts.join(", ")
    }
}

/// A job's config as a flat map of dotted keys to values, without its step budget.
fn flat(toml_text: &str) -> BTreeMap<String, String> {
    let mut out = flat_all(toml_text);
    out.remove("train.steps");
    out
}

/// A config as a flat map of dotted keys to values, where checkpoints are shared left out
/// (no part of what a job computes).
fn flat_all(toml_text: &str) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(v) = toml_text.parse::<toml::Table>() {
        walk("", &toml::Value::Table(v), &mut out);
    }
    out.remove("train.checkpoint_store");
    out
}

/// How two runs' recipes differ (`key: a -> b`), their seeds and names aside: whether two
/// sweeps' baselines are the same run but for the seed.
pub(super) fn recipe_differences(a: &str, b: &str) -> Vec<String> {
    let strip = |mut m: BTreeMap<String, String>| {
        m.remove("seed");
        m.remove("name");
        m
    };
    differences(&strip(flat_all(a)), &strip(flat_all(b)))
}

/// The keys whose values differ, as `key: old -> new`.
fn differences(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
    keys.into_iter().filter(|k| old.get(*k) != new.get(*k)).map(|k| format!("{k}: {} -> {}", show(old.get(k)), show(new.get(k)))).collect()
}

/// A job a sweep already has: its id in the sweep file (`muon-s1`), its coordinator job id,
/// and the config it was given.
pub(super) struct Existing {
    pub(super) id: String,
    pub(super) job: String,
    pub(super) config_toml: String,
}

/// The jobs recorded in the `ablate run` folder `out`, with the configs every run writes to
/// `out/configs/<id>.toml` (read before anything changes).
pub(super) fn recorded(rec: &Record, out: &Path) -> anyhow::Result<Vec<Existing>> {
    rec.jobs
        .iter()
        .map(|r| {
            let path = out.join("configs").join(format!("{}.toml", r.id));
            let config_toml = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e} (the folder is damaged; choose another --out)", path.display()))?;
            Ok(Existing { id: r.id.clone(), job: r.job.clone(), config_toml })
        })
        .collect()
}

/// Plans growing the sweep that holds `existing` (named `place` in messages: a folder or a
/// sweep id) into `sweep`.
pub(super) fn plan(existing: &[Existing], sweep: &Sweep, place: &str) -> anyhow::Result<Growth> {
    let mut g = Growth::default();
    for j in &sweep.jobs {
        let Some(r) = existing.iter().find(|r| r.id == j.id) else {
            g.added.push(j.clone());
            continue;
        };
        let old_steps = r.config_toml.parse::<toml::Table>().ok().and_then(|t| t.get("train")?.get("steps")?.as_integer()).unwrap_or(0).max(0) as usize;
        let diff = differences(&flat(&r.config_toml), &flat(&j.config.to_toml()));
        if !diff.is_empty() {
            bail!(
                "{place} already ran {} (arm {:?}, seed {}) with another config: {}. A job's config cannot change under its arm's name in the same sweep: rename the arm (a new arm trains on its own), or start another sweep",
                j.id,
                j.arm,
                j.seed,
                diff.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
            );
        }
        let new_steps = j.config.train.steps;
        if new_steps < old_steps {
            bail!("{place} ran {} for {old_steps} steps; the file now says {new_steps}: a sweep grows, it does not shrink (the table at step {new_steps}: `ablate results {place} --step {new_steps}`, when it was an evaluation step)", j.id);
        }
        if new_steps > old_steps {
            g.extended.push((r.job.clone(), j.clone(), old_steps));
        } else {
            g.kept += 1;
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_keys_and_ignore_the_step_budget() {
        let a = flat("[train]\nsteps = 30\nbatch_size = 2\n[optim]\nlr = 0.001\n");
        let b = flat("[train]\nsteps = 60\nbatch_size = 2\n[optim]\nlr = 0.0003\nkind = \"muon\"\n");
        assert_eq!(differences(&a, &b), vec!["optim.kind: (unset) -> \"muon\"".to_string(), "optim.lr: 0.001 -> 0.0003".into()]);
        assert!(differences(&a, &flat("[train]\nsteps = 90\nbatch_size = 2\n[optim]\nlr = 0.001\n")).is_empty());
    }
}
