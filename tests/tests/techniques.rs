//! Training techniques change memory, measured: one training step of the micro shape,
//! counted by the allocator, with and without gradient checkpointing, gradient
//! accumulation and MeZO. (That they leave the gradient unchanged, or still learn, is tested
//! in core/tests/optimizers.rs.)
//!
//! Its own test binary with a single test: the counting allocator sees every thread's
//! allocations, so tests running beside it would pollute the figures.

use burn::tensor::Device;
use tinytune::data::rng::Rng;
use tinytune::memory::measure::{CountingAlloc, current, peak, reset_peak};
use tinytune::optim::{OptimConfig, OptimKind};
use tinytune::train::{Dataset, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Peak bytes above the resting level during one training step (after two unmeasured steps,
/// so thread pools and optimizer state already exist).
fn step_peak(train: TrainConfig) -> usize {
    let config = ModelConfig::micro();
    let device = Device::flex().autodiff();
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..50_000).map(|_| rng.below(config.vocab_size) as u32).collect();
    let data = Dataset::Stream { tokens };
    let mut trainer = Trainer::from_datasets(Gpt::init(&config, 0, &device), train, data.clone(), data, &device).unwrap();
    trainer.step().unwrap();
    trainer.step().unwrap();
    let base = current();
    reset_peak();
    trainer.step().unwrap();
    peak() - base
}

#[test]
fn checkpointing_accumulation_and_mezo_lower_the_measured_peak() {
    let base = TrainConfig { steps: 10, batch_size: 16, seq_len: 128, warmup_steps: 0, ..TrainConfig::default() };
    let plain = step_peak(base.clone());
    // The same step without the fused kernels, with and without checkpointing. This test
    // binary runs one test, so switching them off process-wide is safe.
    tinytune::kernels::set_enabled(false);
    let unfused = step_peak(base.clone());
    let unfused_ckpt = step_peak(TrainConfig { checkpointing: true, ..base.clone() });
    tinytune::kernels::set_enabled(true);
    let ckpt = step_peak(TrainConfig { checkpointing: true, ..base.clone() });
    let accum = step_peak(TrainConfig { accumulate: 4, ..base.clone() });
    let mezo = step_peak(TrainConfig { optimizer: OptimConfig::for_kind(OptimKind::Mezo), ..base.clone() });
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "micro, batch 16 × 128, one step's peak above rest: backprop {:.1} MiB (without the fused kernels {:.1} MiB) · checkpointing {:.1} MiB ({:.1} MiB) · accumulate 4 {:.1} MiB · MeZO {:.1} MiB",
        mib(plain),
        mib(unfused),
        mib(ckpt),
        mib(unfused_ckpt),
        mib(accum),
        mib(mezo)
    );
    // Stated margins (measured on flex: see docs/optimizers.md): each technique saves at
    // least a quarter of the step's peak, checkpointing measured against the same step
    // without the kernels, whose many small operations it recomputes; with the kernels,
    // which leave it less to recompute, it still saves a tenth.
    assert!((unfused_ckpt as f64) < 0.75 * unfused as f64, "checkpointing {unfused_ckpt} vs {unfused} without the fused kernels");
    assert!((ckpt as f64) < 0.9 * plain as f64, "checkpointing {ckpt} vs {plain} with the fused kernels");
    assert!(ckpt < unfused_ckpt, "the fused kernels keep less under checkpointing too: {ckpt} vs {unfused_ckpt}");
    assert!(plain < unfused, "the fused kernels keep less: {plain} vs {unfused}");
    assert!((accum as f64) < 0.75 * plain as f64, "accumulation {accum} vs {plain}");
    assert!((mezo as f64) < 0.75 * plain as f64, "MeZO {mezo} vs {plain}");
}
