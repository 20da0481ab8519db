//! transformers and tokenizers: model families' logits, a GPT-2-style tokenizer, chat
//! templates.

use burn::tensor::Device;

use super::{Check, Fixtures, Measured, Source, Tolerance, all_logits, ensure, floats, ids, json, load, s, text, worst};

const HF_REF: &str = "hf-reference.json";
const LLAMA_REF: &str = "llama-reference.json";

pub(super) fn checks<const MEASURE: bool>() -> Vec<Check> {
    let logit = Tolerance::abs(1e-4, "|Δ logit|");
    let mut all = vec![Check::new::<MEASURE, _>(
        "transformers/gpt2",
        "GPT-2 (Conv1D layout, tied head, transformer. prefix): logits at every position of two prompts",
        "transformers",
        Source::json(HF_REF, "/versions"),
        files(&[HF_REF], model_files("hf-gpt2")),
        logit,
        "tests/fixtures/make_hf_reference.py",
        |fx, t| Box::pin(gpt2(fx, &t.device)),
    )];
    for (name, about) in [
        ("llama", "Llama (grouped-query attention, untied head, Llama 3.1 RoPE scaling) past its context"),
        ("qwen2", "Qwen2 (q/k/v biases, tied head, YaRN) past its context"),
        ("mistral", "Mistral (sliding window, dynamic NTK) past its context"),
    ] {
        let dir: &'static str = match name {
            "llama" => "hf-llama",
            "qwen2" => "hf-qwen2",
            _ => "hf-mistral",
        };
        all.push(Check::new::<MEASURE, _>(
            format!("transformers/{name}"),
            format!("{about}: logits at the recorded positions"),
            "transformers",
            Source::json(LLAMA_REF, "/made_with"),
            files(&[LLAMA_REF], model_files(dir)),
            logit,
            "tests/fixtures/make_llama_reference.py",
            move |fx, t| {
                Box::pin(async move {
                    let model = load(fx, dir, &t.device)?.model;
                    let d = llama_family_error(fx, &model, dir, &t.device).await?;
                    Ok(Measured::new(d, "every prompt runs past max_position_embeddings"))
                })
            },
        ));
    }
    all.push(
        Check::new::<MEASURE, _>(
            "tokenizers/gpt2-bpe",
            "a byte-level BPE tokenizer.json written by tokenizers: ids and decoded text of four probes, unseen bytes included",
            "tokenizers",
            Source::json("gpt2-style-tokenizer/expected.json", "/tokenizers_version"),
            files(&["gpt2-style-tokenizer/expected.json", "gpt2-style-tokenizer/tokenizer.json"], vec![]),
            Tolerance::exact("ids that differ"),
            "tests/fixtures/make_gpt2_style_tokenizer.py",
            |fx, _| Box::pin(async move { tokenizer(fx) }),
        )
        .on_host(),
    );
    all.push(
        Check::new::<MEASURE, _>(
            "transformers/chat-templates",
            "chat templates as apply_chat_template renders them (two styles, 12 conversations), and their token ids",
            "transformers",
            Source::json("chat-reference.json", "/made_with"),
            files(
                &["chat-reference.json", "chat-tokenizer/tokenizer.json", "chat-tokenizer/tokenizer_config.json", "chat-tokenizer/chat_template.jinja"],
                vec![],
            ),
            Tolerance::exact("conversations that differ"),
            "tests/fixtures/make_chat_reference.py",
            |fx, _| Box::pin(async move { chat(fx) }),
        )
        .on_host(),
    );
    all
}

/// The three files of a model folder among the fixtures.
pub(super) fn model_files(dir: &str) -> Vec<String> {
    ["config.json", "tokenizer.json", "model.safetensors"].iter().map(|f| format!("{dir}/{f}")).collect()
}

/// `first` followed by `rest`, as owned names.
pub(super) fn files(first: &[&str], rest: Vec<String>) -> Vec<String> {
    first.iter().map(|f| f.to_string()).chain(rest).collect()
}

/// The prompts of the GPT-2 reference: (prompt, ids, variants' logits).
pub(super) fn hf_cases(fx: &dyn Fixtures) -> Result<Vec<(String, Vec<u32>, serde_json::Value)>, String> {
    let v = json(fx, HF_REF)?;
    let cases = v["cases"].as_array().ok_or(format!("{HF_REF}: no cases"))?;
    cases.iter().map(|c| Ok((c["prompt"].as_str().unwrap_or_default().to_string(), ids(&c["ids"], HF_REF)?, c["variants"].clone()))).collect()
}

async fn gpt2(fx: &dyn Fixtures, device: &Device) -> Result<Measured, String> {
    let loaded = load(fx, "hf-gpt2", device)?;
    let cases = hf_cases(fx)?;
    ensure(cases.len() == 2, || format!("{HF_REF}: expected two prompts"))?;
    let mut d = 0.0f32;
    for (prompt, ids, variants) in &cases {
        let here = loaded.tokenizer.encode(prompt).map_err(s)?;
        ensure(&here == ids, || format!("token ids of {prompt:?}: {here:?} here, {ids:?} in transformers"))?;
        d = d.max(worst(&all_logits(&loaded.model, ids, device).await?, &floats(&variants["base"]["logits"], HF_REF)?, prompt)?);
    }
    Ok(Measured::new(d, "token ids equal"))
}

/// The largest |ours − transformers'| over the recorded positions of every prompt of
/// `name` in llama-reference.json.
pub(super) async fn llama_family_error(fx: &dyn Fixtures, model: &crate::Gpt, name: &str, device: &Device) -> Result<f32, String> {
    let v = json(fx, LLAMA_REF)?;
    let cases = v["models"][name].as_array().ok_or(format!("{LLAMA_REF}: no models.{name}"))?;
    let vocab = model.config().vocab_size;
    let mut d = 0.0f32;
    for c in cases {
        let ids = ids(&c["ids"], LLAMA_REF)?;
        let positions = ids_usize(&c["positions"])?;
        let want = floats(&c["logits"], LLAMA_REF)?;
        ensure(want.len() == positions.len() * vocab, || format!("{LLAMA_REF}: {name}: logits for another vocabulary"))?;
        let logits = all_logits(model, &ids, device).await?;
        let got: Vec<f32> = positions.iter().flat_map(|&p| logits[p * vocab..(p + 1) * vocab].iter().copied()).collect();
        d = d.max(worst(&got, &want, name)?);
    }
    Ok(d)
}

fn ids_usize(v: &serde_json::Value) -> Result<Vec<usize>, String> {
    Ok(ids(v, LLAMA_REF)?.into_iter().map(|i| i as usize).collect())
}

fn tokenizer(fx: &dyn Fixtures) -> Result<Measured, String> {
    let file = "gpt2-style-tokenizer/tokenizer.json";
    let tok = crate::TextTokenizer::from_json(&text(fx, file)?, file).map_err(s)?;
    let expected = json(fx, "gpt2-style-tokenizer/expected.json")?;
    ensure(tok.vocab_size() as u64 == expected["vocab_size"].as_u64().unwrap_or(0), || "vocabulary size differs".into())?;
    let probes = expected["probes"].as_array().ok_or("expected.json: no probes")?;
    ensure(probes.len() == 4, || "expected.json: four probes".into())?;
    let mut differ = 0;
    for p in probes {
        let text = p["text"].as_str().unwrap_or_default();
        let got = tok.encode(text).map_err(s)?;
        if got != ids(&p["ids"], "expected.json")? || tok.decode(&got) != p["decoded"].as_str().unwrap_or_default() {
            differ += 1;
        }
    }
    Ok(Measured::new(differ as f64, format!("{} probes", probes.len())))
}

fn chat(fx: &dyn Fixtures) -> Result<Measured, String> {
    use crate::tokenizer::chat::{ChatTemplate, Message};
    let v = json(fx, "chat-reference.json")?;
    let tok = crate::TextTokenizer::from_json(&text(fx, "chat-tokenizer/tokenizer.json")?, "chat-tokenizer/tokenizer.json").map_err(s)?;
    let (config, jinja) = (text(fx, "chat-tokenizer/tokenizer_config.json")?, text(fx, "chat-tokenizer/chat_template.jinja")?);
    let from_folder = ChatTemplate::from_files(Some((&config, "tokenizer_config.json")), Some((&jinja, "chat_template.jinja")))
        .map_err(s)?
        .ok_or("chat-tokenizer: no chat template")?;
    let (bos, eos) = (v["bos_token"].as_str().unwrap_or_default(), v["eos_token"].as_str().unwrap_or_default());
    let cases = v["cases"].as_array().ok_or("chat-reference.json: no cases")?;
    ensure(cases.len() == 12, || "chat-reference.json: expected 12 conversations".into())?;
    let mut differ = 0;
    for case in cases {
        let name = case["template"].as_str().unwrap_or_default();
        let template =
            if name == "markers" { from_folder.clone() } else { ChatTemplate::new(v["templates"][name].as_str().unwrap_or_default(), bos, eos).map_err(s)? };
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).map_err(s)?;
        let rendered = template.render(&messages, case["add_generation_prompt"].as_bool().unwrap_or(false)).map_err(s)?;
        if rendered != case["text"].as_str().unwrap_or_default() || tok.encode(&rendered).map_err(s)? != ids(&case["ids"], "chat-reference.json")? {
            differ += 1;
        }
    }
    Ok(Measured::new(differ as f64, format!("{} conversations", cases.len())))
}
