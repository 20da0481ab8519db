//! The two-task merge study behind `tinytune merge-study` and the page's merge widget:
//! fine-tune two copies of one model on two tasks, merge them with every method, and score
//! each merge on both tasks' held-out data.
//!
//! Every merge goes through mergekit's YAML ([`study_yaml`]), the same text `tinytune merge`
//! reads, so what the widget shows can be rerun unchanged.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{MergeConfig, merge_models};
use crate::data::Task;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::tokenizer::TextTokenizer;
use crate::train::score::{TaskEval, TaskScore};
use crate::train::{DataSource, TrainConfig};

/// The methods the study compares (every per-tensor method tinytune merges with).
pub const METHODS: [&str; 9] = ["linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "model_stock"];

/// The names the study's three models go by in its YAML.
pub const NAMES: [&str; 3] = ["base", "task-a", "task-b"];

/// One merge's settings: the method, model B's share `t` (A's is 1 − t; SLERP's `t`),
/// the share of each task vector kept (`density`), the task-vector scale `lambda`, and the
/// seed of DARE's drops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub method: String,
    pub t: f64,
    pub density: f64,
    pub lambda: f64,
    pub seed: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self { method: "ties".into(), t: 0.5, density: 0.5, lambda: 1.0, seed: 0 }
    }
}

fn number(x: f64) -> String {
    // Plain decimals (YAML reads `1e-3` as a string).
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') { format!("{s}0") } else { s.to_string() }
}

/// mergekit's YAML for merging `a` and `b` (fine-tunes of `base`) with `knobs`: linear
/// weighs the two fine-tunes 1 − t and t; SLERP goes from `a` (t = 0) to `b`; the
/// task-vector methods add the two fine-tunes' task vectors with those weights, `density`
/// and `lambda` to `base`; Model Stock takes no weights (it sets its own share from the
/// task vectors' angle), so its point does not move with `t`.
pub fn study_yaml(knobs: &Knobs, [base, a, b]: [&str; 3]) -> String {
    let (wa, wb) = (number(1.0 - knobs.t), number(knobs.t));
    match knobs.method.as_str() {
        "linear" => format!(
            "models:\n  - model: {a}\n    parameters: {{weight: {wa}}}\n  - model: {b}\n    parameters: {{weight: {wb}}}\nmerge_method: linear\ndtype: float32\n"
        ),
        // Model Stock weighs nothing: its own t comes from the task vectors' angle.
        "model_stock" => format!("models:\n  - model: {a}\n  - model: {b}\nmerge_method: model_stock\nbase_model: {base}\ndtype: float32\n"),
        "slerp" => format!("models:\n  - model: {a}\n  - model: {b}\nmerge_method: slerp\nbase_model: {a}\nparameters:\n  t: {wb}\ndtype: float32\n"),
        method => {
            let d = number(knobs.density);
            let lambda = if knobs.lambda == 1.0 { String::new() } else { format!("parameters:\n  lambda: {}\n", number(knobs.lambda)) };
            format!(
                "models:\n  - model: {a}\n    parameters: {{weight: {wa}, density: {d}}}\n  - model: {b}\n    parameters: {{weight: {wb}, density: {d}}}\nmerge_method: {method}\nbase_model: {base}\n{lambda}dtype: float32\n"
            )
        }
    }
}

/// The fine-tuning run of each copy: full fine-tuning of every weight with AdamW, batches
/// of 8 rows of 64 tokens, 10% warmup.
pub fn finetune_config(task: Task, steps: usize, lr: f64, seed: u64) -> TrainConfig {
    crate::methods::rank::finetune_config(DataSource::Task(task), steps, lr, 8, 64, seed)
}

/// One scored model: a label (`base`, `task-a`, `task-b` or the method), model B's share,
/// and its scores on task A and task B.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub label: String,
    pub t: f64,
    pub a: TaskScore,
    pub b: TaskScore,
}

/// The base model, its two fine-tunes and what they are scored on.
#[derive(Clone, Debug)]
pub struct Study {
    pub base: Gpt,
    pub a: Gpt,
    pub b: Gpt,
    pub evals: [TaskEval; 2],
}

impl Study {
    /// The study over fine-tunes `a` (on `task_a`) and `b` (on `task_b`) of `base`, each
    /// task scored on `examples` held-out rows and `accuracy_examples` greedy answers.
    pub fn new(base: Gpt, a: Gpt, b: Gpt, tasks: [Task; 2], tok: &TextTokenizer, examples: usize, accuracy_examples: usize) -> Result<Self> {
        if tasks[0] == tasks[1] {
            return Err(Error::config("merge study", "tasks", format!("both tasks are {}; merging is about two different ones", tasks[0])));
        }
        let eval = |task| TaskEval::new(task, tok, 0, examples, accuracy_examples, 64);
        Ok(Self { base, a, b, evals: [eval(tasks[0])?, eval(tasks[1])?] })
    }

    /// `model` scored on both tasks.
    pub fn score(&self, label: &str, t: f64, model: &Gpt, tok: &TextTokenizer) -> Result<Scored> {
        Ok(Scored { label: label.into(), t, a: self.evals[0].score(model, tok)?, b: self.evals[1].score(model, tok)? })
    }

    /// The merge `knobs` describe, through its YAML.
    pub fn merge(&self, knobs: &Knobs, device: &Device) -> Result<Gpt> {
        if !METHODS.contains(&knobs.method.as_str()) {
            return Err(Error::config("merge study", "method", format!("{:?} is not one of {}", knobs.method, METHODS.join(", "))));
        }
        let config = MergeConfig::from_yaml(&study_yaml(knobs, NAMES), "merge study")?;
        let models: Vec<(String, Gpt)> = NAMES.iter().zip([&self.base, &self.a, &self.b]).map(|(n, m)| (n.to_string(), m.clone())).collect();
        merge_models(&config, &models, knobs.seed, device)
    }

    /// The base and the two fine-tunes, scored.
    pub fn endpoints(&self, tok: &TextTokenizer) -> Result<Vec<Scored>> {
        Ok(vec![self.score(NAMES[0], 0.0, &self.base, tok)?, self.score(NAMES[1], 0.0, &self.a, tok)?, self.score(NAMES[2], 1.0, &self.b, tok)?])
    }

    /// Every method's merge at `knobs` (its `t`, `density`, `lambda`), scored.
    pub fn methods(&self, knobs: &Knobs, tok: &TextTokenizer, device: &Device) -> Result<Vec<Scored>> {
        METHODS
            .iter()
            .map(|m| {
                let k = Knobs { method: m.to_string(), ..knobs.clone() };
                self.score(m, k.t, &self.merge(&k, device)?, tok)
            })
            .collect()
    }

    /// `knobs.method`'s merge at each share in `ts`, scored.
    pub fn curve(&self, knobs: &Knobs, ts: &[f64], tok: &TextTokenizer, device: &Device) -> Result<Vec<Scored>> {
        ts.iter()
            .map(|&t| {
                let k = Knobs { t, ..knobs.clone() };
                self.score(&k.method, t, &self.merge(&k, device)?, tok)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_methods_yaml_parses_with_the_knobs_it_was_written_from() {
        for m in METHODS {
            let knobs = Knobs { method: m.into(), t: 0.25, density: 0.3, lambda: 2.0, seed: 0 };
            let config = MergeConfig::from_yaml(&study_yaml(&knobs, NAMES), "test").unwrap_or_else(|e| panic!("{m}: {e}"));
            assert_eq!(config.method_name, m);
            if m == "model_stock" {
                assert_eq!(config.method, super::super::MergeMethod::ModelStock);
                assert_eq!(config.base_model.as_deref(), Some("base"));
                continue;
            }
            if m == "slerp" {
                assert_eq!(config.method, super::super::MergeMethod::Slerp { t: 0.25 });
                continue;
            }
            let shares: Vec<(f64, f64)> = config.models.iter().map(|e| (e.share().weight, e.share().density)).collect();
            assert_eq!(shares[0].0, 0.75, "{m}");
            assert_eq!(shares[1].0, 0.25, "{m}");
            if m != "linear" {
                assert_eq!(config.base_model.as_deref(), Some("base"));
                assert_eq!(shares[0].1, 0.3, "{m}");
                assert!(matches!(config.method, super::super::MergeMethod::TaskVectors { lambda, .. } if lambda == 2.0), "{m}");
            }
        }
    }
}
