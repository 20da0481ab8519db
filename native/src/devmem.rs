//! Peak memory of a stretch of work, from the right source for the backend: on the CPU
//! backends (flex, ndarray) every tensor is a heap allocation, counted by the binary's
//! `CountingAlloc`; on the GPU backends (wgpu, cuda) tensors live in CubeCL's memory pools
//! on the device, which report what they hold (`Device::memory_pool_usage`) and, per pool,
//! the most pages they ever held (`Device::memory_pool_report`). docs/memory.md says what
//! each figure includes.

use burn::tensor::Device;
use tinytune::memory::measure::{counting, current, peak, reset_peak};

/// What a [`Meter`] measured.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Measured {
    /// The highest figure reached during the stretch, above what was held at its start.
    pub peak_bytes: u64,
    /// What is still held at its end, above what was held at its start: for a training run,
    /// the memory between steps (weights, optimizer state), without the step's activations.
    pub resting_bytes: u64,
    /// Where it came from: `heap` (counted allocations) or `device` (the device's pools).
    pub source: &'static str,
}

/// Measures the peak memory between [`Meter::start`] and [`Meter::finish`].
pub struct Meter {
    device: Device,
    /// On the device: bytes reserved by the pools at the start.
    reserved_before: Option<u64>,
    /// On the device: bytes its live tensors used at the start.
    in_use_before: u64,
    /// On the heap: live bytes at the start.
    heap_before: usize,
}

impl Meter {
    /// Starts measuring on `device`: its pools on a GPU backend, the heap on the CPU.
    pub fn start(device: &Device) -> Self {
        let _ = device.sync();
        let usage = device.memory_pool_usage();
        let reserved_before = usage.map(|u| u.bytes_reserved);
        let in_use_before = usage.map_or(0, |u| u.bytes_in_use + u.bytes_padding);
        let heap_before = current();
        if reserved_before.is_none() {
            reset_peak();
        }
        Self { device: device.clone(), reserved_before, in_use_before, heap_before }
    }

    /// The peak since `start`; `None` when neither source is available (a binary without
    /// the counting allocator on a CPU backend).
    pub fn finish(self) -> Option<Measured> {
        match self.reserved_before {
            // Pools only grow while in use; the high-water mark of their pages is the peak
            // that the device had to provide (each pool's own peak, so when pools peaked at
            // different moments their sum is an upper bound).
            Some(before) => {
                let _ = self.device.sync();
                let high = self.device.memory_pool_report().map(|pools| pools.iter().map(|p| p.page_size * p.pages_peak).sum::<u64>());
                let usage = self.device.memory_pool_usage().unwrap_or_default();
                let now = usage.bytes_reserved.max(before);
                Some(Measured {
                    peak_bytes: high.unwrap_or(now).max(now).saturating_sub(before),
                    resting_bytes: (usage.bytes_in_use + usage.bytes_padding).saturating_sub(self.in_use_before),
                    source: "device",
                })
            }
            None => counting().then(|| Measured {
                peak_bytes: peak().saturating_sub(self.heap_before) as u64,
                resting_bytes: current().saturating_sub(self.heap_before) as u64,
                source: "heap",
            }),
        }
    }
}
