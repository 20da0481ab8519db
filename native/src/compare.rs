//! `tinytune compare --optimizers …` or `--methods …`: the same fine-tune (model, data,
//! batches, schedule) once per optimizer or per method, and one table in the shape of the
//! published comparisons: trainable parameters, wall time, peak memory, optimizer state,
//! train and held-out loss. Each run starts from the same checkpoint and sees the same
//! batches; only the optimizer (with its suggested learning rate, unless --lr is given) or
//! the method changes.

use burn::tensor::Device;
use serde::Serialize;
use tinytune::data::Task;
use tinytune::memory::human;
use tinytune::optim::OptimKind;
use tinytune::train::sweep::{self, SweepItem};
use tinytune::train::{DataSource, Run, RunHost, TrainEvent, Trainer};

use crate::cli::CompareArgs;
use crate::fsutil::write_atomic;
use crate::{model_dir, plot, train};

#[derive(Serialize)]
struct Row {
    optimizer: String,
    method: String,
    lr: f64,
    trainable: usize,
    /// Parameters of the unadapted model.
    total: usize,
    state_bytes: usize,
    state_bytes_per_param: f64,
    time_s: f64,
    /// Peak bytes allocated during training above the level before it (CPU backends only).
    peak_bytes: Option<usize>,
    /// Mean loss of the last tenth of the steps.
    train_loss: f32,
    eval_loss: f32,
    #[serde(skip)]
    losses: Vec<(f64, f64)>,
}

/// What one row of the comparison varies.
enum Variant {
    Optimizer(OptimKind),
    /// A method, by name.
    Method(String),
}

pub fn compare_cmd(a: CompareArgs, device: &Device) -> Result<(), String> {
    // `name` or `name@lr`, read as the train widget's sweeps read them.
    let variants: Vec<(Variant, Option<f64>)> = match (&a.optimizers, &a.methods) {
        (Some(list), None) => SweepItem::list(list)
            .map_err(|e| format!("--optimizers: {e}"))?
            .into_iter()
            .map(|item| {
                let kind = item.value.parse::<OptimKind>().map_err(|e| format!("--optimizers: {e}"))?;
                Ok((Variant::Optimizer(kind), sweep::run_lr(&item, a.train.lr, Some(kind))))
            })
            .collect::<Result<_, String>>()?,
        (None, Some(list)) => SweepItem::list(list)
            .map_err(|e| format!("--methods: {e}"))?
            .into_iter()
            .map(|item| (Variant::Method(item.value.to_string()), sweep::run_lr(&item, a.train.lr, None)))
            .collect(),
        _ => return Err("name what to compare: --optimizers adamw,adafactor,… or --methods full,lora,…".into()),
    };
    if variants.is_empty() {
        return Err("name at least one optimizer or method to compare".into());
    }
    let ad = device.clone().autodiff();
    // Read once; every run starts from a clone (module clones share the unchanged weights).
    let loaded = model_dir::load(&a.model, &ad)?;
    // Every run's configuration and adapted model first, so a bad name or setting in the
    // list fails before any training time is spent.
    let mut prepared = Vec::new();
    for (variant, lr) in variants {
        let mut args = a.train.clone();
        let mut method_args = a.method.clone();
        args.lr = lr;
        match &variant {
            Variant::Optimizer(kind) => args.optimizer = kind.name().to_string(),
            Variant::Method(name) => method_args.method = name.clone(),
        }
        let method = method_args.to_method(Some(&loaded.tokenizer), loaded.config.family).map_err(|e| e.replace("--method", "--methods"))?;
        let lr = train::finetune_lr(&args, &method);
        let mut config = train::resolve(&args, method, DataSource::Task(Task::StoryQa), lr, loaded.config.n_positions)?;
        // One held-out evaluation, after the last step: the table compares end points.
        config.eval_every = 0;
        let model = config.method.apply(loaded.model.clone(), config.seed, &ad).map_err(crate::flags::flag_error)?;
        prepared.push((config, model));
    }
    let mut rows = Vec::new();
    let mut peak_source = None;
    for (config, model) in prepared {
        let kind = config.optimizer.kind;
        let trainer = train::trainer(model, &loaded.tokenizer, loaded.chat.as_ref(), config, &ad)?;
        trainer.check_held_out().map_err(crate::flags::run_error)?;
        let mut run = Run::new(trainer, loaded.tokenizer.clone());
        let meter = crate::devmem::Meter::start(&ad);
        let mut host = Losses { label: String::new(), trainable: 0, losses: Vec::new(), time_s: 0.0, bar: None };
        let outcome = run.drive(&mut host);
        if let Some(bar) = host.bar.take() {
            bar.finish_and_clear();
        }
        outcome.map_err(|e| format!("{}: {e}", host.label))?;
        let eval_loss = run.last_eval().expect("a finished run is evaluated after its last step");
        let Losses { label, trainable, losses, time_s, .. } = host;
        let last = losses.last().map_or(f64::NAN, |l| l.1);
        eprintln!("{label}: {} steps in {time_s:.1} s, last train loss {last:.4}, held-out loss {eval_loss:.4}", losses.len());
        let trainer = run.trainer;
        let method = trainer.config.method.name().to_string();
        let memory = meter.finish();
        peak_source = memory.map(|m| m.source);
        let peak_bytes = memory.map(|m| m.peak_bytes as usize);
        let tail = (losses.len() / 10).max(1);
        let train_loss = (losses[losses.len() - tail..].iter().map(|p| p.1).sum::<f64>() / tail as f64) as f32;
        let state_bytes = trainer.optim.state_bytes();
        rows.push(Row {
            optimizer: kind.name().into(),
            method,
            lr: trainer.config.lr,
            trainable,
            total: trainer.model.config().num_params(),
            state_bytes,
            state_bytes_per_param: state_bytes as f64 / trainable.max(1) as f64,
            time_s,
            peak_bytes,
            train_loss,
            eval_loss,
            losses,
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("rows serialise"));
    } else {
        let total = rows.first().map(|r| r.total).unwrap_or(0);
        println!("| method | optimizer | lr | trainable | state | state per param | time (s) | peak memory | train loss | held-out loss |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let peak = r.peak_bytes.map(|b| human(b as u64)).unwrap_or_else(|| "n/a".into());
            println!(
                "| {} | {} | {:e} | {} ({:.2}%) | {} | {:.2} B | {:.1} | {} | {:.4} | {:.4} |",
                r.method,
                r.optimizer,
                r.lr,
                r.trainable,
                100.0 * r.trainable as f64 / total.max(1) as f64,
                human(r.state_bytes as u64),
                r.state_bytes_per_param,
                r.time_s,
                peak,
                r.train_loss,
                r.eval_loss
            );
        }
        match peak_source {
            Some("device") => println!("\npeak memory: the device's memory pools at their highest during each run (docs/memory.md)"),
            Some(_) => println!("\npeak memory: heap bytes allocated during each run above what was live before it"),
            None => println!("\npeak memory is not measured by this build"),
        }
    }
    std::fs::create_dir_all(&a.train.out).map_err(|e| format!("{}: cannot create folder: {e}", a.train.out.display()))?;
    const COLORS: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];
    let by_method = a.methods.is_some();
    let labels: Vec<String> = rows.iter().map(|r| if by_method { r.method.clone() } else { r.optimizer.clone() }).collect();
    let series: Vec<plot::Series> = rows
        .iter()
        .zip(&labels)
        .enumerate()
        .map(|(i, (r, l))| plot::Series { label: l, color: COLORS[i % COLORS.len()], points: r.losses.clone(), line: true })
        .collect();
    let svg = plot::svg(if by_method { "train loss by method" } else { "train loss by optimizer" }, "step", "cross-entropy (nats/token)", &series);
    write_atomic(&a.train.out.join("compare.svg"), svg.as_bytes())?;
    write_atomic(&a.train.out.join("compare.json"), serde_json::to_string_pretty(&rows).expect("rows serialise").as_bytes())?;
    eprintln!("wrote {} and compare.json", a.train.out.join("compare.svg").display());
    Ok(())
}

/// One compared run's side of the loop: its label for errors, its trainable count and its
/// losses.
struct Losses {
    label: String,
    trainable: usize,
    losses: Vec<(f64, f64)>,
    /// Training seconds at the last step (the final evaluation not counted).
    time_s: f64,
    /// The run's progress on a terminal.
    bar: Option<indicatif::ProgressBar>,
}

impl RunHost for Losses {
    type Error = String;

    fn event(&mut self, trainer: &Trainer, event: &TrainEvent) -> Result<(), String> {
        match event {
            TrainEvent::Start(s) => {
                self.label = format!("{} with {}", s.method, trainer.config.optimizer.kind);
                self.trainable = s.trainable;
                eprintln!("{}: {} steps at lr {:e}, {} trainable parameters", self.label, s.steps, trainer.config.lr, s.trainable);
                self.bar = Some(crate::progress::bar(s.steps as u64, self.label.clone()));
            }
            TrainEvent::Step(e) => {
                self.losses.push((e.step as f64, e.loss as f64));
                self.time_s = e.elapsed_s;
                if let Some(bar) = &self.bar {
                    bar.set_position(e.step as u64);
                    bar.set_message(format!("loss {:.4}", e.loss));
                }
            }
            TrainEvent::Eval(_) | TrainEvent::Nearest(_) => {}
        }
        Ok(())
    }
}
