//! The two small layers GPT-2 needs besides projections: LayerNorm and an embedding table.
//! Written here rather than taken from `burn::nn` so their parameter names are GPT-2's
//! (`weight`, `bias`), which makes checkpoint keys equal Hugging Face's.

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::init::normal;

/// Normalises the last dimension to zero mean and unit variance, then scales and shifts.
#[derive(Module, Debug)]
pub struct LayerNorm {
    /// `[C]`, starts at 1
    pub weight: Param<Tensor<1>>,
    /// `[C]`, starts at 0
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn init(d: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([d], device)), bias: Param::from_tensor(Tensor::zeros([d], device)), eps }
    }

    /// # Shapes
    /// `[..., C] -> [..., C]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // Burn's fused layer_norm op: one pass on backends that implement it, and a
        // differentiable composition elsewhere.
        burn::tensor::module::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
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
        let w = Tensor::from_data(TensorData::new(normal(rng, rows * d, std), [rows, d]), device);
        Self { weight: Param::from_tensor(w) }
    }

    /// # Shapes
    /// `[B, T] -> [B, T, C]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        burn::tensor::module::embedding(self.weight.val(), ids)
    }
}
