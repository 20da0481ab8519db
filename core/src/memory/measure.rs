//! Measured memory: a counting global allocator and a timeline of one real training step.
//!
//! On the CPU backends (flex, ndarray; native and wasm) every tensor buffer comes from the
//! Rust global allocator, so a binary that installs [`CountingAlloc`] as its
//! `#[global_allocator]` can read, at any moment, how many bytes are live and the highest
//! number reached since the last [`reset_peak`]. The core never installs it: the `tinytune`
//! binary, the browser worker and the memory tests do. GPU backends allocate on the device
//! instead; there `Device::memory_pool_usage()` is the source (see `native`).
//!
//! [`measure_step`] runs one training step of a real model the way `Trainer::step` does, but
//! stops between the phases a lesson talks about (load weights, embed the batch, forward,
//! backward, optimizer step) and records live and peak bytes at each. Parameters, gradients
//! and optimizer state are attributed exactly, from their tensors' sizes; activations are the
//! remainder of the forward peak.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::Method;
use crate::model::{Gpt, ModelConfig, named_params};
use crate::optim::{NamedGrads, OptimConfig, Optimizer};
use crate::train::Batch;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Set by the first allocation through [`CountingAlloc`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting live bytes and their peak. Install it in a binary with
/// `#[global_allocator] static A: tinytune::memory::CountingAlloc = tinytune::memory::CountingAlloc;`.
pub struct CountingAlloc;

fn grow(n: usize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(n: usize) {
    CURRENT.fetch_sub(n, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes live on the heap now (0 when no `CountingAlloc` is installed).
pub fn current() -> usize {
    CURRENT.load(Ordering::Relaxed)
}

/// The most bytes live at once since the last [`reset_peak`].
pub fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new peak measurement from what is live now.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Whether this binary counts its allocations (installed [`CountingAlloc`]).
/// (A flag the allocator sets, not a comparison of counts, which other threads' frees
/// could upset.)
pub fn counting() -> bool {
    drop(std::hint::black_box(vec![0u8; 16]));
    INSTALLED.load(Ordering::Relaxed)
}

/// One phase of a measured step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseBytes {
    /// "load weights", "embed batch", "forward", "backward", "optimizer step".
    pub phase: String,
    /// The highest number of bytes live during the phase, above the baseline.
    pub peak: u64,
    /// Bytes live when the phase ended, above the baseline.
    pub end: u64,
}

/// The measured memory of one training step (the first, so the optimizer allocates its state
/// during it), all figures above the baseline live before the model was built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMemory {
    pub phases: Vec<PhaseBytes>,
    /// Bytes of every parameter (frozen and trainable), from the tensors' shapes.
    pub params: u64,
    /// Bytes of the gradients the backward pass returned (trainable parameters only).
    pub grads: u64,
    /// Bytes of the optimizer's state after the step.
    pub optimizer: u64,
    /// The forward peak minus everything live before the forward pass began.
    pub activations: u64,
    /// The highest live bytes over the whole step.
    pub peak: u64,
    /// Bytes the backend keeps for the rest of the process after its first steps (thread
    /// pools, per-thread packing buffers): framework overhead, not part of the figures above.
    pub overhead: u64,
}

impl StepMemory {
    pub fn phase(&self, name: &str) -> Option<&PhaseBytes> {
        self.phases.iter().find(|p| p.phase == name)
    }
}

/// A batch of `b` rows of `t` tokens for a memory measurement: memory does not depend on
/// which tokens, so the ids just cycle through the vocabulary.
pub fn synthetic_batch(b: usize, t: usize, vocab: usize) -> Batch {
    let ids: Vec<u32> = (0..b * t).map(|i| (i * 31 % vocab) as u32).collect();
    let targets = ids.iter().map(|x| (x + 1) % vocab as u32).collect();
    Batch { b, t, inputs: ids, targets, weights: vec![1.0; b * t], ..Default::default() }
}

/// One unmeasured step of the same shape first. The first steps of a process start thread
/// pools and leave per-thread matrix-multiply packing buffers that live for the whole run:
/// framework overhead, returned here and reported separately rather than mixed into the
/// step's figures.
fn warm_up(config: &ModelConfig, method: &Method, batch: &Batch, device: &Device) -> Result<u64> {
    let before = current();
    for _ in 0..2 {
        let model = method.apply(Gpt::init(config, 0, device), 0, device)?;
        let (inputs, targets, weights) = batch.to_device(device);
        let loss = Gpt::loss(model.forward(inputs), targets, weights, batch.weight_sum());
        let grads = loss.backward();
        let named = NamedGrads::collect(&model, &grads);
        drop(grads);
        let mut optim = Optimizer::new(OptimConfig::default());
        drop(optim.step(1e-3, model, named));
    }
    Ok(current().saturating_sub(before) as u64)
}

/// Runs one training step of a model of shape `config` adapted with `method`, on the batch
/// `batch`, with AdamW, and measures it phase by phase. `device` must be an autodiff CPU
/// device in a binary that installed [`CountingAlloc`]; anything else is refused, because the
/// figures would be zeros.
pub fn measure_step(config: &ModelConfig, method: &Method, batch: &Batch, device: &Device) -> Result<StepMemory> {
    if !counting() {
        return Err(Error::Invalid(
            "memory measurement needs the counting allocator: install tinytune::memory::CountingAlloc as the binary's #[global_allocator]".into(),
        ));
    }
    let overhead = warm_up(config, method, batch, device)?;
    let base = current();
    let above = |x: usize| x.saturating_sub(base) as u64;
    let mut phases = Vec::new();
    let mark = |name: &str, phases: &mut Vec<PhaseBytes>| {
        phases.push(PhaseBytes { phase: name.to_string(), peak: above(peak()), end: above(current()) });
        reset_peak();
    };
    reset_peak();

    let model = method.apply(Gpt::init(config, 0, device), 0, device)?;
    let params: u64 = named_params(&model).iter().map(|p| p.numel as u64 * 4).sum();
    mark("load weights", &mut phases);

    let (inputs, targets, weights) = batch.to_device(device);
    mark("embed batch", &mut phases);
    let before_forward = current();

    let logits = model.forward(inputs);
    let loss = Gpt::loss(logits, targets, weights, batch.weight_sum());
    let activations = peak().saturating_sub(before_forward) as u64;
    mark("forward", &mut phases);

    let grads = loss.backward();
    let named = NamedGrads::collect(&model, &grads);
    drop(grads);
    drop(loss);
    let grad_bytes: u64 = named.0.iter().map(|(_, g)| g.shape().num_elements() as u64 * 4).sum();
    mark("backward", &mut phases);

    let mut optim = Optimizer::new(OptimConfig::default());
    let model = optim.step(1e-3, model, named);
    let optimizer = optim.state_bytes() as u64;
    mark("optimizer step", &mut phases);
    drop(model);

    let peak = phases.iter().map(|p| p.peak).max().unwrap_or(0);
    Ok(StepMemory { phases, params, grads: grad_bytes, optimizer, activations, peak, overhead })
}
