//! Parity with the Python ecosystem on committed fixtures (each made by the script beside
//! it in tests/fixtures). The reference checks themselves live in `tinytune::verify` (one
//! registry that `tinytune verify` and the page run too); here each group runs as a test.

use std::path::PathBuf;

use tinytune::verify;

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(path)
}

/// The groups with a test below; every check belongs to one.
const GROUPS: &[&str] = &["transformers", "tokenizers", "gguf", "peft", "bitsandbytes", "optimizers", "deepspeed", "mergekit", "trl"];

/// The repository's fixtures folder.
struct Dir;

impl verify::Fixtures for Dir {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        std::fs::read(fixture(path)).map_err(|e| format!("{path}: {e}"))
    }
}

/// Runs every check of `group` on the CPU against the repository's fixtures.
fn run_group(group: &str) {
    let target = verify::Target { device: burn::tensor::Device::flex(), host: burn::tensor::Device::flex() };
    let checks: Vec<_> = verify::checks().into_iter().filter(|c| c.group() == group).collect();
    assert!(!checks.is_empty(), "no checks in {group}");
    let mut failed = Vec::new();
    for check in &checks {
        let o = verify::run(check, &Dir, &target);
        eprintln!("{:<32} {:<22} {:<28} {:>10} {}", o.name, o.reference, o.tolerance_text, o.worst.map(|w| format!("{w:.2e}")).unwrap_or_default(), o.detail);
        if !o.passed {
            failed.push(format!("{}: measured {:?} against {} ({})", o.name, o.worst, o.tolerance_text, o.detail));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn every_check_belongs_to_a_tested_group() {
    for check in verify::checks() {
        assert!(GROUPS.contains(&check.group()), "{}: add its group to GROUPS and a test for it", check.name);
    }
}

/// transformers' GPT-2, Llama, Qwen2 and Mistral logits; chat templates.
#[test]
fn transformers_checks_pass() {
    run_group("transformers");
}

/// A tokenizer.json in GPT-2's format written by Python `tokenizers` gives Python's ids.
#[test]
fn tokenizers_checks_pass() {
    run_group("tokenizers");
}

/// GGML block types dequantized bit for bit as the gguf package does.
#[test]
fn gguf_checks_pass() {
    run_group("gguf");
}

/// PEFT's adapter folders loaded here, tinytune's exports loaded in PEFT, and
/// add_weighted_adapter.
#[test]
fn peft_checks_pass() {
    run_group("peft");
}

/// bitsandbytes' block-wise NF4/FP4, with and without double quantization, bit for bit.
#[test]
fn bitsandbytes_checks_pass() {
    run_group("bitsandbytes");
}

/// The optimizers against PyTorch's and bitsandbytes' step by step.
#[test]
fn optimizer_checks_pass() {
    run_group("optimizers");
}

/// DeepSpeed's ZeRO-2 and ZeRO-3 model-state estimators, to the byte.
#[test]
fn deepspeed_checks_pass() {
    run_group("deepspeed");
}

/// mergekit's merge methods on the same YAML.
#[test]
fn mergekit_checks_pass() {
    run_group("mergekit");
}

/// TRL's GKD divergences.
#[test]
fn trl_checks_pass() {
    run_group("trl");
}

/// The tiny GPT-2 that transformers saved (tests/fixtures/hf-gpt2).
fn hf_base(device: &burn::tensor::Device) -> tinytune::checkpoint::LoadedModel {
    let dir = fixture("hf-gpt2");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    tinytune::checkpoint::load_parts("hf-gpt2", &read("config.json"), &read("tokenizer.json"), &std::fs::read(dir.join("model.safetensors")).unwrap(), device)
        .unwrap()
}

fn read_adapter(name: &str) -> (String, Vec<u8>) {
    let dir = fixture(name);
    (std::fs::read_to_string(dir.join("adapter_config.json")).unwrap(), std::fs::read(dir.join("adapter_model.safetensors")).unwrap())
}

/// A reward model's LoRA adapter is PEFT's sequence-classification form: `task_type`
/// `SEQ_CLS`, `modules_to_save` `["score"]`, and the trained head saved whole as
/// `base_model.model.score.weight`; loaded onto a fresh reward model of the same base, it
/// gives the trained model's rewards exactly (the head is the adapter's, not the base's).
/// (Checked by hand with PEFT 0.21: `PeftModel.from_pretrained` on
/// `AutoModelForSequenceClassification(hf-gpt2, num_labels=1, pad_token_id=0)` reproduced a
/// trained run's accuracy, margin and mean reward to 1e-6.)
#[test]
fn a_reward_models_lora_adapter_saves_as_peft_sequence_classification() {
    use burn::tensor::{Int, Tensor, TensorData};
    use tinytune::methods::{LoraConfig, Method, peft};
    let device = burn::tensor::Device::flex();
    let method = Method::Lora(LoraConfig { r: 4, lora_alpha: 8.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() });
    let trained = method.apply(hf_base(&device).model.into_reward_model(0, 3), 0, &device).unwrap();
    let (config, weights) = peft::save(&trained, &method, None).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!((config["task_type"].as_str(), config["modules_to_save"].clone()), (Some("SEQ_CLS"), serde_json::json!(["score"])));
    let tensors = tinytune::checkpoint::from_safetensors(&weights, &"test".into()).unwrap();
    assert_eq!(tensors.get("base_model.model.score.weight").map(|d| d.shape().to_vec()), Some(vec![1, 32]));
    let fresh = hf_base(&device).model.into_reward_model(0, 5);
    let (back, _) = peft::load(fresh.clone(), &config.to_string(), &weights, "saved", &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 9, 13, 2, 0], [1, 5]), &device);
    let reward = |m: &tinytune::Gpt| m.rewards(ids.clone(), &[3]).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0];
    assert_eq!(reward(&back), reward(&trained), "the adapter carries the head");
    assert_ne!(reward(&fresh), reward(&trained), "the fresh base's head is another");
}

/// Bad adapter folders are refused with the file, the tensor or field, and the problem.
#[test]
fn bad_peft_adapters_name_the_file_and_tensor() {
    use tinytune::checkpoint::{from_safetensors, to_safetensors};
    use tinytune::methods::peft;
    let device = burn::tensor::Device::flex();
    let (config, weights) = read_adapter("peft-lora");
    let tensors = from_safetensors(&weights, &"x".into()).unwrap();
    let err = |config: &str, tensors: Vec<(String, burn::tensor::TensorData)>| {
        peft::load(hf_base(&device).model, config, &to_safetensors(tensors), "dir", &device).unwrap_err().to_string()
    };
    let mut sorted: Vec<_> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    // A missing tensor.
    let e = err(&config, sorted[1..].to_vec());
    assert!(e.contains("dir/adapter_model.safetensors") && e.contains(&sorted[0].0) && e.contains("missing"), "{e}");
    // An extra tensor the config does not make.
    let mut extra = sorted.clone();
    extra.push(("base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight".into(), sorted[0].1.clone()));
    let e = err(&config, extra);
    assert!(e.contains("h.0.mlp.c_fc.lora_A.weight") && e.contains("no place"), "{e}");
    // A tensor of the wrong shape (rank 4 in the config, a rank-3 matrix in the file).
    let mut wrong = sorted.clone();
    wrong[0].1 = burn::tensor::TensorData::new(vec![0.0f32; 3 * 32], [3, 32]);
    let e = err(&config, wrong);
    assert!(e.contains(&sorted[0].0) && e.contains("[3, 32]") && e.contains("[4, 32]"), "{e}");
    // Configs: an unsupported type, a regex target, rank 0, a module the model lacks.
    let e = err(&config.replace("\"LORA\"", "\"LOHA\""), sorted.clone());
    assert!(e.contains("dir/adapter_config.json") && e.contains("peft_type") && e.contains("LOHA"), "{e}");
    let e = err(&config.replace("[\n    \"c_attn\"\n  ]", "\".*c_attn\""), sorted.clone());
    assert!(e.contains("target_modules") && e.contains("pattern"), "{e}");
    let e = err(&config.replace("\"r\": 4", "\"r\": 0"), sorted.clone());
    assert!(e.contains("r: rank must be at least 1"), "{e}");
    let e = err(&config.replace("[\n    \"c_attn\"\n  ]", "[\"q_proj\"]"), sorted);
    assert!(e.contains("target_modules") && e.contains("q_proj") && e.contains("h.0.attn.c_attn"), "{e}");
}
