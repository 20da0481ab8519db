//! Training behaviour on the flex CPU backend with the nano preset: loss falls to a stated
//! bound, resuming is exact, and a diverging run stops with an error instead of saving NaN.

use burn::tensor::Device;
use tinytune::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};
use tinytune::data::{CHARSET, Task};
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Error, Gpt, ModelConfig, TextTokenizer};

fn ad() -> Device {
    Device::flex().autodiff()
}

fn nano(tok: &TextTokenizer) -> ModelConfig {
    ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() }
}

fn config(data: DataSource, steps: usize) -> TrainConfig {
    TrainConfig {
        data,
        train_examples: 2000,
        eval_examples: 100,
        steps,
        batch_size: 16,
        seq_len: 64,
        lr: 3e-3,
        warmup_steps: 10,
        eval_batches: 4,
        ..TrainConfig::default()
    }
}

#[test]
fn nano_learns_the_sentiment_task_within_150_steps() {
    // Stated bound: after 150 steps (batch 16) the held-out loss on the response tokens is
    // below 1.0 nats/token, from ln(vocab) ≈ 3.6 at initialisation. Measured on flex it
    // reaches about 0.5; the bound leaves room for floating-point differences.
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let model = Gpt::init(&nano(&tok), 0, &device);
    let mut trainer = Trainer::new(model, &tok, config(DataSource::Task(Task::Sentiment), 150), &device).unwrap();
    let before = trainer.eval_loss().unwrap();
    while trainer.step < 150 {
        trainer.step().unwrap();
    }
    let after = trainer.eval_loss().unwrap();
    assert!(before > 3.0, "untrained loss {before}");
    assert!(after < 1.0, "held-out loss after 150 steps: {after}");
}

#[test]
fn a_resumed_run_continues_exactly() {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let cfg = || TrainConfig { train_examples: 300, ..config(DataSource::Stories, 8) };
    let c = nano(&tok);

    let mut straight = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(), &device).unwrap();
    let losses: Vec<f32> = (0..8).map(|_| straight.step().unwrap().loss).collect();

    let mut first = Trainer::new(Gpt::init(&c, 0, &device), &tok, cfg(), &device).unwrap();
    for _ in 0..4 {
        first.step().unwrap();
    }
    // Save to bytes and rebuild everything from them, as a new process would.
    let (weights, optim, t) = (save_model(&first.model), save_optimizer(&first.optim), first.optim.t);
    drop(first);
    let model = load_model(&c, &weights, &device, "model.safetensors").unwrap();
    let mut resumed = Trainer::new(model, &tok, cfg(), &device).unwrap();
    load_optimizer(&mut resumed.optim, t, &optim, &device, "optimizer.safetensors").unwrap();
    resumed.step = 4;
    let later: Vec<f32> = (0..4).map(|_| resumed.step().unwrap().loss).collect();
    assert_eq!(later, losses[4..], "resumed losses must equal the uninterrupted run's");
}

#[test]
fn a_diverging_run_stops_with_a_clear_error() {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = ad();
    let mut cfg = config(DataSource::Stories, 50);
    cfg.train_examples = 200;
    cfg.lr = 1e35;
    cfg.warmup_steps = 0;
    cfg.optimizer.clip_grad_norm = None;
    let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 0, &device), &tok, cfg, &device).unwrap();
    let err = (0..50).find_map(|_| trainer.step().err()).expect("a learning rate of 1e35 must blow up");
    match &err {
        Error::NonFiniteLoss { step, .. } => assert!(*step >= 2),
        other => panic!("wrong error {other:?}"),
    }
    assert!(err.to_string().contains("--lr"), "{err}");
}
