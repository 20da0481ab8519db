//! LoRA's settings, with PEFT's names: rank, alpha (and rsLoRA's scale, `alpha/√r` instead
//! of `alpha/r`), dropout, targets, bias training, the initialisation (PEFT's default,
//! Gaussian, PiSSA) and DoRA's switch.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Origin, Result};

/// LoRA hyperparameters, with PEFT's names and defaults where PEFT has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r of the update (PEFT's `r`, default 8).
    pub r: usize,
    /// Scale numerator (PEFT's `lora_alpha`, default 8): the update is scaled by α/r.
    pub lora_alpha: f64,
    /// Dropout on the LoRA path's input (PEFT's `lora_dropout`, default 0).
    pub lora_dropout: f64,
    /// Which projections to adapt, matched like PEFT's `target_modules`: a name matches a
    /// projection whose dotted path ends with it (`c_proj` matches `attn.c_proj` and
    /// `mlp.c_proj`); `all-linear` matches every projection.
    pub target_modules: Vec<String>,
    /// rsLoRA (Kalajdzievski, 2023): scale by α/√r instead of α/r.
    pub use_rslora: bool,
    /// Which biases train beside the LoRA matrices (PEFT's `bias`).
    #[serde(default)]
    pub bias: LoraBias,
    /// How A starts (PEFT's `init_lora_weights`); B always starts at zero.
    #[serde(default)]
    pub init: LoraInit,
    /// DoRA (Liu et al., 2024): also learn a magnitude per output, applied to the
    /// column-normalised `W + s·A·B` (PEFT's `use_dora`).
    #[serde(default)]
    pub use_dora: bool,
}

/// PEFT's `bias` option.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraBias {
    /// No bias trains (PEFT's default).
    #[default]
    None,
    /// Every bias in the model trains, LayerNorm biases included.
    All,
    /// Only the biases of the adapted projections train.
    LoraOnly,
}

/// PEFT's `init_lora_weights`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraInit {
    /// Kaiming-uniform A, U(−1/√d_in, 1/√d_in) (PEFT's `True`).
    #[default]
    Default,
    /// A ~ N(0, (1/r)²) (PEFT's `"gaussian"`).
    Gaussian,
    /// PiSSA (Meng et al., 2024; PEFT's `"pissa"`): with `W = U·S·Vᵀ`, `A = U_r·√(S_r/s)`
    /// and `B = √(S_r/s)·V_rᵀ`, so `s·A·B` is W's top-r singular part, and the frozen
    /// weight becomes the residual `W − s·A·B`. The model starts where it was (up to
    /// rounding) but trains its principal directions.
    Pissa,
}

impl std::str::FromStr for LoraBias {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(LoraBias::None),
            "all" => Ok(LoraBias::All),
            "lora_only" | "lora-only" => Ok(LoraBias::LoraOnly),
            other => Err(format!("unknown LoRA bias '{other}'; choose none, all or lora_only")),
        }
    }
}

impl std::str::FromStr for LoraInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "default" | "kaiming" => Ok(LoraInit::Default),
            "gaussian" => Ok(LoraInit::Gaussian),
            "pissa" => Ok(LoraInit::Pissa),
            other => Err(format!("unknown LoRA init '{other}'; choose default, gaussian or pissa")),
        }
    }
}

impl Default for LoraConfig {
    fn default() -> Self {
        // GPT-2's fused q/k/v projection is PEFT's usual GPT-2 target.
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["c_attn".into()],
            use_rslora: false,
            bias: LoraBias::None,
            init: LoraInit::Default,
            use_dora: false,
        }
    }
}

impl LoraConfig {
    /// The factor the update is multiplied by.
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.lora_alpha / (self.r as f64).sqrt() } else { self.lora_alpha / self.r as f64 }
    }

    /// PEFT's default targets for the family (`TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`):
    /// GPT-2's fused `c_attn`; the Llama family's `q_proj` and `v_proj`.
    pub fn default_targets(family: crate::model::Family) -> Vec<String> {
        if family.is_llama_like() { vec!["q_proj".into(), "v_proj".into()] } else { vec!["c_attn".into()] }
    }

    /// Target modules from a comma-separated list (`c_attn,mlp.c_proj`), blanks dropped.
    pub fn target_list(list: &str) -> Vec<String> {
        list.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
    }

    /// Whether the projection at dotted `path` (e.g. `h.3.attn.c_attn`) is a target.
    pub fn targets(&self, path: &str) -> bool {
        crate::methods::path_matches(&self.target_modules, path)
    }

    /// Checks the values, naming the field.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        if self.r == 0 {
            return Err(Error::config(origin, "r", "rank must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::config(origin, "lora_dropout", format!("{} is not a probability in [0, 1)", self.lora_dropout)));
        }
        if self.target_modules.is_empty() {
            return Err(Error::config(origin, "target_modules", "name at least one projection (c_attn, c_proj, c_fc, or all-linear)"));
        }
        Ok(())
    }
}
