//! `ablate report <sweep> --out DIR`: one self-contained `report.html` (no server, no network:
//! charts are inline SVG, sample grids inline PNG) with the results table, the iso-compute
//! tables, loss curves of all arms, evaluation metrics against step and training time,
//! throughput bars, a sample grid per arm (same prompts and seeds) and each arm's resolved
//! config diff against the baseline. `ablate run` writes it next to its results.

use ablate_proto::v1::{self, JobState};
use anyhow::Context;
use base64::Engine;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use super::data::SweepData;
use super::iso::{self, Axis};
use super::results::{self, Row};
use super::svg::{self, escape, LineChart};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// The --out folder of `ablate run`, or a sweep id (s000001) of --coordinator.
    sweep: PathBuf,
    /// Where report.html goes (default: the run folder; ./report-<sweep id> for a sweep id).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    coordinator: String,
}


pub fn report_cmd(a: ReportArgs) -> anyhow::Result<()> {
    let (data, default_out) = if a.sweep.exists() {
        (super::local::load(&a.sweep)?, a.sweep.clone())
    } else {
        let id = a.sweep.display().to_string();
        anyhow::ensure!(super::remote::is_sweep_id(&id), "{id} is neither a folder of `ablate run` nor a sweep id (s000001)");
        let r = super::remote::fetch(&id, &a.coordinator)?;
        let mut rows = results::rows(&r.arms, &r.jobs);
        results::add_intervals(&mut rows, &r.jobs, &|j| r.samples.get(&j.id).cloned());
        results::add_iso(&mut rows, &r.jobs, &r.series);
        let data = SweepData { name: id.clone(), description: String::new(), source: format!("sweep {id} on {}", a.coordinator), jobs: r.jobs, rows, series: r.series, samples: HashMap::new() };
        (data, PathBuf::from(format!("report-{id}")))
    };
    let path = write(&data, &a.out.unwrap_or(default_out))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Writes `<out>/report.html` (atomically) and returns its path.
pub fn write(d: &SweepData, out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("report.html");
    ablate_trainer::fsutil::write_durable(&path, html(d).as_bytes())?;
    Ok(path)
}

/// Lower is better for these; higher for accuracy and throughput.
fn lower_is_better(m: &str) -> bool {
    !matches!(m, "accuracy" | "samples_per_sec")
}

const STYLE: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:28px 32px 60px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#555;margin:0 0 6px}.proto{font-size:12px;color:#555;background:#f0f0f0;padding:8px 10px;border-radius:6px}
table{border-collapse:collapse;background:white;font-size:13px;margin:6px 0}
th,td{padding:6px 10px;border-bottom:1px solid #e5e5e5;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td:first-child,th:first-child{text-align:left}
.d{display:block;font-size:11px;color:#777}.better{color:#17803d;font-weight:600}.worse{color:#c0262d;font-weight:600}
.dot{display:inline-block;width:10px;height:10px;border-radius:5px;margin-right:6px}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.charts svg{border:1px solid #e3e3e3;border-radius:6px;max-width:100%;height:auto}
.grids{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:16px}
figure{margin:0;background:white;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
figure img{width:100%;image-rendering:pixelated}figcaption{font-weight:600;margin-top:4px}
.note{font-size:12px;color:#666}code{font-size:12px}details{margin:6px 0}
.diff td{font-family:ui-monospace,monospace;font-size:12px}
"#;

pub fn html(d: &SweepData) -> String {
    let arm_color: HashMap<&str, &'static str> = d.rows.iter().enumerate().map(|(i, r)| (r.arm.as_str(), svg::color(i))).collect();
    let dot = |arm: &str| format!(r#"<span class="dot" style="background:{}"></span>"#, arm_color.get(arm).copied().unwrap_or("#999"));
    let mut h = String::new();
    let _ = write!(h, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ablate report: {}</title><style>{STYLE}</style></head><body><main>", escape(&d.name));
    let _ = write!(h, "<h1>{}</h1>", escape(&d.name));
    if !d.description.is_empty() {
        let _ = write!(h, r#"<p class="sub">{}</p>"#, escape(&d.description));
    }
    let _ = write!(h, r#"<p class="sub">{} jobs, {} arms &middot; from {}</p>"#, d.jobs.len(), d.rows.len(), escape(&d.source));
    if let Some(p) = results::protocol(&d.jobs) {
        let _ = write!(h, r#"<p class="proto">{}</p>"#, escape(&p));
    }

    h.push_str("<h2>Results</h2>");
    h.push_str(&table(d, &dot));
    h.push_str(&iso_tables(d, &dot));

    h.push_str("<h2>Curves</h2><div class=\"charts\">");
    h.push_str(&loss_chart(d, &arm_color));
    for (m, title, scale) in [
        ("fd_scenes", "FD-scenes (lower is better)", 1.0),
        ("mmd", "MMD (lower is better)", 1.0),
        ("accuracy", "Accuracy % (compositional; higher is better)", 100.0),
        ("fid", "FID (lower is better)", 1.0),
        ("cmmd", "CMMD (CLIP; lower is better)", 1.0),
        ("dino_mmd", "DINO-MMD (DINOv2; lower is better)", 1.0),
    ] {
        if let Some(c) = eval_chart(d, &arm_color, m, title, scale, None) {
            h.push_str(&c);
        }
    }
    if let Some(c) = eval_chart(d, &arm_color, "fd_scenes", "FD-scenes against training time (iso-compute view)", 1.0, Some(Axis::TrainSeconds)) {
        h.push_str(&c);
    }
    let items: Vec<(String, &'static str, f64)> = d.rows.iter().filter_map(|r| Some((r.arm.clone(), arm_color[r.arm.as_str()], r.get("samples_per_sec")?.mean))).collect();
    let base_tp = d.rows.iter().find(|r| r.arm == "baseline").and_then(|r| r.get("samples_per_sec")).map(|s| s.mean);
    h.push_str(&svg::bars("Training throughput (dashed: baseline)", "samples/s", &items, base_tp));
    h.push_str("</div>");

    h.push_str(&samples(d));
    h.push_str(&config_diffs(d, &dot));
    let _ = write!(h, r#"<p class="note">Written by <code>ablate report</code> {}.</p></main></body></html>"#, env!("CARGO_PKG_VERSION"));
    h
}

fn delta_html(r: &Row, base: Option<&Row>, m: &str, scale: f64, digits: usize) -> String {
    let Some(b) = base.filter(|b| b.arm != r.arm) else { return String::new() };
    let Some((dv, pct)) = results::delta(r, b, m) else { return String::new() };
    let pct = if pct.is_finite() { format!(", {pct:+.0}%") } else { String::new() };
    let ci = r.ci95.iter().find(|(k, _)| *k == m).map(|(_, c)| *c);
    let class = match results::significant(r, m) {
        Some(true) if (dv < 0.0) == lower_is_better(m) => "better",
        Some(true) => "worse",
        _ => "",
    };
    let verdict = match results::significant(r, m) {
        Some(true) => "",
        Some(false) => " n.s.",
        None => " (one seed: images only)",
    };
    let ci_text = ci.map(|(lo, hi)| format!("<br>95% CI [{:+.*}, {:+.*}]{verdict}", digits, lo * scale, digits, hi * scale)).unwrap_or_default();
    format!(r#"<span class="d {class}">{:+.*}{pct}{ci_text}</span>"#, digits, dv * scale)
}

fn table(d: &SweepData, dot: &dyn Fn(&str) -> String) -> String {
    // the text table's columns, and the wall time
    let mut cols = results::columns(&d.rows);
    cols.push(("wall_seconds", "wall s", 1.0, 0));
    let mut h = String::from("<table><tr><th>arm</th><th>status</th><th>steps</th>");
    for (_, name, _, _) in &cols {
        let _ = write!(h, "<th>{name}</th>");
    }
    h.push_str("</tr>");
    for r in &d.rows {
        let base = results::base_of(&d.rows, r);
        let _ = write!(h, "<tr><td>{}{}</td><td>{}</td><td>{}</td>", dot(&r.arm), escape(&r.arm), escape(&r.status), r.steps);
        for &(m, _, scale, digits) in &cols {
            match r.get(m) {
                Some(s) => {
                    let spread = if s.n > 1 { format!(" &plusmn;{:.*}", digits, s.std * scale) } else { String::new() };
                    let dl = if m == "wall_seconds" { String::new() } else { delta_html(r, base, m, scale, digits) };
                    // the best evaluation along the run, when it was not the last
                    let best = r.best.iter().find(|(k, _)| *k == m).filter(|(_, b)| (b.mean - s.mean).abs() > 1e-12 * s.mean.abs().max(1.0)).map(|(_, b)| format!(r#"<span class="d">best {:.*}</span>"#, digits, b.mean * scale)).unwrap_or_default();
                    let _ = write!(h, "<td>{:.*}{spread}{dl}{best}</td>", digits, s.mean * scale);
                }
                None => h.push_str("<td>-</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    for note in results::protocol_notes(&d.rows) {
        h.push_str(&format!(r#"<p class="note">{}</p>"#, escape(&note)));
    }
    let any_ci = d.rows.iter().any(|r| !r.ci95.is_empty());
    h.push_str(&format!(
        r#"<p class="note">Below each number: the delta vs the arm's baseline (the sweep's, or the arm it names as its own). {}</p>"#,
        if any_ci {
            "Green / red: better / worse, with a 95% t-interval of the per-seed deltas (each seed paired with the baseline's) that excludes zero; n.s.: the interval contains zero. With one seed there is no verdict: the interval shown resamples the evaluation images of one run and does not cover training noise.".to_string()
        } else {
            "No confidence intervals: the per-image evaluation numbers are not at hand.".to_string()
        }
    ));
    h
}

fn iso_tables(d: &SweepData, dot: &dyn Fn(&str) -> String) -> String {
    let mut h = String::new();
    let groups = results::groups(&d.rows);
    for (lead, members) in &groups {
    let lead_row = &d.rows[*lead];
    let lead_iso = if lead_row.baseline.is_empty() { &lead_row.iso } else { &lead_row.iso_as_base };
    let group = if groups.len() > 1 { format!(", group of {}", lead_row.arm) } else { String::new() };
    for axis in Axis::ALL {
        let mut ats: Vec<(&Row, &iso::AtBudget)> = lead_iso.iter().find(|a| a.axis == axis).map(|a| (lead_row, a)).into_iter().collect();
        ats.extend(members.iter().filter_map(|&i| Some((&d.rows[i], d.rows[i].iso.iter().find(|a| a.axis == axis)?))));
        let Some((_, first)) = ats.first() else { continue };
        let title = match axis {
            Axis::TrainSeconds => format!("At equal training time: {:.0} s (the shortest run's{group})", first.budget),
            Axis::SamplesSeen => format!("At equal samples seen: {:.0} (the fewest of any run{group})", first.budget),
        };
        if super::results::at_every_final_step(&ats) {
            let _ = write!(h, r#"<h3>{title}</h3><p class="note">Every run is at its last step: the results table applies.</p>"#);
            continue;
        }
        let _ = write!(h, "<h3>{title}</h3><table><tr><th>arm</th><th>step</th><th>FD-scenes</th><th>MMD</th><th>accuracy %</th></tr>");
        let base = ats.first().filter(|(r, _)| r.arm == lead_row.arm).map(|(_, a)| *a);
        for (r, a) in &ats {
            let _ = write!(h, "<tr><td>{}{}</td><td>{}</td>", dot(&r.arm), escape(&r.arm), a.step.map(|s| format!("{:.0}", s.mean)).unwrap_or("-".into()));
            for (m, scale, digits) in [("fd_scenes", 1.0, 1), ("mmd", 1.0, 3), ("accuracy", 100.0, 1)] {
                match a.get(m) {
                    Some(s) => {
                        let dl = base.filter(|b| !std::ptr::eq(*b, *a)).and_then(|b| b.get(m)).map(|b| format!(r#"<span class="d">{:+.*}</span>"#, digits, (s.mean - b.mean) * scale)).unwrap_or_default();
                        let _ = write!(h, "<td>{:.*}{dl}</td>", digits, s.mean * scale);
                    }
                    None => h.push_str(r#"<td class="note">no evaluation yet</td>"#),
                }
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
    }
    }
    if !h.is_empty() {
        h.push_str(r#"<p class="note">Iso-compute: each run's evaluations placed by the training seconds (evaluation time excluded) and samples seen before them, linear between evaluations. Set <code>eval.every</code> for evaluations along the runs.</p>"#);
    }
    h
}

/// Exponential moving average, for a readable loss curve.
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut m = None;
    points
        .iter()
        .map(|(x, y)| {
            let v = match m {
                None => *y,
                Some(p) => alpha * p + (1.0 - alpha) * y,
            };
            m = Some(v);
            (*x, v)
        })
        .collect()
}

/// The first succeeded (else any) job of every arm.
fn first_jobs(d: &SweepData) -> Vec<(&Row, &v1::Job)> {
    d.rows
        .iter()
        .filter_map(|r| {
            let mine = || d.jobs.iter().filter(|(a, _)| *a == r.arm).map(|(_, j)| j);
            Some((r, mine().find(|j| j.state() == JobState::Succeeded).or_else(|| mine().next())?))
        })
        .collect()
}

fn loss_chart(d: &SweepData, colors: &HashMap<&str, &'static str>) -> String {
    let series: Vec<svg::Series> = first_jobs(d)
        .into_iter()
        .filter_map(|(r, j)| {
            let s = d.series.get(&j.id)?;
            // the flow-matching MSE (comparable across arms); `loss` for points without it
            let raw: Vec<(f64, f64)> = s.points.iter().map(|p| (p.step as f64 + 1.0, if p.mse > 0.0 { p.mse } else { p.loss })).collect();
            Some(svg::Series { name: r.arm.clone(), color: colors[r.arm.as_str()], points: smooth(&raw, 0.9), markers: false })
        })
        .collect();
    let log_y = series.iter().all(|s: &svg::Series| s.points.iter().all(|(_, y)| *y > 0.0));
    LineChart { title: "Flow-matching loss (MSE, EMA 0.9; first seed)".into(), x_label: "step".into(), y_label: "MSE".into(), log_y, series }.svg()
}

/// A metric from the evaluations along the runs, against step (or a compute axis); None when
/// no run has the metric.
fn eval_chart(d: &SweepData, colors: &HashMap<&str, &'static str>, m: &str, title: &str, scale: f64, axis: Option<Axis>) -> Option<String> {
    let series: Vec<svg::Series> = first_jobs(d)
        .into_iter()
        .filter_map(|(r, j)| {
            let placed = iso::place(d.series.get(&j.id)?);
            let points: Vec<(f64, f64)> = placed.iter().filter_map(|p| Some((axis.map(|a| p.at(a)).unwrap_or(p.step), p.value(m)? * scale))).collect();
            (!points.is_empty()).then(|| svg::Series { name: r.arm.clone(), color: colors[r.arm.as_str()], points, markers: true })
        })
        .collect();
    if series.is_empty() {
        return None;
    }
    let x_label = match axis {
        Some(Axis::TrainSeconds) => "training seconds (evaluation excluded)",
        Some(Axis::SamplesSeen) => "samples seen",
        None => "step",
    };
    Some(LineChart { title: title.into(), x_label: x_label.into(), y_label: title.split([' ', '(']).next().unwrap_or(title).trim_end_matches(" %").into(), log_y: false, series }.svg())
}

fn samples(d: &SweepData) -> String {
    let mut h = String::from("<h2>Samples</h2>");
    let with: Vec<(&Row, &(Vec<u8>, String))> = first_jobs(d).into_iter().filter_map(|(r, j)| Some((r, d.samples.get(&j.id)?))).collect();
    if with.is_empty() {
        h.push_str(r#"<p class="note">No sample grids at hand (a remote sweep keeps them with its workers; a run with <code>sample.count = 0</code> draws none).</p>"#);
        return h;
    }
    h.push_str(r#"<p class="note">Every arm's final weights, the same prompts, sampler and noise seeds.</p><div class="grids">"#);
    for (r, (png, _)) in &with {
        let b64 = base64::engine::general_purpose::STANDARD.encode(png);
        let _ = write!(h, r#"<figure><img alt="samples of {0}" src="data:image/png;base64,{b64}"><figcaption>{0}</figcaption></figure>"#, escape(&r.arm));
    }
    h.push_str("</div>");
    if let Some((_, (_, prompts))) = with.first() {
        let _ = write!(h, "<details><summary>Prompts (left to right, top to bottom)</summary><pre>{}</pre></details>", escape(prompts));
    }
    h
}

/// A TOML document as dotted keys -> values (arrays of tables by index).
fn flatten(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| flatten(&key(k), v, out)),
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => a.iter().enumerate().for_each(|(i, v)| flatten(&key(&i.to_string()), v, out)),
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Keys whose value differs between `base` and `arm` (TOML texts), `name` aside.
pub fn config_diff(base: &str, arm: &str) -> Vec<(String, String, String)> {
    let parse = |s: &str| {
        let mut m = BTreeMap::new();
        if let Ok(v) = s.parse::<toml::Value>() {
            flatten("", &v, &mut m);
        }
        m
    };
    let (b, a) = (parse(base), parse(arm));
    let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    keys.into_iter()
        .filter(|k| k.as_str() != "name" && b.get(*k) != a.get(*k))
        .map(|k| (k.clone(), b.get(k).cloned().unwrap_or("(unset)".into()), a.get(k).cloned().unwrap_or("(unset)".into())))
        .collect()
}

fn config_diffs(d: &SweepData, dot: &dyn Fn(&str) -> String) -> String {
    let mut h = String::from("<h2>What each arm changes</h2>");
    let jobs = first_jobs(d);
    let Some((_, base)) = jobs.iter().find(|(r, _)| r.arm == "baseline") else {
        h.push_str(r#"<p class="note">No baseline arm.</p>"#);
        return h;
    };
    h.push_str(r#"<table class="diff"><tr><th>arm</th><th>key</th><th>baseline</th><th>arm</th></tr>"#);
    for (r, j) in jobs.iter().filter(|(r, _)| r.arm != "baseline") {
        let diff = config_diff(&base.config_toml, &j.config_toml);
        if diff.is_empty() {
            let _ = write!(h, r#"<tr><td>{}{}</td><td colspan="3" class="note">same config as the baseline (another seed?)</td></tr>"#, dot(&r.arm), escape(&r.arm));
        }
        for (i, (k, b, a)) in diff.iter().enumerate() {
            let name = if i == 0 { format!("{}{}", dot(&r.arm), escape(&r.arm)) } else { String::new() };
            let _ = write!(h, "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td></tr>", escape(k), escape(b), escape(a));
        }
    }
    h.push_str("</table>");
    let _ = write!(h, "<details><summary>The baseline's resolved config</summary><pre>{}</pre></details>", escape(&base.config_toml));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_diff_names_changed_keys_only() {
        let base = "name = \"a\"\nseed = 0\n[optim]\nkind = \"adamw\"\nlr = 0.001\n[[data.phases]]\ncaptions = \"long\"\n";
        let arm = "name = \"b\"\nseed = 0\n[optim]\nkind = \"muon\"\nlr = 0.001\n[[data.phases]]\ncaptions = \"short\"\n";
        let d = config_diff(base, arm);
        assert_eq!(d, vec![("data.phases.0.captions".into(), "\"long\"".into(), "\"short\"".into()), ("optim.kind".into(), "\"adamw\"".into(), "\"muon\"".into())]);
        assert!(config_diff(base, base).is_empty());
    }

    #[test]
    fn smoothing_starts_at_the_first_value() {
        let s = smooth(&[(1.0, 1.0), (2.0, 0.0)], 0.9);
        assert_eq!(s, vec![(1.0, 1.0), (2.0, 0.9)]);
    }
}
