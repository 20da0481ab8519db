//! Fine-tuning methods. One `Method` enum, matched exhaustively, so adding a method and
//! forgetting a place is a compile error. Methods adapt the model through its projection
//! slots (`model::projection`) and decide which parameters train.
//!
//! The family: full fine-tuning; selective fine-tuning (last layers, BitFit, LayerNorm
//! only); reparameterisation (LoRA with PEFT's bias and init options, PiSSA, rsLoRA, LoRA+
//! and DoRA; QLoRA; IA³); and additive methods (bottleneck adapters; soft prompts: prompt
//! tuning, P-tuning, prefix tuning). What can merge into the base weights does (`merge`);
//! what cannot says why (`Method::merge_blocker`); `merge_in_place` and `unmerge` fold
//! an update in and take it out again, as PEFT's `merge_adapter` and `unmerge_adapter` do.

pub mod adapter;
pub mod fold;
pub mod ia3;
pub mod lora;
pub mod multi;
pub mod peft;
pub mod prompt;
pub mod qlora;
pub mod rank;
pub mod selective;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::Gpt;
use crate::model::projection::Projection;

pub use adapter::{Adapter, AdapterActivation, AdapterConfig, AdapterKind};
pub use fold::{MergeUndo, is_merged, merge, merge_in_place, unmerge};
pub use ia3::{Ia3, Ia3Config};
pub use lora::{Lora, LoraBias, LoraConfig, LoraInit};
pub use prompt::{Prefix, PrefixConfig, PromptConfig, PromptInit, SoftPrompt};
pub use qlora::{FrozenWeight, QloraConfig};
pub use selective::Selection;

/// Whether the projection at dotted `path` (e.g. `h.3.attn.c_attn`) is named by `targets`,
/// matched as PEFT matches `target_modules`: a name matches a path that ends with it
/// (`c_proj` matches `attn.c_proj` and `mlp.c_proj`); `all-linear` matches every projection.
/// The Llama family's Hugging Face module name `self_attn` is this model's `attn`, so
/// `self_attn.q_proj` matches too.
pub fn path_matches(targets: &[String], path: &str) -> bool {
    targets.iter().any(|t| {
        let t = t.replace("self_attn.", "attn.");
        t == "all-linear" || path == t || path.ends_with(&format!(".{t}"))
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    /// Every parameter trains.
    #[default]
    Full,
    /// The top `n` blocks and the final LayerNorm train; the rest is frozen.
    LastLayers { n: usize },
    /// BitFit: only the biases train.
    Bitfit,
    /// Only the LayerNorms' gains and biases train.
    Layernorm,
    /// The base is frozen; low-rank updates on the target projections train.
    Lora(LoraConfig),
    /// LoRA on a base whose linear weights are stored in NF4 (every projection, as
    /// bitsandbytes quantizes every `nn.Linear`); embeddings and norms stay FP32.
    Qlora(QloraConfig),
    /// Bottleneck adapters in every block; the base is frozen.
    Adapter(AdapterConfig),
    /// Prompt tuning (or, with an encoder, P-tuning): virtual tokens before the input.
    Prompt(PromptConfig),
    /// Prefix tuning: learned keys and values in every attention layer.
    Prefix(PrefixConfig),
    /// IA³: learned vectors rescaling the target projections' outputs (or inputs).
    Ia3(Ia3Config),
}

/// The methods by name, without their settings: what `--method`, the widgets' method
/// choices, the memory plan and the test battery list. Matched exhaustively everywhere, so
/// a new method that some edge forgets fails to compile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MethodKind {
    #[default]
    Full,
    LastLayers,
    Bitfit,
    Layernorm,
    Lora,
    Qlora,
    Adapter,
    Prompt,
    PTuning,
    Prefix,
    Ia3,
}

impl MethodKind {
    /// Every method, in the order the docs and menus list them.
    pub const ALL: [MethodKind; 11] = [
        MethodKind::Full,
        MethodKind::LastLayers,
        MethodKind::Bitfit,
        MethodKind::Layernorm,
        MethodKind::Lora,
        MethodKind::Qlora,
        MethodKind::Adapter,
        MethodKind::Prompt,
        MethodKind::PTuning,
        MethodKind::Prefix,
        MethodKind::Ia3,
    ];

    /// The name the CLI, the widgets, `train.json` and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::LastLayers => "last-layers",
            MethodKind::Bitfit => "bitfit",
            MethodKind::Layernorm => "layernorm",
            MethodKind::Lora => "lora",
            MethodKind::Qlora => "qlora",
            MethodKind::Adapter => "adapter",
            MethodKind::Prompt => "prompt",
            MethodKind::PTuning => "p-tuning",
            MethodKind::Prefix => "prefix",
            MethodKind::Ia3 => "ia3",
        }
    }

    /// A peak learning rate for fine-tuning with this method and an AdamW-family optimizer:
    /// the default `--lr` of `finetune` and `compare`. Measured by `scripts/lr-sweep.sh`
    /// (micro on sentiment, 60 steps of 16, cosine schedule, held-out loss at five rates
    /// from 3e-4, or from 3e-3 for the methods below that want more): the smallest rate
    /// within 1% of the best, since on a flat optimum the smaller step is the safer default
    /// for larger models. Methods that train few parameters with no other route to the
    /// output (biases, LayerNorm gains, soft prompts, IA³'s scales) want steps a hundred to a
    /// thousand times those of full fine-tuning; IA³ and prefix tuning were best at 3e-1,
    /// the largest rate tried.
    pub fn suggested_lr(self) -> f64 {
        match self {
            MethodKind::Full => 3e-4,
            MethodKind::LastLayers | MethodKind::Lora | MethodKind::Qlora | MethodKind::Adapter => 3e-3,
            MethodKind::PTuning => 1e-2,
            MethodKind::Bitfit | MethodKind::Layernorm | MethodKind::Prompt => 1e-1,
            MethodKind::Prefix | MethodKind::Ia3 => 3e-1,
        }
    }

    /// How a menu shows it.
    pub fn label(self) -> &'static str {
        match self {
            MethodKind::Full => "full",
            MethodKind::LastLayers => "last layers",
            MethodKind::Bitfit => "BitFit (biases)",
            MethodKind::Layernorm => "LayerNorm only",
            MethodKind::Lora => "LoRA",
            MethodKind::Qlora => "QLoRA (NF4 base)",
            MethodKind::Adapter => "adapters",
            MethodKind::Prompt => "prompt tuning",
            MethodKind::PTuning => "P-tuning",
            MethodKind::Prefix => "prefix tuning",
            MethodKind::Ia3 => "IA³",
        }
    }

    /// Soft-prompt methods: virtual tokens rather than changed weights.
    pub fn soft_prompt(self) -> bool {
        matches!(self, MethodKind::Prompt | MethodKind::PTuning | MethodKind::Prefix)
    }

    /// Every name, comma-separated, for error messages.
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl std::str::FromStr for MethodKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| format!("unknown method '{s}'; choose {}", Self::names()))
    }
}

impl TryFrom<String> for MethodKind {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<MethodKind> for String {
    fn from(k: MethodKind) -> String {
        k.name().to_string()
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Every setting a method may take, in one place: what the CLI's flags and the browser's
/// widget controls fill before [`Method::named`] picks the method's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MethodOptions {
    pub lora: LoraConfig,
    pub qlora_block: usize,
    pub double_quant: bool,
    pub last_n: usize,
    pub adapter: AdapterConfig,
    pub virtual_tokens: usize,
    pub prompt_init: PromptInit,
    pub prompt_text: String,
    /// `prompt_text`'s token ids (the caller tokenizes).
    pub prompt_ids: Vec<u32>,
    /// P-tuning's encoder width, and prefix tuning's when `prefix_projection` is set.
    pub encoder_hidden: usize,
    pub prefix_projection: bool,
    pub ia3: Ia3Config,
}

impl Default for MethodOptions {
    fn default() -> Self {
        let q = QloraConfig::default();
        Self {
            lora: LoraConfig::default(),
            qlora_block: q.block,
            double_quant: q.double_quant,
            last_n: 1,
            adapter: AdapterConfig::default(),
            virtual_tokens: 8,
            prompt_init: PromptInit::Random,
            prompt_text: String::new(),
            prompt_ids: Vec::new(),
            encoder_hidden: 64,
            prefix_projection: false,
            ia3: Ia3Config::default(),
        }
    }
}

impl Method {
    /// Prepares `model` for training with this method: adds the method's parameters and
    /// freezes what the method keeps fixed. `seed` draws the new parameters.
    ///
    /// A classifier's score head (a reward model's) always trains, whatever the method
    /// freezes: it starts untrained, and PEFT trains it too (`modules_to_save=["score"]`
    /// for a sequence-classification task).
    pub fn apply(&self, model: Gpt, seed: u64, device: &Device) -> Result<Gpt> {
        let mut model = if let Some(selection) = self.selection() {
            selection.validate(model.config(), "method")?;
            selection.apply(model)
        } else {
            match self {
                Method::Full | Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm => model,
                Method::Lora(config) => lora::inject(model, config, seed, device, "LoRA config")?,
                Method::Adapter(config) => adapter::inject(model, config, seed, device)?,
                Method::Prompt(config) => prompt::inject_prompt(model, config, seed, device)?,
                Method::Prefix(config) => prompt::inject_prefix(model, config, seed, device)?,
                Method::Ia3(config) => ia3::inject(model, config, device)?,
                Method::Qlora(config) => qlora::inject(model, config, seed, device)?,
            }
        };
        if let Some(score) = model.score.take() {
            model.score = Some(burn::module::Module::map(score, &mut Trainable));
        }
        Ok(model)
    }

    /// The method called `name` (a [`MethodKind`] name), with its settings taken from `o`:
    /// the one place the CLI's flags and the browser's widget settings become a `Method`.
    pub fn named(name: &str, o: &MethodOptions) -> std::result::Result<Method, String> {
        Ok(Self::of_kind(name.parse()?, o))
    }

    /// The method of `kind`, with its settings taken from `o`.
    pub fn of_kind(kind: MethodKind, o: &MethodOptions) -> Method {
        let prompt = |encoder: Option<usize>| PromptConfig {
            num_virtual_tokens: o.virtual_tokens,
            init: o.prompt_init,
            init_text: o.prompt_text.clone(),
            init_ids: o.prompt_ids.clone(),
            encoder_hidden_size: encoder,
        };
        match kind {
            MethodKind::Full => Method::Full,
            MethodKind::LastLayers => Method::LastLayers { n: o.last_n },
            MethodKind::Bitfit => Method::Bitfit,
            MethodKind::Layernorm => Method::Layernorm,
            MethodKind::Lora => Method::Lora(o.lora.clone()),
            MethodKind::Qlora => Method::Qlora(QloraConfig { lora: o.lora.clone(), block: o.qlora_block, double_quant: o.double_quant }),
            MethodKind::Adapter => Method::Adapter(o.adapter.clone()),
            MethodKind::Prompt => Method::Prompt(prompt(None)),
            MethodKind::PTuning => Method::Prompt(prompt(Some(o.encoder_hidden))),
            MethodKind::Prefix => {
                Method::Prefix(PrefixConfig { num_virtual_tokens: o.virtual_tokens, encoder_hidden_size: o.prefix_projection.then_some(o.encoder_hidden) })
            }
            MethodKind::Ia3 => Method::Ia3(o.ia3.clone()),
        }
    }

    /// Which method this is, without its settings.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Full => MethodKind::Full,
            Method::LastLayers { .. } => MethodKind::LastLayers,
            Method::Bitfit => MethodKind::Bitfit,
            Method::Layernorm => MethodKind::Layernorm,
            Method::Lora(_) => MethodKind::Lora,
            Method::Qlora(_) => MethodKind::Qlora,
            Method::Adapter(_) => MethodKind::Adapter,
            Method::Prompt(p) if p.encoder_hidden_size.is_some() => MethodKind::PTuning,
            Method::Prompt(_) => MethodKind::Prompt,
            Method::Prefix(_) => MethodKind::Prefix,
            Method::Ia3(_) => MethodKind::Ia3,
        }
    }

    /// Why this method's trained state cannot be folded into the base weights (None when
    /// it can: full and selective methods need no folding, LoRA, DoRA and IA³ fold exactly).
    pub fn merge_blocker(&self) -> Option<&'static str> {
        match self {
            Method::Full | Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm | Method::Lora(_) | Method::Qlora(_) | Method::Ia3(_) => None,
            Method::Adapter(_) => Some(
                "an adapter applies a non-linearity between its two projections, so no change of the base weights computes the same function; it stays a separate module",
            ),
            Method::Prompt(_) => Some("a soft prompt adds virtual tokens to the input rather than changing any weight; it stays a separate input"),
            Method::Prefix(_) => Some("a prefix adds keys and values to every attention layer rather than changing any weight; it stays a separate input"),
        }
    }

    /// Positions of context the method's virtual tokens take (prompt tuning and P-tuning;
    /// prefix tuning's keys and values take none).
    pub fn virtual_tokens(&self) -> usize {
        match self {
            Method::Prompt(p) => p.num_virtual_tokens,
            Method::Full
            | Method::LastLayers { .. }
            | Method::Bitfit
            | Method::Layernorm
            | Method::Lora(_)
            | Method::Qlora(_)
            | Method::Adapter(_)
            | Method::Prefix(_)
            | Method::Ia3(_) => 0,
        }
    }

    /// Whether the adapted model computes exactly the base model's logits before training
    /// (soft prompts cannot: prepending anything changes what attention sees).
    pub fn starts_at_base(&self) -> bool {
        !matches!(self, Method::Prompt(_) | Method::Prefix(_))
    }

    /// The parameters a selective method trains (None for the others).
    pub fn selection(&self) -> Option<Selection> {
        match self {
            Method::LastLayers { n } => Some(Selection::LastLayers(*n)),
            Method::Bitfit => Some(Selection::Biases),
            Method::Layernorm => Some(Selection::LayerNorms),
            Method::Full | Method::Lora(_) | Method::Qlora(_) | Method::Adapter(_) | Method::Prompt(_) | Method::Prefix(_) | Method::Ia3(_) => None,
        }
    }

    /// The method's LoRA settings, if it has any.
    pub fn lora(&self) -> Option<&LoraConfig> {
        match self {
            Method::Lora(c) => Some(c),
            Method::Qlora(c) => Some(&c.lora),
            Method::Full
            | Method::LastLayers { .. }
            | Method::Bitfit
            | Method::Layernorm
            | Method::Adapter(_)
            | Method::Prompt(_)
            | Method::Prefix(_)
            | Method::Ia3(_) => None,
        }
    }

    /// A short name for tables and logs (its kind's name).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Trainable parameters this method adds or unfreezes, by closed form.
    pub fn trainable_params(&self, model: &Gpt) -> usize {
        match self {
            Method::Full => model.config().num_params(),
            Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm => self.selection().expect("a selective method").count(model.config()),
            Method::Lora(_) | Method::Qlora(_) => lora::trainable(model, self.lora().expect("a LoRA method")),
            Method::Adapter(a) => adapter::trainable(model, a),
            Method::Prompt(p) => p.params(model.config().n_embd),
            Method::Prefix(p) => p.params(model.config().n_embd, model.config().kv_dim(), model.config().n_layer),
            Method::Ia3(config) => ia3::trainable(model, config),
        }
    }
}

/// What a method did to a model, in numbers: trainable parameters and, for QLoRA, the bytes
/// of the NF4 base.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    pub method: String,
    pub trainable: usize,
    /// Parameters of the unadapted model.
    pub total: usize,
    /// Linear weights held quantized (NF4, or a GGUF file's blocks), and their bytes at
    /// rest (codes and scales).
    pub nf4_weights: usize,
    pub nf4_bytes: usize,
    /// The quantized base's formats, e.g. "NF4" or "Q4_1, Q8_0".
    #[serde(default)]
    pub frozen_formats: String,
}

impl MethodSummary {
    pub fn of(method: &Method, model: &Gpt) -> Self {
        let (mut nf4_weights, mut nf4_bytes, mut formats) = (0, 0, Vec::new());
        for_each_projection_ref(model, |_, p| {
            if let Some(q) = &p.frozen {
                nf4_weights += q.d_in * q.d_out;
                nf4_bytes += q.bytes();
                if !formats.contains(&q.format()) {
                    formats.push(q.format());
                }
            }
        });
        let (method, trainable, total) = (method.name().into(), method.trainable_params(model), model.config().num_params());
        Self { method, trainable, total, nf4_weights, nf4_bytes, frozen_formats: formats.join(", ") }
    }

    /// One line for logs and the page, e.g. "qlora: 65536 of 875264 parameters train
    /// (7.49%); NF4 base: 786432 linear weights in 396.2 KiB (0.5160 bytes/weight; 3.0 MiB
    /// in FP32)".
    pub fn line(&self) -> String {
        let mut s = format!(
            "{}: {} of {} parameters train ({:.2}%)",
            self.method,
            self.trainable,
            self.total,
            100.0 * self.trainable as f64 / self.total.max(1) as f64
        );
        if self.nf4_weights > 0 {
            s += &format!(
                "; {} base: {} linear weights in {} ({:.4} bytes/weight; {} in FP32)",
                self.frozen_formats,
                self.nf4_weights,
                crate::memory::human(self.nf4_bytes as u64),
                self.nf4_bytes as f64 / self.nf4_weights as f64,
                crate::memory::human(4 * self.nf4_weights as u64)
            );
        }
        s
    }
}

/// Checks that every name in `targets` matches at least one projection of `model`; the
/// error lists the names there are.
pub(crate) fn check_known(model: &Gpt, targets: &[String], origin: &str, field: &str) -> Result<()> {
    let mut paths = Vec::new();
    for_each_projection_ref(model, |path, _| paths.push(path.to_string()));
    for t in targets {
        if !paths.iter().any(|path| path_matches(std::slice::from_ref(t), path)) {
            let names: Vec<&str> = model.h.first().map(|b| b.projections().into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
            return Err(crate::error::Error::config(
                origin,
                field,
                format!(
                    "no projection is called '{t}'; this model has {} in every block (a name matches every path ending in it; all-linear matches every one), e.g. {}",
                    names.join(", "),
                    paths.iter().take(2).map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Calls `f` with the dotted path and a reference of every projection of the blocks
/// (GPT-2's four or the Llama family's seven per block; the untied LM head is not one).
pub fn for_each_projection_ref(model: &Gpt, mut f: impl FnMut(&str, &Projection)) {
    for (i, block) in model.h.iter().enumerate() {
        for (name, p) in block.projections() {
            f(&format!("h.{i}.{name}"), p);
        }
    }
}

/// Calls `f` with the dotted path and a mutable reference of every projection.
pub fn for_each_projection(model: &mut Gpt, mut f: impl FnMut(&str, &mut Projection)) {
    for (i, block) in model.h.iter_mut().enumerate() {
        for (name, p) in block.projections_mut() {
            f(&format!("h.{i}.{name}"), p);
        }
    }
}

/// Marks every parameter it maps as trainable.
struct Trainable;

impl burn::module::ModuleMapper for Trainable {
    fn map_float<const D: usize>(&mut self, param: burn::module::Param<burn::tensor::Tensor<D>>) -> burn::module::Param<burn::tensor::Tensor<D>> {
        param.set_require_grad(true)
    }
}
