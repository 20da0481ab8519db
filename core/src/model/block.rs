//! A pre-LayerNorm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::{Device, Tensor};

use super::attention::Attention;
use super::config::ModelConfig;
use super::layers::LayerNorm;
use super::projection::Projection;
use crate::data::rng::Rng;

/// The position-wise feed-forward network: widen to 4·C, GELU, narrow back.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `C -> 4C` (GPT-2's `c_fc`)
    pub c_fc: Projection,
    /// `4C -> C` (GPT-2's `c_proj`)
    pub c_proj: Projection,
    pub dropout: Dropout,
}

impl Mlp {
    pub fn init(config: &ModelConfig, rng: &mut Rng, device: &Device) -> Self {
        let (c, f) = (config.n_embd, config.inner());
        Self {
            c_fc: Projection::init(c, f, 0.02, rng, device),
            c_proj: Projection::init(f, c, 0.02 / (2.0 * config.n_layer as f64).sqrt(), rng, device),
            dropout: DropoutConfig::new(config.resid_pdrop).init(),
        }
    }

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        // GPT-2 uses the tanh approximation of GELU ("gelu_new"); using the exact erf form
        // would make logits differ from transformers' by ~1e-3.
        let h = gelu_approximate(self.c_fc.forward(x)); // [B, T, 4C]
        self.dropout.forward(self.c_proj.forward(h))
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl Block {
    pub fn init(config: &ModelConfig, rng: &mut Rng, device: &Device) -> Self {
        let eps = config.layer_norm_epsilon;
        Self {
            ln_1: LayerNorm::init(config.n_embd, eps, device),
            attn: Attention::init(config, rng, device),
            ln_2: LayerNorm::init(config.n_embd, eps, device),
            mlp: Mlp::init(config, rng, device),
        }
    }

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x));
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

