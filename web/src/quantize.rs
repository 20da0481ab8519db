//! The quantize widget's settings and the pure parts of its answer (histograms, the levels
//! of one block), tested natively; the worker runs the model.

use crate::settings::{Field, Settings, assign, boolean, int, one_of};
use serde::{Deserialize, Serialize};
use tinytune::formats::ptq::QuantReport;

/// Formats the quantize widget offers (FP32 would change nothing).
pub const QUANT_FORMATS: [&str; 9] = ["int8", "int8-asym", "int4", "nf4", "fp4", "fp8-e4m3", "fp8-e5m2", "bf16", "fp16"];
/// The micro model's linear weights a reader can inspect.
pub const LAYERS: [&str; 8] =
    ["h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.3.attn.c_attn", "h.3.attn.c_proj", "h.3.mlp.c_fc", "h.3.mlp.c_proj"];

/// Settings of the `quantize` widget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeParams {
    pub format: String,
    pub block: usize,
    pub double_quant: bool,
    /// Which weight matrix the histogram shows.
    pub layer: String,
}

impl Default for QuantizeParams {
    fn default() -> Self {
        Self { format: "nf4".into(), block: 64, double_quant: false, layer: "h.0.mlp.c_fc".into() }
    }
}

/// Weights before and after, binned on one axis; and the levels of the block holding the
/// largest weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub lo: f32,
    pub hi: f32,
    pub before: Vec<u32>,
    pub after: Vec<u32>,
    /// Distinct dequantized values in the block with the largest |weight|: the grid every
    /// value of that block was snapped to (for a 4-bit format, at most 16).
    pub block_levels: Vec<f32>,
}

/// Bins `before` and `after` (same length) into `bins` bins over before's range.
pub fn histogram(before: &[f32], after: &[f32], bins: usize, block: usize) -> Histogram {
    let lo = before.iter().chain(after).fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = before.iter().chain(after).fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let width = ((hi - lo) / bins as f32).max(f32::MIN_POSITIVE);
    let count = |v: &[f32]| {
        let mut c = vec![0u32; bins];
        for &x in v {
            c[(((x - lo) / width) as usize).min(bins - 1)] += 1;
        }
        c
    };
    let biggest = before.iter().enumerate().fold((0, 0f32), |(i, m), (j, &x)| if x.abs() > m { (j, x.abs()) } else { (i, m) }).0;
    let start = biggest / block * block;
    let mut block_levels: Vec<f32> = after[start..(start + block).min(after.len())].to_vec();
    block_levels.sort_by(|a, b| a.partial_cmp(b).unwrap());
    block_levels.dedup();
    Histogram { lo, hi, before: count(before), after: count(after), block_levels }
}

/// A Conv1D weight (`[in, out]`, row-major) in `torch.nn.Linear`'s `[out, in]` order.
pub fn to_linear_layout(w: &[f32], d_in: usize, d_out: usize) -> Vec<f32> {
    (0..d_out).flat_map(|o| (0..d_in).map(move |i| w[i * d_out + o])).collect()
}

/// The worker's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeResult {
    pub report: QuantReport,
    pub loss_before: f32,
    pub loss_after: f32,
    pub histogram: Histogram,
    pub sample_before: String,
    pub sample_after: String,
}

impl Settings for QuantizeParams {
    const NAME: &'static str = "quantize";
    fn fields() -> Vec<Field<Self>> {
        vec![
            Field { key: "format", get: |p| p.format.clone(), set: |p, v| assign(&mut p.format, one_of(v, &QUANT_FORMATS)) },
            Field { key: "block", get: |p| p.block.to_string(), set: |p, v| assign(&mut p.block, int(v, 2, 65536)) },
            Field { key: "double_quant", get: |p| p.double_quant.to_string(), set: |p, v| assign(&mut p.double_quant, boolean(v)) },
            Field { key: "layer", get: |p| p.layer.clone(), set: |p, v| assign(&mut p.layer, one_of(v, &LAYERS)) },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_layout_is_the_transpose() {
        // [in=2, out=3]: rows are inputs.
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(to_linear_layout(&w, 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn histograms_count_every_value_and_levels_are_the_blocks_grid() {
        let before: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) / 100.0).collect();
        let after: Vec<f32> = before.iter().map(|v| (v * 2.0).round() / 2.0).collect();
        let h = histogram(&before, &after, 10, 64);
        assert_eq!(h.before.iter().sum::<u32>(), 256);
        assert_eq!(h.after.iter().sum::<u32>(), 256);
        // The largest |weight| is -1.28 at index 0: its block's values round to -1.5 … -0.5.
        assert_eq!(h.block_levels, vec![-1.5, -1.0, -0.5]);
    }
}
