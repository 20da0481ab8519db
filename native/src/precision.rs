//! `tinytune loss-scale`: one batch's gradients computed in FP16 (or BF16) at several loss
//! scales, each compared element by element with the same gradients in FP32: how many
//! flushed to zero, how many landed among the subnormals, how many overflowed, and the
//! relative error after unscaling.

use burn::tensor::Device;
use tinytune::data::CHARSET;
use tinytune::train::precision::{UnderflowReport, underflow_reports};
use tinytune::train::{DataSource, Precision, TrainConfig, Trainer};
use tinytune::{Gpt, ModelConfig, TextTokenizer};

use crate::cli::LossScaleArgs;
use crate::model_dir;

pub fn loss_scale_cmd(a: LossScaleArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    let precision: Precision = a.precision.parse().map_err(|e| format!("--precision: {e}"))?;
    if precision == Precision::Fp32 {
        return Err("--precision: compare fp16 or bf16 with FP32; fp32 against itself has nothing to show".into());
    }
    precision.check(&ad, "--precision").map_err(|e| e.to_string())?;
    let scales: Vec<f64> = a
        .scales
        .split(',')
        .map(|s| s.trim().parse::<f64>().ok().filter(|v| *v > 0.0 && v.is_finite()).ok_or_else(|| format!("--scales: '{s}' is not a positive number")))
        .collect::<Result<_, _>>()?;
    let (model, tokenizer, what, default_data) = match &a.preset {
        Some(p) => {
            let config = ModelConfig::preset(p).map_err(|e| format!("--preset: {e}"))?;
            // The character tokenizer's ids are a subset of any preset's vocabulary: the
            // model keeps its full output layer, as a real model of that shape would.
            let tok = TextTokenizer::char_level(CHARSET);
            let what = format!("a freshly initialised {p} ({} parameters, vocabulary {})", config.num_params(), config.vocab_size);
            (Gpt::init(&config, 0, &ad), tok, what, DataSource::Stories)
        }
        None => {
            let l = model_dir::load(&a.model, &ad)?;
            (l.model, l.tokenizer, a.model.display().to_string(), DataSource::Task(tinytune::data::Task::StoryQa))
        }
    };
    let data = match &a.data {
        Some(d) => d.parse().map_err(|e| format!("--data: {e}"))?,
        None => default_data,
    };
    let seq_len = a.seq_len.min(model.context_len());
    let config = TrainConfig { data, batch_size: a.batch, seq_len, train_examples: 200, eval_examples: 20, ..TrainConfig::default() };
    let trainer = Trainer::new(model, &tokenizer, config, &ad).map_err(|e| e.to_string())?;
    let batch = trainer.batch_for(0);
    let reports: Vec<UnderflowReport> = underflow_reports(&trainer, &batch, precision, &scales);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports).expect("plain data"));
        return Ok(());
    }
    let f = precision.format();
    println!(
        "{what}: one {data} batch of {}×{seq_len} tokens (loss {:.4}), gradients in {precision} vs FP32\n{precision}: smallest subnormal {:.1e}, smallest normal {:.1e}, largest {:.1e}\n",
        a.batch,
        reports.first().map(|r| r.loss).unwrap_or(f32::NAN),
        f.min_subnormal(),
        f.min_normal(),
        f.max_value()
    );
    println!("{:>10} {:>14} {:>12} {:>12} {:>14}", "loss scale", "flushed to 0", "subnormal", "overflowed", "rel. error");
    for r in &reports {
        let pct = |n: u64| format!("{:.2}%", 100.0 * n as f64 / r.actual.total.max(1) as f64);
        println!(
            "{:>10} {:>14} {:>12} {:>12} {:>14}",
            r.scale,
            format!("{:.2}%", 100.0 * r.lost_fraction()),
            pct(r.actual.subnormal),
            r.actual.non_finite,
            r.relative_error.map(|e| format!("{e:.2e}")).unwrap_or_else(|| "inf/NaN".into())
        );
    }
    println!(
        "\nflushed to 0: share of the gradient values nonzero in FP32 that came out exactly zero;\nsubnormal: share below the smallest normal (fewer significant bits); overflowed: values that became inf/NaN (the step would be skipped)."
    );
    Ok(())
}
