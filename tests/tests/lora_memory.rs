//! LoRA in activation space against LoRA that composes a dense weight, measured: one
//! forward and backward pass of micro with rank-8 LoRA on every linear layer, counted by the
//! allocator. tinytune computes `x·W + s·(x·A)·B` and never forms `A·B`; Burn's built-in
//! `Module::apply_lora` reparameterises each weight as `W + s·A·B`, so every forward builds
//! (and autodiff keeps what it needs of) a weight-sized tensor per adapted matrix.
//!
//! Its own test binary with a single test: the counting allocator sees every thread's
//! allocations, so tests running beside it would pollute the figures.

use burn::module::{Module, ParamGroup};
use burn::tensor::Device;
use tinytune::data::rng::Rng;
use tinytune::memory::measure::{CountingAlloc, current, peak, reset_peak};
use tinytune::methods::{LoraConfig, Method, for_each_projection_ref};
use tinytune::train::Dataset;
use tinytune::{Gpt, ModelConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Peak bytes above the resting level of one forward and backward pass (after one
/// unmeasured pass, so thread pools exist), and the loss.
fn pass_peak(model: &Gpt, data: &Dataset, b: usize, t: usize, device: &Device) -> (usize, f32) {
    let batch = data.sequential(b, t, 1).remove(0);
    let run = || {
        let (inputs, targets, weights) = batch.to_device(device);
        let loss = Gpt::loss(model.forward(inputs), targets, weights, batch.weight_sum());
        let value = loss.clone().into_data().try_to_vec::<f32>().unwrap()[0];
        let grads = loss.backward();
        (grads, value)
    };
    drop(run());
    let base = current();
    reset_peak();
    let (grads, loss) = run();
    let p = peak() - base;
    drop(grads);
    (p, loss)
}

#[test]
fn lora_in_activation_space_peaks_lower_than_a_composed_dense_weight() {
    let config = ModelConfig::micro();
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(0);
    let data = Dataset::Stream { tokens: (0..20_000).map(|_| rng.below(config.vocab_size) as u32).collect() };
    let base = Gpt::init(&config, 0, &device);
    let ours = Method::Lora(LoraConfig { r: 8, lora_alpha: 16.0, target_modules: vec!["all-linear".into()], ..LoraConfig::default() })
        .apply(base.clone(), 0, &device)
        .unwrap();
    let mut paths = Vec::new();
    for_each_projection_ref(&base, |path, _| paths.push(format!("{path}.weight")));
    let burns = base.clone().apply_lora(burn::module::Lora::new(8, 16.0).set_param_group(ParamGroup::from_paths(paths)));
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    // The linear weights: what composing W + s·A·B rebuilds every forward pass.
    let weights: usize = 4 * config.n_layer * 12 * config.n_embd * config.n_embd;
    for (b, t) in [(16, 128), (2, 32)] {
        let (ours_peak, ours_loss) = pass_peak(&ours, &data, b, t, &device);
        let (burn_peak, burn_loss) = pass_peak(&burns, &data, b, t, &device);
        let (_, base_loss) = pass_peak(&base, &data, b, t, &device);
        eprintln!(
            "micro, rank-8 LoRA on all 16 linear layers ({:.1} MiB of weights), batch {b} × {t}, one forward+backward's peak above rest: activation space {:.1} MiB · Burn's apply_lora (dense W + s·A·B) {:.1} MiB",
            mib(weights),
            mib(ours_peak),
            mib(burn_peak)
        );
        // Both start at the base model (B = 0), so they compute the same loss.
        assert!((ours_loss - base_loss).abs() < 1e-5 && (burn_loss - base_loss).abs() < 1e-5, "{ours_loss} {burn_loss} {base_loss}");
        if (b, t) == (2, 32) {
            // With few tokens the weights dominate: composing them costs at least half their
            // size again (stated margin; measured figures in docs/methods.md).
            assert!(burn_peak as f64 > ours_peak as f64 + 0.5 * weights as f64, "activation space {ours_peak} B vs composed {burn_peak} B");
        }
    }
}
