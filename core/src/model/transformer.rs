//! The whole model: embeddings, a stack of blocks, a final norm and the LM head, for
//! GPT-2 and the Llama family alike (`ModelConfig::family` decides which layers exist).
//!
//! Start reading here. `Gpt::forward` maps token ids to next-token logits; it is split into
//! `embed`, `forward_embeddings` and `lm_head` so that methods which work on embeddings (soft
//! prompts prepend learned vectors) can enter in the middle without a second model.

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::{Device, Int, Tensor};

use super::attention::RopeTables;
use super::block::Block;
use super::config::ModelConfig;
use super::layers::{Embedding, LayerNorm};
use crate::data::rng::Rng;
use crate::init::Fill;

/// Every layer's keys and values for the positions a generation has processed.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// Per layer, `[B, KV, P, hd]` keys and values (None before the first call).
    pub layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// The next position to process (the rotary or learned position index).
    pub position: usize,
}

/// A decoder-only transformer: GPT-2 (learned positions, LayerNorm, GELU MLP) or the Llama
/// family (rotary positions, RMSNorm, SwiGLU, grouped-query attention). Parameter paths use
/// GPT-2's scaffolding names in both (`wte`, `h.N.ln_1`, `h.N.attn.q_proj`, `ln_f`);
/// `model::names` maps them to each family's Hugging Face names at the file boundary. The
/// LM head is tied to `wte` (logits `h · wteᵀ`) unless the config unties it.
#[derive(Module, Debug)]
pub struct Gpt {
    /// Token embedding `[V, C]`, also the output projection when tied.
    pub wte: Embedding,
    /// Learned position embedding `[n_positions, C]` (GPT-2; None with rotary positions).
    pub wpe: Option<Embedding>,
    pub drop: Dropout,
    /// The blocks, `h.0` ... `h.{n_layer-1}` as in GPT-2's weight names.
    pub h: Vec<Block>,
    /// The final norm (LayerNorm or RMSNorm).
    pub ln_f: LayerNorm,
    /// An untied output projection `[V, C]` (`lm_head.weight`), if the config unties it.
    pub lm_head: Option<Embedding>,
    /// Prompt tuning's or P-tuning's virtual tokens (`methods::prompt`), if adapted.
    pub prompt: Option<crate::methods::SoftPrompt>,
    /// Prefix tuning's per-layer keys and values, if adapted.
    pub prefix: Option<crate::methods::Prefix>,
    /// A sequence classifier's score head `[num_labels, C]` (`score.weight`, transformers'
    /// `*ForSequenceClassification`; a reward model has one label), when the config is a
    /// classifier's ([`ModelConfig::score_labels`]). Always trained, as PEFT trains it
    /// (`modules_to_save`).
    pub score: Option<Embedding>,
    /// The shape this model was built with (not a parameter; saved as config.json).
    #[module(skip)]
    pub config: ModelConfig,
}

impl Gpt {
    /// A freshly initialised model, bit-identical for the same `(config, seed)` on every
    /// backend (weights are drawn on the CPU, see `crate::init`).
    pub fn init(config: &ModelConfig, seed: u64, device: &Device) -> Self {
        let mut rng = Rng::derive(seed, "model-init");
        Self::build(config, &mut Fill::Random(&mut rng), device)
    }

    /// A model of `config` with every weight zero, for a checkpoint to fill: no random
    /// draws, so a 1 B-parameter model builds in the time its memory takes to allocate.
    pub fn zeros(config: &ModelConfig, device: &Device) -> Self {
        Self::build(config, &mut Fill::Zeros, device)
    }

    fn build(config: &ModelConfig, fill: &mut Fill, device: &Device) -> Self {
        let (c, eps) = (config.n_embd, config.layer_norm_epsilon);
        let llama = config.family.is_llama_like();
        let wte = Embedding::filled(config.vocab_size, c, 0.02, fill, device);
        let wpe = (!llama).then(|| Embedding::filled(config.n_positions, c, 0.01, fill, device));
        let h = (0..config.n_layer).map(|i| Block::new(config, i, fill, device)).collect();
        let ln_f = if llama { LayerNorm::rms(c, eps, device) } else { LayerNorm::init(c, eps, device) };
        let lm_head = config.has_lm_head().then(|| Embedding::filled(config.vocab_size, c, 0.02, fill, device));
        let score = config.score_labels().map(|n| Embedding::filled(n, c, 0.02, fill, device));
        Self { wte, wpe, drop: DropoutConfig::new(config.embd_pdrop).init(), h, ln_f, lm_head, prompt: None, prefix: None, score, config: config.clone() }
    }

    /// This language model as a reward model: transformers' sequence classifier with one
    /// label ([`ModelConfig::as_reward_model`], `pad_id` its `pad_token_id`) and a fresh,
    /// trainable score head drawn from N(0, 0.02²) as transformers initialises a linear
    /// layer (seeded by `seed`). The LM head goes (a classifier has none); the body stays.
    pub fn into_reward_model(mut self, pad_id: u32, seed: u64) -> Self {
        let config = self.config.as_reward_model(pad_id);
        let mut rng = Rng::derive(seed, "score-head");
        self.score = Some(Embedding::filled(1, config.n_embd, 0.02, &mut Fill::Random(&mut rng), &self.device()));
        self.lm_head = None;
        self.config = config;
        self
    }

    /// A reward model's score of each row, read at `positions[i]` — the row's rightmost
    /// token that is not padding, as transformers' sequence classifiers pool — from the
    /// final hidden state through the score head's first output.
    ///
    /// # Shapes
    /// ids `[B, T]`, positions `B` -> `[B]`
    pub fn rewards(&self, ids: Tensor<2, Int>, positions: &[usize]) -> Tensor<1> {
        let [b, t] = ids.dims();
        let k = self.virtual_tokens();
        let h = self.forward_embeddings(self.embed(ids)); // [B, k+T, C]
        let h = if k > 0 { h.narrow(1, k, t) } else { h };
        let c = h.dims()[2];
        let w = self.score.as_ref().expect("a reward model has a score head").weight.val().narrow(0, 0, 1); // [1, C]
        let scores = h.reshape([b * t, c]).matmul(w.transpose()).reshape([b, t]);
        let at: Vec<i64> = positions.iter().map(|&p| p.min(t - 1) as i64).collect();
        let at = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(at, [b, 1]), &scores.device());
        scores.gather(1, at).reshape([b])
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.wte.weight.val().device()
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Virtual tokens a soft prompt prepends (0 without one).
    pub fn virtual_tokens(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.len())
    }

    /// The longest input this model takes: its positions less the soft prompt's.
    pub fn context_len(&self) -> usize {
        self.config.n_positions - self.virtual_tokens()
    }

    /// Token plus position embeddings (GPT-2; the Llama family's positions are rotations
    /// inside attention), with a soft prompt's virtual tokens first (which take positions
    /// 0..k, so the sequence grows by k).
    ///
    /// # Shapes
    /// `[B, T] -> [B, k+T, C]`
    pub fn embed(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        self.embed_at(ids, 0, true)
    }

    /// [`Self::embed`] for tokens at positions `start..` (generation with a cache), with
    /// the soft prompt prepended only when `with_prompt` (the first call).
    fn embed_at(&self, ids: Tensor<2, Int>, start: usize, with_prompt: bool) -> Tensor<3> {
        let [b, t] = ids.dims();
        let device = ids.device();
        let tokens = self.wte.forward(ids); // [B, T, C]
        let (x, k) = match self.prompt.as_ref().filter(|_| with_prompt) {
            Some(p) => {
                let v = p.vectors(); // [k, C]
                let [k, c] = v.dims();
                (Tensor::cat(vec![v.unsqueeze::<3>().expand([b, k, c]), tokens], 1), k)
            }
            None => (tokens, 0),
        };
        match &self.wpe {
            Some(wpe) => {
                let positions = Tensor::<1, Int>::arange(start as i64..(start + k + t) as i64, &device).reshape([1, k + t]); // [1, k+T]
                x + wpe.forward(positions) // [B, k+T, C] + [1, k+T, C]
            }
            None => x,
        }
    }

    /// Runs the blocks over embeddings and applies the final LayerNorm.
    ///
    /// # Shapes
    /// `[B, T, C] -> [B, T, C]`
    pub fn forward_embeddings(&self, x: Tensor<3>) -> Tensor<3> {
        let len = x.dims()[1];
        let mut x = self.drop.forward(x);
        let prefixes = self.prefix.as_ref().map(|p| p.keys_values(self.config.kv_dim(), self.h.len()));
        // Rotary positions: with a prefix of p keys (which, as in PEFT, are not rotated),
        // the sequence's positions start at p, as transformers numbers tokens after a cache.
        let start = self.prefix.as_ref().map_or(0, |p| p.len());
        let rope = self.config.family.is_llama_like().then(|| RopeTables::new(&self.config, start, len, &x.device()));
        for (i, block) in self.h.iter().enumerate() {
            x = block.forward_with(x, prefixes.as_ref().map(|kv| kv[i].clone()), rope.as_ref());
        }
        self.ln_f.forward(x)
    }

    /// Projects hidden states onto the vocabulary with the LM head (the tied embedding
    /// unless the config unties it).
    ///
    /// # Shapes
    /// `[B, T, C] -> [B, T, V]`
    pub fn lm_head(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, t, c] = h.dims();
        let w = self.lm_head.as_ref().unwrap_or(&self.wte).weight.val(); // [V, C]
        let v = w.dims()[0];
        // [B·T, C] x [C, V] -> [B·T, V]: one large matmul instead of a batched one.
        h.reshape([b * t, c]).matmul(w.transpose()).reshape([b, t, v])
    }

    /// Next-token logits for every position of the input (a soft prompt's virtual
    /// positions are dropped).
    ///
    /// # Shapes
    /// `[B, T] -> [B, T, V]`
    pub fn forward(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        let t = ids.dims()[1];
        let k = self.virtual_tokens();
        let h = self.forward_embeddings(self.embed(ids)); // [B, k+T, C]
        let h = if k > 0 { h.narrow(1, k, t) } else { h };
        self.lm_head(h)
    }

    /// Next-token logits for `ids`, continuing the positions `cache` holds (empty: a new
    /// sequence) and adding theirs to it: generation that computes each position's keys
    /// and values once. Equal to [`Self::forward`] over the whole sequence so far (the
    /// cached-generation test), except where the rotation depends on the sequence's length
    /// (dynamic NTK past `n_positions`, LongRoPE past its original context): there cached
    /// keys keep the rotation they were computed with, as in transformers.
    ///
    /// # Shapes
    /// `[B, T] -> [B, T, V]`
    pub fn forward_cached(&self, ids: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        let [b, t] = ids.dims();
        let llama = self.config.family.is_llama_like();
        let first = cache.layers.is_empty();
        if first {
            // A prefix's keys and values are the cache's first entries; with rotary
            // positions the sequence then starts at position p (as in transformers).
            let prefixes = self.prefix.as_ref().map(|p| p.keys_values(self.config.kv_dim(), self.h.len()));
            let prefix_len = self.prefix.as_ref().map_or(0, |p| p.len());
            cache.layers = self
                .h
                .iter()
                .enumerate()
                .map(|(i, block)| prefixes.as_ref().map(|kv| (block.attn.prefix_heads(kv[i].0.clone(), b), block.attn.prefix_heads(kv[i].1.clone(), b))))
                .collect();
            cache.position = if llama { prefix_len } else { 0 };
        }
        let x = self.embed_at(ids, cache.position, first);
        let len = x.dims()[1];
        let rope = llama.then(|| RopeTables::new(&self.config, cache.position, len, &x.device()));
        let mut x = self.drop.forward(x);
        for (i, block) in self.h.iter().enumerate() {
            let (y, kv) = block.forward_kv(x, cache.layers[i].take(), rope.as_ref());
            cache.layers[i] = Some(kv);
            x = y;
        }
        cache.position += len;
        let h = self.ln_f.forward(x);
        let h = if len > t { h.narrow(1, len - t, t) } else { h };
        self.lm_head(h)
    }

    /// Mean cross-entropy of `targets` under `logits`, weighted per position.
    ///
    /// `weights` is 1 where a token counts and 0 where it does not (padding, or the prompt
    /// in supervised fine-tuning); `weight_sum` is its sum, known on the host when the batch
    /// was built, so no value is read back from the device here.
    ///
    /// # Shapes
    /// logits `[B, T, V]`, targets `[B, T]`, weights `[B, T]` -> `[1]`
    pub fn loss(logits: Tensor<3>, targets: Tensor<2, Int>, weights: Tensor<2>, weight_sum: f32) -> Tensor<1> {
        let picked = crate::kernels::token_log_probs(logits, targets); // [B, T]
        (picked * weights).sum().neg().div_scalar(weight_sum.max(1.0))
    }
}
