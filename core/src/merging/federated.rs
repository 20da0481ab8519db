//! Federated averaging (FedAvg; McMahan, Moore, Ramage, Hampson and Agüera y Arcas, 2017,
//! "Communication-Efficient Learning of Deep Networks from Decentralized Data"): clients
//! each hold a disjoint shard of the data, and every round each fine-tunes the current
//! global model on its own shard for a few steps; the server then averages their weights,
//! each client weighted by its share of the examples. The average is a `linear` merge, made
//! here through the same mergekit YAML and `merge_models` as every other merge.
//!
//! Beside it runs the baseline FedAvg is measured against: one model trained on all the
//! shards pooled, for as many steps per round as each client takes.

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{MergeConfig, merge_models};
use crate::data::{Split, Task};
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::tokenizer::TextTokenizer;
use crate::train::{Dataset, TrainConfig, Trainer, eval_loss};

/// A federated run's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FedConfig {
    pub task: Task,
    pub clients: usize,
    pub rounds: usize,
    /// Steps each client trains per round.
    pub local_steps: usize,
    pub lr: f64,
    /// Training examples in each client's shard.
    pub examples_per_client: usize,
    pub seed: u64,
}

impl Default for FedConfig {
    fn default() -> Self {
        Self { task: Task::Sentiment, clients: 4, rounds: 4, local_steps: 10, lr: 3e-3, examples_per_client: 200, seed: 0 }
    }
}

impl FedConfig {
    /// Each client's (and the pooled baseline's) training settings: AdamW (its state starts
    /// afresh every round, as a client's would), batches of 8 rows of 64 tokens, no warmup.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            data: crate::train::DataSource::Task(self.task),
            steps: self.local_steps,
            batch_size: 8,
            seq_len: 64,
            lr: self.lr,
            warmup_steps: 0,
            decay: crate::optim::schedule::Decay::Constant,
            seed: self.seed,
            eval_batches: 4,
            ..TrainConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let origin = "federated config";
        if self.clients == 0 || self.clients > 64 {
            return Err(Error::config(origin, "clients", format!("is {}; use 1 to 64", self.clients)));
        }
        for (field, n) in [("rounds", self.rounds), ("local_steps", self.local_steps)] {
            if n == 0 {
                return Err(Error::config(origin, field, "is 0; use at least 1"));
            }
        }
        if self.examples_per_client < 8 {
            return Err(Error::config(origin, "examples_per_client", format!("is {}; a shard needs at least one batch of 8", self.examples_per_client)));
        }
        Ok(())
    }
}

/// One round: each client's held-out loss after its local steps, the averaged model's, and
/// the pooled baseline's after as many steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Round {
    pub round: usize,
    pub clients: Vec<f32>,
    pub averaged: f32,
    pub pooled: f32,
}

/// A federated run in progress.
pub struct Federated {
    pub config: FedConfig,
    /// The server's model: the latest average.
    pub global: Gpt,
    /// The baseline trained on every shard pooled, and its trainer (kept across rounds).
    pooled: Trainer,
    shards: Vec<Dataset>,
    eval: Dataset,
    /// The global model's held-out loss before any round.
    pub start_loss: f32,
}

impl Federated {
    /// `base` (on an autodiff `device`) with the task's training examples dealt into
    /// `clients` disjoint shards.
    pub fn new(base: Gpt, tok: &TextTokenizer, config: FedConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let train = config.train_config();
        let all = config.task.examples(config.seed, Split::Train, config.clients * config.examples_per_client);
        let shards = all.chunks(config.examples_per_client).map(|c| Dataset::from_examples(tok, c, train.seq_len, 0.0)).collect::<Result<Vec<_>>>()?;
        let pooled_data = Dataset::from_examples(tok, &all, train.seq_len, 0.0)?;
        let eval = Dataset::from_examples(tok, &config.task.examples(config.seed, Split::Eval, 64), train.seq_len, 0.0)?;
        let pooled_config = TrainConfig { steps: config.rounds * config.local_steps, ..train };
        let pooled = Trainer::from_datasets(base.clone(), pooled_config, pooled_data, eval.clone(), device)?;
        let start_loss = eval_loss(&base.valid(), &eval, 8, 64, usize::MAX)?;
        Ok(Self { config, global: base, pooled, shards, eval, start_loss })
    }

    /// Client `i`'s trainer for this round: the global model, its own shard, fresh state.
    pub fn client(&self, i: usize, device: &Device) -> Result<Trainer> {
        let config = TrainConfig { seed: self.config.seed + i as u64, ..self.config.train_config() };
        Trainer::from_datasets(self.global.clone(), config, self.shards[i].clone(), self.eval.clone(), device)
    }

    /// The pooled baseline's trainer, to step `local_steps` times per round.
    pub fn pooled(&mut self) -> &mut Trainer {
        &mut self.pooled
    }

    /// The server's step: the clients' models (after their local steps) averaged, weighted by
    /// their shards' sizes (equal here), into the new global model; every model scored.
    pub fn average(&mut self, round: usize, clients: &[Gpt], device: &Device) -> Result<Round> {
        if clients.len() != self.config.clients {
            return Err(Error::config("federated config", "clients", format!("{} models came back from {} clients", clients.len(), self.config.clients)));
        }
        let names: Vec<String> = (0..clients.len()).map(|i| format!("client-{i}")).collect();
        let entries: String = names.iter().map(|n| format!("  - model: {n}\n    parameters: {{weight: 1.0}}\n")).collect();
        let config = MergeConfig::from_yaml(&format!("models:\n{entries}merge_method: linear\ndtype: float32\n"), "federated averaging")?;
        let valid: Vec<(String, Gpt)> = names.iter().cloned().zip(clients.iter().map(|m| m.valid())).collect();
        // Loaded on the training device: the next round's clients start from it.
        let averaged = merge_models(&config, &valid, 0, device)?;
        let score = |m: &Gpt| eval_loss(m, &self.eval, 8, 64, usize::MAX);
        let client_losses = valid.iter().map(|(_, m)| score(m)).collect::<Result<Vec<_>>>()?;
        let averaged_loss = score(&averaged.valid())?;
        let pooled = score(&self.pooled.model.valid())?;
        self.global = averaged;
        Ok(Round { round, clients: client_losses, averaged: averaged_loss, pooled })
    }

    /// Every round, synchronously: what `tinytune federated` runs.
    pub fn run(&mut self, device: &Device) -> Result<Vec<Round>> {
        let mut rounds = Vec::new();
        for r in 1..=self.config.rounds {
            let mut models = Vec::new();
            for i in 0..self.config.clients {
                let mut t = self.client(i, device)?;
                for _ in 0..self.config.local_steps {
                    t.step()?;
                }
                models.push(t.model);
            }
            for _ in 0..self.config.local_steps {
                self.pooled.step()?;
            }
            rounds.push(self.average(r, &models, device)?);
        }
        Ok(rounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::CHARSET;
    use crate::model::ModelConfig;

    fn setup(clients: usize) -> (Federated, Device) {
        let device = Device::flex().autodiff();
        let tok = TextTokenizer::char_level(CHARSET);
        let mut config = ModelConfig::nano();
        config.vocab_size = tok.vocab_size();
        let base = Gpt::init(&config, 0, &device);
        let fed = FedConfig { clients, rounds: 2, local_steps: 3, lr: 1e-2, examples_per_client: 16, ..FedConfig::default() };
        (Federated::new(base, &tok, fed, &device).unwrap(), device)
    }

    #[test]
    fn one_client_averages_to_itself_and_the_rounds_learn() {
        let (mut fed, device) = setup(1);
        let mut t = fed.client(0, &device).unwrap();
        for _ in 0..3 {
            t.step().unwrap();
        }
        let round = fed.average(1, &[t.model], &device).unwrap();
        assert!((round.averaged - round.clients[0]).abs() < 1e-5, "{round:?}");
        let (mut fed, device) = setup(3);
        let start = fed.start_loss;
        let rounds = fed.run(&device).unwrap();
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0].clients.len(), 3);
        assert!(rounds[1].averaged < start, "{start} -> {rounds:?}");
        // The shards are disjoint: clients saw different data, so they came back different.
        assert!(rounds[0].clients.windows(2).any(|w| w[0] != w[1]), "{rounds:?}");
    }
}
