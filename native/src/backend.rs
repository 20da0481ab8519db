//! The one place the native binary chooses a Burn backend. Everything else receives a
//! `Device` and never asks which one it is.

use burn::tensor::Device;
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (the default; also what the browser uses without WebGPU).
    Flex,
    /// Burn's older ndarray CPU backend, kept for comparison.
    Ndarray,
    /// WebGPU/Vulkan/Metal through wgpu (build with `--features wgpu`).
    Wgpu,
    /// NVIDIA GPUs through CUDA (build with `--features cuda`).
    Cuda,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_possible_value().expect("no skipped variants").get_name())
    }
}

/// The inference device for `backend`, or a message saying how to get it.
static SELECTED: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();

/// Records the backend the command line chose (once, in `main`).
pub fn select(backend: Backend) {
    let _ = SELECTED.set(backend);
}

/// Whether the chosen backend computes on the CPU (and so allocates from system memory).
pub fn on_cpu() -> bool {
    matches!(SELECTED.get().copied().unwrap_or(Backend::Flex), Backend::Flex | Backend::Ndarray)
}

pub fn device(backend: Backend) -> Result<Device, String> {
    match backend {
        Backend::Flex => flex(),
        Backend::Ndarray => ndarray(),
        Backend::Wgpu => wgpu(),
        Backend::Cuda => cuda(),
    }
}

/// The devices of data-parallel replicas 2..=n (`--data-parallel n`), autodiff: GPUs 1, 2, …
/// of the chosen GPU backend (the run itself is on GPU 0). Burn's CPU backends have one
/// device, so on flex and ndarray every replica shares it: the same arithmetic, no speed-up
/// (useful to check a run before taking it to several GPUs).
pub fn replica_devices(n: usize) -> Result<Vec<Device>, String> {
    let backend = SELECTED.get().copied().unwrap_or(Backend::Flex);
    (1..n)
        .map(|i| match backend {
            Backend::Flex | Backend::Ndarray => Ok(None),
            Backend::Wgpu => wgpu_at(i).map(Some),
            Backend::Cuda => cuda_at(i).map(Some),
        })
        .filter_map(Result::transpose)
        .map(|d| d.map(|d| d.autodiff()))
        .collect()
}

#[cfg(feature = "wgpu")]
fn wgpu_at(i: usize) -> Result<Device, String> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DiscreteGpu(i)))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu_at(_: usize) -> Result<Device, String> {
    Err(not_built("wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda_at(i: usize) -> Result<Device, String> {
    cuda()?;
    Ok(Device::cuda(i))
}
#[cfg(not(feature = "cuda"))]
fn cuda_at(_: usize) -> Result<Device, String> {
    Err(not_built("cuda"))
}

#[cfg(feature = "flex")]
fn flex() -> Result<Device, String> {
    Ok(Device::flex())
}
#[cfg(not(feature = "flex"))]
fn flex() -> Result<Device, String> {
    Err(not_built("flex"))
}

#[cfg(feature = "ndarray")]
#[allow(deprecated)] // Burn deprecates ndarray in favour of flex; we keep it selectable on purpose.
fn ndarray() -> Result<Device, String> {
    Ok(Device::ndarray())
}
#[cfg(not(feature = "ndarray"))]
fn ndarray() -> Result<Device, String> {
    Err(not_built("ndarray"))
}

#[cfg(feature = "wgpu")]
fn wgpu() -> Result<Device, String> {
    Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
}
#[cfg(not(feature = "wgpu"))]
fn wgpu() -> Result<Device, String> {
    Err(not_built("wgpu"))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device, String> {
    // cudarc panics when it cannot load the driver library; look for it first so a machine
    // without an NVIDIA driver gets a sentence instead of a backtrace.
    if !libcuda_present() {
        return Err("--backend cuda: the NVIDIA driver library (libcuda.so.1) was not found. \
                    Install the NVIDIA driver, or use --backend flex (CPU) or --backend wgpu"
            .to_string());
    }
    Ok(Device::cuda(0))
}
#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device, String> {
    Err(not_built("cuda"))
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn libcuda_present() -> bool {
    let dirs = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
        "/usr/local/cuda/compat",
    ];
    let in_ld_path = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    dirs.iter()
        .map(|d| d.to_string())
        .chain(in_ld_path.split(':').filter(|s| !s.is_empty()).map(str::to_string))
        .any(|d| std::path::Path::new(&d).join("libcuda.so.1").exists() || std::path::Path::new(&d).join("libcuda.so").exists())
}

#[allow(dead_code)]
fn not_built(name: &str) -> String {
    format!("--backend {name}: this tinytune was built without the '{name}' feature; rebuild with `cargo install --path native --features {name}` (see README)")
}
