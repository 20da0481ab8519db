//! Data parallelism (`TrainConfig::data_parallel`, `tinytune … --data-parallel N`): with the
//! same global batch and seed, replicas train to the single-device run's losses.
//!
//! Burn's CPU backends each have one device, so the second replica here runs on the other
//! CPU backend (ndarray beside flex): the model is really forked to another device, its
//! share's forward and backward passes run there, and its gradients come back to the first
//! device, as they would from a second GPU.

use burn::tensor::Device;
use tinytune::data::{CHARSET, Task};
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

/// Step losses of a short fine-tuning run on a task: only answers count, and " happy" and
/// " sad" differ in length, so the replicas' shares hold different numbers of counted tokens.
fn losses(data_parallel: usize, accumulate: usize, second: Option<Device>) -> Vec<f32> {
    let tok = TextTokenizer::char_level(CHARSET);
    let config = ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() };
    let device = Device::flex().autodiff();
    let tc = TrainConfig {
        steps: 6,
        batch_size: 8,
        seq_len: 64,
        train_examples: 200,
        eval_examples: 20,
        warmup_steps: 2,
        data: DataSource::Task(Task::Sentiment),
        data_parallel,
        accumulate,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(Gpt::init(&config, 0, &device), &tok, tc, &device).unwrap();
    if let Some(d) = second {
        trainer.set_replica_devices(vec![d]);
    }
    (0..6).map(|_| trainer.step().unwrap().loss).collect()
}

#[test]
#[allow(deprecated)] // Device::ndarray: Burn prefers flex; here it is the second device.
fn replicas_on_two_devices_train_as_one_device() {
    let one = losses(1, 1, None);
    let ndarray = Device::ndarray().autodiff();
    for (name, run) in [
        ("2 replicas, the second on ndarray", losses(2, 1, Some(ndarray.clone()))),
        ("2 replicas × 2 micro-batches", losses(2, 2, Some(ndarray))),
        ("2 replicas on one device", losses(2, 1, None)),
    ] {
        for (step, (a, b)) in one.iter().zip(&run).enumerate() {
            assert!((a - b).abs() <= 1e-4, "{name}: step {} loss {b}, one device {a}", step + 1);
        }
    }
    // The run learns, so equal losses are not equal constants.
    assert!(one[5] < one[0], "{one:?}");
}

#[test]
fn a_batch_the_replicas_cannot_share_equally_is_refused_by_field() {
    let tc = TrainConfig { batch_size: 6, data_parallel: 4, ..TrainConfig::default() };
    let e = tc.validate("training config", 1024).unwrap_err().to_string();
    assert!(e.contains("data_parallel") && e.contains("4 replicas"), "{e}");
}
