//! The `optimizer-state` widget (state per parameter of every optimizer after one real step
//! on micro, Adafactor's factored second moment of a real weight, the 8-bit maps) and the
//! `schedule` widget (learning rate against step, from the core's `Schedule`).

use leptos::prelude::*;
use tinytune::memory::human;
use tinytune::optim::Decay;
use tinytune::optim::report::StateReport;

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::optimizers::{LAYERS, OptimizerStateParams, ScheduleParams};
use crate::widgets::Widget;

fn state_params(w: &Widget) -> OptimizerStateParams {
    match w {
        Widget::OptimizerState(p) => p.clone(),
        _ => OptimizerStateParams::default(),
    }
}

#[component]
pub fn OptimizerStateWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| state_params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<StateReport, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let layers: Vec<(&'static str, &'static str)> = LAYERS.iter().map(|l| (*l, *l)).collect();
    view! {
        <div class="widget optimizer-state" data-widget="optimizer-state">
            <div class="controls">
                {choice("weight for Adafactor and 8-bit", "layer", layers, move || p.get().layer, set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="optimizer-state" on:click=run disabled=move || busy.get()>{move || if busy.get() { "Stepping every optimizer…" } else { "Step every optimizer once on micro" }}</button>
            </div>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(report_view(r).into_any()),
            }}
        </div>
    }
}

fn report_view(r: StateReport) -> impl IntoView {
    let f = r.factored.clone();
    let e = r.eight_bit.clone();
    let rows = r
        .rows
        .iter()
        .map(|row| {
            view! {
                <tr data-optimizer=row.name.clone()>
                    <td>{row.name.clone()}</td>
                    <td class="num">{human(row.state_bytes)}</td>
                    <td class="num" data-testid="bytes-per-param">{format!("{:.3}", row.bytes_per_param)}</td>
                    <td class="num">{row.tensors}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let sample = f
        .sample
        .iter()
        .map(|(full, est)| view! { <tr><td class="num">{format!("{full:.3e}")}</td><td class="num">{format!("{est:.3e}")}</td></tr> })
        .collect::<Vec<_>>();
    view! {
        <table class="results">
            <caption>{format!("State after one step on micro's story-qa gradients ({} trainable parameters)", super::widgets::format_count(r.trainable as usize))}</caption>
            <thead><tr><th>"optimizer"</th><th>"state"</th><th>"bytes / parameter"</th><th>"state tensors"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p class="status" data-testid="adafactor">
            {format!(
                "Adafactor on {} ({}×{}): {} numbers (a row and a column statistic) instead of {} for AdamW's second moment; the factored estimate R·C/mean(R) is off from g² by {:.1}% (relative RMS) after this first step.",
                f.layer, f.rows, f.cols, f.factored_numbers, f.full_numbers, 100.0 * f.relative_error
            )}
        </p>
        <table class="results">
            <caption>"g² and Adafactor's estimate, first entries of the row with the largest gradients"</caption>
            <thead><tr><th>"g² (full)"</th><th>"factored"</th></tr></thead>
            <tbody>{sample}</tbody>
        </table>
        <p class="status" data-testid="eight-bit">
            {format!(
                "8-bit AdamW on {}: block-wise quantization (blocks of 256) changes the first moment by {:.2}% and the second by {:.2}% (relative RMS).",
                f.layer, 100.0 * e.exp_avg_error, 100.0 * e.exp_avg_sq_error
            )}
        </p>
        {map_chart(e.signed_map, e.unsigned_map)}
    }
}

/// The two dynamic maps: log10 |code| against the code's index.
fn map_chart(signed: Vec<f32>, unsigned: Vec<f32>) -> impl IntoView {
    let points = |m: &[f32]| m.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, v)| (i as f64, (v.abs() as f64).log10())).collect::<Vec<_>>();
    let series = vec![
        Series { label: "signed map (first moment): log10 |code|".into(), color: COLORS[0], points: points(&signed), dashed: false },
        Series { label: "unsigned map (second moment)".into(), color: COLORS[1], points: points(&unsigned), dashed: true },
    ];
    view! { <LineChart series=Signal::derive(move || series.clone()) x_label="code (0–255)" y_label="log10 |value|" /> }
}

fn schedule_params(w: &Widget) -> ScheduleParams {
    match w {
        Widget::Schedule(p) => p.clone(),
        _ => ScheduleParams::default(),
    }
}

#[component]
pub fn ScheduleWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| schedule_params(&state.get()));
    let series = Signal::derive(move || {
        let p = p.get();
        let chosen = p.decay();
        [(Decay::Constant, "constant"), (Decay::Linear, "linear"), (Decay::Cosine, "cosine")]
            .into_iter()
            .enumerate()
            .map(|(i, (d, name))| Series {
                label: if d == chosen { format!("{name} (chosen)") } else { name.to_string() },
                color: COLORS[i],
                points: p.curve(d, 200),
                dashed: d != chosen,
            })
            .collect()
    });
    let table = move || {
        let p = p.get();
        let s = p.schedule_with(p.decay());
        let marks = [0, s.warmup_steps.saturating_sub(1), s.warmup_steps, p.steps / 2, p.steps.saturating_sub(1)];
        let mut seen = Vec::new();
        marks
            .into_iter()
            .filter(|m| {
                *m < p.steps && !seen.contains(m) && {
                    seen.push(*m);
                    true
                }
            })
            .map(|m| view! { <tr><td class="num">{m}</td><td class="num" data-testid="lr-at">{format!("{:.3e}", s.lr(m))}</td></tr> })
            .collect::<Vec<_>>()
    };
    view! {
        <div class="widget schedule" data-widget="schedule">
            <div class="controls">
                {field("steps", "steps", move || p.get().steps.to_string(), set)}
                {field("peak learning rate", "lr", move || p.get().lr.to_string(), set)}
                {field("warmup (steps or %)", "warmup", move || p.get().warmup, set)}
                {choice("after warmup", "schedule", vec![("constant", "constant"), ("linear", "linear decay"), ("cosine", "cosine decay")], move || p.get().schedule, set)}
                {field("floor (× peak)", "min_lr_ratio", move || p.get().min_lr_ratio.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <LineChart series=series x_label="step" y_label="learning rate" />
            <table class="results">
                <caption>"The chosen schedule's learning rate (tinytune::optim::Schedule, as training uses it)"</caption>
                <thead><tr><th>"step"</th><th>"learning rate"</th></tr></thead>
                <tbody>{table}</tbody>
            </table>
        </div>
    }
}

impl super::WidgetView for crate::optimizers::OptimizerStateParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <OptimizerStateWidget state=state /> }.into_any()
    }
}

impl super::WidgetView for crate::optimizers::ScheduleParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <ScheduleWidget state=state /> }.into_any()
    }
}
