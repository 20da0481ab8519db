//! What each optimizer's state costs on a real model, measured from the optimizer objects
//! themselves after one real step, and what Adafactor's factorisation and 8-bit
//! quantization do to one weight's second moment (the `optimizer-state` widget; the same
//! numbers natively in tests).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::formats::blockwise::{dynamic_map, dynamic_map_unsigned};
use crate::model::named_params;
use crate::train::{Batch, Trainer};

use super::{NamedGrads, OptimConfig, OptimKind, Optimizer, Quant8, Slot};

/// One optimizer's state after one step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateRow {
    /// e.g. "adamw", "sgd + momentum".
    pub name: String,
    pub state_bytes: u64,
    pub bytes_per_param: f64,
    /// Named state tensors (slots) it holds.
    pub tensors: usize,
}

/// Adafactor's factored second moment of one weight against the full one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Factored {
    pub layer: String,
    pub rows: usize,
    pub cols: usize,
    /// Numbers stored: rows + cols (Adafactor) against rows·cols (AdamW's second moment).
    pub factored_numbers: usize,
    pub full_numbers: usize,
    /// ‖R·C/mean(R) − g²‖ / ‖g²‖ after the first step (where the full moment is exactly g²).
    pub relative_error: f64,
    /// A few entries: (full g², factored estimate), from the largest-gradient row.
    pub sample: Vec<(f32, f32)>,
}

/// 8-bit block-wise quantization of one weight's AdamW moments after a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EightBit {
    /// Relative RMS error of the dequantized first and second moments.
    pub exp_avg_error: f64,
    pub exp_avg_sq_error: f64,
    /// bitsandbytes' signed and unsigned dynamic maps (256 values each).
    pub signed_map: Vec<f32>,
    pub unsigned_map: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateReport {
    pub trainable: u64,
    pub rows: Vec<StateRow>,
    pub factored: Factored,
    pub eight_bit: EightBit,
}

fn copy(g: &NamedGrads) -> NamedGrads {
    NamedGrads(g.0.iter().map(|(n, t)| (n.clone(), t.clone())).collect())
}

fn host(s: Option<&Slot>, what: &str) -> Result<Vec<f32>> {
    s.map(Slot::values).ok_or_else(|| Error::Invalid(format!("no optimizer state named {what}")))
}

fn rel_rms(approx: &[f32], exact: &[f32]) -> f64 {
    let num: f64 = approx.iter().zip(exact).map(|(a, e)| ((a - e) as f64).powi(2)).sum();
    let den: f64 = exact.iter().map(|e| (*e as f64).powi(2)).sum();
    if den == 0.0 { 0.0 } else { (num / den).sqrt() }
}

/// Runs one step of every optimizer on `batch`'s gradients of `trainer.model` and reports
/// their state; `layer` (e.g. `h.0.mlp.c_fc`) is the weight whose second moment is shown.
pub fn state_report(trainer: &Trainer, batch: &Batch, layer: &str) -> Result<StateReport> {
    let params = named_params(&trainer.model);
    let weight = format!("{layer}.weight");
    let Some(w) = params.iter().find(|p| p.name == weight && p.shape.len() == 2) else {
        let names: Vec<&str> = params.iter().filter(|p| p.shape.len() == 2).filter_map(|p| p.name.strip_suffix(".weight")).collect();
        return Err(Error::Invalid(format!("no weight matrix named {layer}; the model has {}", names.join(", "))));
    };
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let trainable: u64 = params.iter().filter(|p| p.trainable).map(|p| p.numel as u64).sum();
    let (_, grads) = trainer.forward_backward(batch);
    let lr = 1e-3;
    let mut report_rows = Vec::new();
    let mut adamw = None;
    let mut adafactor = None;
    let kinds = [
        ("sgd", OptimConfig::for_kind(OptimKind::Sgd)),
        ("sgd + momentum 0.9", OptimConfig { momentum: 0.9, ..OptimConfig::for_kind(OptimKind::Sgd) }),
        ("adamw", OptimConfig::for_kind(OptimKind::AdamW)),
        ("adafactor", OptimConfig::for_kind(OptimKind::Adafactor)),
        ("lion", OptimConfig::for_kind(OptimKind::Lion)),
        ("adamw8bit", OptimConfig::for_kind(OptimKind::AdamW8bit)),
        ("mezo", OptimConfig::for_kind(OptimKind::Mezo)),
    ];
    for (name, config) in kinds {
        let kind = config.kind;
        let mut optim = Optimizer::new(config);
        drop(optim.step(lr, trainer.model.clone(), copy(&grads)));
        let state_bytes = optim.state_bytes() as u64;
        report_rows.push(StateRow {
            name: name.into(),
            state_bytes,
            bytes_per_param: state_bytes as f64 / trainable.max(1) as f64,
            tensors: optim.state.len(),
        });
        match kind {
            OptimKind::AdamW => adamw = Some(optim),
            OptimKind::Adafactor => adafactor = Some(optim),
            _ => {}
        }
    }
    let (adamw, adafactor) = (adamw.expect("adamw ran"), adafactor.expect("adafactor ran"));
    // After one step AdamW's second moment is (1 − β2)·g²: divide it back out.
    let one_minus_b2 = (1.0 - adamw.config.beta2) as f32;
    let g2: Vec<f32> = host(adamw.state.get(&format!("{weight}.exp_avg_sq")), "exp_avg_sq")?.iter().map(|v| v / one_minus_b2).collect();
    let r = host(adafactor.state.get(&format!("{weight}.exp_avg_sq_row")), "exp_avg_sq_row")?;
    let c = host(adafactor.state.get(&format!("{weight}.exp_avg_sq_col")), "exp_avg_sq_col")?;
    let mean_r = (r.iter().map(|&v| v as f64).sum::<f64>() / r.len() as f64).max(f32::EPSILON as f64) as f32;
    let est: Vec<f32> = (0..rows * cols).map(|i| r[i / cols] * c[i % cols] / mean_r).collect();
    let top = (0..rows).max_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap_or(0);
    let sample = (0..cols.min(6)).map(|j| (g2[top * cols + j], est[top * cols + j])).collect();
    let factored =
        Factored { layer: layer.into(), rows, cols, factored_numbers: rows + cols, full_numbers: rows * cols, relative_error: rel_rms(&est, &g2), sample };

    let m = host(adamw.state.get(&format!("{weight}.exp_avg")), "exp_avg")?;
    let v = host(adamw.state.get(&format!("{weight}.exp_avg_sq")), "exp_avg_sq")?;
    let eight_bit = EightBit {
        exp_avg_error: rel_rms(&Quant8::quantize(&m, true).dequantize(), &m),
        exp_avg_sq_error: rel_rms(&Quant8::quantize(&v, false).dequantize(), &v),
        signed_map: dynamic_map().to_vec(),
        unsigned_map: dynamic_map_unsigned().to_vec(),
    };
    Ok(StateReport { trainable, rows: report_rows, factored, eight_bit })
}
