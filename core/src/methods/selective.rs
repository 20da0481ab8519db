//! Selective fine-tuning: train a chosen subset of the model's own parameters and freeze the
//! rest. Nothing is added, so there is nothing to merge: the trained model is already the
//! model. Which subset:
//!
//! - **last layers**: the top `n` transformer blocks and the final norm (the token
//!   embedding, and an untied LM head, stay frozen);
//! - **BitFit** (Ben Zaken et al., 2022): every bias, those of the LayerNorms included (a
//!   Llama-family model without biases refuses it);
//! - **LayerNorm only**: every norm's gain and bias (RMSNorm's gain in the Llama family).

use burn::module::Param;
use burn::tensor::Tensor;

use crate::error::{Error, Origin, Result};
use crate::model::params::{MapNamed, map_named};
use crate::model::{Gpt, ModelConfig};

/// Which parameters a selective method trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    LastLayers(usize),
    Biases,
    LayerNorms,
}

impl Selection {
    /// Whether the parameter called `name` trains in a model of `n_layer` blocks.
    pub fn trains(self, name: &str, n_layer: usize) -> bool {
        match self {
            Selection::LastLayers(n) => {
                name.starts_with("ln_f.")
                    || name.strip_prefix("h.").and_then(|rest| rest.split('.').next()).and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i + n >= n_layer)
            }
            Selection::Biases => name.ends_with(".bias"),
            Selection::LayerNorms => name.split('.').any(|part| part.starts_with("ln_")),
        }
    }

    /// Trainable parameters in a model of shape `config`, from its parameter list.
    pub fn count(self, config: &ModelConfig) -> usize {
        config.param_summaries().iter().filter(|p| self.trains(&p.name, config.n_layer)).map(|p| p.numel).sum()
    }

    pub fn validate(self, config: &ModelConfig, origin: impl Into<Origin>) -> Result<()> {
        if let Selection::LastLayers(n) = self
            && (n == 0 || n > config.n_layer)
        {
            return Err(Error::config(origin.into(), "n", format!("{n} layers: choose between 1 and the model's {} blocks", config.n_layer)));
        }
        if self == Selection::Biases && self.count(config) == 0 {
            return Err(Error::config(
                origin.into(),
                "method",
                format!("bitfit trains biases, and this {} model has none; choose layernorm, lora or another method", config.family.model_type()),
            ));
        }
        Ok(())
    }

    /// `model` with exactly the selected parameters trainable.
    pub fn apply(self, model: Gpt) -> Gpt {
        let n_layer = model.config().n_layer;
        mark(model, &|name| Some(self.trains(name, n_layer)))
    }
}

/// `model` with every parameter whose name `pick` accepts made trainable, the others left as
/// they are (LoRA's `bias` option).
pub(crate) fn unfreeze(model: Gpt, pick: &dyn Fn(&str) -> bool) -> Gpt {
    mark(model, &|name| pick(name).then_some(true))
}

/// Sets each parameter's trainability to what `decide` says for its dotted name (None:
/// leave it as it is).
fn mark(model: Gpt, decide: &dyn Fn(&str) -> Option<bool>) -> Gpt {
    struct Mark<'a> {
        decide: &'a dyn Fn(&str) -> Option<bool>,
    }
    impl MapNamed for Mark<'_> {
        fn map<const D: usize>(&mut self, path: &str, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            match (self.decide)(path) {
                Some(trains) => param.set_require_grad(trains),
                None => param,
            }
        }
    }
    map_named(model, Mark { decide }).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_estimators_formulas() {
        // GPT-2 small shapes: h = 768, 12 blocks, MLP 4h.
        let c = ModelConfig::new(50257, 1024, 768, 12, 12);
        let h = 768;
        assert_eq!(Selection::Biases.count(&c), 12 * (3 * h + h + 4 * h + h + 2 * h) + h);
        assert_eq!(Selection::LayerNorms.count(&c), 12 * 4 * h + 2 * h);
        let block = c.param_summaries().iter().filter(|p| p.name.starts_with("h.0.")).map(|p| p.numel).sum::<usize>();
        assert_eq!(Selection::LastLayers(2).count(&c), 2 * block + 2 * h);
        assert!(Selection::LastLayers(2).trains("h.10.mlp.c_fc.weight", 12) && !Selection::LastLayers(2).trains("h.9.ln_1.bias", 12));
        assert!(!Selection::LastLayers(2).trains("wte.weight", 12));
    }
}
