//! How long a Llama checkpoint takes to load, the way tinytune loaded checkpoints before
//! (build a randomly initialised model, then overwrite every weight) and the way it does
//! now (a model of zeros, filled from the file), on a 1 B-parameter shape (Llama 3.2 1B's:
//! hidden 2048, 16 layers, 32 query and 8 key/value heads, SwiGLU 8192, vocabulary 128,256,
//! tied head). The checkpoint is random, written in the Hugging Face layout by
//! `save_model`; both loads parse the same bytes.
//!
//! cargo run --release -p tinytune-cli --example load_time -- [layers]
//! (needs about 4 × the checkpoint's size in memory: 20 GB at 16 layers)

use burn::tensor::Device;
use tinytune::checkpoint::{from_safetensors, load_model, model_tensors, save_model};
use tinytune::model::params::load_params;
use tinytune::{Gpt, ModelConfig};
use web_time::Instant;

fn main() {
    let layers: usize = std::env::args().nth(1).map_or(16, |s| s.parse().expect("a layer count"));
    let config = ModelConfig::llama(128_256, 2048, 2048, layers, 32, 8, 8192, true);
    let device = Device::flex();
    println!("shape: {:.2} B parameters ({} layers), {:.1} GB in f32", config.num_params() as f64 / 1e9, layers, config.num_params() as f64 * 4.0 / 1e9);
    let t = Instant::now();
    let bytes = save_model(&Gpt::zeros(&config, &device));
    println!("checkpoint written in memory: {:.1} GB in {:.1} s", bytes.len() as f64 / 1e9, t.elapsed().as_secs_f64());

    // Before: a random model built first (every weight drawn from N(0, 0.02²)), then filled.
    let t = Instant::now();
    let random = Gpt::init(&config, 0, &device);
    let init_s = t.elapsed().as_secs_f64();
    let tensors = model_tensors(&config, from_safetensors(&bytes, &"model.safetensors".into()).unwrap(), &"model.safetensors".into()).unwrap();
    let (model, _) = load_params(random, tensors, &"model.safetensors".into()).unwrap();
    let before = t.elapsed().as_secs_f64();
    drop(model);
    println!("before (random init, then fill): {before:.1} s, of which the random init {init_s:.1} s");

    // Now: zeros, filled.
    let t = Instant::now();
    let model = load_model(&config, &bytes, &device, "model.safetensors").unwrap();
    let after = t.elapsed().as_secs_f64();
    println!("now (zeros, then fill): {after:.1} s — {:.1}× faster", before / after);
    drop(model);
}
