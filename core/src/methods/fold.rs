//! Folding a method's update into the base weights, for good or reversibly.
//!
//! - [`merge`] folds every LoRA, DoRA and IA³ update in and removes the adapters: the
//!   result is an ordinary model of the base's shape (`tinytune merge-adapter`).
//! - [`merge_in_place`] folds the same updates in but keeps the adapters, and [`unmerge`]
//!   takes the updates out again, as PEFT's `merge_adapter` and `unmerge_adapter` do. While
//!   merged, a projection's forward pass is the plain `x·W + b`: inference at the base
//!   model's cost, with the adapter still at hand to unmerge, save or keep training.
//!
//! Unmerging subtracts (LoRA), divides (IA³) or both (DoRA) in floating point, so the
//! weights come back within rounding, not bit for bit; `tests/methods.rs` bounds the
//! difference. A checkpoint is always written unmerged ([`crate::checkpoint::save_model`]),
//! so a merged model never saves its update twice.

use burn::module::Param;
use burn::tensor::Tensor;

use super::for_each_projection;
use crate::error::{Error, Result};
use crate::model::Gpt;
use crate::model::projection::Projection;

/// What a projection merged in place needs to take its update out again.
#[derive(Clone, Debug)]
pub struct MergeUndo {
    /// DoRA's column factor `m / ‖W + s·A·B‖` at the time of merging (the norm is of the
    /// weight before merging, which is gone once merged).
    pub dora_factor: Option<Tensor<1>>,
}

/// `(W', b', DoRA's factor)`: the projection's weight and bias with its LoRA, DoRA or IA³
/// update folded in. None when it holds none of them.
fn folded(p: &Projection) -> Option<(Tensor<2>, Option<Tensor<1>>, Option<Tensor<1>>)> {
    let w = p.base_weight();
    let b = p.bias.as_ref().map(|b| b.val());
    if let Some(ia3) = &p.ia3 {
        // An output scale multiplies W's columns and the bias; an input scale W's rows.
        let b = if ia3.input { b } else { b.map(|b| b * ia3.ia3_l.val()) };
        return Some((ia3.fold(w), b, None));
    }
    let lora = p.lora.as_ref()?;
    Some(match lora.dora_factor(w.clone()) {
        // DoRA: each column of W + s·A·B rescaled to its learned magnitude.
        Some(factor) => ((w + lora.delta()) * factor.clone().unsqueeze::<2>(), b, Some(factor)),
        None => (w + lora.delta(), b, None),
    })
}

fn set_weight(p: &mut Projection, w: Tensor<2>) {
    p.weight = Some(match p.weight.take() {
        Some(old) => old.map(|_| w),
        None => Param::from_tensor(w.detach()).set_require_grad(false),
    });
}

fn set_bias(p: &mut Projection, b: Option<Tensor<1>>) {
    if let Some(b) = b {
        p.bias = p.bias.take().map(|old| old.map(|_| b));
    }
}

/// Folds every LoRA update into its base weight (`W ← W + s·A·B`; with DoRA, each column
/// of that rescaled by `m / ‖W + s·A·B‖`) and removes the adapters: the merged model has
/// the base model's shape and no extra inference cost. An NF4 base is dequantized to FP32
/// first (merging into 4-bit codes would round the update away), so a merged QLoRA model is
/// an ordinary FP32 model.
///
/// IA³ folds too: an output scale multiplies W's columns and the bias, an input scale W's
/// rows. Adapters and soft prompts cannot fold (see [`super::Method::merge_blocker`]) and are
/// left in place. A model merged in place is unmerged first, so nothing folds twice.
pub fn merge(mut model: Gpt) -> Gpt {
    unmerge(&mut model);
    for_each_projection(&mut model, |_, p| {
        if let Some((w, b, _)) = folded(p) {
            set_weight(p, w);
            set_bias(p, b);
        } else if p.frozen.is_some() {
            set_weight(p, p.base_weight());
        }
        p.ia3 = None;
        p.lora = None;
        p.frozen = None;
        p.source = None;
    });
    model
}

/// Folds every LoRA, DoRA and IA³ update into its weight and keeps the adapters, so that
/// [`unmerge`] can take the updates out again (PEFT's `merge_adapter`). Returns how many
/// projections were merged; those already merged are left alone.
///
/// Refused, with nothing changed, for an NF4 base (its 4-bit codes cannot hold the update:
/// use [`merge`], which dequantizes) and for an IA³ vector with a zero entry (dividing it
/// back out would be impossible).
pub fn merge_in_place(model: &mut Gpt) -> Result<usize> {
    let mut refusal = None;
    super::for_each_projection_ref(model, |path, p| {
        if refusal.is_some() || p.merged.is_some() || (p.lora.is_none() && p.ia3.is_none()) {
            return;
        }
        if let Some(q) = &p.frozen {
            refusal = Some(format!(
                "{path} holds its base weight in {}, which cannot take the update in place; merge into a new FP32 model instead (tinytune merge-adapter)",
                q.format()
            ));
        } else if let Some(ia3) = &p.ia3 {
            let l = ia3.ia3_l.val().into_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default();
            if l.contains(&0.0) {
                refusal = Some(format!(
                    "{path}'s IA³ vector has a zero entry, so the merge could not be undone; merge into a new model instead (tinytune merge-adapter)"
                ));
            }
        }
    });
    if let Some(why) = refusal {
        return Err(Error::Invalid(why));
    }
    let mut count = 0;
    for_each_projection(model, |_, p| {
        if p.merged.is_some() {
            return;
        }
        if let Some((w, b, dora_factor)) = folded(p) {
            set_weight(p, w);
            set_bias(p, b);
            p.merged = Some(MergeUndo { dora_factor });
            count += 1;
        }
    });
    Ok(count)
}

/// Takes every in-place merged update out of its weight again (PEFT's `unmerge_adapter`):
/// `W ← W − s·A·B` for LoRA, `W ← W / f − s·A·B` for DoRA with the factor `f` kept at
/// merge time, and a division by the vector for IA³. Returns how many projections were
/// unmerged.
pub fn unmerge(model: &mut Gpt) -> usize {
    let mut count = 0;
    for_each_projection(model, |_, p| {
        let Some(undo) = p.merged.take() else { return };
        let w = p.base_weight();
        let b = p.bias.as_ref().map(|b| b.val());
        let (w, b) = if let Some(ia3) = &p.ia3 {
            let l = ia3.ia3_l.val();
            let n = l.dims()[0];
            if ia3.input { (w / l.reshape([n, 1]), b) } else { (w / l.clone().reshape([1, n]), b.map(|b| b / l)) }
        } else if let Some(lora) = &p.lora {
            match undo.dora_factor {
                Some(f) => (w / f.unsqueeze::<2>() - lora.delta(), b),
                None => (w - lora.delta(), b),
            }
        } else {
            unreachable!("only a projection with LoRA or IA³ is merged in place")
        };
        set_weight(p, w);
        set_bias(p, b);
        count += 1;
    });
    count
}

/// Whether any projection of `model` is merged in place.
pub fn is_merged(model: &Gpt) -> bool {
    let mut any = false;
    super::for_each_projection_ref(model, |_, p| any |= p.merged.is_some());
    any
}
