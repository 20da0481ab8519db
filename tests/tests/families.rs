//! The Llama family on committed fixtures (made by tests/fixtures/make_llama_reference.py):
//! a Llama with grouped-query attention, an untied head and Llama 3.1 RoPE scaling, the same
//! with a PEFT LoRA adapter on all seven projections, a Qwen2 with q/k/v biases, a tied head
//! and YaRN, and a Mistral with a sliding window and dynamic NTK scaling. Their logits are
//! held to transformers' and PEFT's by the registry (`tinytune::verify`, run in
//! fixtures.rs); here: that the fixtures tell the features apart, and round trips.

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tinytune::checkpoint::{LoadedModel, load_parts, save_model};
use tinytune::methods::peft;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

fn load(name: &str, device: &Device) -> LoadedModel {
    let dir = fixture(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    load_parts(name, &read("config.json"), &read("tokenizer.json"), &std::fs::read(dir.join("model.safetensors")).unwrap(), device).unwrap()
}

/// (ids, positions, logits at those positions) for each prompt of `model` in the reference.
fn cases(model: &str) -> Vec<(Vec<u32>, Vec<usize>, Vec<f32>)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("llama-reference.json")).unwrap()).unwrap();
    let nums = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|n| n.as_f64().unwrap()).collect::<Vec<_>>();
    v["models"][model]
        .as_array()
        .unwrap_or_else(|| panic!("{model} is in the reference"))
        .iter()
        .map(|c| {
            (
                nums(&c["ids"]).iter().map(|&i| i as u32).collect(),
                nums(&c["positions"]).iter().map(|&p| p as usize).collect(),
                nums(&c["logits"]).iter().map(|&x| x as f32).collect(),
            )
        })
        .collect()
}

/// The PEFT adapter folder `name` loaded onto hf-llama, with its method and weights file.
fn adapter_on_llama(name: &str, device: &Device) -> (tinytune::Gpt, tinytune::methods::Method, Vec<u8>) {
    let dir = fixture(name);
    let config = std::fs::read_to_string(dir.join(peft::CONFIG)).unwrap();
    let weights = std::fs::read(dir.join(peft::WEIGHTS)).unwrap();
    let (model, method) = peft::load(load("hf-llama", device).model, &config, &weights, name, device).unwrap();
    (model, method, weights)
}

/// The largest |ours − transformers'| over the reference positions of every prompt.
fn worst_error(model: &tinytune::Gpt, name: &str, device: &Device) -> f32 {
    let mut worst = 0.0f32;
    for (ids, positions, want) in cases(name) {
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, ids.len()]), device);
        let logits = model.forward(x).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let v = model.config().vocab_size;
        assert_eq!(want.len(), positions.len() * v);
        for (row, &p) in positions.iter().enumerate() {
            for j in 0..v {
                worst = worst.max((logits[p * v + j] - want[row * v + j]).abs());
            }
        }
        assert!(logits.iter().all(|x| x.is_finite()));
    }
    worst
}

#[test]
fn the_llama_family_fixtures_tell_their_features_apart() {
    let device = Device::flex();
    for name in ["hf-llama", "hf-qwen2", "hf-mistral"] {
        let loaded = load(name, &device);
        // (Their logits are held to transformers' by the registry's transformers/* checks.)
        // The fixtures can tell the features apart: without its RoPE scaling (or, for
        // Mistral, its window) the same weights miss transformers' logits by far more.
        let mut plain = loaded.model.clone();
        plain.config.rope.scaling = tinytune::model::rope::RopeScaling::None;
        let d = worst_error(&plain, name, &device);
        assert!(d > 1e-3, "{name} without RoPE scaling still within {d}");
        if name == "hf-mistral" {
            let mut full = loaded.model.clone();
            for block in &mut full.h {
                block.attn.window = None;
            }
            let d = worst_error(&full, name, &device);
            assert!(d > 1e-3, "mistral without its window still within {d}");
        }
    }
    // The configs were read in transformers 5's rope_parameters form; check what they said.
    let llama = load("hf-llama", &device).config;
    assert_eq!(llama.rope.scaling.name(), "llama3");
    assert_eq!((llama.n_head, llama.n_kv_head, llama.tie_word_embeddings), (4, 2, false));
    let qwen = load("hf-qwen2", &device).config;
    assert!(qwen.qkv_bias && !qwen.o_bias && qwen.tie_word_embeddings && qwen.rope.scaling.name() == "yarn");
    assert_eq!(load("hf-mistral", &device).config.window(1), Some(8));
}

#[test]
fn a_peft_lora_on_all_seven_llama_projections_round_trips() {
    let device = Device::flex();
    let (model, method, weights) = adapter_on_llama("peft-llama-lora", &device);
    assert_eq!(method.lora().unwrap().target_modules.len(), 7);
    // (Its logits are held to PEFT's by the registry's peft/llama-lora check.)
    // Written back, the adapter has PEFT's keys and layout: the same tensors as the file.
    let (config_out, bytes) = peft::save(&model, &method, None).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&config_out).unwrap();
    assert_eq!(cfg["fan_in_fan_out"], false, "Llama's projections are nn.Linear");
    let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut a: Vec<String> = ours.names().into_iter().map(str::to_string).collect();
    let mut b: Vec<String> = theirs.names().into_iter().map(str::to_string).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    for name in &a {
        assert_eq!(ours.tensor(name).unwrap().data(), theirs.tensor(name).unwrap().data(), "{name}");
    }
}

#[test]
fn a_llama_checkpoint_saves_with_transformers_names_and_reloads_identically() {
    let device = Device::flex();
    let loaded = load("hf-llama", &device);
    let bytes = save_model(&loaded.model);
    let ours = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let theirs_bytes = std::fs::read(fixture("hf-llama/model.safetensors")).unwrap();
    let theirs = safetensors::SafeTensors::deserialize(&theirs_bytes).unwrap();
    let mut a: Vec<String> = ours.names().into_iter().map(str::to_string).collect();
    let mut b: Vec<String> = theirs.names().into_iter().map(str::to_string).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same tensor names as transformers writes");
    for name in &a {
        assert_eq!(ours.tensor(name).unwrap().shape(), theirs.tensor(name).unwrap().shape(), "{name}");
        assert_eq!(ours.tensor(name).unwrap().data(), theirs.tensor(name).unwrap().data(), "{name}: same bytes");
    }
    // And the config round-trips through tinytune's writer to the same model.
    let again = tinytune::ModelConfig::from_json(&loaded.config.to_json(), "written").unwrap();
    assert_eq!(again, loaded.config);
}

/// The chat template's own error reaches the user (its renderings are held to transformers'
/// by the registry's transformers/chat-templates check).
#[test]
fn a_chat_template_refuses_a_conversation_out_of_order() {
    use tinytune::tokenizer::chat::{ChatTemplate, Message};
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("chat-reference.json")).unwrap()).unwrap();
    let (bos, eos) = (v["bos_token"].as_str().unwrap(), v["eos_token"].as_str().unwrap());
    let headers = ChatTemplate::new(v["templates"]["headers"].as_str().unwrap(), bos, eos).unwrap();
    let bad = [Message { role: "assistant".into(), content: "hi".into() }];
    assert!(headers.render(&bad, false).unwrap_err().to_string().contains("must alternate"));
}
