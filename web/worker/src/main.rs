//! The compute worker: owns the Burn device and runs training and sampling off the page's
//! thread (module `worker`). Built for the browser by trunk, as its own package so that the
//! page (`tinytune-web`) is compiled and linked without Burn's backends.

#[cfg(target_arch = "wasm32")]
mod js;
#[cfg(target_arch = "wasm32")]
mod worker;

/// Counts heap bytes so the memory-timeline widget can measure a real step.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: tinytune::memory::CountingAlloc = tinytune::memory::CountingAlloc;

#[cfg(target_arch = "wasm32")]
fn main() {
    worker::start();
}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    eprintln!("the tinytune worker runs in a browser Web Worker: build it with `trunk build` (see README.md)");
    std::process::exit(2);
}
