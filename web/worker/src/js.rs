//! The few browser APIs the worker uses: messaging, timers and fetch (the WebGPU adapter
//! probe is `tinytune_web::adapter::probe`, shared with the page).

use js_sys::{Promise, Reflect, Uint8Array};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent, Response};

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

pub fn post(text: &str) {
    // Posting a string to our own page cannot fail in practice; if it does there is no one
    // to tell.
    let _ = scope().post_message(&JsValue::from_str(text));
}

pub fn set_onmessage(handler: &Closure<dyn FnMut(MessageEvent)>) {
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
}

/// Resolves after `ms` milliseconds.
pub async fn sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = scope().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(promise).await;
}

#[wasm_bindgen]
extern "C" {
    /// The platform's `MessageChannel` (declared here rather than through web-sys, whose
    /// features the worker keeps equal to the page's so that trunk compiles it once).
    type MessageChannel;
    #[wasm_bindgen(constructor)]
    fn new() -> MessageChannel;
    #[wasm_bindgen(method, getter)]
    fn port1(this: &MessageChannel) -> ChannelPort;
    #[wasm_bindgen(method, getter)]
    fn port2(this: &MessageChannel) -> ChannelPort;
    type ChannelPort;
    #[wasm_bindgen(method, setter)]
    fn set_onmessage(this: &ChannelPort, handler: &js_sys::Function);
    #[wasm_bindgen(method, js_name = postMessage)]
    fn post_message(this: &ChannelPort, value: &JsValue);
}

/// Lets the messages already queued for the worker (pause, cancel, the page's other
/// requests) run, then resumes. A message to itself over a `MessageChannel` rather than
/// `setTimeout(0)`, which browsers clamp to 4 ms once timers nest five deep: between the
/// steps of a run, 4 ms a step (2% of a micro step in the release build, 9% of a nano one).
pub async fn yield_now() {
    let promise = Promise::new(&mut |resolve, _| {
        let channel = MessageChannel::new();
        channel.port1().set_onmessage(&resolve);
        channel.port2().post_message(&JsValue::UNDEFINED);
    });
    let _ = JsFuture::from(promise).await;
}

fn js_err(what: &str, e: JsValue) -> String {
    format!("{what}: {}", e.as_string().or_else(|| js_sys::JSON::stringify(&e).ok().and_then(|s| s.as_string())).unwrap_or_else(|| "unknown error".into()))
}

async fn fetch(url: &str) -> Result<Response, String> {
    let resp = JsFuture::from(scope().fetch_with_str(url)).await.map_err(|e| js_err(url, e))?;
    let resp: Response = resp.unchecked_into();
    if !resp.ok() {
        return Err(format!("{url}: the server answered HTTP {}; is the playground served by `trunk serve` from the repository root?", resp.status()));
    }
    Ok(resp)
}

pub async fn fetch_text(url: &str) -> Result<String, String> {
    let resp = fetch(url).await?;
    let text = JsFuture::from(resp.text().map_err(|e| js_err(url, e))?).await.map_err(|e| js_err(url, e))?;
    text.as_string().ok_or_else(|| format!("{url}: the response is not text"))
}

pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let resp = fetch(url).await?;
    let buf = JsFuture::from(resp.array_buffer().map_err(|e| js_err(url, e))?).await.map_err(|e| js_err(url, e))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// The bytes of a file the reader picked on the page (read locally: nothing is uploaded).
pub async fn read_file(file: &web_sys::File) -> Result<Vec<u8>, String> {
    let name = file.name();
    let buf = JsFuture::from(file.array_buffer()).await.map_err(|e| js_err(&name, e))?;
    Ok(Uint8Array::new(&buf).to_vec())
}

/// The `File` in a message the page posted outside JSON (`{gguf: File}`), if it is one.
pub fn posted_file(data: &JsValue) -> Option<web_sys::File> {
    get(data, "gguf").dyn_into::<web_sys::File>().ok()
}

fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}
