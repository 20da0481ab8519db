//! Model invariants on the flex CPU backend: shapes, causality, deterministic init,
//! parameter names and counts, and checkpoint round trips.

use burn::tensor::{Device, Int, Tensor, TensorData};
use tinytune::Gpt;
use tinytune::checkpoint::{load_model, save_model};
use tinytune::model::{ModelConfig, named_params};

fn device() -> Device {
    Device::flex()
}

fn ids(v: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), device)
}

fn logits(model: &Gpt, v: &[i64]) -> Vec<f32> {
    model.forward(ids(v, &device())).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn forward_maps_batch_by_time_to_vocab_logits() {
    let d = device();
    let model = Gpt::init(&ModelConfig::nano(), 0, &d);
    let x = Tensor::<2, Int>::zeros([3, 17], &d);
    assert_eq!(model.forward(x).dims(), [3, 17, 64]);
}

#[test]
fn changing_a_later_token_never_changes_earlier_logits() {
    let model = Gpt::init(&ModelConfig::nano(), 1, &device());
    let v = 64;
    let a: Vec<i64> = (0..20).map(|i| (i * 7 % 60) as i64).collect();
    let base = logits(&model, &a);
    for k in [0usize, 5, 19] {
        let mut b = a.clone();
        b[k] = (b[k] + 13) % 60;
        let changed = logits(&model, &b);
        // Positions before k are bit-identical; position k itself must change.
        assert_eq!(base[..k * v], changed[..k * v], "position < {k} leaked");
        assert_ne!(base[k * v..(k + 1) * v], changed[k * v..(k + 1) * v], "position {k} ignored its own token");
    }
}

#[test]
fn init_is_a_function_of_the_seed() {
    let c = ModelConfig::nano();
    let probe = [1i64, 2, 3, 4];
    assert_eq!(logits(&Gpt::init(&c, 5, &device()), &probe), logits(&Gpt::init(&c, 5, &device()), &probe));
    assert_ne!(logits(&Gpt::init(&c, 5, &device()), &probe), logits(&Gpt::init(&c, 6, &device()), &probe));
}

#[test]
fn parameters_have_gpt2_names_and_the_closed_form_count() {
    for c in [ModelConfig::nano(), ModelConfig::micro(), ModelConfig::new(50, 16, 24, 3, 6)] {
        let model = Gpt::init(&c, 0, &device());
        let params = named_params(&model);
        assert_eq!(params.iter().map(|p| p.numel).sum::<usize>(), c.num_params());
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        for want in [
            "wte.weight",
            "wpe.weight",
            "h.0.ln_1.weight",
            "h.0.attn.c_attn.weight",
            "h.0.attn.c_attn.bias",
            "h.0.attn.c_proj.weight",
            "h.0.mlp.c_fc.weight",
            "h.0.mlp.c_proj.bias",
            "ln_f.bias",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let qkv = params.iter().find(|p| p.name == "h.0.attn.c_attn.weight").unwrap();
        assert_eq!(qkv.shape, vec![c.n_embd, 3 * c.n_embd], "Conv1D layout [in, out]");
        // The formula the browser's model card uses (no model allocated) lists exactly
        // these parameters, names, shapes and order.
        let key = |ps: &[tinytune::model::ParamSummary]| ps.iter().map(|p| (p.name.clone(), p.shape.clone(), p.numel)).collect::<Vec<_>>();
        assert_eq!(key(&c.param_summaries()), key(&params));
    }
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let c = ModelConfig::nano();
    let model = Gpt::init(&c, 3, &device());
    let bytes = save_model(&model);
    let back = load_model(&c, &bytes, &device(), "model.safetensors").unwrap();
    let probe = [5i64, 9, 2, 33, 1];
    assert_eq!(logits(&model, &probe), logits(&back, &probe));
}

#[test]
fn bad_weights_files_name_the_file_and_tensor() {
    let c = ModelConfig::nano();
    let err = load_model(&c, b"not safetensors", &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.starts_with("w.safetensors") && err.contains("safetensors"), "{err}");
    // Weights of a different shape: before anything is allocated, the error names the
    // config's field, the tensor and both shapes.
    let other = save_model(&Gpt::init(&ModelConfig::new(64, 128, 32, 2, 4), 0, &device()));
    let err = load_model(&c, &other, &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.starts_with("config.json: n_embd") && err.contains("wte.weight") && err.contains("[64, 32]") && err.contains("[64, 64]"), "{err}");
    // Fewer layers than the config asks for: the count the weights hold.
    let short = save_model(&Gpt::init(&ModelConfig::new(64, 128, 64, 1, 4), 0, &device()));
    let err = load_model(&c, &short, &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.contains("n_layer") && err.contains("the weights of 1 block;"), "{err}");
    // A missing tensor of a block the file has is named.
    let mut tensors = tinytune::checkpoint::from_safetensors(&save_model(&Gpt::init(&c, 0, &device())), &"w".into()).unwrap();
    tensors.remove("h.1.ln_1.weight");
    let err = load_model(&c, &tinytune::checkpoint::to_safetensors(tensors.into_iter().collect()), &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.contains("h.1.ln_1.weight") && err.contains("missing"), "{err}");
}

/// Llama-layout shapes that exercise every optional part: q/k/v biases (Qwen2), an explicit
/// head width, an untied head, a sliding window, Llama 3.1 RoPE scaling.
fn llama_variants() -> Vec<ModelConfig> {
    use tinytune::model::rope::RopeScaling;
    let qwen = ModelConfig { family: tinytune::model::Family::Qwen2, qkv_bias: true, ..ModelConfig::nano_llama() };
    let wide_heads = ModelConfig { head_dim: Some(24), tie_word_embeddings: true, ..ModelConfig::nano_llama() };
    let window =
        ModelConfig { family: tinytune::model::Family::Mistral, sliding_window: Some(5), sliding_layers: vec![true, false], ..ModelConfig::nano_llama() };
    let mut scaled = ModelConfig::micro_llama();
    scaled.rope.scaling = RopeScaling::Llama3 { factor: 4.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max: 16 };
    vec![ModelConfig::nano_llama(), ModelConfig::micro_llama(), qwen, wide_heads, window, scaled]
}

#[test]
fn llama_parameters_match_the_closed_form_and_stay_causal() {
    for c in llama_variants() {
        c.validate("test").unwrap();
        let model = Gpt::init(&c, 0, &device());
        let params = named_params(&model);
        let key = |ps: &[tinytune::model::ParamSummary]| ps.iter().map(|p| (p.name.clone(), p.shape.clone(), p.numel)).collect::<Vec<_>>();
        assert_eq!(key(&c.param_summaries()), key(&params), "{c:?}");
        assert!(params.iter().all(|p| !p.name.starts_with("wpe")), "rotary models learn no position table");

        // Changing token k changes nothing before it (the window only hides more).
        let v = c.vocab_size;
        let a: Vec<i64> = (0..20).map(|i| (i * 7 % 60) as i64).collect();
        let base = logits(&model, &a);
        for k in [0usize, 9, 19] {
            let mut b = a.clone();
            b[k] = (b[k] + 13) % 60;
            let changed = logits(&model, &b);
            assert_eq!(base[..k * v], changed[..k * v], "position < {k} leaked");
            assert_ne!(base[k * v..(k + 1) * v], changed[k * v..(k + 1) * v]);
        }
    }
}

/// Generation with the key/value cache sees exactly what a full forward pass over the
/// text so far sees: the prompt in one call, then one token per call, for both families
/// and with the methods that change attention's inputs (a soft prompt, a prefix).
#[test]
fn cached_generation_equals_the_full_forward_pass() {
    use tinytune::methods::{Method, PrefixConfig, PromptConfig};
    use tinytune::model::transformer::KvCache;
    let d = device();
    let mut configs = vec![ModelConfig::nano()];
    configs.extend(llama_variants());
    let methods = [
        Method::Full,
        Method::Prompt(PromptConfig { num_virtual_tokens: 3, ..PromptConfig::default() }),
        Method::Prefix(PrefixConfig { num_virtual_tokens: 2, encoder_hidden_size: None }),
    ];
    for c in configs {
        for method in &methods {
            let model = method.apply(Gpt::init(&c, 4, &d), 1, &d).unwrap();
            let text: Vec<i64> = (0..24).map(|i| (i * 11 % 60) as i64).collect();
            let mut cache = KvCache::default();
            let v = c.vocab_size;
            let first = model.forward_cached(ids(&text[..10], &d), &mut cache).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            let full = logits(&model, &text[..10]);
            let worst = first.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{:?} {}: prompt logits differ by {worst}", c.family, method.name());
            for t in 10..text.len() {
                let step = model.forward_cached(ids(&text[t..t + 1], &d), &mut cache).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
                let full = logits(&model, &text[..=t]);
                let last = &full[t * v..(t + 1) * v];
                let worst = step.iter().zip(last).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(worst < 1e-5, "{:?} {} at {t}: cached logits differ by {worst}", c.family, method.name());
            }
            assert_eq!(
                cache.position,
                text.len() + model.virtual_tokens() + if c.family.is_llama_like() { model.prefix.as_ref().map_or(0, |p| p.len()) } else { 0 }
            );
        }
    }
}

/// `generate` gives the same tokens with and without the cache, also when the text grows
/// past the context and the window slides.
#[test]
fn generation_with_and_without_the_cache_agrees() {
    use tinytune::sample::{SampleConfig, generate};
    for c in [ModelConfig { n_positions: 16, ..ModelConfig::nano() }, ModelConfig { n_positions: 16, ..ModelConfig::nano_llama() }] {
        let model = Gpt::init(&c, 2, &device());
        let config = SampleConfig { max_new_tokens: 30, temperature: 0.9, top_k: Some(8), seed: 3, ..SampleConfig::default() };
        let cached = generate(&model, &[1, 2, 3, 4, 5], &config);
        let uncached = generate(&model, &[1, 2, 3, 4, 5], &SampleConfig { cache: false, ..config });
        assert_eq!(cached.len(), 30);
        assert_eq!(cached, uncached, "{:?}", c.family);
    }
}
