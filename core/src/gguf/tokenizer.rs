//! The tokenizer and chat template a GGUF file carries in its metadata
//! (`tokenizer.ggml.*`, `tokenizer.chat_template`), as a Hugging Face `tokenizer.json`, a
//! `tokenizer_config.json` and a `generation_config.json`, so a model imported from GGUF is
//! an ordinary tinytune/transformers folder.
//!
//! Byte-level BPE (`tokenizer.ggml.model` = `gpt2`) is read: the vocabulary in id order,
//! the merges, and the special tokens (token type 3, "control", and 4, "user defined").
//! The pre-tokenizer is the model's own, named by `tokenizer.ggml.pre`:
//! - `smollm`: digits split one by one, then GPT-2's byte-level split, as SmolLM2's own
//!   `tokenizer.json` does and llama.cpp does for this name. (transformers' GGUF loader
//!   has no entry for `smollm` and uses GPT-2's split alone, so it differs when spaces
//!   come before a digit: "x  2024" is `Ġ Ġ 2…` there and `ĠĠ 2…` here and in SmolLM2's
//!   original tokenizer. The fixture records both.)
//! - `gpt-2`, `default`: GPT-2's byte-level split.
//!
//! Other pre-tokenizers (Llama 3's `llama-bpe`, `qwen2`, …) and SentencePiece vocabularies
//! (`llama`) are refused with the reason, rather than tokenized almost right.

use serde_json::{Map, Value as Json, json};

use super::{Gguf, Value};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use crate::tokenizer::chat::ChatTemplate;

/// llama.cpp's token types.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// The pre-tokenizers read, for errors.
const PRE_TOKENIZERS: &str = "smollm, gpt-2, default";

fn tokens<'g>(g: &'g Gguf) -> Result<Vec<&'g str>> {
    let key = "tokenizer.ggml.tokens";
    let list = g.require(key)?.as_array().ok_or_else(|| Error::config(g.origin.clone(), key, "must be an array of strings"))?;
    list.iter().map(|t| t.as_str().ok_or_else(|| Error::config(g.origin.clone(), key, format!("holds a {}, not a string", t.type_name())))).collect()
}

fn token_types(g: &Gguf, n: usize) -> Result<Vec<i64>> {
    let key = "tokenizer.ggml.token_type";
    let Some(v) = g.get(key) else { return Ok(vec![1; n]) };
    let list = v.as_array().ok_or_else(|| Error::config(g.origin.clone(), key, "must be an array of integers"))?;
    if list.len() != n {
        return Err(Error::config(g.origin.clone(), key, format!("has {} entries for {n} tokens", list.len())));
    }
    list.iter()
        .map(|t| match t {
            Value::I32(x) => Ok(*x as i64),
            other => other.as_u64().map(|x| x as i64).ok_or_else(|| Error::config(g.origin.clone(), key, "must hold integers")),
        })
        .collect()
}

/// The text of the special token whose id is `tokenizer.ggml.{which}_token_id`.
fn special(g: &Gguf, which: &str, tokens: &[&str]) -> Option<String> {
    let id = g.get(&format!("tokenizer.ggml.{which}_token_id"))?.as_u64()?;
    tokens.get(id as usize).map(|t| t.to_string())
}

/// The `tokenizer.json` of the file's tokenizer.
pub fn tokenizer_json(g: &Gguf) -> Result<Json> {
    let model = g.require_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(Error::config(
            g.origin.clone(),
            "tokenizer.ggml.model",
            format!(
                "is {model:?}; tinytune reads byte-level BPE vocabularies (\"gpt2\") from GGUF, not SentencePiece ones yet; load the model's Hugging Face folder instead"
            ),
        ));
    }
    let pre = match g.get("tokenizer.ggml.pre") {
        Some(_) => g.require_str("tokenizer.ggml.pre")?,
        None => "default",
    };
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]}),
        "gpt-2" | "default" => byte_level,
        other => {
            return Err(Error::config(
                g.origin.clone(),
                "tokenizer.ggml.pre",
                format!(
                    "is {other:?}; tinytune knows the pre-tokenizers {PRE_TOKENIZERS}, and splitting text another model's way would give wrong ids; load the model's Hugging Face folder instead"
                ),
            ));
        }
    };
    let tokens = tokens(g)?;
    let types = token_types(g, tokens.len())?;
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (token, ty)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert(token.to_string(), json!(id)).is_some() {
            return Err(Error::config(g.origin.clone(), "tokenizer.ggml.tokens", format!("holds {token:?} twice")));
        }
        if *ty == CONTROL || *ty == USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": *ty == USER_DEFINED, "special": *ty == CONTROL
            }));
        }
    }
    let merges_key = "tokenizer.ggml.merges";
    let merges = g.require(merges_key)?.as_array().ok_or_else(|| Error::config(g.origin.clone(), merges_key, "must be an array of strings"))?;
    let merges = merges
        .iter()
        .map(|m| {
            let pair = m.as_str().and_then(|s| s.split_once(' ')).filter(|(a, b)| vocab.contains_key(*a) && vocab.contains_key(*b));
            pair.map(|(a, b)| json!([a, b]))
                .ok_or_else(|| Error::config(g.origin.clone(), merges_key, format!("holds {m:?}, not two tokens of the vocabulary separated by a space")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    }))
}

/// The file's tokenizer.
pub fn tokenizer(g: &Gguf) -> Result<TextTokenizer> {
    TextTokenizer::from_json(&tokenizer_json(g)?.to_string(), g.origin.clone())
}

/// `tokenizer_config.json`: the chat template and the special tokens by text.
pub fn tokenizer_config_json(g: &Gguf) -> Result<Json> {
    let tokens = tokens(g)?;
    let mut c = Map::new();
    for (which, key) in [("bos", "bos_token"), ("eos", "eos_token"), ("padding", "pad_token"), ("unknown", "unk_token")] {
        if let Some(t) = special(g, which, &tokens) {
            c.insert(key.into(), json!(t));
        }
    }
    if let Some(v) = g.get("tokenizer.ggml.add_bos_token") {
        c.insert("add_bos_token".into(), json!(matches!(v, Value::Bool(true))));
    }
    if let Some(t) = g.get("tokenizer.chat_template") {
        let t = t.as_str().ok_or_else(|| Error::config(g.origin.clone(), "tokenizer.chat_template", "must be a string"))?;
        c.insert("chat_template".into(), json!(t));
    }
    c.insert("model_max_length".into(), json!(g.get("llama.context_length").and_then(Value::as_u64).unwrap_or(2048)));
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok(Json::Object(c))
}

/// `generation_config.json`: the token ids generation starts and stops with.
pub fn generation_config_json(g: &Gguf) -> Json {
    let mut c = Map::new();
    for (which, key) in [("bos", "bos_token_id"), ("eos", "eos_token_id"), ("padding", "pad_token_id")] {
        if let Some(id) = g.get(&format!("tokenizer.ggml.{which}_token_id")).and_then(Value::as_u64) {
            c.insert(key.into(), json!(id));
        }
    }
    Json::Object(c)
}

/// The chat template, with the file's special tokens (None when the file has none).
pub fn chat_template(g: &Gguf) -> Result<Option<ChatTemplate>> {
    let config = tokenizer_config_json(g)?;
    ChatTemplate::from_tokenizer_config(&config.to_string(), g.origin.clone())
}
