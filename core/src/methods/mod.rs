//! Fine-tuning methods. One `Method` enum, matched exhaustively, so adding a method and
//! forgetting a place is a compile error. Methods adapt the model through its projection
//! slots (`model::projection`) and decide which parameters train.
//!
//! So far: full fine-tuning, selective fine-tuning (last layers, BitFit, LayerNorm only),
//! LoRA (with PEFT's bias and init options, rsLoRA, LoRA+ and DoRA) and QLoRA. Adapters,
//! soft prompts and IA³ follow the same shape (issue 4).

pub mod lora;
pub mod qlora;
pub mod selective;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::rng::Rng;
use crate::error::Result;
use crate::model::Gpt;
use crate::model::projection::Projection;

pub use lora::{Lora, LoraBias, LoraConfig, LoraInit};
pub use qlora::{Nf4Weight, QloraConfig};
pub use selective::Selection;

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
}

impl Method {
    /// Prepares `model` for training with this method: adds the method's parameters and
    /// freezes what the method keeps fixed. `seed` draws the new parameters.
    pub fn apply(&self, model: Gpt, seed: u64, device: &Device) -> Result<Gpt> {
        if let Some(selection) = self.selection() {
            selection.validate(model.config(), "method")?;
            return Ok(selection.apply(model));
        }
        match self {
            Method::Full | Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm => Ok(model),
            Method::Lora(config) => {
                config.validate("LoRA config")?;
                check_targets(&model, config, "LoRA config")?;
                Ok(add_lora(model, config, seed, device))
            }
            Method::Qlora(config) => {
                config.validate("QLoRA config")?;
                check_targets(&model, &config.lora, "QLoRA config")?;
                let mut model = model;
                for_each_projection(&mut model, |_, p| {
                    if let Some(w) = p.weight.take() {
                        p.nf4 = Some(Nf4Weight::quantize(w.val(), config.block, config.double_quant));
                    }
                });
                Ok(add_lora(model, &config.lora, seed, device))
            }
        }
    }

    /// Every name [`Method::named`] accepts.
    pub const NAMES: [&'static str; 6] = ["full", "last-layers", "bitfit", "layernorm", "lora", "qlora"];

    /// The method called `name`, built from the LoRA settings, QLoRA's block size and
    /// double quantization, and the number of top layers for last-layers: the one place the
    /// CLI's flags and the browser's widget settings become a `Method`.
    pub fn named(name: &str, lora: LoraConfig, qlora_block: usize, double_quant: bool, last_n: usize) -> std::result::Result<Method, String> {
        match name {
            "full" => Ok(Method::Full),
            "last-layers" => Ok(Method::LastLayers { n: last_n }),
            "bitfit" => Ok(Method::Bitfit),
            "layernorm" => Ok(Method::Layernorm),
            "lora" => Ok(Method::Lora(lora)),
            "qlora" => Ok(Method::Qlora(QloraConfig { lora, block: qlora_block, double_quant })),
            other => Err(format!("unknown method '{other}'; choose {}", Self::NAMES.join(", "))),
        }
    }

    /// The parameters a selective method trains (None for the others).
    pub fn selection(&self) -> Option<Selection> {
        match self {
            Method::LastLayers { n } => Some(Selection::LastLayers(*n)),
            Method::Bitfit => Some(Selection::Biases),
            Method::Layernorm => Some(Selection::LayerNorms),
            Method::Full | Method::Lora(_) | Method::Qlora(_) => None,
        }
    }

    /// The method's LoRA settings, if it has any.
    pub fn lora(&self) -> Option<&LoraConfig> {
        match self {
            Method::Full | Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm => None,
            Method::Lora(c) => Some(c),
            Method::Qlora(c) => Some(&c.lora),
        }
    }

    /// A short name for tables and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::LastLayers { .. } => "last-layers",
            Method::Bitfit => "bitfit",
            Method::Layernorm => "layernorm",
            Method::Lora(_) => "lora",
            Method::Qlora(_) => "qlora",
        }
    }

    /// Trainable parameters this method adds or unfreezes, by closed form.
    pub fn trainable_params(&self, model: &Gpt) -> usize {
        match self {
            Method::Full => model.config().num_params(),
            Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm => self.selection().expect("a selective method").count(model.config()),
            Method::Lora(_) | Method::Qlora(_) => {
                let config = self.lora().expect("a LoRA method");
                let mut n = 0;
                for_each_projection_ref(model, |path, p| {
                    if config.targets(path) {
                        n += config.r * (p.d_in() + p.d_out());
                        if config.use_dora {
                            n += p.d_out();
                        }
                        if config.bias == LoraBias::LoraOnly {
                            n += p.d_out();
                        }
                    }
                });
                if config.bias == LoraBias::All {
                    n += Selection::Biases.count(model.config());
                }
                n
            }
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
    /// Linear weights held in NF4, and their bytes at rest (codes and scales).
    pub nf4_weights: usize,
    pub nf4_bytes: usize,
}

impl MethodSummary {
    pub fn of(method: &Method, model: &Gpt) -> Self {
        let (mut nf4_weights, mut nf4_bytes) = (0, 0);
        for_each_projection_ref(model, |_, p| {
            if let Some(q) = &p.nf4 {
                nf4_weights += q.d_in * q.d_out;
                nf4_bytes += q.bytes();
            }
        });
        Self { method: method.name().into(), trainable: method.trainable_params(model), total: model.config().num_params(), nf4_weights, nf4_bytes }
    }

    /// One line for logs and the page, e.g. "qlora: 65536 of 875264 parameters train
    /// (7.49%); NF4 base: 786432 linear weights in 396.2 KiB (0.5160 bytes/weight; 3.0 MiB
    /// in FP32)".
    pub fn line(&self) -> String {
        let mut s = format!("{}: {} of {} parameters train ({:.2}%)", self.method, self.trainable, self.total, 100.0 * self.trainable as f64 / self.total.max(1) as f64);
        if self.nf4_weights > 0 {
            s += &format!(
                "; NF4 base: {} linear weights in {} ({:.4} bytes/weight; {} in FP32)",
                self.nf4_weights,
                crate::memory::human(self.nf4_bytes as u64),
                self.nf4_bytes as f64 / self.nf4_weights as f64,
                crate::memory::human(4 * self.nf4_weights as u64)
            );
        }
        s
    }
}

/// Checks `config`'s targets against `model`: every target names at least one projection
/// (the error lists the names there are), and the rank fits every targeted matrix.
fn check_targets(model: &Gpt, config: &LoraConfig, origin: &str) -> Result<()> {
    let mut paths = Vec::new();
    for_each_projection_ref(model, |path, p| paths.push((path.to_string(), p.d_in(), p.d_out())));
    for t in &config.target_modules {
        let one = LoraConfig { target_modules: vec![t.clone()], ..config.clone() };
        if !paths.iter().any(|(path, _, _)| one.targets(path)) {
            return Err(crate::error::Error::config(
                origin,
                "target_modules",
                format!(
                    "no projection is called '{t}'; this model has c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj in every block (c_proj matches both, all-linear every one), e.g. {}",
                    paths.iter().take(4).map(|(p, _, _)| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    if let Some((path, d_in, d_out)) = paths.iter().find(|(path, d_in, d_out)| config.targets(path) && config.r > (*d_in).min(*d_out)) {
        return Err(crate::error::Error::config(
            origin,
            "r",
            format!("rank {} is larger than {path} ({d_in}×{d_out}) can use: a rank-r update of a matrix needs r ≤ {}", config.r, d_in.min(d_out)),
        ));
    }
    Ok(())
}

/// Freezes `model` and adds LoRA paths (trainable) to the projections `config` targets.
fn add_lora(model: Gpt, config: &LoraConfig, seed: u64, device: &Device) -> Gpt {
    let mut rng = Rng::derive(seed, "lora-init");
    // Freeze everything first; LoRA's own parameters are created trainable.
    let mut model = model.no_grad();
    let mut targeted = Vec::new();
    for_each_projection(&mut model, |path, p| {
        if config.targets(path) {
            let mut lora = Lora::init(p.d_in(), p.d_out(), config, &mut rng, device);
            if config.use_dora {
                // DoRA's magnitude starts at W's column norms, so the model starts unchanged.
                lora.magnitude = Some(burn::module::Param::from_tensor(lora::column_norms(p.base_weight()).detach()));
            }
            p.lora = Some(lora);
            targeted.push(format!("{path}.bias"));
        }
    });
    match config.bias {
        LoraBias::None => model,
        LoraBias::All => selective::unfreeze(model, &|name| name.ends_with(".bias")),
        LoraBias::LoraOnly => selective::unfreeze(model, &|name| targeted.iter().any(|t| t == name)),
    }
}

/// Folds every LoRA update into its base weight (`W ← W + s·A·B`; with DoRA, each column
/// of that rescaled by `m / ‖W + s·A·B‖`) and removes the
/// adapters: the merged model has the base model's shape and no extra inference cost. An
/// NF4 base is dequantized to FP32 first (merging into 4-bit codes would round the update
/// away), so a merged QLoRA model is an ordinary FP32 model.
pub fn merge(mut model: Gpt) -> Gpt {
    for_each_projection(&mut model, |_, p| {
        let lora = p.lora.take();
        if lora.is_none() && p.nf4.is_none() {
            return;
        }
        let base = p.base_weight();
        let merged = match &lora {
            // DoRA: each column of W + s·A·B rescaled to its learned magnitude.
            Some(l) if l.magnitude.is_some() => {
                let factor = l.dora_factor(base.clone()).expect("a magnitude");
                (base + l.delta()) * factor.unsqueeze::<2>()
            }
            Some(l) => base + l.delta(),
            None => base,
        };
        p.weight = Some(match p.weight.take() {
            Some(w) => w.map(|_| merged),
            None => burn::module::Param::from_tensor(merged.detach()).set_require_grad(false),
        });
        p.nf4 = None;
    });
    model
}

/// Calls `f` with the dotted path and a reference of every projection.
pub fn for_each_projection_ref(model: &Gpt, mut f: impl FnMut(&str, &Projection)) {
    for (i, block) in model.h.iter().enumerate() {
        f(&format!("h.{i}.attn.c_attn"), &block.attn.c_attn);
        f(&format!("h.{i}.attn.c_proj"), &block.attn.c_proj);
        f(&format!("h.{i}.mlp.c_fc"), &block.mlp.c_fc);
        f(&format!("h.{i}.mlp.c_proj"), &block.mlp.c_proj);
    }
}

/// Calls `f` with the dotted path and a mutable reference of every projection.
pub fn for_each_projection(model: &mut Gpt, mut f: impl FnMut(&str, &mut Projection)) {
    for (i, block) in model.h.iter_mut().enumerate() {
        f(&format!("h.{i}.attn.c_attn"), &mut block.attn.c_attn);
        f(&format!("h.{i}.attn.c_proj"), &mut block.attn.c_proj);
        f(&format!("h.{i}.mlp.c_fc"), &mut block.mlp.c_fc);
        f(&format!("h.{i}.mlp.c_proj"), &mut block.mlp.c_proj);
    }
}
