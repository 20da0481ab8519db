//! Settings of the `federated` widget. The worker runs federated averaging on the shipped
//! micro model through `tinytune::merging::federated`, as `tinytune federated` does: each
//! client fully fine-tunes the global model on its own shard of a task for a few steps, the
//! server averages their weights, and a model trained on the shards pooled runs beside them.

use crate::settings::{Field, Settings, assign, float, int, one_of};
use serde::{Deserialize, Serialize};
use tinytune::merging::federated::{FedConfig, Round};

pub const TASKS: [&str; 3] = ["sentiment", "json-extract", "story-qa"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedParams {
    pub task: String,
    pub clients: usize,
    pub rounds: usize,
    pub local_steps: usize,
    pub lr: f64,
}

impl Default for FederatedParams {
    fn default() -> Self {
        let d = FedConfig::default();
        Self { task: d.task.name().into(), clients: d.clients, rounds: d.rounds, local_steps: d.local_steps, lr: d.lr }
    }
}

impl FederatedParams {
    pub fn config(&self) -> Result<FedConfig, String> {
        Ok(FedConfig {
            task: self.task.parse()?,
            clients: self.clients,
            rounds: self.rounds,
            local_steps: self.local_steps,
            lr: self.lr,
            ..FedConfig::default()
        })
    }

    /// The native command that runs the same rounds.
    pub fn command(&self) -> String {
        format!(
            "tinytune federated --model assets/micro --task {} --clients {} --rounds {} --local-steps {} --lr {}",
            self.task, self.clients, self.rounds, self.local_steps, self.lr
        )
    }
}

/// The worker's answer: the held-out loss before any round, each round's, and the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedResult {
    pub start_loss: f32,
    pub rounds: Vec<Round>,
    pub seconds: f64,
}

impl Settings for FederatedParams {
    const NAME: &'static str = "federated";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "task", get: |p| p.task.clone(), set: |p, v| assign(&mut p.task, one_of(v, &TASKS)) },
            Field { key: "clients", get: |p| p.clients.to_string(), set: |p, v| assign(&mut p.clients, int(v, 1, 16)) },
            Field { key: "rounds", get: |p| p.rounds.to_string(), set: |p, v| assign(&mut p.rounds, int(v, 1, 50)) },
            Field { key: "local_steps", get: |p| p.local_steps.to_string(), set: |p, v| assign(&mut p.local_steps, int(v, 1, 200)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
        ]
    }
}
