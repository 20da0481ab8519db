//! The `merge` widget: two fine-tunes of micro (sentiment and json-extract) merged with
//! every method; each merge's held-out loss on task A against task B, with the base and the
//! two fine-tunes marked, the chosen method's curve as model B's share moves, a table of
//! losses and accuracies, and the mergekit YAML of the chosen merge.

use leptos::prelude::*;
use tinytune::merging::study::{METHODS, Scored};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::merge::{MergeParams, MergeResult};
use crate::widgets::Widget;

fn params(w: &Widget) -> MergeParams {
    match w {
        Widget::Merge(p) => p.clone(),
        _ => MergeParams::default(),
    }
}

#[component]
pub fn MergeWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let trained = RwSignal::new(None::<(usize, f64)>);
    let out = RwSignal::new(None::<Result<MergeResult, String>>);
    let run = move |_| {
        busy.set(true);
        let asked = p.get_untracked();
        client::ask(asked.clone(), move |r: Result<MergeResult, String>| {
            if r.is_ok() {
                trained.set(Some((asked.steps, asked.lr)));
            }
            out.set(Some(r));
            busy.set(false);
        });
    };
    let methods: Vec<(&'static str, &'static str)> = METHODS.iter().map(|m| (*m, *m)).collect();
    let label = move || {
        let p = p.get();
        if busy.get() {
            if trained.get() == Some((p.steps, p.lr)) {
                "Merging and scoring…".to_string()
            } else {
                "Fine-tuning two copies of micro, then merging…".to_string()
            }
        } else if trained.get() == Some((p.steps, p.lr)) {
            "Merge and score".to_string()
        } else {
            format!("Fine-tune both copies ({} steps each) and merge", p.steps)
        }
    };
    view! {
        <div class="widget merge" data-widget="merge">
            <div class="controls">
                {choice("method (curve)", "method", methods, move || p.get().method, set)}
                <label class="field">
                    <span>{move || format!("model B's share t = {:.2}", p.get().t)}</span>
                    <input type="range" min="0" max="1" step="0.05" data-param="t" prop:value=move || p.get().t.to_string() on:change=move |ev| set("t", event_target_value(&ev)) />
                </label>
                {field("density (TIES, DARE, breadcrumbs)", "density", move || p.get().density.to_string(), set)}
                {field("lambda (task vectors' scale)", "lambda", move || p.get().lambda.to_string(), set)}
                {field("fine-tuning steps per copy", "steps", move || p.get().steps.to_string(), set)}
                {field("learning rate", "lr", move || p.get().lr.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="merge" on:click=run disabled=move || busy.get()>{label}</button>
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

/// The base in black; the two fine-tunes in colours no method uses.
const ENDPOINT_COLORS: [&str; 3] = ["#000000", "#8c564b", "#9467bd"];

/// Method i's colour: the chart's palette without its black, then one more.
fn method_color(i: usize) -> &'static str {
    let palette: Vec<&'static str> = COLORS.iter().copied().filter(|c| *c != "#000000").chain(["#17becf"]).collect();
    palette[i % palette.len()]
}

fn point(s: &Scored) -> (f64, f64) {
    (s.a.loss as f64, s.b.loss as f64)
}

fn row(s: &Scored, kind: &str) -> impl IntoView {
    view! {
        <tr data-row=s.label.clone()>
            <td>{s.label.clone()}</td>
            <td>{kind.to_string()}</td>
            <td class="num">{format!("{:.2}", s.t)}</td>
            <td class="num">{format!("{:.4}", s.a.loss)}</td>
            <td class="num">{format!("{:.1}%", 100.0 * s.a.accuracy)}</td>
            <td class="num">{format!("{:.4}", s.b.loss)}</td>
            <td class="num">{format!("{:.1}%", 100.0 * s.b.accuracy)}</td>
        </tr>
    }
}

fn result_view(r: MergeResult) -> impl IntoView {
    let mut series = vec![];
    for (i, e) in r.endpoints.iter().enumerate() {
        let label = match i {
            0 => "base (micro, not fine-tuned)".to_string(),
            1 => "A: fine-tuned on sentiment".to_string(),
            _ => "B: fine-tuned on json-extract".to_string(),
        };
        series.push(Series { label, color: ENDPOINT_COLORS[i.min(2)], points: vec![point(e)], dashed: true });
    }
    // Every method at t, one dot each; the chosen method's curve from A's side to B's.
    for (i, m) in r.methods.iter().enumerate() {
        series.push(Series { label: m.label.clone(), color: method_color(i), points: vec![point(m)], dashed: true });
    }
    if let Some(first) = r.curve.first() {
        let color = method_color(METHODS.iter().position(|m| *m == first.label).unwrap_or(0));
        series.push(Series { label: format!("{} as t goes 0 → 1", first.label), color, points: r.curve.iter().map(point).collect(), dashed: false });
    }
    let t = r.methods.first().map(|m| m.t).unwrap_or(0.5);
    let rows: Vec<_> = r
        .endpoints
        .iter()
        .map(|e| row(e, "").into_any())
        .chain(r.methods.iter().map(|m| row(m, "merge").into_any()))
        .chain(r.curve.iter().map(|m| row(m, "curve").into_any()))
        .collect();
    view! {
        <LineChart series=Signal::derive(move || series.clone()) x_label="task A (sentiment) held-out loss" y_label="task B (json-extract) loss" />
        <table class="results" data-testid="merge-table">
            <caption>{format!("Held-out loss (nats per answer token) and exact-match accuracy on each task; every method at t = {t:.2}")}</caption>
            <thead><tr><th>"model"</th><th>""</th><th>"t"</th><th>"A loss"</th><th>"A accuracy"</th><th>"B loss"</th><th>"B accuracy"</th></tr></thead>
            <tbody>
                {rows}
            </tbody>
        </table>
        <p class="status" data-testid="merge-timing">
            {format!("Fine-tuning both copies took {:.1} s (once per steps and learning rate); these merges and scores {:.1} s.", r.train_seconds, r.score_seconds)}
        </p>
        <p>"The chosen merge as mergekit's YAML (" <code>"tinytune merge"</code> " reads it too):"</p>
        <pre class="yaml" data-testid="merge-yaml">{r.yaml.clone()}</pre>
    }
}

impl super::WidgetView for crate::merge::MergeParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <MergeWidget state=state /> }.into_any()
    }
}
