//! Soft prompts: learned vectors the frozen model reads as if they were part of its input.
//!
//! - **Prompt tuning** (Lester et al., 2021): k virtual token embeddings prepended to the
//!   input's token embeddings. Initialised randomly, from the embeddings of a text, or from
//!   randomly sampled vocabulary rows. As in PEFT on GPT-2, the virtual tokens take positions
//!   0..k and the real tokens k..k+T, so a prompt costs k positions of context.
//! - **P-tuning** (Liu et al., 2021, "GPT Understands, Too"): the same prepended vectors,
//!   but produced by a small network (PEFT's MLP prompt encoder: Linear, ReLU, Linear, ReLU,
//!   Linear) from a learned table, which eases optimisation.
//! - **Prefix tuning** (Li & Liang, 2021): learned keys and values prepended inside every
//!   attention layer, optionally produced by an MLP (Linear, Tanh, Linear) for stability.
//!   The prefix occupies no positions here: the real tokens keep positions 0..T. (PEFT passes
//!   the prefix to GPT-2 as a key/value cache, which shifts the real tokens' positions by k;
//!   tinytune follows the paper's formulation instead.)
//!
//! None of these can be merged into the weights: they add inputs, not a change of weights.
//! And none starts exactly at the base model: prepending anything changes what attention
//! sees. Logits are returned for the real tokens only.

use burn::module::{Module, Param};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
use crate::error::{Error, Origin, Result};
use crate::model::projection::Projection;

/// How prompt tuning's virtual tokens start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// N(0, σ²) with σ the standard deviation of the model's token embeddings, so the
    /// vectors are the size of real token vectors. (PEFT's RANDOM uses `nn.Embedding`'s
    /// N(0, 1), far larger than GPT-2's embeddings.)
    #[default]
    Random,
    /// The embeddings of `init_ids` (a text's tokens), repeated or cut to k, as PEFT's TEXT.
    Text,
    /// k token embeddings sampled from the vocabulary (Lester et al.'s sampled vocabulary).
    Vocab,
}

impl std::str::FromStr for PromptInit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "random" => Ok(Self::Random),
            "text" => Ok(Self::Text),
            "vocab" => Ok(Self::Vocab),
            other => Err(format!("unknown prompt init '{other}'; choose random, text or vocab")),
        }
    }
}

/// Prompt tuning and P-tuning settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// k, the number of virtual tokens.
    pub num_virtual_tokens: usize,
    #[serde(default)]
    pub init: PromptInit,
    /// The text for `init: text`, kept for the record.
    #[serde(default)]
    pub init_text: String,
    /// The text's token ids (the caller tokenizes; the model has no tokenizer).
    #[serde(default)]
    pub init_ids: Vec<u32>,
    /// P-tuning's prompt encoder width; None is plain prompt tuning.
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self { num_virtual_tokens: 8, init: PromptInit::Random, init_text: String::new(), init_ids: Vec::new(), encoder_hidden_size: None }
    }
}

/// Prefix tuning settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixConfig {
    pub num_virtual_tokens: usize,
    /// Width of the reparameterising MLP (PEFT's `prefix_projection` with
    /// `encoder_hidden_size`); None learns the keys and values directly.
    #[serde(default)]
    pub encoder_hidden_size: Option<usize>,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self { num_virtual_tokens: 8, encoder_hidden_size: None }
    }
}

fn check_tokens(n: usize, room: usize, origin: Origin) -> Result<()> {
    if n == 0 {
        return Err(Error::config(origin, "num_virtual_tokens", "use at least 1 virtual token"));
    }
    if n >= room {
        return Err(Error::config(origin, "num_virtual_tokens", format!("{n} virtual tokens leave no room in the model's {room} positions; use fewer")));
    }
    Ok(())
}

impl PromptConfig {
    pub fn validate(&self, n_positions: usize, vocab: usize, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        check_tokens(self.num_virtual_tokens, n_positions, origin.clone())?;
        if self.init == PromptInit::Text && self.init_ids.is_empty() {
            return Err(Error::config(origin, "init_text", "init 'text' needs a non-empty text to start from"));
        }
        if let Some(id) = self.init_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::config(origin, "init_ids", format!("token {id} is outside the model's vocabulary of {vocab}")));
        }
        if self.encoder_hidden_size == Some(0) {
            return Err(Error::config(origin, "encoder_hidden_size", "the prompt encoder needs at least 1 unit"));
        }
        Ok(())
    }

    /// Trainable parameters on a `c`-wide model.
    pub fn params(&self, c: usize) -> usize {
        self.num_virtual_tokens * c + self.encoder_hidden_size.map_or(0, |h| (c * h + h) + (h * h + h) + (h * c + c))
    }
}

impl PrefixConfig {
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        check_tokens(self.num_virtual_tokens, usize::MAX, origin.clone())?;
        if self.encoder_hidden_size == Some(0) {
            return Err(Error::config(origin, "encoder_hidden_size", "the prefix encoder needs at least 1 unit"));
        }
        Ok(())
    }

    /// Trainable parameters on a `c`-wide model of `n_layer` blocks.
    /// Trainable parameters on a model `c` wide with `n_layer` layers of `kv_dim`-wide keys.
    pub fn params(&self, c: usize, kv_dim: usize, n_layer: usize) -> usize {
        let kv = 2 * n_layer * kv_dim;
        match self.encoder_hidden_size {
            None => self.num_virtual_tokens * kv,
            Some(h) => self.num_virtual_tokens * c + (c * h + h) + (h * kv + kv),
        }
    }
}

/// A small MLP over a table of vectors: ReLU between layers (P-tuning) or Tanh (prefix).
#[derive(Module, Debug)]
pub struct PromptEncoder {
    pub layers: Vec<Projection>,
    #[module(skip)]
    pub tanh: bool,
}

impl PromptEncoder {
    fn init(widths: &[usize], tanh: bool, rng: &mut Rng, device: &Device) -> Self {
        let layers = widths.windows(2).map(|w| Projection::init(w[0], w[1], 1.0 / (w[0] as f64).sqrt(), rng, device)).collect();
        Self { layers, tanh }
    }

    /// # Shapes
    /// `[k, d_first] -> [k, d_last]`
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = if self.tanh { tanh(x) } else { relu(x) };
            }
        }
        x
    }
}

/// A `[rows, cols]` table of N(0, σ²) draws with σ the standard deviation of `like`'s
/// entries, computed on the device (a WebGPU tensor cannot be read back synchronously).
fn random_like(rows: usize, cols: usize, like: &Tensor<2>, rng: &mut Rng, device: &Device) -> Tensor<2> {
    let n = like.dims().iter().product::<usize>() as f64;
    let centred = like.clone().detach() - like.clone().detach().mean().unsqueeze::<2>();
    let std = centred.powf_scalar(2.0).sum().div_scalar(n).sqrt(); // [1]
    let unit = Tensor::<2>::from_data(TensorData::new(crate::init::normal(rng, rows * cols, 1.0), [rows, cols]), device);
    unit * std.unsqueeze::<2>()
}

/// Prompt tuning's (or P-tuning's) virtual tokens.
#[derive(Module, Debug)]
pub struct SoftPrompt {
    /// `[k, C]`: the virtual tokens (prompt tuning) or the encoder's input table (P-tuning).
    pub embedding: Param<Tensor<2>>,
    pub encoder: Option<PromptEncoder>,
}

impl SoftPrompt {
    /// `wte` is the model's token embedding `[V, C]`, which the inits draw on.
    pub fn init(config: &PromptConfig, wte: &Tensor<2>, rng: &mut Rng, device: &Device) -> Self {
        let [vocab, c] = wte.dims();
        let k = config.num_virtual_tokens;
        let rows_of = |ids: Vec<i64>| {
            let idx = Tensor::<1, burn::tensor::Int>::from_data(TensorData::new(ids, [k]), device);
            wte.clone().select(0, idx).detach()
        };
        let embedding = match config.init {
            PromptInit::Random => random_like(k, c, wte, rng, device),
            PromptInit::Text => rows_of((0..k).map(|i| config.init_ids[i % config.init_ids.len()] as i64).collect()),
            PromptInit::Vocab => rows_of((0..k).map(|_| rng.below(vocab) as i64).collect()),
        };
        let encoder = config.encoder_hidden_size.map(|h| PromptEncoder::init(&[c, h, h, c], false, rng, device));
        Self { embedding: Param::from_tensor(embedding), encoder }
    }

    pub fn len(&self) -> usize {
        self.embedding.shape().dims::<2>()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The vectors the model reads, `[k, C]`.
    pub fn vectors(&self) -> Tensor<2> {
        match &self.encoder {
            Some(e) => e.forward(self.embedding.val()),
            None => self.embedding.val(),
        }
    }
}

/// Prefix tuning's per-layer keys and values.
#[derive(Module, Debug)]
pub struct Prefix {
    /// `[k, 2·L·C]` learned directly, or `[k, C]` fed through the encoder.
    pub embedding: Param<Tensor<2>>,
    pub encoder: Option<PromptEncoder>,
}

impl Prefix {
    /// Entries start at the scale of `wte`'s (the model's token embedding). `c` is the
    /// token width, `kv_dim` the width of one layer's keys (`c` unless grouped-query
    /// attention shares key/value heads).
    pub fn init(config: &PrefixConfig, c: usize, kv_dim: usize, n_layer: usize, wte: &Tensor<2>, rng: &mut Rng, device: &Device) -> Self {
        let k = config.num_virtual_tokens;
        let kv = 2 * n_layer * kv_dim;
        match config.encoder_hidden_size {
            None => Self { embedding: Param::from_tensor(random_like(k, kv, wte, rng, device)), encoder: None },
            Some(h) => {
                Self { embedding: Param::from_tensor(random_like(k, c, wte, rng, device)), encoder: Some(PromptEncoder::init(&[c, h, kv], true, rng, device)) }
            }
        }
    }

    /// Layer `l`'s key and value prefixes, each `[k, kv_dim]`, for every layer.
    pub fn keys_values(&self, c: usize, n_layer: usize) -> Vec<(Tensor<2>, Tensor<2>)> {
        let all = match &self.encoder {
            Some(e) => e.forward(self.embedding.val()),
            None => self.embedding.val(),
        };
        (0..n_layer).map(|l| (all.clone().narrow(1, 2 * l * c, c), all.clone().narrow(1, (2 * l + 1) * c, c))).collect()
    }

    pub fn len(&self) -> usize {
        self.embedding.shape().dims::<2>()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cosine similarity of each vector a soft prompt feeds the model with every token
/// embedding, `[k, V]`, on the model's device (None without a soft prompt).
pub fn token_similarity(model: &crate::model::Gpt) -> Option<Tensor<2>> {
    let p = model.prompt.as_ref()?;
    let unit = |x: Tensor<2>| {
        let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12); // [rows, 1]
        x / norm
    };
    Some(unit(p.vectors()).matmul(unit(model.wte.weight.val()).transpose()))
}

/// The `top` most similar token ids and their similarity for each row of row-major
/// `sims` (`[k, vocab]`), most similar first.
pub fn nearest(sims: &[f32], vocab: usize, top: usize) -> Vec<Vec<(u32, f32)>> {
    sims.chunks(vocab.max(1))
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            order.into_iter().take(top).map(|i| (i as u32, row[i])).collect()
        })
        .collect()
}

/// `model` with a soft prompt before its input (prompt tuning, or P-tuning with an
/// encoder), the base frozen.
pub(crate) fn inject_prompt(model: crate::model::Gpt, config: &PromptConfig, seed: u64, device: &Device) -> Result<crate::model::Gpt> {
    config.validate(model.config().n_positions, model.config().vocab_size, "prompt config")?;
    let mut rng = Rng::derive(seed, "prompt-init");
    let mut model = model.no_grad();
    model.prompt = Some(SoftPrompt::init(config, &model.wte.weight.val(), &mut rng, device));
    Ok(model)
}

/// `model` with learned keys and values before every attention layer's own, the base
/// frozen.
pub(crate) fn inject_prefix(model: crate::model::Gpt, config: &PrefixConfig, seed: u64, device: &Device) -> Result<crate::model::Gpt> {
    config.validate("prefix config")?;
    let mut rng = Rng::derive(seed, "prefix-init");
    let mut model = model.no_grad();
    let (c, kv, l) = (model.config().n_embd, model.config().kv_dim(), model.config().n_layer);
    model.prefix = Some(Prefix::init(config, c, kv, l, &model.wte.weight.val(), &mut rng, device));
    Ok(model)
}
