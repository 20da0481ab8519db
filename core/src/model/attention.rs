//! Causal multi-head self-attention with GPT-2's fused q/k/v projection.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor};

use super::config::ModelConfig;
use super::projection::Projection;
use crate::data::rng::Rng;

#[derive(Module, Debug)]
pub struct Attention {
    /// `C -> 3C`: queries, keys and values in one matrix multiply (GPT-2's `c_attn`).
    pub c_attn: Projection,
    /// `C -> C`: mixes the heads back into the residual stream (GPT-2's `c_proj`).
    pub c_proj: Projection,
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    pub n_head: usize,
}

impl Attention {
    pub fn init(config: &ModelConfig, rng: &mut Rng, device: &Device) -> Self {
        let c = config.n_embd;
        Self {
            c_attn: Projection::init(c, 3 * c, 0.02, rng, device),
            // GPT-2 scales the init of projections that write into the residual stream by
            // 1/sqrt(2·n_layer), so the stream's variance does not grow with depth.
            c_proj: Projection::init(c, c, 0.02 / (2.0 * config.n_layer as f64).sqrt(), rng, device),
            attn_dropout: DropoutConfig::new(config.attn_pdrop).init(),
            resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
            n_head: config.n_head,
        }
    }

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_with_prefix(x, None)
    }

    /// Attention with prefix tuning's learned keys and values (`[k, C]` each) placed before
    /// the sequence's own: every position may attend to all k of them.
    ///
    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward_with_prefix(&self, x: Tensor<3>, prefix: Option<(Tensor<2>, Tensor<2>)>) -> Tensor<3> {
        let [b, t, c] = x.dims();
        let (nh, hs) = (self.n_head, c / self.n_head);

        let qkv = self.c_attn.forward(x); // [B, T, 3C]
        // Queries, keys and values are the three C-wide thirds of the last dimension:
        // [B, T, C] -> [B, T, nh, hs] -> [B, nh, T, hs]. (Splitting the last dimension is
        // the cheapest of the equivalent layouts on flex; see native/examples/op_profile.rs.)
        let head = |i: usize| qkv.clone().narrow(2, i * c, c).reshape([b, t, nh, hs]).swap_dims(1, 2);
        let (q, mut k, mut v) = (head(0), head(1), head(2));
        let mut p = 0;
        if let Some((pk, pv)) = prefix {
            p = pk.dims()[0];
            // [k, C] -> [1, nh, k, hs] -> [B, nh, k, hs], then before the sequence's own.
            let heads = |x: Tensor<2>| x.reshape([1, p, nh, hs]).swap_dims(1, 2).expand([b, nh, p, hs]);
            k = Tensor::cat(vec![heads(pk), k], 2);
            v = Tensor::cat(vec![heads(pv), v], 2);
        }

        // Scaled dot-product scores: [B, nh, T, hs] x [B, nh, hs, P+T] -> [B, nh, T, P+T]
        let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(1.0 / (hs as f64).sqrt());
        // Causal mask: position i may not look at j > i. Burn's `tril_mask` is true *outside*
        // the lower triangle, i.e. exactly where j > i (the causality test pins this down).
        // Filling with a large negative number rather than -inf keeps a fully masked row
        // (never produced here) finite. With a prefix of P keys, query i sees key j when
        // j ≤ i + P: the whole prefix and its own past.
        let mask = Tensor::<2, Bool>::tril_mask([t, p + t], p as i64, &scores.device()).reshape([1, 1, t, p + t]).expand([b, nh, t, p + t]);
        let scores = scores.mask_fill(mask, -1.0e9);
        let probs = self.attn_dropout.forward(softmax(scores, 3));

        let y = probs.matmul(v); // [B, nh, T, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, c]); // [B, T, C]
        self.resid_dropout.forward(self.c_proj.forward(y))
    }
}
