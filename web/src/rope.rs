//! Settings of the `rope` widget. The page draws each RoPE scaling's wavelengths per
//! dimension pair straight from core (`train::positions::rotation_curves`); the worker
//! loads the shipped micro-llama checkpoint (trained at 128 tokens) and measures held-out
//! loss at every position of longer windows under each scaling, exactly as
//! `tinytune long-context` does.

use crate::settings::{Field, Settings, assign, int, one_of};
use serde::{Deserialize, Serialize};

/// micro-llama's context: the length it was pre-trained at (`max_position_embeddings`).
pub const CONTEXT: usize = 128;

/// Heads whose rotations the widget can draw: (name, rope_theta, head_dim, original context).
/// Llama 3.1 8B's figures are from its `config.json` (`rope_theta` 500000, 4096 / 32 heads,
/// `original_max_position_embeddings` 8192).
pub const HEADS: [(&str, f64, usize, usize); 2] = [("micro-llama", 10000.0, 32, CONTEXT), ("llama-3.1-8b", 500000.0, 128, 8192)];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeParams {
    /// How many times the training context to reach.
    pub factor: usize,
    /// Held-out windows the loss is averaged over.
    pub windows: usize,
    /// Whose rotations the frequency chart draws (one of [`HEADS`]).
    pub head: String,
}

impl Default for RopeParams {
    fn default() -> Self {
        Self { factor: 4, windows: 4, head: "micro-llama".into() }
    }
}

impl RopeParams {
    /// The window length the loss is measured at.
    pub fn length(&self) -> usize {
        CONTEXT * self.factor
    }

    /// The chosen head's (rope_theta, head_dim, original context).
    pub fn head_shape(&self) -> (f64, usize, usize) {
        HEADS.iter().find(|h| h.0 == self.head).map(|h| (h.1, h.2, h.3)).unwrap_or((HEADS[0].1, HEADS[0].2, HEADS[0].3))
    }

    /// The native command that measures the same losses.
    pub fn command(&self) -> String {
        format!("tinytune long-context --model assets/micro-llama --length {} --windows {} --finetune-steps 0", self.length(), self.windows)
    }
}

/// The worker's answer: held-out loss at each position of `length`-token windows, per
/// scaling, for a model trained at `context`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeResult {
    pub context: usize,
    pub length: usize,
    pub windows: usize,
    pub rows: Vec<(String, Vec<f64>)>,
}

impl Settings for RopeParams {
    const NAME: &'static str = "rope";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "factor", get: |p| p.factor.to_string(), set: |p, v| assign(&mut p.factor, int(v, 2, 8)) },
            Field { key: "windows", get: |p| p.windows.to_string(), set: |p, v| assign(&mut p.windows, int(v, 1, 16)) },
            Field { key: "head", get: |p| p.head.clone(), set: |p, v| assign(&mut p.head, one_of(v, &HEADS.map(|h| h.0))) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_measures_what_the_widget_does() {
        let p = RopeParams { factor: 3, windows: 8, head: "llama-3.1-8b".into() };
        assert_eq!(p.command(), "tinytune long-context --model assets/micro-llama --length 384 --windows 8 --finetune-steps 0");
        assert_eq!(p.head_shape(), (500000.0, 128, 8192));
        // The shipped checkpoint's context is the constant the widget assumes.
        let config: serde_json::Value = serde_json::from_str(include_str!("../../assets/micro-llama/config.json")).unwrap();
        assert_eq!(config["max_position_embeddings"], CONTEXT);
        assert_eq!(config["head_dim"], HEADS[0].2);
        assert_eq!(config["rope_theta"], HEADS[0].1);
    }
}
