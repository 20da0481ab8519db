//! Unstructured pruning: zeroing single weights of the blocks' linear maps (every attention
//! and MLP projection; embeddings, the LM head, norms and biases stay).
//!
//! Scores, per weight of a matrix in `nn.Linear`'s `[out, in]` layout (tinytune stores
//! `[in, out]` and transposes around this):
//! - magnitude (Han et al., 2015): `|W_ij|`; the lowest `floor(s·n)` of each matrix
//!   (scope layer) or of all of them together (scope global) become zero;
//! - Wanda (Sun et al., 2023): `|W_ij| · ‖X_j‖₂`, `X_j` the j-th input feature over the
//!   calibration tokens; the lowest `floor(s·d_in)` of each output row become zero. As in the
//!   paper's code, blocks are pruned first to last, each block's inputs computed by the
//!   blocks before it already pruned; a block's projections are scored from one pass of the
//!   block itself, unpruned.
//!
//! An N:M pattern instead zeroes the N lowest scores of every M consecutive inputs of each
//! output row (2:4: two of every four, the layout NVIDIA's sparse tensor cores run).
//! Ties go to the lower index (`select::lowest`).

use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use super::select::{lowest, share_of};
use super::{Criterion, Scope, Target, Unstructured, calibrate};
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::projection::Projection;
use crate::model::record::Recorder;
use crate::train::Batch;

/// One weight matrix after pruning.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatrixReport {
    /// The projection's parameter path (`h.0.attn.c_attn`).
    pub path: String,
    /// `[out, in]`, as `nn.Linear` holds it.
    pub shape: [usize; 2],
    /// Weights that are zero now (already-zero weights included).
    pub zeros: usize,
}

/// What unstructured pruning did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnstructuredReport {
    pub criterion: Criterion,
    pub scope: Scope,
    /// The share asked for (`floor(sparsity · n)` per matrix, row or in all), or None for a pattern.
    pub sparsity: Option<f64>,
    /// `"2:4"`, when a pattern was asked for.
    pub pattern: Option<String>,
    /// Tokens Wanda's input norms were measured over (None for magnitude).
    pub calibration_tokens: Option<f64>,
    pub matrices: Vec<MatrixReport>,
}

impl UnstructuredReport {
    /// Zero weights over all pruned matrices, and their size.
    pub fn zeros(&self) -> (usize, usize) {
        self.matrices.iter().fold((0, 0), |(z, n), m| (z + m.zeros, n + m.shape[0] * m.shape[1]))
    }
}

/// A projection's weight as `[out, in]`, row-major, on the host.
fn linear_weight(p: &Projection) -> Result<(Vec<f32>, usize, usize)> {
    let Some(w) = &p.weight else {
        return Err(Error::Invalid("this model's base weights are quantized (QLoRA); prune the FP32 model".into()));
    };
    let [d_in, d_out] = w.dims();
    let data = w.val().transpose().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights");
    Ok((data, d_out, d_in))
}

/// Writes `[out, in]` values back into the projection's `[in, out]` weight.
fn set_linear_weight(p: &mut Projection, values: Vec<f32>, d_out: usize, d_in: usize) {
    let w = p.weight.take().expect("checked by linear_weight");
    let device = w.val().device();
    let t = Tensor::<2>::from_data(TensorData::new(values, [d_out, d_in]), &device).transpose();
    // Keep the parameter's id and training state; only the values change. A GGUF file's
    // blocks no longer hold these values.
    p.weight = Some(w.map(|_| t));
    p.source = None;
}

/// Which of a `[out, in]` matrix's scores to zero: the lowest `floor(s·n)` of the matrix
/// (`per_row` false) or of each row, or the N lowest of each group of M along a row.
pub fn matrix_mask(scores: &[f32], d_out: usize, d_in: usize, target: &Target, per_row: bool) -> Vec<bool> {
    match target {
        Target::Pattern(p) => scores.chunks(p.m).flat_map(|group| lowest(group, p.n)).collect(),
        Target::Sparsity(s) if per_row => scores.chunks(d_in.max(1)).flat_map(|row| lowest(row, share_of(*s, d_in))).collect(),
        Target::Sparsity(s) => lowest(scores, share_of(*s, d_out * d_in)),
    }
}

fn apply(values: &mut [f32], mask: &[bool]) {
    for (v, &gone) in values.iter_mut().zip(mask) {
        if gone {
            *v = 0.0;
        }
    }
}

/// Prunes every linear weight of `model`'s blocks as `plan` says (calibrating Wanda on
/// `calibration`).
pub fn prune_unstructured(mut model: Gpt, plan: &Unstructured, calibration: &[Batch]) -> Result<(Gpt, UnstructuredReport)> {
    let mut calibration_tokens = None;
    match (plan.criterion, plan.scope) {
        (Criterion::Magnitude, Scope::Layer) => {
            for block in model.h.iter_mut() {
                for (_, p) in block.projections_mut() {
                    let (mut w, d_out, d_in) = linear_weight(p)?;
                    let scores: Vec<f32> = w.iter().map(|x| x.abs()).collect();
                    apply(&mut w, &matrix_mask(&scores, d_out, d_in, &plan.target, false));
                    set_linear_weight(p, w, d_out, d_in);
                }
            }
        }
        (Criterion::Magnitude, Scope::Global) => {
            // One threshold over every matrix: their magnitudes side by side, block by block
            // in module order (which also orders ties).
            let mut all = Vec::new();
            for block in &model.h {
                for (_, p) in block.projections() {
                    let (w, ..) = linear_weight(p)?;
                    all.extend(w.iter().map(|x| x.abs()));
                }
            }
            let Target::Sparsity(s) = plan.target else { unreachable!("validated: global scope goes with a sparsity") };
            let mask = lowest(&all, share_of(s, all.len()));
            drop(all);
            let mut at = 0;
            for block in model.h.iter_mut() {
                for (_, p) in block.projections_mut() {
                    let (mut w, d_out, d_in) = linear_weight(p)?;
                    let n = w.len();
                    apply(&mut w, &mask[at..at + n]);
                    at += n;
                    set_linear_weight(p, w, d_out, d_in);
                }
            }
        }
        (Criterion::Wanda, _) => {
            let calib = calibrate::embed(&model, calibration)?;
            calibration_tokens = Some(calib.tokens);
            let rope = calib.rope.clone();
            let mut xs = calib.xs;
            for l in 0..model.h.len() {
                // The block's projection inputs, from the block as it is (unpruned) on the
                // outputs of the blocks before it (pruned).
                let recorder = Recorder::new();
                let prefix = format!("h.{l}.");
                recorder.attach(&mut model, |path| path.starts_with(&prefix).then_some(None));
                for (x, mask) in xs.iter().zip(&calib.masks) {
                    recorder.set_mask(Some(mask.clone()));
                    let _ = model.h[l].forward_with(x.clone(), None, rope.as_ref());
                }
                let stats = recorder.take();
                Recorder::detach(&mut model);
                for (name, p) in model.h[l].projections_mut() {
                    let path = format!("h.{l}.{name}");
                    let norms = stats.get(&path).map(|s| s.norms()).ok_or_else(|| Error::Invalid(format!("no activations were recorded for {path}")))?;
                    let (mut w, d_out, d_in) = linear_weight(p)?;
                    let scores: Vec<f32> = w.iter().enumerate().map(|(i, x)| x.abs() * norms[i % d_in]).collect();
                    apply(&mut w, &matrix_mask(&scores, d_out, d_in, &plan.target, true));
                    set_linear_weight(p, w, d_out, d_in);
                }
                xs = xs.into_iter().map(|x| model.h[l].forward_with(x, None, rope.as_ref())).collect();
            }
        }
    }
    let mut matrices = Vec::new();
    for (i, block) in model.h.iter().enumerate() {
        for (name, p) in block.projections() {
            let (w, d_out, d_in) = linear_weight(p)?;
            matrices.push(MatrixReport { path: format!("h.{i}.{name}"), shape: [d_out, d_in], zeros: w.iter().filter(|&&x| x == 0.0).count() });
        }
    }
    let (sparsity, pattern) = match plan.target {
        Target::Sparsity(s) => (Some(s), None),
        Target::Pattern(p) => (None, Some(p.to_string())),
    };
    Ok((model, UnstructuredReport { criterion: plan.criterion, scope: plan.scope, sparsity, pattern, calibration_tokens, matrices }))
}
