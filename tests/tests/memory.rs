//! The estimator against the measurement: one real training step of tinytune's own model,
//! counted by the allocator, over a grid of methods, batch sizes, sequence lengths and
//! shapes. The estimate of the step's peak must be within 10% of the measured peak.
//!
//! This file is its own test binary with a single test, because the counting allocator
//! sees every thread's allocations: tests running beside it would pollute the figures.

use burn::tensor::Device;
use tinytune::ModelConfig;
use tinytune::memory::measure::{CountingAlloc, measure_step, synthetic_batch};
use tinytune::memory::{Plan, human};
use tinytune::methods::{LoraConfig, Method};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn estimate_is_within_10_percent_of_the_measured_peak() {
    let device = Device::flex().autodiff();
    let lora = |r: usize, t: &str| Method::Lora(LoraConfig { r, target_modules: vec![t.to_string()], ..LoraConfig::default() });
    let methods = [("full", Method::Full), ("lora c_attn r8", lora(8, "c_attn")), ("lora all-linear r4", lora(4, "all-linear"))];
    let shapes = [("micro", ModelConfig::micro()), ("nano+", ModelConfig { n_inner: Some(192), ..ModelConfig::new(96, 128, 64, 3, 2) })];
    let mut rows = Vec::new();
    let mut worst: f64 = 0.0;
    for (shape, config) in &shapes {
        for (name, method) in &methods {
            for b in [4usize, 8, 16] {
                for t in [64usize, 128] {
                    let measured = measure_step(config, method, &synthetic_batch(b, t, config.vocab_size), &device).unwrap();
                    let plan = Plan::for_tinytune(config, method, b as u64, t as u64);
                    plan.validate("test plan").unwrap();
                    let est = plan.estimate();
                    // Exact attributions first: these are sizes, not estimates.
                    assert_eq!(measured.params, est.gpu.params, "{shape} {name}: parameter bytes");
                    assert_eq!(measured.grads, est.gpu.gradients, "{shape} {name}: gradient bytes");
                    assert_eq!(measured.optimizer, est.gpu.optimizer, "{shape} {name}: optimizer bytes");
                    let err = est.first_step_peak as f64 / measured.peak as f64 - 1.0;
                    worst = worst.max(err.abs());
                    rows.push(format!("| {shape} | {name} | {b} | {t} | {} | {} | {:+.1}% |", human(measured.peak), human(est.first_step_peak), err * 100.0));
                }
            }
        }
    }
    println!("| model | method | batch | seq | measured peak | estimated peak | error |\n|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!("worst error {:.1}%", worst * 100.0);
    assert!(worst < 0.10, "worst estimate error {:.1}% exceeds 10%", worst * 100.0);
}
