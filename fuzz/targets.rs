#![allow(dead_code)] // each fuzz target binary uses one of these
//! The fuzz targets' bodies: every parser that reads what a user downloads or pastes, fed
//! arbitrary bytes. Each must return (an error is fine) and never panic, hang or allocate
//! without bound. `fuzz/fuzz_targets/*.rs` hands them to libFuzzer (`scripts/fuzz.sh`);
//! `tests/tests/fuzz_corpus.rs` replays the committed corpora and every regression input
//! through the same functions on stable, in CI.

use tinytune::TextTokenizer;
use tinytune::model::ModelConfig;

/// A target's body: arbitrary bytes in, nothing out, never a panic.
pub type Target = fn(&[u8]);

/// Every target by name, as the corpus folders are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("config_json", config_json),
    ("tokenizer_json", tokenizer_json),
    ("jsonl", jsonl),
    ("peft_adapter", peft_adapter),
    ("lesson", lesson),
    ("url_state", url_state),
    ("merge_yaml", merge_yaml),
    ("gguf", gguf),
    ("serve_request", serve_request),
];

fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A weights file: the header, every tensor's bytes.
pub fn safetensors(data: &[u8]) {
    let _ = tinytune::checkpoint::from_safetensors(data, &"model.safetensors".into());
}

/// A GPT-2 or Llama-family config.json, for the model and for the memory estimator.
pub fn config_json(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(c) = ModelConfig::from_json(s, "config.json") {
        let _ = c.to_json();
        // Listing every parameter is per block: bounded by the file's real depth when a
        // model loads (its weights hold every block), so only for shallow configs here.
        if c.n_layer <= 64 {
            let _ = c.num_params();
        }
    }
    if let Ok(a) = tinytune::memory::arch::Arch::from_hf_config(s, "config.json") {
        let _ = (a.num_params(), a.largest_layer_params(), a.block_linears());
    }
}

/// A tokenizer.json: loaded, then used on text with special tokens and unseen bytes.
pub fn tokenizer_json(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(t) = TextTokenizer::from_json(s, "tokenizer.json") {
        if let Ok(ids) = t.encode("the robot counted 12 pebbles.<|endoftext|> é 😀") {
            let _ = t.decode(&ids);
        }
        let _ = t.to_json();
    }
}

/// SFT, chat, preference and unpaired-feedback JSON Lines.
pub fn jsonl(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let _ = tinytune::data::jsonl::parse(s, "data.jsonl", None);
    let _ = tinytune::data::preference::parse(s, "pairs.jsonl", None);
    let _ = tinytune::data::preference::parse_feedback(s, "feedback.jsonl", None);
}

/// A PEFT LoRA adapter folder: `adapter_config.json`, a NUL byte, `adapter_model.safetensors`.
pub fn peft_adapter(data: &[u8]) {
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Some(config) = text(config) else { return };
    if let Ok(a) = tinytune::merging::adapters::LoraAdapter::read(config, weights, "adapter") {
        let names: Vec<String> = a.modules().map(str::to_string).collect();
        for m in names.iter().take(4) {
            let _ = a.delta(m);
        }
    }
}

/// A lesson file with widget blocks.
pub fn lesson(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let _ = tinytune_web::lesson::parse("01-fuzzed.md", s);
}

/// A link's query string applied to the first lesson's widgets.
pub fn url_state(data: &[u8]) {
    let Some(s) = text(data) else { return };
    let pairs: Vec<(String, String)> = s
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.to_string(), String::new()),
        })
        .collect();
    // The lessons are parsed once (they are the page's, not the input).
    static FIRST: std::sync::OnceLock<Option<tinytune_web::lesson::Lesson>> = std::sync::OnceLock::new();
    let Some(lesson) = FIRST.get_or_init(|| tinytune_web::lessons::all().ok().and_then(|l| l.into_iter().next())) else { return };
    let base: Vec<tinytune_web::widgets::Widget> = lesson.widgets().cloned().collect();
    let mut widgets = base.clone();
    let _ = tinytune_web::urlstate::apply(&pairs, &mut widgets);
    let _ = tinytune_web::urlstate::encode(&lesson.slug, &base, &widgets);
}

/// A mergekit YAML config.
pub fn merge_yaml(data: &[u8]) {
    let Some(s) = text(data) else { return };
    if let Ok(c) = tinytune::merging::MergeConfig::from_yaml(s, "merge.yml") {
        let _ = c.model_names();
    }
}

/// A GGUF file: header, metadata, tensor table, and the dequantized values of small tensors.
pub fn gguf(data: &[u8]) {
    let Ok(g) = tinytune::gguf::Gguf::parse(data, "model.gguf") else { return };
    for t in &g.tensors {
        if t.dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).is_some_and(|n| n <= 1 << 16) {
            let _ = g.dequantize(t);
        }
    }
    let _ = tinytune::gguf::tokenizer::tokenizer(&g);
}

/// A `POST /v1/completions` body, read as `tinytune serve` reads it (a base and two
/// adapters, a character-level tokenizer, small limits).
pub fn serve_request(data: &[u8]) {
    use tinytune::serving::{Served, parse_completion};
    static SERVED: std::sync::OnceLock<(Served, TextTokenizer)> = std::sync::OnceLock::new();
    let (served, tok) = SERVED.get_or_init(|| {
        let served = Served { base: "micro".into(), adapters: vec!["cats".into(), "dogs".into()], max_prompt_tokens: 64, max_tokens: 128 };
        (served, TextTokenizer::char_level("abcdefghijklmnopqrstuvwxyz .,!?\n"))
    });
    if let Ok(c) = parse_completion(data, served, tok) {
        assert!(c.prompt.len() <= served.max_prompt_tokens && c.config.max_new_tokens <= served.max_tokens);
        assert!(c.adapter.is_none_or(|k| k < served.adapters.len()));
    }
}
