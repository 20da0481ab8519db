//! LoRA arithmetic: several LoRA adapters of one base combined into one new adapter, as
//! PEFT's `LoraModel.add_weighted_adapter` does it, on PEFT adapter folders (config text and
//! safetensors bytes in, the same out).
//!
//! Each source i has factors `A_i` `[r_i, in]` and `B_i` `[out, r_i]` per module, scaling
//! `s_i = lora_alpha / r` (`/ √r` with rsLoRA) and a user weight `w_i`. The new adapter gets
//! `lora_alpha = r`, so scaling 1 (PEFT keeps the first source's other settings, rsLoRA
//! included, and so does this), and:
//!
//! - **cat**: the sources' ranks side by side, `A = [w_i·s_i·A_i]` stacked, `B = [B_i]`: exactly
//!   `Σ w_i·ΔW_i`, at rank `Σ r_i`;
//! - **linear**, **ties**, **magnitude_prune**, **dare_linear**, **dare_ties** (equal ranks):
//!   the A's and, separately, the B's combined with multipliers `±√|w_i·s_i|` (the sign on A):
//!   a sum, a magnitude-pruned sum, TIES' trim / sign election / mean of the agreeing, or DARE's
//!   random drop. Combining factors separately adds cross terms `B_i·A_j`: the result is not
//!   the weighted sum of the updates, as PEFT's is not;
//! - **svd**, **ties_svd**, **magnitude_prune_svd**, **dare_linear_svd**, **dare_ties_svd**: the
//!   dense updates `ΔW_i = s_i·B_i·A_i` combined with the plain weights (sum, TIES, pruning or
//!   DARE), then cut to rank `svd_rank` (default: the largest source rank) by the SVD,
//!   `B = U_k·diag(S_k)`, `A = V_kᵀ`, optionally clamped to a quantile of their entries.
//!
//! DARE's drops come from tinytune's portable generator, so a seed gives the same adapter on
//! every machine but not torch's mask.

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::TensorData;
use serde_json::Value;

use super::sign;
use crate::checkpoint::{from_safetensors, to_safetensors};
use crate::data::rng::Rng;
use crate::error::{Error, Origin, Result};

/// PEFT's combination types, by PEFT's names.
pub const COMBINATIONS: [&str; 11] =
    ["linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"];

/// How TIES elects each entry's sign: by the summed values (`total`) or by the count of
/// signs (`frequency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Majority {
    Total,
    Frequency,
}

/// The settings of one combination, as `add_weighted_adapter`'s arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Combine {
    pub combination: String,
    pub weights: Vec<f64>,
    /// Share kept by TIES, DARE and magnitude pruning (required by them).
    pub density: Option<f64>,
    pub majority: Majority,
    /// Rank of the SVD types' result (default: the largest source rank).
    pub svd_rank: Option<usize>,
    /// The SVD types clamp both factors to this quantile of their entries.
    pub svd_clamp: Option<f64>,
    pub seed: u64,
}

/// A row-major matrix.
#[derive(Clone, Debug, PartialEq)]
struct Mat {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Mat {
    fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0.0; rows * cols] }
    }

    fn scaled(&self, k: f32) -> Self {
        Self { data: self.data.iter().map(|x| x * k).collect(), ..self.clone() }
    }

    /// `self · other`.
    fn matmul(&self, other: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.data[i * self.cols + k];
                let row = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, b) in out.data[i * other.cols..(i + 1) * other.cols].iter_mut().zip(row) {
                    *o += a * b;
                }
            }
        }
        out
    }

    fn to_data(&self) -> TensorData {
        TensorData::new(self.data.clone(), [self.rows, self.cols])
    }
}

/// One LoRA adapter read from a PEFT folder: its config and, per module (the key prefix before
/// `.lora_A.weight`), its A and B.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub origin: String,
    pub config: serde_json::Map<String, Value>,
    pub r: usize,
    pub scaling: f64,
    modules: BTreeMap<String, (Mat, Mat)>,
}

impl LoraAdapter {
    /// The adapter in `adapter_config.json` text and `adapter_model.safetensors` bytes; `dir`
    /// names them in errors.
    pub fn read(config_text: &str, weights: &[u8], dir: &str) -> Result<Self> {
        let config_file = format!("{dir}/adapter_config.json");
        let config: serde_json::Map<String, Value> =
            serde_json::from_str(config_text).map_err(|e| Error::config(config_file.as_str(), "(file)", format!("is not a JSON object: {e}")))?;
        let field = |name: &str| config.get(name).filter(|v| !v.is_null());
        if field("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(Error::config(config_file.as_str(), "peft_type", "is not LORA; only LoRA adapters combine"));
        }
        for (name, why) in [("use_dora", "DoRA's magnitude vector"), ("lora_bias", "a trained LoRA bias")] {
            if field(name).and_then(Value::as_bool) == Some(true) {
                return Err(Error::config(config_file.as_str(), name, format!("is true; {why} has no combination in add_weighted_adapter")));
            }
        }
        for name in ["rank_pattern", "alpha_pattern"] {
            if field(name).and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
                return Err(Error::config(config_file.as_str(), name, "varies the rank or alpha by module; combine adapters with one r and lora_alpha"));
            }
        }
        let r = field("r")
            .and_then(Value::as_u64)
            .filter(|r| *r > 0)
            .ok_or_else(|| Error::config(config_file.as_str(), "r", "is missing or not a positive integer"))? as usize;
        let alpha =
            field("lora_alpha").and_then(Value::as_f64).ok_or_else(|| Error::config(config_file.as_str(), "lora_alpha", "is missing or not a number"))?;
        let rslora = field("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let scaling = if rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        let weights_file = format!("{dir}/adapter_model.safetensors");
        let tensors = from_safetensors(weights, &Origin::from(weights_file.as_str()))?;
        let mut modules = BTreeMap::new();
        for name in tensors.keys() {
            let Some(module) = name.strip_suffix(".lora_A.weight") else {
                if !name.ends_with(".lora_B.weight") {
                    return Err(Error::config(
                        weights_file.as_str(),
                        name.as_str(),
                        "is not a LoRA factor (lora_A / lora_B); only plain LoRA adapters combine",
                    ));
                }
                continue;
            };
            let matrix = |key: String| -> Result<Mat> {
                let data = tensors.get(&key).ok_or_else(|| Error::config(weights_file.as_str(), key.as_str(), "is missing (every lora_A needs its lora_B)"))?;
                let shape = data.shape().to_vec();
                if shape.len() != 2 {
                    return Err(Error::config(weights_file.as_str(), key.as_str(), format!("has shape {shape:?}; LoRA factors are matrices")));
                }
                let values =
                    data.clone().convert::<f32>().try_into_vec::<f32>().map_err(|e| Error::config(weights_file.as_str(), key.as_str(), format!("{e:?}")))?;
                Ok(Mat { rows: shape[0], cols: shape[1], data: values })
            };
            let (a, b) = (matrix(name.clone())?, matrix(format!("{module}.lora_B.weight"))?);
            if a.rows != r || b.cols != r {
                return Err(Error::config(
                    weights_file.as_str(),
                    name.as_str(),
                    format!("has rank {} (lora_B {}) but r is {r} in adapter_config.json", a.rows, b.cols),
                ));
            }
            modules.insert(module.to_string(), (a, b));
        }
        if modules.is_empty() {
            return Err(Error::config(weights_file.as_str(), "(tensors)", "holds no lora_A / lora_B pairs"));
        }
        Ok(Self { origin: dir.to_string(), config, r, scaling, modules })
    }

    /// The module paths the adapter holds factors for.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.keys().map(String::as_str)
    }

    /// `s·B·A` of `module`, `[out, in]` (PEFT's `get_delta_weight` in `nn.Linear`'s orientation).
    pub fn delta(&self, module: &str) -> Option<Vec<f32>> {
        self.modules.get(module).map(|(a, b)| b.matmul(a).scaled(self.scaling as f32).data)
    }
}

/// The `density` share of `x`'s largest magnitudes kept (the count floored), the rest zero.
fn magnitude_prune(x: &[f32], density: f64) -> Vec<f32> {
    if density >= 1.0 {
        return x.to_vec();
    }
    let k = (density * x.len() as f64) as usize;
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
    let mut out = vec![0.0; x.len()];
    for &i in order.iter().take(k) {
        out[i] = x[i];
    }
    out
}

/// DARE's drop: each entry kept with probability `density` and divided by it.
fn random_prune(x: &[f32], density: f64, rng: &mut Rng) -> Vec<f32> {
    x.iter().map(|&v| if rng.chance(density) { v / density as f32 } else { 0.0 }).collect()
}

/// The tensors `xs` (one per source, same length) combined with `multipliers` by the
/// combination's merge rule (`base` is the type without `_svd`).
fn combine_tensors(base: &str, xs: &[Vec<f32>], multipliers: &[f32], opts: &Combine, rng: &mut Rng) -> Result<Vec<f32>> {
    let density = || opts.density.ok_or_else(|| Error::config("combine adapters", "density", format!("is required by {}", opts.combination)));
    let pruned: Vec<Vec<f32>> = match base {
        "linear" | "svd" => xs.to_vec(),
        "ties" | "magnitude_prune" => {
            let d = density()?;
            xs.iter().map(|x| magnitude_prune(x, d)).collect()
        }
        "dare_linear" | "dare_ties" => {
            let d = density()?;
            xs.iter().map(|x| random_prune(x, d, rng)).collect()
        }
        other => return Err(Error::config("combine adapters", "combination_type", format!("{other:?} is not one of {}", COMBINATIONS.join(", ")))),
    };
    let n = xs[0].len();
    let elect = base == "ties" || base == "dare_ties";
    Ok((0..n)
        .map(|i| {
            if !elect {
                return pruned.iter().zip(multipliers).map(|(x, m)| m * x[i]).sum();
            }
            let votes: f32 = match opts.majority {
                Majority::Total => pruned.iter().map(|x| x[i]).sum(),
                Majority::Frequency => pruned.iter().map(|x| sign(x[i])).sum(),
            };
            let elected = if votes >= 0.0 { 1.0 } else { -1.0 };
            let (mut sum, mut count) = (0.0f32, 0.0f32);
            for (x, m) in pruned.iter().zip(multipliers) {
                if sign(x[i]) == elected {
                    sum += m * x[i];
                    count += 1.0;
                }
            }
            sum / count.max(1.0)
        })
        .collect())
}

/// torch.quantile's linear interpolation at `q` over `values`.
fn quantile(values: &[f32], q: f64) -> f32 {
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * frac
}

/// The new adapter's config: the first source's, with `r` and `lora_alpha` both the new rank,
/// the union of the sources' target modules, and no rank or alpha patterns.
fn combined_config(sources: &[LoraAdapter], r: usize) -> Result<String> {
    let mut config = sources[0].config.clone();
    config.insert("r".into(), r.into());
    config.insert("lora_alpha".into(), r.into());
    config.insert("rank_pattern".into(), Value::Object(Default::default()));
    config.insert("alpha_pattern".into(), Value::Object(Default::default()));
    let targets: Vec<&Value> = sources.iter().map(|s| s.config.get("target_modules").unwrap_or(&Value::Null)).collect();
    let union = if targets.iter().all(|t| t.is_array()) {
        let set: BTreeSet<&str> = targets.iter().flat_map(|t| t.as_array().into_iter().flatten().filter_map(Value::as_str)).collect();
        Value::from(set.into_iter().collect::<Vec<_>>())
    } else if targets.iter().all(|t| t.is_string()) {
        Value::from(targets.iter().map(|t| format!("({})", t.as_str().unwrap_or_default())).collect::<Vec<_>>().join("|"))
    } else {
        return Err(Error::config(
            format!("{}/adapter_config.json", sources[0].origin),
            "target_modules",
            "is a list in some sources and a pattern in others; give them all the same kind",
        ));
    };
    config.insert("target_modules".into(), union);
    serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| Error::Invalid(e.to_string()))
}

/// `sources` combined as `opts` says: the new adapter's `adapter_config.json` text and
/// `adapter_model.safetensors` bytes.
pub fn add_weighted_adapter(sources: &[LoraAdapter], opts: &Combine) -> Result<(String, Vec<u8>)> {
    let origin = "combine adapters";
    if sources.is_empty() {
        return Err(Error::config(origin, "adapters", "lists none; name at least one adapter"));
    }
    if opts.weights.len() != sources.len() {
        return Err(Error::config(origin, "weights", format!("has {} values for {} adapters; give one weight per adapter", opts.weights.len(), sources.len())));
    }
    if let Some(d) = opts.density
        && !(0.0..=1.0).contains(&d)
    {
        return Err(Error::config(origin, "density", format!("is {d}; it is a share between 0 and 1")));
    }
    if !COMBINATIONS.contains(&opts.combination.as_str()) {
        return Err(Error::config(origin, "combination_type", format!("{:?} is not one of {}", opts.combination, COMBINATIONS.join(", "))));
    }
    // One source: PEFT combines it linearly whatever the type.
    let combination = if sources.len() == 1 { "linear" } else { opts.combination.as_str() };
    let svd = combination.ends_with("svd");
    let max_r = sources.iter().map(|s| s.r).max().unwrap_or(1);
    let r = match combination {
        "cat" => sources.iter().map(|s| s.r).sum(),
        _ if svd => opts.svd_rank.unwrap_or(max_r),
        _ => {
            if let Some(s) = sources.iter().find(|s| s.r != sources[0].r) {
                return Err(Error::config(
                    origin,
                    "combination_type",
                    format!(
                        "{combination} needs one rank, but {} has r = {} and {} r = {}; use cat or an _svd type",
                        sources[0].origin, sources[0].r, s.origin, s.r
                    ),
                ));
            }
            sources[0].r
        }
    };
    let modules: BTreeSet<&str> = sources.iter().flat_map(|s| s.modules()).collect();
    let mut tensors = Vec::new();
    for module in modules {
        let present: Vec<(usize, &LoraAdapter)> = sources.iter().enumerate().filter(|(_, s)| s.modules.contains_key(module)).collect();
        let (a0, b0) = &present[0].1.modules[module];
        let (d_in, d_out) = (a0.cols, b0.rows);
        let mut rng = Rng::derive(opts.seed, &format!("combine/{module}"));
        let (a, b) = if combination == "cat" {
            let (mut a, mut b) = (Mat::zeros(r, d_in), Mat::zeros(d_out, r));
            let mut start = 0;
            for (i, s) in sources.iter().enumerate() {
                if let Some((sa, sb)) = s.modules.get(module) {
                    // PEFT: (A · w) · s, in f32; B copied.
                    let scaled: Vec<f32> = sa.data.iter().map(|x| (x * opts.weights[i] as f32) * s.scaling as f32).collect();
                    a.data[start * d_in..(start + s.r) * d_in].copy_from_slice(&scaled);
                    for row in 0..d_out {
                        b.data[row * r + start..row * r + start + s.r].copy_from_slice(&sb.data[row * s.r..(row + 1) * s.r]);
                    }
                }
                start += s.r;
            }
            (a, b)
        } else if svd {
            let deltas: Vec<Vec<f32>> = present.iter().map(|(_, s)| s.delta(module).expect("present")).collect();
            let weights: Vec<f32> = present.iter().map(|(i, _)| opts.weights[*i] as f32).collect();
            let merged = combine_tensors(combination.trim_end_matches("_svd"), &deltas, &weights, opts, &mut rng)?;
            let k = r.min(d_in).min(d_out);
            let f = crate::linalg::svd(&merged, d_out, d_in);
            let kk = f.k();
            let mut b = Mat::zeros(d_out, r);
            let mut a = Mat::zeros(r, d_in);
            for j in 0..k {
                for row in 0..d_out {
                    b.data[row * r + j] = (f.u[row * kk + j] * f.s[j]) as f32;
                }
                for col in 0..d_in {
                    a.data[j * d_in + col] = f.vt[j * d_in + col] as f32;
                }
            }
            if let Some(q) = opts.svd_clamp {
                let all: Vec<f32> = b.data.iter().chain(&a.data).copied().collect();
                let hi = quantile(&all, q);
                // torch.clamp(x, -hi, hi); with hi < 0 the bounds cross and torch returns hi.
                for x in a.data.iter_mut().chain(b.data.iter_mut()) {
                    *x = if hi >= 0.0 { x.clamp(-hi, hi) } else { hi };
                }
            }
            (a, b)
        } else {
            // Multipliers ±√|w·s|, the sign on A; the A's and the B's combined separately.
            let v: Vec<f64> = present.iter().map(|(i, s)| opts.weights[*i] * s.scaling).collect();
            let ma: Vec<f32> = v.iter().map(|x| (if *x < 0.0 { -1.0 } else { 1.0 } * x.abs().sqrt()) as f32).collect();
            let mb: Vec<f32> = v.iter().map(|x| x.abs().sqrt() as f32).collect();
            let a_in: Vec<Vec<f32>> = present.iter().map(|(_, s)| s.modules[module].0.data.clone()).collect();
            let b_in: Vec<Vec<f32>> = present.iter().map(|(_, s)| s.modules[module].1.data.clone()).collect();
            let a = combine_tensors(combination, &a_in, &ma, opts, &mut rng)?;
            let b = combine_tensors(combination, &b_in, &mb, opts, &mut rng)?;
            (Mat { rows: r, cols: d_in, data: a }, Mat { rows: d_out, cols: r, data: b })
        };
        tensors.push((format!("{module}.lora_A.weight"), a.to_data()));
        tensors.push((format!("{module}.lora_B.weight"), b.to_data()));
    }
    Ok((combined_config(sources, r)?, to_safetensors(tensors)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_on_factors_elects_by_unweighted_sums_and_averages_the_agreeing() {
        let opts = Combine {
            combination: "ties".into(),
            weights: vec![1.0, 1.0],
            density: Some(1.0),
            majority: Majority::Total,
            svd_rank: None,
            svd_clamp: None,
            seed: 0,
        };
        let xs = vec![vec![1.0, -2.0, 0.5], vec![3.0, 1.0, -0.25]];
        // Signs by summed values: +, -, +; the second entry keeps only the first source.
        let out = combine_tensors("ties", &xs, &[1.0, 0.5], &opts, &mut Rng::new(0)).unwrap();
        assert_eq!(out, vec![(1.0 + 1.5) / 2.0, -2.0, 0.5]);
        assert_eq!(magnitude_prune(&[0.1, -3.0, 2.0, 0.2], 0.5), vec![0.0, -3.0, 2.0, 0.0]);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
    }

    #[test]
    fn dare_drops_about_one_minus_density_and_rescales_the_rest() {
        let opts = Combine {
            combination: "dare_linear".into(),
            weights: vec![1.0],
            density: Some(0.25),
            majority: Majority::Total,
            svd_rank: None,
            svd_clamp: None,
            seed: 0,
        };
        let x = vec![vec![2.0f32; 4000]];
        let out = combine_tensors("dare_linear", &x, &[1.0], &opts, &mut Rng::new(5)).unwrap();
        let kept: Vec<f32> = out.iter().copied().filter(|v| *v != 0.0).collect();
        assert!((kept.len() as f64 / 4000.0 - 0.25).abs() < 0.03, "{}", kept.len());
        assert!(kept.iter().all(|v| *v == 8.0), "kept entries are divided by the density");
        // Density 1 keeps everything: DARE is then the plain sum.
        let all = Combine { density: Some(1.0), ..opts };
        assert_eq!(combine_tensors("dare_linear", &x, &[0.5], &all, &mut Rng::new(5)).unwrap(), vec![1.0f32; 4000]);
    }
}
