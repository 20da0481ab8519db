//! rayon's global thread pool inside the browser worker.
//!
//! flex's kernels, gemm and core's fused kernels split their work with rayon. Natively
//! rayon starts OS threads; in a browser a thread is a Web Worker that instantiates the
//! same wasm module on the same shared memory (`worker-thread.js`, written by
//! `scripts/build-worker-threads.sh`) and runs one of rayon's worker loops
//! ([`tinytune_thread`]).
//!
//! That needs two things, and the pool falls back to the worker's own thread when either
//! is missing:
//! - a build with WebAssembly atomics (shared memory), which is the `worker-cpu` build
//!   made by `scripts/build-worker-threads.sh` on the nightly toolchain;
//! - a cross-origin isolated page (COOP `same-origin` and COEP `require-corp`), without
//!   which browsers refuse to send the shared memory to another worker.
//!
//! The worker's own thread is always one of the pool's threads (rayon's
//! `use_current_thread`), so a pool of one starts no Web Worker, and a pool of two starts
//! one: the worker's thread takes part in the work instead of waiting for it.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// How many threads the pool has, and why not more.
#[derive(Clone, Debug)]
pub struct Pool {
    pub threads: usize,
    /// Empty when the pool has every core; else one sentence for the backend bar.
    pub limit: String,
}

/// The most threads the pool asks for; each is a Web Worker with its own stack.
const MAX_THREADS: usize = 8;

/// Builds rayon's global pool. Call once, before any tensor work: flex asks rayon for its
/// pool on its first operation.
///
/// The extra threads are started and loaded first, and only then handed to rayon: building
/// the pool blocks until every thread runs, and a browser loads a nested worker's script
/// through its parent's event loop, so a thread started from inside the build would never
/// arrive.
pub async fn start_pool() -> Pool {
    let global = js_sys::global();
    let get = |name: &str| js_sys::Reflect::get(&global, &JsValue::from_str(name)).ok();
    let isolated = get("crossOriginIsolated").and_then(|v| v.as_bool()).unwrap_or(false);
    let cores = get("navigator")
        .and_then(|n| js_sys::Reflect::get(&n, &JsValue::from_str("hardwareConcurrency")).ok())
        .and_then(|v| v.as_f64())
        .map_or(1, |c| (c as usize).clamp(1, MAX_THREADS));
    let (want, limit) = tinytune_web::adapter::threads(cfg!(target_feature = "atomics"), isolated, cores);
    let mut limit = limit.to_string();
    let mut loaded = Vec::new();
    for _ in 1..want {
        match load_thread().await {
            Ok(w) => loaded.push(w),
            Err(e) => {
                limit = format!("{} thread(s): starting another failed ({e}).", loaded.len() + 1);
                break;
            }
        }
    }
    let threads = loaded.len() + 1;
    match build(threads, loaded) {
        Ok(()) => Pool { threads, limit },
        Err(e) => match build(1, Vec::new()) {
            Ok(()) => Pool { threads: 1, limit: format!("One thread: rayon's pool of {threads} failed ({e}).") },
            Err(e) => Pool { threads: 1, limit: format!("One thread: rayon's pool failed ({e}).") },
        },
    }
}

fn build(threads: usize, loaded: Vec<web_sys::Worker>) -> Result<(), rayon::ThreadPoolBuildError> {
    let mut loaded = loaded.into_iter();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .spawn_handler(move |thread| {
            let worker = loaded.next().ok_or_else(|| std::io::Error::other("no loaded thread left"))?;
            run(&worker, thread).map_err(std::io::Error::other)
        })
        .build_global()
}

/// How long a new thread may take to load the module before the pool goes without it.
const LOAD_TIMEOUT_MS: f64 = 20_000.0;

/// Starts a Web Worker and instantiates the module on this thread's memory there; resolves
/// when it says it is ready to run a thread.
async fn load_thread() -> Result<web_sys::Worker, String> {
    use js_sys::{Function, Promise};
    let worker = web_sys::Worker::new("./worker-thread.js").map_err(|e| format!("{e:?}"))?;
    let ready = Promise::new(&mut |resolve, reject| {
        worker.set_onmessage(Some(&resolve));
        worker.set_onerror(Some(&reject));
    });
    worker.post_message(&js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())).map_err(|e| format!("the memory could not be shared: {e:?}"))?;
    let set_timeout: Function = js_sys::Reflect::get(&js_sys::global(), &"setTimeout".into()).ok().and_then(|f| f.dyn_into().ok()).ok_or("no setTimeout")?;
    let timeout = Promise::new(&mut |_, reject| {
        let _ = set_timeout.call3(&JsValue::NULL, &reject, &JsValue::from_f64(LOAD_TIMEOUT_MS), &"timed out".into());
    });
    let answer = wasm_bindgen_futures::JsFuture::from(Promise::race(&js_sys::Array::of2(&ready, &timeout))).await;
    worker.set_onmessage(None);
    worker.set_onerror(None);
    match answer {
        Ok(_) => Ok(worker),
        Err(e) => {
            worker.terminate();
            Err(e.dyn_ref::<web_sys::ErrorEvent>().map(|e| e.message()).or_else(|| e.as_string()).unwrap_or_else(|| format!("{e:?}")))
        }
    }
}

/// Hands a loaded thread its builder: a pointer into the shared memory, which the thread
/// takes ownership of.
fn run(worker: &web_sys::Worker, thread: rayon::ThreadBuilder) -> Result<(), String> {
    let ptr = Box::into_raw(Box::new(thread));
    worker.post_message(&JsValue::from(ptr as usize as u32)).map_err(|e| {
        // SAFETY: the message was not sent, so no other thread saw the pointer.
        drop(unsafe { Box::from_raw(ptr) });
        format!("{e:?}")
    })
}

/// A pool thread's body, called by `worker-thread.js` once the module is instantiated on
/// the shared memory. Runs rayon's worker loop for as long as the pool lives.
#[wasm_bindgen]
pub fn tinytune_thread(ptr: u32) {
    // SAFETY: `ptr` came from `Box::into_raw` in `spawn`, and only this thread received it.
    let thread = unsafe { Box::from_raw(ptr as usize as *mut rayon::ThreadBuilder) };
    thread.run();
}

/// Whether this instance of the module is a pool thread rather than the worker itself
/// (`worker-thread.js` sets the flag before instantiating): wasm-bindgen runs `main` on
/// every instance, and only the worker's may listen for the page.
pub fn is_pool_thread() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("tinytuneThread")).ok().and_then(|v| v.as_bool()).unwrap_or(false)
}
