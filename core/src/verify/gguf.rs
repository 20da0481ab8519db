//! GGUF: llama.cpp's file format against the `gguf` Python package (block dequantization)
//! and transformers' GGUF loader (a tiny Llama's logits, greedy continuation, tokenizer and
//! chat template).

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::families::files;
use super::{Check, Fixtures, Measured, Source, Tolerance, ensure, floats, ids, json, read, s};
use crate::gguf::Gguf;

const QUANTS: &str = "gguf/quants.json";
const TINY: &str = "gguf/tiny-llama-reference.json";

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    vec![
        Check::new::<MEASURE, _>(
            "gguf/dequantize",
            "every GGML block type of a file the gguf package wrote (F32 to Q8_0, K-quants included), dequantized",
            "gguf",
            Source::json(QUANTS, "/made_with"),
            files(&[QUANTS, "gguf/quants.gguf"], vec![]),
            Tolerance::exact("|Δ value|"),
            "tests/fixtures/make_gguf_reference.py",
            |fx, _| Box::pin(async move { dequantize(fx) }),
        )
        .on_host(),
        Check::new::<MEASURE, _>(
            "transformers/gguf-llama",
            "a tiny Llama in GGUF as llama.cpp's converter writes it (Q8_0, Q4_1, Q4_0; permuted q/k rows) against transformers' GGUF loader: config, logits, greedy continuation",
            "transformers",
            Source::json(TINY, "/made_with"),
            files(&[TINY, "gguf/tiny-llama.gguf"], vec![]),
            Tolerance::abs(1e-4, "|Δ logit|"),
            "tests/fixtures/make_gguf_reference.py",
            |fx, t| Box::pin(tiny_llama(fx, &t.device)),
        ),
        Check::new::<MEASURE, _>(
            "transformers/gguf-tokenizer",
            "the GGUF file's BPE tokenizer and chat template against the tokenizer.json transformers converts from it: ids, round trips, the rendered chat",
            "transformers",
            Source::json(TINY, "/made_with"),
            files(&[TINY, "gguf/tiny-llama.gguf"], vec![]),
            Tolerance::exact("texts that differ"),
            "tests/fixtures/make_gguf_reference.py",
            |fx, _| Box::pin(async move { tokenizer(fx) }),
        )
        .on_host(),
    ]
}

fn f32s_from_hex(hex: &str) -> Result<Vec<f32>, String> {
    (0..hex.len() / 8).map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).map(f32::from_bits).map_err(s)).collect()
}

fn dequantize(fx: &dyn Fixtures) -> Result<Measured, String> {
    let bytes = fx.read("gguf/quants.gguf")?;
    let want = json(fx, QUANTS)?;
    let g = Gguf::parse(&bytes, "gguf/quants.gguf").map_err(s)?;
    let tensors = want["tensors"].as_array().ok_or(format!("{QUANTS}: no tensors"))?;
    ensure(g.tensors.len() == tensors.len(), || format!("{} tensors read, {} written", g.tensors.len(), tensors.len()))?;
    let (mut d, mut values) = (0.0f64, 0);
    let mut types = Vec::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap_or_default();
        let info = g.tensor(name).ok_or(format!("{name}: missing"))?;
        let ty = t["type"].as_str().unwrap_or_default();
        ensure(info.ggml_type.name() == ty, || format!("{name}: type {} here, {ty} in the file", info.ggml_type.name()))?;
        let got = g.dequantize(info).map_err(s)?;
        let expected = f32s_from_hex(t["bits"].as_str().unwrap_or_default())?;
        ensure(got.len() == expected.len(), || format!("{name}: {} values, the gguf package {}", got.len(), expected.len()))?;
        for (a, b) in got.iter().zip(&expected) {
            if a.to_bits() != b.to_bits() {
                d = d.max(if a.is_nan() || b.is_nan() { f64::INFINITY } else { (a - b).abs() as f64 });
            }
        }
        values += got.len();
        types.push(ty.to_string());
    }
    Ok(Measured::new(d, format!("{} tensors ({}), {values} values, compared bit for bit", tensors.len(), types.join(", "))))
}

async fn tiny_llama(fx: &dyn Fixtures, device: &Device) -> Result<Measured, String> {
    use crate::sample::{SampleConfig, generate_async};
    let bytes = fx.read("gguf/tiny-llama.gguf")?;
    let want = json(fx, TINY)?;
    let g = Gguf::parse(&bytes, "gguf/tiny-llama.gguf").map_err(s)?;
    let (model, config) = crate::gguf::llama::load_model(&g, &crate::methods::Method::Full, device).map_err(s)?;
    let hf = &want["config"];
    let same = config.vocab_size as u64 == hf["vocab_size"].as_u64().unwrap_or(0)
        && config.n_kv_head as u64 == hf["num_key_value_heads"].as_u64().unwrap_or(0)
        && Some(config.tie_word_embeddings) == hf["tie_word_embeddings"].as_bool()
        && Some(config.rope.theta) == hf["rope_parameters"]["rope_theta"].as_f64()
        && Some(config.layer_norm_epsilon) == hf["rms_norm_eps"].as_f64();
    ensure(same, || "the config read from the file differs from transformers' (vocabulary, KV heads, tied head, rope_theta or rms_norm_eps)".into())?;
    let prompt = ids(&want["logits"]["ids"], TINY)?;
    let x = Tensor::<2, Int>::from_data(TensorData::new(prompt.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, prompt.len()]), device);
    let d = super::worst(&read(model.forward(x)).await?, &floats(&want["logits"]["logits"], TINY)?, "logits")?;
    let prompt = ids(&want["generate"]["ids"], TINY)?;
    let n = want["generate"]["new_ids"].as_array().map(|a| a.len()).unwrap_or(0);
    let config = SampleConfig { max_new_tokens: n, temperature: 0.0, top_k: None, seed: 0, stop_ids: vec![], cache: true };
    let new = generate_async(&model, &prompt, &config).await.map_err(s)?;
    let expected = ids(&want["generate"]["new_ids"], TINY)?;
    ensure(new == expected, || format!("greedy continuation {new:?}, transformers {expected:?}"))?;
    Ok(Measured::new(d, format!("config equal; greedy continuation of {n} tokens equal")))
}

fn tokenizer(fx: &dyn Fixtures) -> Result<Measured, String> {
    use crate::tokenizer::chat::Message;
    let bytes = fx.read("gguf/tiny-llama.gguf")?;
    let want = json(fx, TINY)?;
    let g = Gguf::parse(&bytes, "gguf/tiny-llama.gguf").map_err(s)?;
    let tok = crate::gguf::tokenizer::tokenizer(&g).map_err(s)?;
    let texts = want["texts"].as_array().ok_or(format!("{TINY}: no texts"))?;
    let mut differ = 0;
    for case in texts {
        let text = case["text"].as_str().unwrap_or_default();
        let got = tok.encode(text).map_err(s)?;
        if got != ids(&case["ids_tokenizer_json"], TINY)? || tok.decode(&got) != text {
            differ += 1;
        }
    }
    let chat = &want["chat"];
    let template = crate::gguf::tokenizer::chat_template(&g).map_err(s)?.ok_or("the file has no chat template")?;
    let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).map_err(s)?;
    let rendered = template.render(&messages, true).map_err(s)?;
    if rendered != chat["text"].as_str().unwrap_or_default() || tok.encode(&rendered).map_err(s)? != ids(&chat["ids"], TINY)? {
        differ += 1;
    }
    Ok(Measured::new(differ as f64, format!("{} texts and one chat", texts.len())))
}
