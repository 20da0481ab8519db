//! The two small layers a decoder needs besides projections: a norm (GPT-2's LayerNorm or
//! the Llama family's RMSNorm) and an embedding table. Written here rather than taken from
//! `burn::nn` so their parameter names are Hugging Face's (`weight`, `bias`).

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use crate::init::Fill;

/// LayerNorm (GPT-2): normalises the last dimension to zero mean and unit variance, then
/// scales and shifts. RMSNorm (Llama family, no bias): divides by the root mean square,
/// then scales.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// `[C]`, starts at 1
    pub weight: Param<Tensor<1>>,
    /// `[C]`, starts at 0; None for RMSNorm
    pub bias: Option<Param<Tensor<1>>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn init(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([d], device)), bias: Some(Param::from_tensor(Tensor::zeros([d], device))), eps }
    }

    /// RMSNorm: a gain and no bias.
    pub fn rms(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([d], device)), bias: None, eps }
    }

    /// # Shapes
    /// `[..., C] -> [..., C]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            // One fused kernel on flex; Burn's layer_norm op elsewhere.
            Some(bias) => crate::kernels::layer_norm(x, self.weight.val(), bias.val(), self.eps),
            // x / sqrt(mean(x²) + ε) · g, as transformers' LlamaRMSNorm (in f32); fused on flex.
            None => crate::kernels::rms_norm(x, self.weight.val(), self.eps),
        }
    }
}

/// A lookup table from ids to vectors.
#[derive(Module, Debug)]
pub struct Embedding {
    /// `[rows, C]`
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    pub fn init(rows: usize, d: usize, std: f64, rng: &mut crate::data::rng::Rng, device: &Device) -> Self {
        Self::filled(rows, d, std, &mut Fill::Random(rng), device)
    }

    /// A table filled as `fill` says.
    pub fn filled(rows: usize, d: usize, std: f64, fill: &mut Fill, device: &Device) -> Self {
        Self { weight: Param::from_tensor(fill.tensor([rows, d], std, device)) }
    }

    /// # Shapes
    /// `[B, T] -> [B, T, C]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}
