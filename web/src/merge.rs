//! Settings of the `merge` widget. The worker fully fine-tunes two copies of the shipped
//! micro model, one on sentiment (task A) and one on json-extract (task B), then merges them
//! with every method through `tinytune::merging::study` (mergekit's YAML and semantics) and
//! scores each merge on both tasks, as `tinytune merge-study` does. The fine-tunes are kept,
//! so moving a slider only merges and scores again.

use crate::settings::{Field, Settings, assign, float, int, one_of};
use serde::{Deserialize, Serialize};
use tinytune::merging::study::{Knobs, METHODS, Scored};

/// Held-out rows per task for the loss, and prompts answered for the accuracy.
pub const EXAMPLES: usize = 32;
pub const ACCURACY_EXAMPLES: usize = 16;

/// The shares of model B the chosen method's curve is scored at.
pub const CURVE: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeParams {
    /// The method whose curve is drawn (every method is scored at `t`).
    pub method: String,
    /// Model B's share: weights 1 − t and t.
    pub t: f64,
    /// Share of each task vector TIES, DARE and breadcrumbs keep.
    pub density: f64,
    /// Scale of the task-vector methods' sum.
    pub lambda: f64,
    /// Full fine-tuning steps of each copy.
    pub steps: usize,
    pub lr: f64,
}

impl Default for MergeParams {
    fn default() -> Self {
        Self { method: "ties".into(), t: 0.5, density: 0.5, lambda: 1.0, steps: 60, lr: 3e-3 }
    }
}

impl MergeParams {
    pub fn knobs(&self) -> Knobs {
        Knobs { method: self.method.clone(), t: self.t, density: self.density, lambda: self.lambda, seed: 0 }
    }

    /// The native command that computes the same table (and keeps the fine-tunes and each
    /// method's YAML for `tinytune merge`).
    pub fn command(&self) -> String {
        format!(
            "tinytune merge-study --model assets/micro --task-a sentiment --task-b json-extract --steps {} --lr {} --t {} --density {} --lambda {} --curve {} --examples {EXAMPLES} --accuracy-examples {ACCURACY_EXAMPLES} --save-dir runs/merge-study",
            self.steps, self.lr, self.t, self.density, self.lambda, self.method
        )
    }
}

/// The worker's answer: the base and both fine-tunes, every method at `t`, the chosen
/// method along [`CURVE`], that merge's mergekit YAML, and how long training and scoring took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MergeResult {
    pub endpoints: Vec<Scored>,
    pub methods: Vec<Scored>,
    pub curve: Vec<Scored>,
    pub yaml: String,
    pub train_seconds: f64,
    pub score_seconds: f64,
}

impl Settings for MergeParams {
    const NAME: &'static str = "merge";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "method", get: |p| p.method.clone(), set: |p, v| assign(&mut p.method, one_of(v, &METHODS)) },
            Field { key: "t", get: |p| p.t.to_string(), set: |p, v| assign(&mut p.t, float(v, 0.0, 1.0)) },
            Field { key: "density", get: |p| p.density.to_string(), set: |p, v| assign(&mut p.density, float(v, 0.01, 1.0)) },
            Field { key: "lambda", get: |p| p.lambda.to_string(), set: |p, v| assign(&mut p.lambda, float(v, 0.0, 4.0)) },
            Field { key: "steps", get: |p| p.steps.to_string(), set: |p, v| assign(&mut p.steps, int(v, 1, 1000)) },
            Field { key: "lr", get: |p| p.lr.to_string(), set: |p, v| assign(&mut p.lr, float(v, 1e-6, 1.0)) },
        ]
    }
}
