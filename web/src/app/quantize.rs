//! The quantize widget: the worker quantizes the micro model's real weights; the page draws
//! the chosen layer's weights before and after, the grid of one block, and the effect on
//! held-out loss and on a sample.

use leptos::prelude::*;
use tinytune::memory::human;

use super::client;
use crate::quantize::{LAYERS, QUANT_FORMATS, QuantizeParams, QuantizeResult};
use crate::widgets::Widget;

fn params(w: &Widget) -> QuantizeParams {
    match w {
        Widget::Quantize(p) => p.clone(),
        _ => QuantizeParams::default(),
    }
}

#[component]
pub fn QuantizeWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = super::widgets::setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<QuantizeResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let opts = |list: &[&'static str]| list.iter().map(|s| (*s, *s)).collect::<Vec<_>>();
    view! {
        <div class="widget quantize" data-widget="quantize">
            <div class="controls">
                {super::widgets::choice("format", "format", opts(&QUANT_FORMATS), move || p.get().format, set)}
                {super::widgets::field("block size", "block", move || p.get().block.to_string(), set)}
                {super::widgets::choice("double quantization", "double_quant", vec![("false", "off"), ("true", "on (NF4/FP4)")], move || p.get().double_quant.to_string(), set)}
                {super::widgets::choice("layer shown", "layer", opts(&LAYERS), move || p.get().layer, set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons"><button data-testid="quantize" on:click=run disabled=move || busy.get()>{move || if busy.get() { "Quantizing…" } else { "Quantize micro" }}</button></div>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(result_view(r).into_any()),
            }}
        </div>
    }
}

fn result_view(r: QuantizeResult) -> impl IntoView {
    let h = &r.histogram;
    let (w, ht, left, bottom) = (560.0, 200.0, 40.0, 24.0);
    let bins = h.before.len().max(1);
    let max = h.before.iter().chain(&h.after).copied().max().unwrap_or(1).max(1) as f64;
    // Square-root scale so both the spread and the spikes stay visible.
    let y = move |c: u32| (ht - bottom) * (1.0 - (c as f64 / max).sqrt());
    let bw = (w - left - 10.0) / bins as f64;
    let x_of = {
        let (lo, hi) = (h.lo as f64, h.hi as f64);
        move |v: f64| left + (v - lo) / (hi - lo).max(f64::MIN_POSITIVE) * (w - left - 10.0)
    };
    let bars = |counts: &[u32], color: &'static str, inset: f64| {
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| view! { <rect x=format!("{:.1}", left + i as f64 * bw + inset) y=format!("{:.1}", y(c)) width=format!("{:.1}", (bw / 2.0).max(0.5)) height=format!("{:.1}", ht - bottom - y(c)) fill=color><title>{c.to_string()}</title></rect> })
            .collect::<Vec<_>>()
    };
    let levels = h.block_levels.iter().map(|&v| {
        let x = x_of(v as f64);
        view! { <line x1=format!("{x:.1}") x2=format!("{x:.1}") y1="0" y2=format!("{:.1}", ht - bottom) stroke="#d55e00" stroke-dasharray="3,3"><title>{format!("level {v:.4}")}</title></line> }
    }).collect::<Vec<_>>();
    let rep = &r.report;
    view! {
        <svg class="chart bars" viewBox=format!("0 0 {w} {ht}") role="img" aria-label="weights before and after quantization">
            {bars(&h.before, "#0072b2", 0.0)}
            {bars(&h.after, "#e69f00", bw / 2.0)}
            {levels}
            <text x=format!("{left}") y=format!("{:.1}", ht - 6.0) class="label">{format!("{:.3}", h.lo)}</text>
            <text x=format!("{:.1}", w - 40.0) y=format!("{:.1}", ht - 6.0) class="label">{format!("{:.3}", h.hi)}</text>
        </svg>
        <p class="status">"Blue: the layer's weights before; orange: after (square-root scale). Dashed: the levels of the block holding the largest weight — every value in that block was snapped to one of them."</p>
        <table data-testid="quantize-table">
            <tbody>
                <tr><td>"bytes per linear weight (scales included)"</td><td class="num">{format!("{:.4}", rep.bytes_per_linear_param())}</td></tr>
                <tr><td>"model size (embeddings, norms, biases stay FP32)"</td><td class="num">{format!("{} → {}", human(rep.bytes_before as u64), human(rep.bytes_after as u64))}</td></tr>
                <tr><td>"largest error / relative RMS error"</td><td class="num">{format!("{:.2e} / {:.2}%", rep.max_abs_error, rep.relative_rms_error * 100.0)}</td></tr>
                <tr><td>"held-out story loss"</td><td class="num" data-testid="loss-change">{format!("{:.4} → {:.4} ({:+.4})", r.loss_before, r.loss_after, r.loss_after - r.loss_before)}</td></tr>
            </tbody>
        </table>
        <p><b>"Greedy continuation before:"</b></p>
        <pre class="sample">{r.sample_before}</pre>
        <p><b>"after:"</b></p>
        <pre class="sample" data-testid="sample-after">{r.sample_after}</pre>
    }
}

impl super::WidgetView for crate::quantize::QuantizeParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <QuantizeWidget state=state /> }.into_any()
    }
}
