//! LoRA (Hu et al., 2021): a frozen weight `W` plus a trainable low-rank update, computed
//! in activation space as PEFT does: `y = x·W + b + s·(dropout(x)·A)·B`.
//!
//! The update `A·B` is never formed while training, so autodiff keeps only the `[.., r]`
//! activation `x·A`, not a weight-sized tensor per layer (Burn's built-in `apply_lora`
//! composes `W + s·A·B` every forward; `tests/tests/lora_memory.rs` measures the two).
//! `A ∈ R^{d_in×r}` starts as PEFT's default (Kaiming-uniform, bound 1/√d_in) and
//! `B ∈ R^{r×d_out}` at zero, so an adapted model starts exactly at the base model.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
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

    /// Target modules from a comma-separated list (`c_attn,mlp.c_proj`), blanks dropped.
    pub fn target_list(list: &str) -> Vec<String> {
        list.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect()
    }

    /// Whether the projection at dotted `path` (e.g. `h.3.attn.c_attn`) is a target.
    pub fn targets(&self, path: &str) -> bool {
        super::path_matches(&self.target_modules, path)
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

/// The trainable low-rank path of one adapted projection.
#[derive(Module, Debug)]
pub struct Lora {
    /// `[d_in, r]`
    pub lora_a: Param<Tensor<2>>,
    /// `[r, d_out]`
    pub lora_b: Param<Tensor<2>>,
    pub dropout: Dropout,
    pub scale: f64,
    /// DoRA's magnitude vector `[d_out]`, starting at the base weight's column norms.
    pub magnitude: Option<Param<Tensor<1>>>,
}

/// The L2 norm of every output column of a `[d_in, d_out]` weight, `[d_out]`.
pub fn column_norms(w: Tensor<2>) -> Tensor<1> {
    let d_out = w.dims()[1];
    w.powf_scalar(2.0).sum_dim(0).sqrt().reshape([d_out])
}

impl Lora {
    pub fn init(d_in: usize, d_out: usize, config: &LoraConfig, rng: &mut Rng, device: &Device) -> Self {
        let r = config.r;
        let a: Vec<f32> = match config.init {
            // PEFT: nn.init.kaiming_uniform_(lora_A.weight, a=sqrt(5)) on an [r, d_in]
            // weight, i.e. U(-1/√d_in, 1/√d_in).
            // PiSSA's A is set from W afterwards (`pissa_from`); the draws keep every
            // other projection's init the same as with the default.
            LoraInit::Default | LoraInit::Pissa => {
                let bound = 1.0 / (d_in as f64).sqrt();
                (0..d_in * r).map(|_| ((2.0 * rng.unit_f64() - 1.0) * bound) as f32).collect()
            }
            // PEFT: nn.init.normal_(lora_A.weight, std=1/r).
            LoraInit::Gaussian => crate::init::normal(rng, d_in * r, 1.0 / r as f64),
        };
        Self {
            lora_a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)),
            lora_b: Param::from_tensor(Tensor::zeros([r, d_out], device)),
            dropout: DropoutConfig::new(config.lora_dropout).init(),
            scale: config.scale(),
            magnitude: None,
        }
    }

    /// DoRA's per-output factor `m / ‖W + s·A·B‖` for base weight `w`, `[d_out]`. The norm
    /// is detached, as PEFT does (the DoRA paper's section 4.3): it scales the output but
    /// takes no gradient, which saves memory and, the authors report, costs no accuracy.
    pub fn dora_factor(&self, w: Tensor<2>) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?;
        let norm = column_norms(w + self.delta()).detach();
        Some(m.val() / norm)
    }

    /// Sets A and B so that `s·A·B` is the top-r part `Σ_{i<r} σ_i·u_i·v_iᵀ` of the matrix
    /// `svd` decomposes (`[d_in, d_out]`): `A = U_r·√(S_r/s)`, `B = √(S_r/s)·V_rᵀ`. Each factor
    /// keeps its trainability.
    pub fn set_top_singular(&mut self, svd: &crate::linalg::Svd, device: &Device) {
        let (d_in, d_out, k) = (svd.m, svd.n, svd.k());
        let r = self.lora_a.shape().dims::<2>()[1];
        let root: Vec<f64> = svd.s.iter().take(r).map(|&s| (s / self.scale).sqrt()).collect();
        let a: Vec<f32> = (0..d_in * r).map(|ij| (svd.u[(ij / r) * k + ij % r] * root[ij % r]) as f32).collect();
        let b: Vec<f32> = (0..r * d_out).map(|ij| (root[ij / d_out] * svd.vt[ij]) as f32).collect();
        let require = |p: &Param<Tensor<2>>| p.val().is_require_grad();
        let (ra, rb) = (require(&self.lora_a), require(&self.lora_b));
        self.lora_a = Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, r]), device)).set_require_grad(ra);
        self.lora_b = Param::from_tensor(Tensor::from_data(TensorData::new(b, [r, d_out]), device)).set_require_grad(rb);
    }

    /// Sets A and B from the top-r singular triplets of `w` (`[d_in, d_out]`) as PiSSA does
    /// and returns the residual weight `w − s·A·B` for the frozen base. Reads `w` to the
    /// host for the SVD (randomized beyond 256 on the short side, seeded by `seed`).
    pub fn pissa_from(&mut self, w: Tensor<2>, seed: u64, device: &Device) -> Tensor<2> {
        let [d_in, d_out] = w.dims();
        let r = self.lora_a.shape().dims::<2>()[1];
        let values = w.to_data().convert::<f32>().try_to_vec::<f32>().expect("an f32 weight");
        self.set_top_singular(&crate::linalg::top(&values, d_in, d_out, r, 6, seed), device);
        (w - self.delta()).detach()
    }

    /// The update's contribution for input `x`.
    ///
    /// # Shapes
    /// `[..., d_in] -> [..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let xa = burn::tensor::module::linear(self.dropout.forward(x), self.lora_a.val(), None); // [..., r]
        burn::tensor::module::linear(xa, self.lora_b.val(), None).mul_scalar(self.scale)
    }

    /// The dense update `s·A·B`, `[d_in, d_out]`, for merging.
    pub fn delta(&self) -> Tensor<2> {
        self.lora_a.val().matmul(self.lora_b.val()).mul_scalar(self.scale)
    }
}
