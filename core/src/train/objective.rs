//! What a run minimises, as a value of its configuration (`TrainConfig::objective`).
//!
//! The trainer never computes a loss itself: every path that needs one — the backward
//! pass (with or without accumulation and mixed precision), MeZO's two forward passes and
//! the held-out evaluation — asks the run's `Objective`. A new kind of training (a
//! preference pair scored against a frozen reference, a teacher's logits) is a new variant
//! here and a new batch layout, not a new loop: TRL's trainers differ in the same way, by
//! `compute_loss` and by what a batch holds.
//!
//! # Adding an objective
//! 1. Add the variant (with its settings) to [`Objective`]; serde names it in `train.json`.
//! 2. Give [`Objective::loss`] its arm. Whatever the objective needs besides the model and
//!    the batch (a reference model, cached teacher logits) is held by the trainer beside the
//!    model, not serialised here.
//! 3. Add a case to `core/tests/training.rs`'s objective checks (a loss against hand-computed
//!    values on a tiny batch).

use burn::tensor::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::model::Gpt;

use super::batch::Batch;

/// The loss a run minimises.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Next-token cross-entropy, averaged over the counted target tokens (pre-training, and
    /// supervised fine-tuning with the prompt weighted by `TrainConfig::prompt_loss_weight`,
    /// which is applied when the rows are built).
    #[default]
    NextToken,
}

impl Objective {
    /// The loss of `model` on `batch`, a `[1]` tensor on `device` (where the batch goes: the
    /// trainer's device, which may carry gradient checkpointing), with the autodiff graph
    /// when the model has one.
    ///
    /// `compute` is the reduced type the model computes in under mixed precision (None: the
    /// model's own FP32); the loss itself is always taken in FP32, from upcast logits.
    ///
    /// # Shapes
    /// batch `[B, T]` tokens -> `[1]`
    pub fn loss(&self, model: &Gpt, batch: &Batch, device: &Device, compute: Option<DType>) -> Tensor<1> {
        match self {
            Objective::NextToken => {
                let (inputs, targets, weights) = batch.to_device(device);
                let logits = model.forward(inputs); // [B, T, V]
                let logits = if compute.is_some() { logits.cast(DType::F32) } else { logits };
                // A batch with nothing counted has loss 0, not 0/0 (`Gpt::loss` divides by at
                // least one token).
                Gpt::loss(logits, targets, weights, batch.weight_sum())
            }
        }
    }

    /// How much `batch` weighs in a mean over several batches (micro-batches of an
    /// accumulated step, or evaluation batches): its counted tokens.
    pub fn weight(&self, batch: &Batch) -> f32 {
        match self {
            Objective::NextToken => batch.weight_sum(),
        }
    }
}
