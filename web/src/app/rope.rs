//! The `rope` widget: how rotary positions turn, and what each way of stretching them does.
//! The first chart is drawn on the page from core's own frequencies (every change redraws
//! it); the second is micro-llama's held-out loss at each position of windows longer than
//! it was trained on, under each scaling, measured in the worker.

use leptos::prelude::*;
use tinytune::train::positions::{RotationCurve, buckets, rotation_curves};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::rope::{HEADS, RopeParams, RopeResult};
use crate::widgets::Widget;

fn params(w: &Widget) -> RopeParams {
    match w {
        Widget::Rope(p) => p.clone(),
        _ => RopeParams::default(),
    }
}

/// A horizontal dashed line across `pairs` dimension pairs at `y`.
fn level(label: String, color: &'static str, pairs: usize, y: f64) -> Series {
    Series { label, color, points: vec![(0.0, y), (pairs.saturating_sub(1) as f64, y)], dashed: true }
}

fn frequency_series(curves: &[RotationCurve], original: usize, factor: usize) -> Vec<Series> {
    let pairs = curves.first().map(|c| c.wavelengths.len()).unwrap_or(0);
    let mut out: Vec<Series> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| Series {
            label: c.method.clone(),
            color: COLORS[i % COLORS.len()],
            points: c.wavelengths.iter().enumerate().map(|(j, w)| (j as f64, w.log10())).collect(),
            dashed: false,
        })
        .collect();
    out.push(level(format!("trained context ({original} tokens)"), COLORS[6], pairs, (original as f64).log10()));
    out.push(level(format!("{factor}× the context"), COLORS[5], pairs, ((original * factor) as f64).log10()));
    out
}

#[component]
pub fn RopeWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<RopeResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let curves = Memo::new(move |_| {
        let p = p.get();
        let (theta, head_dim, original) = p.head_shape();
        (rotation_curves(theta, head_dim, original, p.factor as f64), theta, head_dim, original, p.factor)
    });
    let heads: Vec<(&'static str, &'static str)> = HEADS.iter().map(|h| (h.0, h.0)).collect();
    let factors: Vec<(&'static str, &'static str)> = ["2", "3", "4", "6", "8"].iter().map(|f| (*f, *f)).collect();
    view! {
        <div class="widget rope" data-widget="rope">
            <div class="controls">
                {choice("stretch to (× the context)", "factor", factors, move || p.get().factor.to_string(), set)}
                {choice("rotations of", "head", heads, move || p.get().head.clone(), set)}
                {field("held-out windows", "windows", move || p.get().windows.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            {move || {
                let (c, theta, head_dim, original, factor) = curves.get();
                let series = frequency_series(&c, original, factor);
                let plain = &c[0].wavelengths;
                let unseen = plain.iter().filter(|w| **w > original as f64).count();
                let yarn = c.iter().find(|c| c.method == "yarn").map(|c| c.attention_factor).unwrap_or(1.0);
                view! {
                    <LineChart series=Signal::derive(move || series.clone()) x_label="dimension pair i (fast → slow)" y_label="log10 wavelength (tokens per turn)" />
                    <p class="status" data-testid="rotations">
                        {format!(
                            "A head of {head_dim} dimensions rotates {} pairs, pair i by θ^(−2i/{head_dim}) radians per token with θ = {theta}. {unseen} of them turn less than once within the {original} trained positions, so their angles past position {original} were never seen in training: those are the pairs every method slows down. Linear interpolation slows every pair {factor}×; NTK raises θ, which leaves the fast pairs alone and slows the slowest most; YaRN and Llama 3 keep the fast pairs, slow the slow ones exactly {factor}× and blend between. YaRN also multiplies cos and sin by {yarn:.4}.",
                            head_dim / 2
                        )}
                    </p>
                }
            }}
            <div class="buttons">
                <button data-testid="rope" on:click=run disabled=move || busy.get()>
                    {move || if busy.get() { "Measuring micro-llama past its context…".to_string() } else { format!("Measure loss by position to {} tokens", p.get().length()) }}
                </button>
            </div>
            <p class="command"><code>{move || p.get().command()}</code></p>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(result_view(r).into_any()),
            }}
        </div>
    }
}

fn result_view(r: RopeResult) -> impl IntoView {
    let n = r.context;
    let mut series: Vec<Series> = r
        .rows
        .iter()
        .enumerate()
        .map(|(i, (name, losses))| Series {
            label: name.clone(),
            color: COLORS[i % COLORS.len()],
            points: buckets(losses, 16).iter().map(|(start, l)| (*start as f64 + 8.0, *l)).collect(),
            dashed: false,
        })
        .collect();
    let (lo, hi) = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if lo.is_finite() {
        series.push(Series {
            label: format!("end of the trained context ({n})"),
            color: COLORS[6],
            points: vec![(n as f64, lo), (n as f64, hi)],
            dashed: true,
        });
    }
    let spans: Vec<String> = (0..r.length.div_ceil(n)).map(|i| format!("{}–{}", i * n, ((i + 1) * n).min(r.length) - 1)).collect();
    view! {
        <LineChart series=Signal::derive(move || series.clone()) x_label="position in the window" y_label="held-out loss (nats/token, per 16 positions)" />
        <table class="results" data-testid="rope-table">
            <caption>{format!("micro-llama (trained at {n} tokens): held-out loss by position, mean over each span, {} windows of {} tokens", r.windows, r.length)}</caption>
            <thead><tr><th>"scaling"</th>{spans.into_iter().map(|s| view! { <th>{s}</th> }).collect_view()}</tr></thead>
            <tbody>
                {r.rows.iter().map(|(name, losses)| {
                    let cells = buckets(losses, n);
                    view! {
                        <tr data-method=name.clone()>
                            <td>{name.clone()}</td>
                            {cells.into_iter().map(|(_, l)| view! { <td class="num">{format!("{l:.3}")}</td> }).collect_view()}
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

impl super::WidgetView for crate::rope::RopeParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <RopeWidget state=state /> }.into_any()
    }
}
