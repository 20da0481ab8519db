//! The `distill` widget: a teacher fine-tuned from micro on a task, then three smaller
//! students from the same random start on a few of its examples — on the hard labels alone,
//! and on the teacher's soft targets at two temperatures — with each run's loss drawn live,
//! the students' held-out losses overlaid against the teacher's, and a table of each run's
//! final held-out loss. Every number is the worker's: the runs' `TrainEvent`s arrive
//! unchanged, and the table is the worker's `DistillNews::Finals`.

use leptos::prelude::*;
use tinytune::train::{EvalEvent, StepEvent, TrainEvent};

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{choice, field, setter};
use crate::distill::{DIVERGENCES, DistillNews, DistillParams, EVAL_EXAMPLES, FinalRow, Student, TASKS};
use crate::protocol::{FromWorker, RunState, RunStats, ToWorker};
use crate::widgets::Widget;

fn params(w: &Widget) -> DistillParams {
    match w {
        Widget::Distill(p) => p.clone(),
        _ => DistillParams::default(),
    }
}

/// One run of the four, as the page knows it: its id, every step and evaluation, its cost.
#[derive(Clone, Debug, Default, PartialEq)]
struct Stage {
    id: u32,
    steps: Vec<StepEvent>,
    evals: Vec<EvalEvent>,
    stats: Option<RunStats>,
}

/// One press of Run: the teacher (stage 0) and the students (1 to 3, `Student::ALL`'s order).
#[derive(Clone, Debug, Default, PartialEq)]
struct DistillRun {
    id: u32,
    params: DistillParams,
    state: Option<RunState>,
    message: String,
    /// The stage that spoke last.
    current: usize,
    started_ms: f64,
    ended_ms: Option<f64>,
    stages: Vec<Stage>,
    finals: Option<Vec<FinalRow>>,
}

impl DistillRun {
    fn active(&self) -> bool {
        matches!(self.state, Some(RunState::Preparing | RunState::Running | RunState::Paused))
    }

    fn seconds(&self) -> f64 {
        (self.ended_ms.unwrap_or_else(js_sys::Date::now) - self.started_ms) / 1000.0
    }

    /// A stage's name: "the teacher", or the student's label.
    fn stage_name(&self, i: usize) -> String {
        match i {
            0 => "the teacher".into(),
            i => format!("student \"{}\"", self.params.student_label(Student::ALL[i - 1])),
        }
    }
}

/// Colours: the teacher's, then each student's.
const STAGE_COLORS: [&str; 4] = [COLORS[6], COLORS[0], COLORS[1], COLORS[2]];

#[component]
pub fn DistillWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let run = RwSignal::new(None::<DistillRun>);
    let busy = Memo::new(move |_| run.with(|r| r.as_ref().is_some_and(DistillRun::active)));

    let start = move |_| {
        let params = p.get_untracked();
        error.set(None);
        // Each stage's messages: its status, steps, evaluations and cost.
        let stage = move |i: usize| {
            client::subscribe(move |msg| {
                run.update(|r| {
                    let Some(r) = r.as_mut().filter(|r| r.stages.get(i).map(|s| s.id) == msg.id()) else { return };
                    match msg {
                        FromWorker::Status { state, message, .. } => {
                            r.state = Some(state);
                            r.current = i;
                            let name = r.stage_name(i);
                            r.message = if message.is_empty() { name } else { format!("{name} · {message}") };
                        }
                        FromWorker::Run { event: TrainEvent::Step(e), .. } => {
                            r.current = i;
                            r.stages[i].steps.push(e);
                        }
                        FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.stages[i].evals.push(e),
                        FromWorker::RunStats { stats, .. } => r.stages[i].stats = Some(stats),
                        _ => {}
                    }
                });
            })
        };
        let ids: Vec<u32> = (0..4).map(stage).collect();
        let stage_ids = ids.clone();
        let id = client::subscribe(move |msg| {
            let end = matches!(&msg, FromWorker::Status { state: RunState::Done | RunState::Cancelled | RunState::Failed, .. });
            if let (true, FromWorker::Status { run: id, .. }) = (end, &msg) {
                client::unsubscribe(*id);
                stage_ids.iter().for_each(|&s| client::unsubscribe(s));
            }
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        r.state = Some(state);
                        r.message = message;
                        if end {
                            r.ended_ms = Some(js_sys::Date::now());
                        }
                    }
                    FromWorker::Distill { news: DistillNews::Finals(rows), .. } => r.finals = Some(rows),
                    _ => {}
                }
            });
        });
        run.set(Some(DistillRun {
            id,
            params: params.clone(),
            state: Some(RunState::Preparing),
            message: "starting".into(),
            started_ms: js_sys::Date::now(),
            stages: ids.iter().map(|&id| Stage { id, ..Default::default() }).collect(),
            ..Default::default()
        }));
        client::send(&ToWorker::Distill { run: id, teacher: ids[0], students: [ids[1], ids[2], ids[3]], params });
    };
    let pause_resume = move |_| {
        if let Some(r) = run.get_untracked().filter(DistillRun::active) {
            client::send(&if r.state == Some(RunState::Paused) { ToWorker::Resume { run: r.id } } else { ToWorker::Pause { run: r.id } });
        }
    };
    let cancel = move |_| {
        if let Some(r) = run.get_untracked().filter(DistillRun::active) {
            client::send(&ToWorker::Cancel { run: r.id });
        }
    };

    let teacher_series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let t = &r.stages[0];
            let mut v = vec![Series {
                label: "teacher: loss (train batch)".into(),
                color: STAGE_COLORS[0],
                points: t.steps.iter().map(|e| (e.step as f64, e.loss as f64)).collect(),
                dashed: false,
            }];
            if !t.evals.is_empty() {
                v.push(Series {
                    label: "teacher: held-out loss".into(),
                    color: STAGE_COLORS[0],
                    points: t.evals.iter().map(|e| (e.step as f64, e.eval_loss as f64)).collect(),
                    dashed: true,
                });
            }
            v
        })
    });
    // The students' held-out next-token loss, comparable across objectives and with the
    // teacher's (drawn across the students' steps).
    let held_series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let mut v: Vec<Series> = Student::ALL
                .iter()
                .enumerate()
                .map(|(i, &s)| Series {
                    label: r.params.student_label(s),
                    color: STAGE_COLORS[i + 1],
                    points: r.stages[i + 1].evals.iter().map(|e| (e.step as f64, e.eval_loss as f64)).collect(),
                    dashed: false,
                })
                .collect();
            if let Some(e) = r.stages[0].evals.last() {
                let last = r.params.steps as f64;
                v.push(Series {
                    label: "teacher".into(),
                    color: STAGE_COLORS[0],
                    points: vec![(1.0, e.eval_loss as f64), (last, e.eval_loss as f64)],
                    dashed: true,
                });
            }
            v.retain(|s| !s.points.is_empty());
            v
        })
    });
    // Each step's next-token loss on the students' own training batch (`nll_loss`; the
    // step's loss itself mixes in the divergence, whose scale grows with T²).
    let train_series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let mut v: Vec<Series> = Student::ALL
                .iter()
                .enumerate()
                .map(|(i, &s)| Series {
                    label: r.params.student_label(s),
                    color: STAGE_COLORS[i + 1],
                    points: r.stages[i + 1].steps.iter().filter_map(|e| e.metrics.get("nll_loss").map(|l| (e.step as f64, *l))).collect(),
                    dashed: false,
                })
                .collect();
            v.retain(|s| !s.points.is_empty());
            v
        })
    });
    let num = move |f: fn(&DistillParams) -> String| move || f(&p.get());
    let task_options = TASKS
        .iter()
        .map(|t| {
            let text = match *t {
                "sentiment" => "sentiment: the label, happy or sad (fastest)",
                "story-qa" => "story-qa: the answer, word for word from the story",
                _ => "json-extract: the right JSON record",
            };
            (*t, text)
        })
        .collect::<Vec<_>>();
    let divergence_options = DIVERGENCES
        .iter()
        .map(|d| {
            let text = match *d {
                "forward-kl" => "forward KL: KL(teacher ‖ student), mode covering (Hinton's)",
                "reverse-kl" => "reverse KL: KL(student ‖ teacher), mode seeking",
                _ => "JSD (GKD's, β 0.5)",
            };
            (*d, text)
        })
        .collect::<Vec<_>>();

    view! {
        <div
            class="widget distill"
            data-widget="distill"
            data-steps=move || run.with(|r| r.as_ref().map(|r| r.stages.iter().map(|s| s.steps.len().to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default())
        >
            <div class="controls">
                {choice("task", "task", task_options, move || p.get().task.to_string(), set)}
                {field("teacher steps (micro, 4 layers)", "teacher_steps", num(|p| p.teacher_steps.to_string()), set)}
                {field("student layers", "student_layers", num(|p| p.student_layers.to_string()), set)}
                {field("students' training examples", "examples", num(|p| p.examples.to_string()), set)}
                {field("student steps", "steps", num(|p| p.steps.to_string()), set)}
                {field("temperature T₁", "t1", num(|p| p.t1.to_string()), set)}
                {field("temperature T₂", "t2", num(|p| p.t2.to_string()), set)}
                {field("α (weight of the soft targets)", "alpha", num(|p| p.alpha.to_string()), set)}
                {field("students' learning rate", "lr", num(|p| p.lr.to_string()), set)}
                {choice("divergence", "divergence", divergence_options, move || p.get().divergence.name().to_string(), set)}
            </div>
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            <p class="status" data-testid="expected">
                {move || {
                    let p = p.get();
                    format!(
                        "{} · on the CPU in this page: {} (the teacher, {} steps; then three students of {} layer{}, {} steps each on {} examples; all evaluated on the same {EVAL_EXAMPLES} held-out examples)",
                        p.task,
                        p.expected_duration(),
                        p.teacher_steps,
                        p.student_layers,
                        if p.student_layers == 1 { "" } else { "s" },
                        p.steps,
                        p.examples
                    )
                }}
            </p>
            <div class="buttons">
                <button data-testid="train" on:click=start disabled=move || busy.get()>"Train"</button>
                <button data-testid="pause" on:click=pause_resume disabled=move || !busy.get()>
                    {move || if run.with(|r| r.as_ref().and_then(|r| r.state)) == Some(RunState::Paused) { "Resume" } else { "Pause" }}
                </button>
                <button data-testid="cancel" on:click=cancel disabled=move || !busy.get()>"Stop"</button>
            </div>
            {move || run.get().map(status_view)}
            <LineChart series=teacher_series x_label="stage 1: teacher step" y_label="loss" />
            <LineChart series=held_series x_label="stage 2: student step" y_label="held-out loss (next token)" />
            <LineChart series=train_series x_label="stage 2: student step" y_label="next-token loss on its training batch" />
            {move || run.get().and_then(|r| r.finals.clone().map(|rows| finals_view(rows, r)))}
            <details class="scale">
                <summary>"Run this at scale"</summary>
                <p>
                    "The same four runs with the native " <code>"tinytune"</code> " binary: the teacher, then each student learning from the folder it writes (add "
                    <code>"--backend wgpu"</code> " or " <code>"--backend cuda"</code> " for a GPU; "
                    <code>"scripts/distill-curves.sh"</code> " runs a longer recipe):"
                </p>
                <pre data-testid="command">{move || p.get().commands()}</pre>
            </details>
        </div>
    }
}

fn status_view(r: DistillRun) -> impl IntoView {
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
    let i = r.current;
    let of = if i == 0 { r.params.teacher_steps } else { r.params.steps };
    let last = r.stages.get(i).and_then(|s| s.steps.last().cloned());
    let progress = last.map(|e| {
        let detail = match (e.metrics.get("nll_loss"), e.metrics.get("divergence")) {
            (Some(nll), Some(d)) => format!(" · next-token loss {nll:.4} · divergence {d:.4}"),
            _ => String::new(),
        };
        format!(" · {} step {} of {of}, loss {:.4}{detail}", r.stage_name(i), e.step, e.loss)
    });
    let stats = r.stages.get(i).and_then(|s| s.stats.clone()).map(|s| format!(" · {:.2} s per step on the {}", s.step_seconds, s.device));
    view! {
        <p class="status">
            <span data-testid="run-state" data-state=format!("{state:?}") data-seconds=format!("{seconds:.1}")>{text}</span>
            {(state != RunState::Done).then_some(progress).flatten()}
            {(state != RunState::Done).then_some(stats).flatten()}
        </p>
    }
}

/// Each run's final held-out loss, with its size, objective and time per step.
fn finals_view(rows: Vec<FinalRow>, r: DistillRun) -> impl IntoView {
    let body = rows
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            let step = r.stages.get(i).and_then(|s| s.stats.as_ref()).map(|s| format!("{:.2}", s.step_seconds)).unwrap_or_default();
            view! {
                <tr>
                    <td>{row.run.clone()}</td>
                    <td class="num">{format!("{:.2} M", row.parameters as f64 / 1e6)}</td>
                    <td>{row.settings.clone()}</td>
                    <td class="num">{step}</td>
                    <td class="num" data-testid="final-loss" data-loss=row.eval_loss.to_string()>{format!("{:.4}", row.eval_loss)}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    let p = &r.params;
    view! {
        <table class="results" data-testid="distill-table">
            <caption>{format!(
                "Held-out next-token loss on the same {EVAL_EXAMPLES} {} examples after each run's last step: the teacher after {} steps on {} examples; each student after {} steps on only {}",
                p.task,
                p.teacher_steps,
                crate::distill::TEACHER_EXAMPLES,
                p.steps,
                p.examples
            )}</caption>
            <thead><tr><th>"run"</th><th>"parameters"</th><th>"objective"</th><th>"s per step"</th><th>"held-out loss"</th></tr></thead>
            <tbody>{body}</tbody>
        </table>
    }
}

impl super::WidgetView for DistillParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <DistillWidget state=state /> }.into_any()
    }
}
