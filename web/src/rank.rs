//! Settings of the `lora-rank` widget. The worker fully fine-tunes the shipped micro model
//! on the CPU (the report reads weights back synchronously) and answers with
//! `tinytune::methods::rank::rank_report`; the fine-tuned model is kept, so moving the rank
//! slider only re-measures.

use crate::settings::{Field, Settings, assign, float, int, one_of};
use serde::{Deserialize, Serialize};

/// Micro's projections the widget can inspect.
pub const MATRICES: [&str; 8] =
    ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.3.attn.c_attn", "h.3.attn.c_proj", "h.3.mlp.c_fc", "h.3.mlp.c_proj"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankParams {
    pub matrix: String,
    pub rank: usize,
    /// Full fine-tuning steps on the sentiment task before measuring.
    pub steps: usize,
    pub lr: f64,
}

impl Default for RankParams {
    fn default() -> Self {
        Self { matrix: "h.3.attn.c_attn".into(), rank: 4, steps: 30, lr: 1e-3 }
    }
}

impl RankParams {
    /// The native command that measures the same thing.
    pub fn command(&self) -> String {
        format!(
            "tinytune lora-rank --model assets/micro --data sentiment --matrix {} --rank {} --steps {} --lr {} --batch 8 --seq-len 64",
            self.matrix, self.rank, self.steps, self.lr
        )
    }
}

impl Settings for RankParams {
    const NAME: &'static str = "lora-rank";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "matrix", get: |p| p.matrix.clone(), set: |p, v| assign(&mut p.matrix, one_of(v, &MATRICES)) },
            // micro is 128 wide, so every matrix has rank at most 128.
            Field { key: "rank", get: |p| p.rank.to_string(), set: |p, v| assign(&mut p.rank, int(v, 1, 128)) },
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 500)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
        ]
    }
}
