//! The loss-scaling widget's settings and answer. The worker computes one batch's gradients
//! of the shipped micro model in FP16 (or BF16) unscaled and at the chosen scale, each
//! compared with FP32 (`tinytune::train::precision::underflow_reports`).

use crate::settings::{Field, Settings, assign, int, one_of};
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

impl Settings for LossScalingParams {
    const NAME: &'static str = "loss-scaling";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "precision", get: |p| p.precision.clone(), set: |p, v| assign(&mut p.precision, one_of(v, &["fp16", "bf16"])) },
            Field { key: "scale_log2", get: |p| p.scale_log2.to_string(), set: |p, v| assign(&mut p.scale_log2, int(v, 0, 24).map(|x| x as u32)) },
            Field { key: "batch", get: |p| p.batch.to_string(), set: |p, v| assign(&mut p.batch, int(v, 1, 32)) },
            Field { key: "seq", get: |p| p.seq.to_string(), set: |p, v| assign(&mut p.seq, int(v, 8, 128)) },
        ]
    }
}
