//! Fine-tuning methods. One `Method` enum, matched exhaustively, so adding a method and
//! forgetting a place is a compile error. Methods adapt the model through its projection
//! slots (`model::projection`) and decide which parameters train.
//!
//! So far: full fine-tuning and LoRA. Selective methods, DoRA, adapters, soft prompts and
//! IA³ follow the same shape (issue 4).

pub mod lora;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
use crate::error::Result;
use crate::model::Gpt;
use crate::model::projection::Projection;

pub use lora::{Lora, LoraConfig};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// Every parameter trains.
    Full,
    /// The base is frozen; low-rank updates on the target projections train.
    Lora(LoraConfig),
}

impl Method {
    /// Prepares `model` for training with this method: adds the method's parameters and
    /// freezes what the method keeps fixed. `seed` draws the new parameters.
    pub fn apply(&self, model: Gpt, seed: u64, device: &Device) -> Result<Gpt> {
        match self {
            Method::Full => Ok(model),
            Method::Lora(config) => {
                config.validate("LoRA config")?;
                let mut rng = Rng::derive(seed, "lora-init");
                // Freeze everything first; LoRA's own parameters are created trainable.
                let mut model = model.no_grad();
                for_each_projection(&mut model, |path, p| {
                    if config.targets(path) {
                        p.lora = Some(Lora::init(p.d_in(), p.d_out(), config, &mut rng, device));
                    }
                });
                Ok(model)
            }
        }
    }

    /// Trainable parameters this method adds or unfreezes, by closed form.
    pub fn trainable_params(&self, model: &Gpt) -> usize {
        match self {
            Method::Full => model.config().num_params(),
            Method::Lora(config) => {
                let mut n = 0;
                let mut model = model.clone();
                for_each_projection(&mut model, |path, p| {
                    if config.targets(path) {
                        n += config.r * (p.d_in() + p.d_out());
                    }
                });
                n
            }
        }
    }
}

/// Folds every LoRA update into its base weight (`W ← W + s·A·B`) and removes the
/// adapters: the merged model has the base model's shape and no extra inference cost.
pub fn merge(mut model: Gpt) -> Gpt {
    for_each_projection(&mut model, |_, p| {
        if let Some(lora) = p.lora.take() {
            let merged = p.weight.val() + lora.delta();
            p.weight = p.weight.clone().map(|_| merged);
        }
    });
    model
}

/// Calls `f` with the dotted path and a mutable reference of every projection.
pub fn for_each_projection(model: &mut Gpt, mut f: impl FnMut(&str, &mut Projection)) {
    for (i, block) in model.h.iter_mut().enumerate() {
        f(&format!("h.{i}.attn.c_attn"), &mut block.attn.c_attn);
        f(&format!("h.{i}.attn.c_proj"), &mut block.attn.c_proj);
        f(&format!("h.{i}.mlp.c_fc"), &mut block.mlp.c_fc);
        f(&format!("h.{i}.mlp.c_proj"), &mut block.mlp.c_proj);
    }
}
