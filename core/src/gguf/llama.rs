//! A Llama-family model from a GGUF file, as transformers loads one
//! (`from_pretrained(..., gguf_file=...)`): the `config.json` it would build from the
//! `llama.*` metadata, and the tensors under Hugging Face names, dequantized to f32, with
//! the row permutation llama.cpp's converter applies to the query and key projections
//! undone.
//!
//! Why the permutation: transformers' Llama rotates dimension i of a head with dimension
//! i + d/2 (`rotate_half`); llama.cpp rotates neighbours 2i and 2i + 1. Its converter
//! therefore reorders each head's rows of `q_proj` and `k_proj` from (half, i) to (i, half),
//! so the same weights give the same scores under its rotation. Reading back reorders
//! them again.

use std::collections::HashMap;

use burn::tensor::{Device, TensorData};
use serde_json::{Map, Value as Json, json};

use super::Gguf;
use crate::checkpoint::{load_model_tensors, model_tensors};
use crate::error::{Error, Result};
use crate::methods::Method;
use crate::model::{Gpt, ModelConfig};

/// The architectures read (`general.architecture`).
const ARCHITECTURES: &str = "llama";

/// The Hugging Face `config.json` transformers builds from the file's metadata.
pub fn config_json(g: &Gguf) -> Result<Map<String, Json>> {
    let arch = g.require_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::config(
            g.origin.clone(),
            "general.architecture",
            format!("is {arch:?}; tinytune reads GGUF models of architecture {ARCHITECTURES} (Llama, SmolLM2, Mistral converted as llama)"),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = g.require_u64(&key("embedding_length"))?;
    let heads = g.require_u64(&key("attention.head_count"))?;
    let kv_heads = match g.get(&key("attention.head_count_kv")) {
        Some(_) => g.require_u64(&key("attention.head_count_kv"))?,
        None => heads,
    };
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(Error::config(g.origin.clone(), key("attention.head_count_kv"), format!("is {kv_heads}; it must divide the {heads} query heads")));
    }
    let head_dim = match g.get(&key("attention.key_length")) {
        Some(_) => g.require_u64(&key("attention.key_length"))?,
        None => hidden / heads,
    };
    let vocab = match (g.get(&key("vocab_size")), g.get("tokenizer.ggml.tokens").and_then(|t| t.as_array())) {
        (Some(_), _) => g.require_u64(&key("vocab_size"))?,
        (None, Some(tokens)) => tokens.len() as u64,
        (None, None) => g.tensor("token_embd.weight").map(|t| t.dims.get(1).copied().unwrap_or(0)).unwrap_or(0),
    };
    let optional_f64 = |k: &str, default: f64| -> Result<f64> { if g.get(k).is_some() { g.require_f64(k) } else { Ok(default) } };
    let mut c = Map::new();
    c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    c.insert("model_type".into(), json!("llama"));
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("intermediate_size".into(), json!(g.require_u64(&key("feed_forward_length"))?));
    c.insert("num_hidden_layers".into(), json!(g.require_u64(&key("block_count"))?));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert("num_key_value_heads".into(), json!(kv_heads));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert("max_position_embeddings".into(), json!(g.require_u64(&key("context_length"))?));
    c.insert("rms_norm_eps".into(), json!(optional_f64(&key("attention.layer_norm_rms_epsilon"), 1e-5)?));
    c.insert("rope_theta".into(), json!(optional_f64(&key("rope.freq_base"), 10000.0)?));
    c.insert("rope_scaling".into(), rope_scaling(g, arch)?);
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("tie_word_embeddings".into(), json!(g.tensor("output.weight").is_none()));
    for (gguf_key, hf) in [("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"), ("padding_token_id", "pad_token_id")] {
        if let Some(id) = g.get(&format!("tokenizer.ggml.{gguf_key}")).and_then(|v| v.as_u64()) {
            c.insert(hf.into(), json!(id));
        }
    }
    Ok(c)
}

/// `rope_scaling` from `{arch}.rope.scaling.*` (linear and YaRN; llama.cpp stores Llama 3's
/// per-frequency factors as a `rope_freqs.weight` tensor instead, which is refused).
fn rope_scaling(g: &Gguf, arch: &str) -> Result<Json> {
    let k = |s: &str| format!("{arch}.rope.scaling.{s}");
    let Some(kind) = g.get(&k("type")) else { return Ok(Json::Null) };
    let kind = kind.as_str().ok_or_else(|| Error::config(g.origin.clone(), k("type"), "must be a string"))?;
    let factor = || g.require_f64(&k("factor"));
    Ok(match kind {
        "none" => Json::Null,
        "linear" => json!({"rope_type": "linear", "factor": factor()?}),
        "yarn" => {
            let mut m = json!({"rope_type": "yarn", "factor": factor()?});
            if g.get(&k("original_context_length")).is_some() {
                m["original_max_position_embeddings"] = json!(g.require_u64(&k("original_context_length"))?);
            }
            m
        }
        other => return Err(Error::config(g.origin.clone(), k("type"), format!("is {other:?}; tinytune reads none, linear and yarn from GGUF"))),
    })
}

/// The model's [`ModelConfig`], through the same reader as a `config.json`.
pub fn model_config(g: &Gguf) -> Result<ModelConfig> {
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(Error::tensor(
            g.origin.clone(),
            "rope_freqs.weight",
            "holds per-frequency RoPE factors (Llama 3.1's scaling as llama.cpp stores it), which tinytune does not read from GGUF yet; load the Hugging Face folder instead",
        ));
    }
    ModelConfig::from_json(&Json::Object(config_json(g)?).to_string(), g.origin.clone())
}

/// llama.cpp's name for each Hugging Face parameter of layer-less and per-layer tensors.
fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf = match part {
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf}")
        }
    })
}

/// Undoes llama.cpp's permutation of a `[heads · d, cols]` projection: its row
/// `h·d + 2i + t` is transformers' row `h·d + t·d/2 + i`. Rows are `cols` values long
/// (weights, or the bytes of a row of quantized blocks, which move whole).
pub fn unpermute<T: Copy + Default>(rows: &[T], heads: usize, cols: usize) -> Vec<T> {
    let d = rows.len() / cols / heads;
    let mut out = vec![T::default(); rows.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for t in 0..2 {
                let from = (h * d + 2 * i + t) * cols;
                let to = (h * d + t * d / 2 + i) * cols;
                out[to..to + cols].copy_from_slice(&rows[from..from + cols]);
            }
        }
    }
    out
}

/// The heads of a query or key projection (whose rows llama.cpp permutes), by its
/// Hugging Face name; None for every other tensor.
fn permuted_heads(name: &str, config: &ModelConfig) -> Option<usize> {
    if name.ends_with("q_proj.weight") {
        Some(config.n_head)
    } else if name.ends_with("k_proj.weight") {
        Some(config.n_kv_head)
    } else {
        None
    }
}

/// Every tensor under its Hugging Face name and `[out, in]` shape, dequantized to f32.
pub fn hf_tensors(g: &Gguf, config: &ModelConfig) -> Result<HashMap<String, TensorData>> {
    let mut out = HashMap::new();
    for t in &g.tensors {
        let Some(name) = hf_name(&t.name) else {
            return Err(Error::tensor(
                g.origin.clone(),
                &t.name,
                "is not a tensor of a Llama model as llama.cpp names them (token_embd, blk.N.attn_q, ..., output_norm, output)",
            ));
        };
        let shape = t.shape();
        let mut data = g.dequantize(t)?;
        if let Some(heads) = permuted_heads(&name, config) {
            let expected = [heads * config.head_dim(), config.n_embd];
            if shape != expected {
                return Err(Error::tensor(g.origin.clone(), &t.name, format!("has shape {shape:?}; the metadata's heads and width say {expected:?}")));
            }
            data = unpermute(&data, heads, shape[1]);
        }
        out.insert(name, TensorData::new(data, shape));
    }
    Ok(out)
}

/// The model in the file, adapted by `method`, on `device`. Every projection stored in
/// quantized blocks keeps them as its `source` (rows in transformers' order), so QLoRA
/// (`Method::Qlora`, here or applied later) freezes the file's own blocks instead of
/// rounding the dequantized weight to NF4 again.
pub fn load_model(g: &Gguf, method: &Method, device: &Device) -> Result<(Gpt, ModelConfig)> {
    let config = model_config(g)?;
    let tensors = model_tensors(&config, hf_tensors(g, &config)?, &g.origin)?;
    let mut model = load_model_tensors(&config, &Method::Full, tensors, g.origin.clone(), device)?;
    attach_sources(g, &config, &mut model)?;
    let model = match method {
        Method::Full => model,
        m => m.apply(model, 0, device)?,
    };
    Ok((model, config))
}

/// Sets `source` on every projection of `model` that `g` stores in quantized blocks.
fn attach_sources(g: &Gguf, config: &ModelConfig, model: &mut Gpt) -> Result<()> {
    let mut by_path = HashMap::new();
    for t in g.tensors.iter().filter(|t| t.ggml_type.is_block()) {
        if let Some(path) = hf_name(&t.name).and_then(|hf| crate::model::names::from_hf(config.family, &hf).map(|p| (p, hf))) {
            by_path.insert(path.0, (t, path.1));
        }
    }
    let device = model.device();
    let mut failure = None;
    crate::methods::for_each_projection(model, |path, p| {
        let Some((t, hf)) = by_path.get(&format!("{path}.weight")) else { return };
        let (d_in, d_out) = (p.d_in(), p.d_out());
        let raw = g.raw(t);
        let raw = match permuted_heads(hf, config) {
            Some(heads) => unpermute(raw, heads, raw.len() / d_out.max(1)),
            None => raw.to_vec(),
        };
        match crate::methods::FrozenWeight::ggml(t.ggml_type, raw, d_in, d_out, &device) {
            Ok(w) => p.source = Some(w),
            Err(e) => failure = failure.take().or(Some(Error::tensor(g.origin.clone(), &t.name, e.to_string()))),
        }
    });
    failure.map_or(Ok(()), Err)
}

/// Everything a GGUF file gives to run and fine-tune its model: the model (unadapted), its
/// configuration, tokenizer and chat template.
pub struct Opened {
    pub model: Gpt,
    pub config: ModelConfig,
    pub tokenizer: crate::TextTokenizer,
    pub chat: Option<crate::tokenizer::chat::ChatTemplate>,
}

/// The model, tokenizer and chat template of `g`, the model on `device`: what the CLI's
/// `--model FILE.gguf` and the page's real-model widget both load.
pub fn open(g: &Gguf, device: &Device) -> Result<Opened> {
    let (model, config) = load_model(g, &Method::Full, device)?;
    let tokenizer = super::tokenizer::tokenizer(g)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::config(
            g.origin.clone(),
            "tokenizer.ggml.tokens",
            format!("has {} tokens but the model's embedding only {} rows; the file is inconsistent", tokenizer.vocab_size(), config.vocab_size),
        ));
    }
    let chat = super::tokenizer::chat_template(g)?;
    Ok(Opened { model, config, tokenizer, chat })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpps_permutation() {
        // llama.cpp: reshape(heads, 2, d/2, cols).swapaxes(1, 2): row (h, t, i) → (h, i, t).
        let (heads, d, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0.0; hf.len()];
        for h in 0..heads {
            for t in 0..2 {
                for i in 0..d / 2 {
                    let from = (h * d + t * d / 2 + i) * cols;
                    let to = (h * d + i * 2 + t) * cols;
                    permuted[to..to + cols].copy_from_slice(&hf[from..from + cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute(&permuted, heads, cols), hf);
    }
}
