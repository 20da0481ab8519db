//! The `federated` widget: FedAvg on micro. Held-out loss after each round for the averaged
//! (global) model, each client before averaging, and the model trained on the shards pooled.

use leptos::prelude::*;

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::federated::{FederatedParams, FederatedResult, TASKS};
use crate::widgets::Widget;

fn params(w: &Widget) -> FederatedParams {
    match w {
        Widget::Federated(p) => p.clone(),
        _ => FederatedParams::default(),
    }
}

#[component]
pub fn FederatedWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<FederatedResult, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let tasks: Vec<(&'static str, &'static str)> = TASKS.iter().map(|t| (*t, *t)).collect();
    view! {
        <div class="widget federated" data-widget="federated">
            <div class="controls">
                {choice("task", "task", tasks, move || p.get().task, set)}
                {field("clients", "clients", move || p.get().clients.to_string(), set)}
                {field("rounds", "rounds", move || p.get().rounds.to_string(), set)}
                {field("local steps per round", "local_steps", move || p.get().local_steps.to_string(), set)}
                {field("learning rate", "lr", move || p.get().lr.to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="federated" on:click=run disabled=move || busy.get()>
                    {move || if busy.get() { "Training the clients…".to_string() } else { format!("Run {} rounds with {} clients", p.get().rounds, p.get().clients) }}
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

fn result_view(r: FederatedResult) -> impl IntoView {
    let with_start = |f: &dyn Fn(&tinytune::merging::federated::Round) -> f32| {
        std::iter::once((0.0, r.start_loss as f64)).chain(r.rounds.iter().map(|x| (x.round as f64, f(x) as f64))).collect::<Vec<_>>()
    };
    let mut series = vec![
        Series { label: "averaged (the server's model)".into(), color: COLORS[0], points: with_start(&|x| x.averaged), dashed: false },
        Series { label: "one model on the shards pooled".into(), color: COLORS[1], points: with_start(&|x| x.pooled), dashed: false },
    ];
    let clients = r.rounds.first().map(|x| x.clients.len()).unwrap_or(0);
    for c in 0..clients {
        series.push(Series {
            label: format!("client {} before averaging", c + 1),
            color: COLORS[2 + c % 5],
            points: r.rounds.iter().map(|x| (x.round as f64, x.clients[c] as f64)).collect(),
            dashed: true,
        });
    }
    let rows: Vec<_> = r
        .rounds
        .iter()
        .map(|x| {
            let best = x.clients.iter().copied().fold(f32::INFINITY, f32::min);
            let worst = x.clients.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            view! {
                <tr>
                    <td class="num">{x.round}</td>
                    <td class="num">{format!("{best:.4}")}</td>
                    <td class="num">{format!("{worst:.4}")}</td>
                    <td class="num">{format!("{:.4}", x.averaged)}</td>
                    <td class="num">{format!("{:.4}", x.pooled)}</td>
                </tr>
            }
        })
        .collect();
    view! {
        <LineChart series=Signal::derive(move || series.clone()) x_label="round" y_label="held-out loss" />
        <table class="results" data-testid="federated-table">
            <caption>{format!("Held-out loss; before any round {:.4}", r.start_loss)}</caption>
            <thead><tr><th>"round"</th><th>"best client"</th><th>"worst client"</th><th>"averaged"</th><th>"pooled"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <p class="status">{format!("{} rounds in {:.1} s.", r.rounds.len(), r.seconds)}</p>
    }
}

impl super::WidgetView for crate::federated::FederatedParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <FederatedWidget state=state /> }.into_any()
    }
}
