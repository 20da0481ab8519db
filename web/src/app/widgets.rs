//! The widget components. Each one edits its `RwSignal<Widget>` (which the page mirrors into
//! the URL) and asks the worker for every number it shows.

use leptos::prelude::*;
use tinytune::ModelConfig;
use tinytune::data::Task;
use tinytune::methods::MethodKind;
use tinytune::train::{StepEvent, TrainEvent};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use crate::decide::{NODES, Node};
use crate::protocol::{CompareRow, FromWorker, RunState, RunStats, Samples, ToWorker};
use crate::widgets::{GenerateParams, TrainParams, Widget};

/// Sets one parameter from a control, keeping the widget valid: a bad value is reported
/// next to the controls and not applied.
pub(super) fn setter(state: RwSignal<Widget>, error: RwSignal<Option<String>>) -> impl Fn(&'static str, String) + Copy {
    move |key, value| {
        let mut w = state.get_untracked();
        match w.set(key, value.trim()) {
            Ok(()) => {
                state.set(w);
                error.set(None);
            }
            Err(e) => error.set(Some(e)),
        }
    }
}

/// A labelled text/number input bound to one parameter.
pub(super) fn field(
    label: &'static str,
    key: &'static str,
    value: impl Fn() -> String + Send + Sync + 'static,
    set: impl Fn(&'static str, String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    view! {
        <label class="field">
            <span>{label}</span>
            <input data-param=key prop:value=value on:change=move |ev| set(key, event_target_value(&ev)) />
        </label>
    }
}

/// The learning rate the CLI would take for the widget's method and optimizer when `--lr`
/// is left out (`OptimKind::suggested_lr_for`, measured by scripts/lr-sweep.sh).
fn suggested_lr(p: &TrainParams) -> String {
    let Ok(kind) = p.optimizer.parse::<tinytune::optim::OptimKind>() else { return String::new() };
    format!("suggested for {} with {}: {}", p.method.name(), kind.name(), kind.suggested_lr_for(p.method))
}

/// A labelled select bound to one parameter.
pub(super) fn choice(
    label: &'static str,
    key: &'static str,
    options: Vec<(&'static str, &'static str)>,
    value: impl Fn() -> String + Copy + Send + Sync + 'static,
    set: impl Fn(&'static str, String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    view! {
        <label class="field">
            <span>{label}</span>
            <select data-param=key on:change=move |ev| set(key, event_target_value(&ev))>
                {options.into_iter().map(|(v, text)| view! { <option value=v selected=move || value() == v>{text}</option> }).collect::<Vec<_>>()}
            </select>
        </label>
    }
}

fn task_options() -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<(&'static str, &'static str)> = Task::ALL.iter().map(|t| (t.name(), t.name())).collect();
    v.push(("stories", "stories (more pre-training)"));
    v
}

/// A run's training speed for its status line: every step's tokens over the seconds those
/// steps took. One step's rate moves by a third from step to step, and the run's elapsed
/// time also counts pauses and evaluations.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Throughput {
    tokens: usize,
    secs: f64,
}

impl Throughput {
    pub(super) fn add(&mut self, step: &StepEvent) {
        self.tokens += step.tokens;
        self.secs += step.tokens as f64 / step.tokens_per_s.max(1e-9);
    }

    pub(super) fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.secs.max(1e-9)
    }
}

/// One run of the train widget, as the page knows it.
#[derive(Clone, Debug, PartialEq)]
struct RunView {
    id: u32,
    label: String,
    state: RunState,
    message: String,
    steps: usize,
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
    /// The same points against seconds of training (to compare runs per second).
    train_t: Vec<(f64, f64)>,
    eval_t: Vec<(f64, f64)>,
    last: Option<StepEvent>,
    /// Updates skipped by the loss scaler (an FP16 gradient overflowed).
    skipped: usize,
    /// The status line's tokens/s.
    throughput: Throughput,
    /// What the method did (trainable share, NF4 base size), kept after the run ends.
    info: String,
    /// Optimizer state, peak memory and time per step, as the worker measured them.
    stats: Option<RunStats>,
    compare: Option<(Vec<CompareRow>, f32, f32)>,
    /// A soft prompt's virtual tokens and the real tokens nearest each.
    nearest: Option<Vec<Vec<(String, f32)>>>,
}

impl RunView {
    fn active(&self) -> bool {
        matches!(self.state, RunState::Preparing | RunState::Running | RunState::Paused)
    }
}

fn train_params(w: &Widget) -> TrainParams {
    match w {
        Widget::Train(p) => p.clone(),
        _ => TrainParams::default(),
    }
}

#[component]
pub fn TrainWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| train_params(&state.get()));
    let runs = RwSignal::new(Vec::<RunView>::new());
    let active = Memo::new(move |_| runs.with(|rs| rs.iter().rev().find(|r| r.active()).map(|r| (r.id, r.state))));

    // Runs a sweep has yet to start, in order.
    let queue = RwSignal::new(Vec::<TrainParams>::new());
    let launch = move |params: TrainParams| {
        let label = params.label();
        let id = client::subscribe(move |msg| {
            if let FromWorker::Status { run, state: RunState::Done | RunState::Cancelled | RunState::Failed, .. } = &msg {
                client::unsubscribe(*run);
            }
            if let FromWorker::Status { state: RunState::Failed | RunState::Cancelled, .. } = &msg {
                queue.set(Vec::new());
            }
            runs.update(|rs| {
                let Some(r) = rs.iter_mut().find(|r| Some(r.id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        if state == RunState::Running && !message.is_empty() {
                            r.info = message.clone();
                        }
                        r.state = state;
                        r.message = message;
                    }
                    FromWorker::Run { event, .. } => match event {
                        // The worker's status line carries the start's summary.
                        TrainEvent::Start(_) => {}
                        TrainEvent::Step(event) => {
                            r.train.push((event.step as f64, event.loss as f64));
                            r.train_t.push((event.elapsed_s, event.loss as f64));
                            r.skipped += event.skipped as usize;
                            r.throughput.add(&event);
                            r.last = Some(event);
                        }
                        TrainEvent::Eval(e) => {
                            r.eval.push((e.step as f64, e.eval_loss as f64));
                            r.eval_t.push((e.elapsed_s, e.eval_loss as f64));
                        }
                        TrainEvent::Nearest(n) => r.nearest = Some(n.tokens),
                    },
                    FromWorker::RunStats { stats, .. } => r.stats = Some(stats),
                    FromWorker::Compare { rows, stories_before, stories_after, .. } => r.compare = Some((rows, stories_before, stories_after)),
                    _ => {}
                }
            });
        });
        runs.update(|rs| {
            rs.push(RunView {
                id,
                label,
                state: RunState::Preparing,
                message: "starting".into(),
                steps: params.steps,
                train: vec![],
                eval: vec![],
                train_t: vec![],
                eval_t: vec![],
                last: None,
                skipped: 0,
                throughput: Throughput::default(),
                info: String::new(),
                stats: None,
                compare: None,
                nearest: None,
            })
        });
        client::send(&ToWorker::Train { run: id, params });
    };
    // A sweep's next run starts when the previous one has finished.
    Effect::new(move |_| {
        if active.get().is_none()
            && let Some(next) = queue.try_update(|q| (!q.is_empty()).then(|| q.remove(0))).flatten()
        {
            launch(next);
        }
    });
    let start = move |_| match p.get_untracked().sweep_runs() {
        Ok(mut plans) => {
            let first = plans.remove(0);
            queue.set(plans);
            launch(first);
        }
        Err(e) => error.set(Some(e)),
    };
    let pause_resume = move |_| {
        if let Some((run, s)) = active.get_untracked() {
            client::send(&if s == RunState::Paused { ToWorker::Resume { run } } else { ToWorker::Pause { run } });
        }
    };
    let cancel = move |_| {
        queue.set(Vec::new());
        if let Some((run, _)) = active.get_untracked() {
            client::send(&ToWorker::Cancel { run });
        }
    };
    // Plot against steps, or against seconds of training (MeZO's steps are cheap, AdamW's
    // do more per step: per second is the fair comparison).
    let by_time = RwSignal::new(false);
    let series = Signal::derive(move || {
        let t = by_time.get();
        runs.with(|rs| {
            rs.iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    let color = COLORS[i % COLORS.len()];
                    let (train, eval) = if t { (&r.train_t, &r.eval_t) } else { (&r.train, &r.eval) };
                    let mut v = vec![Series { label: format!("{} train", r.label), color, points: train.clone(), dashed: false }];
                    if !eval.is_empty() {
                        v.push(Series { label: "held-out".into(), color, points: eval.clone(), dashed: true });
                    }
                    v
                })
                .collect()
        })
    });
    let num = move |f: fn(&TrainParams) -> String| move || f(&p.get());
    // Every control with the key it sets, in the order the widget shows them; a method's own
    // settings appear only while that method is chosen.
    let method_is = move |m: MethodKind| move || p.get().method == m;
    let methods = MethodKind::ALL.iter().map(|k| (k.name(), k.label())).collect();
    let controls: Vec<(&'static str, AnyView)> = vec![
        ("model", choice("model", "model", MODELS.to_vec(), move || p.get().model.name().to_string(), set).into_any()),
        ("task", choice("task", "task", task_options(), move || p.get().task.to_string(), set).into_any()),
        ("steps", field("steps", "steps", num(|p| p.steps.to_string()), set).into_any()),
        (
            "lr",
            view! {
                <span class="with-hint">
                    {field("learning rate", "lr", num(|p| p.lr.to_string()), set)}
                    <small class="hint" data-testid="suggested-lr">{move || suggested_lr(&p.get())}</small>
                </span>
            }
            .into_any(),
        ),
        ("batch", field("batch", "batch", num(|p| p.batch.to_string()), set).into_any()),
        ("seq", field("tokens per row", "seq", num(|p| p.seq.to_string()), set).into_any()),
        ("seed", field("seed", "seed", num(|p| p.seed.to_string()), set).into_any()),
        ("precision", choice("precision", "precision", PRECISIONS.to_vec(), move || p.get().precision.to_string(), set).into_any()),
        ("loss_scale", choice("loss scaling", "loss_scale", LOSS_SCALES.to_vec(), move || p.get().loss_scale.clone(), set).into_any()),
        ("method", choice("method (micro)", "method", methods, move || p.get().method.to_string(), set).into_any()),
        (
            "adapter",
            when(method_is(MethodKind::Adapter), move || choice("adapter placement", "adapter", ADAPTERS.to_vec(), move || p.get().adapter.clone(), set)),
        ),
        ("bottleneck", when(method_is(MethodKind::Adapter), move || field("bottleneck", "bottleneck", num(|p| p.bottleneck.to_string()), set))),
        ("tokens", when(move || p.get().method.soft_prompt(), move || field("virtual tokens", "tokens", num(|p| p.tokens.to_string()), set))),
        (
            "prompt_init",
            when(method_is(MethodKind::Prompt), move || choice("prompt init", "prompt_init", PROMPT_INITS.to_vec(), move || p.get().prompt_init.clone(), set)),
        ),
        ("encoder", when(method_is(MethodKind::PTuning), move || field("encoder width", "encoder", num(|p| p.encoder.to_string()), set))),
        ("last_n", field("last layers", "last_n", num(|p| p.last_n.to_string()), set).into_any()),
        ("rank", field("LoRA rank", "rank", num(|p| p.rank.to_string()), set).into_any()),
        ("alpha", field("LoRA alpha", "alpha", num(|p| p.alpha.to_string()), set).into_any()),
        ("targets", field("LoRA targets", "targets", num(|p| p.targets.clone()), set).into_any()),
        ("optimizer", choice("optimizer", "optimizer", optimizer_options(), move || p.get().optimizer.clone(), set).into_any()),
        ("schedule", choice("schedule", "schedule", SCHEDULES.to_vec(), move || p.get().schedule.clone(), set).into_any()),
        ("warmup", field("warmup (steps or %)", "warmup", num(|p| p.warmup.clone()), set).into_any()),
        ("accumulate", field("micro-batches (accumulate)", "accumulate", num(|p| p.accumulate.to_string()), set).into_any()),
        ("data_parallel", field("data-parallel replicas", "data_parallel", num(|p| p.data_parallel.to_string()), set).into_any()),
        ("zero", field("ZeRO stage (0 or 1)", "zero", num(|p| p.zero.to_string()), set).into_any()),
        ("checkpointing", checkbox("gradient checkpointing", "checkpointing", move || p.get().checkpointing, set).into_any()),
        ("sweep", field("sweep (key=v1,v2)", "sweep", num(|p| p.sweep.clone()), set).into_any()),
        ("compare", checkbox("compare before / after", "compare", move || p.get().compare, set).into_any()),
    ];
    // The lesson's keys and the essentials stay in view and the rest fold under "More
    // settings" (without a lesson's keys, as outside a lesson block, nothing folds). The
    // fold starts open when a link set a folded control away from its default.
    let named = use_context::<super::LessonKeys>().map(|k| k.0);
    let unfolded = |key: &str| named.as_ref().is_none_or(|named| ESSENTIAL.contains(&key) || named.contains(&key));
    let open_more = state.with_untracked(|w| w.diff(&Widget::Train(TrainParams::default())).iter().any(|(k, _)| !unfolded(k)));
    let (shown, folded): (Vec<_>, Vec<_>) = controls.into_iter().partition(|(k, _)| unfolded(k));
    let shown: Vec<AnyView> = shown.into_iter().map(|(_, v)| v).collect();
    let folded: Vec<AnyView> = folded.into_iter().map(|(_, v)| v).collect();

    view! {
        <div
            class="widget train"
            data-widget="train"
            data-losses=move || runs.with(|rs| rs.last().map(|r| r.train.iter().map(|(_, l)| l.to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default())
        >
            <div class="controls">{shown}</div>
            {(!folded.is_empty()).then(|| view! {
                <details class="more" data-testid="more-settings" open=open_more>
                    <summary>"More settings"</summary>
                    <div class="controls">{folded}</div>
                </details>
            })}
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <p class="status" data-testid="trainable">{move || {
                let (t, n) = p.get().trainable();
                format!("{}: {} of {} parameters train ({:.2}%)", p.get().method().name(), format_count(t as usize), format_count(n as usize), 100.0 * t as f64 / n.max(1) as f64)
            }}</p>
            <div class="buttons">
                <button data-testid="train" on:click=start disabled=move || active.get().is_some()>"Train"</button>
                <button data-testid="pause" on:click=pause_resume disabled=move || active.get().is_none()>
                    {move || if matches!(active.get(), Some((_, RunState::Paused))) { "Resume" } else { "Pause" }}
                </button>
                <button data-testid="cancel" on:click=cancel disabled=move || active.get().is_none()>"Stop"</button>
                <button on:click=move |_| runs.set(Vec::new()) disabled=move || active.get().is_some() || runs.with(|r| r.is_empty())>"Clear runs"</button>
            </div>
            {move || if by_time.get() {
                view! { <LineChart series=series x_label="seconds of training" y_label="loss (nats per token)" /> }.into_any()
            } else {
                view! { <LineChart series=series x_label="step" y_label="loss (nats per token)" /> }.into_any()
            }}
            <label class="field check">
                <input type="checkbox" data-testid="by-time" prop:checked=move || by_time.get() on:change=move |ev| by_time.set(event_target_checked(&ev)) />
                <span>"plot against seconds instead of steps"</span>
            </label>
            {move || runs.with(|rs| rs.last().cloned()).map(run_status)}
            {move || runs.with(|rs| (rs.len() > 1 || rs.iter().any(|r| r.stats.is_some())).then(|| runs_table(rs)))}
            {move || runs.with(|rs| rs.last().and_then(|r| r.compare.clone())).map(|(rows, before, after)| compare_view(rows, before, after))}
            {move || runs.with(|rs| rs.last().and_then(|r| r.nearest.clone())).map(nearest_view)}
            <details class="scale">
                <summary>"Run this at scale"</summary>
                <p>"The same run with the native " <code>"tinytune"</code> " binary (add " <code>"--backend wgpu"</code> " or " <code>"--backend cuda"</code> " for a GPU):"</p>
                <pre data-testid="command">{move || p.get().command()}</pre>
            </details>
        </div>
    }
}

const MODELS: &[(&str, &str)] =
    &[("micro", "micro (pretrained, GPT-2 style)"), ("micro-llama", "micro-llama (pretrained, Llama style)"), ("nano", "nano (fresh, untrained)")];
const PRECISIONS: &[(&str, &str)] = &[("fp32", "FP32"), ("fp16", "FP16 mixed"), ("bf16", "BF16 mixed")];
const LOSS_SCALES: &[(&str, &str)] = &[("none", "none"), ("dynamic", "dynamic (FP16)")];
const ADAPTERS: &[(&str, &str)] =
    &[("houlsby", "Houlsby (after attention and MLP)"), ("pfeiffer", "Pfeiffer (after MLP)"), ("parallel", "parallel (beside MLP)")];
const PROMPT_INITS: &[(&str, &str)] = &[("random", "random"), ("vocab", "sampled vocabulary")];
const SCHEDULES: &[(&str, &str)] = &[("cosine", "cosine decay"), ("linear", "linear decay"), ("constant", "constant")];

/// The train widget's controls a run cannot do without (a model, its data, how long),
/// shown whichever keys the lesson names.
const ESSENTIAL: &[&str] = &["model", "task", "steps"];

/// `view` while `cond` holds, nothing otherwise.
fn when<V: IntoView + 'static>(cond: impl Fn() -> bool + Send + Sync + 'static, view: impl Fn() -> V + Send + Sync + 'static) -> AnyView {
    (move || cond().then(&view)).into_any()
}

/// A labelled checkbox bound to one boolean parameter.
fn checkbox(
    label: &'static str,
    key: &'static str,
    value: impl Fn() -> bool + Send + Sync + 'static,
    set: impl Fn(&'static str, String) + Copy + Send + Sync + 'static,
) -> impl IntoView {
    view! {
        <label class="field check">
            <input type="checkbox" data-param=key prop:checked=value on:change=move |ev| set(key, event_target_checked(&ev).to_string()) />
            <span>{label}</span>
        </label>
    }
}

fn optimizer_options() -> Vec<(&'static str, &'static str)> {
    vec![
        ("adamw", "AdamW"),
        ("sgd", "SGD"),
        ("adafactor", "Adafactor"),
        ("lion", "Lion"),
        ("adamw8bit", "8-bit AdamW (CPU)"),
        ("paged-adamw", "paged AdamW (CPU)"),
        ("paged-adamw8bit", "paged 8-bit AdamW (CPU)"),
        ("mezo", "MeZO (forward only)"),
    ]
}

/// Every run of the widget side by side: loss, time and what it cost.
fn runs_table(rs: &[RunView]) -> impl IntoView + use<> {
    let rows = rs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let s = r.stats.clone().unwrap_or_default();
            let loss = r.last.as_ref().map(|e| format!("{:.4}", e.loss)).unwrap_or_default();
            let eval = r.eval.last().map(|(_, l)| format!("{l:.4}")).unwrap_or_default();
            let time = r.last.as_ref().map(|e| format!("{:.1}", e.elapsed_s)).unwrap_or_default();
            // Under ZeRO-1 each replica's share, per trainable parameter of the whole model.
            let per_param = match (s.trainable, s.state_bytes_by_replica.len()) {
                (0, _) => String::new(),
                (n, 2..) => s.state_bytes_by_replica.iter().map(|&b| format!("{:.2}", b as f64 / n as f64)).collect::<Vec<_>>().join(" + "),
                (n, _) => format!("{:.2}", s.state_bytes as f64 / n as f64),
            };
            let peak = match (s.peak_bytes, r.stats.is_some()) {
                (Some(b), _) => tinytune::memory::human(b),
                (None, true) => "not counted (WebGPU)".into(),
                (None, false) => String::new(),
            };
            view! {
                <tr data-run=i>
                    <td><span class="swatch" style=format!("background:{}", COLORS[i % COLORS.len()])></span>{r.label.clone()}</td>
                    <td class="num" data-testid="run-loss">{loss}</td>
                    <td class="num">{eval}</td>
                    <td class="num">{time}</td>
                    <td class="num">{format!("{:.3}", s.step_seconds)}</td>
                    <td class="num" data-testid="run-state-bytes">{per_param}</td>
                    <td class="num" data-testid="run-peak">{peak}</td>
                    <td>{s.device.clone()}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <table class="results runs" data-testid="runs">
            <thead><tr><th>"run"</th><th>"train loss"</th><th>"held-out"</th><th>"time (s)"</th><th>"s / step"</th><th title="optimizer state, bytes per trainable parameter; under ZeRO-1, each replica's share">"state B / param"</th><th>"peak memory"</th><th>"device"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

fn run_status(r: RunView) -> impl IntoView {
    let state = match r.state {
        RunState::Preparing => format!("preparing: {}", r.message),
        RunState::Running if r.message.is_empty() => "running".into(),
        RunState::Running => format!("running · {}", r.message),
        RunState::Done if !r.info.is_empty() => format!("done · {}", r.info),
        RunState::Paused => "paused".into(),
        RunState::Done => "done".into(),
        RunState::Cancelled => "stopped".into(),
        RunState::Failed => format!("failed: {}", r.message),
    };
    let last = r.last.clone();
    let eval = r.eval.last().map(|(_, l)| format!("{l:.4}"));
    view! {
        <p class="status">
            <span data-testid="run-state" data-state=format!("{:?}", r.state)>{state}</span>
            {last.map(|e| view! {
                " · step " <span data-testid="step">{e.step}</span> {format!(" of {}", r.steps)}
                " · loss " <span data-testid="loss">{format!("{:.4}", e.loss)}</span>
                {format!(" · {:.0} tokens/s · {:.1} s", r.throughput.tokens_per_s(), e.elapsed_s)}
                {(e.loss_scale != 1.0 || r.skipped > 0).then(|| view! { " · loss scale " <span data-testid="loss-scale">{e.loss_scale.to_string()}</span> " · skipped " <span data-testid="skipped">{r.skipped}</span> })}
            })}
            {eval.map(|l| view! { " · held-out loss " <span data-testid="eval-loss">{l}</span> })}
        </p>
    }
}

/// Each virtual token of a trained soft prompt with the real tokens nearest it.
fn nearest_view(tokens: Vec<Vec<(String, f32)>>) -> impl IntoView {
    let rows = tokens
        .into_iter()
        .enumerate()
        .map(|(i, near)| {
            let near = near.into_iter().map(|(t, c)| format!("{t:?} ({c:.2})")).collect::<Vec<_>>().join(", ");
            view! { <tr><td class="num">{format!("virtual {i}")}</td><td>{near}</td></tr> }
        })
        .collect::<Vec<_>>();
    view! {
        <table class="results" data-testid="nearest">
            <caption>"The trained soft prompt: the real tokens nearest each virtual token (cosine similarity with the token embeddings)"</caption>
            <thead><tr><th>"virtual token"</th><th>"nearest real tokens"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

fn compare_view(rows: Vec<CompareRow>, before: f32, after: f32) -> impl IntoView {
    let change = 100.0 * (after - before) / before;
    view! {
        <div class="compare" data-testid="compare">
            <p>
                "Loss on held-out pre-training text (stories): " <b>{format!("{before:.3}")}</b> " before, " <b>{format!("{after:.3}")}</b>
                {format!(" after ({change:+.1}%). ")}
                {if change > 50.0 {
                    "The model has forgotten much of its pre-training."
                } else if change > 5.0 {
                    "The model has forgotten some of its pre-training."
                } else {
                    "Little forgetting so far."
                }}
            </p>
            {(!rows.is_empty()).then(|| view! {
                <table>
                    <thead><tr><th>"prompt (end)"</th><th>"expected"</th><th>"before"</th><th>"after"</th></tr></thead>
                    <tbody>
                        {rows.into_iter().map(|r| {
                            let tail: String = r.prompt.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" ⏎ ");
                            let ok = r.after == r.expected;
                            view! { <tr><td><code>{tail}</code></td><td><code>{r.expected}</code></td><td><code>{r.before}</code></td><td class={if ok { "right" } else { "wrong" }}><code>{r.after}</code></td></tr> }
                        }).collect::<Vec<_>>()}
                    </tbody>
                </table>
            })}
        </div>
    }
}

fn generate_params(w: &Widget) -> GenerateParams {
    match w {
        Widget::Generate(p) => p.clone(),
        _ => GenerateParams::default(),
    }
}

#[component]
pub fn GenerateWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| generate_params(&state.get()));
    let busy = RwSignal::new(false);
    let out = RwSignal::new(None::<Result<Samples, String>>);
    let run = move |_| {
        busy.set(true);
        client::ask(p.get_untracked(), move |r| {
            out.set(Some(r));
            busy.set(false);
        });
    };
    let num = move |f: fn(&GenerateParams) -> String| move || f(&p.get());
    view! {
        <div class="widget generate" data-widget="generate">
            <label class="field wide">
                <span>"prompt"</span>
                <textarea data-param="prompt" rows="3" prop:value=move || p.get().prompt on:change=move |ev| set("prompt", event_target_value(&ev).replace('\n', "\\n"))></textarea>
            </label>
            <div class="controls">
                {choice("model", "model", vec![("micro", "micro (pretrained, GPT-2 style)"), ("micro-llama", "micro-llama (pretrained, Llama style)"), ("nano", "nano (untrained)")], move || p.get().model.name().to_string(), set)}
                {field("temperature", "temperature", num(|p| p.temperature.to_string()), set)}
                {field("top-k (0: all)", "top_k", num(|p| p.top_k.to_string()), set)}
                {field("new tokens", "max_tokens", num(|p| p.max_tokens.to_string()), set)}
                {field("samples", "samples", num(|p| p.samples.to_string()), set)}
                {field("seed", "seed", num(|p| p.seed.to_string()), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <div class="buttons"><button data-testid="generate" on:click=run disabled=move || busy.get()>{move || if busy.get() { "Generating…" } else { "Generate" }}</button></div>
            {move || match out.get() {
                None => None,
                Some(Err(e)) => Some(view! { <p class="error">{e}</p> }.into_any()),
                Some(Ok(Samples { samples, seconds: secs })) => Some(view! {
                    <div data-testid="samples">
                        {samples.into_iter().map(|s| view! { <pre class="sample"><span class="prompt">{p.get_untracked().prompt}</span>{s}</pre> }).collect::<Vec<_>>()}
                        <p class="status">{format!("{secs:.1} s")}</p>
                    </div>
                }.into_any()),
            }}
        </div>
    }
}

#[component]
pub fn ModelCardWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let name = Memo::new(move |_| match state.get() {
        Widget::ModelCard(p) => p.model,
        _ => "micro".into(),
    });
    let presets = ["nano", "micro", "mini", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"].map(|n| (n, n)).to_vec();
    let table = move || {
        let config = ModelConfig::preset(&name.get()).ok()?;
        let params = config.param_summaries();
        let total: usize = params.iter().map(|p| p.numel).sum();
        // Group by layer: the embeddings, each block, the final LayerNorm.
        let mut groups: Vec<(String, usize, Vec<String>)> = Vec::new();
        for p in &params {
            let group = match p.name.split('.').collect::<Vec<_>>().as_slice() {
                ["h", i, ..] => format!("block {i}"),
                [first, ..] => first.to_string(),
                [] => String::new(),
            };
            let line = format!("{} {:?} = {}", p.name, p.shape, p.numel);
            match groups.last_mut() {
                Some((g, n, lines)) if *g == group => {
                    *n += p.numel;
                    lines.push(line);
                }
                _ => groups.push((group, p.numel, vec![line])),
            }
        }
        let share = move |n: usize| format!("{:.2}%", 100.0 * n as f64 / total as f64);
        Some(view! {
            <p>
                {format!("{} layers, width {}, {} heads, context {}, vocabulary {}: ", config.n_layer, config.n_embd, config.n_head, config.n_positions, config.vocab_size)}
                <b data-testid="total-params">{format_count(total)}</b> " parameters."
            </p>
            <table>
                <thead><tr><th>"layer"</th><th>"parameters"</th><th>"share"</th><th>"tensors"</th></tr></thead>
                <tbody>
                    {groups.into_iter().map(|(g, n, lines)| view! {
                        <tr><td>{g}</td><td class="num">{format_count(n)}</td><td class="num">{share(n)}</td><td><details><summary>{lines.len()}</summary><pre>{lines.join("\n")}</pre></details></td></tr>
                    }).collect::<Vec<_>>()}
                </tbody>
            </table>
        })
    };
    view! {
        <div class="widget model-card" data-widget="model-card">
            <div class="controls">{choice("model", "model", presets, move || name.get(), set)}</div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            {table}
        </div>
    }
}

/// 1234567 → "1,234,567".
pub fn format_count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[component]
pub fn DecideWidget() -> impl IntoView {
    // The path taken so far: (node index, answer) pairs, then the current node.
    let path = RwSignal::new(Vec::<(usize, bool)>::new());
    let current = move || path.with(|p| p.last().map(|&(i, yes)| next(i, yes)).unwrap_or(0));
    let answer = move |yes: bool| {
        // Read first: reading the signal inside its own update would re-enter it.
        let at = current();
        path.update(|p| p.push((at, yes)));
    };
    view! {
        <div class="widget decide" data-widget="decide">
            <ol class="answered">
                {move || path.get().into_iter().map(|(i, yes)| match NODES[i] {
                    Node::Question { text, .. } => view! { <li>{text} " " <b>{if yes { "Yes" } else { "No" }}</b></li> }.into_any(),
                    Node::Outcome { .. } => ().into_any(),
                }).collect::<Vec<_>>()}
            </ol>
            {move || match NODES[current()] {
                Node::Question { text, why, .. } => view! {
                    <div class="question">
                        <p><b>{text}</b></p>
                        <p class="why">{why}</p>
                        <div class="buttons">
                            <button on:click=move |_| answer(true)>"Yes"</button>
                            <button on:click=move |_| answer(false)>"No"</button>
                        </div>
                    </div>
                }.into_any(),
                Node::Outcome { title, text } => view! {
                    <div class="outcome" data-testid="recommendation">
                        <p><b>{title}</b></p>
                        <p>{text}</p>
                    </div>
                }.into_any(),
            }}
            <div class="buttons"><button on:click=move |_| path.set(Vec::new()) disabled=move || path.with(|p| p.is_empty())>"Start over"</button></div>
        </div>
    }
}

fn next(i: usize, yes: bool) -> usize {
    match NODES[i] {
        Node::Question { yes: y, no: n, .. } => {
            if yes {
                y
            } else {
                n
            }
        }
        Node::Outcome { .. } => i,
    }
}

impl super::WidgetView for crate::widgets::TrainParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <TrainWidget state=state /> }.into_any()
    }
}

impl super::WidgetView for crate::widgets::GenerateParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <GenerateWidget state=state /> }.into_any()
    }
}

impl super::WidgetView for crate::widgets::ModelCardParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <ModelCardWidget state=state /> }.into_any()
    }
}

impl super::WidgetView for crate::widgets::DecideParams {
    fn view(_: RwSignal<Widget>) -> AnyView {
        view! { <DecideWidget /> }.into_any()
    }
}
