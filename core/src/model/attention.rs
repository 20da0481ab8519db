//! Causal multi-head self-attention: GPT-2's (fused q/k/v, learned positions added before
//! the blocks) and the Llama family's (separate q/k/v/o, rotary positions applied to
//! queries and keys, grouped-query attention, an optional sliding window).

use crate::kernels::causal_softmax;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor, TensorData};

use super::config::ModelConfig;
use super::projection::Projection;
use crate::init::Fill;

/// cos and sin of every position's rotation angles, `[T, head_dim]` each (row r is the
/// r-th position the forward pass rotates), built once per forward pass and shared by the
/// layers.
#[derive(Clone, Debug)]
pub struct RopeTables {
    pub cos: Tensor<2>,
    pub sin: Tensor<2>,
}

impl RopeTables {
    /// Tables for positions `start .. start + len` of a model with `config`.
    pub fn new(config: &ModelConfig, start: usize, len: usize, device: &Device) -> Self {
        let hd = config.head_dim();
        let (cos, sin) = config.rope.tables(hd, start, len, config.n_positions);
        Self { cos: Tensor::from_data(TensorData::new(cos, [len, hd]), device), sin: Tensor::from_data(TensorData::new(sin, [len, hd]), device) }
    }

    /// Rotates each head's vector pair-wise by its position's angles, as transformers'
    /// `apply_rotary_pos_emb`: `x·cos + rotate_half(x)·sin`, where `rotate_half` maps the
    /// halves `(x₁, x₂)` to `(−x₂, x₁)`.
    ///
    /// # Shapes
    /// `[B, H, T, hd] -> [B, H, T, hd]`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, t, hd] = x.dims();
        let half = hd / 2;
        let rotated = Tensor::cat(vec![x.clone().narrow(3, half, half).neg(), x.clone().narrow(3, 0, half)], 3);
        let cos = self.cos.clone().reshape([1, 1, t, hd]);
        let sin = self.sin.clone().reshape([1, 1, t, hd]);
        x * cos + rotated * sin
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    /// GPT-2: `C -> 3C`, queries, keys and values in one matrix multiply (`c_attn`).
    pub c_attn: Option<Projection>,
    /// Llama family: `C -> H·hd` queries.
    pub q_proj: Option<Projection>,
    /// Llama family: `C -> KV·hd` keys (KV ≤ H heads: grouped-query attention).
    pub k_proj: Option<Projection>,
    /// Llama family: `C -> KV·hd` values.
    pub v_proj: Option<Projection>,
    /// GPT-2: `C -> C`, mixes the heads back into the residual stream (`c_proj`).
    pub c_proj: Option<Projection>,
    /// Llama family: `H·hd -> C` (`o_proj`).
    pub o_proj: Option<Projection>,
    pub attn_dropout: Dropout,
    pub resid_dropout: Dropout,
    pub n_head: usize,
    #[module(skip)]
    pub n_kv_head: usize,
    #[module(skip)]
    pub head_dim: usize,
    /// Keys further back than this many tokens are masked (sliding-window layers).
    #[module(skip)]
    pub window: Option<usize>,
}

impl Attention {
    /// Layer `layer` of a model of `config`, weights filled as `fill` says.
    pub fn new(config: &ModelConfig, layer: usize, fill: &mut Fill, device: &Device) -> Self {
        let c = config.n_embd;
        let (hd, nh, nkv) = (config.head_dim(), config.n_head, config.n_kv_head);
        let mut attn = Self {
            c_attn: None,
            q_proj: None,
            k_proj: None,
            v_proj: None,
            c_proj: None,
            o_proj: None,
            attn_dropout: DropoutConfig::new(config.attn_pdrop).init(),
            resid_dropout: DropoutConfig::new(config.resid_pdrop).init(),
            n_head: nh,
            n_kv_head: nkv,
            head_dim: hd,
            window: config.window(layer),
        };
        if config.family.is_llama_like() {
            // transformers initialises every Llama linear layer from N(0, 0.02²).
            let b = config.qkv_bias;
            attn.q_proj = Some(Projection::filled(c, nh * hd, 0.02, b, fill, device));
            attn.k_proj = Some(Projection::filled(c, nkv * hd, 0.02, b, fill, device));
            attn.v_proj = Some(Projection::filled(c, nkv * hd, 0.02, b, fill, device));
            attn.o_proj = Some(Projection::filled(nh * hd, c, 0.02, config.o_bias, fill, device));
        } else {
            attn.c_attn = Some(Projection::filled(c, 3 * c, 0.02, true, fill, device));
            // GPT-2 scales the init of projections that write into the residual stream by
            // 1/sqrt(2·n_layer), so the stream's variance does not grow with depth.
            attn.c_proj = Some(Projection::filled(c, c, 0.02 / (2.0 * config.n_layer as f64).sqrt(), true, fill, device));
        }
        attn
    }

    projection_slots!(
        "attn.c_attn" => c_attn,
        "attn.q_proj" => q_proj,
        "attn.k_proj" => k_proj,
        "attn.v_proj" => v_proj,
        "attn.c_proj" => c_proj,
        "attn.o_proj" => o_proj,
    );

    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.forward_kv(x, None, None).0
    }

    /// A prefix's `[k, KV·hd]` keys or values as `[B, KV, k, hd]`, the layout of a layer's
    /// key/value cache.
    pub fn prefix_heads(&self, x: Tensor<2>, b: usize) -> Tensor<4> {
        let p = x.dims()[0];
        x.reshape([1, p, self.n_kv_head, self.head_dim]).swap_dims(1, 2).expand([b, self.n_kv_head, p, self.head_dim])
    }

    /// Attention over `past` keys and values (`[B, KV, P, hd]` each: a prefix, and in
    /// generation the cache of earlier positions, already rotated) followed by the new
    /// positions' own. Key j stands at position j: a prefix takes the first positions, as
    /// in transformers, where PEFT's prefix is a cache; so a sliding window hides a prefix
    /// too once a query is `window` positions past it. Returns the output and every key
    /// and value so far (the updated cache).
    ///
    /// # Shapes
    /// `[B, T, C] -> ([B, T, C], ([B, KV, P+T, hd], [B, KV, P+T, hd]))`
    pub fn forward_kv(&self, x: Tensor<3>, past: Option<(Tensor<4>, Tensor<4>)>, rope: Option<&RopeTables>) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let [b, t, c] = x.dims();
        let (nh, nkv, hs) = (self.n_head, self.n_kv_head, self.head_dim);

        // [B, T, H·hs] -> [B, T, H, hs] -> [B, H, T, hs]
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hs]).swap_dims(1, 2);
        let (q, k, v) = match (&self.c_attn, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(c_attn), ..) => {
                let qkv = c_attn.forward(x); // [B, T, 3C]
                // Queries, keys and values are the three C-wide thirds of the last dimension.
                // (Splitting the last dimension is the cheapest of the equivalent layouts on
                // flex; see native/examples/op_profile.rs.)
                let third = |i: usize| heads(qkv.clone().narrow(2, i * c, c), nh);
                (third(0), third(1), third(2))
            }
            (None, Some(q), Some(k), Some(v)) => (heads(q.forward(x.clone()), nh), heads(k.forward(x.clone()), nkv), heads(v.forward(x), nkv)),
            _ => unreachable!("an attention layer holds c_attn or q/k/v projections"),
        };
        let (q, mut k, mut v) = match rope {
            Some(r) => (r.apply(q), r.apply(k), v),
            None => (q, k, v),
        };
        if let Some((pk, pv)) = past {
            k = Tensor::cat(vec![pk, k], 2);
            v = Tensor::cat(vec![pv, v], 2);
        }
        let p = k.dims()[2] - t;
        let cache = (k.clone(), v.clone());
        if nkv < nh {
            // Grouped-query attention: query head h reads key/value head h / (H / KV).
            let rep = nh / nkv;
            let repeat = |x: Tensor<4>| x.unsqueeze_dim::<5>(2).expand([b, nkv, rep, p + t, hs]).reshape([b, nh, p + t, hs]);
            k = repeat(k);
            v = repeat(v);
        }

        // Scaled dot-product scores: [B, H, T, hs] x [B, H, hs, P+T] -> [B, H, T, P+T]
        let scores = q.matmul(k.swap_dims(2, 3));
        let scale = 1.0 / (hs as f64).sqrt();
        // Causal mask: with a prefix of P keys, query i sees key j when j ≤ i + P: the whole
        // prefix and its own past. `causal_softmax` scales, masks and normalises in one step
        // (one fused kernel on flex). A sliding window also hides the keys `window` or more
        // tokens back; that mask is built and filled with a large negative number rather than
        // -inf, which keeps a fully masked row (never produced here) finite.
        let probs = match self.window {
            Some(w) if w < p + t => {
                // Query i stands at position p + i, key j at j.
                let device = scores.device();
                let masked: Vec<bool> = (0..t).flat_map(|i| (0..p + t).map(move |j| j > p + i || p + i - j >= w)).collect();
                let mask = Tensor::<2, Bool>::from_data(TensorData::new(masked, [t, p + t]), &device);
                let scores = scores.mul_scalar(scale).mask_fill(mask.reshape([1, 1, t, p + t]).expand([b, nh, t, p + t]), -1.0e9);
                softmax(scores, 3)
            }
            _ => causal_softmax(scores, scale, p),
        };
        let probs = self.attn_dropout.forward(probs);

        let y = probs.matmul(v); // [B, H, T, hs]
        let y = y.swap_dims(1, 2).reshape([b, t, nh * hs]); // [B, T, H·hs]
        let out = self.c_proj.as_ref().or(self.o_proj.as_ref()).expect("an output projection");
        (self.resid_dropout.forward(out.forward(y)), cache)
    }
}
