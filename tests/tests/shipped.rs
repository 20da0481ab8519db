//! The pretrained micro checkpoint in `assets/micro` is what later lessons fine-tune from:
//! it must load, stay small enough for the repository and a browser, and be clearly trained.

use std::path::PathBuf;

use burn::module::Module;
use burn::tensor::Device;
use tinytune::checkpoint::{files, load_model};
use tinytune::data::Split;
use tinytune::train::{DataSource, eval_loss};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

fn asset(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro").join(name)
}

/// Stated bound (README): held-out story loss below 1.0 nats per BPE token. The shipped
/// model measured 0.633 here when it was made (scripts/make-micro.sh); an untrained one of
/// the same shape scores 6.27, about ln(512) ≈ 6.24.
const BOUND: f32 = 1.0;

#[test]
fn shipped_micro_checkpoint_is_small_and_well_trained() {
    let total: u64 = [files::CONFIG, files::WEIGHTS, files::TOKENIZER].iter().map(|f| std::fs::metadata(asset(f)).unwrap().len()).sum();
    assert!(total <= 5 * 1024 * 1024, "assets/micro is {total} bytes, over the 5 MB budget");

    let device = Device::flex();
    let config = ModelConfig::from_json(&std::fs::read_to_string(asset(files::CONFIG)).unwrap(), "assets/micro/config.json").unwrap();
    let tok = TextTokenizer::from_json(&std::fs::read_to_string(asset(files::TOKENIZER)).unwrap(), "assets/micro/tokenizer.json").unwrap();
    assert_eq!(tok.kind(), "bpe");
    assert_eq!(config.vocab_size, tok.vocab_size());
    let model = load_model(&config, &std::fs::read(asset(files::WEIGHTS)).unwrap(), &device, "assets/micro/model.safetensors").unwrap();

    let data = DataSource::Stories.dataset(&tok, 0, Split::Eval, 200, 128, 0.0).unwrap();
    let trained = eval_loss(&model, &data, 16, 128, 8).unwrap();
    let untrained = eval_loss(&Gpt::init(&config, 1, &device).valid(), &data, 16, 128, 8).unwrap();
    assert!(trained < BOUND, "held-out loss {trained} is not below {BOUND}");
    assert!(untrained > 5.0, "untrained loss {untrained}");
    assert!(trained < untrained / 4.0, "trained {trained} vs untrained {untrained}");
}
