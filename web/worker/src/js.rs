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

/// Resolves after `ms` milliseconds; `sleep(0)` lets queued messages run.
pub async fn sleep(ms: i32) {
    let promise = Promise::new(&mut |resolve, _| {
        let _ = scope().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
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
