//! Optimizers and training techniques on the flex CPU backend with the nano preset: every
//! optimizer learns and resumes exactly, its state costs what the memory estimator says,
//! accumulation and checkpointing leave the gradient unchanged, MeZO learns without a
//! backward pass. (Peak memory is measured in tests/tests/techniques.rs, with the counting
//! allocator.)

use burn::tensor::Device;
use tinytune::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};
use tinytune::data::{CHARSET, Task};
use tinytune::model::named_params;
use tinytune::optim::{NamedGrads, OptimConfig, OptimKind};
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

fn ad() -> Device {
    Device::flex().autodiff()
}

fn setup() -> (TextTokenizer, ModelConfig) {
    let tok = TextTokenizer::char_level(CHARSET);
    let c = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() };
    (tok, c)
}

fn config(kind: OptimKind, steps: usize) -> TrainConfig {
    TrainConfig {
        data: DataSource::Task(Task::Sentiment),
        train_examples: 400,
        eval_examples: 40,
        steps,
        batch_size: 8,
        seq_len: 64,
        lr: kind.suggested_lr(),
        warmup_steps: 2,
        eval_batches: 2,
        optimizer: OptimConfig::for_kind(kind),
        ..TrainConfig::default()
    }
}

fn max_diff(a: &NamedGrads, b: &NamedGrads) -> (f32, f32) {
    let mut worst = 0f32;
    let mut largest = 0f32;
    for ((na, ga), (nb, gb)) in a.0.iter().zip(&b.0) {
        assert_eq!(na, nb);
        let ga: Vec<f32> = ga.to_data().convert::<f32>().try_to_vec().unwrap();
        let gb: Vec<f32> = gb.to_data().convert::<f32>().try_to_vec().unwrap();
        for (x, y) in ga.iter().zip(&gb) {
            worst = worst.max((x - y).abs());
            largest = largest.max(x.abs());
        }
    }
    (worst, largest)
}

/// Every optimizer lowers the training loss of a fresh nano model in 30 steps, its measured
/// state equals the estimator's per-tensor formula, and a run saved after 15 steps and
/// rebuilt from bytes continues with exactly the uninterrupted run's losses.
#[test]
fn every_optimizer_learns_costs_its_formula_and_resumes_exactly() {
    let (tok, c) = setup();
    let device = ad();
    for kind in OptimKind::ALL.into_iter().filter(|k| k.uses_gradients()) {
        let mut straight = Trainer::new(Gpt::init(&c, 0, &device), &tok, config(kind, 30), &device).unwrap();
        let losses: Vec<f32> = (0..30).map(|_| straight.step().unwrap().loss).collect();
        let (first, last) = (losses[..3].iter().sum::<f32>() / 3.0, losses[27..].iter().sum::<f32>() / 3.0);
        assert!(last < first - 0.3, "{kind}: loss {first:.3} → {last:.3} in 30 steps");

        let formula: u64 = named_params(&straight.model)
            .iter()
            .filter(|p| p.trainable)
            .map(|p| kind.plan_kind(straight.optim.config.momentum).state_bytes(&p.shape.iter().map(|&d| d as u64).collect::<Vec<_>>(), 4))
            .sum();
        assert_eq!(straight.optim.state_bytes() as u64, formula, "{kind}: measured state bytes vs the estimator's formula");

        let mut first_half = Trainer::new(Gpt::init(&c, 0, &device), &tok, config(kind, 30), &device).unwrap();
        for _ in 0..15 {
            first_half.step().unwrap();
        }
        let (weights, optim, t) = (save_model(&first_half.model), save_optimizer(&first_half.optim), first_half.optim.t);
        drop(first_half);
        let mut resumed = Trainer::new(load_model(&c, &weights, &device, "model.safetensors").unwrap(), &tok, config(kind, 30), &device).unwrap();
        load_optimizer(&mut resumed.optim, t, &optim, &device, "optimizer.safetensors").unwrap();
        resumed.step = 15;
        let later: Vec<f32> = (0..15).map(|_| resumed.step().unwrap().loss).collect();
        assert_eq!(later, losses[15..], "{kind}: resumed losses must equal the uninterrupted run's");
    }
}

/// SGD with momentum keeps one buffer per parameter; plain SGD none.
#[test]
fn sgd_momentum_keeps_one_buffer() {
    let (tok, c) = setup();
    let device = ad();
    let mut cfg = config(OptimKind::Sgd, 2);
    let mut plain = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg.clone(), &device).unwrap();
    plain.step().unwrap();
    assert_eq!(plain.optim.state_bytes(), 0);
    cfg.optimizer.momentum = 0.9;
    let mut heavy = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg, &device).unwrap();
    heavy.step().unwrap();
    let n: usize = named_params(&heavy.model).iter().filter(|p| p.trainable).map(|p| p.numel).sum();
    assert_eq!(heavy.optim.state_bytes(), 4 * n);
}

/// Paging moves state to host memory between steps and changes nothing else: forced on
/// here (on the CPU it is off, as there is nowhere else for state to live).
#[test]
fn paged_state_gives_the_same_updates() {
    let (tok, c) = setup();
    let device = ad();
    for kind in [OptimKind::PagedAdamW, OptimKind::PagedAdamW8bit] {
        let mut plain = Trainer::new(Gpt::init(&c, 0, &device), &tok, config(kind, 4), &device).unwrap();
        assert!(!plain.optim.page, "{kind} must not page on the CPU");
        let mut paged = Trainer::new(Gpt::init(&c, 0, &device), &tok, config(kind, 4), &device).unwrap();
        paged.optim.page = true;
        let a: Vec<f32> = (0..4).map(|_| plain.step().unwrap().loss).collect();
        let b: Vec<f32> = (0..4).map(|_| paged.step().unwrap().loss).collect();
        assert_eq!(a, b, "{kind}");
        assert!(paged.optim.state.values().all(|s| !matches!(s, tinytune::optim::Slot::Dense(_))), "{kind}: state left on the device");
    }
}

/// Accumulating 4 micro-batches gives the full batch's gradient within 1e-5 (absolute, on
/// gradients up to about 1), on a task whose rows count different numbers of tokens (the
/// prompt is masked), so a plain average of micro-batch means would be wrong.
#[test]
fn accumulation_gives_the_full_batch_gradient() {
    let (tok, c) = setup();
    let device = ad();
    let cfg = |k: usize| TrainConfig { batch_size: 16, accumulate: k, ..config(OptimKind::AdamW, 1) };
    let whole = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(1), &device).unwrap();
    let accumulated = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(4), &device).unwrap();
    let batch = whole.batch_for(0);
    let parts = batch.split(4);
    let counted: Vec<f32> = parts.iter().map(|p| p.weight_sum()).collect();
    assert!(counted.iter().any(|&w| w != counted[0]), "micro-batches should count different token numbers: {counted:?}");
    let (loss_a, ga) = whole.accumulated_gradients(&batch);
    let (loss_b, gb) = accumulated.accumulated_gradients(&batch);
    let (worst, largest) = max_diff(&ga, &gb);
    assert!(worst <= 1e-5, "max |Δgrad| {worst:e} (largest gradient {largest})");
    let (la, lb) = (loss_a.into_scalar::<f32>(), loss_b.into_scalar::<f32>());
    assert!((la - lb).abs() <= 1e-5, "loss {la} vs {lb}");
    let bad = TrainConfig { accumulate: 3, ..cfg(1) }.validate("test", c.n_positions).unwrap_err().to_string();
    assert!(bad.contains("accumulate") && bad.contains("divisor"), "{bad}");
}

/// Gradient checkpointing recomputes instead of storing; the gradients are the same.
#[test]
fn checkpointing_gives_the_same_gradients() {
    let (tok, c) = setup();
    let device = ad();
    let cfg = |on: bool| TrainConfig { checkpointing: on, ..config(OptimKind::AdamW, 3) };
    let mut plain = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(false), &device).unwrap();
    let mut ckpt = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(true), &device).unwrap();
    let batch = plain.batch_for(0);
    let (_, ga) = plain.accumulated_gradients(&batch);
    let (_, gb) = ckpt.accumulated_gradients(&batch);
    let (worst, largest) = max_diff(&ga, &gb);
    assert!(worst <= 1e-6 * largest.max(1.0), "max |Δgrad| {worst:e}");
    // And training on stays identical step after step (the strategy survives updates).
    let a: Vec<f32> = (0..3).map(|_| plain.step().unwrap().loss).collect();
    let b: Vec<f32> = (0..3).map(|_| ckpt.step().unwrap().loss).collect();
    assert_eq!(a, b);
}

/// MeZO lowers the loss of a fresh nano model with forward passes only: the mean of the
/// last 20 of 300 steps is at least 0.5 nats below the first 20 (measured on flex: 3.50 →
/// 2.64).
#[test]
fn mezo_learns_without_a_backward_pass() {
    let (tok, c) = setup();
    let device = ad();
    let cfg = TrainConfig { lr: 1e-3, warmup_steps: 0, ..config(OptimKind::Mezo, 300) };
    let mut trainer = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg, &device).unwrap();
    let losses: Vec<f32> = (0..300).map(|_| trainer.step().unwrap().loss).collect();
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..20]), mean(&losses[280..]));
    assert!(last < first - 0.5, "MeZO loss {first:.3} → {last:.3}");
    assert_eq!(trainer.optim.state_bytes(), 0);
    assert_eq!(trainer.optim.t, 300);
}

/// LoRA+: B learns at ratio × the learning rate. After AdamW's first step every element
/// of B (which starts at zero) has moved by the step size (AdamW's first update is ±lr per
/// element), so B's largest entry is lr without LoRA+ and 16·lr with ratio 16; A has no
/// gradient yet (B is zero), so it has not moved at all.
#[test]
fn loraplus_scales_b_s_learning_rate() {
    use tinytune::methods::{LoraConfig, Method};
    use tinytune::model::params::param_data;
    let (tok, c) = setup();
    let device = ad();
    let method = Method::Lora(LoraConfig { r: 4, ..LoraConfig::default() });
    let largest_b = |ratio: Option<f64>| {
        let mut cfg = TrainConfig { lr: 1e-3, warmup_steps: 0, method: method.clone(), ..config(OptimKind::AdamW, 1) };
        cfg.optimizer.loraplus_lr_ratio = ratio;
        let model = method.apply(Gpt::init(&c, 0, &device), 0, &device).unwrap();
        let mut t = Trainer::new(model, &tok, cfg, &device).unwrap();
        t.step().unwrap();
        let data = param_data(&t.model);
        let max = |suffix: &str| {
            data.iter().filter(|(n, _)| n.ends_with(suffix)).flat_map(|(_, d)| d.clone().try_to_vec::<f32>().unwrap()).fold(0f32, |m, v| m.max(v.abs()))
        };
        (max("lora_b"), data.iter().filter(|(n, _)| n.ends_with("lora_a")).count())
    };
    let (plain, _) = largest_b(None);
    let (plus, a_count) = largest_b(Some(16.0));
    assert!(a_count > 0);
    assert!((plain - 1e-3).abs() < 1e-5, "plain B moved {plain}");
    assert!((plus - 16e-3).abs() < 1e-4, "LoRA+ B moved {plus}");
    let bad = TrainConfig { optimizer: OptimConfig { loraplus_lr_ratio: Some(16.0), ..OptimConfig::default() }, ..config(OptimKind::AdamW, 1) };
    assert!(bad.validate("test", c.n_positions).unwrap_err().to_string().contains("loraplus_ratio"));
}
