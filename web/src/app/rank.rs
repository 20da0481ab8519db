//! The `lora-rank` widget: a rank slider over a real weight matrix of micro. The worker fully
//! fine-tunes micro, then reports the singular values of the update it learned for the chosen
//! matrix, what rank r keeps of it, the held-out loss with every update cut to rank r, and
//! the difference between a rank-r LoRA beside W and merged into W.

use leptos::prelude::*;
use tinytune::methods::rank::RankReport;

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, format_count, setter};
use crate::rank::{MATRICES, RankParams};
use crate::widgets::Widget;

fn params(w: &Widget) -> RankParams {
    match w {
        Widget::LoraRank(p) => p.clone(),
        _ => RankParams::default(),
    }
}

#[component]
pub fn LoraRankWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<RankReport, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let matrices: Vec<(&'static str, &'static str)> = MATRICES.iter().map(|m| (*m, *m)).collect();
    view! {
        <div class="widget lora-rank" data-widget="lora-rank">
            <div class="controls">
                {choice("weight matrix", "matrix", matrices, move || p.get().matrix, set)}
                <label class="field">
                    <span>{move || format!("rank r = {}", p.get().rank)}</span>
                    <input type="range" min="1" max="64" data-param="rank" prop:value=move || p.get().rank.to_string() on:change=move |ev| set("rank", event_target_value(&ev)) />
                </label>
                {field("full fine-tuning steps", "steps", move || p.get().steps.to_string(), set)}
                {field("learning rate", "lr", move || p.get().lr.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="lora-rank" on:click=run disabled=move || busy.get()>
                    {move || if busy.get() { "Fine-tuning micro and measuring…".to_string() } else { format!("Measure rank {}", p.get().rank) }}
                </button>
            </div>
            <p class="command"><code>{move || p.get().command()}</code></p>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(r)) => Some(report_view(r).into_any()),
            }}
        </div>
    }
}

fn report_view(r: RankReport) -> impl IntoView {
    let log = |s: &[f64]| s.iter().enumerate().filter(|(_, v)| **v > 0.0).map(|(i, v)| ((i + 1) as f64, v.log10())).collect::<Vec<_>>();
    let kept: Vec<(f64, f64)> = log(&r.delta_spectrum).into_iter().take(r.rank).collect();
    let series = vec![
        Series { label: "ΔW: the update full fine-tuning learned".into(), color: COLORS[0], points: log(&r.delta_spectrum), dashed: false },
        Series { label: format!("the part rank {} keeps", r.rank), color: COLORS[1], points: kept, dashed: false },
        Series { label: "W: the pretrained weight".into(), color: COLORS[2], points: log(&r.weight_spectrum), dashed: true },
    ];
    view! {
        <table class="results">
            <caption>{format!("{} ({}×{})", r.matrix, r.d_in, r.d_out)}</caption>
            <thead><tr><th>"update"</th><th>"numbers trained"</th><th>"share of a dense update"</th></tr></thead>
            <tbody>
                <tr><td>"dense ΔW (full fine-tuning)"</td><td class="num">{format_count(r.dense_params)}</td><td class="num">"100%"</td></tr>
                <tr><td>{format!("rank {} LoRA, r·(d_in + d_out)", r.rank)}</td><td class="num" data-testid="lora-params">{format_count(r.lora_params)}</td><td class="num">{format!("{:.2}%", 100.0 * r.lora_params as f64 / r.dense_params as f64)}</td></tr>
            </tbody>
        </table>
        <LineChart series=Signal::derive(move || series.clone()) x_label="singular value index" y_label="log10 σ" />
        <p class="status" data-testid="energy">
            {format!(
                "Rank {} keeps {:.1}% of the update's energy (Σσ²); the best rank-{} approximation is off by {:.1}% (relative Frobenius norm). 90% of ΔW's energy needs rank {}; 90% of W's needs rank {}.",
                r.rank, 100.0 * r.energy_kept, r.rank, 100.0 * r.relative_error, r.rank_for_90, r.weight_rank_for_90
            )}
        </p>
        <p class="status" data-testid="losses">
            {format!(
                "Held-out loss: before fine-tuning {:.4}; after full fine-tuning {:.4}; with every projection's update cut to rank {}: {:.4}.",
                r.loss_base, r.loss_full, r.rank, r.loss_truncated
            )}
        </p>
        <p class="status" data-testid="merge">
            {format!(
                "A rank-{} LoRA holding that update, computed beside W and then merged into W: largest logit difference {:.2e}. Unmerged again, W comes back within {:.2e}: floating-point addition is not exactly reversible.",
                r.rank, r.merge_max_diff, r.unmerge_max_diff
            )}
        </p>
    }
}

impl super::WidgetView for crate::rank::RankParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <LoraRankWidget state=state /> }.into_any()
    }
}
