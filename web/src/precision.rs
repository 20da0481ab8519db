//! The loss-scaling widget's settings and answer. The worker computes one batch's gradients
//! of the shipped micro model in FP16 (or BF16) unscaled and at the chosen scale, each
//! compared with FP32 (`tinytune::train::precision::underflow_reports`).

use serde::{Deserialize, Serialize};
use tinytune::train::precision::UnderflowReport;

/// Settings of the `loss-scaling` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalingParams {
    /// fp16 or bf16.
    pub precision: String,
    /// The loss scale is 2^scale_log2.
    pub scale_log2: u32,
    pub batch: usize,
    pub seq: usize,
}

impl Default for LossScalingParams {
    fn default() -> Self {
        Self { precision: "fp16".into(), scale_log2: 10, batch: 16, seq: 128 }
    }
}

impl LossScalingParams {
    pub fn scale(&self) -> f64 {
        2f64.powi(self.scale_log2 as i32)
    }
}

/// The worker's answer: the same batch unscaled and at the chosen scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScalingResult {
    pub unscaled: UnderflowReport,
    pub scaled: UnderflowReport,
}
