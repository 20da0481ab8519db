//! Model merging: several fine-tunes of one architecture in, one model out, weights only,
//! as mergekit (Goddard et al., 2024, "Arcee's MergeKit: A Toolkit for Merging Large
//! Language Models") does it, from the same YAML.
//!
//! Each parameter tensor is merged on its own:
//!
//! - **linear** (Wortsman et al., 2022, "Model soups"): Σ wᵢ·θᵢ, divided by Σ wᵢ when
//!   `normalize` (the default);
//! - **slerp**: spherical interpolation of two models at `t` along the arc between them
//!   (each tensor's direction taken as a whole), falling back to linear interpolation
//!   when the two are nearly parallel (|cos| > 0.9995), as mergekit does;
//! - the task-vector family, on τᵢ = θᵢ − θ_base of every non-base model:
//!   - **task_arithmetic** (Ilharco et al., 2023, "Editing Models with Task Arithmetic"):
//!     θ_base + λ·Σ wᵢ·τᵢ;
//!   - **ties** (Yadav et al., 2023, "TIES-Merging"): trim each τᵢ to its `density` share
//!     of largest magnitudes, elect each weight's sign by the summed (weighted) mass, and
//!     average only the τᵢ that agree with it (disjoint mean);
//!   - **dare_linear** / **dare_ties** (Yu et al., 2024, "Language Models are Super
//!     Mario"): drop each entry of τᵢ with probability 1 − `density` (seeded), rescale,
//!     then add (linear) or elect signs (TIES);
//!   - **breadcrumbs** / **breadcrumbs_ties** (Davari and Belilovsky, 2024, "Model
//!     Breadcrumbs"): drop the `gamma` share of largest magnitudes and then the smallest,
//!     keeping `density`.
//!
//! - **model_stock** (Jang, Yun and Han, 2024, "Model Stock: All we need is just a few
//!   fine-tuned models"): the fine-tunes' average, moved toward the base by
//!   t = N·cos θ / (1 + (N − 1)·cos θ), θ the mean pairwise angle of their task vectors;
//!
//! - **passthrough** with `slices`: layer stacking, a deeper model from layer ranges of one
//!   or several models (frankenmerges such as Goliath-120B; SOLAR's depth up-scaling, Kim et
//!   al., 2023, stacks two copies of one model minus the layers at the seam).
//!
//! Semantics follow mergekit's code (its defaults for `normalize` and `rescale` per
//! method; DARE's rescale matches the L1 norm the dropped entries took, which is what
//! mergekit does, where the paper divides by the keep probability — equal in expectation).
//! Random drops use tinytune's portable generator, so a seed gives the same merge on every
//! machine but not torch's mask. Slices blending several sources, per-layer parameter
//! gradients and model stock's `filter_wise` are not read yet; their keys are refused with that said.

pub mod adapters;
pub mod config;
pub mod federated;
pub mod study;

pub use config::{LayerSlice, MergeConfig, MergeMethod, ModelEntry};

use std::collections::HashMap;

use burn::tensor::{Device, TensorData};

use crate::checkpoint::load_model_tensors;
use crate::data::rng::Rng;
use crate::error::{Error, Result};
use crate::methods::Method;
use crate::model::Gpt;
use crate::model::params::param_data;

/// One model's share in a merge: its tensors' weight, and the task-vector methods' density
/// and outlier share.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share {
    pub weight: f64,
    pub density: f64,
    pub gamma: f64,
}

/// mergekit's sign election (`ConsensusMethod.sum`): each entry's sign is the sign of the
/// summed weighted task vectors (zero counts as positive); a vector takes part where its own
/// sign equals it.
fn elected(weighted: &[Vec<f32>], i: usize) -> f32 {
    let sum: f32 = weighted.iter().map(|w| w[i]).sum();
    if sum >= 0.0 { 1.0 } else { -1.0 }
}

/// -1, 0 or 1 (`torch.sign`): zero has no sign, so it never agrees with an elected one.
pub(crate) fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `tensor` masked by `keep`, rescaled to its former L1 norm when `rescale` (mergekit's
/// `rescaled_masked_tensor` with the L1 norm).
fn masked(tensor: &[f32], keep: &[bool], rescale: bool) -> Vec<f32> {
    let out: Vec<f32> = tensor.iter().zip(keep).map(|(&x, &k)| if k { x } else { 0.0 }).collect();
    if !rescale {
        return out;
    }
    let before: f32 = tensor.iter().map(|x| x.abs()).sum();
    let after: f32 = out.iter().map(|x| x.abs()).sum();
    if before < 1e-7 || after < 1e-7 {
        return out;
    }
    out.into_iter().map(|x| x * (before / after)).collect()
}

/// Indices of `x` by magnitude, ascending (ties by index, which is how a stable sort
/// orders them).
fn by_magnitude(x: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].abs().total_cmp(&x[b].abs()));
    order
}

/// Keeps the `density` share of `x`'s largest magnitudes (TIES' trim).
fn trim(x: &[f32], density: f64, rescale: bool) -> Vec<f32> {
    if density >= 1.0 {
        return x.to_vec();
    }
    let k = (density * x.len() as f64) as usize;
    let mut keep = vec![false; x.len()];
    for &i in by_magnitude(x).iter().rev().take(k) {
        keep[i] = true;
    }
    masked(x, &keep, rescale)
}

/// Drops the `gamma` share of `x`'s largest magnitudes, then the smallest, keeping
/// `density` (Model Breadcrumbs).
fn breadcrumbs(x: &[f32], density: f64, gamma: f64, rescale: bool) -> Vec<f32> {
    if density >= 1.0 {
        return x.to_vec();
    }
    let n = x.len();
    let target = (density * n as f64) as usize;
    let mut top = (gamma * n as f64) as usize;
    let bottom = (n as i64 - target as i64 - top as i64).max(0) as usize;
    top = top.min(n - target);
    let order = by_magnitude(x);
    let mut keep = vec![false; n];
    for &i in &order[bottom..n - top] {
        keep[i] = true;
    }
    masked(x, &keep, rescale)
}

/// Keeps each entry of `x` with probability `density` (DARE's drop).
fn drop_random(x: &[f32], density: f64, rescale: bool, rng: &mut Rng) -> Vec<f32> {
    if density >= 1.0 {
        return x.to_vec();
    }
    let keep: Vec<bool> = x.iter().map(|_| rng.chance(density)).collect();
    masked(x, &keep, rescale)
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1), each tensor's direction taken
/// as a whole; linear when the two are nearly parallel.
pub fn slerp(t: f64, a: &[f32], b: &[f32]) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    let unit = |n: f64| if n > 1e-8 { n } else { 1.0 };
    let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 / unit(na)) * (*y as f64 / unit(nb))).sum();
    let (s0, s1) = if dot.abs() > 0.9995 {
        (1.0 - t, t)
    } else {
        let theta = dot.acos();
        ((theta - theta * t).sin() / theta.sin(), (theta * t).sin() / theta.sin())
    };
    a.iter().zip(b).map(|(x, y)| (s0 * *x as f64 + s1 * *y as f64) as f32).collect()
}

/// One tensor merged by `method`: `base` (the base model's values, when the method has
/// one) and every other model's values with its share. `rng` draws DARE's drops.
pub fn merge_tensor(method: &MergeMethod, base: Option<&[f32]>, others: &[(&[f32], Share)], rng: &mut Rng) -> Result<Vec<f32>> {
    use MergeMethod as M;
    let n = base.map(<[f32]>::len).or_else(|| others.first().map(|o| o.0.len())).unwrap_or(0);
    match method {
        M::Passthrough => Err(Error::config("merge config", "merge_method", "passthrough stacks whole layers; it has no per-tensor merge")),
        M::Linear { normalize } => {
            let total: f64 = others.iter().map(|o| o.1.weight).sum();
            Ok((0..n)
                .map(|i| {
                    let s: f64 = others.iter().map(|(x, sh)| sh.weight * x[i] as f64).sum();
                    (if *normalize { s / total } else { s }) as f32
                })
                .collect())
        }
        M::Slerp { t } => {
            let (base, other) = match (base, others) {
                (Some(b), [(o, _)]) => (b, *o),
                _ => return Err(Error::config("merge config", "models", "slerp merges exactly two models: the base_model and one other")),
            };
            Ok(slerp(*t, base, other))
        }
        M::ModelStock => {
            // mergekit's model_stock: θ_avg pulled toward the base by t = N·cos/(1 + (N−1)·cos),
            // cos the mean pairwise cosine of the task vectors (each tensor as one vector).
            let base = base.ok_or_else(|| Error::config("merge config", "base_model", "model_stock needs a base_model"))?;
            if others.len() < 2 {
                return Err(Error::config("merge config", "models", "model_stock needs the base_model and at least two other models"));
            }
            let offsets: Vec<Vec<f64>> = others.iter().map(|(x, _)| x.iter().zip(base).map(|(a, b)| *a as f64 - *b as f64).collect()).collect();
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let mut cosines = Vec::new();
            for i in 0..offsets.len() {
                for j in i + 1..offsets.len() {
                    let dot: f64 = offsets[i].iter().zip(&offsets[j]).map(|(a, b)| a * b).sum();
                    cosines.push((dot / (norm(&offsets[i]) * norm(&offsets[j])).max(1e-6)).clamp(-1.0, 1.0));
                }
            }
            let cos = cosines.iter().sum::<f64>() / cosines.len() as f64;
            let k = others.len() as f64;
            let t = k * cos / (1.0 + (k - 1.0) * cos);
            Ok((0..n)
                .map(|i| {
                    let avg = others.iter().map(|(x, _)| x[i] as f64).sum::<f64>() / k;
                    (t * avg + (1.0 - t) * base[i] as f64) as f32
                })
                .collect())
        }
        M::TaskVectors { sparsify, consensus, normalize, rescale, lambda } => {
            let base = base.ok_or_else(|| Error::config("merge config", "base_model", "the task-vector methods need a base_model"))?;
            let mut weighted = Vec::with_capacity(others.len());
            for (x, share) in others {
                let delta: Vec<f32> = x.iter().zip(base).map(|(a, b)| a - b).collect();
                let delta = match sparsify {
                    config::Sparsify::None => delta,
                    config::Sparsify::Magnitude => trim(&delta, share.density, *rescale),
                    config::Sparsify::Random => drop_random(&delta, share.density, *rescale, rng),
                    config::Sparsify::Outliers => breadcrumbs(&delta, share.density, share.gamma, *rescale),
                };
                weighted.push(delta.into_iter().map(|d| d * share.weight as f32).collect::<Vec<f32>>());
            }
            let weights: Vec<f32> = others.iter().map(|o| o.1.weight as f32).collect();
            Ok((0..n)
                .map(|i| {
                    let (mixed, divisor) = if *consensus {
                        let majority = elected(&weighted, i);
                        let mut mixed = 0.0f32;
                        let mut divisor = 0.0f32;
                        for (w, weight) in weighted.iter().zip(&weights) {
                            if sign(w[i]) == majority {
                                mixed += w[i];
                                divisor += weight;
                            }
                        }
                        (mixed, if divisor == 0.0 { 1.0 } else { divisor })
                    } else {
                        let divisor: f32 = weights.iter().sum();
                        (weighted.iter().map(|w| w[i]).sum(), if divisor.abs() < 1e-8 { 1.0 } else { divisor })
                    };
                    let mixed = if *normalize { mixed / divisor } else { mixed };
                    base[i] + mixed * *lambda as f32
                })
                .collect())
        }
    }
}

/// Merges `models` (name, model) as `config` says, every parameter tensor by itself;
/// `seed` draws DARE's drops (one stream per tensor). Every model must have the base's
/// architecture. The result is a plain FP32 model of that architecture.
pub fn merge_models(config: &MergeConfig, models: &[(String, Gpt)], seed: u64, device: &Device) -> Result<Gpt> {
    // A LoRA, QLoRA or IA³ run merges as its folded model: the weights it computes with.
    let models: Vec<(String, Gpt)> = models.iter().map(|(n, m)| (n.clone(), crate::methods::merge(m.clone()))).collect();
    let find = |name: &str| models.iter().find(|(n, _)| n == name).map(|(_, m)| m);
    if config.method == MergeMethod::Passthrough {
        return stack_layers(&config.slices, &find, device);
    }
    let first = &models.first().ok_or_else(|| Error::config("merge config", "models", "lists no models"))?.1;
    let arch = first.config().clone();
    for (name, m) in &models {
        if m.config() != &arch {
            return Err(Error::config(
                "merge config",
                "models",
                format!("{name} has another architecture than {} (config.json differs); merging needs one architecture", models[0].0),
            ));
        }
    }
    // Every model's tensors, read once.
    let tensors: Vec<HashMap<String, TensorData>> = models.iter().map(|(_, m)| param_data(m).into_iter().collect()).collect();
    for ((model, _), theirs) in models.iter().zip(&tensors) {
        if let Some(extra) = theirs.keys().find(|n| !tensors[0].contains_key(*n)).or_else(|| tensors[0].keys().find(|n| !theirs.contains_key(*n))) {
            return Err(Error::config(
                "merge config",
                "models",
                format!("{model} and {} differ in parameter {extra} (an adapter or soft prompt cannot fold into the weights); merge whole models", models[0].0),
            ));
        }
    }
    let tensors_of = |name: &str, field: &str| {
        models.iter().position(|(n, _)| n == name).map(|i| &tensors[i]).ok_or_else(|| Error::config("merge config", field, format!("{name} is not loaded")))
    };
    let base_tensors = match &config.base_model {
        Some(b) => Some(tensors_of(b, "base_model")?),
        None => None,
    };
    let mut others = Vec::new();
    for entry in &config.models {
        if config.base_model.as_deref() == Some(entry.model.as_str()) {
            continue;
        }
        others.push((tensors_of(&entry.model, "models")?, entry.share()));
    }
    // linear averages every listed model, the base included when it is listed.
    if let (MergeMethod::Linear { .. }, Some(b)) = (&config.method, &config.base_model)
        && let Some(entry) = config.models.iter().find(|e| &e.model == b)
    {
        others.push((tensors_of(b, "models")?, entry.share()));
    }
    let values = |d: &TensorData| d.clone().convert::<f32>().try_into_vec::<f32>().expect("f32 parameters");
    let mut out = HashMap::new();
    // The per-tensor streams are named by tensor, so the order tensors are visited in does
    // not change DARE's drops.
    for (name, reference) in &tensors[0] {
        let shape = reference.shape().clone();
        let base_values = base_tensors.map(|t| values(&t[name]));
        let other_values: Vec<(Vec<f32>, Share)> = others.iter().map(|(t, s)| (values(&t[name]), *s)).collect();
        let refs: Vec<(&[f32], Share)> = other_values.iter().map(|(v, s)| (v.as_slice(), *s)).collect();
        let mut rng = Rng::derive(seed, &format!("merge/{name}"));
        let merged = merge_tensor(&config.method, base_values.as_deref(), &refs, &mut rng)?;
        out.insert(name.clone(), TensorData::new(merged, shape));
    }
    load_model_tensors(&arch, &Method::Full, out, "merged model".into(), device)
}

/// Layer stacking (mergekit's `passthrough` with `slices`): output layer after layer copied
/// from the slices' layer ranges, in order; the embeddings (and every other tensor before
/// the layers) from the first slice's model, the final norm and output layer from the
/// last slice's, as mergekit takes them. The result has as many layers as the slices hold.
fn stack_layers<'a>(slices: &[LayerSlice], find: &dyn Fn(&str) -> Option<&'a Gpt>, device: &Device) -> Result<Gpt> {
    let model = |s: &LayerSlice| find(&s.model).ok_or_else(|| Error::config("merge config", "slices", format!("{} is not loaded", s.model)));
    let (first, last) = (model(&slices[0])?, model(&slices[slices.len() - 1])?);
    let mut arch = first.config().clone();
    for s in slices {
        let m = model(s)?;
        let mut same = m.config().clone();
        same.n_layer = arch.n_layer;
        if same != arch {
            return Err(Error::config(
                "merge config",
                "slices",
                format!("{} has another architecture than {} (beyond its depth); stacking needs one", s.model, slices[0].model),
            ));
        }
        if s.end > m.config().n_layer {
            return Err(Error::config(
                "merge config",
                "slices",
                format!("layer_range [{}, {}] of {} reaches past its {} layers", s.start, s.end, s.model, m.config().n_layer),
            ));
        }
    }
    arch.n_layer = slices.iter().map(|s| s.end - s.start).sum();
    let mut out = HashMap::new();
    let mut layer = 0;
    for s in slices {
        let tensors = param_data(model(s)?);
        for from in s.start..s.end {
            let prefix = format!("h.{from}.");
            for (name, data) in &tensors {
                if let Some(rest) = name.strip_prefix(&prefix) {
                    out.insert(format!("h.{layer}.{rest}"), data.clone());
                }
            }
            layer += 1;
        }
    }
    for (from, post) in [(first, false), (last, true)] {
        for (name, data) in param_data(from) {
            let is_post = name.starts_with("ln_f.") || name.starts_with("lm_head.");
            if !name.starts_with("h.") && is_post == post {
                out.insert(name, data);
            }
        }
    }
    load_model_tensors(&arch, &Method::Full, out, "merged model".into(), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(weight: f64, density: f64) -> Share {
        Share { weight, density, gamma: 0.01 }
    }

    #[test]
    fn ties_trims_elects_and_averages_the_agreeing() {
        let base = [0.0f32; 4];
        let a = [1.0f32, -2.0, 0.1, 3.0];
        let b = [2.0f32, 1.0, -0.2, -1.0];
        let ties = MergeMethod::parse("ties", &Default::default()).unwrap();
        // density 1: nothing trimmed; signs by summed mass: +, -, -, +.
        let out = merge_tensor(&ties, Some(&base), &[(&a, share(1.0, 1.0)), (&b, share(1.0, 1.0))], &mut Rng::new(0)).unwrap();
        assert_eq!(out, vec![1.5, -2.0, -0.2, 3.0]);
        // density 0.5 keeps each vector's two largest magnitudes.
        let out = merge_tensor(&ties, Some(&base), &[(&a, share(1.0, 0.5)), (&b, share(1.0, 0.5))], &mut Rng::new(0)).unwrap();
        assert_eq!(out, vec![2.0, -2.0, 0.0, 3.0]);
    }

    #[test]
    fn task_arithmetic_adds_weighted_task_vectors_and_linear_averages() {
        let base = [1.0f32, 1.0];
        let a = [2.0f32, 0.0];
        let ta = MergeMethod::parse("task_arithmetic", &Default::default()).unwrap();
        assert_eq!(merge_tensor(&ta, Some(&base), &[(&a, share(0.5, 1.0))], &mut Rng::new(0)).unwrap(), vec![1.5, 0.5]);
        let lin = MergeMethod::parse("linear", &Default::default()).unwrap();
        assert_eq!(merge_tensor(&lin, None, &[(&base, share(1.0, 1.0)), (&a, share(3.0, 1.0))], &mut Rng::new(0)).unwrap(), vec![1.75, 0.25]);
    }

    #[test]
    fn slerp_keeps_the_norm_of_orthogonal_unit_vectors_and_dare_keeps_its_share() {
        let m = slerp(0.5, &[1.0, 0.0], &[0.0, 1.0]);
        assert!((m[0] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6 && (m[1] - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6, "{m:?}");
        // Nearly parallel: plain interpolation.
        assert_eq!(slerp(0.25, &[1.0, 0.0], &[2.0, 0.0]), vec![1.25, 0.0]);
        let x = vec![1.0f32; 10_000];
        let kept = drop_random(&x, 0.3, false, &mut Rng::new(3)).iter().filter(|v| **v != 0.0).count();
        assert!((kept as f64 / 10_000.0 - 0.3).abs() < 0.02, "{kept}");
        // Rescaled, the L1 norm is the task vector's.
        let r = drop_random(&x, 0.3, true, &mut Rng::new(3));
        assert!((r.iter().sum::<f32>() - 10_000.0).abs() < 0.5);
    }
}
