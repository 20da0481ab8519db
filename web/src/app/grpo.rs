//! The `grpo` widget: a short SFT of micro on a task's answers, then GRPO on the task's
//! verifiable reward, with the batch reward drawn live from every step's event, the held-out
//! reward (sampled and greedy) before GRPO and at each evaluation, and each step's first
//! sampled groups with every completion's reward and advantage. Every number is the
//! worker's: the runs' `TrainEvent`s arrive unchanged, and the groups are the rollout's own.

use std::collections::BTreeMap;

use leptos::prelude::*;
use tinytune::train::grpo::SampledGroup;
use tinytune::train::{EvalEvent, StepEvent, TrainEvent};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::grpo::{EVAL_PROMPTS, GrpoNews, GrpoParams, TASKS, short_prompt, show_completion};
use crate::preference::curve;
use crate::protocol::{FromWorker, RunState, RunStats, ToWorker};
use crate::widgets::Widget;

fn params(w: &Widget) -> GrpoParams {
    match w {
        Widget::Grpo(p) => p.clone(),
        _ => GrpoParams::default(),
    }
}

/// One held-out evaluation: step (0 before GRPO), the loss on the reference answers, and
/// the metrics (`reward`, `greedy_reward`).
type Held = (usize, f32, BTreeMap<String, f64>);

/// One press of Train, as the page knows it: stage 1 (id `sft_id`) and stage 2 (id `id`).
#[derive(Clone, Debug, Default, PartialEq)]
struct GrpoRun {
    id: u32,
    sft_id: u32,
    params: GrpoParams,
    state: Option<RunState>,
    message: String,
    /// When Train was pressed and when the run ended (milliseconds, the page's clock).
    started_ms: f64,
    ended_ms: Option<f64>,
    sft_steps: Vec<StepEvent>,
    sft_eval: Option<EvalEvent>,
    steps: Vec<StepEvent>,
    held: Vec<Held>,
    stats: Option<RunStats>,
    /// The last step's first groups.
    groups: Option<(usize, Vec<SampledGroup>)>,
}

impl GrpoRun {
    fn active(&self) -> bool {
        matches!(self.state, Some(RunState::Preparing | RunState::Running | RunState::Paused))
    }

    fn seconds(&self) -> f64 {
        (self.ended_ms.unwrap_or_else(js_sys::Date::now) - self.started_ms) / 1000.0
    }
}

fn fixed(v: Option<&f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

#[component]
pub fn GrpoWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let run = RwSignal::new(None::<GrpoRun>);
    let busy = Memo::new(move |_| run.with(|r| r.as_ref().is_some_and(GrpoRun::active)));

    let train = move |_| {
        let params = p.get_untracked();
        error.set(None);
        // Stage 1's messages: its steps, its held-out loss, its pauses.
        let sft_id = client::subscribe(move |msg| {
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.sft_id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        r.state = Some(state);
                        r.message = if message.is_empty() { "stage 1: SFT".into() } else { format!("stage 1: SFT · {message}") };
                    }
                    FromWorker::Run { event: TrainEvent::Step(e), .. } => r.sft_steps.push(e),
                    FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.sft_eval = Some(e),
                    _ => {}
                }
            });
        });
        let id = client::subscribe(move |msg| {
            let end = matches!(&msg, FromWorker::Status { state: RunState::Done | RunState::Cancelled | RunState::Failed, .. });
            if let (true, FromWorker::Status { run: id, .. }) = (end, &msg) {
                client::unsubscribe(*id);
                client::unsubscribe(sft_id);
            }
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        r.state = Some(state);
                        r.message = if state == RunState::Running && !message.is_empty() { format!("stage 2: GRPO · {message}") } else { message };
                        if end {
                            r.ended_ms = Some(js_sys::Date::now());
                        }
                    }
                    FromWorker::Run { event: TrainEvent::Step(e), .. } => r.steps.push(e),
                    FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.held.push((e.step, e.eval_loss, e.metrics)),
                    FromWorker::RunStats { stats, .. } => r.stats = Some(stats),
                    FromWorker::Grpo { news, .. } => match news {
                        GrpoNews::Before { eval_loss, metrics } => r.held.insert(0, (0, eval_loss, metrics)),
                        GrpoNews::Groups { step, groups } => r.groups = Some((step, groups)),
                    },
                    _ => {}
                }
            });
        });
        run.set(Some(GrpoRun {
            id,
            sft_id,
            params: params.clone(),
            state: Some(RunState::Preparing),
            message: "starting".into(),
            started_ms: js_sys::Date::now(),
            ..Default::default()
        }));
        client::send(&ToWorker::Grpo { run: id, sft: sft_id, params });
    };
    let pause_resume = move |_| {
        if let Some(r) = run.get_untracked().filter(GrpoRun::active) {
            client::send(&if r.state == Some(RunState::Paused) { ToWorker::Resume { run: r.id } } else { ToWorker::Pause { run: r.id } });
        }
    };
    let cancel = move |_| {
        if let Some(r) = run.get_untracked().filter(GrpoRun::active) {
            client::send(&ToWorker::Cancel { run: r.id });
        }
    };

    let steps = move |key: &'static str| run.with(|r| r.as_ref().map(|r| curve(r.steps.iter().map(|e| (e.step, &e.metrics)), key)).unwrap_or_default());
    let held = move |key: &'static str| run.with(|r| r.as_ref().map(|r| curve(r.held.iter().map(|(s, _, m)| (*s, m)), key)).unwrap_or_default());
    let sft_series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let mut v = vec![Series {
                label: "SFT loss (train batch)".into(),
                color: COLORS[0],
                points: r.sft_steps.iter().map(|e| (e.step as f64, e.loss as f64)).collect(),
                dashed: false,
            }];
            if let Some(e) = &r.sft_eval {
                v.push(Series {
                    label: "SFT loss (held-out answers)".into(),
                    color: COLORS[0],
                    points: vec![(e.step as f64, e.eval_loss as f64)],
                    dashed: true,
                });
            }
            v
        })
    });
    let reward_series = Signal::derive(move || {
        let mut v = vec![
            Series { label: "reward (batch)".into(), color: COLORS[0], points: steps("reward"), dashed: false },
            Series { label: "frac_reward_zero_std".into(), color: COLORS[4], points: steps("frac_reward_zero_std"), dashed: false },
            Series { label: "held-out reward (sampled)".into(), color: COLORS[2], points: held("reward"), dashed: true },
            Series { label: "held-out greedy_reward".into(), color: COLORS[1], points: held("greedy_reward"), dashed: true },
        ];
        v.retain(|s| !s.points.is_empty());
        v
    });
    let kl_series = Signal::derive(move || {
        let mut v = vec![Series { label: "kl (batch, to the SFT model)".into(), color: COLORS[3], points: steps("kl"), dashed: false }];
        v.retain(|s| !s.points.is_empty());
        v
    });
    let with_kl = Memo::new(move |_| run.with(|r| r.as_ref().map(|r| r.params.beta > 0.0).unwrap_or_else(|| p.get().beta > 0.0)));
    let num = move |f: fn(&GrpoParams) -> String| move || f(&p.get());
    let task_options = TASKS
        .iter()
        .map(|t| {
            let text = match *t {
                "sentiment" => "sentiment: the label, happy or sad",
                "story-qa" => "story-qa: the answer, word for word from the story (slower)",
                _ => "json-extract: the right JSON record (much slower)",
            };
            (*t, text)
        })
        .collect::<Vec<_>>();

    view! {
        <div
            class="widget grpo"
            data-widget="grpo"
            data-rewards=move || run.with(|r| r.as_ref().map(|r| r.steps.iter().filter_map(|e| e.metrics.get("reward")).map(f64::to_string).collect::<Vec<_>>().join(",")).unwrap_or_default())
        >
            <div class="controls">
                {choice("task", "task", task_options, move || p.get().task.to_string(), set)}
                {field("SFT steps (stage 1)", "sft_steps", num(|p| p.sft_steps.to_string()), set)}
                {field("GRPO steps", "steps", num(|p| p.steps.to_string()), set)}
                {field("prompts per step", "prompts", num(|p| p.prompts.to_string()), set)}
                {field("group size G", "group_size", num(|p| p.group_size.to_string()), set)}
                {field("learning rate", "lr", num(|p| p.lr.to_string()), set)}
                {field("β (KL to the SFT model)", "beta", num(|p| p.beta.to_string()), set)}
                {field("temperature", "temperature", num(|p| p.temperature.to_string()), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <p class="status" data-testid="expected">
                {move || format!(
                    "{} · on the CPU in this page: {} (stage 1, {} SFT steps; stage 2, {} GRPO steps of {} completions; {} held-out evaluations of {} prompts)",
                    p.get().task,
                    p.get().expected_duration(),
                    p.get().sft_steps,
                    p.get().steps,
                    p.get().batch(),
                    p.get().evaluations(),
                    EVAL_PROMPTS
                )}
            </p>
            <div class="buttons">
                <button data-testid="train" on:click=train disabled=move || busy.get()>"Train"</button>
                <button data-testid="pause" on:click=pause_resume disabled=move || !busy.get()>
                    {move || if run.with(|r| r.as_ref().and_then(|r| r.state)) == Some(RunState::Paused) { "Resume" } else { "Pause" }}
                </button>
                <button data-testid="cancel" on:click=cancel disabled=move || !busy.get()>"Stop"</button>
            </div>
            {move || run.get().map(status_view)}
            <LineChart series=sft_series x_label="stage 1: SFT step" y_label="loss" />
            <LineChart series=reward_series x_label="stage 2: GRPO step" y_label="reward (share of right answers)" />
            {move || with_kl.get().then(|| view! { <LineChart series=kl_series x_label="stage 2: GRPO step" y_label="KL estimate per token" /> })}
            {move || run.get().filter(|r| !r.held.is_empty()).map(held_view)}
            {move || run.get().and_then(|r| r.groups.clone()).map(groups_view)}
            <details class="scale">
                <summary>"Run this at scale"</summary>
                <p>
                    "The same two stages with the native " <code>"tinytune"</code> " binary: SFT, the SFT model's held-out reward (the \"before\" row), then GRPO on the SFT model (add "
                    <code>"--backend wgpu"</code> " or " <code>"--backend cuda"</code> " for a GPU; "
                    <code>"scripts/grpo-curves.sh"</code> " runs a longer recipe):"
                </p>
                <pre data-testid="command">{move || p.get().commands()}</pre>
            </details>
        </div>
    }
}

fn status_view(r: GrpoRun) -> impl IntoView {
    let state = r.state.unwrap_or(RunState::Preparing);
    let seconds = r.seconds();
    let text = match state {
        RunState::Preparing => format!("preparing: {}", r.message),
        RunState::Running if r.message.is_empty() => "running".into(),
        RunState::Running => format!("running · {}", r.message),
        RunState::Paused => "paused".into(),
        RunState::Done => format!("done in {seconds:.0} s"),
        RunState::Cancelled => "stopped".into(),
        RunState::Failed => format!("failed: {}", r.message),
    };
    let p = &r.params;
    let sft = r.sft_steps.last().map(|e| format!(" · SFT step {} of {}, loss {:.4}", e.step, p.sft_steps, e.loss));
    let last = r.steps.last().cloned();
    let stats = r.stats.clone().map(|s| format!(" · {:.2} s per GRPO step on the {}", s.step_seconds, s.device));
    view! {
        <p class="status">
            <span data-testid="run-state" data-state=format!("{state:?}") data-seconds=format!("{seconds:.1}")>{text}</span>
            {sft}
            {last.map(|e| view! {
                " · GRPO step " <span data-testid="step">{e.step}</span> {format!(" of {}", p.steps)}
                " · batch reward " <span data-testid="reward">{fixed(e.metrics.get("reward"), 3)}</span>
                {format!(
                    " · frac_reward_zero_std {} · mean completion {} tokens{}",
                    fixed(e.metrics.get("frac_reward_zero_std"), 2),
                    fixed(e.metrics.get("completions/mean_length"), 1),
                    e.metrics.get("kl").map(|k| format!(" · kl {k:.4}")).unwrap_or_default()
                )}
            })}
            {stats}
        </p>
    }
}

/// The held-out reward before GRPO (step 0) and at each evaluation.
fn held_view(r: GrpoRun) -> impl IntoView {
    let rows = r
        .held
        .iter()
        .map(|(step, loss, m)| {
            view! {
                <tr>
                    <td class="num">{if *step == 0 { "before GRPO (the SFT model)".to_string() } else { step.to_string() }}</td>
                    <td class="num" data-testid="held-reward">{fixed(m.get("reward"), 3)}</td>
                    <td class="num" data-testid="held-greedy">{fixed(m.get("greedy_reward"), 3)}</td>
                    <td class="num">{format!("{loss:.4}")}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let g = r.params.group_size;
    view! {
        <table class="results" data-testid="grpo-evals">
            <caption>{format!(
                "The held-out reward on {EVAL_PROMPTS} prompts the run never trains on: {g} completions sampled per prompt as in training (reward), and the greedy answer (greedy_reward); and the loss on their reference answers"
            )}</caption>
            <thead><tr><th>"GRPO step"</th><th>"reward (sampled)"</th><th>"greedy_reward"</th><th>"answer loss"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

/// A step's first groups: each completion (plain text), its reward and its advantage, signed.
fn groups_view((step, groups): (usize, Vec<SampledGroup>)) -> impl IntoView {
    let groups = groups
        .into_iter()
        .map(|g| {
            let mean = g.rewards.iter().sum::<f64>() / g.rewards.len().max(1) as f64;
            let rows = g
                .completions
                .iter()
                .zip(g.rewards.iter().zip(&g.advantages))
                .map(|(c, (reward, adv))| {
                    let class = if *adv > 1e-9 {
                        "num pos"
                    } else if *adv < -1e-9 {
                        "num neg"
                    } else {
                        "num"
                    };
                    let mark = if *reward > 0.0 { "right" } else { "wrong" };
                    view! {
                        <tr data-testid="completion" data-reward=reward.to_string() data-advantage=adv.to_string()>
                            <td class=mark><code>{show_completion(c)}</code></td>
                            <td class="num">{format!("{reward:.0}")}</td>
                            <td class=class>{format!("{adv:+.2}")}</td>
                        </tr>
                    }
                })
                .collect::<Vec<_>>();
            view! {
                <table class="results group" data-testid="group">
                    <caption>
                        <code>{short_prompt(&g.prompt, 70)}</code>
                        " · expected "<code>{g.expected.clone()}</code>
                        {format!(" · group mean reward {mean:.2}")}
                    </caption>
                    <thead><tr><th>"completion"</th><th>"reward"</th><th>"advantage"</th></tr></thead>
                    <tbody>{rows}</tbody>
                </table>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <div class="groups" data-testid="grpo-groups" data-step=step.to_string()>
            <p class="status">{format!(
                "Step {step}'s first sampled groups. A completion's advantage is its reward minus its group's mean, over the group's standard deviation: + pushes it up, − down, and a group whose completions all scored the same teaches nothing."
            )}</p>
            {groups}
        </div>
    }
}

impl super::WidgetView for GrpoParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <GrpoWidget state=state /> }.into_any()
    }
}
