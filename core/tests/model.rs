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
    // Weights of a different shape: the error names the tensor and both shapes.
    let other = save_model(&Gpt::init(&ModelConfig::new(64, 128, 32, 2, 4), 0, &device()));
    let err = load_model(&c, &other, &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.contains("tensor 'wte.weight'") && err.contains("[64, 32]") && err.contains("[64, 64]"), "{err}");
    // Fewer layers than the config asks for: the first missing tensor is named.
    let short = save_model(&Gpt::init(&ModelConfig::new(64, 128, 64, 1, 4), 0, &device()));
    let err = load_model(&c, &short, &device(), "w.safetensors").unwrap_err().to_string();
    assert!(err.contains("h.1.") && err.contains("missing"), "{err}");
}
