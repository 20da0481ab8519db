//! The one run loop. `tinytune pretrain`/`finetune`, `tinytune compare` and the browser
//! worker all hand a [`Trainer`] to a [`Run`] and drive it; none keeps a loop of its own.
//!
//! The run owns what every caller needs alike: the step loop, the evaluation schedule
//! (`eval_every`, and always after the last step), pause, stop and cancel, the per-method
//! extras (the method summary and trainable count when the run starts, a soft prompt's
//! nearest real tokens when it ends), and one stream of [`TrainEvent`]s with the training
//! time on every event. The caller is a [`RunHost`]: it answers "go on?" before each step
//! and does what it does with the events (the CLI draws a progress bar, appends
//! `metrics.jsonl` and saves checkpoints; the worker posts them to the page unchanged).
//!
//! Core has no threads and no clock of its own to sleep on, so a paused run asks its host
//! to wait: the browser sleeps on its event loop, which is when resume arrives.

use burn::module::Module;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::methods::{Method, MethodSummary, prompt};
use crate::model::params::trainable_count;
use crate::optim::OptimKind;
use crate::tokenizer::TextTokenizer;

use super::trainer::{Evaluation, StepEvent, Trainer};

/// What a host tells the run before each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Take the next step.
    Run,
    /// Take no step yet: the run calls the host's `wait` and asks again.
    Pause,
    /// End here, with every finished step kept (Ctrl-C, `--stop-after`): the host saves.
    Stop,
    /// Abandon the run (the page's cancel button).
    Cancel,
}

/// How a driven run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every step of the run was taken.
    Finished,
    /// The host said [`Control::Stop`] before the end.
    Stopped,
    /// The host said [`Control::Cancel`].
    Cancelled,
}

/// What a run is about to do, sent once when it starts (or resumes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartEvent {
    /// Steps already taken (0, or where a resumed run continues).
    pub step: usize,
    /// Steps the run takes in all.
    pub steps: usize,
    pub elapsed_s: f64,
    /// The method's name (`Method::name`).
    pub method: String,
    /// The method in numbers, e.g. "lora: 36864 of 875264 parameters train (4.21%)";
    /// empty for full fine-tuning, where everything trains.
    pub summary: String,
    /// The optimizer and the memory techniques in use, in words.
    pub technique: String,
    /// Parameters the optimizer updates, counted on the adapted model.
    pub trainable: usize,
    /// Parameters of the unadapted model.
    pub total: usize,
    /// What the run trains on, e.g. "story-qa (4000 train / 200 held-out)".
    pub data: String,
    pub batch_size: usize,
    pub seq_len: usize,
}

/// A held-out evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalEvent {
    pub step: usize,
    pub eval_loss: f32,
    /// Seconds of training when the evaluation finished (runs before this field existed
    /// read as 0).
    #[serde(default)]
    pub elapsed_s: f64,
    /// A preference objective's metrics under TRL's names (`rewards/chosen`,
    /// `rewards/accuracies`, …); empty otherwise.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metrics: std::collections::BTreeMap<String, f64>,
}

/// A soft prompt's learned virtual tokens, each as the real tokens nearest it (cosine
/// similarity with the token embeddings), closest first; sent when a prompt-tuning run ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NearestEvent {
    pub step: usize,
    pub elapsed_s: f64,
    pub tokens: Vec<Vec<(String, f32)>>,
}

/// The event stream every caller consumes (one JSON object per line in `metrics.jsonl`,
/// tagged by `"event"`; the worker posts the same values to the page).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum TrainEvent {
    Start(StartEvent),
    Step(StepEvent),
    Eval(EvalEvent),
    Nearest(NearestEvent),
}

/// The caller's side of a run: its control and what it does with each event.
#[allow(async_fn_in_trait)] // hosts are single-threaded (a CLI loop, a browser worker)
pub trait RunHost {
    /// The host's error; core errors (a non-finite loss, a failed read-back) convert into it.
    type Error: From<Error>;

    /// Asked before every step.
    fn control(&mut self) -> Control {
        Control::Run
    }

    /// Every event, in order. An error ends the run with that error.
    fn event(&mut self, trainer: &Trainer, event: &TrainEvent) -> Result<(), Self::Error>;

    /// After each step and its evaluation (if one was due), with the latest held-out loss:
    /// where the CLI saves its checkpoints.
    fn after_step(&mut self, trainer: &Trainer, last_eval: Option<f32>) -> Result<(), Self::Error> {
        let _ = (trainer, last_eval);
        Ok(())
    }

    /// While paused (blocking driver): wait a little, then `control` is asked again.
    fn wait(&mut self) {}

    /// While paused (asynchronous driver): the browser sleeps on its event loop here.
    async fn wait_async(&mut self) {}

    /// After every step (asynchronous driver): the browser yields here so messages and its
    /// other requests get in between steps.
    async fn yield_now(&mut self) {}
}

/// A trainer being driven to the end of its run.
pub struct Run {
    pub trainer: Trainer,
    tokenizer: TextTokenizer,
    last_eval: Option<f32>,
}

impl Run {
    /// `tokenizer` names a soft prompt's nearest tokens at the end.
    pub fn new(trainer: Trainer, tokenizer: TextTokenizer) -> Self {
        Self { trainer, tokenizer, last_eval: None }
    }

    /// The latest held-out loss of this process (None before the first evaluation).
    pub fn last_eval(&self) -> Option<f32> {
        self.last_eval
    }

    /// The run's start event: its method, trainable count, techniques and data.
    pub fn start_event(&self) -> StartEvent {
        let t = &self.trainer;
        let c = &t.config;
        let summary = match c.method {
            Method::Full => String::new(),
            _ => MethodSummary::of(&c.method, &t.model).line(),
        };
        let data = match &c.data_file {
            Some(file) => format!("{file} ({} train / {} held-out rows)", t.train.len(), t.eval.len()),
            None => format!("{} ({} train / {} held-out)", c.data, c.train_examples, c.eval_examples),
        };
        StartEvent {
            step: t.step,
            steps: c.steps,
            elapsed_s: t.elapsed(),
            method: c.method.name().into(),
            summary,
            technique: technique(t),
            trainable: trainable_count(&t.model),
            total: t.model.config().num_params(),
            data,
            batch_size: c.batch_size,
            seq_len: c.seq_len,
        }
    }

    /// Whether the held-out loss is measured after `step`: every `eval_every` steps and
    /// after the last.
    pub fn eval_due(&self, step: usize) -> bool {
        let every = self.trainer.config.eval_every;
        (every > 0 && step.is_multiple_of(every)) || step == self.trainer.config.steps
    }

    /// Drives the run to its end (or until the host stops it), reading results back
    /// synchronously: native code.
    pub fn drive<H: RunHost>(&mut self, host: &mut H) -> Result<Outcome, H::Error> {
        host.event(&self.trainer, &TrainEvent::Start(self.start_event()))?;
        while self.trainer.step < self.trainer.config.steps {
            match host.control() {
                Control::Run => {}
                Control::Pause => {
                    host.wait();
                    continue;
                }
                Control::Stop => return Ok(Outcome::Stopped),
                Control::Cancel => return Ok(Outcome::Cancelled),
            }
            let step = self.trainer.step()?;
            let eval = match self.eval_due(step.step) {
                true => Some(self.trainer.evaluate()?),
                false => None,
            };
            self.after_step(host, step, eval)?;
        }
        if let Some(sims) = prompt::token_similarity(&self.trainer.model.valid()) {
            host.event(&self.trainer, &self.nearest(sims.into_data())?)?;
        }
        Ok(Outcome::Finished)
    }

    /// [`Run::drive`] for the browser, where WebGPU reads results back asynchronously and
    /// the worker must yield between steps.
    pub async fn drive_async<H: RunHost>(&mut self, host: &mut H) -> Result<Outcome, H::Error> {
        host.event(&self.trainer, &TrainEvent::Start(self.start_event()))?;
        while self.trainer.step < self.trainer.config.steps {
            match host.control() {
                Control::Run => {}
                Control::Pause => {
                    host.wait_async().await;
                    continue;
                }
                Control::Stop => return Ok(Outcome::Stopped),
                Control::Cancel => return Ok(Outcome::Cancelled),
            }
            let step = self.trainer.step_async().await?;
            let eval = match self.eval_due(step.step) {
                true => Some(self.trainer.evaluate_async().await?),
                false => None,
            };
            self.after_step(host, step, eval)?;
            host.yield_now().await;
        }
        if let Some(sims) = prompt::token_similarity(&self.trainer.model.valid()) {
            let data = sims.into_data_async().await.map_err(|e| Error::Invalid(format!("reading the soft prompt back failed: {e:?}")))?;
            host.event(&self.trainer, &self.nearest(data)?)?;
        }
        Ok(Outcome::Finished)
    }

    /// Sends a finished step, its evaluation, and lets the host save.
    fn after_step<H: RunHost>(&mut self, host: &mut H, step: StepEvent, eval: Option<Evaluation>) -> Result<(), H::Error> {
        let n = step.step;
        host.event(&self.trainer, &TrainEvent::Step(step))?;
        if let Some(Evaluation { loss, metrics }) = eval {
            self.last_eval = Some(loss);
            host.event(&self.trainer, &TrainEvent::Eval(EvalEvent { step: n, eval_loss: loss, elapsed_s: self.trainer.elapsed(), metrics }))?;
        }
        host.after_step(&self.trainer, self.last_eval)
    }

    /// The nearest-token event from the soft prompt's similarity rows, read back.
    fn nearest(&self, sims: TensorData) -> Result<TrainEvent, Error> {
        let sims = sims.convert::<f32>().try_to_vec::<f32>().map_err(|e| Error::Invalid(format!("reading the soft prompt back failed: {e:?}")))?;
        let tokens = prompt::nearest(&sims, self.trainer.model.config().vocab_size, 3)
            .into_iter()
            .map(|row| row.into_iter().map(|(id, c)| (self.tokenizer.decode(&[id]), c)).collect())
            .collect();
        Ok(TrainEvent::Nearest(NearestEvent { step: self.trainer.step, elapsed_s: self.trainer.elapsed(), tokens }))
    }
}

/// The optimizer and memory techniques of a run, in words, e.g. "optimizer adamw, 4
/// micro-batches of 4 rows per update, gradient checkpointing".
fn technique(t: &Trainer) -> String {
    let c = &t.config;
    let o = &c.optimizer;
    let mut s = match &c.objective {
        super::Objective::Dpo { beta, label_smoothing, .. } => {
            let smoothing = if *label_smoothing > 0.0 { format!(", label smoothing {label_smoothing}") } else { String::new() };
            format!("objective {} (beta {beta}{smoothing}), optimizer {}", c.objective.name(), o.kind)
        }
        super::Objective::Orpo { beta } => format!("objective orpo (beta {beta}, no reference model), optimizer {}", o.kind),
        super::Objective::Reward { center_rewards_coefficient } => format!(
            "objective reward (a Bradley–Terry reward model{}), optimizer {}",
            center_rewards_coefficient.map(|c| format!(", rewards centred with coefficient {c}")).unwrap_or_default(),
            o.kind
        ),
        super::Objective::Kto { beta, desirable_weight, undesirable_weight } => {
            format!("objective kto (beta {beta}, desirable weight {desirable_weight}, undesirable weight {undesirable_weight}), optimizer {}", o.kind)
        }
        super::Objective::Grpo { group_size, beta, epsilon, temperature, loss_type, .. } => format!(
            "objective grpo ({} prompts × {group_size} completions a step at temperature {temperature}, loss {}, epsilon {epsilon}, beta {beta}{}), optimizer {}",
            c.batch_size / group_size.max(&1),
            loss_type.name(),
            if *beta > 0.0 { "" } else { ": no reference model" },
            o.kind
        ),
        super::Objective::Distill { divergence, beta, temperature, alpha, lmbda, seq_kd } => format!(
            "objective distill ({}{}, temperature {temperature}, alpha {alpha}{}{}{}), optimizer {}",
            divergence.name(),
            if *divergence == super::Divergence::Jsd { format!(" beta {beta}") } else { String::new() },
            if *lmbda > 0.0 { format!(", on the student's own samples with probability {lmbda}") } else { String::new() },
            if *seq_kd { ", on the teacher's samples" } else { "" },
            t.config.teacher.as_deref().map(|p| format!(", teacher {p}")).unwrap_or_default(),
            o.kind
        ),
        super::Objective::NextToken => format!("optimizer {}", o.kind),
    };
    if o.kind == OptimKind::Sgd && o.momentum > 0.0 {
        s += &format!(" (momentum {})", o.momentum);
    }
    if t.optim.page {
        s += ", state paged to host memory between steps";
    } else if o.kind.paged() {
        s += " (on the CPU state already lives in host memory: nothing to page)";
    }
    if c.accumulate > 1 {
        s += &format!(", {} micro-batches of {} rows per update", c.accumulate, c.batch_size / c.accumulate);
    }
    if c.checkpointing {
        s += ", gradient checkpointing";
    }
    s
}
