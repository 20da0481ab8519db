//! The browser's WebGPU adapter and the backend rule built on it. The page asks for the
//! adapter to choose which build of the worker to load (`worker` with WebGPU, or the
//! smaller `worker-cpu`), and the worker asks again to choose its backend; both apply
//! [`choose`], so the page loads the WebGPU build exactly when the worker would use it.

use crate::protocol::BackendPref;

/// What `navigator.gpu.requestAdapter()` gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adapter {
    pub vendor: String,
    pub architecture: String,
    pub description: String,
    /// A software adapter (e.g. SwiftShader) that the browser offers when it has no GPU.
    pub fallback: bool,
}

impl Adapter {
    pub fn describe(&self) -> String {
        let parts: Vec<&str> = [self.vendor.as_str(), self.architecture.as_str(), self.description.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
        let name = if parts.is_empty() { "unnamed adapter".to_string() } else { parts.join(" ") };
        if self.fallback { format!("{name} (software fallback)") } else { name }
    }
}

/// The backend for `prefer` given the browser's adapter: `true` for WebGPU, with the
/// reason the backend bar shows. A software ("fallback") adapter such as SwiftShader is
/// correct but several times slower than the CPU backend, so `Auto` treats it like no
/// adapter; the reader can still choose WebGPU.
pub fn choose(prefer: BackendPref, adapter: Option<&Adapter>) -> (bool, &'static str) {
    match (prefer, adapter) {
        (BackendPref::Cpu, _) => (false, "you chose the CPU (Burn's flex backend, compiled to WebAssembly)"),
        (_, None) => (false, "this browser offers no WebGPU adapter, so training runs on the CPU (Burn's flex backend)"),
        (BackendPref::Auto, Some(a)) if a.fallback => {
            (false, "the only WebGPU adapter is a software (fallback) one, which is slower than the CPU; choose WebGPU to use it anyway")
        }
        (BackendPref::Auto, Some(_)) => (true, "a hardware WebGPU adapter is available"),
        (BackendPref::WebGpu, Some(a)) if a.fallback => (true, "you chose WebGPU; this adapter is a software (fallback) one, so expect it to be slow"),
        (BackendPref::WebGpu, Some(_)) => (true, "you chose WebGPU"),
    }
}

/// How many threads the worker's CPU backend asks rayon for, given whether its build has
/// WebAssembly atomics, whether the page is cross-origin isolated (browsers only share a
/// wasm memory with another worker then) and the browser's core count; with the sentence
/// the backend bar shows when that is fewer than the cores.
pub fn threads(atomics: bool, isolated: bool, cores: usize) -> (usize, &'static str) {
    if !atomics {
        (1, "One thread: this build of the worker has no WebAssembly threads.")
    } else if !isolated {
        (1, "One thread: the page is not cross-origin isolated (its server does not send the COOP and COEP headers).")
    } else if cores <= 1 {
        (1, "One thread: the browser reports one core.")
    } else {
        (cores, "")
    }
}

/// Whether this browser can make a shared WebAssembly memory, which the CPU-only build of
/// the worker (built with WebAssembly atomics) needs even when it runs on one thread.
/// Where it cannot, the page loads the WebGPU build, whose CPU backend runs on one thread.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
pub fn shared_memory() -> bool {
    let descriptor = js_sys::Object::new();
    for (k, v) in [("initial", 1.0), ("maximum", 1.0)] {
        let _ = js_sys::Reflect::set(&descriptor, &k.into(), &v.into());
    }
    let _ = js_sys::Reflect::set(&descriptor, &"shared".into(), &true.into());
    js_sys::WebAssembly::Memory::new(&descriptor).is_ok()
}

/// How long [`probe`] waits for the browser's answer.
pub const PROBE_TIMEOUT_MS: f64 = 5_000.0;

/// The default WebGPU adapter, or None when the browser has no WebGPU, no adapter, or no
/// answer within [`PROBE_TIMEOUT_MS`]. Read
/// through `Reflect`, since `web-sys`'s WebGPU bindings are unstable; `navigator.gpu` is
/// the same in a page and in a worker.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
pub async fn probe() -> Option<Adapter> {
    use js_sys::{Function, Promise, Reflect};
    use wasm_bindgen::{JsCast, JsValue};
    let get = |obj: &JsValue, key: &str| Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED);
    let gpu = get(&get(&js_sys::global(), "navigator"), "gpu");
    if gpu.is_undefined() || gpu.is_null() {
        return None;
    }
    let request: Function = get(&gpu, "requestAdapter").dyn_into().ok()?;
    let promise: Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    // A browser whose WebGPU never answers must not keep the worker from starting: after
    // PROBE_TIMEOUT_MS the answer counts as "no adapter".
    let set_timeout: Function = get(&js_sys::global(), "setTimeout").dyn_into().ok()?;
    let timeout = Promise::new(&mut |resolve, _| {
        let _ = set_timeout.call2(&JsValue::NULL, &resolve, &JsValue::from_f64(PROBE_TIMEOUT_MS));
    });
    let first = Promise::race(&js_sys::Array::of2(&promise, &timeout));
    let adapter = wasm_bindgen_futures::JsFuture::from(first).await.ok()?;
    if adapter.is_null() || adapter.is_undefined() {
        return None;
    }
    let info = get(&adapter, "info");
    let text = |k: &str| get(&info, k).as_string().unwrap_or_default();
    // Newer browsers report the flag on `adapter.info`, older ones on the adapter itself.
    let fallback = get(&info, "isFallbackAdapter").as_bool().or_else(|| get(&adapter, "isFallbackAdapter").as_bool()).unwrap_or(false);
    Some(Adapter { vendor: text("vendor"), architecture: text("architecture"), description: text("description"), fallback })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(fallback: bool) -> Adapter {
        Adapter { vendor: "v".into(), architecture: String::new(), description: "d".into(), fallback }
    }

    #[test]
    fn webgpu_only_where_an_adapter_is_wanted() {
        let (hw, sw) = (adapter(false), adapter(true));
        let cases = [
            (BackendPref::Auto, None, false),
            (BackendPref::Auto, Some(&sw), false),
            (BackendPref::Auto, Some(&hw), true),
            (BackendPref::Cpu, Some(&hw), false),
            (BackendPref::WebGpu, None, false),
            (BackendPref::WebGpu, Some(&sw), true),
            (BackendPref::WebGpu, Some(&hw), true),
        ];
        for (prefer, a, want) in cases {
            assert_eq!(choose(prefer, a).0, want, "{prefer:?} with {a:?}");
        }
    }

    #[test]
    fn threads_only_with_atomics_and_isolation() {
        assert_eq!(threads(true, true, 2).0, 2);
        assert_eq!(threads(true, true, 16).0, 16);
        for (atomics, isolated, cores) in [(false, true, 4), (true, false, 4), (true, true, 1), (true, true, 0)] {
            let (n, why) = threads(atomics, isolated, cores);
            assert_eq!(n, 1, "{atomics} {isolated} {cores}");
            assert!(why.starts_with("One thread: "), "{why}");
        }
        assert!(threads(true, false, 4).1.contains("cross-origin isolated"));
    }

    #[test]
    fn describe_names_the_adapter_and_says_software() {
        assert_eq!(adapter(false).describe(), "v d");
        assert_eq!(adapter(true).describe(), "v d (software fallback)");
        assert_eq!(Adapter { vendor: String::new(), architecture: String::new(), description: String::new(), fallback: false }.describe(), "unnamed adapter");
    }
}
