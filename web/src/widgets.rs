//! The widget registry: every widget a lesson can place, with typed parameters. A lesson's
//! ```` ```widget ```` block and a shared link's query string both go through
//! [`Widget::set`], so a typo in either is an error that names the widget, the parameter
//! and the values it accepts. Adding a widget means adding a variant here; the exhaustive
//! `match` in the app then fails to compile until the widget has a component.

use serde::{Deserialize, Serialize};
use tinytune::ModelConfig;
use tinytune::methods::MethodKind;
use tinytune::train::{DataSource, Precision};

use crate::memory::{BASES, METHODS, OFFLOADS, OPTIMIZERS, PRECISIONS};
pub use crate::memory::{MemoryParams, TimelineParams};
pub use crate::optimizers::{OptimizerStateParams, ScheduleParams};
pub use crate::precision::LossScalingParams;
pub use crate::quantize::QuantizeParams;
use crate::quantize::{LAYERS, QUANT_FORMATS};

/// Which model a widget runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelChoice {
    /// The shipped pretrained micro checkpoint (`assets/micro`).
    Micro,
    /// A freshly initialised nano model with the character-level tokenizer.
    Nano,
}

impl ModelChoice {
    pub fn name(self) -> &'static str {
        match self {
            ModelChoice::Micro => "micro",
            ModelChoice::Nano => "nano",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "micro" => Ok(ModelChoice::Micro),
            "nano" => Ok(ModelChoice::Nano),
            _ => Err("choose micro (the shipped pretrained model) or nano (a fresh, untrained model)".into()),
        }
    }
}

/// Settings of the `train` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    pub model: ModelChoice,
    pub task: DataSource,
    pub steps: usize,
    pub lr: f64,
    pub batch: usize,
    pub seq: usize,
    pub seed: u64,
    /// After the run, show answers and pre-training loss before and after.
    pub compare: bool,
    /// Compute type (mixed precision keeps FP32 master weights).
    #[serde(default)]
    pub precision: Precision,
    /// "none" or "dynamic" (GradScaler's rule); used by fp16 and bf16.
    #[serde(default = "no_scaling")]
    pub loss_scale: String,
    /// A `MethodKind` name: full, last-layers, bitfit, layernorm, lora, qlora, adapter,
    /// prompt, p-tuning, prefix or ia3.
    #[serde(default)]
    pub method: MethodKind,
    /// adapter: placement (houlsby, pfeiffer or parallel) and bottleneck width.
    #[serde(default = "houlsby")]
    pub adapter: String,
    #[serde(default = "sixteen_units")]
    pub bottleneck: usize,
    /// prompt, p-tuning, prefix: virtual tokens; prompt's init (random or vocab); the
    /// P-tuning encoder's width.
    #[serde(default = "eight")]
    pub tokens: usize,
    #[serde(default = "random_init")]
    pub prompt_init: String,
    #[serde(default = "encoder_width")]
    pub encoder: usize,
    /// last-layers: how many top blocks train.
    #[serde(default = "one")]
    pub last_n: usize,
    /// LoRA/QLoRA rank, alpha and target projections.
    #[serde(default = "eight")]
    pub rank: usize,
    #[serde(default = "sixteen")]
    pub alpha: f64,
    #[serde(default = "all_linear")]
    pub targets: String,
    /// An `OptimKind` name (adamw, sgd, adafactor, lion, adamw8bit, paged-adamw,
    /// paged-adamw8bit, mezo).
    #[serde(default = "adamw")]
    pub optimizer: String,
    /// Learning-rate schedule after warmup: constant, linear or cosine.
    #[serde(default = "cosine")]
    pub schedule: String,
    /// Warmup in steps ("6") or as a share of the run ("10%").
    #[serde(default = "ten_percent")]
    pub warmup: String,
    /// Micro-batches per update (gradient accumulation); divides `batch`.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Gradient checkpointing.
    #[serde(default)]
    pub checkpointing: bool,
    /// `key=v1,v2,…`: one run per value, one after another ("" for a single run).
    #[serde(default)]
    pub sweep: String,
}

impl TrainParams {
    /// The runs a press of Train starts: this one, or one per value of `sweep`
    /// (`key=v1,v2,…`), each value checked as if typed into the widget. Sweeping the
    /// optimizer gives each run that optimizer's suggested learning rate; any value may
    /// carry its own rate as `value@lr` (`method=full@1e-3,prompt@3e-2`).
    pub fn sweep_runs(&self) -> Result<Vec<TrainParams>, String> {
        let base = TrainParams { sweep: String::new(), ..self.clone() };
        if self.sweep.is_empty() {
            return Ok(vec![base]);
        }
        let (key, values) = self.sweep.split_once('=').ok_or("write the sweep as key=value,value,… (for example lr=3e-2,1e-3,1e-4)")?;
        let key = key.trim();
        if key == "sweep" || !Widget::Train(base.clone()).keys().contains(&key) {
            return Err(format!("cannot sweep {key:?}; sweep one of the widget's settings, such as lr, optimizer, accumulate or checkpointing"));
        }
        let values: Vec<&str> = values.split(',').map(str::trim).filter(|v| !v.is_empty()).collect();
        if values.is_empty() || values.len() > 8 {
            return Err(format!("give between 1 and 8 values to sweep, not {}", values.len()));
        }
        values
            .into_iter()
            .map(|item| {
                let mut w = Widget::Train(base.clone());
                let (v, lr) = match item.split_once('@') {
                    Some((v, lr)) => (v.trim(), Some(lr.trim())),
                    None => (item, None),
                };
                w.set(key, v)?;
                if let Some(lr) = lr {
                    w.set("lr", lr).map_err(|e| format!("{item}: {e}"))?;
                    return Ok(match w {
                        Widget::Train(p) => p,
                        _ => unreachable!("a train widget stays one"),
                    });
                }
                match w {
                    // Optimizers want different learning rates (SGD's is 100× AdamW's): a
                    // sweep over them uses each one's suggested rate, as `tinytune compare`
                    // does when no --lr is given.
                    Widget::Train(mut p) if key == "optimizer" => {
                        p.lr = p.optimizer_kind().suggested_lr();
                        Ok(p)
                    }
                    Widget::Train(p) => Ok(p),
                    _ => unreachable!("a train widget stays one"),
                }
            })
            .collect()
    }
}

fn adamw() -> String {
    "adamw".into()
}
fn cosine() -> String {
    "cosine".into()
}
fn ten_percent() -> String {
    "10%".into()
}
fn one() -> usize {
    1
}

fn eight() -> usize {
    8
}
fn sixteen() -> f64 {
    16.0
}
fn all_linear() -> String {
    "all-linear".into()
}

fn no_scaling() -> String {
    "none".into()
}
fn houlsby() -> String {
    "houlsby".into()
}
fn sixteen_units() -> usize {
    16
}
fn random_init() -> String {
    "random".into()
}
fn encoder_width() -> usize {
    64
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            model: ModelChoice::Micro,
            task: DataSource::Task(tinytune::data::Task::Sentiment),
            steps: 60,
            lr: 1e-3,
            batch: 8,
            seq: 64,
            seed: 0,
            compare: false,
            precision: Precision::Fp32,
            loss_scale: no_scaling(),
            method: MethodKind::Full,
            adapter: houlsby(),
            bottleneck: sixteen_units(),
            tokens: eight(),
            prompt_init: random_init(),
            encoder: encoder_width(),
            last_n: 1,
            rank: eight(),
            alpha: sixteen(),
            targets: all_linear(),
            optimizer: adamw(),
            schedule: cosine(),
            warmup: ten_percent(),
            accumulate: 1,
            checkpointing: false,
            sweep: String::new(),
        }
    }
}

/// Settings of the `generate` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateParams {
    pub model: ModelChoice,
    pub prompt: String,
    pub temperature: f64,
    /// 0: sample among all tokens.
    pub top_k: usize,
    pub max_tokens: usize,
    pub samples: usize,
    pub seed: u64,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self { model: ModelChoice::Micro, prompt: "once upon a time".into(), temperature: 0.8, top_k: 40, max_tokens: 80, samples: 3, seed: 0 }
    }
}

/// Settings of the `model-card` widget.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCardParams {
    /// A preset name (`ModelConfig::preset`).
    pub model: String,
}

impl Default for ModelCardParams {
    fn default() -> Self {
        Self { model: "micro".into() }
    }
}

/// Settings of the `number-format` widget.
#[derive(Clone, Debug, PartialEq)]
pub struct NumberFormatParams {
    /// The number as typed (also nan, inf, -inf).
    pub value: String,
    /// The absolute maximum of the block the scaled formats see.
    pub range: f32,
}

impl Default for NumberFormatParams {
    fn default() -> Self {
        Self { value: "0.1".into(), range: 1.0 }
    }
}

/// Every widget a lesson can use.
#[derive(Clone, Debug, PartialEq)]
pub enum Widget {
    Train(TrainParams),
    Generate(GenerateParams),
    ModelCard(ModelCardParams),
    /// The prompt → few-shot → RAG → fine-tune walk-through; no parameters.
    Decide,
    /// The memory calculator.
    Memory(MemoryParams),
    /// One measured training step of the micro model beside its estimate.
    MemoryTimeline(TimelineParams),
    /// A number in every format: bits, stored value, error.
    NumberFormat(NumberFormatParams),
    /// Post-training quantization of the micro model's real weights.
    Quantize(QuantizeParams),
    /// FP16 gradients of the micro model against FP16's range, unscaled and scaled.
    LossScaling(LossScalingParams),
    /// Optimizer state per parameter on micro, Adafactor's factorisation, 8-bit maps.
    OptimizerState(OptimizerStateParams),
    /// Learning-rate schedules.
    Schedule(ScheduleParams),
    /// The rank of what full fine-tuning learned, against what rank-r LoRA keeps.
    LoraRank(crate::rank::RankParams),
}

impl Widget {
    /// Every widget name, for error messages and docs.
    pub const NAMES: [&'static str; 12] = [
        "train",
        "generate",
        "model-card",
        "decide",
        "memory",
        "memory-timeline",
        "number-format",
        "quantize",
        "loss-scaling",
        "optimizer-state",
        "schedule",
        "lora-rank",
    ];

    /// The widget with default settings.
    pub fn named(name: &str) -> Result<Self, String> {
        Ok(match name {
            "train" => Widget::Train(TrainParams::default()),
            "generate" => Widget::Generate(GenerateParams::default()),
            "model-card" => Widget::ModelCard(ModelCardParams::default()),
            "decide" => Widget::Decide,
            "memory" => Widget::Memory(MemoryParams::default()),
            "memory-timeline" => Widget::MemoryTimeline(TimelineParams::default()),
            "number-format" => Widget::NumberFormat(NumberFormatParams::default()),
            "quantize" => Widget::Quantize(QuantizeParams::default()),
            "loss-scaling" => Widget::LossScaling(LossScalingParams::default()),
            "optimizer-state" => Widget::OptimizerState(OptimizerStateParams::default()),
            "schedule" => Widget::Schedule(ScheduleParams::default()),
            "lora-rank" => Widget::LoraRank(crate::rank::RankParams::default()),
            other => return Err(format!("unknown widget {other:?}; the widgets are {}", Self::NAMES.join(", "))),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Widget::Train(_) => "train",
            Widget::Generate(_) => "generate",
            Widget::ModelCard(_) => "model-card",
            Widget::Decide => "decide",
            Widget::Memory(_) => "memory",
            Widget::MemoryTimeline(_) => "memory-timeline",
            Widget::NumberFormat(_) => "number-format",
            Widget::Quantize(_) => "quantize",
            Widget::LossScaling(_) => "loss-scaling",
            Widget::OptimizerState(_) => "optimizer-state",
            Widget::Schedule(_) => "schedule",
            Widget::LoraRank(_) => "lora-rank",
        }
    }

    /// The parameter names this widget accepts.
    pub fn keys(&self) -> &'static [&'static str] {
        match self {
            Widget::Train(_) => &[
                "model",
                "task",
                "steps",
                "lr",
                "batch",
                "seq",
                "seed",
                "compare",
                "precision",
                "loss_scale",
                "method",
                "adapter",
                "bottleneck",
                "tokens",
                "prompt_init",
                "encoder",
                "last_n",
                "rank",
                "alpha",
                "targets",
                "optimizer",
                "schedule",
                "warmup",
                "accumulate",
                "checkpointing",
                "sweep",
            ],
            Widget::Generate(_) => &["model", "prompt", "temperature", "top_k", "max_tokens", "samples", "seed"],
            Widget::ModelCard(_) => &["model"],
            Widget::Decide => &[],
            Widget::Memory(_) => &[
                "model",
                "method",
                "rank",
                "precision",
                "optimizer",
                "batch",
                "seq",
                "checkpointing",
                "accumulate",
                "zero",
                "gpus",
                "offload",
                "base",
                "attention",
            ],
            Widget::MemoryTimeline(_) => &["batch", "seq", "method"],
            Widget::NumberFormat(_) => &["value", "range"],
            Widget::Quantize(_) => &["format", "block", "double_quant", "layer"],
            Widget::LossScaling(_) => &["precision", "scale_log2", "batch", "seq"],
            Widget::OptimizerState(_) => &["layer"],
            Widget::Schedule(_) => &["steps", "lr", "warmup", "schedule", "min_lr_ratio"],
            Widget::LoraRank(_) => &["matrix", "rank", "steps", "lr"],
        }
    }

    /// Parses the body of a `widget` block: `key: value` lines, `name` first or anywhere,
    /// `#` comments.
    pub fn from_block(text: &str) -> Result<Self, String> {
        let mut pairs = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (k, v) = line.split_once(':').ok_or_else(|| format!("{line:?} is not a `key: value` line"))?;
            pairs.push((k.trim(), v.trim()));
        }
        let name = pairs.iter().find(|(k, _)| *k == "name").map(|(_, v)| *v).ok_or("add a `name: ...` line naming the widget")?;
        let mut widget = Self::named(name)?;
        for (k, v) in pairs.into_iter().filter(|(k, _)| *k != "name") {
            widget.set(k, v)?;
        }
        Ok(widget)
    }

    /// Sets one parameter from its text form (a lesson block or a URL).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let name = self.name();
        let keys = self.keys();
        let bad = |why: String| format!("{name}: {key}: {value:?}: {why}");
        let unknown = || {
            if keys.is_empty() {
                format!("{name}: unknown parameter {key:?}; this widget takes no parameters")
            } else {
                format!("{name}: unknown parameter {key:?}; use {}", keys.join(", "))
            }
        };
        match self {
            Widget::Train(p) => match key {
                "model" => p.model = ModelChoice::parse(value).map_err(bad)?,
                "task" => p.task = value.parse::<DataSource>().map_err(bad)?,
                "steps" => p.steps = int(value, 1, 2000).map_err(bad)?,
                "lr" => p.lr = float(value, 1e-6, 1.0).map_err(bad)?,
                "batch" => p.batch = int(value, 1, 64).map_err(bad)?,
                "seq" => p.seq = int(value, 8, 128).map_err(bad)?,
                "seed" => p.seed = int(value, 0, u32::MAX as usize).map_err(bad)? as u64,
                "compare" => p.compare = boolean(value).map_err(bad)?,
                "precision" => p.precision = value.parse::<Precision>().map_err(bad)?,
                "loss_scale" => p.loss_scale = one_of(value, &["none", "dynamic"]).map_err(bad)?,
                "method" => p.method = value.parse::<MethodKind>().map_err(bad)?,
                "adapter" => p.adapter = one_of(value, &["houlsby", "pfeiffer", "parallel"]).map_err(bad)?,
                "bottleneck" => p.bottleneck = int(value, 1, 128).map_err(bad)?,
                "tokens" => p.tokens = int(value, 1, 32).map_err(bad)?,
                "prompt_init" => p.prompt_init = one_of(value, &["random", "vocab"]).map_err(bad)?,
                "encoder" => p.encoder = int(value, 1, 512).map_err(bad)?,
                "last_n" => p.last_n = int(value, 1, 64).map_err(bad)?,
                "rank" => p.rank = int(value, 1, 256).map_err(bad)?,
                "alpha" => p.alpha = float(value, 1e-3, 1e4).map_err(bad)?,
                "targets" => {
                    let known = ["c_attn", "c_proj", "c_fc", "attn.c_proj", "mlp.c_proj", "mlp.c_fc", "attn.c_attn", "all-linear"];
                    // Every comma-separated entry must name a projection (an empty one too).
                    if let Some(t) = value.split(',').map(str::trim).find(|t| !known.contains(t)) {
                        return Err(bad(format!("unknown projection {t:?}; use {}", known.join(", "))));
                    }
                    p.targets = value.to_string();
                }
                "optimizer" => p.optimizer = value.parse::<tinytune::optim::OptimKind>().map_err(bad)?.to_string(),
                "schedule" => p.schedule = one_of(value, &["constant", "linear", "cosine"]).map_err(bad)?,
                "warmup" => {
                    value.parse::<tinytune::optim::Warmup>().map_err(bad)?;
                    p.warmup = value.to_string();
                }
                "accumulate" => p.accumulate = int(value, 1, 64).map_err(bad)?,
                "checkpointing" => p.checkpointing = boolean(value).map_err(bad)?,
                "sweep" => {
                    let mut probe = p.clone();
                    probe.sweep = value.trim().to_string();
                    probe.sweep_runs().map_err(bad)?;
                    p.sweep = probe.sweep;
                }
                _ => return Err(unknown()),
            },
            Widget::Generate(p) => match key {
                "model" => p.model = ModelChoice::parse(value).map_err(bad)?,
                "prompt" => p.prompt = value.replace("\\n", "\n"),
                "temperature" => p.temperature = float(value, 0.0, 5.0).map_err(bad)?,
                "top_k" => p.top_k = int(value, 0, 100_000).map_err(bad)?,
                "max_tokens" => p.max_tokens = int(value, 1, 512).map_err(bad)?,
                "samples" => p.samples = int(value, 1, 8).map_err(bad)?,
                "seed" => p.seed = int(value, 0, u32::MAX as usize).map_err(bad)? as u64,
                _ => return Err(unknown()),
            },
            Widget::ModelCard(p) => match key {
                "model" => {
                    ModelConfig::preset(value).map_err(|e| bad(e.to_string()))?;
                    p.model = value.to_string();
                }
                _ => return Err(unknown()),
            },
            Widget::Decide => return Err(unknown()),
            Widget::Memory(p) => match key {
                "model" => {
                    MemoryParams::check_model(value).map_err(bad)?;
                    p.model = value.to_string();
                }
                "method" => p.method = one_of(value, &METHODS).map_err(bad)?,
                "rank" => p.rank = int(value, 1, 1024).map_err(bad)? as u64,
                "precision" => p.precision = one_of(value, &PRECISIONS).map_err(bad)?,
                "optimizer" => p.optimizer = one_of(value, &OPTIMIZERS).map_err(bad)?,
                "batch" => p.batch = int(value, 1, 1024).map_err(bad)? as u64,
                "seq" => p.seq = int(value, 1, 131_072).map_err(bad)? as u64,
                "checkpointing" => p.checkpointing = int(value, 0, 128).map_err(bad)? as u64,
                "accumulate" => p.accumulate = int(value, 1, 1024).map_err(bad)? as u64,
                "zero" => p.zero = int(value, 0, 3).map_err(bad)? as u8,
                "gpus" => p.gpus = int(value, 1, 4096).map_err(bad)? as u64,
                "offload" => p.offload = one_of(value, &OFFLOADS).map_err(bad)?,
                "base" => p.base = one_of(value, &BASES).map_err(bad)?,
                "attention" => p.attention = one_of(value, &crate::memory::ATTENTIONS).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::MemoryTimeline(p) => match key {
                "batch" => p.batch = int(value, 1, 32).map_err(bad)?,
                "seq" => p.seq = int(value, 8, 128).map_err(bad)?,
                "method" => p.method = one_of(value, &["full", "lora"]).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::NumberFormat(p) => match key {
                "value" => {
                    value.parse::<f32>().map_err(|_| bad("expected a number such as 0.1, -3e5, nan or inf".into()))?;
                    p.value = value.to_string();
                }
                "range" => {
                    let r = float(value, 1e-30, 1e30).map_err(bad)?;
                    p.range = r as f32;
                }
                _ => return Err(unknown()),
            },
            Widget::Quantize(p) => match key {
                "format" => p.format = one_of(value, &QUANT_FORMATS).map_err(bad)?,
                "block" => p.block = int(value, 2, 65536).map_err(bad)?,
                "double_quant" => p.double_quant = boolean(value).map_err(bad)?,
                "layer" => p.layer = one_of(value, &LAYERS).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::OptimizerState(p) => match key {
                "layer" => p.layer = one_of(value, &crate::optimizers::LAYERS).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::LoraRank(p) => match key {
                "matrix" => p.matrix = one_of(value, &crate::rank::MATRICES).map_err(bad)?,
                // micro is 128 wide, so every matrix has rank at most 128.
                "rank" => p.rank = int(value, 1, 128).map_err(bad)?,
                "steps" => p.steps = int(value, 1, 500).map_err(bad)?,
                "lr" => p.lr = float(value, 1e-6, 1.0).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::Schedule(p) => match key {
                "steps" => p.steps = int(value, 1, 100_000).map_err(bad)?,
                "lr" => p.lr = float(value, 1e-8, 10.0).map_err(bad)?,
                "warmup" => {
                    value.parse::<tinytune::optim::Warmup>().map_err(bad)?;
                    p.warmup = value.to_string();
                }
                "schedule" => p.schedule = one_of(value, &["constant", "linear", "cosine"]).map_err(bad)?,
                "min_lr_ratio" => p.min_lr_ratio = float(value, 0.0, 1.0).map_err(bad)?,
                _ => return Err(unknown()),
            },
            Widget::LossScaling(p) => match key {
                "precision" => p.precision = one_of(value, &["fp16", "bf16"]).map_err(bad)?,
                "scale_log2" => p.scale_log2 = int(value, 0, 24).map_err(bad)? as u32,
                "batch" => p.batch = int(value, 1, 32).map_err(bad)?,
                "seq" => p.seq = int(value, 8, 128).map_err(bad)?,
                _ => return Err(unknown()),
            },
        }
        Ok(())
    }

    /// Every parameter as text, in `keys()` order; `set` on each pair rebuilds the widget.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        match self {
            Widget::Train(p) => vec![
                ("model", p.model.name().into()),
                ("task", p.task.to_string()),
                ("steps", p.steps.to_string()),
                ("lr", p.lr.to_string()),
                ("batch", p.batch.to_string()),
                ("seq", p.seq.to_string()),
                ("seed", p.seed.to_string()),
                ("compare", p.compare.to_string()),
                ("precision", p.precision.to_string()),
                ("loss_scale", p.loss_scale.clone()),
                ("method", p.method.to_string()),
                ("adapter", p.adapter.clone()),
                ("bottleneck", p.bottleneck.to_string()),
                ("tokens", p.tokens.to_string()),
                ("prompt_init", p.prompt_init.clone()),
                ("encoder", p.encoder.to_string()),
                ("last_n", p.last_n.to_string()),
                ("rank", p.rank.to_string()),
                ("alpha", p.alpha.to_string()),
                ("targets", p.targets.clone()),
                ("optimizer", p.optimizer.clone()),
                ("schedule", p.schedule.clone()),
                ("warmup", p.warmup.clone()),
                ("accumulate", p.accumulate.to_string()),
                ("checkpointing", p.checkpointing.to_string()),
                ("sweep", p.sweep.clone()),
            ],
            Widget::Generate(p) => vec![
                ("model", p.model.name().into()),
                ("prompt", p.prompt.replace('\n', "\\n")),
                ("temperature", p.temperature.to_string()),
                ("top_k", p.top_k.to_string()),
                ("max_tokens", p.max_tokens.to_string()),
                ("samples", p.samples.to_string()),
                ("seed", p.seed.to_string()),
            ],
            Widget::ModelCard(p) => vec![("model", p.model.clone())],
            Widget::Decide => vec![],
            Widget::Memory(p) => vec![
                ("model", p.model.clone()),
                ("method", p.method.clone()),
                ("rank", p.rank.to_string()),
                ("precision", p.precision.clone()),
                ("optimizer", p.optimizer.clone()),
                ("batch", p.batch.to_string()),
                ("seq", p.seq.to_string()),
                ("checkpointing", p.checkpointing.to_string()),
                ("accumulate", p.accumulate.to_string()),
                ("zero", p.zero.to_string()),
                ("gpus", p.gpus.to_string()),
                ("offload", p.offload.clone()),
                ("base", p.base.clone()),
                ("attention", p.attention.clone()),
            ],
            Widget::MemoryTimeline(p) => vec![("batch", p.batch.to_string()), ("seq", p.seq.to_string()), ("method", p.method.clone())],
            Widget::NumberFormat(p) => vec![("value", p.value.clone()), ("range", p.range.to_string())],
            Widget::Quantize(p) => {
                vec![("format", p.format.clone()), ("block", p.block.to_string()), ("double_quant", p.double_quant.to_string()), ("layer", p.layer.clone())]
            }
            Widget::LossScaling(p) => {
                vec![("precision", p.precision.clone()), ("scale_log2", p.scale_log2.to_string()), ("batch", p.batch.to_string()), ("seq", p.seq.to_string())]
            }
            Widget::OptimizerState(p) => vec![("layer", p.layer.clone())],
            Widget::Schedule(p) => vec![
                ("steps", p.steps.to_string()),
                ("lr", p.lr.to_string()),
                ("warmup", p.warmup.clone()),
                ("schedule", p.schedule.clone()),
                ("min_lr_ratio", p.min_lr_ratio.to_string()),
            ],
            Widget::LoraRank(p) => vec![("matrix", p.matrix.clone()), ("rank", p.rank.to_string()), ("steps", p.steps.to_string()), ("lr", p.lr.to_string())],
        }
    }

    /// The parameters where `self` differs from `base` (what a shared link must carry).
    pub fn diff(&self, base: &Widget) -> Vec<(&'static str, String)> {
        let base = base.pairs();
        self.pairs().into_iter().filter(|(k, v)| !base.iter().any(|(bk, bv)| bk == k && bv == v)).collect()
    }
}

fn one_of(value: &str, choices: &[&str]) -> Result<String, String> {
    if choices.contains(&value) { Ok(value.to_string()) } else { Err(format!("choose {}", choices.join(", "))) }
}

fn int(value: &str, min: usize, max: usize) -> Result<usize, String> {
    let v: usize = value.parse().map_err(|_| format!("expected a whole number from {min} to {max}"))?;
    if !(min..=max).contains(&v) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(v)
}

fn float(value: &str, min: f64, max: f64) -> Result<f64, String> {
    let v: f64 = value.parse().map_err(|_| format!("expected a number from {min} to {max}"))?;
    if !(v >= min && v <= max) {
        return Err(format!("must be from {min} to {max}"));
    }
    Ok(v)
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str) -> Result<Widget, String> {
        Widget::from_block(text)
    }

    #[test]
    fn every_widget_round_trips_through_its_pairs() {
        for name in Widget::NAMES {
            let w = Widget::named(name).unwrap();
            assert_eq!(w.name(), name);
            let keys: Vec<&str> = w.pairs().iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, w.keys(), "{name}: pairs() and keys() disagree");
            let mut rebuilt = Widget::named(name).unwrap();
            for (k, v) in w.pairs() {
                rebuilt.set(k, &v).unwrap();
            }
            assert_eq!(rebuilt, w);
        }
    }

    #[test]
    fn blocks_set_typed_values() {
        let w = block("# a comment\nname: train\nmodel: nano\ntask: stories\nsteps: 25\nlr: 0.003\ncompare: true\n").unwrap();
        let Widget::Train(p) = &w else { panic!("{w:?}") };
        assert_eq!((p.model, p.task, p.steps, p.lr, p.compare), (ModelChoice::Nano, DataSource::Stories, 25, 0.003, true));
        let g = block("name: generate\nprompt: text: hi\\nfeeling:\ntop_k: 0").unwrap();
        let Widget::Generate(p) = &g else { panic!() };
        assert_eq!((p.prompt.as_str(), p.top_k), ("text: hi\nfeeling:", 0));
        // The escaped newline survives a trip through pairs().
        let mut again = Widget::named("generate").unwrap();
        for (k, v) in g.pairs() {
            again.set(k, &v).unwrap();
        }
        assert_eq!(again, g);
    }

    #[test]
    fn sweeps_give_one_run_per_value_and_values_may_carry_a_rate() {
        let Widget::Train(p) = block("name: train\nlr: 1e-3\nsweep: method=full,lora@3e-3,prompt@3e-2").unwrap() else { panic!("a train widget") };
        let runs = p.sweep_runs().unwrap();
        let got: Vec<(&str, f64)> = runs.iter().map(|r| (r.method.name(), r.lr)).collect();
        assert_eq!(got, vec![("full", 1e-3), ("lora", 3e-3), ("prompt", 3e-2)]);
        assert!(runs.iter().all(|r| r.sweep.is_empty()));
        let e = block("name: train\nsweep: method=full@fast").unwrap_err();
        assert!(e.contains("full@fast") && e.contains("lr"), "{e}");
        let e = block("name: train\nsweep: method=dora").unwrap_err();
        assert!(e.contains("choose full"), "{e}");
    }

    #[test]
    fn diff_holds_only_changed_values() {
        let base = block("name: train\nsteps: 30").unwrap();
        let mut changed = base.clone();
        changed.set("lr", "0.01").unwrap();
        assert_eq!(changed.diff(&base), vec![("lr", "0.01".to_string())]);
        assert!(base.diff(&base).is_empty());
    }

    #[test]
    fn bad_blocks_say_what_is_allowed() {
        let check = |text: &str, needle: &str| {
            let e = block(text).unwrap_err();
            assert!(e.contains(needle), "{text:?} gave {e:?}, expected it to mention {needle:?}");
        };
        check("model: micro", "add a `name: ...`");
        check(
            "name: lora-ranks",
            "the widgets are train, generate, model-card, decide, memory, memory-timeline, number-format, quantize, loss-scaling, optimizer-state, schedule, lora-rank",
        );
        check(
            "name: lora-rank
matrix: wte",
            "choose h.0.attn.c_attn",
        );
        check(
            "name: lora-rank
rank: 0",
            "rank",
        );
        check("name: number-format\nvalue: ten", "expected a number");
        check("name: memory\nmodel: gpt5", "choose custom or one of nano");
        check("name: memory\noffload: disk", "choose none, optimizer, all");
        check("name: memory\nzero: 4", "must be from 0 to 3");
        check("name: memory-timeline\nseq: 512", "must be from 8 to 128");
        check("name: train\nsteps: 0", "train: steps: \"0\": must be from 1 to 2000");
        check(
            "name: train\ndepth: 4",
            "use model, task, steps, lr, batch, seq, seed, compare, precision, loss_scale, method, adapter, bottleneck, tokens, prompt_init, encoder, last_n, rank, alpha, targets, optimizer, schedule, warmup, accumulate, checkpointing, sweep",
        );
        check("name: train\ntargets: q_proj", "unknown projection \"q_proj\"; use c_attn");
        check("name: train\nmethod: dora", "choose full, last-layers, bitfit, layernorm, lora, qlora");
        check("name: loss-scaling\nscale_log2: 40", "must be from 0 to 24");
        check("name: train\ntask: poems", "unknown data 'poems'");
        check("name: train\nmodel: gpt2", "choose micro");
        check("name: train\ncompare: yes", "expected true or false");
        check("name: generate\ntemperature: -1", "must be from 0 to 5");
        check("name: model-card\nmodel: gpt5", "model-card: model: \"gpt5\"");
        check("name: decide\nstart: here", "takes no parameters");
        check("name: train\nsteps 5", "is not a `key: value` line");
    }
}
