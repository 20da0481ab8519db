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
mod tests;
