//! The loss-scaling widget: where the micro model's real gradients fall in FP16's (or BF16's)
//! range, unscaled and at a chosen loss scale, beside counts of the values that flushed to
//! zero, became subnormal or overflowed, measured against the same gradients in FP32.

use leptos::prelude::*;
use tinytune::train::Precision;
use tinytune::train::precision::{GradCensus, UnderflowReport};

use super::client;
use crate::precision::{LossScalingParams, LossScalingResult};
use crate::widgets::Widget;

fn params(w: &Widget) -> LossScalingParams {
    match w {
        Widget::LossScaling(p) => p.clone(),
        _ => LossScalingParams::default(),
    }
}

#[component]
pub fn LossScalingWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = super::widgets::setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<LossScalingResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    view! {
        <div class="widget loss-scaling" data-widget="loss-scaling">
            <div class="controls">
                {super::widgets::choice("compute type", "precision", vec![("fp16", "FP16"), ("bf16", "BF16")], move || p.get().precision, set)}
                {super::widgets::field("loss scale = 2^", "scale_log2", move || p.get().scale_log2.to_string(), set)}
                {super::widgets::field("batch", "batch", move || p.get().batch.to_string(), set)}
                {super::widgets::field("tokens per row", "seq", move || p.get().seq.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="loss-scaling" on:click=run disabled=move || busy.get()>{move || if busy.get() { "Computing gradients…" } else { "Compute micro's gradients" }}</button>
            </div>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(result_view(r).into_any()),
            }}
        </div>
    }
}

/// log₂ of a format's smallest subnormal, smallest normal and largest finite value.
fn edges(p: Precision) -> (f64, f64, f64) {
    let f = p.format();
    (f.min_subnormal().log2(), f.min_normal().log2(), f.max_value().log2())
}

fn chart(rep: &UnderflowReport, color: &'static str, title: String) -> impl IntoView + use<> {
    let c: &GradCensus = &rep.actual;
    let (w, h, left, bottom, top) = (560.0, 150.0, 8.0, 22.0, 16.0);
    let (lo, hi) = (c.lo as f64, (c.lo + c.bins.len() as i32) as f64);
    let x = move |v: f64| left + (v.clamp(lo, hi) - lo) / (hi - lo) * (w - 2.0 * left);
    let max = c.bins.iter().copied().max().unwrap_or(1).max(1) as f64;
    let y = move |n: u64| top + (h - bottom - top) * (1.0 - (n as f64 / max).sqrt());
    let bw = (w - 2.0 * left) / c.bins.len() as f64;
    let (sub, normal, maxv) = edges(rep.precision);
    let zone = |from: f64, to: f64, fill: &'static str, label: &'static str| {
        let (x0, x1) = (x(from), x(to));
        // Labels sit inside their zone: from the left edge, or ending at the right one.
        let (lx, anchor) = if x1 > w - 2.0 * left { (x1 - 2.0, "end") } else { (x0 + 2.0, "start") };
        (x1 > x0 + 0.5).then(|| {
            view! {
                <rect x=format!("{x0:.1}") y=format!("{top}") width=format!("{:.1}", x1 - x0) height=format!("{:.1}", h - bottom - top) fill=fill opacity="0.35"><title>{label}</title></rect>
                <text x=format!("{lx:.1}") y="12" class="label" text-anchor=anchor>{label}</text>
            }
        })
    };
    let bars = c
        .bins
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, &n)| {
            let e = c.lo + i as i32;
            view! { <rect x=format!("{:.1}", left + i as f64 * bw) y=format!("{:.1}", y(n)) width=format!("{:.1}", (bw - 1.0).max(0.5)) height=format!("{:.1}", h - bottom - y(n)) fill=color><title>{format!("{n} values in [2^{e}, 2^{})", e + 1)}</title></rect> }
        })
        .collect::<Vec<_>>();
    // Inner ticks only, so no label is cut off at the chart's edges.
    let ticks = (c.lo + 10..c.lo + c.bins.len() as i32)
        .step_by(10)
        .map(|e| {
            let xe = x(e as f64);
            view! { <text x=format!("{xe:.1}") y=format!("{:.1}", h - 6.0) class="label" text-anchor="middle">{format!("2^{e}")}</text> }
        })
        .collect::<Vec<_>>();
    view! {
        <p><b>{title}</b></p>
        <svg class="chart bars" viewBox=format!("0 0 {w} {h}") role="img" aria-label="gradient magnitudes against the format's range">
            {zone(lo, sub, "#d55e00", "flushes to 0")}
            {zone(sub, normal, "#e69f00", "subnormal")}
            {zone(maxv, hi, "#d55e00", "overflow")}
            {bars}
            {ticks}
        </svg>
    }
}

fn pct(n: u64, total: u64) -> String {
    format!("{:.2}%", 100.0 * n as f64 / total.max(1) as f64)
}

fn row(r: &UnderflowReport) -> impl IntoView + use<> {
    let err = r.relative_error.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "inf/NaN: step skipped".into());
    view! {
        <tr>
            <td class="num">{format!("2^{} = {}", r.scale.log2().round(), r.scale)}</td>
            <td class="num">{format!("{:.3}%", 100.0 * r.lost_fraction())}</td>
            <td class="num">{pct(r.actual.subnormal, r.actual.total)}</td>
            <td class="num">{r.actual.non_finite.to_string()}</td>
            <td class="num">{err}</td>
        </tr>
    }
}

fn result_view(r: LossScalingResult) -> impl IntoView {
    let name = r.unscaled.precision.name().to_uppercase();
    view! {
        {chart(&r.unscaled, "#0072b2", format!("Unscaled: |gradient| of all {} values as {name} computed them", r.unscaled.actual.total))}
        {chart(&r.scaled, "#009e73", format!("Loss × {}: the same gradients, scaled before the backward pass", r.scaled.scale))}
        <table data-testid="loss-scaling-table">
            <thead><tr><th>"loss scale"</th><th>"flushed to 0"</th><th>"subnormal"</th><th>"overflowed"</th><th>"error vs FP32"</th></tr></thead>
            <tbody>{row(&r.unscaled)}{row(&r.scaled)}</tbody>
        </table>
        <p class="status">{format!(
            "Loss of this batch: {:.4}. \"Flushed to 0\": share of the values nonzero in FP32 that came out exactly 0. \"Error vs FP32\": ‖g/scale − g₃₂‖ / ‖g₃₂‖ over every gradient.",
            r.unscaled.loss
        )}</p>
    }
}

impl super::WidgetView for crate::precision::LossScalingParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <LossScalingWidget state=state /> }.into_any()
    }
}
