//! The page's side of the worker: one Web Worker for the whole page, messages out, and
//! replies routed to whichever widget asked (by run or request id).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use web_sys::{MessageEvent, Worker};

use crate::protocol::{BackendInfo, FromWorker, ToWorker};

type Handler = Rc<dyn Fn(FromWorker)>;

struct Client {
    worker: Worker,
    next_id: u32,
    handlers: HashMap<u32, Handler>,
    on_backend: Handler,
}

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

/// Starts the worker. `on_backend` receives `Backend` replies and errors that belong to no
/// widget.
pub fn start(on_backend: impl Fn(FromWorker) + 'static) -> Result<(), String> {
    // trunk builds the worker next to the page and writes a loader for it (`data-loader-shim`).
    let worker = Worker::new("./worker_loader.js").map_err(|e| format!("could not start the compute worker: {e:?}"))?;
    let onmessage = Closure::<dyn FnMut(MessageEvent)>::new(|ev: MessageEvent| {
        let Some(text) = ev.data().as_string() else { return };
        let msg = match serde_json::from_str::<FromWorker>(&text) {
            Ok(m) => m,
            Err(e) => {
                web_sys::console::error_1(&format!("unreadable message from the worker: {e}: {text}").into());
                return;
            }
        };
        let id = match &msg {
            FromWorker::Status { run, .. } | FromWorker::Step { run, .. } | FromWorker::Eval { run, .. } | FromWorker::Compare { run, .. } => Some(*run),
            FromWorker::Samples { id, .. } | FromWorker::Error { id, .. } => Some(*id),
            FromWorker::Backend(_) => None,
        };
        // Clone the handler out first: it may send messages or subscribe, which borrows CLIENT.
        let handler = CLIENT.with_borrow(|c| c.as_ref().and_then(|c| id.and_then(|id| c.handlers.get(&id).cloned()).or_else(|| Some(c.on_backend.clone()))));
        if let Some(h) = handler {
            h(msg);
        }
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    CLIENT.with_borrow_mut(|c| *c = Some(Client { worker, next_id: 1, handlers: HashMap::new(), on_backend: Rc::new(on_backend) }));
    Ok(())
}

pub fn send(msg: &ToWorker) {
    CLIENT.with_borrow(|c| {
        if let Some(c) = c {
            let _ = c.worker.post_message(&JsValue::from_str(&msg.to_json()));
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
    match &info.adapter {
        Some(a) => format!("{} ({a})", info.name),
        None => info.name.clone(),
    }
}
