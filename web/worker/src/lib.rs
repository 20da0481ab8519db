//! The compute worker: owns the Burn device and runs training and sampling off the page's
//! thread (module `worker`). Built for the browser by trunk, as its own package so that the
//! page (`tinytune-web`) is compiled and linked without Burn's backends, and as two
//! binaries of the same code: `worker` with the WebGPU backend (feature `webgpu`) and
//! `worker-cpu` without it.

#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
mod threads;
#[cfg(target_arch = "wasm32")]
mod worker;

#[cfg(target_arch = "wasm32")]
pub use worker::start;

/// Counts heap bytes so the memory-timeline widget can measure a real step.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: tinytune::memory::CountingAlloc = tinytune::memory::CountingAlloc;

/// What a native build of either binary does: say where the worker runs.
#[cfg(not(target_arch = "wasm32"))]
pub fn start() {
    eprintln!("the tinytune worker runs in a browser Web Worker: build it with `trunk build` (see README.md)");
    std::process::exit(2);
}
