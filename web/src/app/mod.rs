//! The page: a table of contents, the current lesson with its widgets, and the backend
//! bar. The URL carries the lesson and every widget setting that differs from the lesson's
//! (see `urlstate`), so an experiment is a link; local storage remembers which lessons the
//! reader has opened and the backend they chose.

mod chart;
mod client;
mod formats;
mod memory;
mod optimizers;
mod precision;
mod quantize;
mod rank;
mod widgets;

use leptos::prelude::*;
use wasm_bindgen::prelude::*;

use crate::lesson::{Lesson, Segment};
use crate::protocol::{BackendInfo, BackendPref, FromWorker, ToWorker};
use crate::widgets::Widget;
use crate::{lessons, urlstate};

use widgets::{DecideWidget, GenerateWidget, ModelCardWidget, TrainWidget};

/// Entry point of the page binary.
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

fn window() -> web_sys::Window {
    web_sys::window().expect("a page has a window")
}

/// The query string as decoded (key, value) pairs.
fn query() -> Vec<(String, String)> {
    let search = window().location().search().unwrap_or_default();
    let Ok(params) = web_sys::UrlSearchParams::new_with_str(&search) else { return Vec::new() };
    let mut out = Vec::new();
    let entries = js_sys::try_iter(&params).ok().flatten();
    for entry in entries.into_iter().flatten().flatten() {
        let pair = js_sys::Array::from(&entry);
        if let (Some(k), Some(v)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
            out.push((k, v));
        }
    }
    out
}

fn to_search(pairs: &[(String, String)]) -> String {
    let params = web_sys::UrlSearchParams::new().expect("URLSearchParams");
    for (k, v) in pairs {
        params.append(k, v);
    }
    format!("?{}", String::from(params.to_string()))
}

fn storage() -> Option<web_sys::Storage> {
    window().local_storage().ok().flatten()
}

fn visited() -> Vec<String> {
    storage().and_then(|s| s.get_item("tinytune.visited").ok().flatten()).and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default()
}

fn mark_visited(slug: &str) -> Vec<String> {
    let mut v = visited();
    if !v.iter().any(|s| s == slug) {
        v.push(slug.to_string());
    }
    if let Some(s) = storage() {
        let _ = s.set_item("tinytune.visited", &serde_json::to_string(&v).unwrap_or_default());
        let _ = s.set_item("tinytune.last", slug);
    }
    v
}

fn parse_pref(s: &str) -> Option<BackendPref> {
    match s {
        "auto" => Some(BackendPref::Auto),
        "cpu" => Some(BackendPref::Cpu),
        "webgpu" => Some(BackendPref::WebGpu),
        _ => None,
    }
}

fn pref_name(p: BackendPref) -> &'static str {
    match p {
        BackendPref::Auto => "auto",
        BackendPref::Cpu => "cpu",
        BackendPref::WebGpu => "webgpu",
    }
}

#[component]
fn App() -> impl IntoView {
    let lessons = match lessons::all() {
        Ok(l) if !l.is_empty() => l,
        Ok(_) => return view! { <p class="error">"No lessons were built into this page."</p> }.into_any(),
        Err(e) => return view! { <p class="error">{e}</p> }.into_any(),
    };
    let lessons = StoredValue::new(lessons);
    let initial_query = query();
    let find = move |slug: &str| lessons.with_value(|ls| ls.iter().position(|l| l.slug == slug));
    let last = storage().and_then(|s| s.get_item("tinytune.last").ok().flatten());
    let start = urlstate::lesson(&initial_query).and_then(find).or_else(|| last.as_deref().and_then(find)).unwrap_or(0);
    let current = RwSignal::new(start);
    // Link settings apply to the lesson the link named, once.
    let link = StoredValue::new(Some((start, initial_query.clone())));
    let visited_list = RwSignal::new(visited());

    // The backend bar and the worker.
    let backend = RwSignal::new(None::<BackendInfo>);
    let worker_error = RwSignal::new(None::<String>);
    let pref = initial_query
        .iter()
        .find(|(k, _)| k == "backend")
        .and_then(|(_, v)| parse_pref(v))
        .or_else(|| storage().and_then(|s| s.get_item("tinytune.backend").ok().flatten()).and_then(|v| parse_pref(&v)))
        .unwrap_or(BackendPref::Auto);
    let pref = RwSignal::new(pref);
    let started = client::start(move |msg| match msg {
        FromWorker::Backend(info) => backend.set(Some(info)),
        FromWorker::Error { message, .. } => worker_error.set(Some(message)),
        _ => {}
    });
    if let Err(e) = started {
        worker_error.set(Some(e));
    }
    client::send(&ToWorker::Init { prefer: pref.get_untracked() });
    let choose = move |ev| {
        if let Some(p) = parse_pref(&event_target_value(&ev)) {
            pref.set(p);
            backend.set(None);
            if let Some(s) = storage() {
                let _ = s.set_item("tinytune.backend", pref_name(p));
            }
            client::send(&ToWorker::Init { prefer: p });
        }
    };

    // Back/forward buttons move between lessons.
    let on_pop = Closure::<dyn FnMut()>::new(move || {
        if let Some(i) = urlstate::lesson(&query()).and_then(find) {
            link.set_value(Some((i, query())));
            current.set(i);
        }
    });
    window().set_onpopstate(Some(on_pop.as_ref().unchecked_ref()));
    on_pop.forget();

    let go = move |i: usize| {
        let slug = lessons.with_value(|ls| ls[i].slug.clone());
        let _ = window().history().map(|h| h.push_state_with_url(&JsValue::NULL, "", Some(&to_search(&[("lesson".into(), slug)]))));
        current.set(i);
        window().scroll_to_with_x_and_y(0.0, 0.0);
    };

    let toc = move || {
        let cur = current.get();
        let seen = visited_list.get();
        lessons.with_value(|ls| {
            ls.iter()
                .enumerate()
                .map(|(i, l)| {
                    let done = seen.contains(&l.slug);
                    let href = format!("?lesson={}", l.slug);
                    view! {
                        <li class:current={i == cur} class:done={done}>
                            <a href={href} on:click=move |ev| { ev.prevent_default(); go(i); }>{format!("{}. {}", l.order, l.title)}</a>
                            <span class="summary">{l.summary.clone()}</span>
                        </li>
                    }
                })
                .collect::<Vec<_>>()
        })
    };

    let page = move || {
        let i = current.get();
        let lesson = lessons.with_value(|ls| ls[i].clone());
        visited_list.set(mark_visited(&lesson.slug));
        let q = link.with_value(|l| l.as_ref().filter(|(li, _)| *li == i).map(|(_, q)| q.clone())).unwrap_or_default();
        link.set_value(None);
        let n = lessons.with_value(|ls| ls.len());
        let prev = (i > 0).then(|| (i - 1, lessons.with_value(|ls| ls[i - 1].title.clone())));
        let next = (i + 1 < n).then(|| (i + 1, lessons.with_value(|ls| ls[i + 1].title.clone())));
        view! {
            <LessonView lesson=lesson query=q />
            <nav class="prev-next">
                {prev.map(|(j, t)| view! { <a href="#" data-testid="prev" on:click=move |ev| { ev.prevent_default(); go(j); }>{format!("← {t}")}</a> })}
                <span></span>
                {next.map(|(j, t)| view! { <a href="#" data-testid="next" on:click=move |ev| { ev.prevent_default(); go(j); }>{format!("{t} →")}</a> })}
            </nav>
        }
    };

    view! {
        <header>
            <span class="brand">"tinytune"</span>
            <span class="tagline">"learn fine-tuning by doing it"</span>
            <span class="backend">
                "compute: "
                <b data-testid="backend">{move || backend.get().map(|b| client::backend_label(&b)).unwrap_or_else(|| "starting…".into())}</b>
                <select data-testid="backend-choice" on:change=choose>
                    {[("auto", "automatic"), ("cpu", "CPU"), ("webgpu", "WebGPU")].map(|(v, t)| view! { <option value=v selected=move || pref_name(pref.get()) == v>{t}</option> }).to_vec()}
                </select>
            </span>
        </header>
        {move || backend.get().map(|b| view! { <p class="backend-reason" data-testid="backend-reason">{b.reason}</p> })}
        {move || worker_error.get().map(|e| view! { <p class="error">{e}</p> })}
        <div class="layout">
            <nav class="toc"><ol>{toc}</ol></nav>
            <main>{page}</main>
        </div>
    }
    .into_any()
}

#[component]
fn LessonView(lesson: Lesson, query: Vec<(String, String)>) -> impl IntoView {
    let base: Vec<Widget> = lesson.widgets().cloned().collect();
    let mut now = base.clone();
    let problems = urlstate::apply(&query, &mut now);
    let states: Vec<RwSignal<Widget>> = now.into_iter().map(RwSignal::new).collect();
    // Mirror every widget's settings into the URL.
    {
        let states = states.clone();
        let slug = lesson.slug.clone();
        let backend = query.iter().find(|(k, _)| k == "backend").cloned();
        Effect::new(move |_| {
            let now: Vec<Widget> = states.iter().map(|s| s.get()).collect();
            let mut pairs = urlstate::encode(&slug, &base, &now);
            pairs.extend(backend.clone());
            let _ = window().history().map(|h| h.replace_state_with_url(&JsValue::NULL, "", Some(&to_search(&pairs))));
        });
    }
    let mut k = 0;
    let body = lesson
        .segments
        .iter()
        .map(|seg| match seg {
            Segment::Html(html) => view! { <div class="prose" inner_html={html.clone()}></div> }.into_any(),
            Segment::Widget(w) => {
                let state = states[k];
                k += 1;
                match w {
                    Widget::Train(_) => view! { <TrainWidget state=state /> }.into_any(),
                    Widget::Generate(_) => view! { <GenerateWidget state=state /> }.into_any(),
                    Widget::ModelCard(_) => view! { <ModelCardWidget state=state /> }.into_any(),
                    Widget::Decide(_) => view! { <DecideWidget /> }.into_any(),
                    Widget::Memory(_) => view! { <memory::MemoryWidget state=state /> }.into_any(),
                    Widget::MemoryTimeline(_) => view! { <memory::MemoryTimelineWidget state=state /> }.into_any(),
                    Widget::NumberFormat(_) => view! { <formats::NumberFormatWidget state=state /> }.into_any(),
                    Widget::Quantize(_) => view! { <quantize::QuantizeWidget state=state /> }.into_any(),
                    Widget::LossScaling(_) => view! { <precision::LossScalingWidget state=state /> }.into_any(),
                    Widget::OptimizerState(_) => view! { <optimizers::OptimizerStateWidget state=state /> }.into_any(),
                    Widget::Schedule(_) => view! { <optimizers::ScheduleWidget state=state /> }.into_any(),
                    Widget::LoraRank(_) => view! { <rank::LoraRankWidget state=state /> }.into_any(),
                }
            }
        })
        .collect::<Vec<_>>();
    view! {
        <article data-lesson={lesson.slug.clone()}>
            <h1 data-testid="lesson-title">{lesson.title.clone()}</h1>
            {(!problems.is_empty()).then(|| view! { <ul class="error">{problems.into_iter().map(|p| view! { <li>{p}</li> }).collect::<Vec<_>>()}</ul> })}
            {body}
        </article>
    }
}
