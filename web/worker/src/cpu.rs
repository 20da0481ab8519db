//! The worker on the CPU only (`tinytune_worker` built without the `webgpu` feature); the
//! page loads it when the browser has no hardware WebGPU adapter.

fn main() {
    tinytune_worker::start();
}
