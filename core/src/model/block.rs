//! A pre-norm transformer block: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`, the same in
//! both families (Llama's `input_layernorm` and `post_attention_layernorm` are `ln_1` and
//! `ln_2` here; `model::names` maps them).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, RopeTables};
use super::config::ModelConfig;
use super::layers::LayerNorm;
use super::projection::Projection;
use crate::init::Fill;

/// The position-wise feed-forward network: GPT-2's (widen to 4·C, GELU, narrow back) or
/// the Llama family's SwiGLU, `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// GPT-2: `C -> 4C` (`c_fc`)
    pub c_fc: Option<Projection>,
    /// GPT-2: `4C -> C` (`c_proj`)
    pub c_proj: Option<Projection>,
    /// Llama family: `C -> F`, the gate
    pub gate_proj: Option<Projection>,
    /// Llama family: `C -> F`
    pub up_proj: Option<Projection>,
    /// Llama family: `F -> C`
    pub down_proj: Option<Projection>,
    pub dropout: Dropout,
}

impl Mlp {
    pub fn new(config: &ModelConfig, fill: &mut Fill, device: &Device) -> Self {
        let (c, f) = (config.n_embd, config.inner());
        let mut mlp =
            Self { c_fc: None, c_proj: None, gate_proj: None, up_proj: None, down_proj: None, dropout: DropoutConfig::new(config.resid_pdrop).init() };
        if config.family.is_llama_like() {
            let b = config.mlp_bias;
            mlp.gate_proj = Some(Projection::filled(c, f, 0.02, b, fill, device));
            mlp.up_proj = Some(Projection::filled(c, f, 0.02, b, fill, device));
            mlp.down_proj = Some(Projection::filled(f, c, 0.02, b, fill, device));
        } else {
            mlp.c_fc = Some(Projection::filled(c, f, 0.02, true, fill, device));
            mlp.c_proj = Some(Projection::filled(f, c, 0.02 / (2.0 * config.n_layer as f64).sqrt(), true, fill, device));
        }
        mlp
    }

    projection_slots!(
        "mlp.c_fc" => c_fc,
        "mlp.c_proj" => c_proj,
        "mlp.gate_proj" => gate_proj,
        "mlp.up_proj" => up_proj,
        "mlp.down_proj" => down_proj,
    );

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let y = match (&self.c_fc, &self.c_proj, &self.gate_proj, &self.up_proj, &self.down_proj) {
            (Some(fc), Some(proj), ..) => proj.forward(gelu_new(fc.forward(x))), // via [B, T, 4C]
            (None, None, Some(gate), Some(up), Some(down)) => down.forward(crate::kernels::swiglu(gate.forward(x.clone()), up.forward(x))), // via [B, T, F]
            _ => unreachable!("an MLP holds c_fc/c_proj or gate/up/down projections"),
        };
        self.dropout.forward(y)
    }
}

/// GPT-2's GELU ("gelu_new"); see [`crate::kernels::gelu_new`], which fuses it on flex.
pub use crate::kernels::gelu_new;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn gelu_new_matches_the_tanh_formula() {
        let device = Device::flex();
        let xs: Vec<f32> = (-60..=60).map(|i| i as f32 * 0.1).collect();
        let got: Vec<f32> = gelu_new(Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device)).into_data().try_to_vec::<f32>().unwrap();
        for (x, g) in xs.iter().zip(got) {
            let x = *x as f64;
            let want = 0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh());
            assert!((g as f64 - want).abs() < 2e-6, "x={x}: {g} vs {want}");
        }
    }
}

#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
    /// A bottleneck adapter on the attention sublayer's output (Houlsby), if adapted.
    pub adapter_attn: Option<crate::methods::Adapter>,
    /// A bottleneck adapter on the MLP's output (Houlsby, Pfeiffer) or beside it (parallel).
    pub adapter_mlp: Option<crate::methods::Adapter>,
}

impl Block {
    /// Block `layer` of a model of `config`, weights filled as `fill` says.
    pub fn new(config: &ModelConfig, layer: usize, fill: &mut Fill, device: &Device) -> Self {
        let (c, eps) = (config.n_embd, config.layer_norm_epsilon);
        let norm = || if config.family.is_llama_like() { LayerNorm::rms(c, eps, device) } else { LayerNorm::init(c, eps, device) };
        Self {
            ln_1: norm(),
            attn: Attention::new(config, layer, fill, device),
            ln_2: norm(),
            mlp: Mlp::new(config, fill, device),
            adapter_attn: None,
            adapter_mlp: None,
        }
    }

    /// Every projection of the block, with its name inside it (`attn.q_proj`), in module order.
    pub fn projections(&self) -> Vec<(&'static str, &Projection)> {
        let mut all = self.attn.projections();
        all.extend(self.mlp.projections());
        all
    }

    /// [`Self::projections`], mutable.
    pub fn projections_mut(&mut self) -> Vec<(&'static str, &mut Projection)> {
        let mut all = self.attn.projections_mut();
        all.extend(self.mlp.projections_mut());
        all
    }

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with(x, None, None)
    }

    /// The block with prefix tuning's keys and values for its attention (`[k, KV·hd]`
    /// each) and the rotary tables (Llama family).
    ///
    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward_with(&self, x: Tensor<3>, prefix: Option<(Tensor<2>, Tensor<2>)>, rope: Option<&RopeTables>) -> Tensor<3> {
        let b = x.dims()[0];
        let past = prefix.map(|(k, v)| (self.attn.prefix_heads(k, b), self.attn.prefix_heads(v, b)));
        self.forward_kv(x, past, rope).0
    }

    /// The block over new positions with attention's past keys and values (a prefix's,
    /// then earlier positions'); returns the keys and values so far.
    ///
    /// # Shapes
    /// `[B, T, C] -> ([B, T, C], ([B, KV, P+T, hd], [B, KV, P+T, hd]))`
    pub fn forward_kv(&self, x: Tensor<3>, past: Option<(Tensor<4>, Tensor<4>)>, rope: Option<&RopeTables>) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let (a, cache) = self.attn.forward_kv(self.ln_1.forward(x.clone()), past, rope);
        let a = match &self.adapter_attn {
            Some(adapter) => a.clone() + adapter.delta(a),
            None => a,
        };
        let x = x + a;
        let h = self.ln_2.forward(x.clone());
        let m = self.mlp.forward(h.clone());
        let m = match &self.adapter_mlp {
            Some(adapter) if adapter.parallel => m + adapter.delta(h),
            Some(adapter) => m.clone() + adapter.delta(m),
            None => m,
        };
        (x + m, cache)
    }
}
