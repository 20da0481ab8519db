//! Reinforcement learning on a verifiable reward: group relative policy optimisation (GRPO:
//! Shao et al., 2024, "DeepSeekMath"), as TRL 1.16's `GRPOTrainer` defines it
//! (`trl/trainer/grpo_trainer.py`: `_generate_and_score_completions`, `_compute_loss`).
//!
//! A step draws `batch / G` prompts and samples `G` completions of each from the policy as
//! it is (a *rollout*); a checker scores each completion (`Task::reward`: the exact answer,
//! or the right JSON record); a completion's advantage is its reward minus its group's mean,
//! divided by the group's standard deviation (Bessel-corrected) plus 1e-4, so a group where
//! every completion scored the same teaches nothing. The loss on the completion tokens is
//! PPO's clipped surrogate `−min(r·A, clip(r, 1−ε, 1+ε)·A)` with `r` the ratio of the
//! policy's probability to the sampling policy's, plus `β` times the per-token estimate
//! `e^(ref−logp) − (ref−logp) − 1` of the KL divergence to a frozen reference. With one
//! update per rollout (TRL's default `num_iterations` = 1) the sampling policy is the policy
//! itself: `r` = 1 in value, and its gradient is `A·∇log π`. No value model (what PPO needs
//! and GRPO does without): the group is the baseline.
//!
//! The trainer drives it: [`super::Trainer`] holds the [`Rl`] state, samples with
//! [`rollout`] before each step, and the objective ([`super::Objective::Grpo`]) computes the
//! loss from the rows and advantages the rollout put in the batch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::{Example, Split, Task};
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::sample::{SampleConfig, generate_group, generate_group_async};
use crate::tokenizer::TextTokenizer;

use super::batch::Batch;

/// How TRL aggregates the per-token losses (`loss_type`; TRL 1.16's default is `dapo`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrpoLoss {
    /// A mean over every completion token of the (accumulated) batch (DAPO: Yu et al., 2025).
    #[default]
    Dapo,
    /// Each completion's token mean, then the mean over completions (the GRPO paper's form,
    /// which favours short completions with positive advantages).
    Grpo,
    /// A mean over the completion tokens of the micro-batch.
    Bnpo,
    /// A sum over completion tokens divided by completions × `max_completion_len` (Dr. GRPO:
    /// Liu et al., 2025).
    DrGrpo,
}

impl GrpoLoss {
    pub const ALL: [GrpoLoss; 4] = [GrpoLoss::Dapo, GrpoLoss::Grpo, GrpoLoss::Bnpo, GrpoLoss::DrGrpo];

    pub fn name(&self) -> &'static str {
        match self {
            GrpoLoss::Dapo => "dapo",
            GrpoLoss::Grpo => "grpo",
            GrpoLoss::Bnpo => "bnpo",
            GrpoLoss::DrGrpo => "dr_grpo",
        }
    }
}

impl std::str::FromStr for GrpoLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        GrpoLoss::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| format!("unknown GRPO loss type '{s}'; choose dapo, grpo, bnpo or dr_grpo"))
    }
}

/// The prompts of one split of a task, with their examples (the reward's answers).
#[derive(Clone, Debug)]
pub struct PromptSet {
    pub task: Task,
    pub examples: Vec<Example>,
    pub ids: Vec<Vec<u32>>,
}

impl PromptSet {
    /// `n` prompts of `task`'s `split` (data seed `seed`).
    pub fn new(task: Task, tok: &TextTokenizer, seed: u64, split: Split, n: usize) -> Result<Self> {
        let examples = task.examples(seed, split, n);
        let ids = examples.iter().map(|e| tok.encode(&e.prompt)).collect::<Result<Vec<_>>>()?;
        if ids.is_empty() {
            return Err(Error::Invalid(format!("the {task} {split:?} split has no prompts; ask for more examples")));
        }
        Ok(Self { task, examples, ids })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What a GRPO run keeps beside the model: its prompts, the tokenizer (to read completions
/// for the reward), the frozen reference of the KL term (when `beta` > 0), and the last
/// rollout's groups (for displays).
#[derive(Clone)]
pub struct Rl {
    pub train: PromptSet,
    pub eval: PromptSet,
    pub tokenizer: TextTokenizer,
    pub reference: Option<Gpt>,
    pub last: Vec<SampledGroup>,
}

/// One prompt's group of completions as sampled and scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampledGroup {
    pub prompt: String,
    pub expected: String,
    pub completions: Vec<String>,
    pub rewards: Vec<f64>,
    pub advantages: Vec<f64>,
}

/// A rollout: the batch to learn from (prompt + completion rows, the completion counted,
/// each row's advantage), the groups, and TRL's rollout metrics.
pub struct Rollout {
    pub batch: Batch,
    pub groups: Vec<SampledGroup>,
    pub metrics: BTreeMap<String, f64>,
}

/// The settings of a rollout (from `Objective::Grpo` and the run).
#[derive(Clone, Debug)]
pub struct RolloutSettings {
    pub group_size: usize,
    pub temperature: f64,
    pub max_completion_len: usize,
    /// Row length of the batch (the run's `seq_len`): prompt + completion must fit in
    /// `seq_len + 1` tokens.
    pub seq_len: usize,
    pub seed: u64,
}

/// Group-normalised advantages, as TRL's default `scale_rewards="group"`: within each
/// consecutive group of `g` rewards, `(r − mean) / (std + 1e-4)` with the sample
/// (Bessel-corrected) standard deviation.
pub fn advantages(rewards: &[f64], g: usize) -> Vec<f64> {
    rewards
        .chunks(g.max(1))
        .flat_map(|group| {
            let n = group.len() as f64;
            let mean = group.iter().sum::<f64>() / n;
            let std = if group.len() > 1 { (group.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
            group.iter().map(move |r| (r - mean) / (std + 1e-4))
        })
        .collect()
}

/// Samples and scores the groups of the prompts `picks` (synchronous read-back).
pub fn rollout(model: &Gpt, rl: &Rl, picks: &[usize], s: &RolloutSettings) -> Result<Rollout> {
    let mut completions = Vec::with_capacity(picks.len());
    for (i, &p) in picks.iter().enumerate() {
        let prompt = &rl.train.ids[p];
        completions.push(generate_group(model, prompt, s.group_size, &sampling(&rl.tokenizer, prompt, s, super::trainer::mix(s.seed, i as u64)))?);
    }
    assemble(rl, picks, completions, s)
}

/// [`rollout`] for the browser (asynchronous read-back).
pub async fn rollout_async(model: &Gpt, rl: &Rl, picks: &[usize], s: &RolloutSettings) -> Result<Rollout> {
    let mut completions = Vec::with_capacity(picks.len());
    for (i, &p) in picks.iter().enumerate() {
        let prompt = &rl.train.ids[p];
        completions.push(generate_group_async(model, prompt, s.group_size, &sampling(&rl.tokenizer, prompt, s, super::trainer::mix(s.seed, i as u64))).await?);
    }
    assemble(rl, picks, completions, s)
}

/// How a rollout or an evaluation samples from `prompt`: at the run's temperature, to the
/// end of the line, and no further than the batch row leaves room for.
fn sampling(tok: &TextTokenizer, prompt: &[u32], s: &RolloutSettings, seed: u64) -> SampleConfig {
    // Prompt and completion fit one row of the batch.
    let room = (s.seq_len + 1).saturating_sub(prompt.len()).max(1);
    SampleConfig { max_new_tokens: s.max_completion_len.min(room), temperature: s.temperature, top_k: None, seed, stop_ids: tok.line_stop_ids(), cache: true }
}

/// Scores the sampled completions and lays them out as a batch.
fn assemble(rl: &Rl, picks: &[usize], completions: Vec<Vec<Vec<u32>>>, s: &RolloutSettings) -> Result<Rollout> {
    let (g, t) = (s.group_size, s.seq_len);
    let task = rl.train.task;
    let mut batch = Batch { b: picks.len() * g, t, ..Default::default() };
    let stops = rl.tokenizer.line_stop_ids();
    let (mut rewards, mut groups, mut lengths, mut clipped) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for (&p, group) in picks.iter().zip(&completions) {
        let example = &rl.train.examples[p];
        let texts: Vec<String> = group.iter().map(|ids| rl.tokenizer.decode(ids)).collect();
        let r: Vec<f64> = texts.iter().map(|text| task.reward(example, text)).collect();
        let prompt = &rl.train.ids[p];
        for ids in group {
            let stopped = ids.last().is_some_and(|last| stops.contains(last));
            clipped += usize::from(!stopped);
            lengths.push(ids.len() as f64);
            let mut row = prompt.clone();
            row.extend(ids);
            row.truncate(t + 1);
            // weights[i] is the weight of predicting row[i]: the completion's tokens count.
            let w: Vec<f32> = (0..row.len()).map(|j| if j >= prompt.len() { 1.0 } else { 0.0 }).collect();
            // Padding repeats the last token, with weight 0.
            super::batch::push_row(&mut batch, &row, &w, *row.last().unwrap_or(&0), t);
            batch.lens.push(row.len() as u32);
        }
        rewards.extend_from_slice(&r);
        groups.push(SampledGroup {
            prompt: example.prompt.clone(),
            expected: example.response.trim().to_string(),
            completions: texts,
            rewards: r,
            advantages: vec![],
        });
    }
    let adv = advantages(&rewards, g);
    for (group, a) in groups.iter_mut().zip(adv.chunks(g)) {
        group.advantages = a.to_vec();
    }
    batch.advantages = adv.iter().map(|&a| a as f32).collect();
    let n = rewards.len().max(1) as f64;
    let mean = rewards.iter().sum::<f64>() / n;
    let std = if rewards.len() > 1 { (rewards.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    let zero_std = groups.iter().filter(|gr| gr.rewards.iter().all(|&r| r == gr.rewards[0])).count() as f64 / groups.len().max(1) as f64;
    let metrics = [
        ("reward".to_string(), mean),
        ("reward_std".to_string(), std),
        (format!("rewards/{task}/mean"), mean),
        (format!("rewards/{task}/std"), std),
        ("frac_reward_zero_std".to_string(), zero_std),
        ("completions/mean_length".to_string(), lengths.iter().sum::<f64>() / n),
        ("completions/clipped_ratio".to_string(), clipped as f64 / n),
    ];
    Ok(Rollout { batch, groups, metrics: metrics.into_iter().collect() })
}

/// A GRPO run's held-out figures on the first `n` prompts of `set`: `reward`, the mean reward
/// of `G` completions sampled per prompt as in training (what TRL's evaluation reports),
/// and `greedy_reward`, that of the single most likely answer (exact-match accuracy).
/// Synchronous read-back.
pub fn held_out_reward(model: &Gpt, set: &PromptSet, tok: &TextTokenizer, n: usize, s: &RolloutSettings) -> Result<BTreeMap<String, f64>> {
    let (mut sampled, mut greedy_total) = (Vec::new(), Vec::new());
    for (i, (ex, ids)) in set.examples.iter().zip(&set.ids).take(n.max(1)).enumerate() {
        let group = generate_group(model, ids, s.group_size, &sampling(tok, ids, s, eval_seed(i)))?;
        sampled.extend(group.iter().map(|c| set.task.reward(ex, &tok.decode(c))));
        let out = crate::sample::generate(model, ids, &greedy(tok, ex)?);
        greedy_total.push(set.task.reward(ex, &tok.decode(&out)));
    }
    Ok(eval_metrics(&sampled, &greedy_total))
}

/// [`held_out_reward`] for the browser (asynchronous read-back).
pub async fn held_out_reward_async(model: &Gpt, set: &PromptSet, tok: &TextTokenizer, n: usize, s: &RolloutSettings) -> Result<BTreeMap<String, f64>> {
    let (mut sampled, mut greedy_total) = (Vec::new(), Vec::new());
    for (i, (ex, ids)) in set.examples.iter().zip(&set.ids).take(n.max(1)).enumerate() {
        let group = generate_group_async(model, ids, s.group_size, &sampling(tok, ids, s, eval_seed(i))).await?;
        sampled.extend(group.iter().map(|c| set.task.reward(ex, &tok.decode(c))));
        let out = crate::sample::generate_async(model, ids, &greedy(tok, ex)?).await?;
        greedy_total.push(set.task.reward(ex, &tok.decode(&out)));
    }
    Ok(eval_metrics(&sampled, &greedy_total))
}

/// The same held-out samples at every evaluation of a run: seeded by the prompt alone.
fn eval_seed(i: usize) -> u64 {
    super::trainer::mix(0x4556_414C, i as u64)
}

fn eval_metrics(sampled: &[f64], greedy: &[f64]) -> BTreeMap<String, f64> {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    [("reward".to_string(), mean(sampled)), ("greedy_reward".to_string(), mean(greedy))].into()
}

fn greedy(tok: &TextTokenizer, ex: &Example) -> Result<SampleConfig> {
    // A few tokens past the reference's length: a longer answer cannot be right.
    let room = tok.encode(&ex.response)?.len() + 4;
    Ok(SampleConfig { max_new_tokens: room, temperature: 0.0, top_k: None, seed: 0, stop_ids: tok.line_stop_ids(), cache: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_are_normalised_within_each_group() {
        // Group of four with one right answer: mean 0.25, sample std 0.5.
        let a = advantages(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 4);
        let want = 0.75 / (0.5 + 1e-4);
        assert!((a[0] - want).abs() < 1e-12 && (a[1] + 0.25 / (0.5 + 1e-4)).abs() < 1e-12, "{a:?}");
        // A group that all scored the same has nothing to teach.
        assert!(a[4..].iter().all(|&x| x == 0.0));
        assert!((a[..4].iter().sum::<f64>()).abs() < 1e-12, "advantages sum to 0 within a group");
    }
}
