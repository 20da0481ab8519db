//! What a run minimises, as a value of its configuration (`TrainConfig::objective`).
//!
//! The trainer never computes a loss itself: every path that needs one — the backward
//! pass (with or without accumulation and mixed precision), MeZO's two forward passes and
//! the held-out evaluation — asks the run's `Objective`. A new kind of training (a
//! preference pair scored against a frozen reference, a teacher's logits) is a new variant
//! here and a new batch layout, not a new loop: TRL's trainers differ in the same way, by
//! `compute_loss` and by what a batch holds.
//!
//! # Adding an objective
//! 1. Add the variant (with its settings) to [`Objective`]; serde names it in `train.json`.
//! 2. Give [`Objective::loss`] its arm. Whatever the objective needs besides the model and
//!    the batch (a reference model, cached teacher logits) is held by the trainer beside the
//!    model, not serialised here.
//! 3. Add a case to `core/tests/training.rs`'s objective checks (a loss against hand-computed
//!    values on a tiny batch).

use std::collections::BTreeMap;

use burn::tensor::activation::{log_sigmoid, relu, sigmoid};
use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Gpt;

use super::batch::Batch;

/// The loss a run minimises.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Objective {
    /// Next-token cross-entropy, averaged over the counted target tokens (pre-training, and
    /// supervised fine-tuning with the prompt weighted by `TrainConfig::prompt_loss_weight`,
    /// which is applied when the rows are built).
    #[default]
    NextToken,
    /// Direct preference optimisation and its variants (DPO: Rafailov et al., 2023; IPO:
    /// Azar et al., 2023; robust DPO: Chowdhury et al., 2024), as TRL 1.16's `DPOTrainer`
    /// defines them (`trl/trainer/dpo_trainer.py`, `_compute_loss`). On a pair, with `π` the
    /// policy, `ref` the reference and `log p` a completion's summed log-probability,
    /// `d = (log π(chosen) − log ref(chosen)) − (log π(rejected) − log ref(rejected))`; the
    /// loss is `−log σ(β·d)` (sigmoid), `(d' − 1/(2β))²` with `d'` built from per-token
    /// averages (ipo), `max(0, 1 − β·d)` (hinge), or
    /// `(−(1−ε)·log σ(β·d) + ε·log σ(−β·d)) / (1 − 2ε)` (robust, ε the chance a label is
    /// flipped), averaged over pairs. Batches are pairs, chosen row then rejected row, each
    /// with the reference's log-probability beside it (`Batch::refs`).
    Dpo {
        #[serde(default)]
        loss_type: DpoLoss,
        /// TRL's `beta` (0.1 by default there too).
        #[serde(default = "default_beta")]
        beta: f64,
        /// TRL's `label_smoothing` ε: the chance a pair's label is flipped (robust only).
        #[serde(default)]
        label_smoothing: f64,
    },
    /// Odds-ratio preference optimisation (ORPO: Hong et al., 2024), as TRL 1.16's
    /// `ORPOTrainer` defines it (`trl/experimental/orpo/orpo_trainer.py`,
    /// `odds_ratio_loss` and `concatenated_forward`): no reference model. With `p` a
    /// completion's per-token average log-probability, the log-odds of chosen over rejected
    /// is `o = (p_c − p_r) − (log(1 − e^p_c) − log(1 − e^p_r))`, and the loss is the chosen
    /// rows' mean next-token NLL over prompt and completion alike, minus `β·mean log σ(o)`.
    /// The rewards it reports are `β·p`.
    Orpo {
        /// TRL's `beta`, the paper's λ (0.1 by default in both).
        #[serde(default = "default_beta")]
        beta: f64,
    },
    /// Kahneman–Tversky optimisation (KTO: Ethayarajh et al., 2024) on unpaired feedback,
    /// as TRL 1.16's `KTOTrainer` defines it (`trl/trainer/kto_trainer.py`,
    /// `_compute_loss`, `loss_type="kto"`): each example is one completion labelled
    /// desirable or undesirable. With `r` its log-ratio `log π(y|x) − log ref(y|x)` and `z`
    /// the batch's KL estimate — the mean log-ratio of *mismatched* pairs (each prompt with
    /// another example's completion), detached and clamped at 0 — a desirable example's
    /// loss is `1 − σ(β·(r − z))` and an undesirable one's `1 − σ(β·(z − r))`, weighted by
    /// `desirable_weight` or `undesirable_weight`; the loss is their mean. Batches hold each
    /// example's row, then its mismatched row (`Dataset::from_unpaired`); the rewards it
    /// reports are `β·r`.
    Kto {
        /// TRL's `beta` (0.1 by default there too).
        #[serde(default = "default_beta")]
        beta: f64,
        /// TRL's `desirable_weight` λ_D (1.0).
        #[serde(default = "one")]
        desirable_weight: f64,
        /// TRL's `undesirable_weight` λ_U (1.0).
        #[serde(default = "one")]
        undesirable_weight: f64,
    },
    /// A reward model trained on preference pairs with the Bradley–Terry loss, as TRL 1.16's
    /// `RewardTrainer` defines it (`trl/trainer/reward_trainer.py`, `compute_loss`): the
    /// model is a sequence classifier with one output (`Gpt::score`), read at each row's
    /// rightmost non-padding token; with `r_c` and `r_r` the scores of a pair's chosen and
    /// rejected rows, the loss is `−log σ(r_c − r_r)`, plus, when set,
    /// `center_rewards_coefficient · (r_c + r_r)²` (Eisenstein et al., 2023), averaged
    /// over pairs. Batches are DPO's (chosen row, rejected row); no reference model.
    Reward {
        /// TRL's `center_rewards_coefficient` (None: off, TRL's default).
        #[serde(default)]
        center_rewards_coefficient: Option<f64>,
    },
    /// Group relative policy optimisation on a task's verifiable reward, as TRL 1.16's
    /// `GRPOTrainer` defines it (see [`super::grpo`]): batches are sampled groups of
    /// completions with their advantages; the loss is the clipped surrogate on the
    /// completion tokens plus `β` times the KL estimate to the reference, aggregated by
    /// `loss_type`. `TrainConfig::batch_size` counts completions, as TRL's does: each step
    /// samples `batch_size / group_size` prompts.
    Grpo {
        /// TRL's `num_generations` G (8 by default there).
        #[serde(default = "default_group")]
        group_size: usize,
        /// The KL coefficient (TRL's default 0.0: no reference model at all).
        #[serde(default)]
        beta: f64,
        /// The clipping range ε (TRL's default 0.2).
        #[serde(default = "default_epsilon")]
        epsilon: f64,
        /// Sampling temperature of the rollouts (TRL's default 1.0).
        #[serde(default = "one")]
        temperature: f64,
        /// Longest completion sampled, in tokens (TRL's `max_completion_length`; 512 there,
        /// here the tasks' answers are a line of at most a few dozen tokens).
        #[serde(default = "default_completion")]
        max_completion_len: usize,
        #[serde(default)]
        loss_type: super::grpo::GrpoLoss,
    },
    /// Knowledge distillation from a frozen teacher (see [`super::distill`]):
    /// `α · T² · D(teacher_T, student_T) + (1 − α) · CE`, averaged over the counted target
    /// positions, with `D` TRL's GKD divergences. The teacher is held by the trainer
    /// (`Trainer::set_teacher`); its path is `TrainConfig::teacher`. Batches are ordinary
    /// next-token rows or windows. Held-out, a distillation run reports the student's own
    /// next-token loss, which is comparable with the teacher's and any other run's.
    Distill {
        #[serde(default)]
        divergence: super::distill::Divergence,
        /// GKD's β, the generalised JSD's weight (jsd only; TRL's default 0.5).
        #[serde(default = "half")]
        beta: f64,
        /// The softmax temperature T of both distributions.
        #[serde(default = "two")]
        temperature: f64,
        /// The weight α of the soft loss (1 − α for the next-token loss).
        #[serde(default = "half")]
        alpha: f64,
        /// GKD's `lmbda` (Agarwal et al., 2024): the chance that a step's completions are
        /// the student's own samples (on-policy distillation) rather than the data's. 0
        /// (the default) is ordinary, supervised distillation.
        #[serde(default)]
        lmbda: f64,
        /// GKD's `seq_kd`: train on completions the teacher samples from each prompt
        /// (sequence-level distillation, Kim & Rush, 2016) instead of the data's.
        #[serde(default)]
        seq_kd: bool,
    },
}

fn half() -> f64 {
    0.5
}

fn two() -> f64 {
    2.0
}

fn default_group() -> usize {
    8
}

fn default_epsilon() -> f64 {
    0.2
}

fn one() -> f64 {
    1.0
}

fn default_completion() -> usize {
    32
}

fn default_beta() -> f64 {
    0.1
}

/// TRL's `loss_type` for DPO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    #[default]
    Sigmoid,
    Ipo,
    Hinge,
    Robust,
}

impl DpoLoss {
    pub const ALL: [DpoLoss; 4] = [DpoLoss::Sigmoid, DpoLoss::Ipo, DpoLoss::Hinge, DpoLoss::Robust];

    pub fn name(&self) -> &'static str {
        match self {
            DpoLoss::Sigmoid => "sigmoid",
            DpoLoss::Ipo => "ipo",
            DpoLoss::Hinge => "hinge",
            DpoLoss::Robust => "robust",
        }
    }

    /// One pair's loss from its log-ratio difference `d` (host arithmetic, in f64: the
    /// evaluation's figures; `Objective::loss` is the same formula on the device).
    pub fn pair_loss(&self, d: f64, beta: f64, label_smoothing: f64) -> f64 {
        match self {
            DpoLoss::Sigmoid => -log_sigmoid_f64(beta * d),
            DpoLoss::Ipo => (d - 1.0 / (2.0 * beta)).powi(2),
            DpoLoss::Hinge => (1.0 - beta * d).max(0.0),
            DpoLoss::Robust => {
                let e = label_smoothing;
                (-(1.0 - e) * log_sigmoid_f64(beta * d) + e * log_sigmoid_f64(-beta * d)) / (1.0 - 2.0 * e)
            }
        }
    }
}

impl std::str::FromStr for DpoLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        DpoLoss::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| format!("unknown DPO loss '{s}'; choose sigmoid, ipo, hinge or robust"))
    }
}

impl Objective {
    /// DPO with TRL's defaults for `loss_type`.
    pub fn dpo(loss_type: DpoLoss, beta: f64) -> Self {
        Objective::Dpo { loss_type, beta, label_smoothing: 0.0 }
    }

    /// The objective a command line names: `next-token`, `dpo` (TRL's sigmoid; `sigmoid`
    /// also reads), `ipo`, `hinge` or `robust` with their β and label smoothing, `orpo` or
    /// `kto` (both weights 1) with its β, `reward` (a Bradley–Terry reward model), or `grpo`.
    pub fn from_name(name: &str, beta: f64, label_smoothing: f64) -> std::result::Result<Self, String> {
        let loss_type = match name {
            "next-token" => return Ok(Objective::NextToken),
            "orpo" => return Ok(Objective::Orpo { beta }),
            "kto" => return Ok(Objective::Kto { beta, desirable_weight: 1.0, undesirable_weight: 1.0 }),
            "reward" => return Ok(Objective::Reward { center_rewards_coefficient: None }),
            "grpo" => return Ok(Objective::grpo(default_group(), beta)),
            "distill" => return Err("distillation needs a teacher model: run `tinytune distill --teacher DIR --student DIR`".into()),
            "dpo" | "sigmoid" => DpoLoss::Sigmoid,
            other => other
                .parse::<DpoLoss>()
                .map_err(|_| format!("unknown objective '{other}'; choose next-token, dpo, ipo, hinge, robust, orpo, kto, reward or grpo"))?,
        };
        Ok(Objective::Dpo { loss_type, beta, label_smoothing })
    }

    /// GRPO with TRL's defaults but for the group size and β.
    pub fn grpo(group_size: usize, beta: f64) -> Self {
        Objective::Grpo {
            group_size,
            beta,
            epsilon: default_epsilon(),
            temperature: 1.0,
            max_completion_len: default_completion(),
            loss_type: Default::default(),
        }
    }

    /// Whether the run learns from its own samples (GRPO): each step starts with a rollout.
    pub fn is_rl(&self) -> bool {
        matches!(self, Objective::Grpo { .. })
    }

    /// TRL's default β for an objective named on a command line without one: 0.0 for GRPO
    /// (no reference model), 0.1 for the preference losses.
    pub fn default_beta(name: &str) -> f64 {
        if name == "grpo" { 0.0 } else { default_beta() }
    }

    /// Whether batches are preference pairs (chosen row, rejected row), or KTO's examples
    /// in the same layout (the example's row, its mismatched row).
    pub fn is_preference(&self) -> bool {
        matches!(self, Objective::Dpo { .. } | Objective::Orpo { .. } | Objective::Kto { .. } | Objective::Reward { .. })
    }

    /// Whether the model trained is a reward model (a score head, no LM head).
    pub fn is_reward_model(&self) -> bool {
        matches!(self, Objective::Reward { .. })
    }

    /// Whether the rows are scored against a reference model (DPO and its variants, KTO;
    /// ORPO has none).
    pub fn needs_reference(&self) -> bool {
        matches!(self, Objective::Dpo { .. } | Objective::Kto { .. })
    }

    /// Whether the data are unpaired examples with labels (KTO) rather than pairs.
    pub fn is_unpaired(&self) -> bool {
        matches!(self, Objective::Kto { .. })
    }

    /// The name the CLI knows it by: `next-token`, or the DPO loss type (`dpo` for sigmoid,
    /// `ipo`, `hinge`, `robust`).
    pub fn name(&self) -> &'static str {
        match self {
            Objective::NextToken => "next-token",
            Objective::Dpo { loss_type: DpoLoss::Sigmoid, .. } => "dpo",
            Objective::Dpo { loss_type, .. } => loss_type.name(),
            Objective::Orpo { .. } => "orpo",
            Objective::Kto { .. } => "kto",
            Objective::Reward { .. } => "reward",
            Objective::Grpo { .. } => "grpo",
            Objective::Distill { .. } => "distill",
        }
    }

    /// Checks the settings, naming the field.
    pub fn validate(&self, origin: impl Into<crate::error::Origin>) -> Result<()> {
        let origin = origin.into();
        if let Objective::Orpo { beta } = self
            && !(*beta > 0.0 && beta.is_finite())
        {
            return Err(Error::config(origin, "objective.beta", format!("{beta} is not a positive number; TRL's default is 0.1")));
        }
        if let Objective::Kto { beta, desirable_weight, undesirable_weight } = self {
            if !(*beta > 0.0 && beta.is_finite()) {
                return Err(Error::config(origin, "objective.beta", format!("{beta} is not a positive number; TRL's default is 0.1")));
            }
            for (field, w) in [("objective.desirable_weight", desirable_weight), ("objective.undesirable_weight", undesirable_weight)] {
                if !(*w > 0.0 && w.is_finite()) {
                    return Err(Error::config(origin.clone(), field, format!("{w} is not a positive weight; TRL's default is 1.0")));
                }
            }
        }
        if let Objective::Reward { center_rewards_coefficient: Some(c) } = self
            && !(*c >= 0.0 && c.is_finite())
        {
            return Err(Error::config(
                origin,
                "objective.center_rewards_coefficient",
                format!("{c} is not a coefficient ≥ 0; TRL's default is off (None), the paper's 0.01"),
            ));
        }
        if let Objective::Grpo { group_size, beta, epsilon, temperature, max_completion_len, .. } = self {
            if *group_size < 2 {
                return Err(Error::config(
                    origin,
                    "objective.group_size",
                    format!("{group_size} completions a prompt give no group to compare; use at least 2 (TRL's default is 8)"),
                ));
            }
            if !(*beta >= 0.0 && beta.is_finite()) {
                return Err(Error::config(origin, "objective.beta", format!("{beta} is not a KL coefficient ≥ 0; TRL's default is 0.0")));
            }
            if !(*epsilon > 0.0 && *epsilon < 1.0) {
                return Err(Error::config(origin, "objective.epsilon", format!("{epsilon} is not a clipping range in (0, 1); TRL's default is 0.2")));
            }
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::config(origin, "objective.temperature", format!("{temperature} must be positive: GRPO samples its completions")));
            }
            if *max_completion_len == 0 {
                return Err(Error::config(origin, "objective.max_completion_len", "must be at least 1 token"));
            }
        }
        if let Objective::Distill { divergence, beta, temperature, alpha, lmbda, .. } = self {
            if !(0.0..=1.0).contains(lmbda) {
                return Err(Error::config(origin, "objective.lmbda", format!("{lmbda} is not a probability in [0, 1] (GKD's default is 0.5)")));
            }
            if !(*temperature > 0.0 && temperature.is_finite()) {
                return Err(Error::config(origin, "objective.temperature", format!("{temperature} is not a positive temperature; Hinton et al. used 1 to 20")));
            }
            if !(0.0..=1.0).contains(alpha) {
                return Err(Error::config(origin, "objective.alpha", format!("{alpha} is not a weight in [0, 1] (1: the teacher's soft targets only)")));
            }
            if *divergence == super::distill::Divergence::Jsd && !(*beta > 0.0 && *beta < 1.0) {
                return Err(Error::config(
                    origin,
                    "objective.beta",
                    format!("{beta} is not a JSD weight in (0, 1); for 0 or 1 use the forward-kl or reverse-kl divergence, which TRL's GKD uses there"),
                ));
            }
        }
        if let Objective::Dpo { beta, label_smoothing, loss_type } = self {
            if !(*beta > 0.0 && beta.is_finite()) {
                return Err(Error::config(origin, "objective.beta", format!("{beta} is not a positive number; TRL's default is 0.1")));
            }
            if !(0.0..0.5).contains(label_smoothing) {
                return Err(Error::config(origin, "objective.label_smoothing", format!("{label_smoothing} is not a flip probability in [0, 0.5)")));
            }
            if *label_smoothing > 0.0 && *loss_type != DpoLoss::Robust {
                return Err(Error::config(
                    origin,
                    "objective.label_smoothing",
                    format!("applies to the robust loss only (as in TRL 1.16), not {}; use --objective robust", loss_type.name()),
                ));
            }
        }
        Ok(())
    }

    /// The loss of `model` on `batch`, a `[1]` tensor on `device` (where the batch goes: the
    /// trainer's device, which may carry gradient checkpointing), with the autodiff graph
    /// when the model has one.
    ///
    /// `compute` is the reduced type the model computes in under mixed precision (None: the
    /// model's own FP32); the loss itself is always taken in FP32, from upcast logits.
    ///
    /// # Shapes
    /// batch `[B, T]` tokens -> `[1]`
    pub fn loss(&self, model: &Gpt, batch: &Batch, device: &Device, compute: Option<DType>) -> Tensor<1> {
        self.loss_and_scores(model, batch, device, compute, None).0
    }

    /// [`Objective::loss`], and for a preference objective each row's summed
    /// log-probability `[B]`, detached: TRL's training metrics come from the same forward
    /// pass as the loss. Distillation's scores are its two parts, `[soft, hard]`.
    ///
    /// `teacher` is a distillation run's frozen teacher (None for every other objective;
    /// distillation without one is the student's next-token loss).
    pub fn loss_and_scores(
        &self,
        model: &Gpt,
        batch: &Batch,
        device: &Device,
        compute: Option<DType>,
        teacher: Option<&Gpt>,
    ) -> (Tensor<1>, Option<Tensor<1>>) {
        match self {
            Objective::Distill { divergence, beta, temperature, alpha, .. } => {
                let (inputs, targets, weights) = batch.to_device(device);
                let teacher_logits = if !batch.teacher_logits.is_empty() {
                    // Read from a teacher cache.
                    Tensor::from_data(TensorData::new(batch.teacher_logits.clone(), [batch.b, batch.t, batch.teacher_vocab()]), device)
                } else {
                    let Some(teacher) = teacher else {
                        return Objective::NextToken.loss_and_scores(model, batch, device, compute, None);
                    };
                    // The teacher runs without autodiff on its own device; its logits enter
                    // the loss as constants.
                    super::distill::teacher_logits(teacher, &inputs)
                };
                let logits = model.forward(inputs);
                let logits = if compute.is_some() { logits.cast(DType::F32) } else { logits };
                let (loss, soft, hard) = super::distill::distill_loss(
                    logits,
                    teacher_logits.to_device(device),
                    targets,
                    weights,
                    batch.weight_sum(),
                    (*divergence, *beta, *temperature, *alpha),
                );
                // On the student's own samples there is no label: the hard term is left out
                // (learning them would reinforce whatever it sampled).
                let loss = if batch.on_policy { soft.clone().mul_scalar(alpha * temperature * temperature) } else { loss };
                (loss, Some(Tensor::cat(vec![soft.detach(), hard.detach()], 0)))
            }
            Objective::NextToken => {
                let (inputs, targets, weights) = batch.to_device(device);
                let logits = model.forward(inputs); // [B, T, V]
                let logits = if compute.is_some() { logits.cast(DType::F32) } else { logits };
                // A batch with nothing counted has loss 0, not 0/0 (`Gpt::loss` divides by at
                // least one token).
                (Gpt::loss(logits, targets, weights, batch.weight_sum()), None)
            }
            Objective::Dpo { loss_type, beta, label_smoothing } => {
                let pairs = batch.b / 2;
                let logps = sequence_logps(model, batch, device, compute, false).completion;
                let scores = logps.clone().detach();
                let mut refs = batch.refs.clone();
                let mut logps = logps;
                if *loss_type == DpoLoss::Ipo {
                    // IPO compares per-token averages (TRL divides both by the mask's sum).
                    let counts = batch.row_counts();
                    logps = logps / Tensor::<1>::from_data(TensorData::new(counts.clone(), [batch.b]), device);
                    refs.iter_mut().zip(&counts).for_each(|(r, c)| *r /= c);
                }
                let refs = Tensor::<1>::from_data(TensorData::new(refs, [batch.b]), device);
                let ratios = (logps - refs).reshape([pairs, 2]); // [P, 2]: chosen, rejected
                let d = ratios.clone().narrow(1, 0, 1) - ratios.narrow(1, 1, 1); // [P, 1]
                let d = d.reshape([pairs]);
                let losses = match loss_type {
                    DpoLoss::Sigmoid => log_sigmoid(d.mul_scalar(*beta)).neg(),
                    DpoLoss::Robust => {
                        let (x, e) = (d.mul_scalar(*beta), *label_smoothing);
                        (log_sigmoid(x.clone()).mul_scalar(-(1.0 - e)) + log_sigmoid(x.neg()).mul_scalar(e)).div_scalar(1.0 - 2.0 * e)
                    }
                    DpoLoss::Ipo => {
                        let x = d.sub_scalar(1.0 / (2.0 * beta));
                        x.clone() * x
                    }
                    DpoLoss::Hinge => relu(d.mul_scalar(-beta).add_scalar(1.0)),
                };
                (losses.mean(), Some(scores))
            }
            Objective::Orpo { beta } => {
                let (b, pairs) = (batch.b, batch.b / 2);
                let logps = sequence_logps(model, batch, device, compute, false);
                let (completion, whole) = (logps.completion, logps.whole.expect("pairs carry their lengths"));
                // Each row's score for the metrics: completion then whole-sequence
                // log-probability, row after row.
                let scores = Tensor::stack::<2>(vec![completion.clone().detach(), whole.clone().detach()], 1).reshape([2 * b]);
                let counts = Tensor::<1>::from_data(TensorData::new(batch.row_counts(), [b]), device);
                let avg = (completion / counts).reshape([pairs, 2]); // [P, 2]: chosen, rejected
                let (c, r) = (avg.clone().narrow(1, 0, 1).reshape([pairs]), avg.narrow(1, 1, 1).reshape([pairs]));
                let log_odds = (c.clone() - r.clone()) - (log1mexp(c) - log1mexp(r));
                let odds_term = log_sigmoid(log_odds).mean().mul_scalar(*beta);
                // The NLL is a mean over every chosen row's own tokens, prompt included.
                let lens: Vec<f32> = batch.sequence_mask().chunks(batch.t).map(|m| m.iter().sum()).collect();
                let chosen_tokens: f32 = lens.iter().step_by(2).sum();
                let nll = whole.reshape([pairs, 2]).narrow(1, 0, 1).sum().neg().div_scalar(chosen_tokens.max(1.0));
                (nll - odds_term, Some(scores))
            }
            Objective::Kto { beta, desirable_weight, undesirable_weight } => {
                let n = batch.b / 2;
                let logps = sequence_logps(model, batch, device, compute, false).completion;
                let scores = logps.clone().detach();
                let refs = Tensor::<1>::from_data(TensorData::new(batch.refs.clone(), [batch.b]), device);
                let ratios = (logps - refs).reshape([n, 2]); // [N, 2]: the example's, the mismatched
                let r = ratios.clone().narrow(1, 0, 1).reshape([n]);
                // The KL estimate: a constant of the batch, never below 0.
                let z = ratios.narrow(1, 1, 1).detach().mean().clamp_min(0.0); // [1]
                // Desirable: 1 − σ(β(r − z)); undesirable: 1 − σ(β(z − r)).
                let sign: Vec<f32> = batch.labels.iter().map(|&l| if l { 1.0 } else { -1.0 }).collect();
                let weight: Vec<f32> = batch.labels.iter().map(|&l| if l { *desirable_weight } else { *undesirable_weight } as f32).collect();
                let sign = Tensor::<1>::from_data(TensorData::new(sign, [n]), device);
                let weight = Tensor::<1>::from_data(TensorData::new(weight, [n]), device);
                let x = (r - z.expand([n])) * sign;
                let losses = sigmoid(x.mul_scalar(*beta)).neg().add_scalar(1.0) * weight;
                (losses.mean(), Some(scores))
            }
            Objective::Reward { center_rewards_coefficient } => {
                let pairs = batch.b / 2;
                let (inputs, _, _) = batch.to_device(device);
                let rewards = model.rewards(inputs, &reward_positions(batch, model.config().pad_token_id()));
                let rewards = if compute.is_some() { rewards.cast(DType::F32) } else { rewards };
                let scores = rewards.clone().detach();
                let r = rewards.reshape([pairs, 2]);
                let (c, x) = (r.clone().narrow(1, 0, 1).reshape([pairs]), r.narrow(1, 1, 1).reshape([pairs]));
                let mut loss = log_sigmoid(c.clone() - x.clone()).neg().mean();
                if let Some(k) = center_rewards_coefficient {
                    let sum = c + x;
                    loss = loss + (sum.clone() * sum).mean().mul_scalar(*k);
                }
                (loss, Some(scores))
            }
            Objective::Grpo { beta, epsilon, loss_type, max_completion_len, temperature, .. } => {
                grpo_loss(model, batch, device, compute, (*beta, *epsilon, *temperature), *loss_type, *max_completion_len)
            }
        }
    }

    /// The objective a held-out evaluation reports: the run's own, except that a
    /// distillation run reports the student's next-token loss (comparable with the
    /// teacher's, and with any other run on the same data).
    pub fn held_out(&self) -> &Objective {
        match self {
            Objective::Distill { .. } => &Objective::NextToken,
            other => other,
        }
    }

    /// How much `batch` weighs in a mean over several batches (micro-batches of an
    /// accumulated step, or evaluation batches): its counted tokens, or its pairs.
    pub fn weight(&self, batch: &Batch) -> f32 {
        match self {
            Objective::NextToken | Objective::Distill { .. } => batch.weight_sum(),
            Objective::Dpo { .. } | Objective::Orpo { .. } | Objective::Kto { .. } | Objective::Reward { .. } => (batch.b / 2) as f32,
            // DAPO normalises by the accumulated batch's completion tokens; the others
            // average per micro-batch.
            Objective::Grpo { loss_type: super::grpo::GrpoLoss::Dapo, .. } => batch.weight_sum(),
            Objective::Grpo { .. } => batch.b as f32,
        }
    }
}

/// GRPO's loss on a rollout's batch (see [`super::grpo`]), and when `beta` > 0 the mean KL
/// estimate over the completion tokens as a `[1]` score (TRL's `kl` metric). Log-probabilities
/// are taken at the sampling temperature, as TRL's fused LM head takes them (logits / T).
fn grpo_loss(
    model: &Gpt,
    batch: &Batch,
    device: &Device,
    compute: Option<DType>,
    (beta, epsilon, temperature): (f64, f64, f64),
    loss_type: super::grpo::GrpoLoss,
    max_completion_len: usize,
) -> (Tensor<1>, Option<Tensor<1>>) {
    use super::grpo::GrpoLoss;
    let (b, t) = (batch.b, batch.t);
    let (inputs, targets, weights) = batch.to_device(device);
    let logits = model.forward(inputs); // [B, T, V]
    let logits = if compute.is_some() { logits.cast(DType::F32) } else { logits };
    let logits = if temperature != 1.0 { logits.div_scalar(temperature) } else { logits };
    let logp = crate::kernels::token_log_probs(logits, targets);
    // One update per rollout: the sampling policy is this policy, detached.
    let ratio = (logp.clone() - logp.clone().detach()).exp();
    let adv = Tensor::<1>::from_data(TensorData::new(batch.advantages.clone(), [b]), device).reshape([b, 1]);
    let unclipped = ratio.clone() * adv.clone();
    let clipped = ratio.clamp(1.0 - epsilon, 1.0 + epsilon) * adv;
    // −min(unclipped, clipped), the gradient taken through the smaller (the unclipped one
    // on a tie, which is every token when the ratio is 1).
    let smaller = clipped.clone().lower(unclipped.clone());
    let mut per_token = unclipped.mask_where(smaller, clipped).neg();
    let mut kl_score = None;
    if beta > 0.0 {
        let refs = Tensor::<2>::from_data(TensorData::new(batch.token_refs.clone(), [b, t]), device);
        let d = refs - logp;
        let kl = d.clone().exp() - d - 1.0;
        kl_score = Some((kl.clone().detach() * weights.clone()).sum().div_scalar(batch.weight_sum().max(1.0)));
        per_token = per_token + kl.mul_scalar(beta);
    }
    let masked = per_token * weights.clone();
    let loss = match loss_type {
        GrpoLoss::Dapo | GrpoLoss::Bnpo => masked.sum().div_scalar(batch.weight_sum().max(1.0)),
        GrpoLoss::Grpo => (masked.sum_dim(1) / weights.sum_dim(1).clamp_min(1.0)).mean(),
        GrpoLoss::DrGrpo => masked.sum().div_scalar((b * max_completion_len) as f64),
    };
    (loss, kl_score)
}

/// Where a sequence classifier reads each row of `batch`: as transformers' classifiers do,
/// the rightmost input token that is not `pad` (its `pad_token_id`; TRL sets the end-of-text
/// token, so a completion's own end token counts as padding and the score is read on the
/// token before it); without a pad id, each row's last own token (`Batch::lens`), else the
/// last position.
pub fn reward_positions(batch: &Batch, pad: Option<u32>) -> Vec<usize> {
    (0..batch.b)
        .map(|i| {
            let row = &batch.inputs[i * batch.t..(i + 1) * batch.t];
            match pad {
                Some(pad) => row.iter().rposition(|&id| id != pad).unwrap_or(0),
                None => batch.lens.get(i).map_or(batch.t - 1, |&n| (n as usize).clamp(1, batch.t) - 1),
            }
        })
        .collect()
}

/// log σ(x) on the host, stable on both sides: −log(1 + e^−x), or x − log(1 + e^x) for x < 0.
fn log_sigmoid_f64(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

/// `log(1 − e^x)` for `x < 0`, accurate on both sides of `−ln 2` (as TRL's `log1mexp`).
/// An average log-probability of exactly 0 (a completion the model is certain of) is
/// taken as just below it, where TRL's gives −∞ and a NaN loss.
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let x = x.clamp_max(-1e-7);
    let near = x.clone().lower_elem(-std::f64::consts::LN_2);
    let far = x.clone().exp().neg().log1p(); // accurate where e^x is small
    let close = x.exp().neg().add_scalar(1.0).log(); // 1 − e^x is well above 0 here
    close.mask_where(near, far)
}

/// Each row's log-probabilities, `[B]` tensors: see [`sequence_logps`].
pub struct RowLogps {
    /// Summed over the counted targets (the completion).
    pub completion: Tensor<1>,
    /// Summed over every target that is one of the row's own tokens, prompt included
    /// (batches that carry their rows' lengths, `Batch::lens`; None otherwise).
    pub whole: Option<Tensor<1>>,
    /// When asked for: each row's sum over counted positions of the mean logit over the
    /// vocabulary (TRL's `logits/chosen` is their mean over tokens).
    pub mean_logits: Option<Tensor<1>>,
}

/// Each row's log-probabilities of `batch` under `model` (see [`RowLogps`]).
///
/// # Shapes
/// batch `[B, T]` -> each `[B]`
pub fn sequence_logps(model: &Gpt, batch: &Batch, device: &Device, compute: Option<DType>, logits_too: bool) -> RowLogps {
    let (inputs, targets, weights) = batch.to_device(device);
    let logits = model.forward(inputs); // [B, T, V]
    let logits = if compute.is_some() { logits.cast(DType::F32) } else { logits };
    let [b, t, _] = logits.dims();
    let mean_logits = logits_too.then(|| (logits.clone().mean_dim(2).reshape([b, t]) * weights.clone()).sum_dim(1).reshape([b]));
    let logp = crate::kernels::token_log_probs(logits, targets);
    let whole = (batch.lens.len() == b).then(|| {
        let mask = Tensor::<2>::from_data(TensorData::new(batch.sequence_mask(), [b, t]), device);
        (logp.clone() * mask).sum_dim(1).reshape([b])
    });
    RowLogps { completion: (logp * weights).sum_dim(1).reshape([b]), whole, mean_logits }
}

/// TRL's DPO metrics over a set of pairs, under TRL's names (`rewards/chosen`, …), from
/// each row's policy and reference log-probabilities.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    pub loss: f64,
    pub pairs: usize,
    /// By TRL's metric name: `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`,
    /// `rewards/margins`, `logps/chosen`, `logps/rejected`, `logits/chosen`,
    /// `logits/rejected`.
    pub metrics: BTreeMap<String, f64>,
}

/// One row's scores, read back: summed log-probability, counted tokens, summed mean logit,
/// the reference's summed log-probability (0 without a reference), and the row's
/// log-probability over all its own tokens with their number (ORPO's NLL).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RowScore {
    pub logp: f64,
    pub count: f64,
    pub logit_sum: f64,
    pub reference: f64,
    pub whole: f64,
    pub whole_count: f64,
    /// KTO: the example's label (true: desirable) on its own row; None otherwise.
    pub label: Option<bool>,
}

impl PreferenceMetrics {
    /// The metrics of `rows` (chosen, rejected, chosen, …) as TRL computes them on one
    /// batch holding them all: rewards are `β·(log π − log ref)`, accuracies the share of
    /// pairs whose chosen reward is strictly higher, logits a mean over every completion
    /// token's logits.
    pub fn of(objective: &Objective, rows: &[RowScore]) -> Self {
        if let Objective::Orpo { beta } = objective {
            return Self::orpo(*beta, rows);
        }
        if let Objective::Kto { beta, desirable_weight, undesirable_weight } = objective {
            return Self::kto(*beta, (*desirable_weight, *undesirable_weight), rows);
        }
        if let Objective::Reward { center_rewards_coefficient } = objective {
            return Self::reward(*center_rewards_coefficient, rows);
        }
        let Objective::Dpo { loss_type, beta, label_smoothing } = objective else {
            return Self::default();
        };
        let ipo = *loss_type == DpoLoss::Ipo;
        let n = rows.len() / 2;
        let (mut loss, mut rc, mut rr, mut acc, mut lc, mut lr) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut logit_c, mut logit_r, mut tok_c, mut tok_r) = (0.0, 0.0, 0.0, 0.0);
        for pair in rows.chunks_exact(2) {
            let (c, r) = (&pair[0], &pair[1]);
            // IPO compares per-token averages of the log-ratios; the rewards and log-probs it
            // reports are the summed ones, as for every loss type (TRL 1.16).
            let d = if ipo {
                (c.logp - c.reference) / c.count.max(1.0) - (r.logp - r.reference) / r.count.max(1.0)
            } else {
                (c.logp - c.reference) - (r.logp - r.reference)
            };
            loss += loss_type.pair_loss(d, *beta, *label_smoothing);
            let (reward_c, reward_r) = (beta * (c.logp - c.reference), beta * (r.logp - r.reference));
            rc += reward_c;
            rr += reward_r;
            acc += f64::from(u8::from(reward_c > reward_r));
            lc += c.logp;
            lr += r.logp;
            logit_c += pair[0].logit_sum;
            logit_r += pair[1].logit_sum;
            tok_c += pair[0].count;
            tok_r += pair[1].count;
        }
        let m = n.max(1) as f64;
        let metrics = [
            ("rewards/chosen", rc / m),
            ("rewards/rejected", rr / m),
            ("rewards/accuracies", acc / m),
            ("rewards/margins", (rc - rr) / m),
            ("logps/chosen", lc / m),
            ("logps/rejected", lr / m),
            ("logits/chosen", logit_c / tok_c.max(1.0)),
            ("logits/rejected", logit_r / tok_r.max(1.0)),
        ];
        Self { loss: loss / m, pairs: n, metrics: metrics.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    /// KTO's metrics as TRL's `KTOTrainer` logs them, the rows (each example's, then its
    /// mismatched one) taken as one batch: `kl` the clamped mean log-ratio of the mismatched
    /// rows; `rewards/*` and `logps/*` means over the desirable (`chosen`) and undesirable
    /// (`rejected`) examples; `rewards/margins` their difference, when both kinds are
    /// present; `logits/*` means over their completion tokens. (TRL has no
    /// `rewards/accuracies` for KTO: the examples are not paired.)
    fn kto(beta: f64, (desirable, undesirable): (f64, f64), rows: &[RowScore]) -> Self {
        let n = rows.len() / 2;
        let z = (rows.chunks_exact(2).map(|p| p[1].logp - p[1].reference).sum::<f64>() / n.max(1) as f64).max(0.0);
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let mut loss = 0.0;
        // [desirable, undesirable]: count, summed rewards, summed logps, logit sums, tokens.
        let mut sums = [[0.0f64; 5]; 2];
        for pair in rows.chunks_exact(2) {
            let row = &pair[0];
            let good = row.label.unwrap_or(true);
            let r = row.logp - row.reference;
            loss += if good { desirable * (1.0 - sigmoid(beta * (r - z))) } else { undesirable * (1.0 - sigmoid(beta * (z - r))) };
            let s = &mut sums[usize::from(!good)];
            for (slot, v) in s.iter_mut().zip([1.0, beta * r, row.logp, row.logit_sum, row.count]) {
                *slot += v;
            }
        }
        let mut metrics = BTreeMap::new();
        metrics.insert("kl".to_string(), z);
        for (name, s) in ["chosen", "rejected"].into_iter().zip(&sums) {
            if s[0] > 0.0 {
                metrics.insert(format!("rewards/{name}"), s[1] / s[0]);
                metrics.insert(format!("logps/{name}"), s[2] / s[0]);
            }
            if s[4] > 0.0 {
                metrics.insert(format!("logits/{name}"), s[3] / s[4]);
            }
        }
        if sums[0][0] > 0.0 && sums[1][0] > 0.0 {
            metrics.insert("rewards/margins".to_string(), sums[0][1] / sums[0][0] - sums[1][1] / sums[1][0]);
        }
        Self { loss: loss / n.max(1) as f64, pairs: n, metrics }
    }

    /// A reward model's metrics as TRL's `RewardTrainer` logs them, from each row's score
    /// (`RowScore::logp` holds it), the rows taken as one batch: `accuracy` (the share of
    /// pairs whose chosen row scores strictly higher), `margin` (the mean difference), and
    /// `min_reward`, `mean_reward`, `max_reward` over every row.
    fn reward(center: Option<f64>, rows: &[RowScore]) -> Self {
        let n = rows.len() / 2;
        let m = n.max(1) as f64;
        let (mut loss, mut acc, mut margin) = (0.0, 0.0, 0.0);
        for pair in rows.chunks_exact(2) {
            let (c, r) = (pair[0].logp, pair[1].logp);
            loss -= log_sigmoid_f64(c - r);
            loss += center.unwrap_or(0.0) * (c + r).powi(2);
            acc += f64::from(u8::from(c > r));
            margin += c - r;
        }
        let all = || rows.iter().map(|r| r.logp);
        let metrics = [
            ("accuracy", acc / m),
            ("margin", margin / m),
            ("min_reward", all().fold(f64::INFINITY, f64::min)),
            ("mean_reward", all().sum::<f64>() / rows.len().max(1) as f64),
            ("max_reward", all().fold(f64::NEG_INFINITY, f64::max)),
        ];
        Self { loss: loss / m, pairs: n, metrics: metrics.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }

    /// ORPO's metrics as TRL's `ORPOTrainer` logs them: rewards are `β·p` with `p` the
    /// per-token average log-probability, `logps/*` those averages, `nll_loss` the chosen
    /// rows' NLL, `log_odds_ratio` the mean `log σ(o)` and `log_odds_chosen` the mean `o`.
    /// (TRL's `logits/*` average the whole padded logits tensor, so they depend on how the
    /// batch was padded; they are left out.)
    fn orpo(beta: f64, rows: &[RowScore]) -> Self {
        let log1mexp = |x: f64| {
            let x = x.min(-1e-7);
            if x < -std::f64::consts::LN_2 { (-x.exp()).ln_1p() } else { (-x.exp_m1()).ln() }
        };
        let n = rows.len() / 2;
        let m = n.max(1) as f64;
        let (mut pc, mut pr, mut acc, mut ratio, mut odds, mut nll, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        for pair in rows.chunks_exact(2) {
            let (c, r) = (pair[0].logp / pair[0].count.max(1.0), pair[1].logp / pair[1].count.max(1.0));
            let o = (c - r) - (log1mexp(c) - log1mexp(r));
            pc += c;
            pr += r;
            acc += f64::from(u8::from(beta * c > beta * r));
            ratio += log_sigmoid_f64(o);
            odds += o;
            nll -= pair[0].whole;
            tokens += pair[0].whole_count;
        }
        let nll = nll / tokens.max(1.0);
        let metrics = [
            ("rewards/chosen", beta * pc / m),
            ("rewards/rejected", beta * pr / m),
            ("rewards/accuracies", acc / m),
            ("rewards/margins", beta * (pc - pr) / m),
            ("logps/chosen", pc / m),
            ("logps/rejected", pr / m),
            ("nll_loss", nll),
            ("log_odds_ratio", ratio / m),
            ("log_odds_chosen", odds / m),
        ];
        Self { loss: nll - beta * ratio / m, pairs: n, metrics: metrics.into_iter().map(|(k, v)| (k.to_string(), v)).collect() }
    }
}
