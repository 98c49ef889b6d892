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
//! [grid]                 # optional: one arm per point of the cartesian product
//! "optim.lr" = [3e-4, 1e-3]
//! ```

use ablate_trainer::config::levenshtein;
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
    baseline: toml::Table,
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
}

/// One arm of the expanded sweep.
#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub description: String,
    /// (dotted path, value) as written.
    pub overrides: Vec<(String, Value)>,
}

/// One job: an arm at one seed, with its fully resolved config.
#[derive(Debug, Clone)]
pub struct Job {
    pub arm: String,
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

fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates.into_iter().map(|c| (levenshtein(word, c), c)).filter(|(d, c)| *d <= 2.max(c.len() / 3)).min().map(|(_, c)| c)
}

/// Rewrites serde's unknown-field message into ours, with a suggestion.
fn describe(msg: &str) -> String {
    let msg = msg.trim();
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return match closest(field, candidates.iter().copied()) {
            Some(best) => format!("unknown key \"{field}\" (did you mean \"{best}\"?)"),
            None => format!("unknown key \"{field}\" (expected one of: {})", candidates.join(", ")),
        };
    }
    msg.to_string()
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
        // the baseline, resolved with every default, is what arms override
        let base_text = toml::to_string(&file.baseline).expect("a table serialises");
        let mut baseline = TrainConfig::from_toml_str(&base_text, "[baseline]").map_err(|e| err(format!("[baseline]: {}", strip_config_prefix(&e.to_string()))))?;
        if let Some(s) = file.steps {
            baseline.train.steps = s;
        }
        baseline.validate().map_err(|e| err(format!("[baseline]: {}", strip_config_prefix(&e.to_string()))))?;
        let resolved: Value = toml::from_str(&baseline.to_toml()).expect("a config round-trips");

        let mut arms = vec![Arm { name: "baseline".into(), description: "the baseline".into(), overrides: vec![] }];
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
            if overrides.is_empty() {
                return Err(err(format!("arm \"{name}\" has no overrides: it would repeat the baseline")));
            }
            arms.push(Arm { name: name.into(), description: a.description.clone(), overrides });
        }
        // grid: the cartesian product of the axes, one arm per point
        if !file.grid.is_empty() {
            let mut points: Vec<Vec<(String, Value)>> = vec![vec![]];
            for (key, values) in &file.grid {
                if values.is_empty() {
                    return Err(err(format!("grid axis \"{key}\" has no values")));
                }
                points = points.into_iter().flat_map(|p| values.iter().map(move |v| [p.clone(), vec![(key.clone(), v.clone())]].concat())).collect();
            }
            for p in points {
                let name = p.iter().map(|(k, v)| format!("{k}={}", show(v).trim_matches('"'))).collect::<Vec<_>>().join(",");
                arms.push(Arm { name: format!("grid:{name}"), description: String::new(), overrides: p });
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
            let text = toml::to_string(&v).expect("a table serialises");
            let cfg = TrainConfig::from_toml_str(&text, "").map_err(|e| err(format!("arm \"{}\": {}", arm.name, strip_config_prefix(&e.to_string()))))?;
            cfg.validate().map_err(|e| err(format!("arm \"{}\": {}", arm.name, strip_config_prefix(&e.to_string()))))?;
            configs.push(cfg);
        }
        let mut jobs = Vec::new();
        for (arm, cfg) in arms.iter().zip(&configs) {
            for &seed in &file.seeds {
                let mut c = cfg.clone();
                c.seed = seed;
                c.name = format!("{}/{}", file.name, arm.name);
                let id = if file.seeds.len() > 1 { format!("{}-s{seed}", slug(&arm.name)) } else { slug(&arm.name) };
                jobs.push(Job { arm: arm.name.clone(), seed, id, config: c });
            }
        }
        Ok(Self { name: file.name, description: file.description, world_size: file.world_size, priority: file.priority, arms, jobs })
    }
}

/// "invalid config X: message" -> "message" (the sweep error names the place itself).
fn strip_config_prefix(s: &str) -> String {
    let s = s.strip_prefix("invalid config: ").unwrap_or(s);
    match s.strip_prefix("invalid config ") {
        Some(rest) => rest.split_once(": ").map(|(_, m)| m.to_string()).unwrap_or_else(|| rest.to_string()),
        None => s.to_string(),
    }
}
