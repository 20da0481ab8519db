//! The page's side of the worker: one Web Worker for the whole page, messages out, and
//! replies routed to whichever widget asked (by run or request id). If the worker dies (a
//! panic, out of memory), every pending request is told it failed, a fresh worker starts
//! on the same backend choice, and the page carries on.
//!
//! The worker starts after the page's first frame: its wasm (Burn and the models) is
//! fetched and compiled while the reader already sees the lesson, and messages sent before
//! it is ready wait in a queue.
//!
//! The worker comes in two builds of the same code (`web/worker`): `worker-cpu`, without
//! WebGPU, about half the size, and `worker`, with it. The page asks the browser for its
//! WebGPU adapter first and loads the WebGPU build only where the reader's backend choice
//! would use WebGPU ([`adapter::choose`], the rule the worker itself follows). Choosing
//! WebGPU later, in the backend bar, replaces a CPU-only worker with the WebGPU one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use web_sys::{ErrorEvent, MessageEvent, Worker};

use crate::adapter::{self, Adapter};
use crate::protocol::{Ask, BackendInfo, BackendPref, FromWorker, RunState, ToWorker};

type Handler = Rc<dyn Fn(FromWorker)>;

struct Client {
    /// None until the first frame has been drawn and the adapter probed (`start`).
    worker: Option<Worker>,
    /// Whether `worker` is the build with WebGPU.
    webgpu_build: bool,
    /// The browser's WebGPU adapter: None until probed, then what the probe found.
    adapter: Option<Option<Adapter>>,
    next_id: u32,
    handlers: HashMap<u32, Handler>,
    /// Receives `Backend` replies and errors that belong to no widget.
    on_backend: Handler,
    /// The last `Init`, re-sent to a restarted worker.
    init: Option<ToWorker>,
    /// Messages waiting for the worker's `Ready` (JSON text, or a file).
    queue: Option<Vec<JsValue>>,
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

fn spawn(webgpu_build: bool) -> Result<Worker, String> {
    // trunk builds each worker next to the page and writes a loader for it
    // (`data-loader-shim`), named after the binary.
    let loader = if webgpu_build { "./worker_loader.js" } else { "./worker-cpu_loader.js" };
    let worker = Worker::new(loader).map_err(|e| format!("could not start the compute worker: {e:?}"))?;
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else { return };
        match serde_json::from_str::<FromWorker>(&text) {
            Ok(msg) => dispatch(msg),
            Err(e) => web_sys::console::error_1(&format!("unreadable message from the worker: {e}: {text}").into()),
        }
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    let onerror = Closure::<dyn FnMut(ErrorEvent)>::new(|ev: ErrorEvent| crashed(ev.message()));
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();
    Ok(worker)
}

fn dispatch(msg: FromWorker) {
    if let FromWorker::Ready = msg {
        CLIENT.with_borrow_mut(|c| {
            if let Some(c) = c {
                for m in c.queue.take().unwrap_or_default() {
                    if let Some(w) = &c.worker {
                        let _ = w.post_message(&m);
                    }
                }
            }
        });
        return;
    }
    let id = msg.id();
    let handler = CLIENT.with_borrow(|c| c.as_ref().map(|c| id.and_then(|id| c.handlers.get(&id).cloned()).unwrap_or_else(|| c.on_backend.clone())));
    if let Some(h) = handler {
        h(msg);
    }
}

/// The worker died: fail what it was doing, say so, and start a new one.
fn crashed(message: String) {
    let why = format!("the compute worker crashed ({message}); it has been restarted, so run the widget again");
    let build = CLIENT.with_borrow(|c| c.as_ref().is_some_and(|c| c.webgpu_build));
    restart(build, &why);
    dispatch(FromWorker::Error { id: 0, message: why });
}

/// Fails every pending request with `why`, ends the current worker and starts the given
/// build, which is sent the last `Init`.
fn restart(webgpu_build: bool, why: &str) {
    let pending: Vec<(u32, Handler)> = CLIENT.with_borrow_mut(|c| c.as_mut().map(|c| c.handlers.drain().collect()).unwrap_or_default());
    for (id, h) in pending {
        h(FromWorker::Status { run: id, state: RunState::Failed, message: why.to_string() });
        h(FromWorker::Error { id, message: why.to_string() });
    }
    let old = CLIENT.with_borrow(|c| c.as_ref().and_then(|c| c.worker.clone()));
    if let Some(old) = old {
        old.terminate();
    }
    match spawn(webgpu_build) {
        Ok(worker) => {
            let init = CLIENT.with_borrow_mut(|c| {
                let c = c.as_mut()?;
                c.worker = Some(worker);
                c.webgpu_build = webgpu_build;
                c.queue = Some(Vec::new());
                c.init.clone()
            });
            if let Some(init) = init {
                send(&init);
            }
        }
        Err(e) => web_sys::console::error_1(&e.into()),
    }
}

/// The backend the last `Init` asked for (Auto before any).
fn preference(c: &Client) -> BackendPref {
    match c.init {
        Some(ToWorker::Init { prefer }) => prefer,
        _ => BackendPref::Auto,
    }
}

pub fn start(on_backend: impl Fn(FromWorker) + 'static) -> Result<(), String> {
    CLIENT.with_borrow_mut(|c| {
        *c = Some(Client {
            worker: None,
            webgpu_build: false,
            adapter: None,
            next_id: 1,
            handlers: HashMap::new(),
            on_backend: Rc::new(on_backend),
            init: None,
            queue: Some(Vec::new()),
        })
    });
    // After the first frame: the next animation frame comes before the paint, so a timer
    // set from it fires once the page has been drawn. Then ask for the adapter (a few
    // milliseconds) and load the build the reader's choice needs.
    let window = web_sys::window().ok_or("no window to start the compute worker from")?;
    let later = Closure::once_into_js(move || {
        wasm_bindgen_futures::spawn_local(async {
            let found = adapter::probe().await;
            let webgpu_build = CLIENT.with_borrow_mut(|c| {
                let c = c.as_mut()?;
                let (webgpu, _) = adapter::choose(preference(c), found.as_ref());
                c.adapter = Some(found);
                // The CPU-only build has WebAssembly threads, so it needs a shared memory;
                // a browser without one gets the WebGPU build, whose CPU backend is the same
                // on one thread.
                Some(webgpu || !adapter::shared_memory())
            });
            let webgpu_build = webgpu_build.unwrap_or(false);
            match spawn(webgpu_build) {
                Ok(worker) => CLIENT.with_borrow_mut(|c| {
                    if let Some(c) = c {
                        c.worker = Some(worker);
                        c.webgpu_build = webgpu_build;
                    }
                }),
                Err(e) => dispatch(FromWorker::Error { id: 0, message: e }),
            }
        });
    });
    let after_paint = Closure::once_into_js(move || {
        if let Some(w) = web_sys::window() {
            let _ = w.set_timeout_with_callback_and_timeout_and_arguments_0(later.unchecked_ref(), 0);
        }
    });
    window.request_animation_frame(after_paint.unchecked_ref()).map_err(|e| format!("could not schedule the compute worker: {e:?}"))?;
    // For the end-to-end tests: `window.__tinytune_crash_worker()` makes the worker panic.
    let crash = Closure::<dyn Fn()>::new(|| send(&ToWorker::Crash));
    let _ = js_sys::Reflect::set(&js_sys::global(), &"__tinytune_crash_worker".into(), crash.as_ref());
    crash.forget();
    Ok(())
}

pub fn send(msg: &ToWorker) {
    if let ToWorker::Init { prefer } = msg {
        // A CPU-only worker cannot serve a choice that needs WebGPU: load the other build,
        // which is sent this `Init` as its first message.
        let swap = CLIENT.with_borrow_mut(|c| {
            let c = c.as_mut()?;
            c.init = Some(msg.clone());
            let found = c.adapter.as_ref()?;
            Some(c.worker.is_some() && !c.webgpu_build && adapter::choose(*prefer, found.as_ref()).0)
        });
        if swap == Some(true) {
            restart(true, "the page is loading the WebGPU build of the compute worker; run the widget again once the backend bar says WebGPU");
            return;
        }
    }
    post(JsValue::from_str(&msg.to_json()));
}

/// Hands the worker a file the reader picked (a `File` is passed by reference, not
/// copied; the worker reads it). The next `RealOpen` loads it.
pub fn send_file(file: &web_sys::File) {
    let m = js_sys::Object::new();
    let _ = js_sys::Reflect::set(&m, &"gguf".into(), file);
    post(m.into());
}

fn post(m: JsValue) {
    CLIENT.with_borrow_mut(|c| {
        if let Some(c) = c {
            match &mut c.queue {
                Some(queue) => queue.push(m),
                None => {
                    if let Some(w) = &c.worker {
                        let _ = w.post_message(&m);
                    }
                }
            }
        }
    });
}

/// A fresh id, with `handler` receiving every reply that carries it.
pub fn subscribe(handler: impl Fn(FromWorker) + 'static) -> u32 {
    CLIENT.with_borrow_mut(|c| {
        let c = c.as_mut().expect("client::start runs before any widget");
        let id = c.next_id;
        c.next_id += 1;
        c.handlers.insert(id, Rc::new(handler));
        id
    })
}

pub fn unsubscribe(id: u32) {
    CLIENT.with_borrow_mut(|c| {
        if let Some(c) = c {
            c.handlers.remove(&id);
        }
    });
}

pub fn backend_label(info: &BackendInfo) -> String {
    let name = match (info.name.as_str(), info.threads) {
        ("CPU", 1) => "CPU, 1 thread".to_string(),
        ("CPU", n) => format!("CPU, {n} threads"),
        (name, _) => name.to_string(),
    };
    match &info.adapter {
        Some(a) => format!("{name} ({a})"),
        None => name,
    }
}

/// One request, one answer: sends `params` as a request, and when the worker answers its
/// id, calls `done` with the typed answer (or the worker's error) and stops listening.
pub fn ask<Q: Ask + 'static>(params: Q, done: impl Fn(Result<Q::Answer, String>) + 'static) {
    let id = subscribe(move |m| {
        let Some(id) = m.id() else { return };
        let result = match m {
            FromWorker::Error { message, .. } => Err(message),
            FromWorker::Reply { reply, .. } => match Q::answer(reply) {
                Some(v) => Ok(v),
                None => return,
            },
            _ => return,
        };
        unsubscribe(id);
        done(result);
    });
    send(&ToWorker::Request { id, req: params.into_request() });
}
