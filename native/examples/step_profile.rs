//! Where a training step's time goes on the flex CPU backend: forward (to the loss),
//! backward, gradient collection + clipping, and the AdamW update, averaged over steps.
//! Flex executes eagerly, so wall-clock time per phase is what each phase costs.
//!
//! cargo run -p tinytune-cli --example step_profile -- [d_model layers heads ctx batch vocab steps]

use burn::tensor::Device;
use tinytune::data::rng::Rng;
use tinytune::optim::{NamedGrads, OptimConfig, Optimizer};
use tinytune::train::Dataset;
use tinytune::{Gpt, ModelConfig};
use web_time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args().skip(1).map(|s| s.parse().expect("numbers")).collect();
    let get = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (d, l, h, ctx, b, v, steps) = (get(0, 128), get(1, 4), get(2, 4), get(3, 128), get(4, 16), get(5, 256), get(6, 10));
    let device = Device::flex().autodiff();
    let mut model = Gpt::init(&ModelConfig::new(v, ctx, d, l, h), 0, &device);
    let mut optim = Optimizer::new(OptimConfig::default());
    let mut rng = Rng::new(0);
    let data = Dataset::Stream { tokens: (0..100_000).map(|_| rng.below(v) as u32).collect() };
    let mut t = [0f64; 4];
    for step in 0..steps + 2 {
        let batch = data.sample(&mut rng, b, ctx);
        let (inputs, targets, weights) = batch.to_device(&device);
        let t0 = Instant::now();
        let loss = Gpt::loss(model.forward(inputs), targets, weights, batch.weight_sum());
        let _: f32 = loss.clone().into_scalar();
        let t1 = Instant::now();
        let grads = loss.backward();
        let t2 = Instant::now();
        let mut named = NamedGrads::collect(&model, &grads);
        let _ = optim.clip(&mut named).map(|n| n.into_scalar::<f32>());
        let t3 = Instant::now();
        model = optim.step(1e-3, model, named);
        let _: f32 = model.wte.weight.val().sum().into_scalar();
        let t4 = Instant::now();
        if step >= 2 {
            for (acc, (x, y)) in t.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)]) {
                *acc += (y - x).as_secs_f64();
            }
        }
    }
    let total: f64 = t.iter().sum();
    for (name, s) in ["forward+loss", "backward", "collect+clip", "adamw"].iter().zip(t) {
        println!("{name:<14} {:8.2} ms/step  {:5.1}%", 1e3 * s / steps as f64, 100.0 * s / total);
    }
    println!("total          {:8.2} ms/step  -> {:.0} tokens/s", 1e3 * total / steps as f64, (b * ctx * steps) as f64 / total);
}
