//! Memory accounting: where the bytes of a training step go, estimated and measured.
//!
//! - [`arch`]: a model description broad enough for GPT-2, Llama, Mistral, Qwen2 and Phi
//!   (presets, and Hugging Face `config.json` files), with every linear layer's shape.
//! - [`estimate`]: the estimator: bytes of parameters, gradients, optimizer state,
//!   activations, logits and overhead, per GPU and per CPU, per phase of a step, for any
//!   method, precision, optimizer, batch, sequence length, checkpointing, ZeRO stage and
//!   offload.
//! - [`deepspeed`]: DeepSpeed's ZeRO-2/ZeRO-3 model-state formulas, reproduced for parity.
//! - [`measure`]: a counting allocator and a phase-by-phase measurement of a real step.

pub mod arch;
pub mod deepspeed;
pub mod estimate;
pub mod measure;

pub use arch::{Arch, Family, Linear};
pub use estimate::{ActivationModel, BaseFormat, Breakdown, Estimate, GPUS, Offload, OptimizerKind, Plan, PlanMethod, Precision, human};
pub use measure::{CountingAlloc, StepMemory, measure_step};
