//! Knowledge distillation: a student learns a teacher's output distribution.
//!
//! Hinton et al. (2015) soften both distributions with a temperature `T` — the teacher's
//! small probabilities for wrong tokens ("dark knowledge") say which mistakes are near
//! misses — and scale the soft loss by `T²` so its gradients keep their size as `T`
//! grows; the soft loss is mixed with the ordinary next-token loss on the data by `α`:
//!
//! `loss = α · T² · D(teacher_T, student_T) + (1 − α) · CE(student)`
//!
//! `D` is averaged over the counted target positions (the responses of SFT data). The
//! divergences are those of TRL 1.16's `GKDTrainer.generalized_jsd_loss`
//! (`trl/experimental/gkd/gkd_trainer.py`), which has no `T²` and no hard loss, so with
//! `α = 1` and `T = 1` the loss is exactly TRL's:
//! - forward KL, `KL(teacher ‖ student)` (GKD's β = 0): the student must cover every token
//!   the teacher gives mass to (mode covering);
//! - reverse KL, `KL(student ‖ teacher)` (β = 1): the student is punished for mass where
//!   the teacher has little, so it may settle on one mode (mode seeking);
//! - the generalised Jensen–Shannon divergence with weight `β` in (0, 1):
//!   `β · KL(teacher ‖ m) + (1 − β) · KL(student ‖ m)` with the mixture
//!   `m = β · teacher + (1 − β) · student`.
//!
//! The teacher is frozen and held by the trainer beside the student
//! (`Trainer::set_teacher`); its logits are computed on each batch, without autodiff.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::batch::Batch;

/// How the student's distribution is compared with the teacher's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Divergence {
    /// `KL(teacher ‖ student)`, mode covering (Hinton's distillation loss).
    #[default]
    ForwardKl,
    /// `KL(student ‖ teacher)`, mode seeking.
    ReverseKl,
    /// GKD's generalised Jensen–Shannon divergence with weight β.
    Jsd,
}

impl Divergence {
    pub const ALL: [Divergence; 3] = [Divergence::ForwardKl, Divergence::ReverseKl, Divergence::Jsd];

    pub fn name(&self) -> &'static str {
        match self {
            Divergence::ForwardKl => "forward-kl",
            Divergence::ReverseKl => "reverse-kl",
            Divergence::Jsd => "jsd",
        }
    }
}

impl std::str::FromStr for Divergence {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Divergence::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| format!("unknown divergence '{s}'; choose forward-kl, reverse-kl or jsd"))
    }
}

/// The divergence between the teacher's and the student's distributions at every position,
/// both softened by `temperature`: `[B, T]`.
///
/// # Shapes
/// student `[B, T, V]`, teacher `[B, T, V]` -> `[B, T]`
pub fn token_divergence(student: Tensor<3>, teacher: Tensor<3>, divergence: Divergence, beta: f64, temperature: f64) -> Tensor<2> {
    let [b, t, _] = student.dims();
    let s = log_softmax(student.div_scalar(temperature), 2);
    let q = log_softmax(teacher.div_scalar(temperature), 2);
    // KL(p ‖ r) over the vocabulary from log-probabilities.
    let kl = |p: Tensor<3>, r: Tensor<3>| (p.clone().exp() * (p - r)).sum_dim(2).reshape([b, t]);
    match divergence {
        Divergence::ForwardKl => kl(q, s),
        Divergence::ReverseKl => kl(s, q),
        Divergence::Jsd => {
            // log m = logsumexp(log s + log(1 − β), log q + log β), taken stably.
            let (a, c) = (s.clone().add_scalar((1.0 - beta).ln()), q.clone().add_scalar(beta.ln()));
            let hi = a.clone().max_pair(c.clone());
            let m = hi.clone() + ((a - hi.clone()).exp() + (c - hi).exp()).log();
            kl(q, m.clone()).mul_scalar(beta) + kl(s, m).mul_scalar(1.0 - beta)
        }
    }
}

/// The distillation loss of a batch (see the module docs) and its two parts, each a `[1]`
/// tensor: `(loss, soft, hard)`, where `soft` is the mean divergence over the counted
/// positions (before `α` and `T²`) and `hard` the next-token cross-entropy.
///
/// # Shapes
/// student, teacher `[B, T, V]`; targets, weights `[B, T]` -> each `[1]`
pub fn distill_loss(
    student: Tensor<3>,
    teacher: Tensor<3>,
    targets: Tensor<2, burn::tensor::Int>,
    weights: Tensor<2>,
    weight_sum: f32,
    settings: (Divergence, f64, f64, f64),
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let (divergence, beta, temperature, alpha) = settings;
    let soft = (token_divergence(student.clone(), teacher, divergence, beta, temperature) * weights.clone()).sum().div_scalar(weight_sum.max(1.0));
    let hard = crate::model::Gpt::loss(student, targets, weights, weight_sum);
    let loss = soft.clone().mul_scalar(alpha * temperature * temperature) + hard.clone().mul_scalar(1.0 - alpha);
    (loss, soft, hard)
}

/// The frozen teacher's logits on `inputs` (`[B, T]` token ids on any device): computed on
/// the teacher's own device, without autodiff, in FP32.
///
/// # Shapes
/// inputs `[B, T]` -> `[B, T, V]`
pub fn teacher_logits(teacher: &crate::Gpt, inputs: &Tensor<2, burn::tensor::Int>) -> Tensor<3> {
    let device = teacher.wte.weight.val().device();
    let logits = teacher.forward(inputs.clone().to_device(&device));
    if logits.dtype() != burn::tensor::DType::F32 { logits.cast(burn::tensor::DType::F32) } else { logits }
}

/// [`token_divergence`] at one position, in f64 on the host: the closed form the device
/// computation is tested against.
pub fn divergence_f64(student: &[f64], teacher: &[f64], divergence: Divergence, beta: f64, temperature: f64) -> f64 {
    let log_softmax = |x: &[f64]| {
        let m = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v / temperature));
        let z = x.iter().map(|v| (v / temperature - m).exp()).sum::<f64>().ln() + m;
        x.iter().map(|v| v / temperature - z).collect::<Vec<_>>()
    };
    let (s, q) = (log_softmax(student), log_softmax(teacher));
    let kl = |p: &[f64], r: &[f64]| p.iter().zip(r).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    match divergence {
        Divergence::ForwardKl => kl(&q, &s),
        Divergence::ReverseKl => kl(&s, &q),
        Divergence::Jsd => {
            let m: Vec<f64> = s.iter().zip(&q).map(|(a, b)| ((1.0 - beta) * a.exp() + beta * b.exp()).ln()).collect();
            beta * kl(&q, &m) + (1.0 - beta) * kl(&s, &m)
        }
    }
}

/// A `[B, T, V]` tensor from host values (tests and fixtures).
pub fn logits_tensor(values: Vec<f32>, shape: [usize; 3], device: &burn::tensor::Device) -> Tensor<3> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Which of the teacher's `teacher_layers` layers each of a student's `student_layers`
/// starts from: evenly spaced from the bottom, `i · L_t / L_s` (every other layer when the
/// student has half as many, as DistilBERT was initialised).
pub fn teacher_layers_for(student_layers: usize, teacher_layers: usize) -> Vec<usize> {
    (0..student_layers).map(|i| i * teacher_layers / student_layers.max(1)).collect()
}

/// A student of shape `config` initialised from `teacher` (Sanh et al., 2019, DistilBERT):
/// embeddings, final norm and head copied, and layer `i` from the teacher's layer
/// [`teacher_layers_for`]`(…)[i]`; learned positions beyond the teacher's are refused, fewer
/// are cut. The teacher's adapters (LoRA, IA³) are folded in first; a teacher with
/// adapters or soft prompts that cannot fold is refused. The student must have the
/// teacher's family, width, heads, MLP width and vocabulary, and no more layers.
pub fn student_from_teacher(teacher: &crate::Gpt, config: &crate::ModelConfig, device: &burn::tensor::Device) -> crate::Result<crate::Gpt> {
    use crate::error::Error;
    let t = teacher.config();
    let same = |field: &str, a: usize, b: usize| {
        if a == b {
            Ok(())
        } else {
            Err(Error::config(
                "student config",
                field,
                format!("is {b}, the teacher's is {a}; a student initialised from the teacher must have the teacher's {field} (only n_layer may be smaller)"),
            ))
        }
    };
    if t.family != config.family {
        return Err(Error::config(
            "student config",
            "model_type",
            "differs from the teacher's; a student initialised from the teacher must share its architecture",
        ));
    }
    same("n_embd", t.n_embd, config.n_embd)?;
    same("n_head", t.n_head, config.n_head)?;
    same("n_kv_head", t.n_kv_head, config.n_kv_head)?;
    same("n_inner", t.inner(), config.inner())?;
    same("vocab_size", t.vocab_size, config.vocab_size)?;
    if config.n_layer > t.n_layer || config.n_layer == 0 {
        return Err(Error::config(
            "student config",
            "n_layer",
            format!("is {}; a student initialised from a {}-layer teacher takes 1 to {} of its layers", config.n_layer, t.n_layer, t.n_layer),
        ));
    }
    if config.n_positions > t.n_positions && !t.family.is_llama_like() {
        return Err(Error::config(
            "student config",
            "n_positions",
            format!("is {}, more learned positions than the teacher's {}; use at most {}", config.n_positions, t.n_positions, t.n_positions),
        ));
    }
    let teacher = crate::methods::merge(teacher.clone());
    if teacher.prompt.is_some() || teacher.prefix.is_some() || teacher.h.iter().any(|b| b.adapter_attn.is_some() || b.adapter_mlp.is_some()) {
        return Err(Error::config(
            "teacher",
            "method",
            "carries a soft prompt, prefix or bottleneck adapters, which cannot be folded into a student's weights",
        ));
    }
    let picks = teacher_layers_for(config.n_layer, t.n_layer);
    let mut tensors = std::collections::HashMap::new();
    for (name, data) in crate::model::params::param_data(&teacher) {
        let renamed = match name.strip_prefix("h.") {
            Some(rest) => {
                let (layer, tail) = rest.split_once('.').expect("block parameters are h.{i}.{name}");
                let layer: usize = layer.parse().expect("a layer number");
                picks.iter().position(|&p| p == layer).map(|i| format!("h.{i}.{tail}"))
            }
            None => Some(name),
        };
        let Some(renamed) = renamed else { continue };
        let data = if renamed == "wpe.weight" && config.n_positions < t.n_positions {
            let values: Vec<f32> = data.convert::<f32>().try_to_vec::<f32>().expect("f32 data");
            TensorData::new(values[..config.n_positions * t.n_embd].to_vec(), [config.n_positions, t.n_embd])
        } else {
            data
        };
        tensors.insert(renamed, data);
    }
    let (student, _) = crate::model::params::load_params(crate::Gpt::zeros(config, device), tensors, &"the teacher's weights".into())?;
    Ok(student)
}

/// Where a step's completions come from, as GKD decides it (`GKDTrainer.training_step`):
/// the teacher's samples when `seq_kd`; then, with probability `lmbda` (a coin seeded by
/// the run's seed and the step, so a resumed run tosses the same), the student's own.
/// None: the data's own completions.
pub fn completion_source(seq_kd: bool, lmbda: f64, seed: u64, step: usize) -> Option<Source> {
    let on_policy = lmbda > 0.0 && crate::data::rng::Rng::derive(seed, &format!("gkd/{step}")).unit_f64() < lmbda;
    match (on_policy, seq_kd) {
        (true, _) => Some(Source::Student),
        (false, true) => Some(Source::Teacher),
        (false, false) => None,
    }
}

/// Which model samples a step's completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Student,
    Teacher,
}

/// Each row's prompt: the tokens before the first counted target (a row with nothing
/// counted has none, and is kept as it is).
fn prompts(batch: &Batch) -> Vec<Option<Vec<u32>>> {
    (0..batch.b)
        .map(|r| {
            let row = r * batch.t..(r + 1) * batch.t;
            let first = batch.weights[row.clone()].iter().position(|&w| w > 0.0)?;
            Some(batch.inputs[row][..=first].to_vec())
        })
        .collect()
}

/// The sampling settings of row `r`'s completion: up to the end of the row, at temperature
/// 1 (the model's own distribution), stopping at the end-of-text token.
fn sampling(batch: &Batch, prompt_len: usize, seed: u64, r: usize, stop: u32) -> crate::sample::SampleConfig {
    crate::sample::SampleConfig {
        max_new_tokens: batch.t + 1 - prompt_len,
        temperature: 1.0,
        top_k: None,
        seed: super::trainer::mix(seed, r as u64),
        stop_ids: vec![stop],
        cache: true,
    }
}

/// `batch` with every row's completion replaced by one `model` samples from its prompt
/// (the completion counted, the prompt not), as GKD's on-policy and sequence-level steps
/// do; `stop` ends a completion (the end-of-text token) and `pad` fills the rest. The
/// caller marks a student's samples `Batch::on_policy`.
pub fn resample(batch: &Batch, model: &crate::Gpt, seed: u64, stop: u32, pad: u32) -> Batch {
    let mut out = Batch { b: batch.b, t: batch.t, ..Default::default() };
    for (r, prompt) in prompts(batch).into_iter().enumerate() {
        match prompt {
            Some(prompt) => {
                let completion = crate::sample::generate(model, &prompt, &sampling(batch, prompt.len(), seed, r, stop));
                push_sampled(&mut out, &prompt, &completion, pad);
            }
            None => copy_row(&mut out, batch, r),
        }
    }
    out
}

/// [`resample`] for the browser (asynchronous read-back).
pub async fn resample_async(batch: &Batch, model: &crate::Gpt, seed: u64, stop: u32, pad: u32) -> crate::Result<Batch> {
    let mut out = Batch { b: batch.b, t: batch.t, ..Default::default() };
    for (r, prompt) in prompts(batch).into_iter().enumerate() {
        match prompt {
            Some(prompt) => {
                let completion = crate::sample::generate_async(model, &prompt, &sampling(batch, prompt.len(), seed, r, stop)).await?;
                push_sampled(&mut out, &prompt, &completion, pad);
            }
            None => copy_row(&mut out, batch, r),
        }
    }
    Ok(out)
}

fn push_sampled(out: &mut Batch, prompt: &[u32], completion: &[u32], pad: u32) {
    let ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let weights: Vec<f32> = (0..ids.len()).map(|i| if i < prompt.len() { 0.0 } else { 1.0 }).collect();
    super::batch::push_row(out, &ids, &weights, pad, out.t);
}

fn copy_row(out: &mut Batch, batch: &Batch, r: usize) {
    let row = r * batch.t..(r + 1) * batch.t;
    out.inputs.extend_from_slice(&batch.inputs[row.clone()]);
    out.targets.extend_from_slice(&batch.targets[row.clone()]);
    out.weights.extend_from_slice(&batch.weights[row]);
}
