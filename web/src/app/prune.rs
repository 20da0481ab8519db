//! The prune widget: the worker prunes the shipped micro model at every sparsity of the
//! sweep with `tinytune::prune` and measures each result (parameters, non-zero weights,
//! held-out loss, a greedy sample); the page draws the table, loss against sparsity, and a
//! heat map of what the chosen row removed, beside the `tinytune prune` command for it.

use leptos::prelude::*;

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, format_count, setter};
use crate::prune::{NEURON_BIN, PruneMap, PruneParams, PruneResult, PruneRow, micro_inner};
use crate::widgets::Widget;

fn params(w: &Widget) -> PruneParams {
    match w {
        Widget::Prune(p) => p.clone(),
        _ => PruneParams::default(),
    }
}

/// White at 0, `rgb` at 1.
fn shade(value: f64, rgb: (f64, f64, f64)) -> String {
    let v = value.clamp(0.0, 1.0);
    let mix = |c: f64| (255.0 + (c - 255.0) * v).round() as u8;
    format!("rgb({},{},{})", mix(rgb.0), mix(rgb.1), mix(rgb.2))
}

const REMOVED: (f64, f64, f64) = (213.0, 94.0, 0.0);
const IMPORTANCE: (f64, f64, f64) = (0.0, 114.0, 178.0);

#[component]
pub fn PruneWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<PruneResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let methods = vec![
        ("magnitude", "magnitude: the smallest |w|"),
        ("wanda", "Wanda: the smallest |w|·‖x‖ per output row"),
        ("2:4", "2:4, by magnitude"),
        ("2:4-wanda", "2:4, by Wanda"),
        ("structured", "structured: whole MLP neurons"),
    ];
    let note = move || {
        let p = p.get();
        if p.is_pattern() {
            "2:4 zeroes two of every four consecutive inputs of each output: its sparsity is always 0.5, so it has one row and the sweep is not used."
                .to_string()
        } else if p.method == "structured" {
            format!(
                "Structured pruning removes the least active share of each block's {} MLP neurons (rounded), ranked on calibration stories, and leaves a smaller model. micro is GPT-2-shaped, and a GPT-2 config cannot describe fewer heads of the same width, so its heads stay: the map shows their importance only.",
                micro_inner()
            )
        } else if p.method == "wanda" {
            "Wanda compares the weights within each output row, so the scope does not apply.".to_string()
        } else {
            String::new()
        }
    };
    view! {
        <div class="widget prune" data-widget="prune">
            <div class="controls">
                {choice("method", "method", methods, move || p.get().method, set)}
                <label class="field">
                    <span>{move || if p.get().is_pattern() { "sparsity: 0.5 (2:4)".to_string() } else { format!("sparsity shown: {}", p.get().sparsity) }}</span>
                    <input type="range" min="0.05" max="0.95" step="0.05" data-param="sparsity" disabled=move || p.get().is_pattern()
                        prop:value=move || p.get().sparsity.to_string() on:change=move |ev| set("sparsity", event_target_value(&ev)) />
                </label>
                <label class="field">
                    <span>"scope (magnitude)"</span>
                    <select data-param="scope" disabled=move || !p.get().scoped() on:change=move |ev| set("scope", event_target_value(&ev))>
                        <option value="layer" selected=move || p.get().scope == "layer">"each matrix alike"</option>
                        <option value="global" selected=move || p.get().scope == "global">"one threshold for all"</option>
                    </select>
                </label>
                {field("sparsities to compare", "sweep", move || p.get().sweep, set)}
                {field("prompt", "prompt", move || p.get().prompt.replace('\n', "\\n"), set)}
                {field("calibration seed", "seed", move || p.get().seed.to_string(), set)}
            </div>
            {move || { let n = note(); (!n.is_empty()).then(|| view! { <p class="status">{n}</p> }) }}
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="prune" on:click=run disabled=move || busy.get()>
                    {move || match (busy.get(), p.get().sparsities().len()) {
                        (true, _) => "Pruning micro…".to_string(),
                        _ if p.get().is_pattern() => "Prune micro to 2:4".to_string(),
                        (false, 1) => "Prune micro at 1 sparsity".to_string(),
                        (false, n) => format!("Prune micro at {n} sparsities"),
                    }}
                </button>
            </div>
            <p class="command"><code>{move || { let p = p.get(); p.command(p.chosen()) }}</code></p>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => {
                    // The row the slider chooses, if the last run computed it with the same
                    // method and scope; else the row that run was asked for.
                    let now = p.get();
                    let same = now.method == r.params.method && now.scope == r.params.scope;
                    let chosen = if same && r.row(now.chosen()).is_some() { now.chosen() } else { r.params.chosen() };
                    Some(result_view(r, chosen).into_any())
                }
            }}
        </div>
    }
}

/// The sparsity column's text.
fn label(r: &PruneRow, method: &str) -> String {
    if r.sparsity == 0.0 {
        return "unpruned".into();
    }
    match r.neurons {
        Some(n) => format!("{:.0}% ({n} of {} neurons)", r.sparsity * 100.0, micro_inner()),
        None if method.starts_with("2:4") => "2:4".into(),
        None => format!("{:.0}%", r.sparsity * 100.0),
    }
}

fn result_view(r: PruneResult, chosen: f64) -> impl IntoView {
    let method = r.params.method.clone();
    let prompt = r.params.prompt.clone();
    let x_label = if method == "structured" { "share of MLP neurons removed" } else { "sparsity (share of weights zeroed)" };
    let series = vec![Series {
        label: format!("{method}: held-out loss"),
        color: COLORS[0],
        points: r.rows.iter().map(|row| (row.sparsity, row.loss as f64)).collect(),
        dashed: false,
    }];
    let rows = r
        .rows
        .iter()
        .map(|row| {
            let zero = row.zeros.map(|(z, n)| z as f64 / n.max(1) as f64);
            let is_chosen = row.sparsity != 0.0 && (row.sparsity - chosen).abs() < 1e-9;
            let style = if is_chosen { "background: #fff3d6" } else { "" };
            let (zeros, linear) = row.zeros.map_or((String::new(), String::new()), |(z, n)| (z.to_string(), n.to_string()));
            view! {
                <tr data-sparsity=row.sparsity.to_string() data-loss=row.loss.to_string() data-parameters=row.parameters.to_string()
                    data-nonzero=row.nonzero.to_string() data-zeros=zeros data-linear=linear data-chosen=is_chosen.to_string() style=style>
                    <td>{label(row, &method)}</td>
                    <td class="num">{format_count(row.parameters)}</td>
                    <td class="num">{format_count(row.nonzero)}</td>
                    <td class="num">{zero.map(|z| format!("{:.1}%", z * 100.0)).unwrap_or_else(|| "—".into())}</td>
                    <td class="num">{format!("{:.4}", row.loss)}</td>
                    <td><div class="sample"><span class="prompt">{prompt.clone()}</span>{row.sample.strip_prefix(prompt.as_str()).unwrap_or(&row.sample).to_string()}</div></td>
                </tr>
            }
        })
        .collect_view();
    let calibrated = if r.calibration_tokens > 0 { format!(", calibrated on {} story tokens", format_count(r.calibration_tokens)) } else { String::new() };
    let map = r.row(chosen).and_then(|row| row.map.clone().map(|m| (row.clone(), m)));
    view! {
        <table class="results" data-testid="prune-table" data-method=method.clone()>
            <caption>{format!("micro pruned by {method}: held-out loss on {} windows of 128 story tokens{calibrated} ({:.1} s)", r.windows, r.seconds)}</caption>
            <thead><tr><th>"sparsity"</th><th>"parameters"</th><th>"non-zero"</th><th>"blocks' linear weights zero"</th><th>"held-out loss"</th><th>"greedy sample"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <LineChart series=Signal::derive(move || series.clone()) x_label=x_label y_label="held-out loss (nats/token)" />
        {map.map(|(row, m)| heat_map(&row, &m, &method))}
    }
}

fn heat_map(row: &PruneRow, map: &PruneMap, method: &str) -> AnyView {
    let title = format!("What {} removed at {}", method, label(row, method));
    match map {
        PruneMap::Matrices { kinds, shares } => {
            let (left, top, cw, ch) = (70.0, 22.0, 110.0, 24.0);
            let w = left + cw * kinds.len() as f64 + 4.0;
            let h = top + ch * shares.len() as f64 + 4.0;
            let heads = kinds
                .iter()
                .enumerate()
                .map(|(k, name)| view! { <text x=format!("{:.1}", left + cw * (k as f64 + 0.5)) y="14" text-anchor="middle" font-size="11">{name.clone()}</text> })
                .collect_view();
            let cells = shares
                .iter()
                .enumerate()
                .map(|(l, row)| {
                    let y = top + ch * l as f64;
                    let cells = row
                        .iter()
                        .enumerate()
                        .map(|(k, &s)| {
                            let x = left + cw * k as f64;
                            view! {
                                <rect x=format!("{x:.1}") y=format!("{y:.1}") width=format!("{:.1}", cw - 2.0) height=format!("{:.1}", ch - 2.0) fill=shade(s, REMOVED) stroke="#ccc"><title>{format!("h.{l}.{}: {:.2}% zero", kinds[k], s * 100.0)}</title></rect>
                                <text x=format!("{:.1}", x + cw / 2.0) y=format!("{:.1}", y + ch / 2.0 + 4.0) text-anchor="middle" font-size="11">{format!("{:.1}%", s * 100.0)}</text>
                            }
                        })
                        .collect_view();
                    view! { <text x="4" y=format!("{:.1}", y + ch / 2.0 + 4.0) font-size="11">{format!("block {l}")}</text>{cells} }
                })
                .collect_view();
            view! {
                <p><b>{title}</b>": the share of each weight matrix set to zero. A global threshold takes more from the matrices whose weights are small."</p>
                <svg class="chart bars" data-testid="prune-map" data-kind="matrices" viewBox=format!("0 0 {w} {h}") role="img" aria-label="share of each matrix set to zero">{heads}{cells}</svg>
            }
            .into_any()
        }
        PruneMap::Structured(layers) => {
            let (left, top, hw, nw, ch) = (70.0, 22.0, 22.0, 7.0, 22.0);
            let n_heads = layers.first().map_or(0, |l| l.heads.len());
            let gap = left + hw * n_heads as f64 + 12.0;
            let bins = layers.first().map_or(0, |l| l.neuron_bins.len());
            let w = gap + nw * bins as f64 + 4.0;
            let h = top + ch * layers.len() as f64 + 4.0;
            let max_head = layers.iter().flat_map(|l| l.heads.iter().copied()).fold(0.0, f64::max).max(f64::MIN_POSITIVE);
            let cells = layers
                .iter()
                .enumerate()
                .map(|(l, layer)| {
                    let y = top + ch * l as f64;
                    let heads = layer
                        .heads
                        .iter()
                        .enumerate()
                        .map(|(i, &imp)| {
                            let gone = layer.heads_removed.contains(&i);
                            let x = left + hw * i as f64;
                            let fill = if gone { shade(1.0, REMOVED) } else { shade(imp / max_head, IMPORTANCE) };
                            view! {
                                <rect class="head" data-removed=gone.to_string() x=format!("{x:.1}") y=format!("{y:.1}") width=format!("{:.1}", hw - 2.0) height=format!("{:.1}", ch - 2.0)
                                    fill=fill stroke="#ccc">
                                    <title>{format!("block {l} head {i}: importance {imp:.3}{}", if gone { ", removed" } else { "" })}</title>
                                </rect>
                            }
                        })
                        .collect_view();
                    let neurons = layer
                        .neuron_bins
                        .iter()
                        .enumerate()
                        .map(|(b, &s)| {
                            let x = gap + nw * b as f64;
                            let (from, to) = (b * NEURON_BIN, ((b + 1) * NEURON_BIN).min(layer.neurons) - 1);
                            view! {
                                <rect class="neurons" data-share=s.to_string() x=format!("{x:.1}") y=format!("{y:.1}") width=format!("{:.1}", nw - 0.5) height=format!("{:.1}", ch - 2.0) fill=shade(s, REMOVED)>
                                    <title>{format!("block {l} neurons {from}–{to}: {:.0}% removed", s * 100.0)}</title>
                                </rect>
                            }
                        })
                        .collect_view();
                    let label = format!("block {l}");
                    let influence = format!("block {l}: {} of {} neurons removed; block influence {:.4}", layer.neurons_removed, layer.neurons, layer.block_influence);
                    view! { <text x="4" y=format!("{:.1}", y + ch / 2.0 + 4.0) font-size="11"><title>{influence}</title>{label}</text>{heads}{neurons} }
                })
                .collect_view();
            view! {
                <p><b>{title}</b>{format!(": each row is a block. Left, its {n_heads} heads, blue by importance (the mean size of their output); a removed head would be orange. Right, its MLP neurons in runs of {NEURON_BIN}, orange by the share removed.")}</p>
                <svg class="chart bars" data-testid="prune-map" data-kind="structured" viewBox=format!("0 0 {w} {h}") role="img" aria-label="heads and MLP neurons removed per block">
                    <text x=format!("{left}") y="14" font-size="11">"heads"</text>
                    <text x=format!("{gap:.1}") y="14" font-size="11">{format!("MLP neurons 0–{}", layers.first().map_or(0, |l| l.neurons).saturating_sub(1))}</text>
                    {cells}
                </svg>
            }
            .into_any()
        }
    }
}

impl super::WidgetView for crate::prune::PruneParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <PruneWidget state=state /> }.into_any()
    }
}
