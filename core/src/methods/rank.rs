//! What rank a fine-tune needs, measured: the update `ΔW = W_tuned − W_base` that full
//! fine-tuning learned for one weight matrix, its singular values next to W's own, how much
//! of it a rank-r update keeps, what the model loses when every projection's update is cut
//! to rank r, the output difference between a rank-r LoRA kept beside W and merged into
//! it, and how close W comes back when that merge is undone (the `lora-rank` widget and
//! `tinytune lora-rank`).

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{LoraConfig, for_each_projection, for_each_projection_ref, merge_in_place, unmerge};
use crate::error::{Error, Result};
use crate::linalg::{Svd, svd};
use crate::model::Gpt;
use crate::train::{DataSource, Dataset, TrainConfig, eval_loss};

/// The full fine-tune the report measures, on `data`: `tinytune lora-rank` and the
/// `lora-rank` widget both build it here, so the same settings give the same run.
pub fn finetune_config(data: DataSource, steps: usize, lr: f64, batch_size: usize, seq_len: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        data,
        train_examples: 2000,
        eval_examples: 100,
        steps,
        batch_size,
        seq_len,
        lr,
        warmup_steps: steps / 10,
        seed,
        eval_batches: 4,
        ..TrainConfig::default()
    }
}

/// The report for one matrix and one rank.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    /// The projection, e.g. `h.3.attn.c_attn`, and its shape `[d_in, d_out]`.
    pub matrix: String,
    pub d_in: usize,
    pub d_out: usize,
    pub rank: usize,
    /// Numbers a dense update of this matrix trains, and a rank-r LoRA: r·(d_in + d_out).
    pub dense_params: usize,
    pub lora_params: usize,
    /// Singular values of the learned update ΔW, largest first.
    pub delta_spectrum: Vec<f64>,
    /// Singular values of the pretrained W itself, for comparison.
    pub weight_spectrum: Vec<f64>,
    /// Share of ΔW's energy (sum of σ²) in its top r singular values.
    pub energy_kept: f64,
    /// ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F: what rank r cannot express (Eckart–Young: no rank-r matrix
    /// does better).
    pub relative_error: f64,
    /// Smallest rank that keeps 90% of ΔW's energy, and the same for W.
    pub rank_for_90: usize,
    pub weight_rank_for_90: usize,
    /// Held-out loss of the base model, the fully fine-tuned one, and the fine-tuned one with
    /// every projection's update cut to rank r (everything else as fine-tuned).
    pub loss_base: f32,
    pub loss_full: f32,
    pub loss_truncated: f32,
    /// Largest |logit| difference between a rank-r LoRA (A·B = ΔW_r on this matrix) computed
    /// beside W and the same update merged into W, over one held-out batch.
    pub merge_max_diff: f32,
    /// Largest |W_after − W_before| on this matrix after merging that LoRA into W in place
    /// and unmerging it: the rounding a merge/unmerge round trip leaves behind.
    pub unmerge_max_diff: f32,
}

fn weight_of(model: &Gpt, matrix: &str) -> Option<(Vec<f32>, usize, usize)> {
    let mut out = None;
    for_each_projection_ref(model, |path, p| {
        if path == matrix {
            out = Some((p.base_weight().into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 weights"), p.d_in(), p.d_out()));
        }
    });
    out
}

fn energy_share(s: &[f64], r: usize) -> f64 {
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 { 1.0 } else { s.iter().take(r).map(|x| x * x).sum::<f64>() / total }
}

fn rank_for(s: &[f64], share: f64) -> usize {
    (1..=s.len()).find(|&r| energy_share(s, r) >= share).unwrap_or(s.len())
}

fn delta(base: &[f32], tuned: &[f32]) -> Vec<f32> {
    tuned.iter().zip(base).map(|(t, b)| t - b).collect()
}

/// `matrix`'s report at `rank`, from a base model and the same model after full
/// fine-tuning (both on `device`, which must read tensors back synchronously: a CPU).
/// Losses are over up to `batches` held-out batches of `b × t` from `eval`.
#[allow(clippy::too_many_arguments)]
pub fn rank_report(
    base: &Gpt,
    tuned: &Gpt,
    matrix: &str,
    rank: usize,
    eval: &Dataset,
    b: usize,
    t: usize,
    batches: usize,
    device: &Device,
) -> Result<RankReport> {
    let mut paths = Vec::new();
    for_each_projection_ref(base, |p, _| paths.push(p.to_string()));
    let (w, d_in, d_out) = weight_of(base, matrix)
        .ok_or_else(|| Error::config("lora-rank", "matrix", format!("no projection is called '{matrix}'; choose one of {}", paths.join(", "))))?;
    if rank == 0 || rank > d_in.min(d_out) {
        return Err(Error::config("lora-rank", "rank", format!("{rank} is not between 1 and {} for {matrix} ({d_in}×{d_out})", d_in.min(d_out))));
    }
    let (w_tuned, _, _) = weight_of(tuned, matrix).ok_or_else(|| Error::Invalid(format!("the fine-tuned model has no {matrix}")))?;
    let dw = svd(&delta(&w, &w_tuned), d_in, d_out);
    let ws = svd(&w, d_in, d_out);
    let energy_kept = energy_share(&dw.s, rank);

    // Every projection's update cut to rank r; embeddings, norms and biases as fine-tuned.
    let mut truncated = tuned.clone();
    let mut failure = None;
    for_each_projection(&mut truncated, |path, p| {
        let (Some((wb, i, o)), Some((wt, _, _))) = (weight_of(base, path), weight_of(tuned, path)) else {
            failure = Some(path.to_string());
            return;
        };
        // The charted matrix's SVD is `dw`, already computed.
        let kept = if path == matrix { dw.truncated(rank) } else { svd(&delta(&wb, &wt), i, o).truncated(rank) };
        let new: Vec<f32> = wb.iter().zip(&kept).map(|(b, k)| (*b as f64 + k) as f32).collect();
        let t = Tensor::<2>::from_data(TensorData::new(new, [i, o]), device);
        p.weight = p.weight.take().map(|w| w.map(|_| t));
    });
    if let Some(path) = failure {
        return Err(Error::Invalid(format!("{path} has no FP32 weight to compare")));
    }
    let loss = |m: &Gpt| eval_loss(&m.valid(), eval, b, t, batches);
    let (merge_max_diff, unmerge_max_diff) = merge_difference(base, matrix, &dw, rank, eval, b, t, device)?;
    let (loss_base, loss_full, loss_truncated) = (loss(base)?, loss(tuned)?, loss(&truncated)?);

    Ok(RankReport {
        matrix: matrix.to_string(),
        d_in,
        d_out,
        rank,
        dense_params: d_in * d_out,
        lora_params: rank * (d_in + d_out),
        energy_kept,
        relative_error: (1.0 - energy_kept).max(0.0).sqrt(),
        rank_for_90: rank_for(&dw.s, 0.9),
        weight_rank_for_90: rank_for(&ws.s, 0.9),
        merge_max_diff,
        unmerge_max_diff,
        delta_spectrum: dw.s,
        weight_spectrum: ws.s,
        loss_base,
        loss_full,
        loss_truncated,
    })
}

/// Puts ΔW's rank-r part on `matrix` of `base` as a LoRA (scale 1, A·B = ΔW_r) and returns
/// the largest logit difference between it and its merge in place, and the largest weight
/// difference after unmerging.
#[allow(clippy::too_many_arguments)]
fn merge_difference(base: &Gpt, matrix: &str, dw: &Svd, rank: usize, eval: &Dataset, b: usize, t: usize, device: &Device) -> Result<(f32, f32)> {
    let config = LoraConfig { r: rank, lora_alpha: rank as f64, ..LoraConfig::default() };
    let mut model = base.clone();
    for_each_projection(&mut model, |path, p| {
        if path == matrix {
            let mut lora = super::Lora::init(dw.m, dw.n, &config, &mut crate::data::rng::Rng::new(0), device);
            lora.set_top_singular(dw, device);
            p.lora = Some(lora);
        }
    });
    let batch = eval.sequential(b, t, 1).into_iter().next().ok_or_else(|| Error::Invalid("no held-out batch".into()))?;
    let (inputs, _, _): (Tensor<2, Int>, _, _) = batch.to_device(device);
    let read = |m: &Gpt| m.valid().forward(inputs.clone()).into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 logits");
    let largest = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let unmerged = read(&model);
    let w_before = weight_of(&model, matrix).map(|w| w.0).unwrap_or_default();
    merge_in_place(&mut model)?;
    let merged = read(&model);
    unmerge(&mut model);
    let w_after = weight_of(&model, matrix).map(|w| w.0).unwrap_or_default();
    Ok((largest(&unmerged, &merged), largest(&w_before, &w_after)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_and_rank_follow_the_spectrum() {
        let s = [3.0, 2.0, 1.0];
        assert!((energy_share(&s, 1) - 9.0 / 14.0).abs() < 1e-12);
        assert_eq!(energy_share(&s, 3), 1.0);
        assert_eq!(rank_for(&s, 0.9), 2); // 13/14 ≥ 0.9 > 9/14
    }
}
