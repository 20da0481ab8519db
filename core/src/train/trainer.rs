//! The training loop, one step at a time. Written out rather than using Burn's `Learner`,
//! which needs threads a browser does not have, and because each line here is something a
//! lesson talks about: sample a batch, forward, loss, backward, clip, update.
//!
//! A `Trainer` takes one step at a time; `train::run` drives it to the end of a run for
//! every caller (the CLI, `compare`, the browser worker) and turns its steps into events.

use std::collections::HashSet;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use web_time::Instant;

use crate::data::Split;
use crate::data::rng::Rng;
use crate::error::{Error, Result};
use crate::model::{Gpt, named_params};
use crate::optim::{NamedGrads, OptimKind, Optimizer, Schedule, Shards, mezo};
use crate::tokenizer::TextTokenizer;

use super::batch::{Batch, Dataset};
use super::config::TrainConfig;
use super::objective::{Objective, PreferenceMetrics, RowScore, sequence_logps};
use super::precision::{self, LossScaler, Precision};

/// What happened in one optimizer step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepEvent {
    /// Steps completed, counting this one (1-based).
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    /// Global gradient norm before clipping; infinite or NaN on a step mixed precision
    /// skipped (JSON has no such numbers: written as null, read back as NaN).
    #[serde(with = "finite_or_null")]
    pub grad_norm: f32,
    /// Tokens in this step's batch (inputs, padding included).
    pub tokens: usize,
    /// A preference objective's metrics on this step's batch, under TRL's names
    /// (`rewards/chosen`, `rewards/accuracies`, …; the `logits/*` only in evaluations);
    /// empty otherwise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// Throughput of this step alone.
    pub tokens_per_s: f64,
    /// Seconds of training so far, across resumes.
    pub elapsed_s: f64,
    /// The factor the loss was multiplied by before the backward pass (1: no scaling).
    #[serde(default = "one")]
    pub loss_scale: f64,
    /// The update was skipped because a scaled gradient overflowed (mixed precision).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

fn one() -> f64 {
    1.0
}

mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() { s.serialize_f32(*v) } else { s.serialize_none() }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
    }
}

/// A preference run's reference log-probabilities, one per row of each data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceLogps {
    pub train: Vec<f32>,
    pub eval: Vec<f32>,
}

/// A held-out evaluation: the objective's mean loss, and for a preference objective TRL's
/// metrics by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub loss: f32,
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// A model being trained, with its optimizer, data and position in the run.
pub struct Trainer {
    /// Lives on an autodiff device.
    pub model: Gpt,
    pub optim: Optimizer,
    /// Loss scaling for mixed precision (a no-op at scale 1 in FP32).
    pub scaler: LossScaler,
    pub config: TrainConfig,
    pub schedule: Schedule,
    /// Steps completed.
    pub step: usize,
    pub train: Dataset,
    pub eval: Dataset,
    pub device: Device,
    /// Training seconds before this process (from a resumed checkpoint).
    pub elapsed_before: f64,
    /// A GRPO run's prompts, reward reader and reference (None for every other run).
    pub rl: Option<super::grpo::Rl>,
    /// A distillation run's frozen teacher, without autodiff (`set_teacher`).
    pub teacher: Option<Gpt>,
    /// A distillation run's teacher logits from earlier runs (`--teacher-cache`): rows of
    /// the data found there skip the teacher; rows that are not are added.
    pub teacher_cache: Option<super::TeacherCache>,
    /// The devices of the replicas after the first under data parallelism
    /// (`config.data_parallel`), autodiff like `device`; replicas without one here share
    /// `device` (`set_replica_devices`).
    pub replica_devices: Vec<Device>,
    /// The last rollout's metrics, reported with its step.
    rollout_metrics: std::collections::BTreeMap<String, f64>,
    clock: Option<Instant>,
}

impl Trainer {
    /// Builds the data sets named by `config` and an optimizer at step 0. `device` should
    /// have autodiff.
    pub fn new(model: Gpt, tok: &TextTokenizer, config: TrainConfig, device: &Device) -> Result<Self> {
        if tok.vocab_size() > model.config().vocab_size {
            return Err(Error::Invalid(format!(
                "the tokenizer has {} tokens but the model's vocab_size is {}; they must match",
                tok.vocab_size(),
                model.config().vocab_size
            )));
        }
        if let Some(file) = &config.data_file {
            return Err(Error::config(
                "training config",
                "data_file",
                format!("{file}: a run on a file needs its data read by the caller; build the data sets with data::jsonl and Trainer::from_datasets"),
            ));
        }
        let ds = |split, n| match config.data {
            // Pairs are tokenised as the objective's TRL trainer does.
            super::DataSource::Pairs(task, kind) => {
                Dataset::from_pairs_for(&config.objective, tok, &task.pairs(kind, config.data_seed, split, n), config.seq_len, config.batch_size)
            }
            _ => config.data.dataset(tok, config.data_seed, split, n, config.seq_len, config.prompt_loss_weight),
        };
        if let (true, super::DataSource::Task(task)) = (config.objective.is_rl(), config.data) {
            // GRPO samples from the task's prompts; its rows (prompt and reference answer)
            // give the held-out loss, which shows how far the policy drifts.
            config.validate("training config", model.context_len())?;
            let rl = super::grpo::Rl {
                train: super::grpo::PromptSet::new(task, tok, config.data_seed, Split::Train, config.train_examples)?,
                eval: super::grpo::PromptSet::new(task, tok, config.data_seed, Split::Eval, config.eval_examples)?,
                tokenizer: tok.clone(),
                reference: None,
                last: vec![],
            };
            // Prompt and completion share a row of seq_len + 1 tokens: a prompt must leave room.
            let longest = rl.train.ids.iter().chain(&rl.eval.ids).map(|p| p.len()).max().unwrap_or(0);
            if longest >= config.seq_len {
                return Err(Error::config(
                    "training config",
                    "seq_len",
                    format!(
                        "is {}, but the longest {task} prompt has {longest} tokens and leaves no room for a completion; raise it above {longest}",
                        config.seq_len
                    ),
                ));
            }
            let (train, eval) = (ds(Split::Train, config.train_examples)?, ds(Split::Eval, config.eval_examples)?);
            let mut trainer = Self::from_datasets(model, config, train, eval, device)?;
            trainer.rl = Some(rl);
            return Ok(trainer);
        }
        let train = ds(Split::Train, config.train_examples)?;
        let eval = ds(Split::Eval, config.eval_examples)?;
        Self::from_datasets(model, config, train, eval, device)
    }

    /// A trainer on a JSON Lines file's text (Alpaca, prompt/completion or TRL's
    /// `messages`, conversations rendered with `chat`; for a preference objective TRL's
    /// prompt/chosen/rejected pairs), split into training and held-out examples by
    /// `config`'s counts and data seed; `origin` names the file in errors. The CLI reads
    /// the file, the page fetches it: both build the run here.
    pub fn from_jsonl(
        model: Gpt,
        tok: &TextTokenizer,
        chat: Option<&crate::tokenizer::chat::ChatTemplate>,
        text: &str,
        origin: &str,
        config: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        if config.objective.is_unpaired() {
            // KTO: TRL's unpaired feedback, or pairs (split whole, then taken apart).
            let (ex, c) = (|e| Error::Invalid(format!("{origin}: {e}")), &config);
            let (train, eval) = match crate::data::preference::parse_feedback(text, origin, chat)? {
                crate::data::Feedback::Pairs(pairs) => {
                    let (train, eval) = crate::data::jsonl::split(pairs, c.eval_examples, c.data_seed);
                    let train = &train[..train.len().min(c.train_examples)];
                    (crate::data::preference::unpair(train), crate::data::preference::unpair(&eval))
                }
                crate::data::Feedback::Unpaired(examples) => {
                    let (mut train, eval) = crate::data::jsonl::split(examples, c.eval_examples, c.data_seed);
                    train.truncate(c.train_examples);
                    (train, eval)
                }
            };
            if train.is_empty() || eval.is_empty() {
                return Err(Error::config(origin, "lines", "one line is too few to hold any out for evaluation; write at least two lines"));
            }
            let rows = |e: &[crate::data::Unpaired]| Dataset::from_unpaired(tok, e, c.seq_len, c.batch_size).map_err(ex);
            let (train_set, eval_set) = (rows(&train)?, rows(&eval)?);
            return Self::from_datasets(model, config, train_set, eval_set, device);
        }
        if config.objective.is_preference() {
            // TRL's preference pairs, one a line, split like any other examples.
            let pairs = crate::data::preference::parse(text, origin, chat)?;
            let (mut train, eval) = crate::data::jsonl::split(pairs, config.eval_examples, config.data_seed);
            train.truncate(config.train_examples);
            if train.is_empty() || eval.is_empty() {
                return Err(Error::config(origin, "lines", "one pair is too few to hold any out for evaluation; write at least two lines"));
            }
            let rows = |p: &[crate::data::Pair]| {
                Dataset::from_pairs_for(&config.objective, tok, p, config.seq_len, config.batch_size).map_err(|e| Error::Invalid(format!("{origin}: {e}")))
            };
            let (train_set, eval_set) = (rows(&train)?, rows(&eval)?);
            return Self::from_datasets(model, config, train_set, eval_set, device);
        }
        let groups = crate::data::jsonl::parse(text, origin, chat)?;
        let (mut train, eval) = crate::data::jsonl::split(groups, config.eval_examples, config.data_seed);
        train.truncate(config.train_examples);
        let (train, eval): (Vec<_>, Vec<_>) = (train.into_iter().flatten().collect(), eval.into_iter().flatten().collect());
        if train.is_empty() {
            return Err(Error::config(origin, "examples", "one example is too few to hold any out for evaluation; write at least two lines"));
        }
        let rows = |ex: &[crate::data::Example]| {
            Dataset::from_examples(tok, ex, config.seq_len, config.prompt_loss_weight).map_err(|e| Error::Invalid(format!("{origin}: {e}")))
        };
        let (train_set, eval_set) = (rows(&train)?, rows(&eval)?);
        Self::from_datasets(model, config, train_set, eval_set, device)
    }

    /// A trainer on data sets built elsewhere (benchmarks, custom data).
    pub fn from_datasets(model: Gpt, config: TrainConfig, train: Dataset, eval: Dataset, device: &Device) -> Result<Self> {
        config.validate("training config", model.context_len())?;
        if config.objective.is_reward_model() && model.score.is_none() {
            return Err(Error::config(
                "training config",
                "objective",
                "is reward, but the model is a language model without a score head; make it a reward model first (Gpt::into_reward_model; the CLI does this for you)",
            ));
        }
        if !config.objective.is_reward_model() && model.score.is_some() {
            return Err(Error::config(
                "training config",
                "objective",
                format!(
                    "is {}, but the model is a reward model ({}: a score head, no LM head); it trains with the reward objective only",
                    config.objective.name(),
                    model.config().family.classifier_architecture()
                ),
            ));
        }
        config.precision.check(device, "training config")?;
        let (model, device) = if config.checkpointing { with_checkpointing(model, device)? } else { (model, device.clone()) };
        Ok(Self {
            optim: Optimizer::for_device(config.optimizer.clone(), &device),
            scaler: LossScaler::new(config.loss_scale.clone()),
            schedule: config.schedule(),
            model,
            config,
            step: 0,
            train,
            eval,
            device,
            elapsed_before: 0.0,
            rl: None,
            teacher: None,
            teacher_cache: None,
            replica_devices: Vec::new(),
            rollout_metrics: Default::default(),
            clock: None,
        })
    }

    /// The batch of step `step`: a function of the seed and the step number alone, so a
    /// resumed run sees exactly the batches the uninterrupted run would have.
    pub fn batch_for(&self, step: usize) -> Batch {
        let mut rng = Rng::derive(self.config.seed, &format!("batch/{step}"));
        self.train.sample(&mut rng, self.config.batch_size, self.config.seq_len)
    }

    /// Forward and backward on one batch: returns `[loss, grad_norm]` on the device and the
    /// clipped FP32 gradients. Nothing is read back, so a GPU can keep queueing work.
    ///
    /// In mixed precision the model runs on a copy cast to the compute type, the loss is
    /// computed in FP32 from upcast logits and multiplied by the loss scale before the
    /// backward pass, and the gradients come back cast to FP32 and divided by the scale.
    pub fn forward_backward(&self, batch: &Batch) -> (Tensor<1>, NamedGrads) {
        let (stats, named) = self.forward_backward_scored(batch);
        (stats.narrow(0, 0, 2), named)
    }

    /// [`Trainer::forward_backward`] with, for a preference objective, each row's summed
    /// log-probability after the loss and the norm: `[loss, grad_norm, logp_0, …]`.
    fn forward_backward_scored(&self, batch: &Batch) -> (Tensor<1>, NamedGrads) {
        let (loss, mut named, scores) = self.accumulated_scored(batch);
        precision::unscale(&mut named, self.scaler.scale());
        let norm = self.optim.clip(&mut named).unwrap_or_else(|| Tensor::zeros([1], &self.device));
        let mut parts = vec![loss.inner(), norm];
        parts.extend(scores.into_iter().map(|s| s.inner()));
        (Tensor::cat(parts, 0), named)
    }

    /// The batch's loss and (loss-scaled) gradients, computed in `config.accumulate`
    /// micro-batches. The loss is a mean over counted tokens, so micro-batch i's gradient is
    /// weighted by its share of them, w_i / W: the sum is then exactly the full batch's
    /// gradient, however the counted tokens fall between micro-batches.
    pub fn accumulated_gradients(&self, batch: &Batch) -> (Tensor<1>, NamedGrads) {
        let (loss, grads, _) = self.accumulated_scored(batch);
        (loss, grads)
    }

    /// Places data-parallel replicas 2, 3, … on `devices` (autodiff devices of the first
    /// device's backend); replica 1 is always `device`. Those not given share `device`.
    pub fn set_replica_devices(&mut self, devices: Vec<Device>) {
        self.replica_devices = devices;
        // ZeRO-1's shares are placed again at the next update; state follows on first use.
        self.optim.shards = None;
    }

    /// The device of data-parallel replica `r` (0 is `device`).
    fn replica_device(&self, r: usize) -> Device {
        match r.checked_sub(1).and_then(|i| self.replica_devices.get(i)) {
            Some(d) => d.clone(),
            None => self.device.clone(),
        }
    }

    /// [`Trainer::accumulated_gradients`] with each micro-batch's row scores (preference
    /// objectives), in row order.
    ///
    /// Under data parallelism the batch's rows are dealt out in equal, contiguous shares,
    /// one per replica, each in `accumulate` micro-batches. A replica is the model forked
    /// to its device (on the first device, the model itself); its gradients and loss come
    /// back to the first device and are added there with their token weights: the sum is
    /// the whole batch's gradient, as on one device. On a GPU backend the work queued on
    /// each device runs concurrently with the others'.
    fn accumulated_scored(&self, batch: &Batch) -> (Tensor<1>, NamedGrads, Vec<Tensor<1>>) {
        let scale = self.scaler.scale();
        let k = self.config.accumulate.max(1);
        let n = self.config.data_parallel.max(1);
        if k * n == 1 {
            let (loss, grads, scores) = self.scored_gradients(batch, self.config.precision, scale);
            return (loss, grads, scores.into_iter().collect());
        }
        let replicas: Vec<(Gpt, Device)> = (0..n)
            .map(|r| match self.replica_device(r) {
                d if d != self.device => (self.model.clone().fork(&d), d),
                d => (self.model.clone(), d),
            })
            .collect();
        let objective = &self.config.objective;
        let total = objective.weight(batch);
        let mut acc: Option<(Tensor<1>, NamedGrads)> = None;
        let mut all_scores = Vec::new();
        for (i, part) in batch.split(k * n).into_iter().enumerate() {
            let share = if total > 0.0 { objective.weight(&part) / total } else { 1.0 / (k * n) as f32 };
            if share == 0.0 && acc.is_some() {
                continue; // nothing counted in these rows: no gradient to add
            }
            let (model, device) = &replicas[i / k];
            let (loss, grads, scores) = self.scored_gradients_on(model, device, &part, self.config.precision, scale * share as f64);
            let (loss, grads) = if *device == self.device { (loss, grads) } else { (loss.to_device(&self.device), grads.to_device(&self.device)) };
            all_scores.extend(scores.map(|s| s.to_device(&self.device)));
            let loss = loss.mul_scalar(share);
            acc = Some(match acc {
                None => (loss, grads),
                Some((l, mut g)) => {
                    g.add(grads);
                    (l + loss, g)
                }
            });
        }
        let (loss, grads) = acc.expect("at least one micro-batch");
        (loss, grads, all_scores)
    }

    /// The unscaled loss and the gradients exactly as the backward pass produced them: in
    /// `precision`'s compute type and multiplied by `scale`.
    pub fn raw_gradients(&self, batch: &Batch, precision: Precision, scale: f64) -> (Tensor<1>, NamedGrads) {
        let (loss, grads, _) = self.scored_gradients(batch, precision, scale);
        (loss, grads)
    }

    /// [`Trainer::raw_gradients`] with the objective's row scores (preference objectives).
    fn scored_gradients(&self, batch: &Batch, precision: Precision, scale: f64) -> (Tensor<1>, NamedGrads, Option<Tensor<1>>) {
        self.scored_gradients_on(&self.model, &self.device, batch, precision, scale)
    }

    /// [`Trainer::scored_gradients`] of `model` (the model or a replica) on `device`.
    fn scored_gradients_on(&self, model: &Gpt, device: &Device, batch: &Batch, precision: Precision, scale: f64) -> (Tensor<1>, NamedGrads, Option<Tensor<1>>) {
        let dtype = precision.compute_dtype();
        let compute = match dtype {
            Some(dtype) => precision::cast_model(model, dtype),
            None => model.clone(),
        };
        let (loss, scores) = self.config.objective.loss_and_scores(&compute, batch, device, dtype, self.teacher.as_ref());
        let grads = if scale == 1.0 { loss.backward() } else { loss.clone().mul_scalar(scale).backward() };
        (loss, NamedGrads::collect(&compute, &grads), scores)
    }

    /// The memory estimator's optimizer state per GPU for this run: its optimizer, its
    /// trainable parameters, `data_parallel` GPUs and its ZeRO stage (what
    /// [`Optimizer::state_bytes_by_replica`] measures, up to ZeRO-1's whole-parameter shares).
    pub fn estimated_state_per_replica(&self) -> u64 {
        let c = &self.config;
        let plan = crate::memory::Plan { zero: c.zero, gpus: c.data_parallel.max(1) as u64, ..crate::memory::Plan::for_run(self.model.config(), c) };
        plan.estimate().gpu.optimizer
    }

    /// Applies the update for the current step and advances the step counter.
    pub fn apply(&mut self, grads: NamedGrads) {
        let replicas = self.config.data_parallel.max(1);
        if self.config.zero >= 1 && replicas > 1 && self.optim.shards.is_none() {
            // ZeRO-1: the trainable parameters (those with gradients) shared out once, by the
            // bytes of state each will hold (the estimator's formula for its shape).
            let kind = self.optim.config.kind.plan_kind(self.optim.config.momentum);
            let trained: std::collections::HashSet<&str> = grads.0.iter().map(|(path, _)| path.as_str()).collect();
            let params: Vec<(String, u64)> = crate::model::named_params(&self.model)
                .into_iter()
                .filter(|p| trained.contains(p.name.as_str()))
                .map(|p| {
                    let shape: Vec<u64> = p.shape.iter().map(|&d| d as u64).collect();
                    let bytes = kind.state_bytes(&shape, 4);
                    (p.name, bytes)
                })
                .collect();
            self.optim.shards = Some(Shards::partition(&params, (0..replicas).map(|r| self.replica_device(r)).collect()));
        }
        let lr = self.schedule.lr(self.step);
        // Cloning a module clones tensor handles, not data.
        self.model = self.optim.step(lr, self.model.clone(), grads);
        self.step += 1;
    }

    /// One whole step with a synchronous read-back of the loss (native code). A non-finite
    /// loss stops the run before the bad update touches the weights.
    pub fn step(&mut self) -> Result<StepEvent> {
        self.check_teacher()?;
        if self.needs_references()? {
            self.score_references(None)?;
        }
        let started = Instant::now();
        let batch = match self.rollout_plan()? {
            Some((picks, settings)) => {
                let rollout = super::grpo::rollout(&self.model.valid(), self.rl.as_ref().expect("planned"), &picks, &settings)?;
                let refs = self.kl_reference_scores(&rollout.batch).map(|x| x.into_data());
                self.take_rollout(rollout, refs)?
            }
            None => {
                let batch = self.batch_for(self.step);
                match self.gkd_source() {
                    Some((model, seed, pad, on_policy)) => Batch { on_policy, ..super::distill::resample(&batch, &model, seed, pad, pad) },
                    None => self.cached_teacher(batch),
                }
            }
        };
        let (batch, stats, pending) = self.begin_step(started, batch);
        let stats = stats.into_data();
        self.finish_step(started, &batch, stats, pending)
    }

    /// [`Trainer::step`] for the browser, where WebGPU can only read results back
    /// asynchronously.
    pub async fn step_async(&mut self) -> Result<StepEvent> {
        self.check_teacher()?;
        if self.needs_references()? {
            self.score_references_async(None).await?;
        }
        let started = Instant::now();
        let read = |e| Error::Invalid(format!("reading results back from the device failed: {e:?}"));
        let batch = match self.rollout_plan()? {
            Some((picks, settings)) => {
                let rollout = super::grpo::rollout_async(&self.model.valid(), self.rl.as_ref().expect("planned"), &picks, &settings).await?;
                let refs = match self.kl_reference_scores(&rollout.batch) {
                    Some(x) => Some(x.into_data_async().await.map_err(read)?),
                    None => None,
                };
                self.take_rollout(rollout, refs)?
            }
            None => {
                let batch = self.batch_for(self.step);
                match self.gkd_source() {
                    Some((model, seed, pad, on_policy)) => Batch { on_policy, ..super::distill::resample_async(&batch, &model, seed, pad, pad).await? },
                    None => batch,
                }
            }
        };
        let (batch, stats, pending) = self.begin_step(started, batch);
        let stats = stats.into_data_async().await.map_err(read)?;
        self.finish_step(started, &batch, stats, pending)
    }

    /// For a GRPO run, the prompts of this step's rollout and its settings: a function of
    /// the seed and the step alone, like [`Trainer::batch_for`]. None for other runs.
    /// Makes the KL term's reference (the model as the run starts) at step 0.
    fn rollout_plan(&mut self) -> Result<Option<(Vec<usize>, super::grpo::RolloutSettings)>> {
        let Objective::Grpo { group_size, beta, .. } = self.config.objective else {
            return Ok(None);
        };
        let step = self.step;
        let policy = (beta > 0.0).then(|| self.model.valid());
        let Some(rl) = self.rl.as_mut() else {
            return Err(Error::Invalid("a GRPO run samples from a task's prompts; build it with Trainer::new on story-qa, sentiment or json-extract".into()));
        };
        if beta > 0.0 && rl.reference.is_none() {
            if step > 0 {
                return Err(Error::Invalid(format!(
                    "this GRPO run (beta {beta}) is at step {step} without its reference model; resume it from a checkpoint that holds reference.safetensors"
                )));
            }
            rl.reference = policy;
        }
        let mut rng = Rng::derive(self.config.seed, &format!("rollout/{step}"));
        let picks = (0..self.config.batch_size / group_size).map(|_| rng.below(rl.train.len())).collect();
        Ok(Some((picks, self.rollout_settings())))
    }

    /// A GRPO run's sampling settings at the current step (defaults for other runs).
    fn rollout_settings(&self) -> super::grpo::RolloutSettings {
        let (group_size, temperature, max_completion_len) = match self.config.objective {
            Objective::Grpo { group_size, temperature, max_completion_len, .. } => (group_size, temperature, max_completion_len),
            _ => (1, 1.0, 1),
        };
        super::grpo::RolloutSettings {
            group_size,
            temperature,
            max_completion_len,
            seq_len: self.config.seq_len,
            seed: mix(self.config.seed ^ 0x4752_504F, self.step as u64),
        }
    }

    /// The reference's log-probability of every target of a rollout's batch, `[B * T]`, at
    /// the sampling temperature, when the KL term is on.
    fn kl_reference_scores(&self, batch: &Batch) -> Option<Tensor<1>> {
        let reference = self.rl.as_ref()?.reference.as_ref()?;
        let device = reference.wte.weight.val().device();
        let (inputs, targets, _) = batch.to_device(&device);
        // At the sampling temperature, as the policy's in the loss.
        let temperature = match self.config.objective {
            Objective::Grpo { temperature, .. } => temperature,
            _ => 1.0,
        };
        let logits = reference.forward(inputs).div_scalar(temperature);
        let [b, t, _] = logits.dims();
        Some(crate::kernels::token_log_probs(logits, targets).reshape([b * t]))
    }

    /// Keeps a rollout's groups and metrics for the step's event and returns its batch.
    fn take_rollout(&mut self, rollout: super::grpo::Rollout, refs: Option<TensorData>) -> Result<Batch> {
        let mut batch = rollout.batch;
        if let Some(refs) = refs {
            batch.token_refs =
                refs.convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("reading reference log-probabilities failed: {e:?}")))?;
        }
        self.rollout_metrics = rollout.metrics;
        if let Some(rl) = self.rl.as_mut() {
            rl.last = rollout.groups;
        }
        Ok(batch)
    }

    fn begin_step(&mut self, started: Instant, batch: Batch) -> (Batch, Tensor<1>, Pending) {
        self.clock.get_or_insert(started);
        // Dropout draws from the backend's generator: seed it per step for reproducibility.
        self.device.seed(mix(self.config.seed, self.step as u64));
        if self.config.optimizer.kind == OptimKind::Mezo {
            let (stats, model) = self.mezo_step(&batch);
            return (batch, stats, Pending::Model(Box::new(model)));
        }
        let (stats, grads) = self.forward_backward_scored(&batch);
        (batch, stats, Pending::Grads(grads))
    }

    /// One MeZO step on `batch`: `[mean of the two losses, |projected gradient|]` and the
    /// updated model, not yet committed. Runs on the model without autodiff: no graph, no
    /// activations kept.
    pub fn mezo_step(&self, batch: &Batch) -> (Tensor<1>, Gpt) {
        let c = &self.config.optimizer;
        let trainable: HashSet<String> = named_params(&self.model).into_iter().filter(|p| p.trainable).map(|p| p.name).collect();
        // The perturbation's seed: a function of the run's seed and the step alone.
        let seed = mix(self.config.seed ^ 0x4D65_5A4F, self.step as u64);
        let lr = self.schedule.lr(self.step);
        let loss = |m: &Gpt| self.config.objective.loss_and_scores(m, batch, &m.wte.weight.val().device(), None, self.teacher.as_ref()).0;
        let model = mezo::perturb(self.model.valid(), &trainable, seed, c.mezo_eps);
        let plus = loss(&model);
        let model = mezo::perturb(model, &trainable, seed, -2.0 * c.mezo_eps);
        let minus = loss(&model);
        let projected = (plus.clone() - minus.clone()).div_scalar(2.0 * c.mezo_eps);
        let model = mezo::restore_and_update(model, &trainable, seed, c.mezo_eps, lr, c.weight_decay, projected.clone());
        let stats = Tensor::cat(vec![(plus + minus).div_scalar(2.0), projected.abs()], 0);
        (stats, model.train())
    }

    fn finish_step(&mut self, started: Instant, batch: &Batch, stats: TensorData, pending: Pending) -> Result<StepEvent> {
        let stats: Vec<f32> = stats.convert::<f32>().try_to_vec::<f32>().expect("f32 data");
        let (loss, grad_norm) = (stats[0], stats[1]);
        let metrics = self.train_metrics(batch, &stats[2..]);
        if !loss.is_finite() {
            return Err(Error::NonFiniteLoss { step: self.step + 1, value: loss });
        }
        let lr = self.schedule.lr(self.step);
        let loss_scale = self.scaler.scale();
        let skipped = !self.scaler.update(grad_norm.is_finite());
        if skipped {
            // GradScaler's rule: drop this update; the step (and its batch) is still spent.
            self.step += 1;
        } else {
            match pending {
                Pending::Grads(grads) => self.apply(grads),
                Pending::Model(model) => {
                    self.model = *model;
                    self.optim.t += 1;
                    self.step += 1;
                }
            }
        }
        let tokens = batch.b * batch.t;
        let secs = started.elapsed().as_secs_f64();
        Ok(StepEvent {
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens,
            metrics,
            tokens_per_s: tokens as f64 / secs.max(1e-9),
            elapsed_s: self.elapsed(),
            loss_scale,
            skipped,
        })
    }

    /// TRL's metrics of a preference step from its batch's row log-probabilities (`scores`,
    /// read back with the loss); empty for other objectives. The `logits/*` are left to
    /// evaluations, which compute them.
    fn train_metrics(&self, batch: &Batch, scores: &[f32]) -> std::collections::BTreeMap<String, f64> {
        let objective = &self.config.objective;
        if objective.is_rl() {
            // The rollout's metrics, and (KL term on) the mean KL of each micro-batch.
            let mut m = self.rollout_metrics.clone();
            if !scores.is_empty() {
                m.insert("kl".into(), scores.iter().map(|&x| x as f64).sum::<f64>() / scores.len() as f64);
            }
            return m;
        }
        if matches!(objective, Objective::Distill { .. }) {
            // Each micro-batch's [divergence, next-token loss]: their mean over micro-batches.
            let mean = |k: usize| {
                let v: Vec<f64> = scores.iter().skip(k).step_by(2).map(|&x| x as f64).collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            };
            let mut m = self.rollout_metrics.clone();
            if scores.len() >= 2 {
                m.extend([("divergence".to_string(), mean(0)), ("nll_loss".to_string(), mean(1))]);
            }
            return m;
        }
        if !objective.is_preference() || (objective.needs_reference() && batch.refs.len() != batch.b) {
            return Default::default();
        }
        // One score a row (DPO: the completion's log-probability), or two (ORPO: the
        // completion's, then the whole row's).
        let per_row = scores.len() / batch.b.max(1);
        if per_row == 0 || scores.len() != per_row * batch.b {
            return Default::default();
        }
        let column = |k: usize| (0..batch.b).map(|i| scores[i * per_row + k]).collect::<Vec<f32>>();
        let rows = scores_from(batch, &column(0), None, (per_row > 1).then(|| column(1)).as_deref());
        let mut m = PreferenceMetrics::of(objective, &rows).metrics;
        m.retain(|k, _| !k.starts_with("logits/"));
        m
    }

    /// Mean held-out loss per counted token (per pair for a preference objective), on the
    /// model without autodiff or dropout.
    pub fn eval_loss(&self) -> Result<f32> {
        Ok(self.evaluate()?.loss)
    }

    /// [`Trainer::eval_loss`] for the browser (asynchronous read-back).
    pub async fn eval_loss_async(&self) -> Result<f32> {
        Ok(self.evaluate_async().await?.loss)
    }

    /// Whether the held-out evaluation will find tokens to count, checked before any
    /// training time is spent (an evaluation at the end would otherwise fail after it).
    pub fn check_held_out(&self) -> Result<()> {
        let c = &self.config;
        if c.objective.is_preference() {
            return Ok(());
        }
        let (objective, b) = match &self.rl {
            Some(_) => (&Objective::NextToken, c.batch_size.min(self.eval.len()).max(1)),
            None => (c.objective.held_out(), c.batch_size),
        };
        counted_eval_batches(objective, &self.eval, b, c.seq_len, c.eval_batches).map(|_| ())
    }

    /// The held-out loss, with TRL's metrics for a preference objective.
    pub fn evaluate(&self) -> Result<Evaluation> {
        let c = &self.config;
        if let Some(rl) = &self.rl {
            let model = self.model.valid();
            let b = c.batch_size.min(self.eval.len()).max(1);
            let loss = eval_losses(&Objective::NextToken, &model, &self.eval, b, c.seq_len, c.eval_batches)?;
            let metrics = super::grpo::held_out_reward(&model, &rl.eval, &rl.tokenizer, c.eval_examples, &self.rollout_settings())?;
            return Ok(Evaluation { loss, metrics });
        }
        if c.objective.is_preference() {
            let m = preference_eval(&c.objective, &self.model.valid(), &self.eval, c.batch_size, c.seq_len, c.eval_batches)?;
            return Ok(Evaluation { loss: m.loss as f32, metrics: m.metrics });
        }
        let loss = eval_losses(c.objective.held_out(), &self.model.valid(), &self.eval, c.batch_size, c.seq_len, c.eval_batches)?;
        Ok(Evaluation { loss, metrics: Default::default() })
    }

    /// [`Trainer::evaluate`] for the browser (asynchronous read-back).
    pub async fn evaluate_async(&self) -> Result<Evaluation> {
        let c = &self.config;
        if let Some(rl) = &self.rl {
            let model = self.model.valid();
            let b = c.batch_size.min(self.eval.len()).max(1);
            let loss = eval_losses_async(&Objective::NextToken, &model, &self.eval, b, c.seq_len, c.eval_batches).await?;
            let metrics = super::grpo::held_out_reward_async(&model, &rl.eval, &rl.tokenizer, c.eval_examples, &self.rollout_settings()).await?;
            return Ok(Evaluation { loss, metrics });
        }
        if c.objective.is_preference() {
            let m = preference_eval_async(&c.objective, &self.model.valid(), &self.eval, c.batch_size, c.seq_len, c.eval_batches).await?;
            return Ok(Evaluation { loss: m.loss as f32, metrics: m.metrics });
        }
        let loss = eval_losses_async(c.objective.held_out(), &self.model.valid(), &self.eval, c.batch_size, c.seq_len, c.eval_batches).await?;
        Ok(Evaluation { loss, metrics: Default::default() })
    }

    /// For a distillation step whose completions are sampled (GKD's on-policy `lmbda` and
    /// `seq_kd`), the model that samples them, the sampling seed and the rows' padding
    /// (also the end-of-text token that ends a completion), and whether the student samples
    /// them (an on-policy step); None when the step uses the data's own completions.
    /// Records the choice for the step's metrics (`on_policy`).
    fn gkd_source(&mut self) -> Option<(Gpt, u64, u32, bool)> {
        let Objective::Distill { lmbda, seq_kd, .. } = self.config.objective else { return None };
        let Dataset::Rows { pad, .. } = self.train else { return None };
        let source = super::distill::completion_source(seq_kd, lmbda, self.config.seed, self.step);
        if lmbda > 0.0 {
            let on = f64::from(source == Some(super::distill::Source::Student));
            self.rollout_metrics = [("on_policy".to_string(), on)].into();
        }
        let (model, on_policy) = match source? {
            super::distill::Source::Student => (self.model.valid(), true),
            super::distill::Source::Teacher => (self.teacher.clone()?, false),
        };
        Some((model, mix(self.config.seed ^ 0x474B_4400, self.step as u64), pad, on_policy))
    }

    /// A distillation batch of the data with its teacher logits from the teacher cache,
    /// micro-batch by micro-batch as the loss takes them: a micro-batch whose rows are all
    /// held is read from the cache; otherwise the teacher runs on it (exactly the forward
    /// pass the loss would make) and its rows are added. Without a cache, the batch as it
    /// was. The step's metrics report the share of rows the cache served, `teacher_cached`.
    fn cached_teacher(&mut self, mut batch: Batch) -> Batch {
        let (Some(cache), Some(teacher)) = (self.teacher_cache.as_mut(), self.teacher.as_ref()) else { return batch };
        if !matches!(self.config.objective, Objective::Distill { .. }) {
            return batch;
        }
        let hits_before = cache.hits;
        let mut logits = Vec::new();
        for part in batch.split(self.config.accumulate.max(1)) {
            match cache.lookup(&part) {
                Some(values) => logits.extend(values),
                None => {
                    let inputs = part.to_device(&teacher.wte.weight.val().device()).0;
                    let values: Vec<f32> =
                        super::distill::teacher_logits(teacher, &inputs).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits");
                    cache.insert(&part, &values);
                    logits.extend(values);
                }
            }
        }
        let served = (cache.hits - hits_before) as f64 / batch.b.max(1) as f64;
        self.rollout_metrics.insert("teacher_cached".to_string(), served);
        batch.teacher_logits = logits;
        batch
    }

    fn check_teacher(&self) -> Result<()> {
        if matches!(self.config.objective, Objective::Distill { .. }) && self.teacher.is_none() {
            return Err(Error::config("training config", "teacher", "this distillation run has no teacher model; load it and pass it to Trainer::set_teacher"));
        }
        Ok(())
    }

    /// Gives a distillation run its teacher (frozen, without autodiff). The teacher must
    /// read the student's token ids: the same vocabulary size.
    pub fn set_teacher(&mut self, teacher: Gpt) -> Result<()> {
        if !matches!(self.config.objective, Objective::Distill { .. }) {
            return Err(Error::config(
                "training config",
                "teacher",
                format!("the {} objective has no teacher; distillation has", self.config.objective.name()),
            ));
        }
        let (t, s) = (teacher.config().vocab_size, self.model.config().vocab_size);
        if t != s {
            return Err(Error::config(
                "training config",
                "teacher",
                format!(
                    "the teacher's vocabulary has {t} tokens and the student's {s}; distillation compares their distributions token by token, so they must share one tokenizer"
                ),
            ));
        }
        if teacher.score.is_some() {
            return Err(Error::config("training config", "teacher", "is a reward model (a score head, no LM head); a teacher must be a language model"));
        }
        self.teacher = Some(teacher.valid());
        Ok(())
    }

    /// Whether a preference run still lacks its reference log-probabilities. Before the
    /// first step the model itself is the reference (a frozen copy of the starting policy;
    /// for a fresh adapter that is the base model, TRL's default for PEFT models); after it
    /// they must come from the checkpoint.
    fn needs_references(&self) -> Result<bool> {
        if !self.config.objective.needs_reference() || !self.train.refs().is_empty() {
            return Ok(false);
        }
        if self.step > 0 {
            return Err(Error::Invalid(format!(
                "this {} run is at step {} without its reference log-probabilities; resume it from a checkpoint that holds them (trainer_state.json's reference)",
                self.config.objective.name(),
                self.step
            )));
        }
        Ok(true)
    }

    /// Scores every training and held-out pair with `reference` (None: the model as it is
    /// now) and keeps the log-probabilities for the rest of the run.
    pub fn score_references(&mut self, reference: Option<&Gpt>) -> Result<()> {
        let model = reference.cloned().unwrap_or_else(|| self.model.valid());
        let (b, t) = (self.config.batch_size, self.config.seq_len);
        let (train, eval) = (reference_logps(&model, &self.train, b, t)?, reference_logps(&model, &self.eval, b, t)?);
        self.set_references(ReferenceLogps { train, eval })
    }

    /// [`Trainer::score_references`] for the browser (asynchronous read-back).
    pub async fn score_references_async(&mut self, reference: Option<&Gpt>) -> Result<()> {
        let model = reference.cloned().unwrap_or_else(|| self.model.valid());
        let (b, t) = (self.config.batch_size, self.config.seq_len);
        let mut sets = Vec::new();
        for data in [&self.train, &self.eval] {
            let mut read = Vec::new();
            for x in row_scores(&model, data, b, t) {
                read.push(x.into_data_async().await.map_err(|e| Error::Invalid(format!("reading log-probabilities back failed: {e:?}")))?);
            }
            sets.push(read_rows(read)?);
        }
        let eval = sets.pop().expect("two sets");
        let train = sets.pop().expect("two sets");
        self.set_references(ReferenceLogps { train, eval })
    }

    /// Takes reference log-probabilities scored earlier (a resumed run's checkpoint).
    pub fn set_references(&mut self, refs: ReferenceLogps) -> Result<()> {
        let rows = |d: &Dataset| d.len() * 2;
        if refs.train.len() != rows(&self.train) || refs.eval.len() != rows(&self.eval) {
            return Err(Error::Invalid(format!(
                "the reference log-probabilities cover {} training and {} held-out rows, but the run has {} and {}; they belong to another data set",
                refs.train.len(),
                refs.eval.len(),
                rows(&self.train),
                rows(&self.eval)
            )));
        }
        self.train.set_refs(refs.train);
        self.eval.set_refs(refs.eval);
        Ok(())
    }

    /// The reference log-probabilities, for a checkpoint (None for other objectives).
    pub fn references(&self) -> Option<ReferenceLogps> {
        (!self.train.refs().is_empty()).then(|| ReferenceLogps { train: self.train.refs().to_vec(), eval: self.eval.refs().to_vec() })
    }

    /// Seconds trained so far, across resumes.
    pub fn elapsed(&self) -> f64 {
        self.elapsed_before + self.clock.map(|c| c.elapsed().as_secs_f64()).unwrap_or(0.0)
    }
}

/// What a step computed and has not yet committed: gradients for the optimizer, or (MeZO)
/// the updated model itself.
enum Pending {
    Grads(NamedGrads),
    Model(Box<Gpt>),
}

/// `model` and `device` with Burn's gradient checkpointing switched on: the device makes new
/// tensors checkpointed, and every parameter is marked, so the whole graph is.
fn with_checkpointing(model: Gpt, device: &Device) -> Result<(Gpt, Device)> {
    let Some(_) = device.gradient_checkpointing_strategy() else {
        return Err(Error::Invalid("gradient checkpointing needs an autodiff device (Device::autodiff)".into()));
    };
    let device = device.clone().gradient_checkpointing();
    let strategy = device.gradient_checkpointing_strategy().expect("autodiff device");
    struct Mark(GradientCheckpointingStrategy);
    impl ModuleMapper for Mark {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = if tensor.is_autodiff() { tensor.with_gradient_checkpointing_strategy(self.0) } else { tensor };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    Ok((model.map(&mut Mark(strategy)), device))
}

/// Mean loss per counted token of `model` over up to `max_batches` sequential batches.
/// (Next-token cross-entropy: a trainer's own evaluation uses its objective.)
pub fn eval_loss(model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<f32> {
    eval_losses(&Objective::NextToken, model, data, b, t, max_batches)
}

/// [`eval_loss`] for the browser (asynchronous read-back).
pub async fn eval_loss_async(model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<f32> {
    eval_losses_async(&Objective::NextToken, model, data, b, t, max_batches).await
}

/// `objective`'s mean over the evaluation batches, read back synchronously.
fn eval_losses(objective: &Objective, model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<f32> {
    let losses = eval_batch_losses(objective, model, data, b, t, max_batches)?;
    mean_of(losses.into_iter().map(|(loss, w)| weighted(loss.into_data(), w)).collect())
}

async fn eval_losses_async(objective: &Objective, model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<f32> {
    let mut read = Vec::new();
    for (loss, w) in eval_batch_losses(objective, model, data, b, t, max_batches)? {
        let d = loss.into_data_async().await.map_err(|e| Error::Invalid(format!("reading the loss back from the device failed: {e:?}")))?;
        read.push(weighted(d, w));
    }
    mean_of(read)
}

/// Each evaluation batch's mean loss (still on the device) and its weight.
fn eval_batch_losses(objective: &Objective, model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<Vec<(Tensor<1>, f32)>> {
    let device = model.wte.weight.val().device();
    let batches = counted_eval_batches(objective, data, b, t, max_batches)?;
    Ok(batches.iter().map(|batch| (objective.loss(model, batch, &device, None), objective.weight(batch))).collect())
}

/// The evaluation batches, refused (with the reason and the fix) when no token in them
/// counts towards the loss.
fn counted_eval_batches(objective: &Objective, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<Vec<Batch>> {
    let batches = data.sequential(b, t, max_batches.max(1));
    if batches.iter().all(|batch| objective.weight(batch) == 0.0) {
        // Three different causes: fewer held-out rows than a batch, rows whose answers all lie
        // past the row length, or a stream too short for one window.
        return Err(match data {
            Dataset::Rows { rows, .. } if rows.len() < b => Error::Invalid(format!(
                "the held-out split has {} examples, fewer than one evaluation batch of {b}; lower `batch_size` or hold out more examples",
                rows.len()
            )),
            Dataset::Rows { .. } => Error::Invalid(format!(
                "at `seq_len` {t} tokens the held-out examples' answers are cut off, so no token counts towards the loss; raise `seq_len` (up to the model's context) or use shorter examples"
            )),
            _ => Error::Invalid("the held-out split is too short for one evaluation batch; lower `seq_len` or add examples".into()),
        });
    }
    Ok(batches)
}

/// Each row's summed log-probability of its counted targets under `model` (no autodiff
/// needed), in row order: what a preference objective's reference contributes. Batches of
/// `b` pairs (rows) of `t` tokens.
pub fn reference_logps(model: &Gpt, data: &Dataset, b: usize, t: usize) -> Result<Vec<f32>> {
    read_rows(row_scores(model, data, b, t).into_iter().map(|x| x.into_data()).collect())
}

/// [`reference_logps`] for the browser (asynchronous read-back).
pub async fn reference_logps_async(model: &Gpt, data: &Dataset, b: usize, t: usize) -> Result<Vec<f32>> {
    let mut read = Vec::new();
    for x in row_scores(model, data, b, t) {
        read.push(x.into_data_async().await.map_err(|e| Error::Invalid(format!("reading log-probabilities back failed: {e:?}")))?);
    }
    read_rows(read)
}

/// Each sequential batch's per-row log-probabilities `[B]`, still on the device.
fn row_scores(model: &Gpt, data: &Dataset, b: usize, t: usize) -> Vec<Tensor<1>> {
    let device = model.wte.weight.val().device();
    data.sequential(b, t, usize::MAX).iter().map(|batch| sequence_logps(model, batch, &device, None, false).completion).collect()
}

fn read_rows(data: Vec<TensorData>) -> Result<Vec<f32>> {
    Ok(data.into_iter().flat_map(|d| d.convert::<f32>().try_to_vec::<f32>().expect("f32 data")).collect())
}

/// TRL's metrics of `model` on up to `max_batches` batches of `data`'s pairs (whose
/// reference log-probabilities must be set when the objective has a reference), with the
/// mean loss.
pub fn preference_eval(objective: &Objective, model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<PreferenceMetrics> {
    let batches = pair_batches(objective, data, b, t, max_batches)?;
    let device = model.wte.weight.val().device();
    let mut rows = Vec::new();
    for batch in &batches {
        let read = row_outputs(objective, model, batch, &device).map(|x| x.map(|x| x.into_data()));
        rows.extend(scores_of(batch, read));
    }
    Ok(PreferenceMetrics::of(objective, &rows))
}

/// [`preference_eval`] for the browser (asynchronous read-back).
pub async fn preference_eval_async(objective: &Objective, model: &Gpt, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<PreferenceMetrics> {
    let batches = pair_batches(objective, data, b, t, max_batches)?;
    let device = model.wte.weight.val().device();
    let mut rows = Vec::new();
    for batch in &batches {
        let mut read = [None, None, None];
        for (slot, x) in read.iter_mut().zip(row_outputs(objective, model, batch, &device)) {
            if let Some(x) = x {
                *slot = Some(x.into_data_async().await.map_err(|e| Error::Invalid(format!("reading log-probabilities back failed: {e:?}")))?);
            }
        }
        rows.extend(scores_of(batch, read));
    }
    Ok(PreferenceMetrics::of(objective, &rows))
}

/// What an evaluation reads of each row, still on the device: the completion's summed
/// log-probability (a reward model's score instead), the summed mean logits and the
/// whole-row log-probability (when computed).
fn row_outputs(objective: &Objective, model: &Gpt, batch: &Batch, device: &Device) -> [Option<Tensor<1>>; 3] {
    if objective.is_reward_model() {
        let (inputs, _, _) = batch.to_device(device);
        return [Some(model.rewards(inputs, &super::objective::reward_positions(batch, model.config().pad_token_id()))), None, None];
    }
    let logps = sequence_logps(model, batch, device, None, true);
    [Some(logps.completion), logps.mean_logits, logps.whole]
}

fn pair_batches(objective: &Objective, data: &Dataset, b: usize, t: usize, max_batches: usize) -> Result<Vec<Batch>> {
    if !matches!(data, Dataset::Pairs { .. }) {
        return Err(Error::Invalid("preference metrics need preference pairs (prompt, chosen, rejected)".into()));
    }
    if objective.needs_reference() && data.refs().is_empty() {
        return Err(Error::Invalid("the pairs have no reference log-probabilities yet; score them with a reference model first".into()));
    }
    Ok(data.sequential(b, t, max_batches.max(1)))
}

/// Each row's [`RowScore`] from the read-back completion log-probabilities, summed mean
/// logits and whole-row log-probabilities (the last two when computed).
fn scores_of(batch: &Batch, [logps, logits, whole]: [Option<TensorData>; 3]) -> Vec<RowScore> {
    let vec = |d: Option<TensorData>| d.map(|d| d.convert::<f32>().try_to_vec::<f32>().expect("f32 data"));
    let (l, g, w) = (vec(logps).unwrap_or_else(|| vec![0.0; batch.b]), vec(logits), vec(whole));
    scores_from(batch, &l, g.as_deref(), w.as_deref())
}

/// Each row's [`RowScore`] from its completion log-probability, and when computed its
/// summed mean logit and whole-row log-probability (0 otherwise), with the counts and the
/// reference log-probability (0 without one) the batch holds.
fn scores_from(batch: &Batch, logps: &[f32], logits: Option<&[f32]>, whole: Option<&[f32]>) -> Vec<RowScore> {
    let sums = |mask: &[f32]| -> Vec<f32> { mask.chunks(batch.t.max(1)).map(|m| m.iter().sum()).collect() };
    let (counts, whole_counts) = (sums(&batch.weights), sums(&batch.sequence_mask()));
    let at = |v: Option<&[f32]>, i: usize| v.and_then(|v| v.get(i)).copied().unwrap_or(0.0) as f64;
    (0..batch.b)
        .map(|i| RowScore {
            logp: logps[i] as f64,
            count: counts[i] as f64,
            logit_sum: at(logits, i),
            reference: at(Some(&batch.refs), i),
            whole: at(whole, i),
            whole_count: at(Some(&whole_counts), i),
            // KTO: the example's own row (even rows) carries its label.
            label: (i % 2 == 0).then(|| batch.labels.get(i / 2).copied()).flatten(),
        })
        .collect()
}

/// A read-back batch loss paired with its weight; packed so both paths share `mean_of`.
fn weighted(d: TensorData, w: f32) -> (f32, f32) {
    (d.convert::<f32>().try_to_vec::<f32>().expect("f32 data")[0], w)
}

fn mean_of(losses: Vec<(f32, f32)>) -> Result<f32> {
    let (total, count) = losses.iter().fold((0.0f64, 0.0f64), |(t, c), &(l, w)| (t + l as f64 * w as f64, c + w as f64));
    Ok((total / count) as f32)
}

/// Mixes a seed and a counter into a new seed (SplitMix64's finaliser).
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
