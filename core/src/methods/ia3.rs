//! IA³ (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
//! than In-Context Learning"): learned vectors that rescale activations element-wise.
//!
//! The paper rescales attention's keys and values and the MLP's inner activation. GPT-2
//! computes q, k and v in one fused projection, so, as PEFT does for GPT-2, the vector on
//! `c_attn` rescales all three outputs (queries too), and the vector on `mlp.c_proj`
//! rescales that projection's *input*, which is the MLP's activation. PEFT calls the
//! input-scaled projections `feedforward_modules`.
//!
//! The vectors start at one, so the adapted model starts exactly at the base model, and
//! they merge: scaling a projection's output by `l` is scaling the columns of `W` (and its
//! bias) by `l`; scaling its input is scaling the rows of `W`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};

/// IA³ settings, with PEFT's names and GPT-2 defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ia3Config {
    /// Projections that get a vector (matched like LoRA's `target_modules`).
    pub target_modules: Vec<String>,
    /// The targets whose input, not output, is rescaled; each must also be a target.
    pub feedforward_modules: Vec<String>,
}

impl Default for Ia3Config {
    fn default() -> Self {
        // PEFT's defaults for GPT-2 (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING).
        Self { target_modules: vec!["c_attn".into(), "mlp.c_proj".into()], feedforward_modules: vec!["mlp.c_proj".into()] }
    }
}

impl Ia3Config {
    /// PEFT's defaults for the family (`TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING`
    /// and its feedforward twin, PEFT 0.21): GPT-2's q/k/v and MLP output; Llama's and
    /// Mistral's keys, values and down projection (Qwen2's queries, values and down
    /// projection), the down projection's input rescaled.
    pub fn for_family(family: crate::model::Family) -> Self {
        use crate::model::Family;
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect();
        match family {
            Family::Gpt2 => Self::default(),
            Family::Llama | Family::Mistral => Self { target_modules: v(&["k_proj", "v_proj", "down_proj"]), feedforward_modules: v(&["down_proj"]) },
            Family::Qwen2 => Self { target_modules: v(&["q_proj", "v_proj", "down_proj"]), feedforward_modules: v(&["down_proj"]) },
        }
    }

    pub fn targets(&self, path: &str) -> bool {
        super::path_matches(&self.target_modules, path)
    }

    pub fn feedforward(&self, path: &str) -> bool {
        super::path_matches(&self.feedforward_modules, path)
    }

    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        if self.target_modules.is_empty() {
            return Err(Error::config(origin, "target_modules", "name at least one projection (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)"));
        }
        if let Some(f) = self.feedforward_modules.iter().find(|f| !self.target_modules.contains(f)) {
            return Err(Error::config(origin, "feedforward_modules", format!("'{f}' is not among target_modules; a feedforward module must also be a target")));
        }
        Ok(())
    }
}

/// One projection's learned scale.
#[derive(Module, Debug)]
pub struct Ia3 {
    /// `[d_in]` when `input` is set, else `[d_out]`; starts at one.
    pub ia3_l: Param<Tensor<1>>,
    /// Whether the vector rescales the projection's input (a feedforward module).
    #[module(skip)]
    pub input: bool,
}

impl Ia3 {
    pub fn init(d_in: usize, d_out: usize, input: bool, device: &Device) -> Self {
        Self { ia3_l: Param::from_tensor(Tensor::ones([if input { d_in } else { d_out }], device)), input }
    }

    /// The vector shaped to multiply a `[..., d]` tensor.
    pub fn scale<const D: usize>(&self) -> Tensor<D> {
        self.ia3_l.val().unsqueeze::<D>()
    }

    /// `w` (`[d_in, d_out]`) with the scale folded in: rows for an input scale, columns for
    /// an output scale.
    pub fn fold(&self, w: Tensor<2>) -> Tensor<2> {
        let l = self.ia3_l.val();
        let n = l.dims()[0];
        if self.input { w * l.reshape([n, 1]) } else { w * l.reshape([1, n]) }
    }
}

/// `model` with an IA³ vector on every targeted projection (on its input for the
/// feed-forward ones), the base frozen.
pub(crate) fn inject(model: crate::model::Gpt, config: &Ia3Config, device: &Device) -> Result<crate::model::Gpt> {
    config.validate("IA³ config")?;
    super::check_known(&model, &config.target_modules, "IA³ config", "target_modules")?;
    let mut model = model.no_grad();
    super::for_each_projection(&mut model, |path, p| {
        if config.targets(path) {
            p.ia3 = Some(Ia3::init(p.d_in(), p.d_out(), config.feedforward(path), device));
        }
    });
    Ok(model)
}

/// Parameters IA³ trains: d_out per targeted projection, d_in per feed-forward one.
pub(crate) fn trainable(model: &crate::model::Gpt, config: &Ia3Config) -> usize {
    let mut n = 0;
    super::for_each_projection_ref(model, |path, p| {
        if config.targets(path) {
            n += if config.feedforward(path) { p.d_in() } else { p.d_out() };
        }
    });
    n
}
