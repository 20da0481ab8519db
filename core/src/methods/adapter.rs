//! Bottleneck adapters: small trainable networks inserted into each frozen block,
//! `h ↦ h + s·up(act(down(h)))` with `down: C → m` and `up: m → C`, m ≪ C.
//!
//! The up-projection starts at zero (weight and bias), so at initialisation every adapter
//! outputs zero and the adapted model is exactly the base model. Where they go:
//!
//! - **Houlsby** (Houlsby et al., 2019): one after the attention sublayer and one after the
//!   MLP, each on the sublayer's output before it joins the residual stream;
//! - **Pfeiffer** (Pfeiffer et al., 2021, AdapterFusion): one, after the MLP only;
//! - **parallel** (He et al., 2022, "Towards a Unified View of Parameter-Efficient Transfer
//!   Learning"): one beside the MLP, reading the MLP's input and adding to its output.
//!
//! Adapters cannot be merged into the base weights: the activation between `down` and `up`
//! is not linear, so no single matrix does what the adapter does. They cost extra compute
//! at inference, which LoRA and IA³ do not.

use burn::module::Module;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
use crate::error::{Error, Origin, Result};
use crate::model::Gpt;
use crate::model::block::gelu_new;
use crate::model::projection::Projection;

/// Where the adapters sit in a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// After attention and after the MLP.
    #[default]
    Houlsby,
    /// After the MLP only.
    Pfeiffer,
    /// Beside the MLP, on its input.
    Parallel,
}

/// The non-linearity between the two projections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterActivation {
    #[default]
    Relu,
    Gelu,
    Tanh,
}

impl std::str::FromStr for AdapterKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "houlsby" => Ok(Self::Houlsby),
            "pfeiffer" => Ok(Self::Pfeiffer),
            "parallel" => Ok(Self::Parallel),
            other => Err(format!("unknown adapter placement '{other}'; choose houlsby, pfeiffer or parallel")),
        }
    }
}

impl std::str::FromStr for AdapterActivation {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "relu" => Ok(Self::Relu),
            "gelu" => Ok(Self::Gelu),
            "tanh" => Ok(Self::Tanh),
            other => Err(format!("unknown adapter activation '{other}'; choose relu, gelu or tanh")),
        }
    }
}

/// Bottleneck adapter settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    pub kind: AdapterKind,
    /// The bottleneck width m.
    pub size: usize,
    pub activation: AdapterActivation,
    /// s, the factor on the adapter's output (He et al. use 4 for parallel adapters; 1 is
    /// the serial adapters' implicit value).
    pub scaling: f64,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self { kind: AdapterKind::Houlsby, size: 16, activation: AdapterActivation::Relu, scaling: 1.0 }
    }
}

impl AdapterConfig {
    pub fn validate(&self, n_embd: usize, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        if self.size == 0 {
            return Err(Error::config(origin, "size", "the bottleneck needs at least 1 unit"));
        }
        if self.size > n_embd {
            return Err(Error::config(
                origin,
                "size",
                format!("{} units is wider than the model's {n_embd}-wide stream; a bottleneck must be narrower", self.size),
            ));
        }
        if !self.scaling.is_finite() {
            return Err(Error::config(origin, "scaling", "must be a finite number"));
        }
        Ok(())
    }

    /// Adapters per block.
    pub fn per_block(&self) -> usize {
        match self.kind {
            AdapterKind::Houlsby => 2,
            AdapterKind::Pfeiffer | AdapterKind::Parallel => 1,
        }
    }

    /// Trainable parameters of one adapter on a `c`-wide stream: both weights and biases.
    pub fn params_each(&self, c: usize) -> usize {
        2 * c * self.size + self.size + c
    }
}

/// One bottleneck adapter.
#[derive(Module, Debug)]
pub struct Adapter {
    /// `C -> m`
    pub down: Projection,
    /// `m -> C`, zero at initialisation.
    pub up: Projection,
    #[module(skip)]
    pub activation: AdapterActivation,
    /// Reads the sublayer's input and adds beside it, instead of transforming its output.
    #[module(skip)]
    pub parallel: bool,
    pub scaling: f64,
}

impl Adapter {
    pub fn init(c: usize, config: &AdapterConfig, rng: &mut Rng, device: &Device) -> Self {
        Self {
            down: Projection::init(c, config.size, 0.02, rng, device),
            up: Projection::zeros(config.size, c, device),
            activation: config.activation,
            parallel: config.kind == AdapterKind::Parallel,
            scaling: config.scaling,
        }
    }

    /// `s·up(act(down(h)))`, without the residual.
    ///
    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn delta(&self, h: Tensor<3>) -> Tensor<3> {
        let z = self.down.forward(h);
        let z = match self.activation {
            AdapterActivation::Relu => relu(z),
            AdapterActivation::Gelu => gelu_new(z),
            AdapterActivation::Tanh => tanh(z),
        };
        self.up.forward(z).mul_scalar(self.scaling)
    }
}

/// `model` with an adapter after the MLP of every block (and one after attention for
/// Houlsby's), the base frozen.
pub(crate) fn inject(model: Gpt, config: &AdapterConfig, seed: u64, device: &Device) -> Result<Gpt> {
    config.validate(model.config().n_embd, "adapter config")?;
    let mut rng = Rng::derive(seed, "adapter-init");
    let mut model = model.no_grad();
    let c = model.config().n_embd;
    for block in &mut model.h {
        if config.kind == AdapterKind::Houlsby {
            block.adapter_attn = Some(Adapter::init(c, config, &mut rng, device));
        }
        block.adapter_mlp = Some(Adapter::init(c, config, &mut rng, device));
    }
    Ok(model)
}

/// Parameters the adapters train, by closed form.
pub(crate) fn trainable(model: &Gpt, config: &AdapterConfig) -> usize {
    model.config().n_layer * config.per_block() * config.params_each(model.config().n_embd)
}
