//! Data parallelism (`TrainConfig::data_parallel`, `tinytune … --data-parallel N`): with the
//! same global batch and seed, replicas train to the single-device run's losses.
//!
//! Burn's CPU backends each have one device, so the second replica here runs on the other
//! CPU backend (ndarray beside flex): the model is really forked to another device, its
//! share's forward and backward passes run there, and its gradients come back to the first
//! device, as they would from a second GPU.

use burn::tensor::Device;
use tinytune::checkpoint::{load_model, load_optimizer, save_model, save_optimizer};
use tinytune::data::{CHARSET, Task};
use tinytune::model::params::param_data;
use tinytune::optim::{OptimConfig, OptimKind, Slot};
use tinytune::train::{DataSource, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

/// Step losses of a short fine-tuning run on a task: only answers count, and " happy" and
/// " sad" differ in length, so the replicas' shares hold different numbers of counted tokens.
fn losses(data_parallel: usize, accumulate: usize, second: Option<Device>) -> Vec<f32> {
    let mut trainer = trainer(data_parallel, accumulate, 0, second);
    (0..6).map(|_| trainer.step().unwrap().loss).collect()
}

/// A fine-tuning run of the nano model on a task, with `data_parallel` replicas (the second
/// on `second`, if given), `accumulate` micro-batches each, and ZeRO stage `zero`.
fn trainer(data_parallel: usize, accumulate: usize, zero: u8, second: Option<Device>) -> Trainer {
    let tok = TextTokenizer::char_level(CHARSET);
    let device = Device::flex().autodiff();
    let mut trainer = Trainer::new(Gpt::init(&nano(&tok), 0, &device), &tok, config(data_parallel, accumulate, zero), &device).unwrap();
    if let Some(d) = second {
        trainer.set_replica_devices(vec![d]);
    }
    trainer
}

fn nano(tok: &TextTokenizer) -> ModelConfig {
    ModelConfig { vocab_size: tok.vocab_size(), ..ModelConfig::nano() }
}

fn config(data_parallel: usize, accumulate: usize, zero: u8) -> TrainConfig {
    TrainConfig {
        steps: 6,
        batch_size: 8,
        seq_len: 64,
        train_examples: 200,
        eval_examples: 20,
        warmup_steps: 2,
        data: DataSource::Task(Task::Sentiment),
        data_parallel,
        accumulate,
        zero,
        ..TrainConfig::default()
    }
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

/// ZeRO stage 1: each replica keeps the optimizer state of its share of the parameters, on
/// its own device, and makes their update. For every optimizer whose state is on the device,
/// the run must train as the unsharded run does (losses, and the weights and state after the
/// last update), the shares must hold all the state between them and no more, each within
/// one parameter's state of an even split (the memory estimator's per-GPU figure), and a run
/// resumed from the saved (whole) state must continue exactly.
#[test]
#[allow(deprecated)] // Device::ndarray, as above.
fn zero_1_shards_the_optimizer_state_across_replicas_and_trains_as_one_device() {
    let ndarray = Device::ndarray().autodiff();
    let tok = TextTokenizer::char_level(CHARSET);
    for kind in [OptimKind::AdamW, OptimKind::Sgd, OptimKind::Lion, OptimKind::Adafactor] {
        let with = |zero| {
            let mut t = trainer(2, 1, zero, Some(ndarray.clone()));
            t.optim.config = OptimConfig { momentum: 0.9, ..OptimConfig::for_kind(kind) };
            t.config.optimizer = t.optim.config.clone();
            t
        };
        let (mut whole, mut sharded) = (with(0), with(1));
        for step in 1..=4 {
            let (a, b) = (whole.step().unwrap().loss, sharded.step().unwrap().loss);
            assert!((a - b).abs() <= 1e-5, "{kind} step {step}: ZeRO-1 loss {b}, unsharded {a}");
        }
        // The last update shows in the weights and the state, not yet in a loss.
        for ((name, a), (_, b)) in param_data(&whole.model).into_iter().zip(param_data(&sharded.model)) {
            let diff = a.iter::<f32>().zip(b.iter::<f32>()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{kind}: {name} differs by {diff} after 4 updates");
        }
        for (name, slot) in &whole.optim.state {
            let other = sharded.optim.state.get(name).unwrap_or_else(|| panic!("{kind}: {name} missing under ZeRO-1")).values();
            let diff = slot.values().iter().zip(&other).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(diff <= 1e-5, "{kind}: state {name} differs by {diff}");
        }

        let total = whole.optim.state_bytes();
        assert!(total > 0, "{kind} keeps state");
        assert_eq!(whole.optim.state_bytes_by_replica(), vec![total], "without ZeRO the first device keeps it all");
        let shares = sharded.optim.state_bytes_by_replica();
        assert_eq!(shares.len(), 2);
        assert_eq!(shares.iter().sum::<usize>(), total, "{kind}: the shares {shares:?} must hold exactly the unsharded state");
        // The estimator's per-GPU optimizer state at ZeRO-1 on 2 GPUs is an even split of the
        // same formula; shares are whole parameters, so each may exceed it by at most the
        // largest parameter's state.
        let estimate = sharded.estimated_state_per_replica() as usize;
        assert_eq!(estimate, total.div_ceil(2), "{kind}: the estimator's per-GPU state vs the measured total {total}");
        let mut per_param = std::collections::BTreeMap::<&str, usize>::new();
        for (name, slot) in &sharded.optim.state {
            *per_param.entry(name.rsplit_once('.').unwrap().0).or_default() += slot.bytes();
        }
        let largest = *per_param.values().max().unwrap();
        for (r, &share) in shares.iter().enumerate() {
            assert!(share > 0 && share <= estimate + largest, "{kind} replica {r}: {share} bytes, estimate {estimate}, largest parameter's state {largest}");
        }
        // Each share lives on its replica's device.
        let shards = sharded.optim.shards.clone().expect("ZeRO-1 placed the shares");
        for (name, slot) in &sharded.optim.state {
            let Slot::Dense(t) = slot else { panic!("{kind} keeps dense state") };
            let owner = shards.owner_of(name.rsplit_once('.').unwrap().0);
            assert_eq!(t.device(), shards.devices[owner], "{kind}: {name} is not on replica {owner}'s device");
        }
    }

    // Resume from the saved state: it is saved whole and shared out again at the next update.
    let device = Device::flex().autodiff();
    let mut sharded = trainer(2, 1, 1, Some(ndarray.clone()));
    for _ in 0..3 {
        sharded.step().unwrap();
    }
    let (weights, state, t) = (save_model(&sharded.model), save_optimizer(&sharded.optim), sharded.optim.t);
    let mut resumed = trainer(2, 1, 1, Some(ndarray));
    resumed.model = load_model(&nano(&tok), &weights, &device, "model.safetensors").unwrap();
    load_optimizer(&mut resumed.optim, t, &state, &device, "optimizer.safetensors").unwrap();
    resumed.step = 3;
    for step in 4..=6 {
        let (a, b) = (sharded.step().unwrap().loss, resumed.step().unwrap().loss);
        assert_eq!(a, b, "step {step}: resumed ZeRO-1 run");
    }
    assert_eq!(resumed.optim.state_bytes_by_replica(), sharded.optim.state_bytes_by_replica());
}

#[test]
fn zero_1_needs_replicas_and_state_on_the_device() {
    let one = TrainConfig { zero: 1, ..TrainConfig::default() };
    let e = one.validate("training config", 1024).unwrap_err().to_string();
    assert!(e.contains("zero") && e.contains("data_parallel"), "{e}");
    for kind in [OptimKind::AdamW8bit, OptimKind::PagedAdamW] {
        let tc = TrainConfig { zero: 1, data_parallel: 2, optimizer: OptimConfig::for_kind(kind), ..TrainConfig::default() };
        let e = tc.validate("training config", 1024).unwrap_err().to_string();
        assert!(e.contains("zero") && e.contains("host memory"), "{kind}: {e}");
    }
    TrainConfig { zero: 1, data_parallel: 2, ..TrainConfig::default() }.validate("training config", 1024).unwrap();
}

#[test]
fn zero_stages_beyond_1_are_refused_by_field() {
    let tc = TrainConfig { zero: 2, data_parallel: 2, ..TrainConfig::default() };
    let e = tc.validate("training config", 1024).unwrap_err().to_string();
    assert!(e.contains("zero") && e.contains("use 0 or 1"), "{e}");
}
