//! The worker with WebGPU and the CPU (`tinytune_worker`); the page loads it when the
//! browser has a hardware WebGPU adapter or the reader chooses WebGPU.

fn main() {
    tinytune_worker::start();
}
