//! PEFT's adapter folders: `adapter_config.json` and `adapter_model.safetensors`, read onto a
//! GPT-2 or Llama-family model and written from one, so adapters move between tinytune and Hugging Face's
//! PEFT in both directions. Bytes in and out: the caller reads and writes the files.
//!
//! What maps to what (GPT-2's projections are `Conv1D`, which PEFT adapts with
//! `fan_in_fan_out`; its LoRA matrices are still `nn.Linear` weights, `[out, in]`):
//!
//! Keys are `base_model.model.` + the module's Hugging Face path (`transformer.h.N…` for
//! GPT-2, `model.layers.N.self_attn…` for the Llama family, mapped by `model::names`); the
//! Llama family's projections are `nn.Linear`, so its configs say `fan_in_fan_out: false`.
//!
//! | PEFT tensor (after the prefix, in GPT-2's names) | tinytune parameter |
//! |---|---|
//! | `h.N.{proj}.lora_A.weight` `[r, d_in]` | `h.N.{proj}.lora.lora_a` `[d_in, r]` (transposed) |
//! | `h.N.{proj}.lora_B.weight` `[d_out, r]` | `h.N.{proj}.lora.lora_b` `[r, d_out]` (transposed) |
//! | `h.N.{proj}.lora_magnitude_vector` `[d_out]` | `h.N.{proj}.lora.magnitude` (DoRA) |
//! | `{path}.base_layer.bias` (bias `all` / `lora_only`, a LoRA-wrapped module) | `{path}.bias` |
//! | `{path}.bias` (bias `all`, any other module) | `{path}.bias` |
//! | `h.N.{proj}.ia3_l` `[d_out, 1]`, or `[1, d_in]` for feedforward modules | `h.N.{proj}.ia3.ia3_l` |
//! | `prompt_embeddings` `[k, C]` (no prefix) | `prompt.embedding` |
//!
//! Supported: LoRA (with rsLoRA, DoRA and PEFT's `bias`), IA³ and prompt tuning. A reward
//! model's adapter is PEFT's sequence-classification form: `task_type` `SEQ_CLS`,
//! `modules_to_save` `["score"]`, and its trained score head stored whole as
//! `base_model.model.score.weight` (how PEFT saves a module it trains whole). Anything else
//! in a config (another `peft_type`, per-layer rank or alpha patterns, layer subsets, other
//! `modules_to_save`) is refused by name rather than silently dropped.

use std::collections::{HashMap, HashSet};

use burn::tensor::{Device, TensorData};
use serde_json::{Value, json};

use super::{Ia3Config, LoraBias, LoraConfig, LoraInit, Method, PromptConfig, PromptInit};
use crate::checkpoint::{from_safetensors, to_safetensors, transpose};
use crate::error::{Error, Origin, Result};
use crate::model::params::{load_params, param_data};
use crate::model::{Family, Gpt, named_params, names};

/// The two file names of a PEFT adapter folder.
pub const CONFIG: &str = "adapter_config.json";
pub const WEIGHTS: &str = "adapter_model.safetensors";

/// What PEFT puts before a module's path in the `*ForCausalLM` model.
const PREFIX: &str = "base_model.model.";

/// `target_modules` as PEFT writes it: the string "all-linear", or a list of names.
fn peft_targets(family: Family, targets: &[String]) -> Value {
    if targets.iter().any(|t| t == "all-linear") {
        return json!("all-linear");
    }
    json!(targets.iter().map(|t| hf_target(family, t)).collect::<Vec<_>>())
}

/// A tinytune target name as PEFT would match it on this family (Llama's `attn` is
/// `self_attn` in transformers).
fn hf_target(family: Family, t: &str) -> String {
    if family.is_llama_like() && (t.starts_with("attn.") || t == "attn") { format!("self_{t}") } else { t.to_string() }
}

/// The method an `adapter_config.json` describes.
pub fn method_from_config(text: &str, origin: impl Into<Origin>) -> Result<Method> {
    let origin = origin.into();
    let v: Value = serde_json::from_str(text).map_err(|e| Error::parse(origin.clone(), format!("{e} (expected PEFT's adapter_config.json)")))?;
    let bad = |field: &str, problem: String| Error::config(origin.clone(), field, problem);
    let get = |field: &str| v.get(field).filter(|x| !x.is_null());
    let strings = |field: &str| -> Result<Vec<String>> {
        match get(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(xs)) => {
                xs.iter().map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(field, format!("{x} is not a module name")))).collect()
            }
            // PEFT writes its shorthand for every linear layer as a string, not a list.
            Some(Value::String(s)) if s == "all-linear" => Ok(vec![s.clone()]),
            Some(Value::String(s)) => {
                Err(bad(field, format!("is the pattern {s:?}; tinytune matches module names, so list them (e.g. [\"c_attn\", \"mlp.c_proj\"])")))
            }
            Some(other) => Err(bad(field, format!("is {other}; expected a list of module names"))),
        }
    };
    let number = |field: &str, default: Option<f64>| -> Result<f64> {
        match get(field) {
            Some(x) => x.as_f64().ok_or_else(|| bad(field, format!("is {x}, not a number"))),
            None => default.ok_or_else(|| bad(field, "is missing".into())),
        }
    };
    let flag = |field: &str| get(field).and_then(Value::as_bool).unwrap_or(false);
    // Settings tinytune does not build: refuse when they are set to anything but their default.
    for field in ["rank_pattern", "alpha_pattern"] {
        if get(field).is_some_and(|x| x.as_object().is_some_and(|o| !o.is_empty())) {
            return Err(bad(field, "per-module ranks or alphas are not supported; use one r and lora_alpha".into()));
        }
    }
    // A classifier's head, trained whole (PEFT adds "classifier" and "score" for a SEQ_CLS
    // task); tinytune's reward models train their `score` head under every method.
    if let Some(Value::Array(modules)) = get("modules_to_save")
        && let Some(other) = modules.iter().find(|m| !matches!(m.as_str(), Some("score" | "classifier")))
    {
        return Err(bad("modules_to_save", format!("holds {other}; tinytune trains only a classifier's score head whole (\"score\")")));
    }
    for field in ["layers_to_transform", "layer_replication", "target_parameters"] {
        if get(field).is_some_and(|x| !(x.is_array() && x.as_array().is_some_and(Vec::is_empty))) {
            return Err(bad(field, "is set, which tinytune does not support; remove it or set it to null".into()));
        }
    }
    let kind = get("peft_type").and_then(Value::as_str).ok_or_else(|| bad("peft_type", "is missing; expected LORA, IA3 or PROMPT_TUNING".into()))?;
    match kind {
        "LORA" => {
            let r = number("r", Some(8.0))? as usize;
            let bias = match get("bias").and_then(Value::as_str).unwrap_or("none") {
                "none" => LoraBias::None,
                "all" => LoraBias::All,
                "lora_only" => LoraBias::LoraOnly,
                other => return Err(bad("bias", format!("{other:?} is not none, all or lora_only"))),
            };
            let config = LoraConfig {
                r,
                lora_alpha: number("lora_alpha", Some(8.0))?,
                lora_dropout: number("lora_dropout", Some(0.0))?,
                target_modules: strings("target_modules")?,
                use_rslora: flag("use_rslora"),
                bias,
                // How A started does not matter: the file holds the trained values.
                init: LoraInit::Default,
                use_dora: flag("use_dora"),
            };
            config.validate(origin.clone())?;
            Ok(Method::Lora(config))
        }
        "IA3" => {
            let config = Ia3Config { target_modules: strings("target_modules")?, feedforward_modules: strings("feedforward_modules")? };
            config.validate(origin.clone())?;
            Ok(Method::Ia3(config))
        }
        "PROMPT_TUNING" => {
            let k = number("num_virtual_tokens", None)? as usize;
            Ok(Method::Prompt(PromptConfig {
                num_virtual_tokens: k,
                init: PromptInit::Random,
                init_text: String::new(),
                init_ids: Vec::new(),
                encoder_hidden_size: None,
            }))
        }
        other => Err(bad("peft_type", format!("{other:?} is not supported; tinytune reads LORA, IA3 and PROMPT_TUNING adapters"))),
    }
}

/// PEFT's `adapter_config.json` for `method` on `model`; `base` is the base model's name or
/// path as PEFT records it (`base_model_name_or_path`: a hub id such as
/// `HuggingFaceTB/SmolLM2-135M-Instruct`, which `AutoPeftModelForCausalLM` loads), or null.
pub fn config_json(method: &Method, model: &Gpt, base: Option<&str>) -> Result<String> {
    let c = model.config();
    let v = match method {
        // A QLoRA run's adapters are LoRA adapters; PEFT loads them onto any copy of the
        // base (they were trained against its NF4 rounding, which QLoRA users reproduce by
        // loading the base in 4 bits).
        Method::Lora(l) | Method::Qlora(super::QloraConfig { lora: l, .. }) => json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": l.r,
            "lora_alpha": l.lora_alpha,
            "lora_dropout": l.lora_dropout,
            "target_modules": peft_targets(c.family, &l.target_modules),
            "fan_in_fan_out": !c.family.is_llama_like(),
            "bias": match l.bias { LoraBias::None => "none", LoraBias::All => "all", LoraBias::LoraOnly => "lora_only" },
            "use_rslora": l.use_rslora,
            "use_dora": l.use_dora,
            "init_lora_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": base,
        }),
        Method::Ia3(i) => json!({
            "peft_type": "IA3",
            "task_type": "CAUSAL_LM",
            "target_modules": peft_targets(c.family, &i.target_modules),
            "feedforward_modules": i.feedforward_modules.iter().map(|t| hf_target(c.family, t)).collect::<Vec<_>>(),
            "fan_in_fan_out": !c.family.is_llama_like(),
            "init_ia3_weights": true,
            "inference_mode": true,
            "base_model_name_or_path": base,
        }),
        Method::Prompt(p) if p.encoder_hidden_size.is_none() => json!({
            "peft_type": "PROMPT_TUNING",
            "task_type": "CAUSAL_LM",
            "num_virtual_tokens": p.num_virtual_tokens,
            "token_dim": c.n_embd,
            "num_layers": c.n_layer,
            "num_attention_heads": c.n_head,
            "num_transformer_submodules": 1,
            "prompt_tuning_init": "RANDOM",
            "inference_mode": true,
            "base_model_name_or_path": base,
        }),
        other
        @ (Method::Full | Method::LastLayers { .. } | Method::Bitfit | Method::Layernorm | Method::Adapter(_) | Method::Prompt(_) | Method::Prefix(_)) => {
            return Err(Error::config(
                "adapter export",
                "method",
                format!("{} has no PEFT adapter format that tinytune writes; lora, qlora, ia3 and prompt (prompt tuning) export", other.name()),
            ));
        }
    };
    let mut v = v;
    if model.score.is_some() {
        // A reward model: PEFT's sequence-classification task, the head saved whole.
        v["task_type"] = json!("SEQ_CLS");
        v["modules_to_save"] = json!(["score"]);
    }
    Ok(serde_json::to_string_pretty(&v).expect("JSON values serialise"))
}

fn reshape(data: &TensorData, shape: Vec<usize>) -> TensorData {
    TensorData::new(data.clone().convert::<f32>().try_to_vec::<f32>().expect("f32 values"), shape)
}

/// PEFT's key and layout for tinytune parameter `name` with value `data`; None for a
/// parameter PEFT does not store.
fn to_peft(family: Family, name: &str, data: &TensorData) -> Option<(String, TensorData)> {
    let key = |path: &str, suffix: &str| format!("{PREFIX}{}{suffix}", names::to_hf(family, path));
    if name == "prompt.embedding" {
        return Some(("prompt_embeddings".into(), data.clone()));
    }
    if let Some(p) = name.strip_suffix(".lora.lora_a") {
        return Some((key(p, ".lora_A.weight"), transpose(data)));
    }
    if let Some(p) = name.strip_suffix(".lora.lora_b") {
        return Some((key(p, ".lora_B.weight"), transpose(data)));
    }
    if let Some(p) = name.strip_suffix(".lora.magnitude") {
        return Some((key(p, ".lora_magnitude_vector"), data.clone()));
    }
    if name.ends_with(".bias") || name == "score.weight" {
        return Some((key(name, ""), data.clone()));
    }
    None
}

/// The tinytune parameter a PEFT key fills, and the value in tinytune's layout (`ia3`
/// says whether the projection's IA³ vector scales its input).
fn from_peft(family: Family, key: &str, data: &TensorData) -> Option<(String, TensorData)> {
    if key == "prompt_embeddings" {
        return Some(("prompt.embedding".into(), data.clone()));
    }
    // A LoRA-wrapped module's own bias sits under its `base_layer` in PEFT's files.
    let key = key.replace(".base_layer.bias", ".bias");
    let rest = names::from_hf(family, key.strip_prefix(PREFIX)?)?;
    let rest = rest.as_str();
    let two_d = data.shape().len() == 2;
    if let Some(p) = rest.strip_suffix(".lora_A.weight") {
        return two_d.then(|| (format!("{p}.lora.lora_a"), transpose(data)));
    }
    if let Some(p) = rest.strip_suffix(".lora_B.weight") {
        return two_d.then(|| (format!("{p}.lora.lora_b"), transpose(data)));
    }
    if let Some(p) = rest.strip_suffix(".lora_magnitude_vector") {
        return Some((format!("{p}.lora.magnitude"), data.clone()));
    }
    if let Some(p) = rest.strip_suffix(".ia3_l") {
        let n = data.shape().iter().product();
        return Some((format!("{p}.ia3.ia3_l"), reshape(data, vec![n])));
    }
    if rest.ends_with(".bias") || rest == "score.weight" {
        return Some((rest.to_string(), data.clone()));
    }
    None
}

/// The parameters a PEFT file of `method` holds for `model`: what the method added, plus
/// the biases its `bias` option trains. (Read from names, not from trainability, which only
/// an autodiff device records.)
fn adapter_params(model: &Gpt, method: &Method) -> HashSet<String> {
    let base_param = |name: &str| {
        !(name.contains(".lora.") || name.contains(".ia3.") || name.starts_with("prompt.") || name.starts_with("prefix.") || name.contains(".adapter_"))
    };
    let bias = method.lora().map_or(LoraBias::None, |l| l.bias);
    let mut targeted = HashSet::new();
    super::for_each_projection_ref(model, |path, p| {
        if p.lora.is_some() {
            targeted.insert(format!("{path}.bias"));
        }
    });
    named_params(model)
        .into_iter()
        .map(|p| p.name)
        .filter(|name| {
            // A classifier's head trains whole under every method.
            name == "score.weight"
                || !base_param(name)
                || match bias {
                    LoraBias::None => false,
                    LoraBias::All => name.ends_with(".bias"),
                    LoraBias::LoraOnly => targeted.contains(name),
                }
        })
        .collect()
}

/// Writes `model`'s trained adapter (adapted by `method`) as PEFT's two files:
/// `(adapter_config.json text, adapter_model.safetensors bytes)`.
pub fn save(model: &Gpt, method: &Method, base: Option<&str>) -> Result<(String, Vec<u8>)> {
    let config = config_json(method, model, base)?;
    let family = model.config().family;
    let trainable = adapter_params(model, method);
    let mut ia3_input = HashMap::new();
    // PEFT wraps a LoRA-targeted module, whose own bias is then `{path}.base_layer.bias`.
    let mut wrapped = HashSet::new();
    super::for_each_projection_ref(model, |path, p| {
        if let Some(i) = &p.ia3 {
            ia3_input.insert(format!("{path}.ia3.ia3_l"), i.input);
        }
        if p.lora.is_some() {
            wrapped.insert(format!("{path}.bias"));
        }
    });
    let mut tensors = Vec::new();
    for (name, data) in param_data(model) {
        if let Some(&input) = ia3_input.get(&name) {
            let n = data.shape()[0];
            let p = name.strip_suffix(".ia3.ia3_l").expect("an IA³ name");
            tensors.push((format!("{PREFIX}{}.ia3_l", names::to_hf(family, p)), reshape(&data, if input { vec![1, n] } else { vec![n, 1] })));
        } else if trainable.contains(&name) {
            match to_peft(family, &name, &data) {
                Some((key, t)) if wrapped.contains(&name) => {
                    let key = format!("{}.base_layer.bias", key.strip_suffix(".bias").expect("a bias"));
                    tensors.push((key, t))
                }
                Some(t) => tensors.push(t),
                None => {
                    return Err(Error::Invalid(format!("{name} trains under {} but has no PEFT name; this adapter cannot be exported", method.name())));
                }
            }
        }
    }
    Ok((config, to_safetensors(tensors)))
}

/// A PiSSA run's adapter as an ordinary LoRA of the *original* base, PEFT's PiSSA-to-LoRA
/// conversion (`save_pretrained(..., path_initial_model_for_weight_conversion=...)`). PiSSA
/// starts A₀B₀ at W's top singular part and trains on the residual W − s·A₀B₀, so the
/// trained model computes `W + s·(AB − A₀B₀)`; that difference is a rank-2r LoRA with
/// `A' = [A | A₀]` and `B' = [B ; −B₀]`, and `lora_alpha` doubles (×√2 under rsLoRA) so that
/// the scale s stays the same at rank 2r. `initial` is the model as the run started: the
/// original base with the method applied (its A₀, B₀).
pub fn save_pissa_as_lora(trained: &Gpt, initial: &Gpt, method: &Method, base: Option<&str>) -> Result<(String, Vec<u8>)> {
    let Method::Lora(l) = method else {
        return Err(Error::config("adapter export", "method", format!("{} is not a PiSSA LoRA run; only those convert", method.name())));
    };
    if l.init != super::lora::LoraInit::Pissa {
        return Err(Error::config("adapter export", "init", "is not PiSSA: the adapter already applies to the original base as it is"));
    }
    let converted = Method::Lora(super::LoraConfig {
        r: 2 * l.r,
        lora_alpha: if l.use_rslora { l.lora_alpha * std::f64::consts::SQRT_2 } else { 2.0 * l.lora_alpha },
        init: super::lora::LoraInit::Default,
        ..l.clone()
    });
    let config = config_json(&converted, trained, base)?;
    let family = trained.config().family;
    let start: HashMap<String, TensorData> = param_data(initial).into_iter().collect();
    let trainable = adapter_params(trained, method);
    // Row-major [rows, cols] matrices joined on the host: side by side (dim 1) or one above
    // the other (dim 0), the second negated when asked.
    let cat = |a: &TensorData, b: &TensorData, dim: usize, negate_b: bool| -> TensorData {
        let values = |d: &TensorData| d.clone().convert::<f32>().try_to_vec::<f32>().expect("f32 values");
        let (x, mut y) = (values(a), values(b));
        if negate_b {
            y.iter_mut().for_each(|v| *v = -*v);
        }
        let (rows, ca, cb) = (a.shape()[0], a.shape()[1], b.shape()[1]);
        if dim == 0 {
            let rb = b.shape()[0];
            TensorData::new([x, y].concat(), [rows + rb, ca])
        } else {
            let joined: Vec<f32> =
                (0..rows).flat_map(|i| x[i * ca..(i + 1) * ca].iter().chain(&y[i * cb..(i + 1) * cb]).copied().collect::<Vec<_>>()).collect();
            TensorData::new(joined, [rows, ca + cb])
        }
    };
    let mut tensors = Vec::new();
    for (name, data) in param_data(trained) {
        if !trainable.contains(&name) {
            continue;
        }
        let initial_of = |n: &str| {
            start.get(n).ok_or_else(|| Error::Invalid(format!("{n} is not in the initial model; it must be the run's base with the run's method applied")))
        };
        let data = if name.ends_with(".lora.lora_a") {
            cat(&data, initial_of(&name)?, 1, false) // [in, r] | [in, r] -> [in, 2r]
        } else if name.ends_with(".lora.lora_b") {
            cat(&data, initial_of(&name)?, 0, true) // [r, out] ; −[r, out] -> [2r, out]
        } else {
            data
        };
        match to_peft(family, &name, &data) {
            Some(t) => tensors.push(t),
            None => return Err(Error::Invalid(format!("{name} trains under {} but has no PEFT name; this adapter cannot be exported", method.name()))),
        }
    }
    Ok((config, to_safetensors(tensors)))
}

/// Loads a PEFT adapter folder's two files onto `base` (a plain model of either family): the config
/// decides the method, and every tensor the method adds must be in the file, with the
/// right shape, and nothing else. `dir` only labels errors.
pub fn load(base: Gpt, config_text: &str, weights: &[u8], dir: &str, device: &Device) -> Result<(Gpt, Method)> {
    let config_origin = Origin::from(format!("{dir}/{CONFIG}"));
    let file = Origin::from(format!("{dir}/{WEIGHTS}"));
    let method = method_from_config(config_text, config_origin.clone())?;
    if let Method::Prompt(p) = &method {
        let c = base.config().n_embd;
        if let Some(dim) = serde_json::from_str::<Value>(config_text).ok().and_then(|v| v.get("token_dim").and_then(Value::as_u64))
            && dim as usize != c
        {
            return Err(Error::config(
                config_origin,
                "token_dim",
                format!("is {dim} but the base model is {c} wide; this adapter was trained on another model"),
            ));
        }
        p.validate(base.config().n_positions, base.config().vocab_size, config_origin.clone())?;
    }
    let family = base.config().family;
    let adapted = method.apply(base, 0, device)?;
    let wanted = adapter_params(&adapted, &method);
    let expected: HashMap<String, Vec<usize>> = named_params(&adapted).into_iter().filter(|p| wanted.contains(&p.name)).map(|p| (p.name, p.shape)).collect();
    let mut given = HashMap::new();
    for (key, data) in from_safetensors(weights, &file)? {
        let Some((name, value)) = from_peft(family, &key, &data) else {
            return Err(Error::tensor(file.clone(), key, "is not a LoRA, DoRA, IA³, bias or prompt tensor; tinytune cannot place it".to_string()));
        };
        let Some(want) = expected.get(&name) else {
            return Err(Error::tensor(
                file.clone(),
                key,
                format!(
                    "has no place in this model under {}'s config (targets {:?}); the config and the weights disagree, or the adapter is for another model",
                    method.name(),
                    targets(&method)
                ),
            ));
        };
        if value.shape().to_vec() != *want {
            return Err(Error::tensor(
                file.clone(),
                key,
                format!(
                    "has shape {:?}, but the config's settings on this base model need {:?} in PEFT's layout",
                    data.shape().to_vec(),
                    peft_shape(&name, want, &adapted)
                ),
            ));
        }
        given.insert(name, value);
    }
    if let Some(name) = expected.keys().filter(|n| !given.contains_key(*n)).min() {
        let key = to_peft(family, name, &TensorData::new(vec![0.0f32; expected[name].iter().product()], expected[name].clone()))
            .map(|(k, _)| k)
            .unwrap_or_else(|| name.replace(".ia3.ia3_l", ".ia3_l"));
        return Err(Error::tensor(file, key, format!("is missing ({} of {} adapter tensors are in the file)", given.len(), expected.len())));
    }
    let mut all: HashMap<String, TensorData> = param_data(&adapted).into_iter().collect();
    all.extend(given);
    let (model, _) = load_params(adapted, all, &file)?;
    Ok((model, method))
}

fn targets(method: &Method) -> Vec<String> {
    match method {
        Method::Lora(l) => l.target_modules.clone(),
        Method::Ia3(i) => i.target_modules.clone(),
        Method::Full
        | Method::LastLayers { .. }
        | Method::Bitfit
        | Method::Layernorm
        | Method::Qlora(_)
        | Method::Adapter(_)
        | Method::Prompt(_)
        | Method::Prefix(_) => Vec::new(),
    }
}

/// The shape PEFT stores for tinytune parameter `name` of shape `want`.
fn peft_shape(name: &str, want: &[usize], model: &Gpt) -> Vec<usize> {
    if name.ends_with(".lora.lora_a") || name.ends_with(".lora.lora_b") {
        return vec![want[1], want[0]];
    }
    if let Some(path) = name.strip_suffix(".ia3.ia3_l") {
        let mut input = false;
        super::for_each_projection_ref(model, |p, proj| {
            if p == path {
                input = proj.ia3.as_ref().is_some_and(|i| i.input);
            }
        });
        return if input { vec![1, want[0]] } else { vec![want[0], 1] };
    }
    want.to_vec()
}
