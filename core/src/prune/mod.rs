//! Pruning: removing weights, heads, neurons or layers from a trained model (curriculum 20,
//! issue 18). Everything here works on a `Gpt` in memory; `tinytune prune` reads and writes
//! the folders. `docs/pruning.md` states each rule and where it comes from.
//!
//! - `select.rs` — the k lowest of a list of scores, ties by index: every rule's last step.
//! - `unstructured.rs` — single weights of the blocks' linear maps set to zero: magnitude
//!   (per matrix or one global threshold), Wanda (`|W|·‖X‖` per output row), and N:M
//!   patterns (2:4) with either score. The model keeps its shape.
//! - `structured.rs` — Minitron's width and depth pruning: attention heads (whole key/value
//!   groups), MLP neurons and whole blocks, ranked by calibration activations, sliced out
//!   into a smaller model with a config that says so.
//! - `calibrate.rs` — calibration batches from a `DataSource`, embedded, and the per-token
//!   cosine similarity the depth rule reads. Activations are recorded by the projections
//!   themselves (`model::record`).

pub mod calibrate;
pub mod select;
pub mod structured;
pub mod unstructured;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use calibrate::calibration_batches;
pub use structured::{Importance, Keep, StructuredReport, importance, prune_structured, slice};
pub use unstructured::{MatrixReport, UnstructuredReport, prune_unstructured};

use crate::error::{Error, Result};
use crate::model::{Gpt, ModelConfig};
use crate::train::Batch;

/// What pruning errors name as their origin (a flag's field: `sparsity`, `heads`, ...).
pub const ORIGIN: &str = "prune";

/// Why GPT-2's heads are not pruned.
pub(crate) const GPT2_HEADS: &str = "GPT-2's config.json has no head width of its own (transformers computes head_dim = n_embd / n_head, and transformers 5 \
     no longer reads pruned_heads), so a GPT-2 with fewer heads of the same width cannot be written down or loaded; prune heads of a Llama-family \
     model (its config carries head_dim), or prune `neurons` and `layers`";

/// How unstructured pruning scores a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Criterion {
    /// `|W_ij|` (Han et al., 2015).
    Magnitude,
    /// `|W_ij| · ‖X_j‖₂` over calibration tokens (Sun et al., 2023).
    Wanda,
}

impl FromStr for Criterion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "magnitude" => Ok(Self::Magnitude),
            "wanda" => Ok(Self::Wanda),
            other => Err(Error::config(ORIGIN, "method", format!("'{other}' is not a pruning method; choose magnitude or wanda"))),
        }
    }
}

/// Where magnitude pruning's threshold applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Each weight matrix loses the same share.
    Layer,
    /// One threshold over all the matrices together.
    Global,
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "layer" => Ok(Self::Layer),
            "global" => Ok(Self::Global),
            other => Err(Error::config(ORIGIN, "scope", format!("'{other}' is not a scope; choose layer (each matrix alike) or global (one threshold)"))),
        }
    }
}

/// N:M semi-structured sparsity: in every M consecutive inputs of an output row, at least N
/// weights are zero (2:4 keeps the two largest of every four).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub n: usize,
    pub m: usize,
}

impl FromStr for Pattern {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let parsed = s.split_once(':').and_then(|(n, m)| Some((n.trim().parse().ok()?, m.trim().parse().ok()?)));
        let Some((n, m)) = parsed else {
            return Err(Error::config(ORIGIN, "pattern", format!("'{s}' is not N:M (two whole numbers, e.g. 2:4)")));
        };
        let p = Pattern { n, m };
        p.validate()?;
        Ok(p)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}", self.n, self.m)
    }
}

impl Pattern {
    fn validate(&self) -> Result<()> {
        if self.n == 0 {
            return Err(Error::config(ORIGIN, "pattern", "N:M zeroes N of every M consecutive inputs; N must be at least 1 (2:4 zeroes 2 of every 4)"));
        }
        if self.n >= self.m {
            return Err(Error::config(
                ORIGIN,
                "pattern",
                format!("{self} would zero every weight of each group; N must be smaller than M (2:4 zeroes 2 of every 4)"),
            ));
        }
        Ok(())
    }
}

/// How many weights unstructured pruning zeroes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// This share of each matrix (scope layer), of all matrices (global) or of each output
    /// row (Wanda), rounded down.
    Sparsity(f64),
    /// N of every M consecutive inputs of each output row.
    Pattern(Pattern),
}

/// Unstructured pruning's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unstructured {
    pub criterion: Criterion,
    pub target: Target,
    pub scope: Scope,
}

/// Structured pruning's settings: how many of each to keep (None: all).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Structured {
    /// Attention heads per block.
    pub heads: Option<usize>,
    /// MLP hidden neurons per block.
    pub neurons: Option<usize>,
    /// Transformer blocks.
    pub layers: Option<usize>,
}

/// One pruning request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Plan {
    Unstructured(Unstructured),
    Structured(Structured),
}

impl Plan {
    /// Whether the plan reads activations (Wanda, structured): it needs calibration batches.
    pub fn needs_calibration(&self) -> bool {
        !matches!(self, Plan::Unstructured(Unstructured { criterion: Criterion::Magnitude, .. }))
    }

    /// Checks the plan against the model it prunes, naming the setting (`sparsity`,
    /// `pattern`, `scope`, `heads`, `neurons`, `layers`) and the fix.
    pub fn validate(&self, config: &ModelConfig) -> Result<()> {
        let bad = |field: &str, problem: String| Err(Error::config(ORIGIN, field, problem));
        match self {
            Plan::Unstructured(u) => {
                match u.target {
                    Target::Sparsity(s) if !(0.0..1.0).contains(&s) => {
                        return bad("sparsity", format!("{s} is outside [0, 1): it is the share of the weights set to zero (0.5 zeroes half)"));
                    }
                    Target::Sparsity(_) => {}
                    Target::Pattern(p) => {
                        p.validate()?;
                        // The input widths of the blocks' linear maps: the residual stream,
                        // the attention output and the MLP's hidden layer.
                        let widths = [config.n_embd, config.n_head * config.head_dim(), config.inner()];
                        if let Some(w) = widths.iter().find(|w| !w.is_multiple_of(p.m)) {
                            return bad(
                                "pattern",
                                format!(
                                    "{p} groups M = {} consecutive inputs, but a linear map of this model has {w} inputs; pick an M that divides {widths:?}",
                                    p.m
                                ),
                            );
                        }
                    }
                }
                if u.scope == Scope::Global {
                    if u.criterion == Criterion::Wanda {
                        return bad("scope", "Wanda compares the weights of each output row with each other; global goes with `method` magnitude".into());
                    }
                    if let Target::Pattern(_) = u.target {
                        return bad("scope", "an N:M `pattern` holds within each group of M inputs; global goes with `sparsity`".into());
                    }
                }
            }
            Plan::Structured(s) => {
                if *s == Structured::default() {
                    return Err(Error::Invalid("nothing to prune: say how many `heads`, `neurons` or `layers` to keep".into()));
                }
                if let Some(k) = s.heads {
                    let rep = config.n_head / config.n_kv_head;
                    if !config.family.is_llama_like() {
                        return bad("heads", GPT2_HEADS.into());
                    }
                    if k == 0 || k > config.n_head {
                        return bad("heads", format!("keeps {k} heads per block; the model has {}, so keep 1 to {}", config.n_head, config.n_head));
                    }
                    if !k.is_multiple_of(rep) {
                        return bad(
                            "heads",
                            format!(
                                "{} query heads share {} key/value heads, {rep} to a group, and a group goes whole; keep a multiple of {rep}",
                                config.n_head, config.n_kv_head
                            ),
                        );
                    }
                }
                if let Some(n) = s.neurons
                    && (n == 0 || n > config.inner())
                {
                    return bad("neurons", format!("keeps {n} MLP neurons per block; the model has {}, so keep 1 to {}", config.inner(), config.inner()));
                }
                if let Some(l) = s.layers
                    && (l == 0 || l > config.n_layer)
                {
                    return bad("layers", format!("keeps {l} blocks; the model has {}, so keep 1 to {}", config.n_layer, config.n_layer));
                }
            }
        }
        Ok(())
    }
}

/// Parameters in all, and those that are not zero.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Counts {
    pub total: usize,
    pub nonzero: usize,
}

/// Counts `model`'s parameters and its non-zero ones (read back to the host).
pub fn counts(model: &Gpt) -> Counts {
    let mut c = Counts { total: 0, nonzero: 0 };
    for (_, data) in crate::model::params::param_data(model) {
        let values = data.convert::<f32>().try_to_vec::<f32>().expect("f32 parameters");
        c.total += values.len();
        c.nonzero += values.iter().filter(|&&v| v != 0.0).count();
    }
    c
}

/// What a pruning did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub before: Counts,
    pub after: Counts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unstructured: Option<UnstructuredReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured: Option<StructuredReport>,
}

/// Refuses a model whose weights are not all in its plain parameters: adapters beside the
/// weights (LoRA, DoRA, IA³, bottleneck adapters), a quantized base, soft prompts or
/// prefixes (which pruning would leave out of step), or a reward model's score head.
pub fn check_prunable(model: &Gpt) -> Result<()> {
    let refuse = |what: &str, fix: &str| Err(Error::Invalid(format!("the model carries {what}; {fix}")));
    let fold = "fold them into the weights first (merge the adapters), then prune the merged model";
    for block in &model.h {
        for (_, p) in block.projections() {
            if p.lora.is_some() || p.ia3.is_some() || p.merged.is_some() || p.bank.is_some() {
                return refuse("LoRA, DoRA or IA³ adapters beside its weights", fold);
            }
            if p.weight.is_none() || p.frozen.is_some() {
                return refuse("a quantized base (QLoRA)", fold);
            }
        }
        if block.adapter_attn.is_some() || block.adapter_mlp.is_some() {
            return refuse("bottleneck adapters, which cannot be folded into the weights", "prune the base model, then train the adapters on it");
        }
    }
    if model.prompt.is_some() || model.prefix.is_some() {
        return refuse("a soft prompt or prefix, which cannot be folded into the weights", "prune the base model, then train the prompt on it");
    }
    if model.score.is_some() {
        return refuse("a reward model's score head", "prune the language model it was trained from");
    }
    Ok(())
}

/// Prunes `model` as `plan` says, calibrating on `calibration` where the plan reads
/// activations ([`calibration_batches`]).
pub fn prune(model: Gpt, plan: &Plan, calibration: &[Batch]) -> Result<(Gpt, Report)> {
    check_prunable(&model)?;
    plan.validate(&model.config)?;
    let before = counts(&model);
    let (model, unstructured, structured) = match plan {
        Plan::Unstructured(u) => {
            let (m, r) = prune_unstructured(model, u, calibration)?;
            (m, Some(r), None)
        }
        Plan::Structured(s) => {
            let (m, r) = prune_structured(model, s, calibration)?;
            (m, None, Some(r))
        }
    };
    let after = counts(&model);
    Ok((model, Report { before, after, unstructured, structured }))
}

#[cfg(test)]
mod tests {
    //! Each rule on the nano shapes: exact counts, the N:M pattern in the saved file, Wanda's
    //! choice where it differs from magnitude's, and structured pruning that removes exactly
    //! what it ranks lowest and leaves a model equal to the hand-sliced one.

    use std::collections::HashMap;

    use burn::module::Param;
    use burn::tensor::{Device, Int, Tensor, TensorData};

    use super::*;
    use crate::checkpoint::{from_safetensors, load_model, save_model};
    use crate::data::CHARSET;
    use crate::data::rng::Rng;
    use crate::model::projection::Projection;
    use crate::tokenizer::TextTokenizer;
    use crate::train::DataSource;

    fn device() -> Device {
        Device::flex()
    }

    /// `n` batches of 2 rows of 16 random tokens, the second row's last 4 positions padding.
    fn batches(vocab: usize, n: usize, seed: u64) -> Vec<Batch> {
        let mut rng = Rng::new(seed);
        (0..n)
            .map(|_| {
                let ids: Vec<u32> = (0..32).map(|_| rng.below(vocab) as u32).collect();
                let weights = (0..32).map(|i| if i >= 28 { 0.0 } else { 1.0 }).collect();
                Batch { b: 2, t: 16, inputs: ids.clone(), targets: ids, weights, ..Default::default() }
            })
            .collect()
    }

    fn logits(model: &Gpt) -> Vec<f32> {
        let ids: Vec<i64> = (0..24).map(|i| (i * 7 % model.config.vocab_size) as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 12]), &model.device());
        model.forward(ids).into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Every projection weight as `[out, in]` rows, by path.
    fn linear_weights(model: &Gpt) -> Vec<(String, Vec<f32>, usize, usize)> {
        let mut out = Vec::new();
        for (i, block) in model.h.iter().enumerate() {
            for (name, p) in block.projections() {
                let w = p.weight.as_ref().unwrap().val();
                let [d_in, d_out] = w.dims();
                out.push((format!("h.{i}.{name}"), w.transpose().into_data().try_to_vec::<f32>().unwrap(), d_out, d_in));
            }
        }
        out
    }

    fn unstructured(criterion: Criterion, target: Target, scope: Scope) -> Plan {
        Plan::Unstructured(Unstructured { criterion, target, scope })
    }

    /// Every parameter but the blocks' linear weights, by path.
    fn other_params(model: &Gpt) -> HashMap<String, Vec<f32>> {
        crate::model::params::param_data(model)
            .into_iter()
            .filter(|(name, _)| !(name.starts_with("h.") && name.ends_with("_proj.weight") || name.ends_with("c_attn.weight") || name.ends_with("c_fc.weight")))
            .map(|(name, d)| (name, d.try_to_vec::<f32>().unwrap()))
            .collect()
    }

    #[test]
    fn magnitude_per_matrix_zeroes_exactly_the_share_of_the_smallest() {
        let model = Gpt::init(&ModelConfig::nano(), 3, &device());
        let others = other_params(&model);
        let (pruned, report) = prune(model, &unstructured(Criterion::Magnitude, Target::Sparsity(0.3), Scope::Layer), &[]).unwrap();
        for (path, w, d_out, d_in) in linear_weights(&pruned) {
            let n = d_out * d_in;
            let zeros = w.iter().filter(|&&x| x == 0.0).count();
            assert_eq!(zeros, (0.3 * n as f64).floor() as usize, "{path}");
            // Dense before: what went is exactly the smallest.
            let report_zeros = report.unstructured.as_ref().unwrap().matrices.iter().find(|m| m.path == path).unwrap().zeros;
            assert_eq!(report_zeros, zeros);
        }
        let original = Gpt::init(&ModelConfig::nano(), 3, &device());
        for ((path, before, ..), (_, after, ..)) in linear_weights(&original).into_iter().zip(linear_weights(&pruned)) {
            let biggest_gone = before.iter().zip(&after).filter(|(_, a)| **a == 0.0).map(|(b, _)| b.abs()).fold(0.0, f32::max);
            let smallest_kept = after.iter().filter(|a| **a != 0.0).map(|a| a.abs()).fold(f32::INFINITY, f32::min);
            assert!(biggest_gone <= smallest_kept, "{path}: removed {biggest_gone} but kept {smallest_kept}");
        }
        assert_eq!(other_params(&pruned), others, "embeddings, norms and biases stay");
        assert_eq!(report.before.total, report.after.total);
        assert_eq!(report.before.nonzero - report.after.nonzero, report.unstructured.unwrap().zeros().0);
    }

    #[test]
    fn global_magnitude_uses_one_threshold_over_all_matrices() {
        let model = Gpt::init(&ModelConfig::nano(), 4, &device());
        let (pruned, report) = prune(model, &unstructured(Criterion::Magnitude, Target::Sparsity(0.5), Scope::Global), &[]).unwrap();
        let weights = linear_weights(&pruned);
        let n: usize = weights.iter().map(|(_, w, ..)| w.len()).sum();
        let zeros: usize = weights.iter().map(|(_, w, ..)| w.iter().filter(|&&x| x == 0.0).count()).sum();
        assert_eq!(zeros, n / 2);
        let original = linear_weights(&Gpt::init(&ModelConfig::nano(), 4, &device()));
        let gone = original.iter().zip(&weights).flat_map(|((_, b, ..), (_, a, ..))| b.iter().zip(a).filter(|(_, a)| **a == 0.0).map(|(b, _)| b.abs()));
        let kept = weights.iter().flat_map(|(_, a, ..)| a.iter().filter(|a| **a != 0.0).map(|a| a.abs()));
        assert!(gone.fold(0.0, f32::max) <= kept.fold(f32::INFINITY, f32::min));
        // GPT-2 draws the output projections smaller, so they lose more than half and c_attn less.
        let share = |m: &MatrixReport| m.zeros as f64 / (m.shape[0] * m.shape[1]) as f64;
        let matrices = report.unstructured.unwrap().matrices;
        let (attn, proj) = (matrices.iter().find(|m| m.path == "h.0.attn.c_attn").unwrap(), matrices.iter().find(|m| m.path == "h.0.attn.c_proj").unwrap());
        assert!(share(proj) > 0.5 && share(attn) < 0.5, "c_proj {} c_attn {}", share(proj), share(attn));
    }

    /// The N:M pattern, read back from the saved safetensors file in each family's layout
    /// (GPT-2's Conv1D `[in, out]`, the Llama family's `nn.Linear` `[out, in]`): in every M
    /// consecutive inputs of an output, exactly N zeros, and the kept ones are the largest.
    #[test]
    fn n_m_pattern_holds_in_every_group_of_the_saved_weights() {
        for (config, criterion, pattern) in
            [(ModelConfig::nano(), Criterion::Magnitude, Pattern { n: 2, m: 4 }), (ModelConfig::nano_llama(), Criterion::Wanda, Pattern { n: 1, m: 4 })]
        {
            let model = Gpt::init(&config, 5, &device());
            let original = linear_weights(&model);
            let (pruned, _) = prune(model, &unstructured(criterion, Target::Pattern(pattern), Scope::Layer), &batches(config.vocab_size, 2, 1)).unwrap();
            let file = from_safetensors(&save_model(&pruned), &"model.safetensors".into()).unwrap();
            let llama = config.family.is_llama_like();
            for (path, before, d_out, d_in) in original {
                let name = crate::model::names::to_file(config.family, &format!("{path}.weight"));
                let data = file[&name].clone().convert::<f32>().try_to_vec::<f32>().unwrap();
                let at = |o: usize, i: usize| if llama { data[o * d_in + i] } else { data[i * d_out + o] };
                for o in 0..d_out {
                    for g in 0..d_in / pattern.m {
                        let group: Vec<f32> = (0..pattern.m).map(|k| at(o, g * pattern.m + k)).collect();
                        assert_eq!(group.iter().filter(|&&x| x == 0.0).count(), pattern.n, "{name} row {o} group {g}: {group:?}");
                        if criterion == Criterion::Magnitude {
                            let b = &before[o * d_in + g * pattern.m..o * d_in + (g + 1) * pattern.m];
                            let gone = b.iter().zip(&group).filter(|(_, a)| **a == 0.0).map(|(b, _)| b.abs()).fold(0.0, f32::max);
                            let kept = group.iter().filter(|a| **a != 0.0).map(|a| a.abs()).fold(f32::INFINITY, f32::min);
                            assert!(gone <= kept);
                        }
                    }
                }
            }
        }
    }

    /// A hand-built case where the two rules disagree: block 0's LayerNorm scales the first half
    /// of the features by 100 and the second half by 0.01, and c_attn's weights on the first
    /// half are 1000 times smaller. Magnitude zeroes the small weights; Wanda, scoring
    /// `|w|·‖x‖` (first half ≈ 0.001·100, second ≈ 1·0.01), zeroes the large ones, which
    /// read nearly silent inputs.
    #[test]
    fn wanda_scores_weights_by_their_input_norm() {
        let config = ModelConfig::nano();
        let c = config.n_embd;
        let build = || {
            let mut model = Gpt::init(&config, 6, &device());
            let d = model.device();
            let gamma: Vec<f32> = (0..c).map(|j| if j < c / 2 { 100.0 } else { 0.01 }).collect();
            model.h[0].ln_1.weight = Param::from_tensor(Tensor::from_data(TensorData::new(gamma, [c]), &d));
            let p: &mut Projection = model.h[0].attn.c_attn.as_mut().unwrap();
            let w: Vec<f32> = (0..c * 3 * c).map(|k| (if k / (3 * c) < c / 2 { 0.001 } else { 1.0 }) * (1.0 + (k % 7) as f32 * 0.01)).collect();
            p.weight = Some(Param::from_tensor(Tensor::from_data(TensorData::new(w, [c, 3 * c]), &d)));
            model
        };
        let calib = batches(config.vocab_size, 2, 2);
        let zeros_by_half = |model: &Gpt| {
            let (_, w, d_out, d_in) = linear_weights(model).into_iter().find(|(p, ..)| p == "h.0.attn.c_attn").unwrap();
            let mut halves = [0usize; 2];
            for o in 0..d_out {
                for j in 0..d_in {
                    if w[o * d_in + j] == 0.0 {
                        halves[usize::from(j >= d_in / 2)] += 1;
                    }
                }
            }
            halves
        };
        let half = c / 2 * 3 * c;
        let (magnitude, _) = prune(build(), &unstructured(Criterion::Magnitude, Target::Sparsity(0.5), Scope::Layer), &calib).unwrap();
        assert_eq!(zeros_by_half(&magnitude), [half, 0], "magnitude removes the small weights");
        let (wanda, report) = prune(build(), &unstructured(Criterion::Wanda, Target::Sparsity(0.5), Scope::Layer), &calib).unwrap();
        assert_eq!(zeros_by_half(&wanda), [0, half], "Wanda removes the weights on the quiet inputs");
        assert_eq!(report.unstructured.unwrap().calibration_tokens, Some(2.0 * 28.0));
        // Per output row: every row of every matrix lost exactly half its inputs.
        for (path, w, d_out, d_in) in linear_weights(&wanda) {
            for o in 0..d_out {
                assert_eq!(w[o * d_in..(o + 1) * d_in].iter().filter(|&&x| x == 0.0).count(), d_in / 2, "{path} row {o}");
            }
        }
    }

    #[test]
    fn keeping_every_head_neuron_and_block_changes_nothing() {
        let config = ModelConfig::nano_llama();
        let model = Gpt::init(&config, 7, &device());
        let before = logits(&model);
        let plan = Plan::Structured(Structured { heads: Some(config.n_head), neurons: Some(config.inner()), layers: Some(config.n_layer) });
        let (pruned, report) = prune(model, &plan, &batches(config.vocab_size, 1, 3)).unwrap();
        assert_eq!(pruned.config, config);
        assert_eq!(logits(&pruned), before);
        let s = report.structured.unwrap();
        assert!(s.layers_removed.is_empty() && s.layers.iter().all(|l| l.heads_removed.is_empty() && l.neurons_removed.is_empty()));
        assert_eq!(report.before, report.after);
    }

    fn zero_outputs(p: &mut Projection, cols: std::ops::Range<usize>) {
        let w = p.weight.take().unwrap().val();
        let [d_in, d_out] = w.dims();
        let mut v = w.into_data().try_to_vec::<f32>().unwrap();
        for i in 0..d_in {
            for o in cols.clone() {
                v[i * d_out + o] = 0.0;
            }
        }
        p.weight = Some(Param::from_tensor(Tensor::from_data(TensorData::new(v, [d_in, d_out]), &device())));
        if let Some(b) = p.bias.take() {
            let mut v = b.val().into_data().try_to_vec::<f32>().unwrap();
            for o in cols {
                v[o] = 0.0;
            }
            p.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(v, [d_out]), &device())));
        }
    }

    /// A neuron whose input weights and bias are zero outputs GELU(0) = 0: least important,
    /// pruned first, and the model computes the same without it. Likewise a key/value group
    /// whose values are zero (its heads output 0) and a block whose two output projections are
    /// zero (its output is its input: Block Influence 0).
    #[test]
    fn dead_neurons_heads_and_blocks_go_first_and_the_output_stays() {
        // GPT-2: one dead neuron per block (a different one each), and block 1 an identity.
        let config = ModelConfig::nano();
        let mut model = Gpt::init(&config, 8, &device());
        let dead = [5usize, 200];
        for (l, &j) in dead.iter().enumerate() {
            zero_outputs(model.h[l].mlp.c_fc.as_mut().unwrap(), j..j + 1);
        }
        let before = logits(&model);
        let plan = Plan::Structured(Structured { neurons: Some(config.inner() - 1), ..Default::default() });
        let (pruned, report) = prune(model.clone(), &plan, &batches(config.vocab_size, 2, 4)).unwrap();
        let s = report.structured.unwrap();
        for (l, &j) in dead.iter().enumerate() {
            assert_eq!(s.layers[l].neurons_removed, vec![j]);
            assert_eq!(s.layers[l].neurons[j], 0.0);
        }
        assert_eq!(pruned.config.inner(), config.inner() - 1);
        assert_eq!(pruned.h[0].mlp.c_fc.as_ref().unwrap().d_out(), config.inner() - 1);
        assert!(max_diff(&logits(&pruned), &before) < 1e-5);
        assert_eq!(report.after.total, report.before.total - config.n_layer * (2 * config.n_embd + 1));

        zero_outputs(model.h[1].attn.c_proj.as_mut().unwrap(), 0..config.n_embd);
        zero_outputs(model.h[1].mlp.c_proj.as_mut().unwrap(), 0..config.n_embd);
        let before = logits(&model);
        let (pruned, report) =
            prune(model, &Plan::Structured(Structured { layers: Some(1), ..Default::default() }), &batches(config.vocab_size, 2, 4)).unwrap();
        let s = report.structured.unwrap();
        assert_eq!(s.layers_removed, vec![1]);
        assert!(
            s.layers[1].block_influence.abs() < 1e-6 && s.layers[0].block_influence > 1e-3,
            "{:?}",
            s.layers.iter().map(|l| l.block_influence).collect::<Vec<_>>()
        );
        assert_eq!((pruned.config.n_layer, pruned.h.len(), s.layers[0].new_index, s.layers[1].new_index), (1, 1, Some(0), None));
        assert!(max_diff(&logits(&pruned), &before) < 1e-5);

        // Llama, grouped-query attention (4 query heads on 2 key/value heads): group 1's values
        // zero in every block, so query heads 2 and 3 output nothing.
        let config = ModelConfig::nano_llama();
        let mut model = Gpt::init(&config, 9, &device());
        let hd = config.head_dim();
        for block in model.h.iter_mut() {
            zero_outputs(block.attn.v_proj.as_mut().unwrap(), hd..2 * hd);
        }
        let before = logits(&model);
        let (pruned, report) = prune(model, &Plan::Structured(Structured { heads: Some(2), ..Default::default() }), &batches(config.vocab_size, 2, 5)).unwrap();
        let s = report.structured.unwrap();
        for l in &s.layers {
            assert_eq!(l.heads_removed, vec![2, 3]);
            assert!(l.heads[2] == 0.0 && l.heads[3] == 0.0 && l.heads[0] > 0.0);
        }
        assert_eq!((pruned.config.n_head, pruned.config.n_kv_head, pruned.config.head_dim()), (2, 1, hd));
        let attn = &pruned.h[0].attn;
        assert_eq!((attn.q_proj.as_ref().unwrap().d_out(), attn.k_proj.as_ref().unwrap().d_out(), attn.o_proj.as_ref().unwrap().d_in()), (2 * hd, hd, 2 * hd));
        assert!(max_diff(&logits(&pruned), &before) < 1e-5);
    }

    /// A pruned model's config.json reads back to the same config, and its saved weights load
    /// into a fresh model of that config (the ordinary loader) that computes the same logits.
    #[test]
    fn the_pruned_config_round_trips_and_the_saved_model_loads() {
        let tok = TextTokenizer::char_level(CHARSET);
        let calib = calibration_batches(&DataSource::Task(crate::data::Task::Sentiment), &tok, 0, 2, 4, 128).unwrap();
        assert_eq!(calib.len(), 2);
        // Each row counts its tokens, prompt included, and not its padding.
        for b in &calib {
            assert_eq!((b.b, b.t), (4, 128));
            for row in b.weights.chunks(b.t) {
                let n = row.iter().filter(|&&w| w == 1.0).count();
                assert!(n > 10 && row[..n].iter().all(|&w| w == 1.0) && row[n..].iter().all(|&w| w == 0.0), "{row:?}");
            }
        }
        assert!(calib.iter().any(|b| b.weights.contains(&0.0)), "some padding");
        for (config, plan) in [
            (ModelConfig::nano_llama(), Structured { heads: Some(2), neurons: Some(100), layers: Some(1) }),
            (ModelConfig::nano(), Structured { heads: None, neurons: Some(96), layers: Some(1) }),
        ] {
            let model = Gpt::init(&config, 10, &device());
            let (pruned, report) = prune(model, &Plan::Structured(plan), &calib).unwrap();
            let c = pruned.config.clone();
            assert_eq!((c.n_layer, c.inner(), c.n_head), (1, plan.neurons.unwrap(), plan.heads.unwrap_or(config.n_head)));
            assert_eq!(ModelConfig::from_json(&c.to_json(), "config.json").unwrap(), c);
            assert_eq!(report.after.total, c.num_params(), "the closed form agrees with the sliced model");
            let loaded = load_model(&c, &save_model(&pruned), &device(), "model.safetensors").unwrap();
            assert_eq!(logits(&loaded), logits(&pruned));
        }
    }

    #[test]
    fn bad_plans_name_the_setting() {
        let gpt2 = ModelConfig::nano();
        let llama = ModelConfig::nano_llama();
        let check = |config: &ModelConfig, plan: Plan, field: &str| {
            let e = plan.validate(config).unwrap_err();
            assert!(matches!(&e, Error::Config { field: f, .. } if f == field), "{e}");
        };
        let s = |x| unstructured(Criterion::Magnitude, Target::Sparsity(x), Scope::Layer);
        check(&gpt2, s(1.0), "sparsity");
        check(&gpt2, s(-0.1), "sparsity");
        check(&gpt2, s(f64::NAN), "sparsity");
        check(&gpt2, unstructured(Criterion::Magnitude, Target::Pattern(Pattern { n: 1, m: 3 }), Scope::Layer), "pattern");
        check(&gpt2, unstructured(Criterion::Wanda, Target::Sparsity(0.5), Scope::Global), "scope");
        check(&gpt2, unstructured(Criterion::Magnitude, Target::Pattern(Pattern { n: 2, m: 4 }), Scope::Global), "scope");
        let st = |heads, neurons, layers| Plan::Structured(Structured { heads, neurons, layers });
        check(&gpt2, st(Some(2), None, None), "heads");
        assert!(st(Some(2), None, None).validate(&gpt2).unwrap_err().to_string().contains("head_dim"));
        check(&llama, st(Some(3), None, None), "heads");
        check(&llama, st(Some(5), None, None), "heads");
        check(&llama, st(Some(0), None, None), "heads");
        check(&llama, st(None, Some(0), None), "neurons");
        check(&llama, st(None, Some(173), None), "neurons");
        check(&llama, st(None, None, Some(0)), "layers");
        check(&llama, st(None, None, Some(3)), "layers");
        assert!(st(None, None, None).validate(&llama).is_err());
        for (text, field) in [("4:4", "pattern"), ("0:4", "pattern"), ("2-4", "pattern")] {
            assert!(matches!(text.parse::<Pattern>(), Err(Error::Config { field: f, .. }) if f == field), "{text}");
        }
        assert_eq!("2:4".parse::<Pattern>().unwrap(), Pattern { n: 2, m: 4 });
        assert!("obd".parse::<Criterion>().is_err() && "local".parse::<Scope>().is_err());
        // Wanda without calibration batches, and a model with adapters, are refused.
        let model = Gpt::init(&gpt2, 1, &device());
        assert!(prune(model.clone(), &unstructured(Criterion::Wanda, Target::Sparsity(0.5), Scope::Layer), &[]).is_err());
        let lora = crate::methods::Method::Lora(crate::methods::LoraConfig::default()).apply(model, 0, &device()).unwrap();
        let e = prune(lora, &s(0.5), &[]).unwrap_err().to_string();
        assert!(e.contains("LoRA") && e.contains("merge"), "{e}");
    }
}
