//! mergekit's YAML, as people write and share it:
//!
//! ```yaml
//! models:
//!   - model: runs/sentiment          # a model folder (or a hub id elsewhere)
//!     parameters: {weight: 0.5, density: 0.5}
//!   - model: runs/story-qa
//!     parameters: {weight: 0.5, density: 0.5}
//! merge_method: ties
//! base_model: assets/micro
//! parameters: {normalize: true}
//! dtype: float32
//! ```
//!
//! Parameters are plain numbers here; mergekit's per-layer gradients (lists) and filtered
//! values (`- filter: self_attn`) are refused with that said, as are `slices` other than a
//! passthrough's single-source layer ranges, so a config never merges differently than it
//! reads.

use serde::Deserialize;
use serde_json::Value;

use super::Share;
use crate::error::{Error, Origin, Result};

/// How the task-vector methods thin each task vector before mixing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsify {
    None,
    /// Keep the largest magnitudes (TIES).
    Magnitude,
    /// Keep each entry with probability `density` (DARE).
    Random,
    /// Drop the largest `gamma` share, then the smallest (Model Breadcrumbs).
    Outliers,
}

/// A merge method with its global parameters resolved (mergekit's defaults where unset).
#[derive(Clone, Debug, PartialEq)]
pub enum MergeMethod {
    Linear {
        normalize: bool,
    },
    Slerp {
        t: f64,
    },
    TaskVectors {
        sparsify: Sparsify,
        consensus: bool,
        normalize: bool,
        rescale: bool,
        lambda: f64,
    },
    /// Model Stock (Jang et al., 2024): the fine-tunes' average pulled toward the base by
    /// how aligned their task vectors are.
    ModelStock,
    /// Layer stacking (`slices`): each output layer copied from one layer of one model.
    Passthrough,
}

/// One `slices:` entry of a passthrough merge: layers `start..end` of `model`, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSlice {
    pub model: String,
    pub start: usize,
    pub end: usize,
}

/// The methods tinytune merges with, by mergekit's names.
pub const METHODS: [&str; 10] =
    ["linear", "slerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "model_stock", "passthrough"];

impl MergeMethod {
    /// `name` with the global `parameters` (`normalize`, `t`, `rescale`, `lambda`).
    pub fn parse(name: &str, parameters: &serde_json::Map<String, Value>) -> Result<Self> {
        let origin = Origin::from("merge config");
        let flag = |key: &str, default: bool| -> Result<bool> {
            match parameters.get(key) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(Error::config(origin.clone(), format!("parameters.{key}"), format!("is {other}; write true or false"))),
            }
        };
        let number = |key: &str, default: Option<f64>| -> Result<f64> {
            match parameters.get(key) {
                None => default.ok_or_else(|| Error::config(origin.clone(), format!("parameters.{key}"), "is required by this merge method")),
                Some(v) => plain_number(v).ok_or_else(|| Error::config(origin.clone(), format!("parameters.{key}"), not_plain(v))),
            }
        };
        let tv = |sparsify, consensus, normalize: bool, rescale: bool| -> Result<Self> {
            Ok(Self::TaskVectors {
                sparsify,
                consensus,
                normalize: flag("normalize", normalize)?,
                rescale: flag("rescale", rescale)?,
                lambda: number("lambda", Some(1.0))?,
            })
        };
        match name {
            "linear" => Ok(Self::Linear { normalize: flag("normalize", true)? }),
            "slerp" => {
                let t = number("t", None)?;
                if !(0.0..=1.0).contains(&t) {
                    return Err(Error::config(origin, "parameters.t", format!("is {t}; SLERP's t runs from 0 (the base model) to 1 (the other)")));
                }
                Ok(Self::Slerp { t })
            }
            // mergekit's defaults per method (merge_methods/registry.py).
            "task_arithmetic" => tv(Sparsify::None, false, false, false),
            "ties" => tv(Sparsify::Magnitude, true, true, false),
            "dare_linear" => tv(Sparsify::Random, false, false, true),
            "dare_ties" => tv(Sparsify::Random, true, false, true),
            "breadcrumbs" => tv(Sparsify::Outliers, false, false, false),
            "breadcrumbs_ties" => tv(Sparsify::Outliers, true, false, false),
            "passthrough" => Ok(Self::Passthrough),
            "model_stock" => {
                if flag("filter_wise", false)? {
                    return Err(Error::config(
                        origin,
                        "parameters.filter_wise",
                        "is true; tinytune's model_stock measures each tensor's angle as a whole (filter_wise: false)",
                    ));
                }
                Ok(Self::ModelStock)
            }
            "nuslerp" | "multislerp" | "karcher" | "della" | "della_linear" | "sce" | "arcee_fusion" | "nearswap" => Err(Error::config(
                origin,
                "merge_method",
                format!("{name} is a mergekit method tinytune does not merge with yet; use one of {}", METHODS.join(", ")),
            )),
            other => Err(Error::config(origin, "merge_method", format!("{other:?} is not a merge method; use one of {}", METHODS.join(", ")))),
        }
    }

    /// Whether the method needs `base_model`.
    pub fn needs_base(&self) -> bool {
        !matches!(self, Self::Linear { .. } | Self::Passthrough)
    }
}

/// One `models:` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    pub model: String,
    pub weight: f64,
    pub density: f64,
    pub gamma: f64,
}

impl ModelEntry {
    pub fn share(&self) -> Share {
        Share { weight: self.weight, density: self.density, gamma: self.gamma }
    }
}

/// A parsed mergekit config.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeConfig {
    pub method: MergeMethod,
    pub method_name: String,
    pub base_model: Option<String>,
    pub models: Vec<ModelEntry>,
    /// A passthrough merge's layers, in output order.
    pub slices: Vec<LayerSlice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    merge_method: String,
    #[serde(default)]
    models: Vec<RawModel>,
    base_model: Option<String>,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
    dtype: Option<String>,
    out_dtype: Option<String>,
    slices: Option<Vec<RawSlice>>,
    tokenizer_source: Option<Value>,
    tokenizer: Option<Value>,
    chat_template: Option<Value>,
    name: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlice {
    sources: Vec<RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    model: String,
    layer_range: [usize; 2],
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    model: String,
    #[serde(default)]
    parameters: serde_json::Map<String, Value>,
}

fn plain_number(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn not_plain(v: &Value) -> String {
    match v {
        Value::Array(_) => "is a list (a per-layer gradient), which tinytune does not read yet; give one number".into(),
        Value::Object(_) => "is a filtered value (filter/value), which tinytune does not read yet; give one number".into(),
        other => format!("is {other}; give a number"),
    }
}

impl MergeConfig {
    /// Parses mergekit's YAML `text`; `origin` names the file in errors.
    pub fn from_yaml(text: &str, origin: impl Into<Origin>) -> Result<Self> {
        let origin = origin.into();
        let raw: RawConfig = yaml_serde::from_str(text).map_err(|e| Error::parse(origin.clone(), format!("not a mergekit config ({e})")))?;
        let at = |field: &str, problem: String| Error::config(origin.clone(), field, problem);
        let method_is_passthrough = raw.merge_method == "passthrough";
        let mut slices = Vec::new();
        match (&raw.slices, method_is_passthrough) {
            (Some(_), false) => {
                return Err(at(
                    "slices",
                    format!(
                        "blending layer ranges with {} is not merged by tinytune yet; stack layers with merge_method: passthrough, or list whole models under models:",
                        raw.merge_method
                    ),
                ));
            }
            (None, true) => return Err(at("slices", "passthrough stacks layers: list them as slices (sources with model and layer_range)".into())),
            (Some(raw_slices), true) => {
                for (i, slice) in raw_slices.iter().enumerate() {
                    let [source] = &slice.sources[..] else {
                        return Err(at(&format!("slices[{i}].sources"), "has several sources; passthrough copies each slice from one model".into()));
                    };
                    if let Some(k) = source.parameters.keys().next() {
                        return Err(at(&format!("slices[{i}].sources[0].parameters.{k}"), "is not read by tinytune's passthrough; leave it out".into()));
                    }
                    let [start, end] = source.layer_range;
                    if start >= end {
                        return Err(at(
                            &format!("slices[{i}].sources[0].layer_range"),
                            format!("is [{start}, {end}]; give [first, one past the last] with first < last"),
                        ));
                    }
                    slices.push(LayerSlice { model: source.model.clone(), start, end });
                }
                if slices.is_empty() {
                    return Err(at("slices", "lists no slices".into()));
                }
            }
            (None, false) => {}
        }
        for (key, v) in [("dtype", &raw.dtype), ("out_dtype", &raw.out_dtype)] {
            if let Some(d) = v
                && d != "float32"
            {
                return Err(at(key, format!("is {d}; tinytune merges and writes FP32, so write float32 or leave it out")));
            }
        }
        if let Some(v) = raw.tokenizer_source.as_ref().or(raw.tokenizer.as_ref()) {
            return Err(at("tokenizer_source", format!("is {v}; the merged model takes the base model's (or the first model's) tokenizer, so leave it out")));
        }
        let _ = (&raw.chat_template, &raw.name);
        let method = MergeMethod::parse(&raw.merge_method, &raw.parameters).map_err(|e| relabel(e, &origin))?;
        if method == MergeMethod::Passthrough {
            if !raw.models.is_empty() {
                return Err(at("models", "passthrough takes its layers from slices; leave models out".into()));
            }
            return Ok(Self { method, method_name: raw.merge_method, base_model: raw.base_model, models: Vec::new(), slices });
        }
        if raw.models.is_empty() {
            return Err(at("models", "lists no models; add `- model: PATH` entries".into()));
        }
        let mut models = Vec::new();
        for (i, m) in raw.models.iter().enumerate() {
            let field = |k: &str| format!("models[{i}].parameters.{k}");
            let number = |k: &str, default: Option<f64>| -> Result<f64> {
                match m.parameters.get(k) {
                    None => default.ok_or_else(|| at(&field(k), format!("is required by {}", raw.merge_method))),
                    Some(v) => plain_number(v).ok_or_else(|| at(&field(k), not_plain(v))),
                }
            };
            for k in m.parameters.keys() {
                if !["weight", "density", "gamma"].contains(&k.as_str()) {
                    return Err(at(&field(k), "is not a model parameter tinytune reads; use weight, density or gamma".into()));
                }
            }
            let is_base = raw.base_model.as_deref() == Some(m.model.as_str());
            // The base model's own entry needs no weight (it takes no part but as the base),
            // nor does SLERP's other model, nor any of model_stock's (it weighs none).
            let weight_default = if is_base || matches!(method, MergeMethod::Slerp { .. } | MergeMethod::ModelStock) { Some(1.0) } else { None };
            let density = number("density", Some(1.0))?;
            if !(0.0..=1.0).contains(&density) || density == 0.0 {
                return Err(at(&field("density"), format!("is {density}; keep a share in (0, 1]")));
            }
            models.push(ModelEntry { model: m.model.clone(), weight: number("weight", weight_default)?, density, gamma: number("gamma", Some(0.01))? });
        }
        if method.needs_base() {
            let Some(base) = &raw.base_model else {
                return Err(at("base_model", format!("{} needs a base_model (the model the others were fine-tuned from)", raw.merge_method)));
            };
            if matches!(method, MergeMethod::Slerp { .. }) && models.iter().filter(|m| &m.model != base).count() != 1 {
                return Err(at("models", "slerp merges exactly two models: the base_model and one other".into()));
            }
        }
        Ok(Self { method, method_name: raw.merge_method, base_model: raw.base_model, models, slices })
    }

    /// Every model the merge reads: the base first (when there is one), then the entries.
    pub fn model_names(&self) -> Vec<String> {
        let mut out: Vec<String> = self.base_model.iter().cloned().collect();
        for m in self.models.iter().map(|m| &m.model).chain(self.slices.iter().map(|s| &s.model)) {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
        out
    }
}

/// A method error from `MergeMethod::parse` (labelled "merge config") relabelled with the
/// file's name.
fn relabel(e: Error, origin: &Origin) -> Error {
    match e {
        Error::Config { field, problem, .. } => Error::Config { origin: origin.clone(), field, problem },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ties_config_reads_with_mergekits_defaults() {
        let c = MergeConfig::from_yaml(
            "models:\n  - model: a\n    parameters: {weight: 0.7, density: 0.5}\n  - model: b\n    parameters:\n      weight: 0.3\nmerge_method: ties\nbase_model: base\ndtype: float32\n",
            "m.yml",
        )
        .unwrap();
        assert_eq!(c.method, MergeMethod::TaskVectors { sparsify: Sparsify::Magnitude, consensus: true, normalize: true, rescale: false, lambda: 1.0 });
        assert_eq!(c.models[0], ModelEntry { model: "a".into(), weight: 0.7, density: 0.5, gamma: 0.01 });
        assert_eq!(c.model_names(), vec!["base", "a", "b"]);
    }

    #[test]
    fn what_tinytune_cannot_merge_is_refused_naming_the_field() {
        let cases = [
            ("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n", "parameters.t"),
            ("merge_method: ties\nmodels: [{model: a, parameters: {weight: 1}}]\n", "base_model"),
            ("merge_method: linear\nmodels: [{model: a, parameters: {weight: [0, 1]}}]\n", "per-layer gradient"),
            ("merge_method: linear\nmodels: [{model: a}]\n", "models[0].parameters.weight"),
            ("merge_method: passthrough\nslices: []\n", "lists no slices"),
            ("merge_method: ties\nslices: []\nbase_model: a\n", "passthrough"),
            ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [2, 1]}]}]\n", "layer_range"),
            ("merge_method: nuslerp\nmodels: [{model: a}]\n", "does not merge with yet"),
            ("merge_method: lienar\nmodels: [{model: a}]\n", "is not a merge method"),
            ("merge_method: linear\ndtype: bfloat16\nmodels: [{model: a, parameters: {weight: 1}}]\n", "float32"),
            ("merge_method: linear\nmodles: []\n", "unknown field"),
        ];
        for (yaml, says) in cases {
            let e = MergeConfig::from_yaml(yaml, "m.yml").unwrap_err().to_string();
            assert!(e.contains("m.yml") && e.contains(says), "{yaml}: {e}");
        }
    }
}
