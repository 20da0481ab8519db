//! Mixed precision, measured rather than scripted: what FP16 without loss scaling actually
//! does on tinytune's models, what scaling changes, and the scaler's skip-and-back-off rule
//! on a real run. The figures these tests pin are discussed in docs/precision.md.

use std::path::PathBuf;

use burn::tensor::Device;
use tinytune::checkpoint::load_parts;
use tinytune::data::{CHARSET, Task};
use tinytune::model::params::param_data;
use tinytune::train::precision::underflow_reports;
use tinytune::train::{DataSource, LossScale, Precision, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

fn nano_run(precision: Precision, loss_scale: LossScale, steps: usize) -> (Trainer, Vec<tinytune::train::StepEvent>) {
    let mut trainer = nano(precision, loss_scale, steps);
    let events = (0..steps).map(|_| trainer.step().unwrap()).collect();
    (trainer, events)
}

fn nano(precision: Precision, loss_scale: LossScale, steps: usize) -> Trainer {
    let tok = TextTokenizer::char_level(CHARSET);
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() };
    let device = Device::flex().autodiff();
    let model = Gpt::init(&config, 0, &device);
    let tc = TrainConfig {
        steps,
        batch_size: 16,
        seq_len: 64,
        train_examples: 400,
        eval_examples: 40,
        warmup_steps: 2,
        precision,
        loss_scale,
        ..TrainConfig::default()
    };
    Trainer::new(model, &tok, tc, &device).unwrap()
}

fn mean_loss(events: &[tinytune::train::StepEvent]) -> f32 {
    events.iter().map(|e| e.loss).sum::<f32>() / events.len() as f32
}

#[test]
fn fp16_with_and_without_scaling_on_a_tiny_model() {
    let steps = 30;
    let (_, fp32) = nano_run(Precision::Fp32, LossScale::None, steps);
    let (_, plain) = nano_run(Precision::Fp16, LossScale::None, steps);
    let (scaled_trainer, scaled) = nano_run(Precision::Fp16, LossScale::dynamic(), steps);
    let (_, bf16) = nano_run(Precision::Bf16, LossScale::None, steps);

    let first = mean_loss(&fp32[..5]);
    for (name, run) in [("fp32", &fp32), ("fp16 unscaled", &plain), ("fp16 dynamic", &scaled), ("bf16", &bf16)] {
        let last = mean_loss(&run[steps - 5..]);
        println!("{name}: first-5 mean {:.4}, last-5 mean {last:.4}, skipped {}", mean_loss(&run[..5]), run.iter().filter(|e| e.skipped).count());
        assert!(last < first - 0.2, "{name}: the loss did not fall ({first} -> {last})");
    }

    // What actually happens without scaling here: nano's gradients sit well inside FP16's
    // range, and AdamW divides each gradient by its own running RMS, so the unscaled FP16
    // run tracks FP32 closely; it neither stalls nor diverges at this size.
    let gap = (mean_loss(&plain[steps - 5..]) - mean_loss(&fp32[steps - 5..])).abs();
    assert!(gap < 0.01, "unscaled fp16 ended {gap} away from fp32");
    assert!(plain.iter().all(|e| e.loss_scale == 1.0 && !e.skipped));

    // Dynamic scaling starts at GradScaler's 2^16, which overflows FP16 for this model once
    // its gradients grow: that step is skipped and the scale halves, then training proceeds
    // (growth waits 2000 good steps). Skipped steps take no optimizer update.
    let skipped = scaled.iter().filter(|e| e.skipped).count();
    assert!(skipped >= 1, "expected 2^16 to overflow at least once");
    assert_eq!(scaled_trainer.scaler.state.skipped, skipped);
    assert_eq!(scaled_trainer.optim.t as usize, steps - skipped);
    assert_eq!(scaled.last().unwrap().loss_scale, 65536.0 / 2f64.powi(skipped as i32));
}

#[test]
fn an_overflowing_step_is_skipped_and_leaves_the_weights_bit_identical() {
    let mut trainer = nano(Precision::Fp16, LossScale::Fixed { scale: 1e9 }, 1);
    let before = param_data(&trainer.model);
    let e = trainer.step().unwrap();
    assert!(e.skipped && !e.grad_norm.is_finite(), "a scale of 1e9 must overflow FP16 (grad norm {})", e.grad_norm);
    assert_eq!(trainer.optim.t, 0);
    let after = param_data(&trainer.model);
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a.as_bytes(), b.as_bytes(), "{n} changed on a skipped step");
    }
}

fn micro() -> (Gpt, TextTokenizer) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/micro");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let text = |f: &str| String::from_utf8(read(f)).unwrap();
    let loaded = load_parts("assets/micro", &text("config.json"), &text("tokenizer.json"), &read("model.safetensors"), &Device::flex().autodiff()).unwrap();
    (loaded.model, loaded.tokenizer)
}

#[test]
fn loss_scaling_moves_the_pretrained_models_gradients_out_of_fp16s_subnormals() {
    let (model, tok) = micro();
    let device = Device::flex().autodiff();
    let tc =
        TrainConfig { data: DataSource::Task(Task::StoryQa), batch_size: 16, seq_len: 128, train_examples: 200, eval_examples: 20, ..TrainConfig::default() };
    let trainer = Trainer::new(model, &tok, tc, &device).unwrap();
    let batch = trainer.batch_for(0);
    let [one, k, big]: [_; 3] = underflow_reports(&trainer, &batch, Precision::Fp16, &[1.0, 1024.0, 65536.0]).try_into().unwrap();
    let sub = |r: &tinytune::train::precision::UnderflowReport| r.actual.subnormal as f64 / r.actual.total as f64;
    println!(
        "scale 1: lost {:.4}% subnormal {:.2}%; 1024: lost {:.4}% subnormal {:.2}%; 65536: {} overflowed",
        100.0 * one.lost_fraction(),
        100.0 * sub(&one),
        100.0 * k.lost_fraction(),
        100.0 * sub(&k),
        big.actual.non_finite
    );
    // Unscaled, a few percent of micro's gradient values are FP16 subnormals (measured 6.1%)
    // and about 0.1% flush to zero; a scale of 1024 lifts nearly all into the normal range
    // (0.2% left) and loses almost none (0.0002%); 2^16 overflows.
    assert!(sub(&one) > 0.02, "unscaled subnormal share {}", sub(&one));
    assert!(one.lost > 0, "no gradient flushed to zero unscaled");
    assert!(sub(&k) < sub(&one) / 10.0, "{} vs {}", sub(&k), sub(&one));
    assert!(k.lost_fraction() < one.lost_fraction() / 100.0, "{} vs {}", k.lost_fraction(), one.lost_fraction());
    assert!(k.actual.non_finite == 0 && big.actual.non_finite > 0);
    // FP16 rounding through the forward and backward passes costs a fraction of a percent,
    // at any scale that neither underflows nor overflows.
    assert!(one.relative_error.unwrap() < 0.01 && k.relative_error.unwrap() < 0.01, "{:?} {:?}", one.relative_error, k.relative_error);
    assert_eq!(big.relative_error, None, "an overflowed step has no meaningful error");
}
