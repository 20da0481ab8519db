//! The memory widgets: the calculator (computed in the page: it is arithmetic, no tensors)
//! and the measured timeline of one real step (computed by the worker on the CPU).

use leptos::prelude::*;
use tinytune::memory::arch::ARCH_PRESETS;
use tinytune::memory::{Breakdown, Estimate, GPUS, deepspeed, human};

use super::client;
use crate::memory::{BASES, METHODS, MemoryParams, OFFLOADS, OPTIMIZERS, PRECISIONS, TimelineParams, TimelineResult, first_step_phases};
use crate::widgets::Widget;

/// One colour per component, in `Breakdown::parts` order (colour-blind-safe palette).
const PART_COLORS: [&str; 8] = ["#0072b2", "#56b4e9", "#009e73", "#e69f00", "#d55e00", "#cc79a7", "#f0e442", "#999999"];

fn memory_params(w: &Widget) -> MemoryParams {
    match w {
        Widget::Memory(p) => p.clone(),
        _ => MemoryParams::default(),
    }
}

fn opts(list: &[&'static str]) -> Vec<(&'static str, &'static str)> {
    list.iter().map(|s| (*s, *s)).collect()
}

/// Horizontal stacked bars on one scale: one row per device, one segment per component.
fn stacked_bars(rows: Vec<(String, Breakdown)>) -> impl IntoView {
    let max = rows.iter().map(|(_, b)| b.total()).max().unwrap_or(1).max(1) as f64;
    let (w, label_w, row_h) = (560.0, 70.0, 30.0);
    let h = rows.len() as f64 * row_h + 40.0;
    let bars = rows
        .iter()
        .enumerate()
        .map(|(i, (label, b))| {
            let y = i as f64 * row_h + 4.0;
            let mut x = label_w;
            let segs = b
                .parts()
                .iter()
                .zip(PART_COLORS)
                .filter(|((_, bytes), _)| *bytes > 0)
                .map(|((name, bytes), color)| {
                    let width = *bytes as f64 / max * (w - label_w - 90.0);
                    let seg = view! { <rect x=format!("{x:.1}") y=format!("{y:.1}") width=format!("{width:.1}") height="20" fill=color><title>{format!("{name}: {}", human(*bytes))}</title></rect> };
                    x += width;
                    seg
                })
                .collect::<Vec<_>>();
            view! {
                <g>
                    <text x="0" y=format!("{:.1}", y + 14.0) class="label">{label.clone()}</text>
                    {segs}
                    <text x=format!("{:.1}", x + 4.0) y=format!("{:.1}", y + 14.0) class="label">{human(b.total())}</text>
                </g>
            }
        })
        .collect::<Vec<_>>();
    let legend = Breakdown::default()
        .parts()
        .iter()
        .zip(PART_COLORS)
        .enumerate()
        .map(|(i, ((name, _), color))| {
            let x = (i % 4) as f64 * 140.0;
            let y = rows.len() as f64 * row_h + 8.0 + (i / 4) as f64 * 14.0;
            view! {
                <g>
                    <rect x=format!("{x:.1}") y=format!("{y:.1}") width="10" height="10" fill=color />
                    <text x=format!("{:.1}", x + 14.0) y=format!("{:.1}", y + 9.0) class="legend">{*name}</text>
                </g>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <svg class="chart bars" viewBox=format!("0 0 {w} {h}") role="img" aria-label="memory by component">
            {bars}
            {legend}
        </svg>
    }
}

fn breakdown_table(est: &Estimate) -> impl IntoView {
    let cpu_used = est.cpu.total() > 0;
    view! {
        <table data-testid="memory-table">
            <thead><tr><th>"component"</th><th>"per GPU"</th>{cpu_used.then(|| view! { <th>"per CPU"</th> })}</tr></thead>
            <tbody>
                {est.gpu.parts().iter().zip(est.cpu.parts()).map(|((name, g), (_, c))| view! {
                    <tr><td>{*name}</td><td class="num">{human(*g)}</td>{cpu_used.then(|| view! { <td class="num">{human(c)}</td> })}</tr>
                }).collect::<Vec<_>>()}
            </tbody>
        </table>
    }
}

#[component]
pub fn MemoryWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = super::widgets::setter(state, error);
    let p = Memo::new(move |_| memory_params(&state.get()));
    let pasted = RwSignal::new(String::new());
    let result = Memo::new(move |_| p.get().plan(Some(&pasted.get())).map(|plan| (plan.estimate(), plan)));
    let num = move |f: fn(&MemoryParams) -> String| move || f(&p.get());
    let mut models: Vec<(&'static str, &'static str)> = opts(&ARCH_PRESETS);
    models.push(("custom", "custom (paste config.json)"));
    view! {
        <div class="widget memory" data-widget="memory">
            <div class="controls">
                {super::widgets::choice("model", "model", models, move || p.get().model, set)}
                {super::widgets::choice("method", "method", opts(&METHODS), move || p.get().method, set)}
                {super::widgets::field("LoRA rank", "rank", num(|p| p.rank.to_string()), set)}
                {super::widgets::choice("precision", "precision", opts(&PRECISIONS), move || p.get().precision, set)}
                {super::widgets::choice("optimizer", "optimizer", opts(&OPTIMIZERS), move || p.get().optimizer, set)}
                {super::widgets::field("batch", "batch", num(|p| p.batch.to_string()), set)}
                {super::widgets::field("sequence", "seq", num(|p| p.seq.to_string()), set)}
                {super::widgets::field("checkpoint every k blocks (0: off)", "checkpointing", num(|p| p.checkpointing.to_string()), set)}
                {super::widgets::field("accumulate", "accumulate", num(|p| p.accumulate.to_string()), set)}
                {super::widgets::choice("ZeRO stage", "zero", vec![("0", "0 (none)"), ("1", "1: optimizer"), ("2", "2: + gradients"), ("3", "3: + parameters")], move || p.get().zero.to_string(), set)}
                {super::widgets::field("GPUs", "gpus", num(|p| p.gpus.to_string()), set)}
                {super::widgets::choice("offload", "offload", opts(&OFFLOADS), move || p.get().offload, set)}
                {super::widgets::choice("frozen base", "base", opts(&BASES), move || p.get().base, set)}
                {super::widgets::choice("attention", "attention", opts(&crate::memory::ATTENTIONS), move || p.get().attention, set)}
            </div>
            {move || (p.get().model == "custom").then(|| view! {
                <label class="field wide">
                    <span>"config.json"</span>
                    <textarea data-testid="config-json" rows="5" placeholder="paste a Hugging Face config.json (gpt2, llama, mistral, qwen2, phi)" prop:value=move || pasted.get() on:input=move |ev| pasted.set(event_target_value(&ev))></textarea>
                </label>
            })}
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            {move || match result.get() {
                Err(e) => view! { <p class="error" data-testid="memory-error">{e}</p> }.into_any(),
                Ok((est, plan)) => {
                    let share = est.trainable_params as f64 / est.total_params as f64 * 100.0;
                    let mut rows = vec![(format!("GPU ×{}", plan.gpus), est.gpu.clone())];
                    if est.cpu.total() > 0 {
                        rows.push(("CPU".to_string(), est.cpu.clone()));
                    }
                    let fits: Vec<&str> = GPUS.iter().filter(|g| est.peak <= g.bytes()).map(|g| g.name).collect();
                    let ds = deepspeed::rows(plan.arch.num_params(), plan.arch.largest_layer_params(), plan.zero, plan.gpus);
                    view! {
                        <p>
                            {format!("{:.1} M parameters, {:.2} M trainable ({share:.3}%). Effective batch {}. ", est.total_params as f64 / 1e6, est.trainable_params as f64 / 1e6, est.effective_batch)}
                            "Peak per GPU: " <b data-testid="memory-peak">{human(est.peak)}</b>
                            {format!(" (first step {}).", human(est.first_step_peak))}
                        </p>
                        {stacked_bars(rows)}
                        <div class="columns">
                            {breakdown_table(&est)}
                            <table>
                                <thead><tr><th>"phase of a step"</th><th>"live on a GPU"</th></tr></thead>
                                <tbody>{est.phases.iter().map(|ph| view! { <tr><td>{ph.phase.clone()}</td><td class="num">{human(ph.bytes)}</td></tr> }).collect::<Vec<_>>()}</tbody>
                            </table>
                        </div>
                        <p data-testid="memory-fits">{if fits.is_empty() { "Fits on none of the common GPUs.".to_string() } else { format!("Fits on: {}.", fits.join(", ")) }}</p>
                        {ds.map(|rows| view! {
                            <p>{format!("DeepSpeed's own ZeRO-{} estimator for {} parameters on {} GPU(s), model states only (CPU with its 1.5× head-room):", plan.zero, plan.arch.num_params(), plan.gpus)}</p>
                            <table data-testid="deepspeed">
                                <thead><tr><th>"setting"</th><th>"GPU"</th><th>"CPU"</th></tr></thead>
                                <tbody>{rows.into_iter().map(|(label, s)| view! {
                                    <tr><td>{label}</td><td class="num">{format!("{:.2} GB", deepspeed::gib2(s.gpu))}</td><td class="num">{format!("{:.2} GB", deepspeed::gib2(s.cpu))}</td></tr>
                                }).collect::<Vec<_>>()}</tbody>
                            </table>
                        })}
                        <p class="status">{format!("Activations counted the {} way; overhead {}. Sizes in binary units (GiB = 2^30 bytes). The same numbers as `tinytune memory`.", serde_json::to_value(plan.activations).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(), human(plan.overhead))}</p>
                    }
                    .into_any()
                }
            }}
        </div>
    }
}

fn timeline_params(w: &Widget) -> TimelineParams {
    match w {
        Widget::MemoryTimeline(p) => p.clone(),
        _ => TimelineParams::default(),
    }
}

#[component]
pub fn MemoryTimelineWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = super::widgets::setter(state, error);
    let p = Memo::new(move |_| timeline_params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<TimelineResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let num = move |f: fn(&TimelineParams) -> String| move || f(&p.get());
    view! {
        <div class="widget memory-timeline" data-widget="memory-timeline">
            <div class="controls">
                {super::widgets::field("batch", "batch", num(|p| p.batch.to_string()), set)}
                {super::widgets::field("sequence", "seq", num(|p| p.seq.to_string()), set)}
                {super::widgets::choice("method", "method", vec![("full", "full fine-tuning"), ("lora", "LoRA r=8 on c_attn")], move || p.get().method, set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons"><button data-testid="measure" on:click=run disabled=move || busy.get()>{move || if busy.get() { "Measuring…" } else { "Measure one step" }}</button></div>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(timeline_view(r).into_any()),
            }}
        </div>
    }
}

fn timeline_view(r: TimelineResult) -> impl IntoView {
    let est = first_step_phases(&r.estimate);
    let m = &r.measured;
    let max = m.phases.iter().map(|p| p.peak).chain(est.iter().map(|e| e.1)).max().unwrap_or(1).max(1) as f64;
    let (w, label_w, row_h) = (560.0, 110.0, 34.0);
    let phases: Vec<_> = m.phases.iter().filter(|p| p.phase != "embed batch").cloned().collect();
    let h = phases.len() as f64 * row_h + 30.0;
    let scale = move |b: u64| b as f64 / max * (w - label_w - 80.0);
    let rows = phases
        .iter()
        .enumerate()
        .map(|(i, ph)| {
            let y = i as f64 * row_h + 2.0;
            let e = est.iter().find(|(n, _)| *n == ph.phase).map(|e| e.1).unwrap_or(0);
            view! {
                <g>
                    <text x="0" y=format!("{:.1}", y + 12.0) class="label">{ph.phase.clone()}</text>
                    <rect x=label_w y=format!("{y:.1}") width=format!("{:.1}", scale(ph.peak)) height="12" fill="#0072b2"><title>{format!("measured peak {}", human(ph.peak))}</title></rect>
                    <rect x=label_w y=format!("{:.1}", y + 14.0) width=format!("{:.1}", scale(e)) height="12" fill="#e69f00"><title>{format!("estimate {}", human(e))}</title></rect>
                    <text x=format!("{:.1}", label_w + scale(ph.peak) + 4.0) y=format!("{:.1}", y + 11.0) class="label">{human(ph.peak)}</text>
                    <text x=format!("{:.1}", label_w + scale(e) + 4.0) y=format!("{:.1}", y + 25.0) class="label">{human(e)}</text>
                </g>
            }
        })
        .collect::<Vec<_>>();
    let ly = phases.len() as f64 * row_h + 10.0;
    let err = r.estimate.first_step_peak as f64 / m.peak.max(1) as f64 - 1.0;
    view! {
        <svg class="chart bars" viewBox=format!("0 0 {w} {h}") role="img" aria-label="measured and estimated memory per phase">
            {rows}
            <rect x="0" y=format!("{ly:.1}") width="10" height="10" fill="#0072b2" /><text x="14" y=format!("{:.1}", ly + 9.0) class="legend">"measured peak (counting allocator)"</text>
            <rect x="250" y=format!("{ly:.1}") width="10" height="10" fill="#e69f00" /><text x="264" y=format!("{:.1}", ly + 9.0) class="legend">"estimate (tinytune memory, first step)"</text>
        </svg>
        <p data-testid="timeline-summary">
            "Measured peak " <b data-testid="measured-peak">{human(m.peak)}</b> ", estimated " <b>{human(r.estimate.first_step_peak)}</b>
            {format!(" ({:+.1}%). Parameters {}, gradients {}, optimizer state {} (allocated in the optimizer step), activations {}.", err * 100.0, human(m.params), human(m.grads), human(m.optimizer), human(m.activations))}
        </p>
        <p class="status">"Measured in this tab's worker on the CPU (Burn's flex backend compiled to WebAssembly), above what was live before the model was built; parameters, gradients and optimizer state are exact sizes, activations the rest of the forward peak."</p>
    }
}

impl super::WidgetView for crate::memory::MemoryParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <MemoryWidget state=state /> }.into_any()
    }
}

impl super::WidgetView for crate::memory::TimelineParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <MemoryTimelineWidget state=state /> }.into_any()
    }
}
