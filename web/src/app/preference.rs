//! The `preference` widget: preference tuning of micro with LoRA on generated pairs (DPO,
//! IPO, hinge, and whatever else the core's `Objective::from_name` offers), with TRL's
//! metrics drawn live from every step's event and every evaluation's, then the same pairs'
//! chosen completions under plain SFT, scored on the same held-out pairs against the same
//! reference; greedy answers to held-out prompts before and after each. Every number is the
//! worker's: the run's `TrainEvent`s arrive unchanged.

use std::collections::BTreeMap;

use leptos::prelude::*;
use tinytune::data::Pair;
use tinytune::train::{EvalEvent, StepEvent, TrainEvent};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::preference::{DATA, PreferenceNews, PreferenceParams, SampleModel, curve, objectives};
use crate::protocol::{FromWorker, RunState, RunStats, ToWorker};
use crate::widgets::Widget;

fn params(w: &Widget) -> PreferenceParams {
    match w {
        Widget::Preference(p) => p.clone(),
        _ => PreferenceParams::default(),
    }
}

/// One press of Train, as the page knows it: the preference run (id `id`) and its SFT
/// comparison (id `sft_id`).
#[derive(Clone, Debug, Default, PartialEq)]
struct PrefRun {
    id: u32,
    sft_id: u32,
    params: PreferenceParams,
    state: Option<RunState>,
    message: String,
    /// The method in numbers, from the run's start.
    info: String,
    steps: Vec<StepEvent>,
    evals: Vec<EvalEvent>,
    stats: Option<RunStats>,
    sft_steps: Vec<StepEvent>,
    /// The comparison's own held-out loss (next-token, on the chosen completions).
    sft_eval: Option<EvalEvent>,
    /// The comparison's model on the held-out pairs: (step, loss, metrics).
    sft_pairs: Vec<(usize, f64, BTreeMap<String, f64>)>,
    prompts: Vec<Pair>,
    samples: Vec<(SampleModel, Vec<String>)>,
}

impl PrefRun {
    fn active(&self) -> bool {
        matches!(self.state, Some(RunState::Preparing | RunState::Running | RunState::Paused))
    }
}

fn fmt_signed(v: Option<&f64>, digits: usize) -> String {
    v.map(|v| format!("{v:+.digits$}")).unwrap_or_default()
}

fn fixed(v: Option<&f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

#[component]
pub fn PreferenceWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let run = RwSignal::new(None::<PrefRun>);
    let busy = Memo::new(move |_| run.with(|r| r.as_ref().is_some_and(PrefRun::active)));

    let train = move |_| {
        let params = p.get_untracked();
        error.set(None);
        // The comparison's messages: its steps, its own evaluation, its pauses.
        let sft_id = client::subscribe(move |msg| {
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.sft_id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        r.state = Some(state);
                        r.message =
                            if message.is_empty() { "SFT on the chosen completions".into() } else { format!("SFT on the chosen completions · {message}") };
                    }
                    FromWorker::Run { event: TrainEvent::Step(e), .. } => r.sft_steps.push(e),
                    FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.sft_eval = Some(e),
                    _ => {}
                }
            });
        });
        let id = client::subscribe(move |msg| {
            if let FromWorker::Status { run: id, state: RunState::Done | RunState::Cancelled | RunState::Failed, .. } = &msg {
                client::unsubscribe(*id);
                client::unsubscribe(sft_id);
            }
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        if state == RunState::Running && !message.is_empty() {
                            r.info = message.clone();
                        }
                        r.state = Some(state);
                        r.message = message;
                    }
                    FromWorker::Run { event: TrainEvent::Step(e), .. } => r.steps.push(e),
                    FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.evals.push(e),
                    FromWorker::RunStats { stats, .. } => r.stats = Some(stats),
                    FromWorker::Preference { news, .. } => match news {
                        PreferenceNews::Prompts(pairs) => r.prompts = pairs,
                        PreferenceNews::Samples { model, completions } => r.samples.push((model, completions)),
                        PreferenceNews::SftPairs { step, loss, metrics } => r.sft_pairs.push((step, loss, metrics)),
                    },
                    _ => {}
                }
            });
        });
        run.set(Some(PrefRun { id, sft_id, params: params.clone(), state: Some(RunState::Preparing), message: "starting".into(), ..Default::default() }));
        client::send(&ToWorker::Preference { run: id, sft: sft_id, params });
    };
    let pause_resume = move |_| {
        if let Some(r) = run.get_untracked().filter(PrefRun::active) {
            client::send(&if r.state == Some(RunState::Paused) { ToWorker::Resume { run: r.id } } else { ToWorker::Pause { run: r.id } });
        }
    };
    let cancel = move |_| {
        if let Some(r) = run.get_untracked().filter(PrefRun::active) {
            client::send(&ToWorker::Cancel { run: r.id });
        }
    };

    // Per step, from each step's own batch: TRL's training metrics.
    let steps = move |key: &'static str| run.with(|r| r.as_ref().map(|r| curve(r.steps.iter().map(|e| (e.step, &e.metrics)), key)).unwrap_or_default());
    let evals = move |key: &'static str| run.with(|r| r.as_ref().map(|r| curve(r.evals.iter().map(|e| (e.step, &e.metrics)), key)).unwrap_or_default());
    let sft = move |key: &'static str| run.with(|r| r.as_ref().map(|r| curve(r.sft_pairs.iter().map(|(s, _, m)| (*s, m)), key)).unwrap_or_default());
    let name = move || run.with(|r| r.as_ref().map(|r| r.params.objective.clone()).unwrap_or_default());
    let loss_series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let o = &r.params.objective;
            let mut v = vec![Series {
                label: format!("{o} loss (train batch)"),
                color: COLORS[0],
                points: r.steps.iter().map(|e| (e.step as f64, e.loss as f64)).collect(),
                dashed: false,
            }];
            if !r.evals.is_empty() {
                v.push(Series {
                    label: format!("{o} loss (held-out pairs)"),
                    color: COLORS[0],
                    points: r.evals.iter().map(|e| (e.step as f64, e.eval_loss as f64)).collect(),
                    dashed: true,
                });
            }
            if !r.sft_pairs.is_empty() {
                v.push(Series {
                    label: format!("SFT on chosen: {o} loss (held-out)"),
                    color: COLORS[1],
                    points: r.sft_pairs.iter().map(|(s, l, _)| (*s as f64, *l)).collect(),
                    dashed: true,
                });
            }
            v
        })
    });
    let reward_series = Signal::derive(move || {
        let mut v = vec![
            Series { label: "rewards/chosen".into(), color: COLORS[2], points: steps("rewards/chosen"), dashed: false },
            Series { label: "rewards/rejected".into(), color: COLORS[1], points: steps("rewards/rejected"), dashed: false },
            Series { label: "rewards/margins".into(), color: COLORS[0], points: steps("rewards/margins"), dashed: false },
        ];
        let held = evals("rewards/margins");
        if !held.is_empty() {
            v.push(Series { label: "rewards/margins (held-out)".into(), color: COLORS[0], points: held, dashed: true });
        }
        let sft = sft("rewards/margins");
        if !sft.is_empty() {
            v.push(Series { label: "SFT: rewards/margins (held-out)".into(), color: COLORS[3], points: sft, dashed: true });
        }
        v.retain(|s| !s.points.is_empty());
        v
    });
    let accuracy_series = Signal::derive(move || {
        let mut v = vec![
            Series { label: "rewards/accuracies (train batch)".into(), color: COLORS[0], points: steps("rewards/accuracies"), dashed: false },
            Series { label: "held-out pairs".into(), color: COLORS[0], points: evals("rewards/accuracies"), dashed: true },
            Series { label: "SFT on chosen (held-out)".into(), color: COLORS[3], points: sft("rewards/accuracies"), dashed: true },
        ];
        v.retain(|s| !s.points.is_empty());
        v
    });
    // TRL's rewards are β times the log-ratio to the reference, or (ORPO, no reference) β
    // times the per-token average log-probability, and its logps then per-token averages.
    let referenced = Memo::new(move |_| run.with(|r| r.as_ref().map(|r| r.params.clone()).unwrap_or_else(|| p.get()).objective().needs_reference()));
    // Each completion's log-probability under the policy: a margin can grow while the
    // chosen completion falls.
    let logp_series = Signal::derive(move || {
        let mut v = vec![
            Series { label: "logps/chosen (train batch)".into(), color: COLORS[2], points: steps("logps/chosen"), dashed: false },
            Series { label: "logps/rejected (train batch)".into(), color: COLORS[1], points: steps("logps/rejected"), dashed: false },
            Series { label: "logps/chosen (held-out)".into(), color: COLORS[2], points: evals("logps/chosen"), dashed: true },
            Series { label: "logps/rejected (held-out)".into(), color: COLORS[1], points: evals("logps/rejected"), dashed: true },
            Series { label: "SFT: logps/chosen (held-out)".into(), color: COLORS[3], points: sft("logps/chosen"), dashed: true },
            Series { label: "SFT: logps/rejected (held-out)".into(), color: COLORS[4], points: sft("logps/rejected"), dashed: true },
        ];
        v.retain(|s| !s.points.is_empty());
        v
    });
    let num = move |f: fn(&PreferenceParams) -> String| move || f(&p.get());
    let objective_options = objectives().into_iter().map(|o| (o, o)).collect::<Vec<_>>();
    let data_options = DATA
        .iter()
        .map(|d| {
            let text = match *d {
                "story-qa-sentence-pairs" => "story-qa: a whole sentence over the bare answer (style)",
                "story-qa-pairs" => "story-qa: the right answer over a wrong one (correctness)",
                "sentiment-sentence-pairs" => "sentiment: a sentence over the bare label (style)",
                "sentiment-pairs" => "sentiment: the right label over the wrong one (correctness)",
                _ => "json-extract: the right record over one with a field changed (correctness)",
            };
            (*d, text)
        })
        .collect::<Vec<_>>();

    view! {
        <div
            class="widget preference"
            data-widget="preference"
            data-losses=move || run.with(|r| r.as_ref().map(|r| r.steps.iter().map(|e| e.loss.to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default())
        >
            <div class="controls">
                {choice("objective", "objective", objective_options, move || p.get().objective, set)}
                {field("β (beta)", "beta", num(|p| p.beta.to_string()), set)}
                {choice("pairs", "data", data_options, move || p.get().data.to_string(), set)}
                {field("steps", "steps", num(|p| p.steps.to_string()), set)}
                {field("learning rate", "lr", num(|p| p.lr.to_string()), set)}
                {field("pairs per step", "batch", num(|p| p.batch.to_string()), set)}
                {field("LoRA rank (alpha = 2 × rank)", "rank", num(|p| p.rank.to_string()), set)}
                <label class="field check">
                    <input type="checkbox" data-param="sft" prop:checked=move || p.get().sft on:change=move |ev| set("sft", event_target_checked(&ev).to_string()) />
                    <span>"also run SFT on the chosen completions"</span>
                </label>
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons">
                <button data-testid="train" on:click=train disabled=move || busy.get()>"Train"</button>
                <button data-testid="pause" on:click=pause_resume disabled=move || !busy.get()>
                    {move || if run.with(|r| r.as_ref().and_then(|r| r.state)) == Some(RunState::Paused) { "Resume" } else { "Pause" }}
                </button>
                <button data-testid="cancel" on:click=cancel disabled=move || !busy.get()>"Stop"</button>
            </div>
            {move || run.get().map(status_view)}
            <LineChart series=loss_series x_label="step" y_label="loss" />
            {move || if referenced.get() {
                view! { <LineChart series=reward_series x_label="step" y_label="reward: β × (log π − log ref)" /> }.into_any()
            } else {
                view! { <LineChart series=reward_series x_label="step" y_label="reward: β × log π per token (no reference)" /> }.into_any()
            }}
            <LineChart series=accuracy_series x_label="step" y_label="share of pairs: chosen reward higher" />
            {move || if referenced.get() {
                view! { <LineChart series=logp_series x_label="step" y_label="log p of the completion (nats)" /> }.into_any()
            } else {
                view! { <LineChart series=logp_series x_label="step" y_label="log p per token of the completion (nats)" /> }.into_any()
            }}
            {move || run.get().filter(|r| !r.evals.is_empty()).map(evals_view)}
            {move || run.get().filter(|r| !r.evals.is_empty() || !r.sft_pairs.is_empty()).map(compare_view)}
            {move || run.get().filter(|r| !r.prompts.is_empty()).map(move |r| samples_view(r, name()))}
            <details class="scale">
                <summary>"Run this at scale"</summary>
                <p>
                    "The same preference run with the native " <code>"tinytune"</code> " binary (add " <code>"--backend wgpu"</code> " or "
                    <code>"--backend cuda"</code> " for a GPU; " <code>"--reference DIR"</code> " scores the pairs with another model):"
                </p>
                <pre data-testid="command">{move || p.get().command()}</pre>
            </details>
        </div>
    }
}

fn status_view(r: PrefRun) -> impl IntoView {
    let total = r.params.steps;
    let state = r.state.unwrap_or(RunState::Preparing);
    let text = match state {
        RunState::Preparing => format!("preparing: {}", r.message),
        RunState::Running if r.message.is_empty() => "running".into(),
        RunState::Running => format!("running · {}", r.message),
        RunState::Paused => "paused".into(),
        RunState::Done if !r.info.is_empty() => format!("done · {}", r.info),
        RunState::Done => "done".into(),
        RunState::Cancelled => "stopped".into(),
        RunState::Failed => format!("failed: {}", r.message),
    };
    let last = r.steps.last().cloned();
    let sft_last = r.sft_steps.last().cloned();
    let stats = r.stats.clone().map(|s| {
        let peak = s.peak_bytes.map(|b| format!(" · peak memory {}", tinytune::memory::human(b))).unwrap_or_default();
        format!(" · {:.2} s per step on the {}{peak}", s.step_seconds, s.device)
    });
    view! {
        <p class="status">
            <span data-testid="run-state" data-state=format!("{state:?}")>{text}</span>
            {last.map(|e| view! {
                " · " {r.params.objective.clone()} " step " <span data-testid="step">{e.step}</span> {format!(" of {total}")}
                " · loss " <span data-testid="loss">{format!("{:.4}", e.loss)}</span>
                {format!(
                    " · batch accuracy {} · margin {}",
                    fixed(e.metrics.get("rewards/accuracies"), 2),
                    fmt_signed(e.metrics.get("rewards/margins"), 3)
                )}
            })}
            {sft_last.map(|e| format!(" · SFT step {} of {total}, loss {:.4}", e.step, e.loss))}
            {stats}
        </p>
    }
}

/// The preference run's held-out evaluations, one row each.
fn evals_view(r: PrefRun) -> impl IntoView {
    let rows = r
        .evals
        .iter()
        .map(|e| {
            let m = &e.metrics;
            view! {
                <tr>
                    <td class="num">{e.step}</td>
                    <td class="num" data-testid="eval-loss">{format!("{:.4}", e.eval_loss)}</td>
                    <td class="num" data-testid="eval-accuracy">{fixed(m.get("rewards/accuracies"), 3)}</td>
                    <td class="num" data-testid="eval-margin">{fmt_signed(m.get("rewards/margins"), 3)}</td>
                    <td class="num">{fmt_signed(m.get("rewards/chosen"), 3)}</td>
                    <td class="num">{fmt_signed(m.get("rewards/rejected"), 3)}</td>
                    <td class="num">{fixed(m.get("logps/chosen"), 2)}</td>
                    <td class="num">{fixed(m.get("logps/rejected"), 2)}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <table class="results" data-testid="pref-evals">
            <caption>{format!(
                "{} on the {} held-out pairs at each evaluation: TRL's eval loss, rewards/accuracies, rewards/margins, rewards/chosen, rewards/rejected, logps/chosen and logps/rejected",
                r.params.objective,
                crate::preference::EVAL_PAIRS
            )}</caption>
            <thead><tr>
                <th>"step"</th><th>"loss"</th><th>"accuracy"</th><th>"margin"</th><th>"reward chosen"</th>
                <th>"reward rejected"</th><th>"log p chosen"</th><th>"log p rejected"</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// The preference run's last evaluation beside the SFT comparison's, scored the same way.
fn compare_view(r: PrefRun) -> impl IntoView {
    let o = r.params.objective.clone();
    let row = |label: String, step: usize, loss: f64, m: &BTreeMap<String, f64>, which: &'static str| {
        view! {
            <tr data-model=which>
                <td>{label}</td>
                <td class="num">{step}</td>
                <td class="num" data-testid="cmp-loss">{format!("{loss:.4}")}</td>
                <td class="num" data-testid="cmp-accuracy">{fixed(m.get("rewards/accuracies"), 3)}</td>
                <td class="num" data-testid="cmp-margin">{fmt_signed(m.get("rewards/margins"), 3)}</td>
                <td class="num">{fmt_signed(m.get("rewards/chosen"), 3)}</td>
                <td class="num">{fmt_signed(m.get("rewards/rejected"), 3)}</td>
                <td class="num">{fixed(m.get("logps/chosen"), 2)}</td>
                <td class="num">{fixed(m.get("logps/rejected"), 2)}</td>
            </tr>
        }
    };
    let mut rows = Vec::new();
    if let Some(e) = r.evals.last() {
        rows.push(row(format!("{o} on the pairs"), e.step, e.eval_loss as f64, &e.metrics, "preference"));
    }
    if let Some((step, loss, m)) = r.sft_pairs.last() {
        rows.push(row("SFT on chosen".into(), *step, *loss, m, "sft"));
    }
    let sft_own = r.sft_eval.as_ref().map(|e| {
        format!(" The SFT model's own held-out loss, next-token on the chosen completions, is {:.4} nats per token after {} steps.", e.eval_loss, e.step)
    });
    view! {
        <table class="results" data-testid="pref-compare">
            <caption>{format!("What {o} adds over SFT on the chosen completions: both models scored on the same held-out pairs against the same reference, with the {o} loss")}</caption>
            <thead><tr>
                <th>"model"</th><th>"step"</th><th>"loss"</th><th>"accuracy"</th><th>"margin"</th>
                <th>"reward chosen"</th><th>"reward rejected"</th><th>"log p chosen"</th><th>"log p rejected"</th>
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
        {sft_own.map(|s| view! { <p class="status" data-testid="sft-own">{s}</p> })}
    }
}

/// Held-out prompts with both completions of their pair and each model's greedy answer.
fn samples_view(r: PrefRun, objective: String) -> impl IntoView {
    let of = |model: SampleModel| r.samples.iter().find(|(m, _)| *m == model).map(|(_, c)| c.clone()).unwrap_or_default();
    let (before, after, sft) = (of(SampleModel::Reference), of(SampleModel::Preference), of(SampleModel::Sft));
    let with_sft = r.params.sft;
    let rows = r
        .prompts
        .iter()
        .enumerate()
        .map(|(i, pair)| {
            // The question (the prompt's last lines): the story before it is long.
            let tail: String = pair.prompt.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" ⏎ ");
            let cell = |v: &Vec<String>| match v.get(i) {
                Some(s) if s.trim().is_empty() => "⏎ (the line ends at once)".to_string(),
                Some(s) => s.clone(),
                None => "…".into(),
            };
            let mark = |v: &Vec<String>| match v.get(i) {
                Some(s) if s.trim() == pair.chosen.trim() => "right",
                Some(s) if s.trim() == pair.rejected.trim() => "wrong",
                _ => "",
            };
            view! {
                <tr>
                    <td><code>{tail}</code></td>
                    <td><code>{pair.chosen.trim().to_string()}</code></td>
                    <td><code>{pair.rejected.trim().to_string()}</code></td>
                    <td class=mark(&before)><code data-testid="sample-before">{cell(&before)}</code></td>
                    <td class=mark(&after)><code data-testid="sample-after">{cell(&after)}</code></td>
                    {with_sft.then(|| view! { <td class=mark(&sft)><code data-testid="sample-sft">{cell(&sft)}</code></td> })}
                </tr>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <table class="results" data-testid="pref-samples">
            <caption>"Held-out prompts, answered greedily (to the end of the line)"</caption>
            <thead><tr>
                <th>"prompt (end)"</th><th>"chosen"</th><th>"rejected"</th><th>"before (the reference)"</th>
                <th>{format!("after {objective}")}</th>
                {with_sft.then(|| view! { <th>"after SFT on chosen"</th> })}
            </tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

impl super::WidgetView for PreferenceParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <PreferenceWidget state=state /> }.into_any()
    }
}
