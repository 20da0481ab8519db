//! The shape of a model: its family, sizes, positions and presets.
//!
//! `ModelConfig` reads and writes Hugging Face's `config.json` in the family's own field
//! names: GPT-2's (`n_embd`, `n_layer`, ...) for `model_type` `gpt2`, and the Llama
//! family's (`hidden_size`, `num_hidden_layers`, `num_key_value_heads`, `rope_theta`, ...)
//! for `llama`, `qwen2` and `mistral`. A tinytune checkpoint's `config.json` is therefore one
//! that transformers reads, and a downloaded model's loads here unchanged; fields tinytune
//! does not use are kept and written back.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::rope::Rope;
use crate::error::{Error, Origin, Result};

/// Which decoder architecture a config describes (`model_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// GPT-2: learned positions, LayerNorm, fused q/k/v (`c_attn`), GELU MLP, biases
    /// everywhere, LM head tied to the token embedding.
    Gpt2,
    /// Llama (also SmolLM2): rotary positions, RMSNorm, separate q/k/v/o with grouped-query
    /// attention, SwiGLU MLP (`gate_proj`, `up_proj`, `down_proj`), no biases by default.
    Llama,
    /// Qwen2: Llama's layout with biases on q/k/v, and sliding-window layers when asked.
    Qwen2,
    /// Mistral: Llama's layout with a sliding attention window.
    Mistral,
}

impl Family {
    /// `config.json`'s `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Mistral => "mistral",
        }
    }

    /// transformers' class, for `architectures`.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Mistral => "MistralForCausalLM",
        }
    }

    /// transformers' sequence-classification class (a reward model's), for `architectures`.
    pub fn classifier_architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2ForSequenceClassification",
            Self::Llama => "LlamaForSequenceClassification",
            Self::Qwen2 => "Qwen2ForSequenceClassification",
            Self::Mistral => "MistralForSequenceClassification",
        }
    }

    /// Whether the model has rotary positions, RMSNorm and a gated MLP (every family but GPT-2).
    pub fn is_llama_like(self) -> bool {
        self != Self::Gpt2
    }

    fn from_model_type(s: &str) -> Option<Self> {
        Some(match s {
            "gpt2" => Self::Gpt2,
            "llama" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "mistral" => Self::Mistral,
            _ => return None,
        })
    }
}

/// The hyperparameters of a decoder of any supported family. Field names are GPT-2's
/// (what the rest of tinytune reads); the Llama-family fields are unused by GPT-2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct ModelConfig {
    /// Number of token ids the embedding table holds.
    pub vocab_size: usize,
    /// Longest sequence the model was built for (GPT-2: rows of the learned position table;
    /// Llama: `max_position_embeddings`, which RoPE scaling reads).
    pub n_positions: usize,
    /// Width of the residual stream, C (`hidden_size`).
    pub n_embd: usize,
    /// Number of transformer blocks (`num_hidden_layers`).
    pub n_layer: usize,
    /// Attention (query) heads per block.
    pub n_head: usize,
    /// Width of the MLP's hidden layer; GPT-2 writes `null` for the default of 4·C
    /// (`intermediate_size` in the Llama family).
    pub n_inner: Option<usize>,
    /// Dropout on the residual branches (after attention and after the MLP).
    pub resid_pdrop: f64,
    /// Dropout on the sum of token and position embeddings.
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities.
    pub attn_pdrop: f64,
    /// The norm's epsilon: LayerNorm's (GPT-2, 1e-5) or RMSNorm's (`rms_norm_eps`).
    pub layer_norm_epsilon: f64,
    /// The architecture.
    pub family: Family,
    /// Which activation GPT-2's MLP uses; only "gelu_new" (tanh approximation) is built.
    pub activation_function: String,
    /// Key/value heads (grouped-query attention); `n_head` for GPT-2.
    pub n_kv_head: usize,
    /// Per-head width when the config sets it (Llama's `head_dim`); else `n_embd / n_head`.
    pub head_dim: Option<usize>,
    /// Rotary positions (Llama family).
    pub rope: Rope,
    /// Whether the LM head is the token embedding (GPT-2 always; `tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2; Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// A bias on the attention output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Biases on the gated MLP's projections (`mlp_bias`).
    pub mlp_bias: bool,
    /// Tokens a sliding-window layer looks back over (Mistral, Qwen2 when asked).
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window (empty: none).
    pub sliding_layers: Vec<bool>,
    /// Fields of the `config.json` tinytune does not use (token ids, `torch_dtype`, ...),
    /// written back unchanged.
    pub extra: Map<String, Value>,
}

impl TryFrom<Value> for ModelConfig {
    type Error = String;
    fn try_from(v: Value) -> std::result::Result<Self, String> {
        Self::from_value(v, &Origin::from("config.json")).map_err(|e| e.to_string())
    }
}

impl From<ModelConfig> for Value {
    fn from(c: ModelConfig) -> Value {
        c.to_value()
    }
}

fn default_ln_eps() -> f64 {
    1e-5
}

/// GPT-2's `config.json` fields, as transformers writes them.
#[derive(Serialize, Deserialize)]
struct Gpt2Json {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default)]
    resid_pdrop: f64,
    #[serde(default)]
    embd_pdrop: f64,
    #[serde(default)]
    attn_pdrop: f64,
    #[serde(default = "default_ln_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_activation")]
    activation_function: String,
}

/// The Llama family's `config.json` fields that set the shape.
#[derive(Serialize, Deserialize)]
struct LlamaJson {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    rms_norm_eps: Option<f64>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: Option<bool>,
    #[serde(default)]
    attention_dropout: Option<f64>,
    /// tinytune's own: dropout on the residual branches and the embeddings (transformers'
    /// Llama has none; written only when set, so a resumed run keeps it).
    #[serde(default)]
    resid_pdrop: Option<f64>,
    #[serde(default)]
    embd_pdrop: Option<f64>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

const GPT2_FIELDS: [&str; 12] = [
    "vocab_size",
    "n_positions",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "layer_norm_epsilon",
    "activation_function",
    "model_type",
];
/// The Llama-family fields tinytune reads and writes itself; every other field (Qwen2's
/// `use_sliding_window`, `max_window_layers` and `layer_types` among them) is kept in
/// `extra` and written back as it was.
const LLAMA_FIELDS: [&str; 22] = [
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "attention_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "hidden_act",
    "sliding_window",
    "model_type",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
];

fn default_activation() -> String {
    "gelu_new".to_string()
}

/// The named shapes: tiny ones for the browser and tests (GPT-2 and Llama layouts), and
/// GPT-2's four for real-scale runs on a GPU.
/// The largest vocabulary, context, width, depth or head count a config may state: 2²⁴,
/// past every released model (the largest vocabularies are ~256 K tokens, the longest
/// contexts ~10 M positions) and small enough that no product of two overflows.
pub const MAX_SIZE: usize = 1 << 24;

pub const PRESETS: [&str; 9] = ["nano", "micro", "mini", "nano-llama", "micro-llama", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];

impl ModelConfig {
    /// A GPT-2 config with GPT-2's defaults for everything but the sizes.
    pub fn new(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        Self {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            layer_norm_epsilon: default_ln_eps(),
            family: Family::Gpt2,
            activation_function: default_activation(),
            n_kv_head: n_head,
            head_dim: None,
            rope: Rope::default(),
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            sliding_window: None,
            sliding_layers: Vec::new(),
            extra: Map::new(),
        }
    }

    /// A Llama config (RoPE θ = 10000, RMSNorm ε = 1e-6, no biases) of these sizes.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(vocab_size: usize, n_positions: usize, n_embd: usize, n_layer: usize, n_head: usize, n_kv_head: usize, inner: usize, tied: bool) -> Self {
        Self {
            n_inner: Some(inner),
            layer_norm_epsilon: 1e-6,
            family: Family::Llama,
            activation_function: "silu".into(),
            n_kv_head,
            tie_word_embeddings: tied,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            ..Self::new(vocab_size, n_positions, n_embd, n_layer, n_head)
        }
    }

    /// About 0.1 M parameters with a 64-symbol character vocabulary: trains in seconds on a CPU.
    pub fn nano() -> Self {
        Self::new(64, 128, 64, 2, 4)
    }

    /// About 0.9 M parameters with a 512-token BPE vocabulary: the shipped pretrained model.
    /// A context of 128 BPE tokens holds every generated story and task example.
    pub fn micro() -> Self {
        Self::new(512, 128, 128, 4, 4)
    }

    /// About 5 M parameters: the largest shape that is pleasant in a browser.
    pub fn mini() -> Self {
        Self::new(2048, 256, 256, 6, 8)
    }

    /// nano's size in the Llama layout, with grouped-query attention (4 query heads share 2
    /// key/value heads) and an untied LM head: the shape the tests run every method on.
    pub fn nano_llama() -> Self {
        Self::llama(64, 128, 64, 2, 4, 2, 172, false)
    }

    /// micro's size class in the Llama layout (GQA 4/2, SwiGLU of width 344 ≈ 8/3·C, tied
    /// head like SmolLM2).
    pub fn micro_llama() -> Self {
        Self::llama(512, 128, 128, 4, 4, 2, 344, true)
    }

    /// GPT-2 small (124 M parameters), the shape of the `gpt2` checkpoint.
    pub fn gpt2() -> Self {
        Self::gpt2_shape(768, 12, 12)
    }
    /// GPT-2 medium (355 M).
    pub fn gpt2_medium() -> Self {
        Self::gpt2_shape(1024, 24, 16)
    }
    /// GPT-2 large (774 M).
    pub fn gpt2_large() -> Self {
        Self::gpt2_shape(1280, 36, 20)
    }
    /// GPT-2 XL (1.56 B).
    pub fn gpt2_xl() -> Self {
        Self::gpt2_shape(1600, 48, 25)
    }

    fn gpt2_shape(n_embd: usize, n_layer: usize, n_head: usize) -> Self {
        // The released GPT-2 checkpoints were trained with 0.1 dropout everywhere.
        Self { resid_pdrop: 0.1, embd_pdrop: 0.1, attn_pdrop: 0.1, ..Self::new(50257, 1024, n_embd, n_layer, n_head) }
    }

    /// Looks a preset up by name; the error lists the valid names.
    pub fn preset(name: &str) -> Result<Self> {
        Ok(match name {
            "nano" => Self::nano(),
            "micro" => Self::micro(),
            "mini" => Self::mini(),
            "nano-llama" => Self::nano_llama(),
            "micro-llama" => Self::micro_llama(),
            "gpt2" | "gpt2-small" => Self::gpt2(),
            "gpt2-medium" => Self::gpt2_medium(),
            "gpt2-large" => Self::gpt2_large(),
            "gpt2-xl" => Self::gpt2_xl(),
            other => {
                return Err(Error::Invalid(format!("unknown preset '{other}'; choose one of {}", PRESETS.join(", "))));
            }
        })
    }

    /// Sets every dropout probability at once (fine-tuning small data often wants 0.0 or 0.1).
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self
    }

    /// Width of the MLP's hidden layer.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(self.n_embd.saturating_mul(4))
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.n_embd / self.n_head)
    }

    /// Width of the keys (and of the values): `n_kv_head · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim()
    }

    /// Whether layer `i` attends within a sliding window, and its width.
    pub fn window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.get(layer).copied().unwrap_or(false))
    }

    /// Parameter count (the sum over [`Self::param_summaries`]).
    pub fn num_params(&self) -> usize {
        self.param_summaries().iter().map(|p| p.numel).sum()
    }

    /// Every parameter's name and shape, by formula, in the order the model declares them:
    /// what `named_params` reports for a freshly built model, without allocating one (a
    /// browser can describe GPT-2 XL this way). Projection weights are `[d_in, d_out]`.
    pub fn param_summaries(&self) -> Vec<crate::model::ParamSummary> {
        let (d, f) = (self.n_embd, self.inner());
        let p = |name: String, shape: Vec<usize>| crate::model::ParamSummary { numel: shape.iter().product(), name, shape, trainable: true };
        let mut out = vec![p("wte.weight".into(), vec![self.vocab_size, d])];
        let llama = self.family.is_llama_like();
        if !llama {
            out.push(p("wpe.weight".into(), vec![self.n_positions, d]));
        }
        for i in 0..self.n_layer {
            let mut layer: Vec<(String, Vec<usize>)> = Vec::new();
            if llama {
                let (q, kv) = (self.n_head * self.head_dim(), self.kv_dim());
                layer.push(("ln_1.weight".into(), vec![d]));
                for (name, width) in [("attn.q_proj", q), ("attn.k_proj", kv), ("attn.v_proj", kv)] {
                    layer.push((format!("{name}.weight"), vec![d, width]));
                    if self.qkv_bias {
                        layer.push((format!("{name}.bias"), vec![width]));
                    }
                }
                layer.push(("attn.o_proj.weight".into(), vec![q, d]));
                if self.o_bias {
                    layer.push(("attn.o_proj.bias".into(), vec![d]));
                }
                layer.push(("ln_2.weight".into(), vec![d]));
                for (name, shape) in [("mlp.gate_proj", [d, f]), ("mlp.up_proj", [d, f]), ("mlp.down_proj", [f, d])] {
                    layer.push((format!("{name}.weight"), shape.to_vec()));
                    if self.mlp_bias {
                        layer.push((format!("{name}.bias"), vec![shape[1]]));
                    }
                }
            } else {
                layer.extend(
                    [
                        ("ln_1.weight", vec![d]),
                        ("ln_1.bias", vec![d]),
                        ("attn.c_attn.weight", vec![d, 3 * d]),
                        ("attn.c_attn.bias", vec![3 * d]),
                        ("attn.c_proj.weight", vec![d, d]),
                        ("attn.c_proj.bias", vec![d]),
                        ("ln_2.weight", vec![d]),
                        ("ln_2.bias", vec![d]),
                        ("mlp.c_fc.weight", vec![d, f]),
                        ("mlp.c_fc.bias", vec![f]),
                        ("mlp.c_proj.weight", vec![f, d]),
                        ("mlp.c_proj.bias", vec![d]),
                    ]
                    .map(|(n, s)| (n.to_string(), s)),
                );
            }
            for (n, s) in layer {
                out.push(p(format!("h.{i}.{n}"), s));
            }
        }
        out.push(p("ln_f.weight".into(), vec![d]));
        if !llama {
            out.push(p("ln_f.bias".into(), vec![d]));
        }
        if self.has_lm_head() {
            out.push(p("lm_head.weight".into(), vec![self.vocab_size, d]));
        }
        if let Some(n) = self.score_labels() {
            out.push(p("score.weight".into(), vec![n, d]));
        }
        out
    }

    /// Whether the model has an untied LM head of its own (`lm_head.weight`): an untied
    /// config, unless it is a classifier, which has a score head instead.
    pub fn has_lm_head(&self) -> bool {
        !self.tie_word_embeddings && self.score_labels().is_none()
    }

    /// The outputs of the score head of a sequence classifier — a reward model, one output
    /// — when `architectures` names a `*ForSequenceClassification` class: the number of
    /// `id2label` entries (transformers' `num_labels`), 2 when the config gives none, as
    /// transformers defaults. None for a language model.
    pub fn score_labels(&self) -> Option<usize> {
        let classifier = self.extra.get("architectures")?.as_array()?.iter().any(|a| a.as_str().is_some_and(|a| a.ends_with("ForSequenceClassification")));
        classifier.then(|| self.extra.get("id2label").and_then(Value::as_object).map_or(2, |m| m.len()))
    }

    /// This config with `bos_token_id` and `eos_token_id` set to `eot` (the tokenizer's
    /// end-of-text id) where they are missing or outside the vocabulary: transformers fills a
    /// GPT-2 config without them with GPT-2's own 50256, which a smaller vocabulary does not
    /// have (and warns). Ids inside the vocabulary are kept; without an `eot` nothing changes.
    pub fn with_token_ids(&self, eot: Option<u32>) -> Self {
        let mut c = self.clone();
        let Some(eot) = eot.filter(|&e| (e as usize) < self.vocab_size) else { return c };
        for key in ["bos_token_id", "eos_token_id"] {
            let inside = c.extra.get(key).and_then(Value::as_u64).is_some_and(|id| (id as usize) < self.vocab_size);
            if !inside {
                c.extra.insert(key.into(), json!(eot));
            }
        }
        c
    }

    /// The id transformers' sequence classifiers treat as padding (`pad_token_id`): the
    /// score is read at each row's rightmost token that is not this id.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.extra.get("pad_token_id").and_then(Value::as_u64).map(|v| v as u32)
    }

    /// This config as a reward model's: transformers' sequence classifier for the family,
    /// one label (`num_labels = 1`, a scalar score), and `pad_id` as `pad_token_id` (TRL's
    /// `RewardTrainer` sets the tokenizer's pad token, or else its end-of-sequence token).
    pub fn as_reward_model(&self, pad_id: u32) -> Self {
        let mut c = self.clone();
        c.extra.insert("architectures".into(), json!([self.family.classifier_architecture()]));
        c.extra.insert("id2label".into(), json!({"0": "LABEL_0"}));
        c.extra.insert("label2id".into(), json!({"LABEL_0": 0}));
        c.extra.insert("pad_token_id".into(), json!(pad_id));
        c
    }

    /// Checks every field, naming the first bad one (in the family's own field names) and
    /// how to fix it.
    pub fn validate(&self, origin: impl Into<Origin>) -> Result<()> {
        let origin = origin.into();
        let llama = self.family.is_llama_like();
        let name = |gpt2: &'static str, hf: &'static str| if llama { hf } else { gpt2 };
        let positive = [
            ("vocab_size", self.vocab_size),
            (name("n_positions", "max_position_embeddings"), self.n_positions),
            (name("n_embd", "hidden_size"), self.n_embd),
            (name("n_layer", "num_hidden_layers"), self.n_layer),
            (name("n_head", "num_attention_heads"), self.n_head),
            ("num_key_value_heads", self.n_kv_head),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(Error::config(origin, field, "must be at least 1"));
            }
        }
        // Sizes past any real model's are a damaged or hand-edited file: refuse them before
        // anything is computed from them (a product of two of them must fit in memory
        // arithmetic, and a model is allocated from them).
        let sized = positive.into_iter().chain([(name("n_inner", "intermediate_size"), self.inner()), ("head_dim", self.head_dim.unwrap_or(1))]);
        for (field, value) in sized {
            if value > MAX_SIZE {
                return Err(Error::config(
                    origin,
                    field,
                    format!(
                        "{value} is past the largest size tinytune accepts ({MAX_SIZE}, far beyond any released model); is this the config.json of these weights?"
                    ),
                ));
            }
        }
        if self.head_dim.is_none() && !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::config(
                origin,
                name("n_head", "num_attention_heads"),
                format!(
                    "{} = {} does not divide evenly into {} heads; pick a head count that divides it",
                    name("n_embd", "hidden_size"),
                    self.n_embd,
                    self.n_head
                ),
            ));
        }
        if !self.n_head.is_multiple_of(self.n_kv_head) {
            return Err(Error::config(
                origin,
                "num_key_value_heads",
                format!("{} query heads cannot share {} key/value heads evenly; pick a divisor of num_attention_heads", self.n_head, self.n_kv_head),
            ));
        }
        if self.n_inner == Some(0) {
            return Err(Error::config(origin, name("n_inner", "intermediate_size"), "must be at least 1"));
        }
        if self.head_dim == Some(0) {
            return Err(Error::config(origin, "head_dim", "must be at least 1 (or left out for hidden_size / num_attention_heads)"));
        }
        for (field, p) in [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), (name("attn_pdrop", "attention_dropout"), self.attn_pdrop)] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::config(origin, field, format!("{p} is not a probability in [0, 1)")));
            }
        }
        if !(self.layer_norm_epsilon > 0.0) {
            return Err(Error::config(origin, name("layer_norm_epsilon", "rms_norm_eps"), "must be a small positive number such as 1e-5"));
        }
        if llama {
            if self.activation_function != "silu" {
                return Err(Error::config(
                    origin,
                    "hidden_act",
                    format!("'{}' is not supported; the Llama family's gated MLP uses \"silu\"", self.activation_function),
                ));
            }
            self.rope.validate(self.head_dim(), &origin)?;
            if self.sliding_window == Some(0) {
                return Err(Error::config(origin, "sliding_window", "must be at least 1 (or null for full attention)"));
            }
        } else {
            if self.activation_function != "gelu_new" && self.activation_function != "gelu_pytorch_tanh" {
                return Err(Error::config(
                    origin,
                    "activation_function",
                    format!("'{}' is not supported; tinytune builds GPT-2's \"gelu_new\"", self.activation_function),
                ));
            }
            if self.head_dim.is_some() || self.n_kv_head != self.n_head || !self.tie_word_embeddings {
                return Err(Error::Invalid("a GPT-2 config has one key/value head per query head and a tied head".into()));
            }
        }
        Ok(())
    }

    /// Parses and validates a `config.json` text. `origin` names the file in errors.
    pub fn from_json(text: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        let v: Value = serde_json::from_str(text).map_err(|e| Error::parse(origin.clone(), format!("{e} (expected a Hugging Face config.json)")))?;
        Self::from_value(v, &origin)
    }

    fn from_value(v: Value, origin: &Origin) -> Result<Self> {
        let Value::Object(map) = v else {
            return Err(Error::parse(origin.clone(), "expected a JSON object (a Hugging Face config.json)"));
        };
        // tinytune's own files before the Llama family wrote no model_type; GPT-2's fields say which.
        let model_type = map.get("model_type").and_then(Value::as_str).unwrap_or("gpt2");
        let Some(family) = Family::from_model_type(model_type) else {
            return Err(Error::config(
                origin.clone(),
                "model_type",
                format!("is '{model_type}'; tinytune builds gpt2, llama (also SmolLM2), qwen2 and mistral models"),
            ));
        };
        let known: &[&str] = if family.is_llama_like() { &LLAMA_FIELDS } else { &GPT2_FIELDS };
        // Qwen2's window is read here but written back as the file had it (with
        // use_sliding_window, which decides whether it applies).
        let kept = |k: &str| !known.contains(&k) || (family == Family::Qwen2 && k == "sliding_window");
        let extra: Map<String, Value> = map.iter().filter(|(k, _)| kept(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let config = if family.is_llama_like() {
            let j: LlamaJson = serde_json::from_value(Value::Object(map.clone())).map_err(|e| {
                Error::parse(
                    origin.clone(),
                    format!(
                        "{e} (expected a {model_type} config.json with vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads)"
                    ),
                )
            })?;
            let max_positions = j.max_position_embeddings.unwrap_or(2048);
            let rope = Rope::from_hf(&map, max_positions, origin)?;
            // Qwen2 has q/k/v biases and no `attention_bias` setting.
            let bias = family != Family::Qwen2 && j.attention_bias.unwrap_or(false);
            let n_layer = j.num_hidden_layers;
            let sliding_window = match family {
                // transformers' MistralConfig defaults to a 4096-token window; null turns it off.
                Family::Mistral if !map.contains_key("sliding_window") => Some(4096),
                Family::Mistral => j.sliding_window,
                Family::Qwen2 if j.use_sliding_window.unwrap_or(false) || j.layer_types.is_some() => j.sliding_window,
                _ => None,
            };
            let sliding_layers = match (&j.layer_types, family) {
                (Some(types), _) => {
                    if types.len() != n_layer {
                        return Err(Error::config(origin.clone(), "layer_types", format!("lists {} layers but num_hidden_layers is {n_layer}", types.len())));
                    }
                    types.iter().map(|t| t == "sliding_attention").collect()
                }
                (None, Family::Qwen2) => (0..n_layer).map(|i| i >= j.max_window_layers.unwrap_or(28)).collect(),
                (None, _) => vec![true; n_layer],
            };
            Self {
                vocab_size: j.vocab_size,
                n_positions: max_positions,
                n_embd: j.hidden_size,
                n_layer,
                n_head: j.num_attention_heads,
                n_inner: Some(j.intermediate_size),
                resid_pdrop: j.resid_pdrop.unwrap_or(0.0),
                embd_pdrop: j.embd_pdrop.unwrap_or(0.0),
                attn_pdrop: j.attention_dropout.unwrap_or(0.0),
                layer_norm_epsilon: j.rms_norm_eps.unwrap_or(1e-6),
                family,
                activation_function: j.hidden_act.unwrap_or_else(|| "silu".into()),
                n_kv_head: j.num_key_value_heads.unwrap_or(j.num_attention_heads),
                head_dim: j.head_dim.filter(|&h| h != j.hidden_size / j.num_attention_heads.max(1)),
                rope,
                tie_word_embeddings: j.tie_word_embeddings.unwrap_or(false),
                qkv_bias: bias || family == Family::Qwen2,
                o_bias: bias,
                mlp_bias: j.mlp_bias.unwrap_or(false),
                sliding_window,
                sliding_layers: if sliding_window.is_some() { sliding_layers } else { Vec::new() },
                extra,
            }
        } else {
            let j: Gpt2Json = serde_json::from_value(Value::Object(map.clone())).map_err(|e| {
                // serde names the missing or mistyped field; add what the file should look like.
                Error::parse(origin.clone(), format!("{e} (expected a GPT-2 style config.json with vocab_size, n_positions, n_embd, n_layer, n_head)"))
            })?;
            Self {
                n_inner: j.n_inner,
                resid_pdrop: j.resid_pdrop,
                embd_pdrop: j.embd_pdrop,
                attn_pdrop: j.attn_pdrop,
                layer_norm_epsilon: j.layer_norm_epsilon,
                activation_function: j.activation_function,
                extra,
                ..Self::new(j.vocab_size, j.n_positions, j.n_embd, j.n_layer, j.n_head)
            }
        };
        config.validate(origin.clone())?;
        Ok(config)
    }

    fn to_value(&self) -> Value {
        let mut out = self.extra.clone();
        let fields = if self.family.is_llama_like() {
            let qwen2 = self.family == Family::Qwen2;
            // Qwen2's window settings live in `extra` when they were read from a file; a
            // config made here with a window writes them.
            let qwen_window = qwen2 && self.sliding_window.is_some() && !out.contains_key("layer_types");
            let mut v = serde_json::to_value(LlamaJson {
                vocab_size: self.vocab_size,
                hidden_size: self.n_embd,
                intermediate_size: self.inner(),
                num_hidden_layers: self.n_layer,
                num_attention_heads: self.n_head,
                num_key_value_heads: Some(self.n_kv_head),
                head_dim: Some(self.head_dim()),
                max_position_embeddings: Some(self.n_positions),
                rms_norm_eps: Some(self.layer_norm_epsilon),
                tie_word_embeddings: Some(self.tie_word_embeddings),
                attention_bias: (!qwen2).then_some(self.o_bias),
                mlp_bias: (self.family == Family::Llama).then_some(self.mlp_bias),
                attention_dropout: Some(self.attn_pdrop),
                resid_pdrop: (self.resid_pdrop > 0.0).then_some(self.resid_pdrop),
                embd_pdrop: (self.embd_pdrop > 0.0).then_some(self.embd_pdrop),
                hidden_act: Some(self.activation_function.clone()),
                sliding_window: self.sliding_window,
                use_sliding_window: qwen_window.then_some(true),
                max_window_layers: None,
                layer_types: qwen_window
                    .then(|| self.sliding_layers.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }.to_string()).collect()),
            })
            .expect("config fields serialise");
            let m = v.as_object_mut().expect("an object");
            m.retain(|_, x| !x.is_null());
            if self.family == Family::Mistral {
                // null means no window (a missing key would mean transformers' 4096).
                m.insert("sliding_window".into(), json!(self.sliding_window));
            }
            out.remove("rope_parameters");
            self.rope.to_hf(&mut out);
            v
        } else {
            serde_json::to_value(Gpt2Json {
                vocab_size: self.vocab_size,
                n_positions: self.n_positions,
                n_embd: self.n_embd,
                n_layer: self.n_layer,
                n_head: self.n_head,
                n_inner: self.n_inner,
                resid_pdrop: self.resid_pdrop,
                embd_pdrop: self.embd_pdrop,
                attn_pdrop: self.attn_pdrop,
                layer_norm_epsilon: self.layer_norm_epsilon,
                activation_function: self.activation_function.clone(),
            })
            .expect("config fields serialise")
        };
        // tinytune writes f32 weights, whatever the file it read said.
        for key in ["torch_dtype", "dtype"] {
            if out.contains_key(key) {
                out.insert(key.into(), json!("float32"));
            }
        }
        out.extend(fields.as_object().expect("an object").clone());
        out.insert("model_type".into(), json!(self.family.model_type()));
        if self.score_labels().is_some() {
            out.insert("architectures".into(), json!([self.family.classifier_architecture()]));
        } else if self.family.is_llama_like() {
            out.insert("architectures".into(), json!([self.family.architecture()]));
        }
        Value::Object(out)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a ModelConfig always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_sizes_match_their_names() {
        // nano ~0.1 M, micro ~1 M, mini 5-10 M, and GPT-2 small's published 124 M.
        let check = |name: &str, lo: f64, hi: f64| {
            let n = ModelConfig::preset(name).unwrap().num_params() as f64 / 1e6;
            assert!(n >= lo && n <= hi, "{name}: {n} M not in [{lo}, {hi}]");
        };
        check("nano", 0.08, 0.15);
        check("micro", 0.8, 1.2);
        check("mini", 5.0, 10.0);
        check("gpt2", 124.0, 124.5); // 124,439,808 with the tied head
        check("gpt2-medium", 354.0, 356.0);
        check("gpt2-xl", 1550.0, 1560.0);
    }

    /// What a Llama-family config.json says comes back when tinytune writes it: the
    /// fields it does not model, Qwen2's window settings, RoPE settings left out, and
    /// tinytune's own dropout (which a resumed run needs).
    #[test]
    fn llama_family_configs_round_trip() {
        let qwen = r#"{"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "attention_bias": true, "use_sliding_window": false, "sliding_window": 32768,
            "max_window_layers": 21, "bos_token_id": 7, "torch_dtype": "bfloat16",
            "rope_scaling": {"type": "yarn", "factor": 4.0}, "rope_theta": 1000000.0}"#;
        let c = ModelConfig::from_json(qwen, "config.json").unwrap();
        assert!(c.qkv_bias && !c.o_bias, "Qwen2's attention_bias is not an o_proj bias");
        assert_eq!(c.sliding_window, None, "use_sliding_window is false");
        let out: Value = serde_json::from_str(&c.to_json()).unwrap();
        for (key, want) in
            [("use_sliding_window", json!(false)), ("sliding_window", json!(32768)), ("max_window_layers", json!(21)), ("bos_token_id", json!(7))]
        {
            assert_eq!(out[key], want, "{key}");
        }
        assert_eq!(out["torch_dtype"], "float32", "the weights tinytune writes");
        assert_eq!(out["rope_scaling"], json!({"rope_type": "yarn", "factor": 4.0}), "no settings the file left out");
        let mut again = ModelConfig::from_json(&c.to_json(), "again").unwrap();
        again.extra.insert("torch_dtype".into(), json!("bfloat16"));
        assert_eq!(out["architectures"], json!(["Qwen2ForCausalLM"]), "written for transformers' AutoModel");
        assert_eq!(again, c);

        let mistral =
            r#"{"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4}"#;
        assert_eq!(ModelConfig::from_json(mistral, "config.json").unwrap().window(0), Some(4096), "transformers' default window");
        let dropped = ModelConfig::nano_llama().with_dropout(0.1);
        assert_eq!(ModelConfig::from_json(&dropped.to_json(), "x").unwrap(), dropped);
        let e =
            ModelConfig::from_json(&mistral.replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 4, \"head_dim\": 0"), "config.json").unwrap_err();
        assert!(e.to_string().contains("head_dim"), "{e}");
    }

    #[test]
    fn llama_preset_counts_equal_transformers() {
        // sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=64,
        // intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
        // num_key_value_heads=2, tie_word_embeddings=False)).parameters()) == 99136, and 791680
        // for micro-llama's sizes with a tied head (transformers 5.25).
        assert_eq!(ModelConfig::nano_llama().num_params(), 99_136);
        assert_eq!(ModelConfig::micro_llama().num_params(), 791_680);
    }

    #[test]
    fn gpt2_small_count_is_exact() {
        // transformers: sum(p.numel() for p in GPT2LMHeadModel(GPT2Config()).parameters()) == 124439808
        assert_eq!(ModelConfig::gpt2().num_params(), 124_439_808);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let check = |json: &str, needle: &str| {
            let err = ModelConfig::from_json(json, "config.json").unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle:?}");
            assert!(err.starts_with("config.json"), "{err:?} should name the file");
        };
        check(r#"{"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2}"#, "vocab_size");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":0}"#, "n_head");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":10,"n_layer":1,"n_head":3}"#, "divide");
        check(r#"{"vocab_size":8,"n_positions":8,"n_embd":8,"n_layer":1,"n_head":2,"attn_pdrop":1.5}"#, "attn_pdrop");
        check("{not json", "config.json");
        assert!(ModelConfig::preset("huge").unwrap_err().to_string().contains("micro"));
    }

    #[test]
    fn json_round_trip_and_gpt2_fields() {
        let c = ModelConfig::micro();
        let json = c.to_json();
        assert!(json.contains("\"n_embd\": 128") && json.contains("\"model_type\": \"gpt2\""));
        assert_eq!(ModelConfig::from_json(&json, "x").unwrap(), c);
    }
}
