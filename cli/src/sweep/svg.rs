//! Small SVG charts for the sweep report: line charts (linear or log y) and horizontal bar
//! charts. Plain strings, no dependencies; the browser renders the text with its own fonts.

/// Arm colours, in arm order (the baseline first, in dark grey).
pub const PALETTE: [&str; 10] = ["#3b3b3b", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Draw a dot at every point (few points: evaluations).
    pub markers: bool,
}

pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_y: bool,
    pub series: Vec<Series>,
}

const W: f64 = 560.0;
const H: f64 = 340.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

/// About `n` round tick values covering [lo, hi].
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(hi > lo) {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as many decimals as the tick spacing `step` needs.
pub fn label_step(v: f64, step: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if a >= 1e6 || a < 1e-4 {
        return format!("{v:.1e}");
    }
    let need = if step > 0.0 { (-step.log10().floor()).max(0.0) as usize } else { 0 };
    let digits = if a >= 100.0 && need == 0 { 0 } else { need.max(if a < 1.0 { 3 } else { 0 }) };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn frame(title: &str, body: &str) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="system-ui, sans-serif" font-size="11"><rect width="{W}" height="{H}" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="13" font-weight="600">{}</text>{body}</svg>"#,
        W / 2.0,
        escape(title)
    )
}

impl LineChart {
    pub fn svg(&self) -> String {
        let tf = |y: f64| if self.log_y { y.log10() } else { y };
        let pts: Vec<(f64, f64)> = self.series.iter().flat_map(|s| s.points.iter().copied()).filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0)).collect();
        if pts.is_empty() {
            return frame(&self.title, &format!(r##"<text x="{}" y="{}" text-anchor="middle" fill="#777">no data</text>"##, W / 2.0, H / 2.0));
        }
        let (mut x0, mut x1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (x, _)| (a.min(*x), b.max(*x)));
        let (mut y0, mut y1) = pts.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), (_, y)| (a.min(tf(*y)), b.max(tf(*y))));
        if x1 <= x0 {
            x0 -= 1.0;
            x1 += 1.0;
        }
        if y1 <= y0 {
            let pad = if y0 == 0.0 { 1.0 } else { y0.abs() * 0.1 };
            y0 -= pad;
            y1 += pad;
        }
        let pad = (y1 - y0) * 0.05;
        y0 -= pad;
        y1 += pad;
        if !self.log_y && y0 < 0.0 && pts.iter().all(|(_, y)| *y >= 0.0) {
            y0 = 0.0;
        }
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + (1.0 - (tf(y) - y0) / (y1 - y0)) * ph;
        let mut b = String::new();
        // grid and ticks
        let yt: Vec<f64> = if self.log_y {
            let (lo, hi) = (y0.floor() as i32, y1.ceil() as i32);
            let mut v = Vec::new();
            for e in lo..=hi {
                for m in [1.0, 2.0, 5.0] {
                    let t = m * 10f64.powi(e);
                    if t.log10() >= y0 && t.log10() <= y1 {
                        v.push(t);
                    }
                }
            }
            v
        } else {
            ticks(y0, y1, 5)
        };
        let spacing = |t: &[f64]| if t.len() > 1 { t[1] - t[0] } else { 0.0 };
        let ys = if self.log_y { 0.0 } else { spacing(&yt) };
        for t in &yt {
            let y = sy(*t);
            b.push_str(&format!(r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##, W - RIGHT, LEFT - 6.0, y + 4.0, label_step(*t, ys)));
        }
        let xt = ticks(x0, x1, 6);
        let xs = spacing(&xt);
        for t in xt {
            let x = sx(t);
            b.push_str(&format!(r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#f0f0f0"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##, H - BOTTOM, H - BOTTOM + 15.0, label_step(t, xs)));
        }
        b.push_str(&format!(r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##));
        b.push_str(&format!(r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, LEFT + pw / 2.0, H - 10.0, escape(&self.x_label)));
        b.push_str(&format!(r#"<text transform="translate(14,{}) rotate(-90)" text-anchor="middle">{}</text>"#, TOP + ph / 2.0, escape(&self.y_label)));
        for s in &self.series {
            let p: Vec<String> = s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0)).map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            if p.len() > 1 {
                b.push_str(&format!(r#"<polyline fill="none" stroke="{}" stroke-width="1.6" points="{}"/>"#, s.color, p.join(" ")));
            }
            if s.markers || p.len() == 1 {
                for q in &p {
                    let (x, y) = q.split_once(',').expect("x,y");
                    b.push_str(&format!(r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#, s.color));
                }
            }
        }
        // legend, top right inside the plot
        for (i, s) in self.series.iter().enumerate() {
            let y = TOP + 12.0 + i as f64 * 14.0;
            let x = W - RIGHT - 150.0;
            b.push_str(&format!(r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#, x + 16.0, s.color, x + 21.0, y + 4.0, escape(&s.name)));
        }
        frame(&self.title, &b)
    }
}

/// One horizontal bar per arm, with its value printed; `reference` draws a dashed line
/// (the baseline's value).
pub fn bars(title: &str, unit: &str, items: &[(String, &'static str, f64)], reference: Option<f64>) -> String {
    let h = TOP + 10.0 + items.len() as f64 * 26.0 + 30.0;
    let max = items.iter().map(|(_, _, v)| *v).filter(|v| v.is_finite()).fold(0.0, f64::max).max(reference.unwrap_or(0.0));
    if items.is_empty() || max <= 0.0 {
        return frame(title, r##"<text x="20" y="60" fill="#777">no data</text>"##);
    }
    let (left, pw) = (150.0, W - 150.0 - 120.0);
    let sx = |v: f64| left + v / max * pw;
    let mut b = String::new();
    for (i, (name, color, v)) in items.iter().enumerate() {
        let y = TOP + 10.0 + i as f64 * 26.0;
        b.push_str(&format!(r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, left - 8.0, y + 13.0, escape(name)));
        if v.is_finite() {
            b.push_str(&format!(r#"<rect x="{left}" y="{y}" width="{:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{}">{} {}</text>"#, sx(*v) - left, sx(*v) + 5.0, y + 13.0, format!("{v:.1}"), escape(unit)));
        }
    }
    if let Some(r) = reference {
        let x = sx(r);
        b.push_str(&format!(r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#555" stroke-dasharray="4 3"/>"##, TOP + 4.0, h - 26.0));
    }
    let svg = frame(title, &b);
    svg.replace(&format!(r#"viewBox="0 0 {W} {H}" width="{W}" height="{H}""#), &format!(r#"viewBox="0 0 {W} {h}" width="{W}" height="{h}""#)).replacen(&format!(r#"<rect width="{W}" height="{H}""#), &format!(r#"<rect width="{W}" height="{h}""#), 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]);
        assert_eq!(ticks(13.0, 87.0, 4), vec![20.0, 40.0, 60.0, 80.0]);
        assert_eq!(label_step(0.6000000000000001, 0.2), "0.6");
        assert_eq!(label_step(2500.0, 500.0), "2500");
        // ticks half a unit apart keep their decimal
        assert_eq!(label_step(299.5, 0.5), "299.5");
        assert_eq!(label_step(300.0, 0.5), "300");
        assert_eq!(label_step(0.05, 0.01), "0.05");
    }

    #[test]
    fn charts_are_well_formed_svg_with_escaped_names() {
        let c = LineChart {
            title: "loss <smoothed>".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            log_y: true,
            series: vec![Series { name: "a&b".into(), color: color(0), points: vec![(0.0, 1.0), (10.0, 0.1)], markers: false }],
        };
        let s = c.svg();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert!(s.contains("loss &lt;smoothed&gt;") && s.contains("a&amp;b") && s.contains("<polyline"));
        let b = bars("throughput", "samples/s", &[("baseline".into(), color(0), 17.7), ("tread".into(), color(1), 24.1)], Some(17.7));
        assert!(b.contains("24.1 samples/s") && b.contains("stroke-dasharray"));
        // nothing to draw says so instead of failing
        assert!(LineChart { title: "t".into(), x_label: "x".into(), y_label: "y".into(), log_y: false, series: vec![] }.svg().contains("no data"));
    }
}
