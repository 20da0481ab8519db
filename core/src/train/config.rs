//! What a training run does, as one serialisable value saved next to the weights
//! (`train.json`), so every run can be reproduced and resumed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::PairKind;
use crate::data::Split;
use crate::data::stories::{StoryConfig, corpus};
use crate::data::tasks::Task;
use crate::error::{Error, Origin, Result};
use crate::optim::{Decay, OptimConfig, OptimKind, Schedule, Warmup};
use crate::tokenizer::TextTokenizer;

use super::batch::Dataset;
use super::objective::Objective;
use super::precision::{LossScale, Precision};
use crate::methods::Method;

/// Which generated data a run trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DataSource {
    /// The story corpus, as a token stream (pre-training).
    Stories,
    /// A fine-tuning task, as prompt/response rows with the prompt masked out of the loss.
    Task(Task),
    /// A task's preference pairs (`{task}-pairs`, `{task}-sentence-pairs`: `Task::pairs`),
    /// for DPO and its kin.
    Pairs(Task, PairKind),
}

impl FromStr for DataSource {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "stories" {
            return Ok(DataSource::Stories);
        }
        for kind in [PairKind::Sentence, PairKind::Correct] {
            if let Some(task) = s.strip_suffix(kind.suffix()).and_then(|t| t.parse::<Task>().ok()) {
                if !kind.fits(task) {
                    return Err(format!("{task} has no sentence form (its answers are JSON records); use {task}-pairs"));
                }
                return Ok(DataSource::Pairs(task, kind));
            }
        }
        s.parse::<Task>().map(DataSource::Task).map_err(|_| {
            let tasks: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
            format!(
                "unknown data '{s}'; choose stories, one of the tasks ({}) or a task's preference pairs ({}-pairs, {}-sentence-pairs)",
                tasks.join(", "),
                tasks[0],
                tasks[0]
            )
        })
    }
}

impl TryFrom<String> for DataSource {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<DataSource> for String {
    fn from(d: DataSource) -> String {
        d.to_string()
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Stories => f.write_str("stories"),
            DataSource::Task(t) => f.write_str(t.name()),
            DataSource::Pairs(t, kind) => write!(f, "{}{}", t.name(), kind.suffix()),
        }
    }
}

impl DataSource {
    /// The texts of a split, for training a tokenizer or showing samples.
    pub fn texts(&self, seed: u64, split: Split, n: usize) -> Vec<String> {
        match self {
            DataSource::Stories => corpus(&StoryConfig::default(), seed, split, n),
            DataSource::Task(task) | DataSource::Pairs(task, _) => task.examples(seed, split, n).iter().map(|e| e.text()).collect(),
        }
    }

    /// Tokenised data set of one split.
    pub fn dataset(&self, tok: &TextTokenizer, seed: u64, split: Split, n: usize, seq_len: usize, prompt_loss_weight: f32) -> Result<Dataset> {
        let ds = match self {
            DataSource::Stories => Dataset::from_documents(tok, &corpus(&StoryConfig::default(), seed, split, n))?,
            DataSource::Task(task) => Dataset::from_examples(tok, &task.examples(seed, split, n), seq_len, prompt_loss_weight)?,
            DataSource::Pairs(task, kind) => Dataset::from_pairs(tok, &task.pairs(*kind, seed, split, n), seq_len)?,
        };
        if ds.is_empty() {
            return Err(Error::Invalid(format!("the {self} {split:?} split is empty; ask for more examples")));
        }
        Ok(ds)
    }
}

/// Everything about a run except the model's shape (that is `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub data: DataSource,
    /// Documents (stories) or examples (tasks) in the training split.
    pub train_examples: usize,
    /// Documents or examples in the held-out split.
    pub eval_examples: usize,
    /// Seed of the data generator.
    pub data_seed: u64,
    /// Seed of batch order and dropout.
    pub seed: u64,
    /// Number of optimizer updates.
    pub steps: usize,
    pub batch_size: usize,
    /// Tokens per row; at most the model's `n_positions`.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    pub warmup_steps: usize,
    /// Warmup as a share of `steps` instead (overrides `warmup_steps`; rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    pub decay: Decay,
    pub min_lr_ratio: f64,
    pub optimizer: OptimConfig,
    /// Split each batch of `batch_size` rows into this many micro-batches and add up their
    /// gradients before one update: the same update, less activation memory.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Data parallelism: this many replicas of the model (`Trainer::replica_devices`), each
    /// computing the gradients of its equal share of every batch's rows; the shares'
    /// gradients, weighted by their counted tokens, are summed on the first device, which
    /// applies the one update. The same update as one device with the whole batch.
    #[serde(default = "one")]
    pub data_parallel: usize,
    /// ZeRO stage across the data-parallel replicas: 0 (the first device keeps all the
    /// optimizer state) or 1 (each replica keeps the state of its share of the parameters
    /// and makes their update: `optim::Shards`). Stages 2 and 3, which also shard gradients
    /// and weights, are estimated (`memory::Plan::zero`) but not run.
    #[serde(default)]
    pub zero: u8,
    /// Gradient checkpointing: Burn recomputes the cheap (memory-bound) operations of the
    /// forward pass during the backward pass instead of keeping their outputs.
    #[serde(default)]
    pub checkpointing: bool,
    /// Evaluate the held-out loss every this many steps (0: only at the end).
    pub eval_every: usize,
    /// At most this many batches per evaluation.
    pub eval_batches: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Weight of prompt tokens in the SFT loss (0: learn responses only).
    pub prompt_loss_weight: f32,
    /// Number type of the forward and backward passes (the master weights stay FP32).
    #[serde(default)]
    pub precision: Precision,
    /// Loss scaling for FP16 compute.
    #[serde(default)]
    pub loss_scale: LossScale,
    /// What the run minimises (next-token cross-entropy unless a preference or
    /// distillation objective is chosen); `train.json` files from before it existed read as
    /// next-token.
    #[serde(default)]
    pub objective: Objective,
    /// The fine-tuning method the model was adapted with (`Method::apply`), so a checkpoint
    /// of the run loads into a model of the right shape.
    #[serde(default)]
    pub method: Method,
    /// A JSON Lines data set (`data::jsonl`) the run trains on instead of `data`. Core code
    /// never reads files: whoever builds the trainer reads this one and passes its data sets
    /// to `Trainer::from_datasets` (the CLI does, also when resuming).
    #[serde(default)]
    pub data_file: Option<String>,
    /// SHA-256 of `data_file`'s bytes when the run started, so a resumed run can tell that
    /// the file changed under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sha256: Option<String>,
    /// A distillation run's teacher: the model folder it was loaded from (the caller loads
    /// it, also when resuming, and hands it to `Trainer::set_teacher`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<String>,
    /// A distillation run's teacher cache (`teacher_cache::TeacherCache`): the file the
    /// caller reads the teacher's logits from and writes new rows to, also when resuming.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_cache: Option<String>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: DataSource::Stories,
            train_examples: 4000,
            eval_examples: 200,
            data_seed: 0,
            seed: 0,
            steps: 200,
            batch_size: 16,
            seq_len: 128,
            lr: 1e-3,
            warmup_steps: 20,
            decay: Decay::Cosine,
            min_lr_ratio: 0.1,
            warmup_ratio: None,
            optimizer: OptimConfig::default(),
            accumulate: 1,
            data_parallel: 1,
            zero: 0,
            checkpointing: false,
            eval_every: 50,
            eval_batches: 8,
            checkpoint_every: 100,
            prompt_loss_weight: 0.0,
            precision: Precision::Fp32,
            loss_scale: LossScale::None,
            objective: Objective::NextToken,
            method: Method::Full,
            data_file: None,
            data_sha256: None,
            teacher: None,
            teacher_cache: None,
        }
    }
}

fn one() -> usize {
    1
}

impl TrainConfig {
    pub fn schedule(&self) -> Schedule {
        Schedule { peak_lr: self.lr, warmup_steps: self.warmup(), total_steps: self.steps, decay: self.decay, min_lr_ratio: self.min_lr_ratio }
    }

    /// Warmup steps, from the ratio when one is set.
    pub fn warmup(&self) -> usize {
        match self.warmup_ratio {
            Some(r) => Warmup::Ratio(r).steps(self.steps),
            None => self.warmup_steps,
        }
    }

    /// Checks the values a run cannot start with, naming the field.
    /// `context` is the longest input the model takes (its `n_positions`, less a soft
    /// prompt's virtual tokens).
    pub fn validate(&self, origin: impl Into<Origin>, context: usize) -> Result<()> {
        let origin = origin.into();
        for (field, v) in [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("seq_len", self.seq_len),
            ("train_examples", self.train_examples),
            ("eval_examples", self.eval_examples),
        ] {
            if v == 0 {
                return Err(Error::config(origin, field, "must be at least 1"));
            }
        }
        if self.seq_len > context {
            return Err(Error::config(
                origin,
                "seq_len",
                format!("{} is longer than the {context} tokens the model takes (n_positions, less any soft prompt); use a shorter sequence", self.seq_len),
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config(origin, "lr", format!("{} is not a positive learning rate", self.lr)));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(Error::config(origin, "min_lr_ratio", format!("{} is not a fraction of the peak learning rate in [0, 1]", self.min_lr_ratio)));
        }
        if let Some(r) = self.warmup_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::config(origin, "warmup_ratio", format!("{r} is not a share of the run in [0, 1]")));
        }
        self.optimizer.validate(origin.clone())?;
        if self.accumulate == 0 || !self.batch_size.is_multiple_of(self.accumulate) {
            return Err(Error::config(
                origin,
                "accumulate",
                format!("{} micro-batches do not divide a batch of {} rows; pick a divisor of the batch size", self.accumulate, self.batch_size),
            ));
        }
        let shares = self.accumulate * self.data_parallel;
        if self.data_parallel == 0 || !self.batch_size.is_multiple_of(shares) {
            return Err(Error::config(
                origin,
                "data_parallel",
                format!(
                    "{} replicas, each taking {} micro-batch{}, cannot share a batch of {} rows equally; pick a `batch_size` that {shares} divides",
                    self.data_parallel,
                    self.accumulate,
                    if self.accumulate == 1 { "" } else { "es" },
                    self.batch_size
                ),
            ));
        }
        if self.zero == 1 && self.data_parallel < 2 {
            return Err(Error::config(
                origin,
                "zero",
                "stage 1 shares the optimizer state between data-parallel replicas, and this run has one; set `data_parallel` to 2 or more, or `zero` to 0",
            ));
        }
        if self.zero == 1 && (self.optimizer.kind.paged() || self.optimizer.kind.eight_bit()) {
            return Err(Error::config(
                origin,
                "zero",
                format!(
                    "{}'s state lives in host memory, which every replica shares, so stage 1 would not divide it; use adamw (or sgd, lion, adafactor) or `zero` 0",
                    self.optimizer.kind
                ),
            ));
        }
        if self.zero > 1 {
            return Err(Error::config(
                origin,
                "zero",
                format!(
                    "stage {} is not run by tinytune: its replicas gather gradients on the first device, so only the optimizer state can be sharded; use 0 or 1 (the memory calculator estimates stages 2 and 3)",
                    self.zero
                ),
            ));
        }
        if self.data_parallel > 1 && matches!(self.objective, super::Objective::Distill { .. }) {
            return Err(Error::config(
                origin,
                "data_parallel",
                "distillation keeps its teacher on one device; use data_parallel 1 (accumulate splits a batch on one device)",
            ));
        }
        if self.optimizer.loraplus_lr_ratio.is_some() && self.method.lora().is_none() {
            return Err(Error::config(
                origin,
                "loraplus_ratio",
                format!("LoRA+ sets the learning rate of LoRA's B matrices, and the {} method has none; drop it or use lora/qlora", self.method.name()),
            ));
        }
        if self.optimizer.kind == OptimKind::Mezo {
            let refuse = |field: &str, why: &str| Err(Error::config(origin.clone(), field, format!("MeZO {why}")));
            if self.checkpointing {
                return refuse("checkpointing", "keeps no activations for a backward pass, so there is nothing to checkpoint; turn it off");
            }
            if self.accumulate > 1 {
                return refuse("accumulate", "computes no gradient, so there is nothing to accumulate; use accumulate 1");
            }
            if self.data_parallel > 1 {
                return refuse("data_parallel", "computes no gradient, so there is nothing to average across replicas; use data_parallel 1");
            }
            if self.precision != super::precision::Precision::Fp32 {
                return refuse("precision", "runs its forward passes in FP32 in tinytune; use precision fp32");
            }
        }
        super::precision::validate(self.precision, &self.loss_scale, origin.clone())?;
        self.objective.validate(origin.clone())?;
        let pairs = matches!(self.data, DataSource::Pairs(..));
        if self.objective.is_preference() && self.data_file.is_none() && !pairs {
            return Err(Error::config(
                origin,
                "data",
                format!(
                    "is {}, but the {} objective learns from preference pairs; use a task's pairs ({}) or a JSON Lines file of prompt/chosen/rejected",
                    self.data,
                    self.objective.name(),
                    match self.data {
                        DataSource::Task(t) => format!("{}-pairs", t.name()),
                        _ => "e.g. story-qa-pairs".into(),
                    }
                ),
            ));
        }
        if !self.objective.is_preference() && self.data_file.is_none() && pairs {
            return Err(Error::config(
                origin,
                "data",
                format!(
                    "is {}, preference pairs, which the {} objective cannot learn from; choose a preference objective (dpo, ipo, hinge, orpo) or the task itself",
                    self.data,
                    self.objective.name()
                ),
            ));
        }
        if self.objective.is_preference() && self.optimizer.kind == OptimKind::Mezo {
            return Err(Error::config(origin, "optimizer", "MeZO is not wired to preference objectives in tinytune; use adamw or sgd"));
        }
        if let Objective::Distill { lmbda, seq_kd, .. } = self.objective
            && (lmbda > 0.0 || seq_kd)
        {
            let field = if seq_kd { "objective.seq_kd" } else { "objective.lmbda" };
            if matches!(self.data, DataSource::Stories) && self.data_file.is_none() {
                return Err(Error::config(
                    origin,
                    field,
                    "samples completions of prompts, and stories have none; use a task (story-qa, sentiment, json-extract) or a prompt/completion .jsonl",
                ));
            }
            if self.prompt_loss_weight != 0.0 {
                return Err(Error::config(origin, field, "samples completions after each prompt, so the prompt must not count (`prompt_loss_weight` 0)"));
            }
        }
        if matches!(self.objective, Objective::Distill { .. }) && self.optimizer.kind == OptimKind::Mezo {
            return Err(Error::config(origin, "optimizer", "MeZO is not wired to distillation in tinytune; use adamw or sgd"));
        }
        if let Objective::Grpo { group_size, .. } = &self.objective {
            if !matches!(self.data, DataSource::Task(_)) || self.data_file.is_some() {
                let data = self.data_file.clone().unwrap_or_else(|| self.data.to_string());
                return Err(Error::config(
                    origin,
                    "data",
                    format!("is {data}, but GRPO learns from a task's prompts with answers a checker can verify; use story-qa, sentiment or json-extract"),
                ));
            }
            if !self.batch_size.is_multiple_of(*group_size) {
                return Err(Error::config(
                    origin,
                    "batch_size",
                    format!(
                        "{} completions do not split into groups of {group_size}; make the batch a multiple of the group size (as TRL requires)",
                        self.batch_size
                    ),
                ));
            }
            if self.optimizer.kind == OptimKind::Mezo {
                return Err(Error::config(origin, "optimizer", "MeZO is not wired to GRPO in tinytune; use adamw or sgd"));
            }
        }
        Ok(())
    }

    pub fn from_json(text: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        serde_json::from_str(text).map_err(|e| Error::parse(origin, e))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a TrainConfig always serialises")
    }
}
