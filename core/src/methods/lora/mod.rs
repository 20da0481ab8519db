//! LoRA (Hu et al., 2021): a frozen weight `W` plus a trainable low-rank update, computed
//! in activation space as PEFT does: `y = x·W + b + s·(dropout(x)·A)·B`.
//!
//! The update `A·B` is never formed while training, so autodiff keeps only the `[.., r]`
//! activation `x·A`, not a weight-sized tensor per layer (Burn's built-in `apply_lora`
//! composes `W + s·A·B` every forward; `tests/tests/lora_memory.rs` measures the two).
//! `A ∈ R^{d_in×r}` starts as PEFT's default (Kaiming-uniform, bound 1/√d_in) and
//! `B ∈ R^{r×d_out}` at zero, so an adapted model starts exactly at the base model.

//!
//! Where each variant lives:
//! - `config.rs`: [`LoraConfig`]; rsLoRA is its `use_rslora` (the scale `alpha/√r`, in
//!   `LoraConfig::scale`), DoRA its `use_dora`, PiSSA and Gaussian init its `init`, and
//!   PEFT's bias training its `bias`;
//! - `layer.rs`: [`Lora`], the path itself: its forward pass, DoRA's magnitude
//!   (`dora_factor`) and PiSSA's start from W's top singular triplets (`pissa_from`);
//! - `inject.rs`: adding the paths to a model's targeted projections, checking the targets
//!   and the rank, and the trainable count in closed form;
//! - LoRA+ (a larger learning rate for B) is an optimizer setting,
//!   `OptimConfig::loraplus_lr_ratio`, applied to every `lora_b` in `optim/optimizer.rs`;
//! - QLoRA is LoRA on an NF4 base: `methods/qlora.rs`, which injects through here.

mod config;
mod inject;
mod layer;

pub use config::{LoraBias, LoraConfig, LoraInit};
pub(crate) use inject::{add_lora, check_targets, inject, trainable};
pub use layer::{Lora, column_norms};
