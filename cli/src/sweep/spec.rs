//! The sweep file: a baseline training config, the arms that change it by dotted-path
//! overrides, optional grid axes and seed replicates. Everything is validated before
//! anything runs, and every error names the place (line and column for syntax and type
//! errors, the arm and the key for overrides).
//!
//! ```toml
//! name = "quick"
//! seeds = [0]            # replicates (each arm x seed is one job)
//! steps = 300            # the step budget of every job (overrides baseline train.steps)
//! world_size = 1
//! priority = 0
//!
//! [baseline]             # a full training config (the format of `ablate train`)
//! model.preset = "tiny"
//!
//! [[arm]]
//! name = "short-captions"
//! description = "short captions only"
//! overrides = { "data.phases.0.captions" = "short" }
//!
//! [[arm]]                # an A/A control: the baseline's config under other seeds
//! name = "baseline-again"
//! seed_offset = 1000     # its run paired with the baseline's seed s runs at seed s + 1000
//!
//! [[arm]]                # a comparison group of its own: compared with the arm it names
//! name = "tokens-144-tread"
//! baseline = "tokens-144-baseline"
//! overrides = { "latent.image_size" = 48, "routing.kind" = "tread" }
//!
//! [grid]                 # optional: one arm per point of the cartesian product
//! "optim.lr" = [3e-4, 1e-3]
//! ```

use ablate_trainer::config::{closest, describe_unknown_field};
use ablate_trainer::TrainConfig;
use std::collections::BTreeMap;
use toml::Value;

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "one_seed")]
    seeds: Vec<u64>,
    steps: Option<usize>,
    #[serde(default = "one")]
    world_size: u32,
    #[serde(default)]
    priority: i32,
    /// Parsed here, so its errors point into the sweep file.
    baseline: TrainConfig,
    #[serde(default)]
    arm: Vec<ArmSpec>,
    #[serde(default)]
    grid: BTreeMap<String, Vec<Value>>,
}

fn one_seed() -> Vec<u64> {
    vec![0]
}
fn one() -> u32 {
    1
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmSpec {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    overrides: toml::Table,
    /// Runs this arm at seed + offset for each seed of `seeds` (pairs stay by position): with
    /// no overrides, an A/A control that measures how often training noise alone gets a star.
    #[serde(default)]
    seed_offset: u64,
    /// The arm this one is compared with (default: the baseline): deltas, intervals and the
    /// iso-compute budgets are taken within that group.
    baseline: Option<String>,
}

/// One arm of the expanded sweep.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub description: String,
    /// (dotted path, value) as written.
    pub overrides: Vec<(String, Value)>,
    /// Added to every seed of the sweep for this arm's jobs (0 for all but A/A controls).
    pub seed_offset: u64,
    /// The arm this one is compared with ("baseline", or another arm of the file; empty for
    /// the baseline itself).
    pub baseline: String,
}

/// One job: an arm at one seed, with its fully resolved config.
#[derive(Debug, Clone)]
pub struct Job {
    pub arm: String,
    /// The arm it is compared with (empty for the baseline's own jobs).
    pub baseline: String,
    pub seed: u64,
    /// `<arm>` or `<arm>-s<seed>` when replicated: stable across runs of the same file.
    pub id: String,
    pub config: TrainConfig,
}

#[derive(Debug, Clone)]
pub struct Sweep {
    pub name: String,
    pub description: String,
    pub world_size: u32,
    pub priority: i32,
    pub arms: Vec<Arm>,
    pub jobs: Vec<Job>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SpecError {
    pub path: String,
    pub message: String,
}

fn line_col(text: &str, byte: usize) -> (usize, usize) {
    let before = &text[..byte.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Rewrites serde's unknown-field message into ours, with a suggestion.
fn describe(msg: &str) -> String {
    describe_unknown_field(msg).unwrap_or_else(|| msg.trim().to_string())
}

/// Flattens nested override tables into dotted paths (arrays and scalars are leaves).
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, Value)>) {
    for (k, v) in t {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            Value::Table(inner) => flatten(&path, inner, out),
            _ => out.push((path, v.clone())),
        }
    }
}

/// Sets `path` in `root`; Err(message) when the path cannot exist.
fn set(root: &mut Value, path: &str, value: Value) -> Result<Option<Value>, String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let here = parts[..i].join(".");
        cur = match cur {
            Value::Table(t) => {
                if last {
                    return Ok(t.insert(part.to_string(), value));
                }
                if !t.contains_key(*part) {
                    let best = closest(part, t.keys().map(String::as_str));
                    let full = if here.is_empty() { part.to_string() } else { format!("{here}.{part}") };
                    return Err(match best {
                        Some(b) => format!("unknown key \"{full}\" (did you mean \"{}\"?)", if here.is_empty() { b.to_string() } else { format!("{here}.{b}") }),
                        None => format!("unknown key \"{full}\""),
                    });
                }
                t.get_mut(*part).expect("checked")
            }
            Value::Array(a) => {
                let n = a.len();
                let idx: usize = part.parse().map_err(|_| format!("\"{here}\" is a list: \"{part}\" must be an index (0..{n})"))?;
                if idx >= n {
                    return Err(format!("\"{here}\" has {n} entries: index {idx} is out of range"));
                }
                if last {
                    return Ok(Some(std::mem::replace(&mut a[idx], value)));
                }
                &mut a[idx]
            }
            _ => return Err(format!("\"{here}\" is a value, not a table: \"{path}\" cannot be set")),
        };
    }
    unreachable!("the loop returns on the last part")
}

fn lookup<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, part| match v {
        Value::Table(t) => t.get(part),
        Value::Array(a) => a.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// `unknown key "a.b.c" (did you mean "a.b.d"?)`, the suggestion from the parent's keys.
fn unknown_path(root: &Value, path: &str) -> String {
    let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", path));
    let siblings: Vec<&str> = match if parent.is_empty() { Some(root) } else { lookup(root, parent) } {
        Some(Value::Table(t)) => t.keys().map(String::as_str).collect(),
        _ => vec![],
    };
    match closest(leaf, siblings) {
        Some(b) if parent.is_empty() => format!("unknown key \"{path}\" (did you mean \"{b}\"?)"),
        Some(b) => format!("unknown key \"{path}\" (did you mean \"{parent}.{b}\"?)"),
        None => format!("unknown key \"{path}\""),
    }
}

fn slug(s: &str) -> String {
    let mut out: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c.to_ascii_lowercase() } else { '-' }).collect();
    while out.contains("--") {
        out = out.replace("--", "-");
    }
    out.trim_matches('-').to_string()
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl Sweep {
    pub fn load(path: &std::path::Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError { path: path.display().to_string(), message: format!("cannot read: {e}") })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, path: &str) -> Result<Self, SpecError> {
        let err = |message: String| SpecError { path: path.to_string(), message };
        let file: File = toml::from_str(text).map_err(|e| {
            // a missing key has no place in the file to point at
            if let Some(rest) = e.message().trim().strip_prefix("missing field `") {
                let key = rest.trim_end_matches('`');
                return err(if key == "baseline" { "missing [baseline]: the training config every arm starts from".into() } else { format!("missing key \"{key}\"") });
            }
            let at = e.span().map(|s| {
                let (l, c) = line_col(text, s.start);
                format!("line {l}, column {c}: ")
            });
            err(format!("{}{}", at.unwrap_or_default(), describe(e.message())))
        })?;
        if file.name.trim().is_empty() {
            return Err(err("`name` must not be empty".into()));
        }
        if file.seeds.is_empty() {
            return Err(err("`seeds` must list at least one seed".into()));
        }
        if file.world_size == 0 {
            return Err(err("`world_size` must be at least 1".into()));
        }
        if file.steps == Some(0) {
            return Err(err("`steps` must be positive".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for d in file.seeds.iter() {
            if !seen.insert(*d) {
                return Err(err(format!("seed {d} is listed twice in `seeds`")));
            }
        }
        // the jobs' seeds come from `seeds`: a different seed in [baseline] would be replaced
        if file.baseline.seed != 0 && file.seeds != [file.baseline.seed] {
            return Err(err(format!("[baseline] sets seed = {}, but every job takes its seed from `seeds` ({:?}): move it there (seeds = [{}])", file.baseline.seed, file.seeds, file.baseline.seed)));
        }
        // the baseline, resolved with every default, is what arms override
        let mut baseline = file.baseline.clone();
        if let Some(s) = file.steps {
            baseline.train.steps = s;
        }
        baseline.validate().map_err(|e| err(format!("[baseline]: {}", strip_config_prefix(&e.to_string()))))?;
        let resolved: Value = toml::from_str(&baseline.to_toml()).expect("a config round-trips");

        let mut arms = vec![Arm { name: "baseline".into(), description: "the baseline".into(), overrides: vec![], seed_offset: 0, baseline: String::new() }];
        for (i, a) in file.arm.iter().enumerate() {
            let name = a.name.trim();
            if name.is_empty() {
                return Err(err(format!("arm {} has an empty name", i + 1)));
            }
            if arms.iter().any(|x| slug(&x.name) == slug(name)) {
                return Err(err(format!("arm name \"{name}\" is used twice (names must differ after lowercasing; \"baseline\" is taken)")));
            }
            let mut overrides = Vec::new();
            flatten("", &a.overrides, &mut overrides);
            if overrides.iter().any(|(k, _)| k == "seed") {
                return Err(err(format!("arm \"{name}\": \"seed\" cannot be overridden: every arm runs once per seed of the sweep's `seeds` list, which would replace it (list the seeds there: seeds = [0, 1, 2])")));
            }
            if overrides.is_empty() && a.seed_offset == 0 {
                return Err(err(format!("arm \"{name}\" has no overrides: it would repeat the baseline (an A/A control needs other seeds: seed_offset = 1000)")));
            }
            if file.seeds.iter().any(|s| s.checked_add(a.seed_offset).is_none()) {
                return Err(err(format!("arm \"{name}\": seed_offset {} takes a seed of {:?} past the largest seed", a.seed_offset, file.seeds)));
            }
            // A/A controls (no overrides) must run on seeds no other such arm, nor the
            // baseline, runs: a shared seed would be the same run twice, not a new draw
            if overrides.is_empty() {
                let mine: Vec<u64> = file.seeds.iter().map(|s| s + a.seed_offset).collect();
                let same = arms.iter().filter(|x| x.overrides.is_empty()).find(|x| file.seeds.iter().any(|s| mine.contains(&(s + x.seed_offset))));
                if let Some(other) = same {
                    return Err(err(format!("arm \"{name}\": with seed_offset {} it runs seeds {mine:?}, some of which \"{}\" runs too with the same config: give each A/A control an offset beyond the others' seeds", a.seed_offset, other.name)));
                }
            }
            arms.push(Arm { name: name.into(), description: a.description.clone(), overrides, seed_offset: a.seed_offset, baseline: a.baseline.clone().unwrap_or_else(|| "baseline".into()) });
        }
        // grid: the cartesian product of the axes, one arm per point
        if !file.grid.is_empty() {
            let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
            for (key, values) in &file.grid {
                if key == "seed" {
                    return Err(err("grid axis \"seed\": seeds are not an ablation axis; list them in `seeds` (every arm runs once per seed)".into()));
                }
                if values.is_empty() {
                    return Err(err(format!("grid axis \"{key}\" has no values")));
                }
                points = points.into_iter().flat_map(|p| values.iter().map(move |v| [p.clone(), vec![(key.clone(), v.clone())]].concat())).collect();
            }
            for p in points {
                let name = p.iter().map(|(k, v)| format!("{k}={}", show(v).trim_matches('"'))).collect::<Vec<_>>().join(",");
                arms.push(Arm { name: format!("grid:{name}"), description: String::new(), overrides: p, seed_offset: 0, baseline: "baseline".into() });
            }
        }
        // a group's baseline is an arm of the file that is itself compared with the baseline
        for a in arms.iter().filter(|a| a.baseline != "baseline" && !a.baseline.is_empty()) {
            let names: Vec<&str> = arms.iter().map(|x| x.name.as_str()).collect();
            match arms.iter().find(|x| x.name == a.baseline) {
                None => return Err(err(format!("arm \"{}\": baseline = \"{}\" is not an arm of this sweep (arms: {})", a.name, a.baseline, names.join(", ")))),
                Some(b) if b.name == a.name => return Err(err(format!("arm \"{}\" cannot be its own baseline", a.name))),
                Some(b) if b.baseline != "baseline" => return Err(err(format!("arm \"{}\": its baseline \"{}\" is compared with \"{}\" itself; a group's baseline must be compared with the sweep's baseline", a.name, b.name, b.baseline))),
                Some(_) => {}
            }
        }
        // resolve every arm; refuse overrides that do not exist, do not parse, or change nothing
        let mut configs = Vec::new();
        for arm in &arms {
            let mut v = resolved.clone();
            for (k, val) in &arm.overrides {
                let old = set(&mut v, k, val.clone()).map_err(|m| err(format!("arm \"{}\": {m}", arm.name)))?;
                if old.as_ref() == Some(val) {
                    return Err(err(format!("arm \"{}\": override \"{k}\" = {} changes nothing (the baseline has the same value)", arm.name, show(val))));
                }
            }
            let parse = |v: &Value| TrainConfig::from_toml_str(&toml::to_string(v).expect("a table serialises"), "").map_err(|e| strip_config_prefix(&e.to_string()));
            let cfg = match parse(&v) {
                Ok(c) => c,
                Err(m) => {
                    // name the override that does not fit: apply them one at a time
                    let culprit = arm.overrides.iter().find(|(k, val)| {
                        let mut one = resolved.clone();
                        set(&mut one, k, val.clone()).is_ok() && parse(&one).is_err()
                    });
                    return Err(err(match culprit {
                        // a key the resolved config does not have: name it by its full path
                        Some((k, _)) if m.starts_with("unknown key") && lookup(&resolved, k).is_none() => format!("arm \"{}\": {}", arm.name, unknown_path(&resolved, k)),
                        // the message names the key already when it starts with it
                        Some((k, val)) => format!("arm \"{}\": override \"{k}\" = {}: {}", arm.name, show(val), m.strip_prefix(&format!("{k}: ")).unwrap_or(&m)),
                        None => format!("arm \"{}\": {m}", arm.name),
                    }));
                }
            };
            cfg.validate().map_err(|e| err(format!("arm \"{}\": {}", arm.name, strip_config_prefix(&e.to_string()))))?;
            configs.push(cfg);
        }
        let mut jobs = Vec::new();
        for (arm, cfg) in arms.iter().zip(&configs) {
            for &seed in &file.seeds {
                let seed = seed + arm.seed_offset;
                let mut c = cfg.clone();
                c.seed = seed;
                c.name = format!("{}/{}", file.name, arm.name);
                let id = if file.seeds.len() > 1 { format!("{}-s{seed}", slug(&arm.name)) } else { slug(&arm.name) };
                jobs.push(Job { arm: arm.name.clone(), baseline: arm.baseline.clone(), seed, id, config: c });
            }
        }
        Ok(Self { name: file.name, description: file.description, world_size: file.world_size, priority: file.priority, arms, jobs })
    }
}

/// "invalid config X: message (at byte N)" -> "message" (the sweep error names the place
/// itself; byte offsets into a generated config would mean nothing to the user).
fn strip_config_prefix(s: &str) -> String {
    let s = s.strip_prefix("invalid config: ").unwrap_or(s);
    let s = match s.strip_prefix("invalid config ") {
        Some(rest) => rest.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or_else(|| rest.to_string()),
        None => s.to_string(),
    };
    match s.rfind(" (at byte ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sweep files: mutated examples and corpus files give a sweep or an error, never a
    /// panic (`ABLATE_FUZZ_CASES` inputs; the count is printed).
    #[test]
    fn sweep_files_parse_or_are_refused() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut seeds: Vec<String> = ["quick.toml", "prx-part2.toml", "curriculum.toml", "schedule.toml"].iter().map(|f| std::fs::read_to_string(root.join("../examples").join(f)).unwrap()).collect();
        for f in ["seed-grid-axis.toml", "override-wrong-type.toml", "aa-controls-share-seeds.toml"] {
            seeds.push(std::fs::read_to_string(root.join("tests/sweeps/bad").join(f)).unwrap());
        }
        ablate_proto::fuzz::run("sweep file", ablate_proto::fuzz::text_mutations_of(seeds), |text| {
            if let Ok(s) = Sweep::parse(&text, "fuzz.toml") {
                if s.jobs.is_empty() {
                    return Err("a sweep with no jobs was accepted".into());
                }
            }
            Ok(())
        });
    }

    /// Every file in cli/tests/sweeps/bad/ starts with `# expect: <the exact message>`.
    #[test]
    fn bad_sweep_files_get_the_exact_message() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sweeps/bad");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let want = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| panic!("{} lacks its `# expect:` line", path.display()));
            let got = Sweep::parse(&text, "x.toml").err().unwrap_or_else(|| panic!("{} was accepted", path.display()));
            assert_eq!(got.to_string(), format!("x.toml: {want}"), "{}", path.display());
            n += 1;
        }
        assert!(n >= 10, "the corpus has {n} files");
    }

    #[test]
    fn the_examples_expand_into_resolved_jobs() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let s = Sweep::load(&root.join("quick.toml")).unwrap();
        let names: Vec<&str> = s.jobs.iter().map(|j| j.id.as_str()).collect();
        assert_eq!(names, ["baseline", "short-captions", "repa", "muon"]);
        let base = &s.jobs[0].config;
        assert_eq!((base.train.steps, base.model.hidden, base.eval.every), (400, Some(128), 200));
        let short = &s.jobs[1].config;
        assert_eq!(short.data.phases[0].captions, ablate_trainer::data::CaptionMode::Short);
        // an arm differs from the baseline in its overrides (and its name) only
        let (mut a, mut b) = (base.clone(), short.clone());
        a.name.clear();
        b.name.clear();
        b.data.phases[0].captions = a.data.phases[0].captions;
        assert_eq!(a, b);
    }

    #[test]
    fn every_example_sweep_is_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for name in ["quick.toml", "prx-part2.toml", "curriculum.toml", "calibration.toml"] {
            let s = Sweep::load(&root.join(name)).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.jobs.len() >= 4, "{name}");
        }
        let prx = Sweep::load(&root.join("prx-part2.toml")).unwrap();
        assert_eq!(prx.arms.len(), 16);
        let tread = &prx.jobs.iter().find(|j| j.arm == "tokens-144-tread").unwrap().config;
        assert_eq!(prx.jobs.len(), 48, "16 arms x 3 seeds");
        assert_eq!((tread.latent.image_size, tread.routing.kind), (48, ablate_trainer::routing::RoutingKind::Tread));
    }

    #[test]
    fn a_a_controls_run_the_baseline_under_other_seeds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let cal = Sweep::load(&root.join("calibration.toml")).unwrap();
        let quick = Sweep::load(&root.join("quick.toml")).unwrap();
        let strip = |c: &TrainConfig| TrainConfig { name: String::new(), seed: 0, ..c.clone() };
        assert_eq!(strip(&cal.jobs[0].config), strip(&quick.jobs[0].config), "calibration.toml's baseline is quick.toml's");
        let aa: Vec<&Arm> = cal.arms.iter().filter(|a| a.seed_offset > 0).collect();
        assert_eq!(aa.len() * 3, 51, "17 controls x 3 metrics");
        for a in aa {
            let runs: Vec<&Job> = cal.jobs.iter().filter(|j| j.arm == a.name).collect();
            assert_eq!(runs.iter().map(|j| j.config.seed).collect::<Vec<_>>(), [0, 1, 2].map(|s| s + a.seed_offset));
            assert!(runs.iter().all(|j| strip(&j.config) == strip(&cal.jobs[0].config)), "{}: same config", a.name);
            assert_eq!(runs[0].id, format!("{}-s{}", a.name, a.seed_offset));
        }
    }

    #[test]
    fn grids_and_seeds_multiply() {
        let text = r#"
name = "g"
seeds = [1, 2]
[baseline]
train.steps = 10
[grid]
"optim.lr" = [3e-4, 1e-3]
"train.batch_size" = [4, 8]
"#;
        let s = Sweep::parse(text, "g.toml").unwrap();
        assert_eq!(s.arms.len(), 5);
        assert_eq!(s.jobs.len(), 10);
        assert_eq!(s.jobs[2].id, "grid-optim-lr-0-0003-train-batch_size-4-s1");
        assert_eq!(s.jobs[2].config.optim.lr, 3e-4);
        assert_eq!(s.jobs[2].config.seed, 1);
        assert_eq!(s.jobs[3].config.seed, 2);
    }
}
