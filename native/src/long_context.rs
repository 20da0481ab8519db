//! `tinytune long-context`: held-out loss at each position of windows longer than the
//! model's context, with no RoPE scaling, position interpolation, dynamic NTK and YaRN;
//! then a short fine-tune at a longer length after interpolation (Chen et al., 2023's
//! recipe), evaluated the same way. Prints a table by span of positions and writes
//! `long-context.svg` and `long-context.json`.

use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;
use tinytune::model::rope::RopeScaling;
use tinytune::train::positions::{PositionEval, buckets, scalings, with_scaling};
use tinytune::train::{DataSource, Run, RunHost, TrainConfig, TrainEvent, Trainer};

use crate::cli::LongContextArgs;
use crate::model_dir;
use crate::plot::{Series, svg};

/// Runs a fine-tune to the end, printing each held-out evaluation.
struct Quiet;

impl RunHost for Quiet {
    type Error = String;
    fn event(&mut self, _: &Trainer, event: &TrainEvent) -> Result<(), String> {
        if let TrainEvent::Eval(e) = event {
            eprintln!("  fine-tune step {}: held-out loss {:.4}", e.step, e.eval_loss);
        }
        Ok(())
    }
}

pub fn long_context_cmd(a: LongContextArgs, device: &Device) -> Result<(), String> {
    let ad = device.clone().autodiff();
    let loaded = model_dir::load(&a.model, &ad)?;
    let config = loaded.config.clone();
    if !config.family.is_llama_like() {
        return Err(format!(
            "--model: {} is a GPT-2 model, whose learned position table has {} rows and nothing past them; long context needs rotary positions (a Llama-family model, e.g. assets/micro-llama)",
            a.model.display(),
            config.n_positions
        ));
    }
    let n = config.n_positions;
    let len = a.length.unwrap_or(4 * n);
    if len <= n {
        return Err(format!("--length: {len} is within the model's context of {n}; ask for more, e.g. {}", 4 * n));
    }
    let factor = len as f64 / n as f64;
    let tok = &loaded.tokenizer;
    let eval = PositionEval::stories(tok, len, a.windows).map_err(|e| e.to_string())?;
    let base = loaded.model.valid();
    eprintln!("{}: context {n}, evaluating {} windows of {len} tokens (×{factor:.1})", a.model.display(), a.windows);

    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    for (name, scaling) in scalings(factor, n) {
        let losses = eval.losses(&with_scaling(&base, scaling)).map_err(|e| e.to_string())?;
        rows.push((format!("{name} ×{factor}"), losses));
        if name == "none" {
            rows.last_mut().expect("just pushed").0 = "none (plain RoPE)".into();
        }
    }

    if a.finetune_steps > 0 {
        let ft_len = a.finetune_length.unwrap_or(2 * n);
        if ft_len <= n || ft_len > len {
            return Err(format!("--finetune-length: {ft_len} must be longer than the context ({n}) and at most --length ({len})"));
        }
        let ft_factor = ft_len as f64 / n as f64;
        eprintln!("fine-tuning {} steps at {ft_len} tokens after interpolating positions ×{ft_factor}", a.finetune_steps);
        let mut model = with_scaling(&loaded.model, RopeScaling::Linear { factor: ft_factor });
        model.config.n_positions = ft_len;
        let train = TrainConfig {
            data: DataSource::Stories,
            steps: a.finetune_steps,
            batch_size: a.batch,
            seq_len: ft_len,
            lr: a.lr,
            warmup_steps: 0,
            train_examples: 4000,
            eval_examples: 200,
            eval_every: a.finetune_steps,
            eval_batches: 2,
            ..TrainConfig::default()
        };
        let trainer = Trainer::new(model, tok, train, &ad).map_err(|e| e.to_string())?;
        let mut run = Run::new(trainer, tok.clone());
        run.drive(&mut Quiet)?;
        let tuned = run.trainer.model.valid();
        let losses = eval.losses(&tuned).map_err(|e| e.to_string())?;
        rows.push((format!("linear ×{ft_factor} + {} steps at {ft_len}", a.finetune_steps), losses));
    }

    // The table: mean loss over spans of the trained context's length.
    let spans: Vec<String> = (0..len.div_ceil(n)).map(|i| format!("{}–{}", i * n, ((i + 1) * n).min(len) - 1)).collect();
    println!("held-out loss by position (nats/token), mean over each span; the model was trained at {n}");
    println!("| method | {} |", spans.join(" | "));
    println!("|---|{}", "---|".repeat(spans.len()));
    for (name, losses) in &rows {
        let cells: Vec<String> = buckets(losses, n).iter().map(|(_, l)| format!("{l:.3}")).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }

    if let Some(out) = &a.out {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: cannot create: {e}", out.display()))?;
        const COLORS: [&str; 6] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
        let series: Vec<Series> = rows
            .iter()
            .enumerate()
            .map(|(i, (name, losses))| Series {
                label: name,
                color: COLORS[i % COLORS.len()],
                points: buckets(losses, 16).iter().map(|(start, l)| (*start as f64 + 8.0, *l)).collect(),
                line: true,
            })
            .collect();
        let plot = svg(&format!("loss by position past a {n}-token context"), "position", "held-out loss (nats/token, per 16 positions)", &series);
        crate::fsutil::write_atomic(&out.join("long-context.svg"), plot.as_bytes())?;
        let report = json!({
            "model": a.model.display().to_string(), "context": n, "length": len, "windows": a.windows,
            "rows": rows.iter().map(|(name, losses)| json!({"method": name, "loss_by_position": losses})).collect::<Vec<_>>(),
        });
        crate::fsutil::write_atomic(&out.join("long-context.json"), serde_json::to_string_pretty(&report).expect("serialises").as_bytes())?;
        eprintln!("wrote {} and {}", out.join("long-context.svg").display(), out.join("long-context.json").display());
    }
    Ok(())
}
