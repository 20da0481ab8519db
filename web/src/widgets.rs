//! The widget registry: every widget a lesson can place, with typed parameters. Each widget
//! is a settings type with one table of fields ([`Settings`]: key, text out, text in, with
//! the accepted values checked), written beside the type; the `widgets!` line below makes
//! it a `Widget`. A lesson's ```` ```widget ```` block, a shared link and the URL all go
//! through [`Widget::set`], so a typo in any is an error that names the widget, the
//! parameter and the values it accepts. The exhaustive `match` in the app's router fails to
//! compile until a new widget has a component.

use serde::{Deserialize, Serialize};
use tinytune::ModelConfig;
use tinytune::methods::MethodKind;
use tinytune::train::sweep::{self, SweepItem};
use tinytune::train::{DataSource, Precision};

pub use crate::settings::{Field, Settings};
use crate::settings::{assign, boolean, float, int, one_of, warmup};

pub use crate::memory::{MemoryParams, TimelineParams};
pub use crate::optimizers::{OptimizerStateParams, ScheduleParams};
pub use crate::precision::LossScalingParams;
pub use crate::quantize::QuantizeParams;

/// Which model a widget runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelChoice {
    /// The shipped pretrained micro checkpoint (`assets/micro`, GPT-2's layout).
    Micro,
    /// The shipped pretrained micro-llama checkpoint (`assets/micro-llama`: RMSNorm,
    /// SwiGLU, rotary positions, grouped-query attention).
    MicroLlama,
    /// A freshly initialised nano model with the character-level tokenizer.
    Nano,
}

impl ModelChoice {
    pub fn name(self) -> &'static str {
        match self {
            ModelChoice::Micro => "micro",
            ModelChoice::MicroLlama => "micro-llama",
            ModelChoice::Nano => "nano",
        }
    }

    /// The shipped checkpoint's folder under `assets/` (and in the built site), if any.
    pub fn shipped(self) -> Option<&'static str> {
        match self {
            ModelChoice::Micro => Some("micro"),
            ModelChoice::MicroLlama => Some("micro-llama"),
            ModelChoice::Nano => None,
        }
    }

    /// Its configuration (the shipped checkpoints' are the presets they were trained from).
    pub fn config(self) -> ModelConfig {
        match self {
            ModelChoice::Micro => ModelConfig::micro(),
            ModelChoice::MicroLlama => ModelConfig::micro_llama(),
            ModelChoice::Nano => ModelConfig::nano(),
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        match value {
            "micro" => Ok(ModelChoice::Micro),
            "micro-llama" => Ok(ModelChoice::MicroLlama),
            "nano" => Ok(ModelChoice::Nano),
            _ => Err("choose micro (the shipped pretrained GPT-2-style model), micro-llama (the shipped pretrained Llama-style model) or nano (a fresh, untrained model)".into()),
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
    /// Data-parallel replicas (`--data-parallel`); in the page they share its one device.
    #[serde(default = "one")]
    pub data_parallel: usize,
    /// ZeRO stage across the replicas (`--zero`): 0, or 1 to shard the optimizer state.
    #[serde(default)]
    pub zero: u8,
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
                // `value@lr`, read as `tinytune compare` reads it.
                let item = SweepItem::parse(item)?;
                let mut w = Widget::Train(base.clone());
                w.set(key, item.value)?;
                // A value's own rate wins; a sweep over optimizers gives each its suggested
                // rate (they want rates 100× apart), as `tinytune compare` does.
                let optimizer = match &w {
                    Widget::Train(p) if key == "optimizer" => Some(p.optimizer_kind()),
                    _ => None,
                };
                if let Some(lr) = sweep::run_lr(&item, None, optimizer) {
                    w.set("lr", &lr.to_string()).map_err(|e| format!("{}: {e}", item.value))?;
                }
                let Widget::Train(p) = w else { unreachable!("a train widget stays one") };
                Ok(p)
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
            data_parallel: 1,
            zero: 0,
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

/// Declares every widget, one line each: its variant, its settings type and, for a widget
/// whose answer the worker computes, that answer's type. From this table follow the
/// `Widget` enum with its name, key, parsing and printing dispatch; the `Request`/`Reply`
/// pair the page and the worker exchange (with [`Ask`], which types the answer); the page's
/// router (`Widget::view`, calling the component's `app::WidgetView`); and the worker's
/// dispatch (`answer`, calling the settings type's [`Compute`], which the worker package
/// implements).
macro_rules! widgets {
    ($($(#[$doc:meta])* $variant:ident($params:ty) $(=> $answer:ty)?,)*) => {
        /// Every widget a lesson can use.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Widget {
            $($(#[$doc])* $variant($params),)*
        }

        impl Widget {
            /// Every widget name, for error messages and docs.
            pub const NAMES: &'static [&'static str] = &[$(<$params as Settings>::NAME,)*];

            /// The widget with default settings.
            pub fn named(name: &str) -> Result<Self, String> {
                $(if name == <$params as Settings>::NAME {
                    return Ok(Widget::$variant(<$params>::default()));
                })*
                Err(format!("unknown widget {name:?}; the widgets are {}", Self::NAMES.join(", ")))
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(Widget::$variant(_) => <$params as Settings>::NAME,)*
                }
            }

            /// The parameter names this widget accepts.
            pub fn keys(&self) -> Vec<&'static str> {
                match self {
                    $(Widget::$variant(_) => <$params as Settings>::fields().iter().map(|f| f.key).collect(),)*
                }
            }

            /// Sets one parameter from its text form (a lesson block or a URL).
            pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
                match self {
                    $(Widget::$variant(p) => set_field(p, key, value),)*
                }
            }

            /// Every parameter as text, in `keys()` order; `set` on each pair rebuilds the widget.
            pub fn pairs(&self) -> Vec<(&'static str, String)> {
                match self {
                    $(Widget::$variant(p) => <$params as Settings>::fields().iter().map(|f| (f.key, (f.get)(p))).collect(),)*
                }
            }

            /// The widget's page component (its settings type's `app::WidgetView`).
            #[cfg(all(target_arch = "wasm32", feature = "page"))]
            pub fn view(&self, state: leptos::prelude::RwSignal<Widget>) -> leptos::prelude::AnyView {
                match self {
                    $(Widget::$variant(_) => <$params as crate::app::WidgetView>::view(state),)*
                }
            }
        }

        /// Page → worker: one request of a widget whose answer the worker computes.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum Request {
            $($(#[doc = concat!("Answered with `", stringify!($answer), "`.")] $variant($params),)?)*
        }

        /// Worker → page: the answer to a [`Request`] of the same variant.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub enum Reply {
            $($($variant(Box<$answer>),)?)*
        }

        $($(impl Ask for $params {
            type Answer = $answer;
            fn into_request(self) -> Request {
                Request::$variant(self)
            }
            #[allow(unreachable_patterns)] // a single request would have nothing else to match
            fn answer(reply: Reply) -> Option<$answer> {
                match reply {
                    Reply::$variant(a) => Some(*a),
                    _ => None,
                }
            }
        })?)*

        /// The worker's answer to `req`: its settings type's [`Compute`], as worker `W`
        /// implements it.
        pub async fn answer<W>(req: Request) -> Result<Reply, String>
        where
            $($($params: Compute<W, Answer = $answer>,)?)*
        {
            Ok(match req {
                $($(Request::$variant(p) => Reply::$variant(Box::<$answer>::new(<$params as Compute<W>>::compute(p).await?)),)?)*
            })
        }
    };
}

/// A widget's computation, for each settings type whose `widgets!` line names an answer.
/// The worker package (`web/worker`, where the Burn device lives) implements it with its
/// own marker type as `W`, which is what lets that crate implement this crate's trait for
/// this crate's types; [`answer`] dispatches a [`Request`] to it.
#[allow(async_fn_in_trait)] // the worker is single-threaded
pub trait Compute<W> {
    type Answer;
    async fn compute(self) -> Result<Self::Answer, String>;
}

/// A widget's request type and the answer it gets back: `client::ask(settings, done)`
/// sends the one and hands `done` the other, typed.
pub trait Ask: Sized {
    type Answer;
    fn into_request(self) -> Request;
    fn answer(reply: Reply) -> Option<Self::Answer>;
}

/// The generate widget's answer: the samples and how long they took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    pub samples: Vec<String>,
    pub seconds: f64,
}

widgets! {
    Train(TrainParams),
    Generate(GenerateParams) => Samples,
    ModelCard(ModelCardParams),
    /// The prompt → few-shot → RAG → fine-tune walk-through; no parameters.
    Decide(DecideParams),
    /// The memory calculator.
    Memory(MemoryParams),
    /// One measured training step of the micro model beside its estimate.
    MemoryTimeline(TimelineParams) => crate::memory::TimelineResult,
    /// A number in every format: bits, stored value, error.
    NumberFormat(NumberFormatParams),
    /// Post-training quantization of the micro model's real weights.
    Quantize(QuantizeParams) => crate::quantize::QuantizeResult,
    /// FP16 gradients of the micro model against FP16's range, unscaled and scaled.
    LossScaling(LossScalingParams) => crate::precision::LossScalingResult,
    /// Optimizer state per parameter on micro, Adafactor's factorisation, 8-bit maps.
    OptimizerState(OptimizerStateParams) => tinytune::optim::report::StateReport,
    /// Learning-rate schedules.
    Schedule(ScheduleParams),
    /// The rank of what full fine-tuning learned, against what rank-r LoRA keeps.
    LoraRank(crate::rank::RankParams) => tinytune::methods::rank::RankReport,
    /// RoPE's rotations per dimension pair under each scaling, and micro-llama's loss by
    /// position past its training context.
    Rope(crate::rope::RopeParams) => crate::rope::RopeResult,
    /// Two fine-tunes of micro merged with every method, scored on both tasks.
    Merge(crate::merge::MergeParams) => crate::merge::MergeResult,
    /// Federated averaging of micro fine-tunes on disjoint shards, round by round.
    Federated(crate::federated::FederatedParams) => crate::federated::FederatedResult,
    /// A GGUF model from the reader's disk: chat, LoRA-fine-tune in the tab, chat again.
    RealModel(crate::real::RealModelParams),
    /// Preference tuning (DPO, IPO, hinge, ORPO) of micro with LoRA on generated pairs,
    /// beside SFT on the chosen completions, streamed like a train widget's run.
    Preference(crate::preference::PreferenceParams),
    /// GRPO on a task's verifiable reward after a short SFT, with the sampled groups'
    /// rewards and advantages, streamed like a train widget's run.
    Grpo(crate::grpo::GrpoParams),
    /// Knowledge distillation: a teacher fine-tuned from micro, then three smaller students
    /// from the same start on a few examples, on hard labels and on the teacher's soft
    /// targets at two temperatures, streamed like a train widget's runs.
    Distill(crate::distill::DistillParams),
    /// micro pruned at several sparsities (magnitude, Wanda, 2:4 or MLP neurons): parameters,
    /// held-out loss and a sample per sparsity, and a heat map of what was removed.
    Prune(crate::prune::PruneParams) => crate::prune::PruneResult,
    /// The reference checks (`tinytune::verify`), run one request per check in the worker
    /// on the reader's backend: the "How we know these numbers are true" page.
    Verify(crate::verify::VerifyParams) => tinytune::verify::Outcome,
}

/// `key = value` on settings `S`, the error naming the widget, the key and the value.
fn set_field<S: Settings>(p: &mut S, key: &str, value: &str) -> Result<(), String> {
    let fields = S::fields();
    let Some(field) = fields.iter().find(|f| f.key == key) else {
        return Err(if fields.is_empty() {
            format!("{}: unknown parameter {key:?}; this widget takes no parameters", S::NAME)
        } else {
            format!("{}: unknown parameter {key:?}; use {}", S::NAME, fields.iter().map(|f| f.key).collect::<Vec<_>>().join(", "))
        });
    };
    (field.set)(p, value).map_err(|why| format!("{}: {key}: {value:?}: {why}", S::NAME))
}

impl Widget {
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

    /// The parameters where `self` differs from `base` (what a shared link must carry).
    pub fn diff(&self, base: &Widget) -> Vec<(&'static str, String)> {
        let base = base.pairs();
        self.pairs().into_iter().filter(|(k, v)| !base.iter().any(|(bk, bv)| bk == k && bv == v)).collect()
    }
}

impl Settings for TrainParams {
    const NAME: &'static str = "train";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "model", get: |p| p.model.name().into(), set: |p, v| assign(&mut p.model, ModelChoice::parse(v)) },
            Field { key: "task", get: |p| p.task.to_string(), set: |p, v| assign(&mut p.task, v.parse::<DataSource>()) },
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 2000)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 64)) },
            Field { key: "seq", get: |p| p.seq.to_string(), set: |p, v| assign(&mut p.seq, int(v, 8, 128)) },
            Field { key: "seed", get: |p| p.seed.to_string(), set: |p, v| assign(&mut p.seed, int(v, 0, u32::MAX as usize).map(|x| x as u64)) },
            Field { key: "compare", get: |p| p.compare.to_string(), set: |p, v| assign(&mut p.compare, boolean(v)) },
            Field { key: "precision", get: |p| p.precision.to_string(), set: |p, v| assign(&mut p.precision, v.parse::<Precision>()) },
            Field { key: "loss_scale", get: |p| p.loss_scale.clone(), set: |p, v| assign(&mut p.loss_scale, one_of(v, &["none", "dynamic"])) },
            Field { key: "method", get: |p| p.method.to_string(), set: |p, v| assign(&mut p.method, v.parse::<MethodKind>()) },
            Field { key: "adapter", get: |p| p.adapter.clone(), set: |p, v| assign(&mut p.adapter, one_of(v, &["houlsby", "pfeiffer", "parallel"])) },
            Field { key: "bottleneck", get: |p| p.bottleneck.to_string(), set: |p, v| assign(&mut p.bottleneck, int(v, 1, 128)) },
            Field { key: "tokens", get: |p| p.tokens.to_string(), set: |p, v| assign(&mut p.tokens, int(v, 1, 32)) },
            Field { key: "prompt_init", get: |p| p.prompt_init.clone(), set: |p, v| assign(&mut p.prompt_init, one_of(v, &["random", "vocab"])) },
            Field { key: "encoder", get: |p| p.encoder.to_string(), set: |p, v| assign(&mut p.encoder, int(v, 1, 512)) },
            Field { key: "last_n", get: |p| p.last_n.to_string(), set: |p, v| assign(&mut p.last_n, int(v, 1, 64)) },
            Field { key: "rank", get: |p| p.rank.to_string(), set: |p, v| assign(&mut p.rank, int(v, 1, 256)) },
            Field { key: "alpha", get: |p| p.alpha.to_string(), set: |p, v| assign(&mut p.alpha, float(v, 1e-3, 1e4)) },
            Field {
                key: "targets",
                get: |p| p.targets.clone(),
                set: |p, v| {
                    let known = [
                        "c_attn",
                        "c_proj",
                        "c_fc",
                        "attn.c_proj",
                        "mlp.c_proj",
                        "mlp.c_fc",
                        "attn.c_attn",
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                        "all-linear",
                    ];
                    // Every comma-separated entry must name a projection (an empty one too).
                    if let Some(t) = v.split(',').map(str::trim).find(|t| !known.contains(t)) {
                        return Err(format!("unknown projection {t:?}; use {}", known.join(", ")));
                    }
                    p.targets = v.to_string();
                    Ok(())
                },
            },
            Field {
                key: "optimizer",
                get: |p| p.optimizer.clone(),
                set: |p, v| assign(&mut p.optimizer, v.parse::<tinytune::optim::OptimKind>().map(|x| x.to_string())),
            },
            Field { key: "schedule", get: |p| p.schedule.clone(), set: |p, v| assign(&mut p.schedule, one_of(v, &["constant", "linear", "cosine"])) },
            Field { key: "warmup", get: |p| p.warmup.clone(), set: |p, v| assign(&mut p.warmup, warmup(v)) },
            Field { key: "accumulate", get: |p| p.accumulate.to_string(), set: |p, v| assign(&mut p.accumulate, int(v, 1, 64)) },
            Field { key: "data_parallel", get: |p| p.data_parallel.to_string(), set: |p, v| assign(&mut p.data_parallel, int(v, 1, 8)) },
            Field { key: "zero", get: |p| p.zero.to_string(), set: |p, v| assign(&mut p.zero, int(v, 0, 1).map(|z| z as u8)) },
            Field { key: "checkpointing", get: |p| p.checkpointing.to_string(), set: |p, v| assign(&mut p.checkpointing, boolean(v)) },
            Field {
                key: "sweep",
                get: |p| p.sweep.clone(),
                set: |p, v| {
                    let mut probe = p.clone();
                    probe.sweep = v.trim().to_string();
                    probe.sweep_runs()?;
                    p.sweep = probe.sweep;
                    Ok(())
                },
            },
        ]
    }
}

impl Settings for GenerateParams {
    const NAME: &'static str = "generate";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "model", get: |p| p.model.name().into(), set: |p, v| assign(&mut p.model, ModelChoice::parse(v)) },
            // A lesson block is one line per key: a newline in the prompt is written \n.
            Field { key: "prompt", get: |p| p.prompt.replace('\n', "\\n"), set: |p, v| assign(&mut p.prompt, Ok::<_, String>(v.replace("\\n", "\n"))) },
            Field { key: "temperature", get: |p| p.temperature.to_string(), set: |p, v| assign(&mut p.temperature, float(v, 0.0, 5.0)) },
            Field { key: "top_k", get: |p| p.top_k.to_string(), set: |p, v| assign(&mut p.top_k, int(v, 0, 100_000)) },
            Field { key: "max_tokens", get: |p| p.max_tokens.to_string(), set: |p, v| assign(&mut p.max_tokens, int(v, 1, 512)) },
            Field { key: "samples", get: |p| p.samples.to_string(), set: |p, v| assign(&mut p.samples, int(v, 1, 8)) },
            Field { key: "seed", get: |p| p.seed.to_string(), set: |p, v| assign(&mut p.seed, int(v, 0, u32::MAX as usize).map(|x| x as u64)) },
        ]
    }
}

impl Settings for ModelCardParams {
    const NAME: &'static str = "model-card";
    fn fields() -> Vec<Field<Self>> {
        vec![Field {
            key: "model",
            get: |p| p.model.clone(),
            set: |p, v| {
                ModelConfig::preset(v).map_err(|e| e.to_string())?;
                p.model = v.to_string();
                Ok(())
            },
        }]
    }
}

/// The `decide` widget has no settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecideParams;

impl Settings for DecideParams {
    const NAME: &'static str = "decide";
    fn fields() -> Vec<Field<Self>> {
        Vec::new()
    }
}

impl Settings for NumberFormatParams {
    const NAME: &'static str = "number-format";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field {
                key: "value",
                get: |p| p.value.clone(),
                set: |p, v| {
                    v.parse::<f32>().map_err(|_| "expected a number such as 0.1, -3e5, nan or inf".to_string())?;
                    p.value = v.to_string();
                    Ok(())
                },
            },
            Field { key: "range", get: |p| p.range.to_string(), set: |p, v| assign(&mut p.range, float(v, 1e-30, 1e30).map(|x| x as f32)) },
        ]
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
        for &name in Widget::NAMES {
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
            "use model, task, steps, lr, batch, seq, seed, compare, precision, loss_scale, method, adapter, bottleneck, tokens, prompt_init, encoder, last_n, rank, alpha, targets, optimizer, schedule, warmup, accumulate, data_parallel, zero, checkpointing, sweep",
        );
        check("name: train\ntargets: q_proj,w_proj", "unknown projection \"w_proj\"; use c_attn");
        check("name: rope\nfactor: 16", "rope: factor: \"16\": must be from 2 to 8");
        check("name: rope\nhead: gpt2", "choose micro-llama, llama-3.1-8b");
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
