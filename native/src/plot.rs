//! A loss-curve plot as a self-contained SVG: axes with ticks and labels, the training
//! loss per step, held-out loss as points, and a legend. SVG rather than PNG so it needs no
//! image crate and stays sharp at any size.

use std::fmt::Write;

use tinytune::axis::ticks;

pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
    /// Draw as a line (true) or as dots (false).
    pub line: bool,
}

fn fmt_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 { format!("{}", v as i64) } else { format!("{v:.2}") }
}

pub fn svg(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 55.0);
    let all = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| top + (1.0 - (y - y0) / (y1 - y0)) * (h - top - bottom);

    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, w / 2.0, escape(title));
    for t in ticks(x0, x1, 8) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - bottom + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1, 6) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - right,
            left - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##, w - left - right, h - top - bottom);
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, (left + w - right) / 2.0, h - 12.0, escape(x_label));
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<(f64, f64)> = ser.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        if ser.line {
            let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#, ser.color, path.join(" "));
        } else {
            for &(x, y) in &pts {
                let _ = writeln!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#, px(x), py(y), ser.color);
            }
        }
        let ly = top + 14.0 + 18.0 * i as f64;
        let lx = w - right - 170.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            ly - 4.0,
            ser.color,
            lx + 20.0,
            ly + 1.0,
            escape(ser.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_both_series_and_labels() {
        let s = svg(
            "t",
            "step",
            "loss",
            &[
                Series { label: "train", color: "#1f77b4", points: vec![(1.0, 3.0), (2.0, 2.0)], line: true },
                Series { label: "held-out", color: "#d62728", points: vec![(2.0, 2.5)], line: false },
            ],
        );
        assert!(s.starts_with("<svg") && s.contains("<polyline") && s.contains("<circle") && s.contains(">held-out<"));
    }
}
