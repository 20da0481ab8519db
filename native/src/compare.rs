//! `tinytune compare --optimizers …`: the same fine-tune (model, data, batches, method,
//! schedule) once per optimizer, and one table in the shape of the published optimizer
//! comparisons: wall time, peak memory, optimizer state, train and held-out loss. Each run
//! starts from the same checkpoint and sees the same batches; only the optimizer (and its
//! suggested learning rate, unless --lr is given) changes.

use burn::tensor::Device;
use serde::Serialize;
use tinytune::data::Task;
use tinytune::memory::human;
use tinytune::memory::measure::{counting, current, peak, reset_peak};
use tinytune::model::named_params;
use tinytune::optim::OptimKind;
use tinytune::train::{DataSource, Trainer};

use crate::cli::CompareArgs;
use crate::fsutil::write_atomic;
use crate::{model_dir, plot, train};

#[derive(Serialize)]
struct Row {
    optimizer: String,
    lr: f64,
    trainable: usize,
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

pub fn compare_cmd(a: CompareArgs, device: &Device) -> Result<(), String> {
    let kinds = a
        .optimizers
        .split(',')
        .map(|s| s.parse::<OptimKind>().map_err(|e| format!("--optimizers: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if kinds.is_empty() {
        return Err("--optimizers: name at least one optimizer".into());
    }
    let ad = device.clone().autodiff();
    let measure = counting() && crate::backend::on_cpu();
    let mut rows = Vec::new();
    for kind in kinds {
        let mut args = a.train.clone();
        args.optimizer = kind.name().to_string();
        if args.lr.is_none() {
            args.lr = Some(kind.suggested_lr());
        }
        let loaded = model_dir::load(&a.model, &ad)?;
        let mut config = train::resolve(&args, DataSource::Task(Task::StoryQa), 3e-4, loaded.config.n_positions)?;
        config.method = train::method(&a.method)?;
        let model = config.method.apply(loaded.model, config.seed, &ad).map_err(train::flag_error)?;
        let mut trainer = Trainer::new(model, &loaded.tokenizer, config, &ad).map_err(|e| e.to_string())?;
        let trainable: usize = named_params(&trainer.model).iter().filter(|p| p.trainable).map(|p| p.numel).sum();
        eprintln!("{kind}: {} steps at lr {:e}", trainer.config.steps, trainer.config.lr);
        let before = current();
        reset_peak();
        let mut losses = Vec::new();
        while trainer.step < trainer.config.steps {
            let e = trainer.step().map_err(|e| format!("{kind}: {e}"))?;
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
            lr: trainer.config.lr,
            trainable,
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
        println!("| optimizer | lr | state | state per param | time (s) | peak memory | train loss | held-out loss |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            let peak = r.peak_bytes.map(|b| human(b as u64)).unwrap_or_else(|| "n/a (GPU)".into());
            println!(
                "| {} | {:e} | {} | {:.2} B | {:.1} | {} | {:.4} | {:.4} |",
                r.optimizer,
                r.lr,
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
    let series: Vec<plot::Series> = rows.iter().enumerate().map(|(i, r)| plot::Series { label: &r.optimizer, color: COLORS[i % COLORS.len()], points: r.losses.clone(), line: true }).collect();
    let svg = plot::svg("train loss by optimizer", "step", "cross-entropy (nats/token)", &series);
    write_atomic(&a.train.out.join("compare.svg"), svg.as_bytes())?;
    write_atomic(&a.train.out.join("compare.json"), serde_json::to_string_pretty(&rows).expect("rows serialise").as_bytes())?;
    eprintln!("wrote {} and compare.json", a.train.out.join("compare.svg").display());
    Ok(())
}
