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
use tinytune::memory::measure::{counting, current, peak, reset_peak};
use tinytune::model::named_params;
use tinytune::optim::OptimKind;
use tinytune::train::DataSource;

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
    /// A method, and its own learning rate when written `name@lr`.
    Method(String, Option<f64>),
}

/// `name` or `name@lr`.
fn method_variant(item: &str) -> Result<Variant, String> {
    match item.trim().split_once('@') {
        Some((name, lr)) => lr
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| *x > 0.0 && x.is_finite())
            .map(|lr| Variant::Method(name.trim().to_string(), Some(lr)))
            .ok_or_else(|| format!("--methods: '{item}': after @ give a learning rate, e.g. lora@3e-3")),
        None => Ok(Variant::Method(item.trim().to_string(), None)),
    }
}

pub fn compare_cmd(a: CompareArgs, device: &Device) -> Result<(), String> {
    let variants: Vec<Variant> = match (&a.optimizers, &a.methods) {
        (Some(list), None) => {
            list.split(',').map(|s| s.parse::<OptimKind>().map(Variant::Optimizer).map_err(|e| format!("--optimizers: {e}"))).collect::<Result<_, _>>()?
        }
        (None, Some(list)) => list.split(',').map(method_variant).collect::<Result<_, _>>()?,
        _ => return Err("name what to compare: --optimizers adamw,adafactor,… or --methods full,lora,…".into()),
    };
    if variants.is_empty() {
        return Err("name at least one optimizer or method to compare".into());
    }
    let ad = device.clone().autodiff();
    let measure = counting() && crate::backend::on_cpu();
    // Read once; every run starts from a clone (module clones share the unchanged weights).
    let loaded = model_dir::load(&a.model, &ad)?;
    let mut rows = Vec::new();
    for variant in variants {
        let mut args = a.train.clone();
        let mut method_args = a.method.clone();
        match &variant {
            Variant::Optimizer(kind) => {
                args.optimizer = kind.name().to_string();
                if args.lr.is_none() {
                    args.lr = Some(kind.suggested_lr());
                }
            }
            Variant::Method(name, lr) => {
                method_args.method = name.clone();
                if let Some(lr) = lr {
                    args.lr = Some(*lr);
                }
            }
        }
        let method = train::method(&method_args, Some(&loaded.tokenizer)).map_err(|e| e.replace("--method", "--methods"))?;
        let config = train::resolve(&args, method, DataSource::Task(Task::StoryQa), 3e-4, loaded.config.n_positions)?;
        let kind = config.optimizer.kind;
        let model = config.method.apply(loaded.model.clone(), config.seed, &ad).map_err(train::flag_error)?;
        let mut trainer = train::trainer(model, &loaded.tokenizer, config, &ad)?;
        let trainable: usize = named_params(&trainer.model).iter().filter(|p| p.trainable).map(|p| p.numel).sum();
        let method = trainer.config.method.name().to_string();
        eprintln!("{method} with {kind}: {} steps at lr {:e}, {trainable} trainable parameters", trainer.config.steps, trainer.config.lr);
        let before = current();
        reset_peak();
        let mut losses = Vec::new();
        while trainer.step < trainer.config.steps {
            let e = trainer.step().map_err(|e| format!("{method} with {kind}: {e}"))?;
            losses.push((e.step as f64, e.loss as f64));
        }
        let time_s = trainer.elapsed();
        let peak_bytes = measure.then(|| peak().saturating_sub(before));
        let eval_loss = trainer.eval_loss().map_err(|e| e.to_string())?;
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
            let peak = r.peak_bytes.map(|b| human(b as u64)).unwrap_or_else(|| "n/a (GPU)".into());
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
        if !measure {
            println!("\npeak memory is measured by counting CPU allocations; on a GPU backend it is not measured");
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
