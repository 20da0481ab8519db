//! A line chart as SVG: axes with ticks and labels, one line per series, a legend. Small
//! enough to read in one go; the scales are plain linear maps.

use leptos::prelude::*;
use tinytune::axis::ticks;

/// One line on the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// Colours for runs, in order; chosen to stay distinct for colour-blind readers.
pub const COLORS: [&str; 8] = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];

const W: f64 = 560.0;
const H: f64 = 260.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 40.0;
/// More series than this put the legend below the plot.
const LEGEND_INSIDE: usize = 5;

/// The chart's height with its legend: below the plot, two entries a row, when it has
/// more than [`LEGEND_INSIDE`] series.
fn height(series: usize) -> f64 {
    if series > LEGEND_INSIDE { H + 8.0 + 16.0 * series.div_ceil(2) as f64 } else { H }
}

/// An SVG coordinate as text.
fn n(v: f64) -> String {
    format!("{v:.1}")
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 10_000.0) {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

/// A legend entry that fits the space right of the plot: long labels keep their end, where
/// what sets one run apart from the last is written (the full label is the entry's title).
fn legend_text(label: &str) -> String {
    const MAX: usize = 36;
    let n = label.chars().count();
    if n <= MAX { label.to_string() } else { format!("…{}", label.chars().skip(n - (MAX - 1)).collect::<String>()) }
}

#[component]
pub fn LineChart(#[prop(into)] series: Signal<Vec<Series>>, x_label: &'static str, y_label: &'static str) -> impl IntoView {
    let body = move || {
        let series = series.get();
        let pts = series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            return view! { <text x={n(W / 2.0)} y={n(H / 2.0)} text-anchor="middle" class="chart-empty">"Press Train: the loss appears here, one point per step."</text> }.into_any();
        }
        if x1 == x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        // Losses and rates start the axis at zero at most; negative values (logarithms) keep theirs.
        let (y0, y1) = (if y0 >= 0.0 { (y0 - pad).max(0.0) } else { y0 - pad }, y1 + pad);
        let sx = move |x: f64| LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT);
        let sy = move |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
        let xt = ticks(x0, x1, 5);
        let yt = ticks(y0, y1, 5);
        let lines = series
            .iter()
            .filter(|s| !s.points.is_empty())
            .map(|s| {
                let d: String =
                    s.points.iter().enumerate().map(|(i, &(x, y))| format!("{}{:.1},{:.1}", if i == 0 { "M" } else { " L" }, sx(x), sy(y))).collect();
                let dash = if s.dashed { "5 4" } else { "none" };
                let dots = if s.dashed {
                    s.points.iter().map(|&(x, y)| view! { <circle cx={n(sx(x))} cy={n(sy(y))} r="3" fill={s.color} /> }).collect::<Vec<_>>()
                } else {
                    Vec::new()
                };
                view! { <g><path d={d} fill="none" stroke={s.color} stroke-width="1.8" stroke-dasharray={dash} />{dots}</g> }
            })
            .collect::<Vec<_>>();
        // A few entries sit in the plot's top right; more go below the plot in two columns,
        // where they cannot cover the data.
        let below = series.len() > LEGEND_INSIDE;
        let legend = series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (x, y) = if below { (LEFT + 270.0 * (i % 2) as f64, H + 10.0 + 16.0 * (i / 2) as f64) } else { (W - 250.0, TOP + 6.0 + 16.0 * i as f64) };
                let dash = if s.dashed { "5 4" } else { "none" };
                let dot = (s.dashed && s.points.len() == 1).then(|| view! { <circle cx={n(x + 12.0)} cy={n(y)} r="3" fill={s.color} /> });
                view! {
                    <g>
                        <title>{s.label.clone()}</title>
                        <line x1={n(x)} x2={n(x + 24.0)} y1={n(y)} y2={n(y)} stroke={s.color} stroke-width="2" stroke-dasharray={dash} />
                        {dot}
                        <text x={n(x + 30.0)} y={n(y + 4.0)} class="legend">{legend_text(&s.label)}</text>
                    </g>
                }
            })
            .collect::<Vec<_>>();
        view! {
            <g>
                <line x1={n(LEFT)} x2={n(LEFT)} y1={n(TOP)} y2={n(H - BOTTOM)} class="axis" />
                <line x1={n(LEFT)} x2={n(W - RIGHT)} y1={n(H - BOTTOM)} y2={n(H - BOTTOM)} class="axis" />
                {xt.into_iter().map(|t| view! {
                    <g>
                        <line x1={n(sx(t))} x2={n(sx(t))} y1={n(H - BOTTOM)} y2={n(H - BOTTOM + 4.0)} class="axis" />
                        <text x={n(sx(t))} y={n(H - BOTTOM + 16.0)} text-anchor="middle" class="tick">{fmt_tick(t)}</text>
                    </g>
                }).collect::<Vec<_>>()}
                {yt.into_iter().map(|t| view! {
                    <g>
                        <line x1={n(LEFT - 4.0)} x2={n(W - RIGHT)} y1={n(sy(t))} y2={n(sy(t))} class="grid" />
                        <text x={n(LEFT - 7.0)} y={n(sy(t) + 4.0)} text-anchor="end" class="tick">{fmt_tick(t)}</text>
                    </g>
                }).collect::<Vec<_>>()}
                <text x={n((LEFT + W - RIGHT) / 2.0)} y={n(H - 6.0)} text-anchor="middle" class="axis-label">{x_label}</text>
                <text x="14" y={n((TOP + H - BOTTOM) / 2.0)} text-anchor="middle" class="axis-label" transform={format!("rotate(-90 14 {})", (TOP + H - BOTTOM) / 2.0)}>{y_label}</text>
                {lines}
                {legend}
            </g>
        }
        .into_any()
    };
    let view_box = move || format!("0 0 {W} {}", height(series.with(Vec::len)));
    view! { <svg class="chart" data-testid="chart" viewBox=view_box role="img" aria-label={y_label}>{body}</svg> }
}
