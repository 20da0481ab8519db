//! Calibration: a few batches of the model's own training data, run through the blocks one
//! at a time so that a pruning rule can read each block's input, output and projection
//! inputs (`model::record`).

use burn::tensor::Tensor;

use crate::data::Split;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::attention::RopeTables;
use crate::tokenizer::TextTokenizer;
use crate::train::{Batch, DataSource};

/// `batches` batches of `rows` rows of `seq_len` tokens from the training split of `data`
/// (generated with `seed`), in order. Every token of a row counts, prompt included (its
/// weight is 1); padding counts 0 (`Batch::weights` is the mask).
pub fn calibration_batches(data: &DataSource, tok: &TextTokenizer, seed: u64, batches: usize, rows: usize, seq_len: usize) -> Result<Vec<Batch>> {
    if let DataSource::Pairs(..) = data {
        return Err(Error::config(super::ORIGIN, "data", format!("{data} is preference pairs; pruning calibrates on plain text: stories or a task")));
    }
    if batches == 0 {
        return Err(Error::config(super::ORIGIN, "calibration_batches", "must be at least 1: the activations come from these batches"));
    }
    // Rows for a task; documents for the story stream, as many as `batches` full windows
    // need (stories differ in length, so more are drawn until they fill them).
    let mut n = (batches * rows).max(16);
    loop {
        let ds = data.dataset(tok, seed, Split::Train, n, seq_len, 1.0)?;
        let out = ds.sequential(rows, seq_len, batches);
        if out.len() >= batches || n >= 1 << 16 {
            if out.is_empty() {
                return Err(Error::config(super::ORIGIN, "data", format!("{data} gives no full calibration batch of {rows} rows of {seq_len} tokens")));
            }
            return Ok(out);
        }
        n *= 2;
    }
}

/// The calibration batches embedded (the blocks' first input), their masks, the counted
/// tokens, and the rotary tables (Llama family) they share.
pub(crate) struct Embedded {
    pub xs: Vec<Tensor<3>>,
    pub masks: Vec<Vec<f32>>,
    pub tokens: f64,
    pub rope: Option<RopeTables>,
}

pub(crate) fn embed(model: &Gpt, batches: &[Batch]) -> Result<Embedded> {
    let Some(t) = batches.first().map(|b| b.t) else {
        return Err(Error::config(super::ORIGIN, "calibration_batches", "must be at least 1: this pruning rule reads activations"));
    };
    let device = model.device();
    let rope = model.config.family.is_llama_like().then(|| RopeTables::new(&model.config, 0, t, &device));
    let mut out = Embedded { xs: Vec::new(), masks: Vec::new(), tokens: 0.0, rope };
    for batch in batches {
        let (ids, _, _) = batch.to_device(&device);
        out.xs.push(model.drop.forward(model.embed(ids)));
        out.tokens += batch.weights.iter().map(|&w| w as f64).sum::<f64>();
        out.masks.push(batch.weights.clone());
    }
    if out.tokens == 0.0 {
        return Err(Error::config(super::ORIGIN, "data", "the calibration batches hold no tokens; use a task or stories"));
    }
    Ok(out)
}

/// Each position's cosine similarity between `a` and `b` (`[B, T, C]` each), `B·T` values
/// in row-major order.
pub(crate) fn cosine(a: Tensor<3>, b: Tensor<3>) -> Vec<f32> {
    let dot = (a.clone() * b.clone()).sum_dim(2);
    let na = (a.clone() * a).sum_dim(2).sqrt();
    let nb = (b.clone() * b).sum_dim(2).sqrt();
    let cos = dot / (na * nb).clamp_min(1e-12);
    cos.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 values")
}
